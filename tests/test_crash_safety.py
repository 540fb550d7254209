"""Crash safety: a training SIGKILLed mid-run, a second training queued behind it.

The trainings are real ``systemhealer train`` processes against a real Prefect server and the
state folder's MLflow store. After the kill: the champion and the registry are as before, the
waiting training takes the lock, marks the dead run FAILED (and its flow run Crashed), trains,
and the gate alone decides whether the champion moves.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from systemhealer import tracking
from systemhealer.locks import state_lock
from tests.ops_helpers import (
    PrefectAPI,
    case_env,
    cli_command,
    prefect_server,
    settings_of,
)

pytestmark = pytest.mark.integration

# Long enough to be killed mid-epoch: the killed training would run for minutes.
SLOW = {"SYSTEMHEALER_TRAINING__MAX_EPOCHS": "2000", "SYSTEMHEALER_TRAINING__PATIENCE": "2000"}


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as url:
        yield url


def wait_for(condition, timeout: float, what: str, poll: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_sigkilled_training_leaves_champion_and_registry_intact_and_is_marked_failed(
    api_url: str, tmp_path: Path, trained_state, small_training_csv: Path
) -> None:
    # A private copy of the session's registry (its models stay where they are): one champion.
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(trained_state.home / "mlflow.db", home / "mlflow.db")
    env = case_env(home, api_url)
    settings = settings_of(home)
    champion = tracking.champion(settings)
    assert champion is not None
    versions_before = [v.version for v in tracking.list_versions(settings)]

    doomed_log = (tmp_path / "doomed.log").open("w")
    doomed = subprocess.Popen(
        cli_command("train", str(small_training_csv), "--no-progress"),
        env=case_env(home, api_url, **SLOW),
        stdout=doomed_log,
        stderr=subprocess.STDOUT,
    )
    waiting = None
    try:
        # Mid-run: it holds the training lock and its MLflow run has logged epochs.
        def training_epochs() -> str | None:
            holder = state_lock(settings, "training").holder()
            if not holder or holder.get("pid") != doomed.pid:
                return None
            runs = tracking.list_runs(settings, settings.registry.experiment_name)
            running = [r for r in runs if r["status"] == "RUNNING" and "train_loss" in r["metrics"]]
            return running[0]["run_id"] if running else None

        doomed_run = wait_for(training_epochs, 300, "the slow training to log epochs")
        doomed_flow_run = state_lock(settings, "training").holder()["prefect_flow_run_id"]

        # A second training started now must wait for the first.
        waiting_log = tmp_path / "waiting.log"
        waiting = subprocess.Popen(
            cli_command("train", str(small_training_csv), "--no-progress"),
            env=env,
            stdout=waiting_log.open("w"),
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: "training queued" in waiting_log.read_text(),
            300,
            "the second training to queue behind the first",
        )
        killed_at_ms = time.time() * 1000
        doomed.send_signal(signal.SIGKILL)
        assert doomed.wait(30) == -signal.SIGKILL

        # Right after the kill: nothing the dead training touched has changed.
        assert tracking.champion(settings).version == champion.version
        assert [v.version for v in tracking.list_versions(settings)][-len(versions_before) :] == (
            versions_before
        )

        assert waiting.wait(600) == 0, waiting_log.read_text()[-3000:]
    finally:
        for process in (doomed, waiting):
            if process is not None and process.poll() is None:
                process.kill()
        doomed_log.close()

    runs = {r["run_id"]: r for r in tracking.list_runs(settings, settings.registry.experiment_name)}
    assert runs[doomed_run]["status"] == "FAILED"
    assert "process died" in runs[doomed_run]["tags"]["systemhealer.interrupted"]
    newest = max(runs.values(), key=lambda r: r["start_ms"])
    assert newest["status"] == "FINISHED"
    assert newest["start_ms"] >= killed_at_ms - 1000  # it ran only once the dead one was gone

    versions = tracking.list_versions(settings)
    assert [v.version for v in versions] == [str(len(versions_before) + 1), *versions_before]
    assert all(v.run_id != doomed_run for v in versions)  # the dead run registered nothing
    new = versions[0]
    current = tracking.champion(settings)
    # The champion moved only if the gate promoted the new version.
    assert (current.version == new.version) == (new.tags["gate"] == "promoted")
    if new.tags["gate"] != "promoted":
        assert current.version == champion.version

    assert PrefectAPI(api_url).flow_run(doomed_flow_run)["state"]["type"] == "CRASHED"


def test_a_sigterm_stops_predict_without_leaving_partial_files(
    tmp_path: Path, trained_state, unlabelled_frame
) -> None:
    """SIGTERM (systemd, ``docker stop``) unwinds a scoring job as Ctrl-C does: no partial
    output, no temporary part files, and an earlier output under the final name is kept."""
    big = tmp_path / "incidents.csv"
    pd.concat([unlabelled_frame] * 10, ignore_index=True).to_csv(big, index=False)
    out = tmp_path / "out" / "diagnoses.csv"
    out.parent.mkdir()
    out.write_text("earlier results\n")
    job = subprocess.Popen(
        cli_command(*f"predict {big} -o {out} --on-bad-rows skip --chunk-rows 20".split()),
        env=case_env(trained_state.home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(
            lambda: any(p.stat().st_size for p in out.parent.glob(".diagnoses.csv.*")),
            120,
            "diagnoses to be written",
            poll=0.05,
        )
        job.send_signal(signal.SIGTERM)
        assert job.wait(30) == 128 + signal.SIGTERM
        assert job.stderr is not None and job.stderr.read().strip() == b"stopped (SIGTERM)"
    finally:
        if job.poll() is None:
            job.kill()
    assert sorted(p.name for p in out.parent.iterdir()) == ["diagnoses.csv"]
    assert out.read_text() == "earlier results\n"
