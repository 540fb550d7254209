"""Request limits of the web API: body size (a clear 413) and the API token on mutating calls."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import Request

from systemhealer.errors import SystemHealerError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TokenError(SystemHealerError):
    """A mutating call came without the configured API token (HTTP 401)."""


class _BodyTooLarge(Exception):
    pass


def megabytes(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.3g} MB"


class BodyLimit:
    """ASGI middleware: POST bodies under ``prefix`` over ``max_bytes`` get a 413 that says the
    limit and the setting; checked on ``Content-Length`` first, else counted while streaming."""

    def __init__(self, app: ASGIApp, *, prefix: str, max_bytes: int, setting: str) -> None:
        self.app = app
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.setting = setting

    def message(self, size: int | None) -> dict[str, Any]:
        what = f"The upload ({megabytes(size)})" if size else "The upload"
        return {
            "error": f"{what} is larger than the limit of {megabytes(self.max_bytes)} "
            f"({self.setting}). Split the file, raise the setting, or use the command line, "
            "which has no such limit (`systemhealer train`, `predict`, `calibrate`).",
            "code": "too_large",
            "limit_bytes": self.max_bytes,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("POST", "PUT")
            or not scope["path"].startswith(self.prefix)
        ):
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope["headers"]}
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _answer(send, 400, {"error": "invalid Content-Length header"})
            if size > self.max_bytes:
                return await _answer(send, 413, self.message(size))
        counted = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal counted
            message = await receive()
            if message["type"] == "http.request":
                counted += len(message.get("body", b""))
                if counted > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _answer(send, 413, self.message(None))


async def _answer(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def token_dependency(api_token: str | None) -> Callable[[Request], None]:
    """A FastAPI dependency: with ``serving.api_token`` set, require ``Authorization: Bearer``."""

    def require_token(request: Request) -> None:
        if api_token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_token}".encode()):
            if given.strip() in ("", "Bearer"):
                raise TokenError(
                    "this action needs the API token (serving.api_token): enter it in the "
                    "page's token field, or send 'Authorization: Bearer …'"
                )
            raise TokenError(
                "the API token given was rejected: it is not the service's serving.api_token "
                "(check the page's token field, or the 'Authorization: Bearer …' header)"
            )

    return require_token
