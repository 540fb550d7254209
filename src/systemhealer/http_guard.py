"""An ASGI middleware that turns bad requests away before any parsing: 4xx, never 5xx.

BentoML parses any content type as JSON and has no body-size limit of its own, and a broken
multipart body would surface as a 500 from deep inside the framework. This guard answers first:
415 for a wrong content type, 413 for a body over the limit (checked on ``Content-Length``, or
counted for chunked bodies), 401 without the configured API token. It also makes ``/readyz`` say
*why* the service is not ready (e.g. there is no champion yet).

``fast_routes`` lets a request that passed the checks skip the framework: the route's handler gets
the body and returns an ASGI app that answers it, or None to let the framework answer as usual.

:class:`AnswerTimeout` replaces BentoML's ``TimeoutMiddleware`` (``traffic.timeout``), which
leaves a timer behind for every request (see there).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
log = logging.getLogger(__name__)
FastHandler = Callable[[bytes], Awaitable[ASGIApp | None]]


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.3g} MB"


async def _answer(send: Send, status: int, payload: dict[str, Any] | str) -> None:
    if isinstance(payload, str):
        body, kind = payload.encode(), b"text/plain; charset=utf-8"
    else:
        body, kind = json.dumps(payload).encode(), b"application/json"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Checks content type, size and token of requests to the API routes."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        json_routes: Collection[str],
        upload_routes: Collection[str],
        max_body_bytes: int,
        max_upload_bytes: int,
        api_token: str | None = None,
        not_ready: Callable[[], str | None] | None = None,
        readiness_path: str = "/readyz",
        fast_routes: Mapping[str, FastHandler] | None = None,
    ) -> None:
        self.app = app
        self.json_routes = frozenset(json_routes)
        self.upload_routes = frozenset(upload_routes)
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.api_token = api_token
        self.not_ready = not_ready
        self.readiness_path = readiness_path
        self.fast_routes = dict(fast_routes or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == self.readiness_path and self.not_ready is not None:
            try:
                reason = self.not_ready()
            except Exception as exc:  # never let the guard itself fail a request
                reason = f"readiness unknown ({type(exc).__name__}: {exc})"
            if reason:
                return await _answer(send, 503, f"not ready: {reason}\n")
        upload = path in self.upload_routes
        if scope["method"] != "POST" or not (upload or path in self.json_routes):
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope["headers"]}

        if self.api_token is not None:
            given = headers.get(b"authorization", b"").decode("latin-1")
            expected = f"Bearer {self.api_token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return await _answer(
                    send,
                    401,
                    {"error": "missing or wrong API token: send 'Authorization: Bearer …'"},
                )

        encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
        if encoding not in ("", "identity"):
            return await _answer(
                send,
                415,
                {
                    "error": f"Content-Encoding {encoding!r} not accepted on {path}: send the body "
                    "uncompressed"
                    + (" (a compressed file goes in the upload as .csv.gz)" if upload else "")
                },
            )

        content_type = headers.get(b"content-type", b"").decode("latin-1")
        media_type = content_type.split(";")[0].strip().lower()
        if upload and (media_type != "multipart/form-data" or "boundary=" not in content_type):
            return await _answer(
                send,
                415,
                {
                    "error": f"content type {content_type or '(none)'!r} not accepted on {path}: "
                    "send the file as multipart/form-data in a field named 'file' "
                    f"(e.g. curl -F file=@incidents.csv http://HOST{path})"
                },
            )
        if (
            not upload
            and media_type
            and not (media_type == "application/json" or media_type.endswith("+json"))
        ):
            return await _answer(
                send,
                415,
                {
                    "error": f"content type {content_type!r} not accepted on {path}: "
                    "send a JSON body with 'Content-Type: application/json'"
                    + ("; files go to POST /predict_csv" if "form" in media_type else "")
                },
            )

        limit = self.max_upload_bytes if upload else self.max_body_bytes
        setting = "serving.max_upload_mb" if upload else "serving.max_body_mb"
        too_large = {
            "error": f"request body over the limit of {_megabytes(limit)} ({setting})"
            + (
                "; score a larger file offline with `systemhealer predict FILE --output OUT` "
                "(streamed, any size), or compress it (.csv.gz)"
                if upload
                else "; send fewer incidents per request, upload a file to POST /predict_csv, "
                "or score it offline with `systemhealer predict FILE --output OUT`"
            )
        }
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return await _answer(send, 400, {"error": "invalid Content-Length header"})
            if length > limit:
                too_large["error"] = too_large["error"].replace(
                    "request body", f"request body of {_megabytes(length)}", 1
                )
                return await _answer(send, 413, too_large)
            if path not in self.fast_routes:
                return await self.app(scope, receive, send)

        # No length given (chunked), or a fast route: read the body up to the limit, then replay
        # it to whoever answers.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await _answer(send, 413, too_large)
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        handler = self.fast_routes.get(path)
        if handler is not None and messages and messages[-1]["type"] == "http.request":
            body = b"".join(m.get("body", b"") for m in messages)
            try:
                answer = await handler(body)
            except Exception:  # a fast path must never cost a request: the framework answers
                log.exception("fast route %s failed; answered by the framework instead", path)
                answer = None
            if answer is not None:
                return await answer(scope, replay, send)
        return await self.app(scope, replay, send)


class AnswerTimeout:
    """504 for a request not answered within ``timeout`` seconds: BentoML's ``TimeoutMiddleware``
    (same arguments, same behaviour) without its leak.

    BentoML 1.4.40's middleware schedules ``loop.call_later(timeout, ...)`` for every request and
    never cancels it, so each request leaves a timer, a future and a copy of its context (with
    its tracing span) alive for ``timeout`` seconds after it was answered: ~0.8 KB a request
    here (~5 KB with a span), so with ``timeout=600`` the service's memory rose for ten minutes
    under load (issue 7). Here the timer is cancelled as soon as the answer starts or the app
    returns. Only the time to the answer's first message is limited, as in BentoML.
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        answering = asyncio.get_running_loop().create_future()

        async def send_and_note(message: Message) -> None:
            if not answering.done():
                answering.set_result(None)
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, send_and_note))
        try:
            # asyncio.wait cancels its own timer when it returns
            await asyncio.wait(
                (answering, task), timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:  # cancelled from outside: take the request's work with it
            task.cancel()
            raise
        if not answering.done() and task.cancel():
            return await _answer(
                send, 504, {"error": f"Not able to process the request in {self.timeout} seconds"}
            )
        await task
