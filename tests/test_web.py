"""The web platform in a real browser: headless Chromium against the real BentoML service.

One service for the module, on a fresh state folder and a free port of 127.0.0.1. The tests run
in order, as an operations engineer would: train two models through the page (the second waits
in the queue), diagnose a file and one incident, promote and roll back on the models page, switch
the language. Every page must log no console error and request nothing from another host.
Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from systemhealer.config import Settings, load_settings
from systemhealer.serve import free_port, start_service, stop_service

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "test-artifacts" / "screenshots"
UNLABELLED_FILE = REPO / "data" / "fault_kpi_unlabelled_2000.csv.gz"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
# Tiny trainings: the browser test checks the page, not the model (CI time matters).
SERVER_ENV = {
    "SYSTEMHEALER_TRAINING__MAX_EPOCHS": "6",
    "SYSTEMHEALER_TRAINING__PATIENCE": "3",
    "SYSTEMHEALER_TRAINING__HIDDEN_SIZES": "[32, 16]",
    "SYSTEMHEALER_TRAINING__ENSEMBLE_SIZE": "2",
    "SYSTEMHEALER_TRAINING__TORCH_THREADS": "1",
    "SYSTEMHEALER_SERVING__MODEL_POLL_SECONDS": "1",
}
TRAINING_TIMEOUT_MS = 420_000


@dataclass(frozen=True)
class WebServer:
    url: str
    settings: Settings
    env: dict[str, str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """``bentoml serve`` of the SystemHealer service (the web app mounted at /), fresh state."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    home = tmp_path_factory.mktemp("web-home")
    env = {**SERVER_ENV, "SYSTEMHEALER_HOME": str(home)}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        settings = load_settings()
        url = f"http://127.0.0.1:{(port := free_port())}"
        SHOTS.mkdir(parents=True, exist_ok=True)
        log_path = SHOTS.parent / "web-service.log"
        with log_path.open("wb") as log:
            process = start_service(settings, "127.0.0.1", port, log=log)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ui/api/config", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the service did not start in 180 s"
            time.sleep(0.5)
        yield WebServer(url, settings, {**os.environ, **env})
    finally:
        stop_service(process)


@pytest.fixture(scope="module")
def browser(server: WebServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Watched:
    """A page and what it did: console errors, uncaught exceptions, every request's URL."""

    page: Any
    base: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def goto(self, path: str) -> None:
        self.page.goto(self.base + path)
        self.page.wait_for_selector("body[data-ready]")  # the page's handlers are in place

    def shot(self, name: str) -> None:
        # Scrolled to the top, the sticky top bar stays on top of a full-page screenshot.
        self.page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")
        self.page.wait_for_timeout(300)  # let charts finish drawing
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def check(self) -> None:
        assert not self.errors, f"console errors: {self.errors}"
        foreign = [
            u for u in self.requests if not u.startswith((self.base + "/", "blob:", "data:"))
        ]
        assert not foreign, f"requests to other hosts: {foreign}"
        assert self.requests, "no request recorded"


@pytest.fixture
def web(browser: Any, server: WebServer) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    watched = Watched(page, server.url)
    page.on("console", lambda m: watched.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: watched.errors.append(f"uncaught: {e}"))
    page.on("request", lambda r: watched.requests.append(r.url))
    yield watched
    context.close()
    watched.check()


def _api(server: WebServer, path: str) -> Any:
    with urllib.request.urlopen(f"{server.url}/ui/api{path}", timeout=30) as answer:
        return json.loads(answer.read())


def _drop_file(page: Any, selector: str, name: str, text: str) -> None:
    """Drag and drop a file onto an element, as a user would from the desktop."""
    transfer = page.evaluate_handle(
        """([name, text]) => { const t = new DataTransfer();
            t.items.add(new File([text], name, {type: "text/csv"})); return t; }""",
        [name, text],
    )
    page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


@pytest.mark.timeout(900)
def test_train_two_models_in_the_browser(
    web: Watched, server: WebServer, small_training_csv: Path, tmp_path: Path
) -> None:
    page = web.page
    web.goto("/ui/train")
    # A file without labels is stopped at validation, with a message naming what is wrong.
    page.set_input_files(
        "#train-file",
        files=[
            {
                "name": "no-labels.csv",
                "mimeType": "text/csv",
                "buffer": b"sample_id,feature0\n1,0.5\n",
            }
        ],
    )
    error = page.locator("#train-upload-status .alert.error")
    error.wait_for()
    assert "missing columns" in error.inner_text()
    assert page.locator("#validation-report ul.errors li").count() >= 1
    assert page.locator("#start-training").is_disabled()
    web.shot("train-invalid")

    page.set_input_files("#train-file", str(small_training_csv))
    page.locator("#validation-report .alert.ok").wait_for()
    assert page.locator("#upload-class-mix rect.bar").count() == 6
    web.shot("train-validated")
    # A file the page refuses itself replaces that upload: nothing is left on offer to train.
    page.set_input_files(
        "#train-file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hi"}]
    )
    page.locator("#train-upload-status .alert.error").wait_for()
    assert page.locator("#start-training").is_disabled()
    assert page.locator("#validation-report .alert.ok").count() == 0
    page.set_input_files("#train-file", str(small_training_csv))
    page.locator("#validation-report .alert.ok").wait_for()
    page.click("#start-training")
    page.locator("#job-status .badge").wait_for()

    # A second training waits in the queue, its position shown.
    page.set_input_files("#train-file", str(small_training_csv))
    page.locator("#validation-report .alert.ok").wait_for()
    page.click("#start-training")
    position = page.locator("[data-testid=queue-position]")
    position.wait_for()
    assert re.search(r"position 1\b", position.inner_text()), position.inner_text()
    web.shot("train-queued")

    # Back to the first: live progress (stage, epoch, losses) without reloading the page.
    page.locator("#training-jobs tbody tr").nth(1).click()
    page.wait_for_function(
        "() => /epoch [1-9]/.test((document.querySelector('[data-testid=epoch]') || {}).textContent || '')",
        timeout=TRAINING_TIMEOUT_MS,
    )
    assert page.locator("#job-progress .stage.done").count() >= 2
    web.shot("train-progress")
    page.locator("#job-status .badge.succeeded").wait_for(timeout=TRAINING_TIMEOUT_MS)

    # Results: the gate's decision, metrics beside the champion's, every chart drawn.
    assert "champion" in page.locator("#job-result .alert").first.inner_text()
    # One line per ensemble member: training and validation loss, validation macro-F1.
    assert page.locator("#chart-loss polyline").count() == 4
    assert page.locator("#chart-f1 polyline").count() == 2
    assert page.locator("#chart-confusion rect.cell").count() == 36
    assert page.locator("#chart-embedding circle.point").count() > 10
    assert page.locator("#chart-class-mix rect.bar").count() == 6
    assert page.locator("table.per-class tbody tr").count() == 6
    assert page.locator("table.compare tbody tr").count() >= 2
    web.shot("train-results")

    # The model, as an archive of the MLflow model that MLflow loads and predicts with.
    with page.expect_download() as download:
        page.click("[data-testid=download-model]")
    archive = tmp_path / download.value.suggested_filename
    download.value.save_as(archive)
    assert archive.suffix == ".zip"
    folder = tmp_path / "model"
    zipfile.ZipFile(archive).extractall(folder)
    assert (folder / "MLmodel").exists()
    import mlflow.pyfunc

    rows = pd.read_csv(UNLABELLED_FILE, nrows=3).drop(columns=["sample_id"])
    predicted = mlflow.pyfunc.load_model(str(folder)).predict(rows)
    assert list(predicted["predicted_label"]) == list(
        predicted[[f"proba_{c}" for c in range(6)]].to_numpy().argmax(1)
    )

    with page.expect_download() as download:
        page.click("[data-testid=download-report]")
    report = json.loads(Path(download.value.path()).read_text())
    assert report["summary"]["model_version"] and report["report"]["evaluation"]["confusion"]

    # The queued training ran after the first.
    deadline = time.monotonic() + TRAINING_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        statuses = [j["status"] for j in _api(server, "/jobs?kind=train")]
        if all(s in ("succeeded", "failed") for s in statuses):
            break
        time.sleep(1)
    assert statuses == ["succeeded", "succeeded"], statuses


@pytest.mark.timeout(300)
def test_diagnose_a_file_and_one_incident(
    web: Watched, server: WebServer, tmp_path: Path, small_training_csv: Path
) -> None:
    page = web.page
    web.goto("/ui/diagnose")
    # A bad file, dropped on the page, is refused with a message.
    _drop_file(page, "#diag-drop", "kpis.csv", "time;host;cpu\n1;a;0.5\n")
    error = page.locator("#diagnose-status .alert.error")
    error.wait_for()
    assert "semicolon" in error.inner_text()
    web.shot("diagnose-invalid")

    page.set_input_files("#diag-file", str(UNLABELLED_FILE))
    rows = page.locator("#diagnosis-table tbody tr")
    rows.first.wait_for(timeout=120_000)
    assert rows.count() == 25
    assert page.locator("#chart-distribution rect.bar").count() == 6
    assert page.locator("#chart-confidence rect.bar").count() == 20
    assert page.locator("#chart-diag-embedding circle.point").count() > 100
    assert "2,000" in page.locator("#diagnosis-table .pager").inner_text()

    # Sorting (confidence, highest first) and paging happen on the server, over all rows.
    page.click("#diagnosis-table th[data-key=confidence]")
    page.locator("#diagnosis-table th[data-key=confidence] .arrow").wait_for()
    top = float(page.locator("#diagnosis-table tbody tr >> nth=0 >> td >> nth=2").inner_text())
    page.click("#diagnosis-table .pager button[aria-label='next page']")
    page.wait_for_function(
        "() => /26–50/.test(document.querySelector('#diagnosis-table .pager').textContent)"
    )
    web.shot("diagnose-results")

    with page.expect_download() as download:
        page.click("[data-testid=download-csv]")
    from_page = pd.read_csv(download.value.path())
    # The same rows as `systemhealer predict` writes with the same champion.
    output = tmp_path / "cli.csv"
    subprocess.run(
        [sys.executable, "-m", "systemhealer.cli", "predict", str(UNLABELLED_FILE), "--output", str(output)],
        env=server.env, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    from_cli = pd.read_csv(output)
    assert Path(download.value.path()).read_bytes() == output.read_bytes()  # the same file
    assert list(from_page.columns) == list(from_cli.columns)
    assert len(from_page) == len(from_cli) == 2000
    assert (from_page["sample_id"] == from_cli["sample_id"]).all()
    assert (from_page["predicted_label"] == from_cli["predicted_label"]).all()
    probabilities = [c for c in from_cli.columns if c.startswith("proba_") or c == "confidence"]
    assert np.allclose(from_page[probabilities], from_cli[probabilities], atol=1e-6)
    assert abs(top - from_cli["confidence"].max()) < 1e-4

    with page.expect_download() as download:
        page.click("[data-testid=download-json]")
    as_json = json.loads(Path(download.value.path()).read_text())
    assert len(as_json) == 2000 and as_json[0]["sample_id"] == from_cli["sample_id"][0]

    # A file with a label column: the diagnoses are also compared with its labels.
    page.set_input_files("#diag-file", str(small_training_csv))
    scored = page.locator("[data-testid=label-scores]")
    scored.wait_for(timeout=120_000)
    assert page.locator("#chart-label-confusion rect.cell").count() == 36
    assert "macro-F1" in scored.inner_text()
    web.shot("diagnose-labelled-file")

    # From the keyboard: a header sorts with Enter, a past job opens with Enter.
    page.focus("#diagnosis-table th[data-key=predicted_label]")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#diagnosis-table th[data-key=predicted_label]')"
        ".querySelector('.arrow')"
    )
    first = page.get_attribute("#diagnosis-table th[data-key=predicted_label]", "aria-sort")
    page.keyboard.press("Enter")  # the redrawn header kept the focus: the order turns
    page.wait_for_function(
        "(first) => document.querySelector('#diagnosis-table th[data-key=predicted_label]')"
        ".getAttribute('aria-sort') !== first",
        arg=first,
    )
    earlier = page.locator("#diagnosis-jobs tbody tr", has_text=UNLABELLED_FILE.name)
    earlier.focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        f"() => document.querySelector('#diag-job-title').textContent.includes('{UNLABELLED_FILE.name}')"
    )

    # One incident in the form: only decimal numbers, as in files ("0x10" is not 16).
    page.click("[data-tab=form]")
    assert page.get_attribute("[data-tab=form]", "aria-selected") == "true"
    assert page.get_attribute("[data-tab=file]", "aria-selected") == "false"
    page.fill("#feature-grid input[name=feature2]", "0x10")
    page.click("#form-go")
    page.wait_for_function(
        "() => document.querySelector('#diagnose-status').innerText.includes('feature2')"
    )
    assert "Not a number: feature2" in page.inner_text("#diagnose-status")

    # One incident, pasted as JSON (filled from the champion's logged example).
    page.click("[data-tab=json]")
    page.click("#json-example")
    page.wait_for_function("() => document.querySelector('#json-input').value.includes('feature0')")
    page.click("#json-go")
    page.locator("#diagnose-status .alert.ok").wait_for()
    assert page.locator("#diagnosis-table tbody tr").count() == 1
    assert "example-1" in page.locator("#diagnosis-table tbody tr").first.inner_text()
    assert "KPIs the model uses" in page.locator("[data-testid=kpis-read]").inner_text()
    assert page.locator("[data-testid=unread-warning]").count() == 0
    web.shot("diagnose-one-incident")

    # An incident with none of the model's KPIs is diagnosed, with a warning that says so.
    page.fill("#json-input", '{"sample_id": "blind-1", "feature57": 1.0}')
    page.click("#json-go")
    warning = page.locator("[data-testid=unread-warning]")
    warning.wait_for()
    assert "1 of 1 incidents have no value" in warning.inner_text()
    assert "Read 0 of the" in page.locator("[data-testid=kpis-read]").inner_text()

    # JSON that is not incidents, or a number JSON.parse reads as Infinity (sent on, it would
    # become null: a missing value), is stopped in the page, saying what is wrong.
    status = page.locator("#diagnose-status")
    page.fill("#json-input", "5")
    page.click("#json-go")
    status.locator(".alert.error").wait_for()
    assert "JSON object" in status.inner_text()
    page.fill("#json-input", '{"feature0": 1e400}')
    page.click("#json-go")
    page.wait_for_function(
        "() => document.querySelector('#diagnose-status').innerText.includes('infinite')"
    )


def test_calibrate_a_deployment_and_remove_it(web: Watched, server: WebServer) -> None:
    page = web.page
    web.goto("/ui/diagnose")
    assert page.locator("#deploy-remove").is_hidden()  # nothing to remove: training statistics
    page.click("#calibrate-toggle")
    page.fill("#deploy-name", "site-b")
    page.set_input_files("#deploy-file", str(UNLABELLED_FILE))
    page.click("#deploy-go")
    done = page.locator("#deploy-status .alert.ok")
    done.wait_for(timeout=120_000)
    assert "site-b" in done.inner_text() and "2,000" in done.inner_text()
    assert "class mix" in done.inner_text()  # the champion's estimate of its mix
    assert page.locator("#deployment").input_value() == "site-b"
    web.shot("diagnose-deployment")

    # Diagnoses made on the page now use its statistics.
    page.click("[data-tab=json]")
    page.click("#json-example")
    page.wait_for_function("() => document.querySelector('#json-input').value.includes('feature0')")
    with page.expect_response(lambda r: r.url.endswith("/ui/api/diagnose")) as answer:
        page.click("#json-go")
    assert answer.value.json()["deployment"] == "site-b"

    # A file job with it; the page reloaded on the job selects the job's deployment again.
    page.click("[data-tab=file]")
    page.set_input_files("#diag-file", str(UNLABELLED_FILE))
    page.locator("#diag-job-status .badge.succeeded").wait_for(timeout=120_000)
    assert "job=" in page.url
    page.reload()
    page.locator("#diag-job-status .badge.succeeded").wait_for(timeout=60_000)
    page.wait_for_function("() => document.querySelector('#deployment').value === 'site-b'")
    assert page.locator("#deploy-remove").is_visible()

    # Removing asks first; cancelling keeps it.
    page.click("[data-testid=deploy-remove]")
    dialog = page.locator("dialog#confirm")
    dialog.wait_for()
    assert "site-b" in dialog.inner_text()
    dialog.locator("[data-cancel]").click()
    assert "site-b" in {d["name"] for d in _api(server, "/deployments")}
    page.click("[data-testid=deploy-remove]")
    dialog.locator("[data-ok]").click()
    page.wait_for_function(
        "() => ![...document.querySelectorAll('#deployment option')].some(o => o.value === 'site-b')"
    )
    assert "site-b" not in {d["name"] for d in _api(server, "/deployments")}
    assert page.locator("#deployment").input_value() == ""
    assert page.locator("#deploy-remove").is_hidden()


@pytest.mark.timeout(300)
def test_models_promote_and_roll_back(web: Watched, server: WebServer) -> None:
    page = web.page
    web.goto("/ui/models")
    rows = page.locator("#versions tbody tr")
    rows.first.wait_for()
    assert rows.count() == 2
    assert page.locator("#versions .badge.champion").count() == 1
    champion = _api(server, "/models")["champion_version"]
    other = "1" if champion == "2" else "2"

    # Promote asks first; cancelling changes nothing.
    page.click(f"[data-testid=promote-{other}]")
    dialog = page.locator("dialog#confirm")
    dialog.wait_for()
    assert f"version {other}" in dialog.inner_text().lower()
    dialog.locator("[data-cancel]").click()
    assert _api(server, "/models")["champion_version"] == champion
    page.click(f"[data-testid=promote-{other}]")
    dialog.locator("[data-ok]").click()
    page.locator(f"[data-testid=promote-{champion}]").wait_for()
    assert _api(server, "/models")["champion_version"] == other

    # Roll back, confirmed: the previous champion serves again.
    page.click("#rollback")
    dialog.locator("[data-ok]").click()
    page.locator(f"[data-testid=promote-{other}]").wait_for()
    assert _api(server, "/models")["champion_version"] == champion

    page.locator("#versions tbody tr").first.locator("text=Details").click()
    page.locator("#detail-body #chart-confusion rect.cell").first.wait_for()
    web.shot("models")


def test_models_mark_shift_scores_of_fewer_simulations(web: Watched, server: WebServer) -> None:
    """A version trained before the fourth simulation existed logged a mean of three; the
    table marks its figure instead of passing it off as a mean of four."""
    listing = _api(server, "/models")
    old = listing["versions"][-1]["version"]
    for version in listing["versions"]:
        if version["version"] == old:
            del version["metrics"]["shift_noisy_macro_f1"]
    web.page.route(
        "**/ui/api/models",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(listing)
        ),
    )
    web.goto("/ui/models")
    marked = web.page.locator(f"[data-testid=shift-score-of-{old}]")
    marked.wait_for()
    assert "mean of the 3 simulations" in marked.get_attribute("title")
    assert web.page.locator("[data-testid^=shift-score-of-]").count() == 1


def test_overview_and_chinese_text(web: Watched, server: WebServer) -> None:
    page = web.page
    web.goto("/")
    page.locator("#champion-body .figure").first.wait_for()
    assert page.locator("#recent-jobs tbody tr").count() >= 3
    web.shot("home")
    page.click("button[data-lang=zh]")
    assert page.locator("[data-nav=train]").inner_text() == "训练"
    assert page.locator("h1").inner_text() == "概览"
    web.shot("home-zh")
    job = _api(server, "/jobs?kind=train")[-1]["id"]
    web.goto(f"/ui/train?job={job}")  # the choice of language is remembered
    page.locator("#job-result .alert").first.wait_for()
    assert "冠军" in page.locator("#job-result").inner_text()
    web.shot("train-results-zh")
