"""Fast checks of the serving library: JSON incident checks, micro-batching, the request guard,
and the champion watcher with no champion."""

from __future__ import annotations

import asyncio
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from systemhealer.data import KPI_FEATURES
from systemhealer.errors import ModelNotFoundError
from systemhealer.http_guard import AnswerTimeout, RequestGuard
from systemhealer.incidents import IncidentError, TooManyIncidentsError, parse_incidents
from systemhealer.serving import ChampionWatcher, MicroBatcher, upload_suffix

with warnings.catch_warnings():  # "install httpx2": the TestClient works with httpx as it is
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

# --- JSON incidents ---


def test_incidents_become_rows_with_missing_values_as_nan() -> None:
    rows = parse_incidents(
        [{"sample_id": "a", "feature0": 1, "feature5": None}, {"feature106": 2.5, "label": 3}],
        max_incidents=10,
    )
    assert rows.sample_ids == ["a", 1]
    assert rows.features.shape == (2, len(KPI_FEATURES))
    assert rows.features[0, 0] == 1.0 and math.isnan(rows.features[0, 5])
    assert rows.features[1, 106] == 2.5 and np.isnan(rows.features[1, :106]).all()
    frame = rows.frame()
    assert list(frame.columns) == ["sample_id", *KPI_FEATURES]


@pytest.mark.parametrize(
    ("incidents", "words"),
    [
        ([], "empty"),
        ({"feature0": 1}, "must be a list"),
        ([1.0], "incidents[0]: must be an object"),
        ([{"feature0": 1}, {"feature0": "1.5"}], "incidents[1].feature0: must be a number"),
        ([{"feature0": True}], "incidents[0].feature0"),
        ([{"feature0": math.inf}], "incidents[0].feature0: inf"),
        ([{"feature0": 10**400}], "incidents[0].feature0: inf"),
        (
            [{"feature0": 1}, {"feature0": None, "feature3": math.nan, "feature4": 2}],
            "incidents[1].feature3: NaN is not JSON",
        ),
        ([{"feature0": 1}, {"featur0": 1}], "incidents[1]: unknown field 'featur0'"),
        ([{"feature0": 1}, {"sample_id": 7}], "incidents[1]: all 107 KPI features are missing"),
        ([{"feature0": 1, "sample_id": 1.5}], "incidents[0].sample_id"),
        ([{"feature0": 1, "sample_id": "x" * 300}], "longer than"),
        ([{"feature0": 1, "sample_id": 2**70}], "outside the 64-bit range"),
    ],
)
def test_bad_incidents_are_named(incidents: object, words: str) -> None:
    with pytest.raises(IncidentError) as error:
        parse_incidents(incidents, max_incidents=10)
    assert words in str(error.value)


def test_too_many_incidents_is_its_own_error() -> None:
    with pytest.raises(TooManyIncidentsError) as error:
        parse_incidents([{"feature0": 1}] * 3, max_incidents=2)
    assert error.value.http_status == 413 and "/predict_csv" in str(error.value)


def test_a_single_incident_is_named_without_an_index() -> None:
    with pytest.raises(IncidentError, match=r"^incident\.feature9: "):
        parse_incidents({"feature9": "x"}, 1, field="incident", single=True)


def test_upload_suffix_never_keeps_a_path() -> None:
    assert upload_suffix("../../etc/x.PARQUET") == ".parquet"
    assert upload_suffix("data.csv.gz") == ".csv.gz"
    assert upload_suffix(None) == upload_suffix("noext") == ".csv"


# --- micro-batching ---


def test_concurrent_jobs_share_passes_and_errors_stay_with_their_job() -> None:
    passes: list[list[int]] = []

    def run_batch(jobs: list[int]) -> list[int | Exception]:
        passes.append(list(jobs))
        time.sleep(0.02)
        return [ValueError(f"bad {j}") if j == 3 else j * 10 for j in jobs]

    async def main() -> list[object]:
        batcher: MicroBatcher[int, int] = MicroBatcher(run_batch)
        try:
            return await asyncio.gather(
                *(batcher.submit(j) for j in range(8)), return_exceptions=True
            )
        finally:
            batcher.close()

    results = asyncio.run(main())
    assert results[:3] == [0, 10, 20] and results[4:] == [40, 50, 60, 70]
    assert isinstance(results[3], ValueError)
    assert sorted(j for p in passes for j in p) == list(range(8))
    assert len(passes) < 8  # the first pass ran alone, the rest queued up behind it


# --- the request guard ---


def _guarded(**options: object) -> TestClient:
    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{len(await request.body())}")

    async def ready(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            Route("/predict", echo, methods=["POST"]),
            Route("/upload", echo, methods=["POST"]),
            Route("/readyz", ready),
        ]
    )
    settings = {
        "json_routes": ["/predict"],
        "upload_routes": ["/upload"],
        "max_body_bytes": 100,
        "max_upload_bytes": 1000,
        **options,
    }
    return TestClient(RequestGuard(app, **settings))  # type: ignore[arg-type]


def test_guard_checks_type_and_size_before_the_app() -> None:
    client = _guarded()
    assert client.post("/predict", json={"a": 1}).text == str(len(b'{"a":1}'))
    assert client.post("/predict", content=b"{}").status_code == 200  # no type: JSON
    assert (
        client.post("/predict", content=b"x", headers={"content-type": "text/csv"}).status_code
        == 415
    )
    too_big = client.post(
        "/predict", content=b"x" * 101, headers={"content-type": "application/json"}
    )
    assert too_big.status_code == 413 and "max_body_mb" in too_big.json()["error"]
    chunked = client.post("/predict", content=iter([b"x" * 60, b"x" * 60]))
    assert chunked.status_code == 413
    assert client.post("/predict", content=iter([b"x" * 60, b"x" * 30])).text == "90"
    assert client.post("/upload", json={}).status_code == 415
    assert client.post("/upload", files={"file": ("a.csv", b"1")}).status_code == 200
    assert client.post("/upload", files={"file": ("a.csv", b"1" * 2000)}).status_code == 413


def test_guard_fast_route_answers_or_hands_over() -> None:
    """A fast route answers after the checks; None or a failure hands the request (body intact)
    to the app; the checks still come first."""

    async def fast(body: bytes) -> PlainTextResponse | None:
        if body == b"boom":
            raise RuntimeError("bug in the fast path")
        return PlainTextResponse(f"fast {len(body)}") if body.startswith(b"{") else None

    client = _guarded(fast_routes={"/predict": fast}, api_token="t")
    auth = {"authorization": "Bearer t"}
    assert client.post("/predict", content=b'{"a":1}', headers=auth).text == "fast 7"
    assert client.post("/predict", content=b"[1, 2]", headers=auth).text == "6"  # the app
    assert client.post("/predict", content=b"boom", headers=auth).text == "4"
    assert client.post("/predict", content=b"{}").status_code == 401
    assert client.post("/predict", content=b"{" * 101, headers=auth).status_code == 413


def test_guard_token_and_readiness_reason() -> None:
    client = _guarded(api_token="s3cret", not_ready=lambda: "no champion yet")
    assert client.post("/predict", json={}).status_code == 401
    assert (
        client.post("/predict", json={}, headers={"authorization": "Bearer nope"}).status_code
        == 401
    )
    assert (
        client.post("/predict", json={}, headers={"authorization": "Bearer s3cret"}).status_code
        == 200
    )
    answer = client.get("/readyz")
    assert answer.status_code == 503 and "no champion yet" in answer.text


def test_guard_survives_a_failing_readiness_check() -> None:
    def broken() -> str | None:
        raise RuntimeError("boom")

    answer = _guarded(not_ready=broken).get("/readyz")
    assert answer.status_code == 503 and "boom" in answer.text


def _call(app: object, times: int = 1) -> tuple[list[dict[str, object]], int]:
    """The messages ``app`` sends for ``times`` GET requests, and the timers still pending in
    the loop afterwards (asyncio's own loop, whose pending timers are ``_scheduled``)."""
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def run() -> int:
        for _ in range(times):
            await app({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)  # type: ignore[operator]
        loop = asyncio.get_running_loop()
        return sum(not timer.cancelled() for timer in loop._scheduled)  # type: ignore[attr-defined]

    return sent, asyncio.run(run())


async def _hello(scope: object, receive: object, send: object) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"hello"})  # type: ignore[operator]


def test_answer_timeout_leaves_no_timer_behind() -> None:
    """Issue 7: BentoML's timeout middleware left each request's timer (and its context) alive
    for the whole timeout; this one cancels it once answered."""
    sent, pending = _call(AnswerTimeout(_hello, timeout=600), times=50)  # type: ignore[arg-type]
    assert [m.get("status") for m in sent[::2]] == [200] * 50
    assert pending == 0


def test_answer_timeout_answers_504_and_stops_the_work() -> None:
    stopped = []

    async def never_answers(scope: object, receive: object, send: object) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(True)

    sent, pending = _call(AnswerTimeout(never_answers, timeout=0.01))  # type: ignore[arg-type]
    assert sent[0]["status"] == 504 and b"0.01 seconds" in sent[1]["body"]  # type: ignore[operator]
    assert stopped == [True] and pending == 0


def test_answer_timeout_passes_on_an_app_failure() -> None:
    async def broken(scope: object, receive: object, send: object) -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        _call(AnswerTimeout(broken, timeout=600))  # type: ignore[arg-type]


# --- the champion watcher ---


def test_watcher_without_a_champion_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from systemhealer.config import load_settings

    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path))
    watcher = ChampionWatcher(load_settings())
    assert watcher.refresh() is False
    assert watcher.current is None
    assert "no champion" in (watcher.problem or "")
    with pytest.raises(ModelNotFoundError, match="systemhealer train"):
        watcher.require()
