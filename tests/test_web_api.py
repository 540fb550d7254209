"""The web platform's JSON API and pages, in process (the browser tests drive a real server)."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from systemhealer import jobs, tracking
from systemhealer.config import Settings, load_settings
from systemhealer.data import KPI_FEATURES
from systemhealer.web import create_app
from systemhealer.web.guard import BodyLimit

STATIC = Path(__file__).resolve().parents[1] / "src" / "systemhealer" / "web" / "static"
pytestmark = pytest.mark.integration


def _with(settings: Settings, **serving: Any) -> Settings:
    return settings.model_copy(update={"serving": settings.serving.model_copy(update=serving)})


@pytest.fixture(scope="module")
def client(trained_state: Any) -> Iterator[TestClient]:
    """The app over the session's state (one champion), with its job queue running."""
    with TestClient(create_app(load_settings())) as test_client:
        yield test_client


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _diagnose_file(
    client: TestClient,
    frame: pd.DataFrame,
    name: str = "labelled.csv",
    deployment: str | None = None,
) -> dict[str, Any]:
    """Upload a file for diagnosis, queue the job, and wait until it has succeeded."""
    upload = client.post(
        "/ui/api/uploads",
        files={"file": (name, _csv(frame), "text/csv")},
        data={"purpose": "diagnose"},
    ).json()
    assert upload["ok"] is True, upload
    job = client.post(
        "/ui/api/diagnosis-jobs",
        json={"upload_id": upload["upload_id"], "deployment": deployment},
    )
    assert job.status_code == 202
    done = _wait_job(client, job.json()["id"])
    assert done["status"] == "succeeded", done
    return done


def _wait_job(client: TestClient, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/ui/api/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def test_pages_load_only_their_own_files(client: TestClient) -> None:
    for path in ("/", "/ui/train", "/ui/diagnose", "/ui/models"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for ref in re.findall(r'(?:src|href)="([^"]+)"', page.text):
            assert ref.startswith("/"), f"{path} refers to {ref}"
            if ref.startswith("/ui/static/"):
                assert client.get(ref).status_code == 200, ref
    for path in ("/ui", "/ui/"):  # the platform's address as people type it: the overview
        moved = client.get(path, follow_redirects=False)
        assert moved.status_code == 307 and moved.headers["location"] == "/", path
    # No script, style or font of the page is fetched from another host.
    for asset in STATIC.rglob("*"):
        if asset.suffix in (".js", ".css", ".html"):
            text = asset.read_text()
            urls = re.findall(r"https?://[^\s\"'`)]+", text)
            assert set(urls) <= {"http://www.w3.org/2000/svg"}, (asset.name, urls)


def test_training_upload_is_validated_at_once(
    client: TestClient, small_training_frame: pd.DataFrame
) -> None:
    bad = small_training_frame.drop(columns=["label", "feature7"])
    answer = client.post(
        "/ui/api/uploads",
        files={"file": ("bad.csv", _csv(bad), "text/csv")},
        data={"purpose": "train"},
    ).json()
    assert answer["ok"] is False and "upload_id" not in answer
    assert "missing columns" in answer["error"] and "feature7" in answer["error"]
    assert answer["validation"]["issues"][0]["blocking"] is True

    good = client.post(
        "/ui/api/uploads",
        files={"file": ("small.csv", _csv(small_training_frame), "text/csv")},
        data={"purpose": "train"},
    ).json()
    assert good["ok"] is True, good
    assert sum(good["class_counts"].values()) == len(small_training_frame)
    assert good["validation"]["rows"] == len(small_training_frame)
    # A file checked for diagnosis cannot be trained on, and unknown ids are refused.
    assert client.post("/ui/api/training-jobs", json={"upload_id": "../x"}).status_code == 404
    unknown_kind = client.get("/ui/api/jobs?kind=trian")
    assert unknown_kind.status_code == 422 and "kind" in unknown_kind.json()["error"]
    # Copies count once, as training counts them: 6 incidents repeated 20 times are refused
    # here, not in a training job that fails after it was queued.
    copies = pd.concat([small_training_frame.groupby("label").head(1)] * 20, ignore_index=True)
    copies["sample_id"] = range(len(copies))
    answer = client.post(
        "/ui/api/uploads",
        files={"file": ("copies.csv", _csv(copies), "text/csv")},
        data={"purpose": "train"},
    ).json()
    assert answer["ok"] is False and "120 rows, 6 distinct" in answer["error"], answer


def test_diagnose_one_incident_as_json(client: TestClient, unlabelled_frame: pd.DataFrame) -> None:
    row = unlabelled_frame.iloc[0]
    incident = {k: (None if pd.isna(v) else float(v)) for k, v in row.items() if k != "sample_id"}
    incident["sample_id"] = "inc-1"
    answer = client.post("/ui/api/diagnose", json={"incident": incident}).json()
    assert answer["ok"] is True
    (diagnosis,) = answer["diagnoses"]
    assert diagnosis["sample_id"] == "inc-1"
    probabilities = [diagnosis[f"proba_{c}"] for c in range(6)]
    assert abs(sum(probabilities) - 1) < 1e-5
    assert diagnosis["predicted_label"] == int(np.argmax(probabilities))
    assert answer["class_counts"][str(diagnosis["predicted_label"])] == 1
    columns = list(tracking.load_diagnoser(load_settings())[0].preprocessor.columns)
    assert answer["model_kpis"] == len(columns) and answer["unread"] == 0
    assert diagnosis["kpis_read"] == sum(incident[c] is not None for c in columns)

    # An incident of none of the model's KPIs is diagnosed, but the answer says so.
    blind = {**incident, **dict.fromkeys(columns)}
    answer = client.post("/ui/api/diagnose", json={"incidents": [incident, blind]}).json()
    assert answer["ok"] and answer["unread"] == 1
    assert [d["kpis_read"] for d in answer["diagnoses"]][1] == 0

    incident["feature3"] = "high"
    refused = client.post("/ui/api/diagnose", json={"incident": incident}).json()
    assert refused["ok"] is False
    assert "incident.feature3" in refused["error"]
    # A mistyped field is refused, not ignored (it would score with the training statistics).
    mistyped = client.post("/ui/api/diagnose", json={"incident": {}, "deploymnet": "x"})
    assert mistyped.status_code == 422 and "deploymnet" in mistyped.json()["error"]
    # NaN is not JSON (this parser takes it): refused, not read as a missing value.
    literal = client.post(
        "/ui/api/diagnose",
        content=b'{"incident": {"feature0": 1, "feature2": NaN}}',
        headers={"content-type": "application/json"},
    ).json()
    assert literal["ok"] is False and "incident.feature2: NaN is not JSON" in literal["error"]
    # A field given twice is refused: the parser would keep the last one without a word.
    twice = client.post(
        "/ui/api/diagnose",
        content=b'{"incident": {"feature0": 1}, "deployment": "x", "deployment": null}',
        headers={"content-type": "application/json"},
    )
    assert twice.status_code == 422
    assert "'deployment' appears more than once" in twice.json()["error"]


def test_diagnosis_job_table_and_downloads(
    client: TestClient, unlabelled_frame: pd.DataFrame, trained_state: Any
) -> None:
    from systemhealer import tracking
    from systemhealer.scoring import diagnose_frame

    incidents = unlabelled_frame.iloc[:300]
    done = _diagnose_file(client, incidents, "incidents.csv")
    result = done["result"]
    assert result["rows"] == 300 and sum(result["class_counts"].values()) == 300
    assert sum(result["confidence_histogram"]["counts"]) == 300
    assert len(result["embedding"]["x"]) == 300
    assert result["unread"] == 0 and result["model_kpis"] > 0

    page = client.get(
        f"/ui/api/jobs/{done['id']}/rows",
        params={"offset": 0, "limit": 10, "sort": "confidence", "descending": True},
    ).json()
    assert page["total"] == 300 and len(page["rows"]) == 10
    confidences = [r["confidence"] for r in page["rows"]]
    assert confidences == sorted(confidences, reverse=True)

    downloaded = pd.read_csv(
        io.BytesIO(client.get(f"/ui/api/jobs/{done['id']}/download/diagnoses.csv").content)
    )
    diagnoser, _ = tracking.load_diagnoser(load_settings())
    expected = diagnose_frame(diagnoser, incidents)
    assert list(downloaded.columns) == list(expected.columns)
    assert (downloaded["sample_id"].to_numpy() == expected["sample_id"].to_numpy()).all()
    assert (
        downloaded["predicted_label"].to_numpy() == expected["predicted_label"].to_numpy()
    ).all()
    assert np.allclose(downloaded["confidence"], expected["confidence"], atol=1e-6)
    as_json = json.loads(client.get(f"/ui/api/jobs/{done['id']}/download/diagnoses.json").content)
    assert len(as_json) == 300 and len(as_json[0]["probabilities"]) == 6


def _strict_json(content: bytes) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(content, parse_constant=refuse)


@pytest.mark.parametrize(
    "ids",
    [
        ["a", None, "c"],  # text with a gap
        [123456789012345678901234, 1, 2],  # integers beyond int64
        [1, None, 3],  # integers with a gap
        ["=1+1", "x", "+y"],  # would be formulas in a spreadsheet
    ],
    ids=["text-with-gap", "huge-integers", "integers-with-gap", "formula-like"],
)
def test_any_kind_of_sample_id_survives_a_diagnosis_job(
    client: TestClient, unlabelled_frame: pd.DataFrame, ids: list[Any]
) -> None:
    incidents = unlabelled_frame.iloc[:3].assign(sample_id=pd.Series(ids, dtype=object))
    done = _diagnose_file(client, incidents, "ids.csv")
    rows = client.get(f"/ui/api/jobs/{done['id']}/rows", params={"offset": 0, "limit": 3})
    assert len(_strict_json(rows.content)["rows"]) == 3
    download = client.get(f"/ui/api/jobs/{done['id']}/download/diagnoses.json")
    assert [d["sample_id"] is None for d in _strict_json(download.content)] == [
        i is None for i in ids
    ]
    text = client.get(f"/ui/api/jobs/{done['id']}/download/diagnoses.csv").text
    assert not any(line.startswith(("=", "+", '"=', '"+')) for line in text.splitlines())


def test_a_labelled_file_is_also_scored_against_its_labels(
    client: TestClient, training_frame: pd.DataFrame
) -> None:
    labelled = training_frame.groupby("label").head(20).reset_index(drop=True)

    done = _diagnose_file(client, labelled)
    report = done["result"]["label_scores"]["report"]
    assert report["rows"] == 120 and sum(map(sum, report["confusion"])) == 120
    csv = client.get(f"/ui/api/jobs/{done['id']}/download/diagnoses.csv").content
    predicted = pd.read_csv(io.BytesIO(csv))["predicted_label"]
    assert report["accuracy"] == pytest.approx((predicted == labelled["label"]).mean())
    # A label column that is not all fault classes is reported, and the diagnoses still made.
    broken = labelled.assign(label=labelled["label"].where(labelled.index != 7, 9))
    result = _diagnose_file(client, broken)["result"]
    assert result["rows"] == 120
    assert result["label_scores"]["unusable"] == {"bad": 1, "rows": 120}
    # Text in it: a warning, not a refusal (labels are not needed to diagnose).
    named = labelled.astype({"label": object})
    named.loc[:4, "label"] = "Class 3"
    done = _diagnose_file(client, named.rename(columns={"label": " label "}))
    assert done["result"]["label_scores"]["unusable"] == {"bad": 5, "rows": 120}
    assert done["result"]["warnings"] >= 1
    # Without a label column, or with an empty one, nothing is claimed.
    assert "label_scores" not in _diagnose_file(client, labelled.drop(columns=["label"]))["result"]
    assert "label_scores" not in _diagnose_file(client, labelled.assign(label=np.nan))["result"]


def _diagnose_in_chunks(
    folder: Path, incidents: pd.DataFrame, chunk_rows: int
) -> tuple[jobs.JobStore, jobs.Job]:
    """Run a diagnosis job (the page's executor, without the queue) ``chunk_rows`` at a time."""
    from systemhealer.web.app import ChampionCache

    base = load_settings()
    web = base.web.model_copy(update={"chunk_rows": chunk_rows, "embedding_points": 40})
    settings = base.model_copy(update={"web": web})
    store = jobs.JobStore(folder)
    job = store.create(
        jobs.DIAGNOSE, "incidents.csv", {}, lambda path: incidents.to_csv(path, index=False)
    )
    jobs.DiagnosisExecutor(store, settings, ChampionCache(settings).get)(job)
    return store, job


def test_a_file_diagnosed_in_chunks_gets_the_results_of_one_piece(
    tmp_path: Path, training_frame: pd.DataFrame, trained_state: Any
) -> None:
    """A file is read, validated and diagnosed a chunk at a time (bounded memory): the
    diagnoses, charts, label scores and validation report are those of the file in one piece."""
    incidents = training_frame.groupby("label").head(60).reset_index(drop=True)
    incidents = incidents.astype({"label": object})
    incidents.loc[[3, 250], "label"] = "Class 3"  # text in the labels of two chunks
    # A chunk of nothing but True/False labels (pandas reads it as booleans): text, not 1/0.
    incidents.loc[100:199, "label"] = [True, False] * 50
    incidents.loc[[7, 330], list(KPI_FEATURES)] = np.nan  # rows without any KPI value
    # Ids that are text only because of one in the third chunk: "00042" must stay "00042".
    incidents["sample_id"] = [f"{i:05d}" for i in range(len(incidents))]
    incidents.loc[250, "sample_id"] = "X00250"
    outputs = []
    for rows in (100, 10_000):
        store, job = _diagnose_in_chunks(tmp_path / str(rows), incidents, rows)
        folder = store.folder(job.id)
        result = store.read(job.id, "result.json")
        validation = store.read(job.id, "validation.json")
        outputs.append((result, validation, (folder / "diagnoses.csv").read_bytes()))
    (chunked, chunked_check, chunked_csv), (whole, whole_check, whole_csv) = outputs
    assert chunked_csv == whole_csv
    assert b'\n"00042",' in whole_csv and b'\n"X00250",' in whole_csv
    for key in ("source", "deployment"):
        chunked.pop(key), whole.pop(key)
    assert chunked == whole
    assert whole["rows"] == 360 and whole["unread"] == 2 and len(whole["embedding"]["x"]) == 40
    assert whole["label_scores"]["unusable"] == {"bad": 102, "rows": 360}
    assert chunked_check == whole_check
    assert {i["check"] for i in whole_check["issues"]} >= {"type", "empty_rows"}


def test_a_bad_row_deep_in_a_file_fails_its_diagnosis_job_and_writes_nothing(
    tmp_path: Path, unlabelled_frame: pd.DataFrame, trained_state: Any
) -> None:
    from systemhealer.errors import DataValidationError

    incidents = unlabelled_frame.iloc[:500].astype({"feature3": object})
    incidents.loc[[150, 432], "feature3"] = "n/a?"
    with pytest.raises(DataValidationError, match=r"incidents.csv: 'feature3'.*rows 151, 433"):
        _diagnose_in_chunks(tmp_path, incidents, 100)
    store = jobs.JobStore(tmp_path)
    (job,) = store.list()
    folder = store.folder(job.id)
    assert not (folder / "diagnoses.csv").exists() and not (folder / "result.json").exists()
    error = store.read(job.id, "error.json")
    assert error["validation"]["rows"] == 500 and not error["validation"]["ok"]
    # The chunks after the first bad one were checked too: the report is the whole file's.
    assert [i["rows"] for i in error["validation"]["issues"] if i["blocking"]] == [[150, 432]]


def test_a_bad_file_to_diagnose_is_refused_with_a_message(client: TestClient) -> None:
    answer = client.post(
        "/ui/api/uploads",
        files={"file": ("kpis.csv", b"a;b;c\n1;2;3\n", "text/csv")},
        data={"purpose": "diagnose"},
    ).json()
    assert answer["ok"] is False
    assert answer["error"].startswith("kpis.csv:") and "semicolon" in answer["error"]
    binary = client.post(
        "/ui/api/uploads",
        files={"file": ("kpis.csv", b"\x00\x01\x02" * 100, "text/csv")},
        data={"purpose": "diagnose"},
    ).json()
    assert binary["ok"] is False and "binary" in binary["error"]


def test_downloads_go_by_id_never_by_path(client: TestClient) -> None:
    for url in (
        "/ui/api/jobs/..%2F..%2Fmlflow.db/download/diagnoses.csv",
        "/ui/api/jobs/20260101T000000000000-abcdef/download/diagnoses.csv",
        "/ui/api/models/1%2F..%2F..%2Fx/archive",
        "/ui/api/models/..%2F1/report",
    ):
        assert client.get(url).status_code == 404, url
    jobs = client.get("/ui/api/jobs").json()
    if jobs:
        job_id = jobs[0]["id"]
        for name in ("job.json", "input.csv", "..%2Fjob.json", "worker.log"):
            assert client.get(f"/ui/api/jobs/{job_id}/download/{name}").status_code == 404


def test_models_list_archive_and_report(client: TestClient, trained_state: Any) -> None:
    listing = client.get("/ui/api/models").json()
    version = str(trained_state.summary["model_version"])
    row = next(v for v in listing["versions"] if v["version"] == version)
    assert row["fingerprint"]["rows"] > 0 and len(row["fingerprint"]["sha256"]) == 64
    assert "eval_macro_f1" in row["metrics"]
    assert row["mlflow_run_url"].endswith(f"/runs/{row['run_id']}")
    archive = client.get(f"/ui/api/models/{version}/archive")
    assert archive.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    assert "MLmodel" in names and any(n.startswith("artifacts/diagnoser/") for n in names)
    report = client.get(f"/ui/api/models/{version}/report").json()
    assert len(report["evaluation"]["confusion"]) == 6
    assert report["history"] and "val_macro_f1" in report["history"][0]
    assert client.get("/ui/api/models/999/report").status_code == 404
    assert client.post("/ui/api/models/999/promote").status_code == 404
    assert client.post("/ui/api/models/²/promote").status_code == 404  # a digit, not a version
    # Another spelling of a version names the same version, as the registry spells it.
    champion = client.get("/ui/api/models").json()["champion_version"]
    promoted = client.post(f"/ui/api/models/0{champion}/promote")
    assert promoted.status_code == 200 and promoted.json() == {"champion": champion}
    assert tracking.champion_history(load_settings())[-1] == champion


def test_a_promotion_waits_for_a_deciding_gate_then_says_busy(
    client: TestClient, trained_state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from systemhealer.web import app as web_app

    monkeypatch.setattr(web_app, "CHAMPION_WAIT_SECONDS", 0.5)
    champion = client.get("/ui/api/models").json()["champion_version"]
    with tracking.champion_lock(load_settings()):  # as a training's gate holds it
        for path in (f"/ui/api/models/{champion}/promote", "/ui/api/models/rollback"):
            busy = client.post(path)
            assert busy.status_code == 409 and "champion lock" in busy.json()["error"], path
    assert client.post(f"/ui/api/models/{champion}/promote").status_code == 200


def test_mutating_calls_need_the_token_when_one_is_set(trained_state: Any) -> None:
    settings = _with(load_settings(), api_token="s3cret")
    with TestClient(create_app(settings, run_jobs=False)) as client:
        assert client.get("/ui/api/config").json()["token_required"] is True
        for path in ("/ui/api/models/rollback", "/ui/api/models/1/promote"):
            refused = client.post(path)
            assert refused.status_code == 401 and "needs the API token" in refused.json()["error"]
            wrong = client.post(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert "the API token given was rejected" in wrong.json()["error"]
        upload = client.post("/ui/api/uploads", files={"file": ("x.csv", b"a\n1\n", "text/csv")})
        assert upload.status_code == 401
        answer = client.post(
            "/ui/api/diagnose",
            json={"incident": {"feature0": 1.0}},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert answer.status_code == 200 and answer.json()["ok"] is True
        assert client.get("/ui/api/models").status_code == 200  # reading needs no token


def test_uploads_over_the_limit_get_a_clear_413(trained_state: Any) -> None:
    settings = _with(load_settings(), max_upload_mb=0.01)
    with TestClient(create_app(settings, run_jobs=False)) as client:
        refused = client.post(
            "/ui/api/uploads", files={"file": ("big.csv", b"x" * 50_000, "text/csv")}
        )
        assert refused.status_code == 413
        message = refused.json()["error"]
        assert "limit" in message and "serving.max_upload_mb" in message


def test_body_limit_counts_bodies_without_a_length() -> None:
    sent: list[dict[str, Any]] = []
    reached = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal reached
        while (await receive()).get("more_body"):
            pass
        reached = True

    chunks = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 3

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard = BodyLimit(app, prefix="/ui/api", max_bytes=1000, setting="serving.max_upload_mb")
    scope = {"type": "http", "method": "POST", "path": "/ui/api/uploads", "headers": []}
    asyncio.run(guard(scope, receive, send))
    assert not reached
    assert sent[0]["status"] == 413


def test_fault_classes_are_shown_by_their_configured_names(trained_state: Any) -> None:
    names = ("disk full", "network partition", "CPU hog", "memory leak", "slow query", "deadlock")
    settings = _with(load_settings(), class_names=names)
    with TestClient(create_app(settings, run_jobs=False)) as client:
        assert client.get("/ui/api/config").json()["class_names"] == list(names)
        version = str(trained_state.summary["model_version"])
        report = client.get(f"/ui/api/models/{version}/report").json()
        assert report["class_names"] == list(names)


def test_registering_a_deployment_reports_its_estimated_class_mix(
    client: TestClient, unlabelled_frame: pd.DataFrame
) -> None:
    window = unlabelled_frame.iloc[:400].to_csv(index=False).encode()
    answer = client.post(
        "/ui/api/deployments",
        data={"name": "site-web"},
        files={"file": ("window.csv", window, "text/csv")},
    ).json()
    assert answer["ok"] and answer["deployment"]["rows"] == 400
    mix = answer["class_mix"]
    assert len(mix) == 6 and abs(sum(mix) - 1) < 1e-3 and min(mix) >= 0
    assert "site-web" in {d["name"] for d in client.get("/ui/api/deployments").json()}
    # The deployment then normalises diagnoses made on the page.
    row = unlabelled_frame.iloc[500]
    incident = {k: float(v) for k, v in row.items() if k != "sample_id" and pd.notna(v)}
    diagnosis = client.post(
        "/ui/api/diagnose", json={"incident": incident, "deployment": "site-web"}
    ).json()
    assert diagnosis["deployment"] == "site-web"
    bad = client.post(
        "/ui/api/deployments",
        data={"name": "../etc"},
        files={"file": ("window.csv", window, "text/csv")},
    ).json()
    assert not bad["ok"] and bad["error"]
    # What the window lacks for the champion comes back as warnings; a blind window is refused.
    columns = list(tracking.load_diagnoser(load_settings())[0].preprocessor.columns)
    gaps = unlabelled_frame.iloc[:400].assign(**{columns[0]: np.nan})
    answer = client.post(
        "/ui/api/deployments",
        data={"name": "site-gaps"},
        files={"file": ("gaps.csv", gaps.to_csv(index=False).encode(), "text/csv")},
    ).json()
    assert answer["ok"] and any(w.startswith(f"{columns[0]}: no value") for w in answer["warnings"])
    blind = unlabelled_frame.iloc[:400].assign(**dict.fromkeys(columns, np.nan))
    answer = client.post(
        "/ui/api/deployments",
        data={"name": "site-blind"},
        files={"file": ("blind.csv", blind.to_csv(index=False).encode(), "text/csv")},
    ).json()
    assert not answer["ok"] and "KPI columns the model reads" in answer["error"]
    assert "site-blind" not in {d["name"] for d in client.get("/ui/api/deployments").json()}
    # A window's labels are never read, text ones included (no warning about them either).
    labelled = unlabelled_frame.iloc[:400].assign(label="disk full")
    answer = client.post(
        "/ui/api/deployments",
        data={"name": "site-labelled"},
        files={"file": ("labelled.csv", labelled.to_csv(index=False).encode(), "text/csv")},
    ).json()
    assert answer["ok"] and not any("label" in w for w in answer["warnings"]), answer


def test_a_deployment_s_file_is_checked_against_its_window_not_the_training_data(
    client: TestClient, unlabelled_frame: pd.DataFrame
) -> None:
    window = unlabelled_frame.iloc[::2].to_csv(index=False).encode()
    answer = client.post(
        "/ui/api/deployments", data={"name": "site-ranges"}, files={"file": ("w.csv", window)}
    ).json()
    assert answer["ok"], answer
    later = unlabelled_frame.iloc[1::2].head(400).reset_index(drop=True)
    as_training = _diagnose_file(client, later, "later.csv")["result"]
    as_deployment = _diagnose_file(client, later, "later.csv", deployment="site-ranges")
    result = as_deployment["result"]
    assert result["deployment"] == "site-ranges" and as_training["deployment"] == "training"
    # Out-of-range warnings against the training data's units; few or none against the window.
    assert as_training["warnings"] >= 5 and result["warnings"] < as_training["warnings"] / 3
    validation = client.get(f"/ui/api/jobs/{as_deployment['id']}/download/validation.json").json()
    assert sum(not i["blocking"] for i in validation["issues"]) == result["warnings"]
    # "training" names the training statistics here too, as in /predict.
    named = _diagnose_file(client, later.head(50), "later.csv", deployment="training")
    assert named["result"]["deployment"] == "training"


def test_removing_a_deployment(client: TestClient, unlabelled_frame: pd.DataFrame) -> None:
    window = unlabelled_frame.iloc[:200].to_csv(index=False).encode()
    for name in ("site-gone", "site-kept"):
        answer = client.post(
            "/ui/api/deployments", data={"name": name}, files={"file": ("w.csv", window)}
        ).json()
        assert answer["ok"], answer
    removed = client.delete("/ui/api/deployments/site-gone")
    assert removed.status_code == 200 and removed.json()["removed"]["rows"] == 200
    names = {d["name"] for d in client.get("/ui/api/deployments").json()}
    assert "site-gone" not in names and "site-kept" in names
    row = unlabelled_frame.iloc[300]
    incident = {k: float(v) for k, v in row.items() if k != "sample_id" and pd.notna(v)}
    refused = client.post(
        "/ui/api/diagnose", json={"incident": incident, "deployment": "site-gone"}
    )
    assert not refused.json()["ok"] and "no deployment named 'site-gone'" in refused.json()["error"]
    again = client.delete("/ui/api/deployments/site-gone")
    assert again.status_code == 404 and "site-kept" in again.json()["error"]  # names the known
    assert client.delete("/ui/api/deployments/training").status_code == 422
    assert client.delete("/ui/api/deployments/site-kept%0A").status_code == 422  # a newline
    assert client.delete("/ui/api/deployments/..%2Fjobs").status_code in (404, 422)


def test_a_compressed_upload_that_unpacks_past_the_limit_is_refused(
    trained_state: Any, tmp_path: Path
) -> None:
    rows = ",".join(KPI_FEATURES) + "\n" + ("1.0," * (len(KPI_FEATURES) - 1) + "1.0\n") * 20_000
    packed = gzip.compress(rows.encode())
    settings = _with(load_settings(), max_upload_mb=1)
    with TestClient(create_app(settings, run_jobs=False)) as client:
        for purpose in ("diagnose", "train"):
            answer = client.post(
                "/ui/api/uploads",
                files={"file": ("bomb.csv.gz", packed)},
                data={"purpose": purpose},
            ).json()
            assert answer["ok"] is False and "upload_id" not in answer
            assert "bomb.csv.gz: its data unpack to more than 1 MB" in answer["error"]
        refused = client.post(
            "/ui/api/deployments", files={"file": ("bomb.csv.gz", packed)}, data={"name": "bomb"}
        ).json()
        assert refused["ok"] is False and "unpack to more than 1 MB" in refused["error"]
        assert "bomb" not in [d["name"] for d in client.get("/ui/api/deployments").json()]
