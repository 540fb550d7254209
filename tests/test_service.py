"""The real HTTP service (``bentoml serve``) on a free port of 127.0.0.1, driven over HTTP.

One server for the whole module, on a private copy of the session's registry (so promoting and
rolling back here never touches other tests' champion). It starts with no champion (not
ready, saying why), takes the champion up without a restart, then answers every endpoint.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest

from systemhealer import deployments, tracking
from systemhealer.config import Settings, load_settings
from systemhealer.data import KPI_FEATURES, PROBA_COLUMNS
from systemhealer.serve import free_port, start_service, stop_service, wait_ready

pytestmark = pytest.mark.integration

ROWS = 200
SERVICE_ENV = {
    "SYSTEMHEALER_SERVING__MODEL_POLL_SECONDS": "1",
    # Small limits keep the oversized-request cases cheap.
    "SYSTEMHEALER_SERVING__MAX_BODY_MB": "8",
    "SYSTEMHEALER_SERVING__MAX_UPLOAD_MB": "4",
}


def settings_for(home: Path) -> Settings:
    """Settings of another state folder (the environment decides ``home``)."""
    saved = os.environ.get("SYSTEMHEALER_HOME")
    os.environ["SYSTEMHEALER_HOME"] = str(home)
    try:
        return load_settings()
    finally:
        if saved is None:
            os.environ.pop("SYSTEMHEALER_HOME", None)
        else:
            os.environ["SYSTEMHEALER_HOME"] = saved


@dataclass(frozen=True)
class Served:
    """The running service and what was seen while it started."""

    url: str
    settings: Settings
    version: str
    run_id: str | None
    before_champion: httpx.Response


def _readyz(url: str) -> httpx.Response | None:
    try:
        return httpx.get(f"{url}/readyz", timeout=5)
    except httpx.TransportError:
        return None


@pytest.fixture(scope="module")
def served(trained_state: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("service-home")
    shutil.copy(trained_state.home / "mlflow.db", home / "mlflow.db")
    settings = settings_for(home)
    champion = tracking.champion(settings)
    assert champion is not None
    client = tracking.configure(settings)
    client.delete_registered_model_alias(
        settings.registry.model_name, settings.registry.champion_alias
    )
    url = f"http://127.0.0.1:{(port := free_port())}"
    log_path = home / "service.log"
    with log_path.open("wb") as log:
        process = start_service(settings, "127.0.0.1", port, log=log, extra_env=SERVICE_ENV)
        try:
            deadline = time.monotonic() + 180
            answer = _readyz(url)
            while (answer is None or "no champion" not in answer.text) and (
                time.monotonic() < deadline and process.poll() is None
            ):
                time.sleep(0.5)
                answer = _readyz(url)
            assert answer is not None, log_path.read_text(errors="replace")[-3000:]
            tracking.set_champion(settings, champion.version, record=False)
            wait_ready(url, process, timeout=60)
            family = psutil.Process(process.pid).children(recursive=True)
            assert any(os.getsid(p.pid) != process.pid for p in family)  # a worker, own session
            yield Served(url, settings, champion.version, champion.run_id, answer)
        finally:
            stop_service(process)
    assert process.poll() is not None
    # BentoML's workers run in sessions of their own: none may outlive the service.
    assert family
    assert not [p.pid for p in family if p.is_running()]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def incidents(unlabelled_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("service-rows") / "incidents.csv"
    unlabelled_frame.head(ROWS).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def cli_diagnoses(served: Served, incidents: Path) -> Path:
    """What ``systemhealer predict`` writes for the same rows, with the same champion."""
    output = incidents.with_name("cli-diagnoses.csv")
    env = {**os.environ, "SYSTEMHEALER_HOME": str(served.settings.home)}
    command = [sys.executable, "-m", "systemhealer.cli", "predict", str(incidents)]
    subprocess.run(
        [*command, "--output", str(output), "--no-progress"], env=env, check=True, timeout=300
    )
    return output


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))


def assert_same_diagnoses(answers: list[dict[str, Any]], expected: pd.DataFrame) -> None:
    assert [a["sample_id"] for a in answers] == expected["sample_id"].tolist()
    probabilities = np.array([a["probabilities"] for a in answers])
    np.testing.assert_allclose(probabilities, expected[list(PROBA_COLUMNS)], atol=1e-5)
    np.testing.assert_allclose(
        [a["confidence"] for a in answers], expected["confidence"], atol=1e-5
    )
    # Labels agree wherever the top two classes are not a near tie.
    top_two = np.sort(expected[list(PROBA_COLUMNS)].to_numpy(), axis=1)[:, -2:]
    clear = (top_two[:, 1] - top_two[:, 0]) > 1e-4
    labels = np.array([a["predicted_label"] for a in answers])
    assert (labels[clear] == expected["predicted_label"].to_numpy()[clear]).all()


def test_not_ready_until_a_champion_exists_then_takes_it_up(served: Served, http) -> None:
    assert served.before_champion.status_code == 503
    assert "no champion" in served.before_champion.text
    assert "systemhealer train" in served.before_champion.text
    assert http.get(f"{served.url}/readyz").status_code == 200
    info = http.get(f"{served.url}/model_info").json()
    assert info["version"] == served.version
    assert info["serving"]["model_swaps"] == 1


def test_health_metrics_and_docs(served: Served, http) -> None:
    assert http.get(f"{served.url}/livez").status_code == 200
    # The web page is mounted at "/" and does not shadow the API routes (tested throughout).
    page = http.get(f"{served.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert http.get(f"{served.url}/predict").status_code == 405  # POST only, not the page
    answer = http.post(f"{served.url}/predict", json={"incident": {"feature3": 1.0}})
    assert answer.status_code == 200  # answered on the fast path, counted in /metrics too
    metrics = http.get(f"{served.url}/metrics")
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
    fast = [
        line
        for line in metrics.text.splitlines()
        if line.startswith("systemhealer_fast_request_duration_seconds_count")
        and 'endpoint="/predict"' in line
        and 'http_response_code="200"' in line
    ]
    assert fast and float(fast[0].rsplit(" ", 1)[1]) >= 1
    docs = http.get(f"{served.url}/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert "googletagmanager" not in docs.text and "https://" not in docs.text
    # BentoML's description of the service embeds badges from other hosts: never fetched.
    assert "default-src 'self'" in docs.headers["content-security-policy"]
    assert http.get(f"{served.url}/static_content/swagger-ui-bundle.js").status_code == 200
    spec = http.get(f"{served.url}/docs.json").json()
    for path in ("/predict", "/predict_batch", "/predict_csv", "/model_info"):
        assert path in spec["paths"], path


def test_model_info(served: Served, http) -> None:
    info = http.get(f"{served.url}/model_info").json()
    assert info["name"] == "fault-diagnosis" and info["alias"] == "champion"
    assert info["run_id"] == served.run_id
    assert "eval_macro_f1" in info["training_metrics"]
    assert len(info["features"]) == 107 and info["features"][0] == "feature0"
    assert set(info["features_used"]) <= set(info["features"])
    assert info["missing_values"] == "no_evidence"
    assert info["loaded_at"]


def test_batch_single_and_upload_agree_with_the_cli(
    served: Served, http, incidents: Path, cli_diagnoses: Path
) -> None:
    expected = pd.read_csv(cli_diagnoses)
    rows = records(pd.read_csv(incidents))

    answer = http.post(f"{served.url}/predict_batch", json={"incidents": rows})
    assert answer.status_code == 200, answer.text
    batch = answer.json()
    assert {a["model_version"] for a in batch} == {served.version}
    assert_same_diagnoses(batch, expected)

    def single(row: dict[str, Any]) -> dict[str, Any]:
        reply = httpx.post(f"{served.url}/predict", json={"incident": row}, timeout=60)
        assert reply.status_code == 200, reply.text
        return reply.json()

    with ThreadPoolExecutor(8) as pool:
        singles = list(pool.map(single, rows[:40]))
    assert_same_diagnoses(singles, expected.head(40))

    with incidents.open("rb") as file:
        upload = http.post(
            f"{served.url}/predict_csv", files={"file": ("incidents.csv", file, "text/csv")}
        )
    assert upload.status_code == 200, upload.text
    assert upload.headers["content-type"].startswith("text/csv")
    assert upload.headers["x-model-version"] == served.version
    assert upload.content == cli_diagnoses.read_bytes()


def test_incidents_without_sample_id_get_their_position(served: Served, http, incidents) -> None:
    rows = records(pd.read_csv(incidents).drop(columns=["sample_id"]).head(3))
    batch = http.post(f"{served.url}/predict_batch", json={"incidents": rows}).json()
    assert [a["sample_id"] for a in batch] == [0, 1, 2]
    single = http.post(f"{served.url}/predict", json={"incident": rows[2]}).json()
    assert single["sample_id"] == 0
    assert single["probabilities"] == pytest.approx(batch[2]["probabilities"], abs=1e-6)


def test_each_diagnosis_says_how_many_of_the_model_kpis_it_read(
    served: Served, http, incidents: Path
) -> None:
    used = http.get(f"{served.url}/model_info").json()["features_used"]
    frame = pd.read_csv(incidents).head(2)
    rows = records(frame)
    others = [c for c in KPI_FEATURES if c not in used]
    blind = {c: 1.0 for c in others[:5]}  # values only in KPIs the model does not read
    batch = http.post(f"{served.url}/predict_batch", json={"incidents": [*rows, blind]}).json()
    assert [a["kpis_read"] for a in batch[:2]] == frame[used].notna().sum(axis=1).tolist()
    assert batch[2]["kpis_read"] == 0
    single = http.post(f"{served.url}/predict", json={"incident": blind}).json()
    assert single["kpis_read"] == 0


def test_a_calibrated_deployment_normalises_the_incidents(
    served: Served, http, unlabelled_frame: pd.DataFrame
) -> None:
    reference = unlabelled_frame.iloc[ROWS : ROWS + 300]
    deployments.register_deployment(served.settings, "site-b", reference, "site-b.csv")
    rows = records(unlabelled_frame.head(20))
    answer = http.post(
        f"{served.url}/predict_batch", json={"incidents": rows, "deployment": "site-b"}
    )
    assert answer.status_code == 200, answer.text
    diagnoser, _ = tracking.load_diagnoser(served.settings)
    stats = deployments.deployment_stats(served.settings, diagnoser, "site-b")
    frame = unlabelled_frame.head(20)
    expected = diagnoser.diagnose(frame.drop(columns=["sample_id"]), stats)
    expected.insert(0, "sample_id", frame["sample_id"].to_numpy())
    assert_same_diagnoses(answer.json(), expected)
    plain = http.post(f"{served.url}/predict_batch", json={"incidents": rows}).json()
    assert not np.allclose(
        [a["probabilities"] for a in plain], [a["probabilities"] for a in answer.json()]
    )


def _incident(unlabelled_frame: pd.DataFrame) -> dict[str, Any]:
    return records(unlabelled_frame.head(1))[0]


JSON = {"content-type": "application/json"}
BAD_REQUESTS: dict[str, tuple[str, dict[str, Any], int, str]] = {
    # name: (path, httpx.post keyword arguments, status, text the answer must contain)
    "malformed JSON": ("/predict", {"content": b'{"incident": {', "headers": JSON}, 400, "JSON"),
    "no incident field": ("/predict", {"json": {}}, 400, "incident"),
    "incident not an object": ("/predict", {"json": {"incident": [1, 2]}}, 400, "incident"),
    "string in a numeric field": (
        "/predict",
        {"json": {"incident": {"feature3": "abc"}}},
        400,
        "incident.feature3",
    ),
    "numeric text": ("/predict", {"json": {"incident": {"feature3": "1.5"}}}, 400, "feature3"),
    "boolean": ("/predict", {"json": {"incident": {"feature3": True}}}, 400, "feature3"),
    "nested list": ("/predict", {"json": {"incident": {"feature3": [1]}}}, 400, "feature3"),
    "+inf": (
        "/predict",
        {"content": b'{"incident": {"feature7": Infinity}}', "headers": JSON},
        400,
        "incident.feature7",
    ),
    "-inf as 1e999": (
        "/predict",
        {"content": b'{"incident": {"feature7": -1e999}}', "headers": JSON},
        400,
        "incident.feature7",
    ),
    "unknown feature": (
        "/predict",
        {"json": {"incident": {"feature0": 1.0, "feature107": 2.0}}},
        400,
        "feature107",
    ),
    "all features missing": ("/predict", {"json": {"incident": {"sample_id": 1}}}, 400, "missing"),
    "all features null": (
        "/predict",
        {"json": {"incident": {f"feature{i}": None for i in range(107)}}},
        400,
        "missing",
    ),
    "sample_id of a wrong type": (
        "/predict",
        {"json": {"incident": {"feature0": 1.0, "sample_id": {"a": 1}}}},
        400,
        "sample_id",
    ),
    "huge integer id beside an unknown field": (
        "/predict",
        {
            "content": b'{"incident": {"feature0": 1.0, "sample_id": 123456789012345678901234}, '
            b'"deployment": null, "extra": 1}',
            "headers": JSON,
        },
        400,
        "unknown field(s) 'extra'",
    ),
    "huge integer id, fast route": (
        "/predict",
        {
            "content": b'{"incident": {"feature0": 1.0, "sample_id": 123456789012345678901234}}',
            "headers": JSON,
        },
        400,
        "sample_id",
    ),
    "empty list": ("/predict_batch", {"json": {"incidents": []}}, 400, "empty"),
    "incidents not a list": ("/predict_batch", {"json": {"incidents": {"a": 1}}}, 400, "incidents"),
    "bad row in a batch": (
        "/predict_batch",
        {"json": {"incidents": [{"feature0": 1.0}, {"feature0": "x"}]}},
        400,
        "incidents[1].feature0",
    ),
    "too many incidents": (
        "/predict_batch",
        {"json": {"incidents": [{"feature0": 1.0}] * 10_001}},
        413,
        "/predict_csv",
    ),
    "body over the size limit": (
        "/predict_batch",
        {"content": b" " * (9 * 2**20), "headers": JSON},
        413,
        "serving.max_body_mb",
    ),
    "chunked body over the limit": (
        "/predict_batch",
        {"content": iter([b" " * 2**20] * 9), "headers": JSON},
        413,
        "limit",
    ),
    "wrong content type": (
        "/predict",
        {"content": b'{"incident": {"feature0": 1}}', "headers": {"content-type": "text/plain"}},
        415,
        "application/json",
    ),
    "form instead of JSON": ("/predict", {"data": {"incident": "x"}}, 415, "/predict_csv"),
    "compressed body": (
        "/predict",
        {
            "content": gzip.compress(b'{"incident": {"feature0": 1}}'),
            "headers": {**JSON, "content-encoding": "gzip"},
        },
        415,
        "Content-Encoding 'gzip'",
    ),
    "deployment given twice": (
        "/predict",
        {
            "content": b'{"incident": {"feature0": 1}, "deployment": "x", "deployment": null}',
            "headers": JSON,
        },
        400,
        "'deployment' appears more than once",
    ),
    "unpaired surrogate in a sample_id": (
        "/predict",
        {"content": b'{"incident": {"sample_id": "\\ud800", "feature0": 1}}', "headers": JSON},
        400,
        "not valid Unicode",
    ),
    "unknown deployment": (
        "/predict",
        {"json": {"incident": {"feature0": 1.0}, "deployment": "nowhere"}},
        404,
        "nowhere",
    ),
    "deployment name with a path": (
        "/predict",
        {"json": {"incident": {"feature0": 1.0}, "deployment": "../x"}},
        400,
        "deployment name",
    ),
    "unknown top-level field": (
        "/predict",
        {"json": {"incident": {"feature0": 1.0}, "deploymnet": "site"}},
        400,
        "unknown field(s) 'deploymnet'",
    ),
    "unknown top-level field in a batch": (
        "/predict_batch",
        {"json": {"incidents": [{"feature0": 1.0}], "deployments": "site"}},
        400,
        "'deployments'",
    ),
    "NaN literal": (
        "/predict",
        {"content": b'{"incident": {"feature0": NaN, "feature1": 1}}', "headers": JSON},
        400,
        "NaN is not JSON",
    ),
    "batch row not an object": (
        "/predict_batch",
        {"json": {"incidents": [{"feature0": 1.0}, None]}},
        400,
        "incidents[1]: must be an object",
    ),
    "deeply nested body": ("/predict", {"content": b"[" * 5000, "headers": JSON}, 400, "JSON"),
    "deployment not a string": (
        "/predict",
        {"json": {"incident": {"feature0": 1.0}, "deployment": 5}},
        400,
        "deployment",
    ),
    "upload as JSON": ("/predict_csv", {"json": {"file": "http://example.com/x.csv"}}, 415, "file"),
    "upload without a file": (
        "/predict_csv",
        {"files": {"other": ("a.csv", b"x")}},
        422,
        "file",
    ),
    "URL instead of a file": (
        "/predict_csv",
        {"data": {"file": "http://127.0.0.1:1/x.csv"}, "files": {"x": ("x", b"")}},
        422,
        "file",
    ),
    "binary upload": (
        "/predict_csv",
        {"files": {"file": ("a.csv", bytes(range(256)))}},
        400,
        "a.csv",
    ),
    "upload with other columns": (
        "/predict_csv",
        {"files": {"file": ("a.csv", b"a,b\n1,2\n")}},
        400,
        "missing columns",
    ),
    "upload with a text cell": (
        "/predict_csv",
        {"files": {"file": ("t.csv", ",".join(KPI_FEATURES).encode() + b"\nhigh" + b",1" * 106)}},
        400,
        "score the file with `systemhealer predict --on-bad-rows skip`",
    ),
    "empty upload": ("/predict_csv", {"files": {"file": ("a.csv", b"")}}, 400, "a.csv"),
    "upload over the size limit": (
        "/predict_csv",
        {"files": {"file": ("a.csv", b"0" * (5 * 2**20))}},
        413,
        "serving.max_upload_mb); score a larger file offline with `systemhealer predict",
    ),
    "compressed upload that unpacks past the limit": (
        "/predict_csv",
        {"files": {"file": ("bomb.csv.gz", gzip.compress(b"feature0\n" + b"1.0\n" * 2**21))}},
        413,
        "bomb.csv.gz: its data unpack to more than 4 MB",
    ),
    "broken multipart": (
        "/predict_csv",
        {
            "content": b'--xx\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
            "headers": {"content-type": "multipart/form-data; boundary=xx"},
        },
        422,
        "file",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_naming_the_problem(served: Served, http, case: str) -> None:
    path, request, status, words = BAD_REQUESTS[case]
    answer = http.post(f"{served.url}{path}", **request)
    assert answer.status_code == status, answer.text
    assert words in answer.text


def test_the_service_stays_healthy_after_bad_requests(served: Served, http, unlabelled_frame):
    for path, request, _, _ in BAD_REQUESTS.values():
        if not isinstance(request.get("content"), bytes | None):
            continue  # a generator body can be sent only once
        http.post(f"{served.url}{path}", **request)
    assert http.get(f"{served.url}/readyz").status_code == 200
    answer = http.post(f"{served.url}/predict", json={"incident": _incident(unlabelled_frame)})
    assert answer.status_code == 200


def test_concurrent_single_requests_share_forward_passes(served: Served, unlabelled_frame):
    rows = records(unlabelled_frame.head(64))
    before = httpx.get(f"{served.url}/model_info").json()["serving"]
    limits = httpx.Limits(max_connections=32)
    with httpx.Client(timeout=60, limits=limits) as client, ThreadPoolExecutor(32) as pool:
        statuses = list(
            pool.map(
                lambda row: (
                    client.post(f"{served.url}/predict", json={"incident": row}).status_code
                ),
                rows * 2,
            )
        )
    after = httpx.get(f"{served.url}/model_info").json()["serving"]
    assert set(statuses) == {200}
    requests = after["requests"] - before["requests"]
    passes = after["passes"] - before["passes"]
    assert requests == len(rows) * 2
    assert passes < requests and after["largest_pass"] > 1


def test_hot_swap_fails_no_request_in_flight(served: Served, unlabelled_frame) -> None:
    settings = served.settings
    first = tracking.champion(settings)
    assert first is not None
    second = tracking.register(settings, first.source, {"note": "hot-swap test"})
    rows = records(unlabelled_frame.head(50))
    outcomes: Counter[tuple[int, str]] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def hammer(offset: int) -> None:
        with httpx.Client(timeout=60) as client:
            i = offset
            while not stop.is_set():
                i += 1
                try:
                    if i % 5 == 0:
                        reply = client.post(
                            f"{served.url}/predict_batch", json={"incidents": rows[:20]}
                        )
                        versions = {a["model_version"] for a in reply.json()}
                        assert len(versions) == 1, versions  # one model per request
                        version = versions.pop()
                    else:
                        reply = client.post(
                            f"{served.url}/predict", json={"incident": rows[i % len(rows)]}
                        )
                        version = reply.json()["model_version"]
                    outcomes[(reply.status_code, version)] += 1
                except Exception as exc:
                    failures.append(repr(exc))

    def wait_for(version: str) -> None:
        deadline = time.monotonic() + 60
        while httpx.get(f"{served.url}/model_info").json()["version"] != version:
            assert time.monotonic() < deadline, f"version {version} not taken up"
            time.sleep(0.2)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        tracking.set_champion(settings, second.version, record=False)  # promote
        wait_for(second.version)
        time.sleep(1)
        tracking.set_champion(settings, first.version, record=False)  # roll back
        wait_for(first.version)
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not failures, failures[:3]
    assert {status for status, _ in outcomes} == {200}
    assert {version for _, version in outcomes} == {first.version, second.version}
    assert httpx.get(f"{served.url}/model_info").json()["serving"]["model_swaps"] == 3


def test_bentoml_builds_the_service_with_our_timeout_middleware() -> None:
    """Issue 7: BentoML's own request timeout kept a timer per request alive for the whole
    ``traffic.timeout`` (memory rising with every request); the service module swaps in
    :class:`AnswerTimeout`, which BentoML must be the one to pick up when it builds the app."""
    from bentoml._internal.server.base_app import BaseAppFactory

    import systemhealer.service  # noqa: F401  (installs it)
    from systemhealer.http_guard import AnswerTimeout

    class App(BaseAppFactory):
        name = "probe"

        def __call__(self) -> Any:
            raise NotImplementedError

    assert [m.cls for m in App(timeout=600).middlewares] == [AnswerTimeout]
