"""The HTTP API under hostile and heavy use: an OpenAPI-driven fuzz (schemathesis) that must
never get a 5xx, the API token on every mutating call, request paths that try to reach files,
and a short load with the champion swapped meanwhile (zero errors, memory bounded).

One service for the module, with an API token, over a private copy of the session's registry.
The long version of the load is ``make soak`` (benchmarks/soak.py).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from benchmarks.soak import run_soak
from systemhealer import tracking
from systemhealer.config import Settings
from systemhealer.serve import free_port, start_service, stop_service, wait_ready
from tests.ops_helpers import settings_of

pytestmark = pytest.mark.integration

TOKEN = "reliability-test-token"
MUTATING = {"post", "put", "patch", "delete"}
EXAMPLES = 10  # per operation and mode; `st run` by hand goes further (docs/operations.md)


def unexpected_tracebacks(log: Path) -> list[str]:
    """The exception lines of the tracebacks in a service log, but for BentoML's own logging of
    malformed JSON bodies (pydantic ValidationError: the client got its 400)."""
    found = []
    for block in log.read_text(errors="replace").split("Traceback (most recent call last):")[1:]:
        last = next((line for line in block.splitlines() if line and line[0] != " "), "?")
        if not last.startswith("pydantic_core._pydantic_core.ValidationError"):
            found.append(last)
    return found


@dataclass(frozen=True)
class Service:
    url: str
    pid: int
    settings: Settings
    log: Path
    versions: list[str]


@pytest.fixture(scope="module")
def service(trained_state: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("reliability-home")
    shutil.copy(trained_state.home / "mlflow.db", home / "mlflow.db")
    state = settings_of(home)
    champion = tracking.champion(state)
    assert champion is not None
    # The same model registered once more: something real to swap to under load.
    twin = tracking.register(state, champion.source, {"test": "twin"})
    port = free_port()
    log = home / "service.log"
    env = {
        "SYSTEMHEALER_SERVING__API_TOKEN": TOKEN,
        "SYSTEMHEALER_SERVING__MODEL_POLL_SECONDS": "1",
        "SYSTEMHEALER_SERVING__MAX_UPLOAD_MB": "2",
        "SYSTEMHEALER_SERVING__MAX_BODY_MB": "2",
    }
    with log.open("wb") as sink:
        process = start_service(state, "127.0.0.1", port, log=sink, extra_env=env)
        try:
            wait_ready(f"http://127.0.0.1:{port}", process, timeout=240)
            yield Service(
                f"http://127.0.0.1:{port}",
                process.pid,
                state,
                log,
                [champion.version, twin.version],
            )
        finally:
            stop_service(process)


def test_fuzzed_requests_never_get_a_server_error(service: Service) -> None:
    """Every operation of the OpenAPI spec, with valid and with invalid inputs (schemathesis
    strategies driven by hypothesis), sent with the token: any status but 5xx is fine."""
    schema = schemathesis.openapi.from_url(f"{service.url}/docs.json")
    failures: list[str] = []
    calls: Counter[str] = Counter()

    def fuzz(operation: Any, mode: GenerationMode) -> None:
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
            calls[operation.label] += 1
            if response.status_code >= 500:
                failures.append(
                    f"{operation.label} → {response.status_code}: {response.text[:300]}"
                )

        try:
            call()
        except Unsatisfiable:
            # No invalid input exists for an operation without parameters (GET /livez …).
            assert mode is GenerationMode.NEGATIVE, operation.label

    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(result.ok(), mode)
    assert not failures, "\n".join(failures[:20])
    assert len(calls) >= 25, calls  # the API and the web page's API
    assert sum(calls.values()) >= 250
    assert unexpected_tracebacks(service.log) == []


def test_every_post_needs_the_token_and_reads_stay_open(service: Service) -> None:
    spec = httpx.get(f"{service.url}/docs.json").json()
    guarded = [
        (method, path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in MUTATING
    ]
    # The diagnoses, the web page's jobs, uploads, promote, rollback, calibration …
    assert {"/predict", "/predict_csv", "/ui/api/models/rollback"} <= {p for _, p in guarded}
    champion_before = tracking.champion(service.settings).version
    with httpx.Client(timeout=60) as http:
        for method, path in guarded:
            url = service.url + path.replace("{version}", "1").replace(
                "{job_id}", "20260101T000000000000-abcdef"
            )
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                answer = http.request(method.upper(), url, headers=headers, json={})
                assert answer.status_code == 401, (method, path, headers, answer.text[:300])
    assert tracking.champion(service.settings).version == champion_before
    for path in ("/model_info", "/ui/api/models", "/readyz"):
        assert httpx.get(service.url + path, timeout=60).status_code == 200, path


@pytest.mark.parametrize(
    "path",
    [
        "/ui/api/jobs/..%2F..%2F..%2Fetc%2Fpasswd",
        "/ui/api/jobs/%2Fetc%2Fpasswd/rows",
        "/ui/api/jobs/20260101T000000000000-abcdef/download/..%2F..%2Fmlflow.db",
        "/ui/api/jobs/20260101T000000000000-abcdef/download/%2Fetc%2Fpasswd",
        "/ui/api/models/..%2F..%2F1/report",
        "/ui/api/models/1%2F..%2F..%2F/archive",
        "/../../etc/passwd",
        "/static_content/..%2F..%2F..%2Fetc%2Fpasswd",
    ],
)
def test_request_paths_never_reach_files_outside_the_state(service: Service, path: str) -> None:
    with httpx.Client(timeout=60) as http:
        answer = http.get(service.url + path)
    assert 400 <= answer.status_code < 500, (path, answer.status_code)
    assert "root:" not in answer.text and "SQLite format" not in answer.text


def test_short_load_with_champion_swaps_has_zero_errors(service: Service) -> None:
    result = run_soak(
        service.url,
        seconds=12,
        clients=8,
        token=TOKEN,
        pid=service.pid,
        swap=(service.settings, service.versions, 3.0),
    )
    figures = result.figures()
    assert figures["errors"] == 0, figures
    assert figures["requests"] > 100, figures
    assert figures["champion_swaps"] >= 2
    assert len(figures["model_versions_answering"]) == 2, figures  # both served, no failure
    # Memory: no runaway growth in a short run (the soak measures minutes).
    assert figures["rss_mb_after"] - figures["rss_mb_before"] < 250, figures
    time.sleep(0.5)
    assert httpx.get(f"{service.url}/readyz", timeout=30).status_code == 200
    assert unexpected_tracebacks(service.log) == []
