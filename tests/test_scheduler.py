"""``systemhealer schedule`` as a real process: its own Prefect server on 127.0.0.1, the two
deployments on the configured crons, runs of both, a clean SIGTERM and a restart that keeps
every bit of state.

The scheduled retraining here merges and rejects but does not train (too few incidents yet):
training inside the retraining flow is covered in test_drift.py, in-process and faster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from systemhealer import drift, inbox, tracking
from systemhealer.locks import read_holder, state_lock
from systemhealer.serve import free_port
from tests.ops_helpers import PrefectAPI, case_env, cli_command, run_cli, settings_of

pytestmark = pytest.mark.integration

RETRAIN_CRON = "17 3 * * *"
DRIFT_CRON = "*/30 * * * *"


def start_scheduler(home: Path, config: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """Start the scheduler; wait for its banner; returns (process, Prefect API URL)."""
    process = subprocess.Popen(
        cli_command("schedule", "--config", str(config)),
        env=case_env(home),
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the scheduler exited: {log.read_text()[-3000:]}")
        if log.read_text().count("Ctrl-C or SIGTERM stops the scheduler") > _banners.get(log, 0):
            _banners[log] = _banners.get(log, 0) + 1
            holder = read_holder(home / "locks" / "scheduler.lock")
            return process, holder["api_url"]
        time.sleep(0.5)
    process.kill()
    raise AssertionError(f"no scheduler banner after 240 s: {log.read_text()[-3000:]}")


_banners: dict[Path, int] = {}


def stop_scheduler(process: subprocess.Popen, port: int) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(90) == 0
    with socket.socket() as sock:  # its Prefect server went with it
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_schedule_serves_both_flows_and_restarts_with_state_intact(
    tmp_path: Path, trained_state, small_training_frame, unlabelled_frame
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # The session's champion, in a private registry copy: drift has something to compare with.
    shutil.copy(trained_state.home / "mlflow.db", home / "mlflow.db")
    port = free_port()
    config = tmp_path / "schedule.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "schedule": {
                    "retrain_cron": RETRAIN_CRON,
                    "drift_cron": DRIFT_CRON,
                    "prefect_port": port,
                    "settle_seconds": 0,
                }
            }
        )
    )
    settings = settings_of(home, SYSTEMHEALER_CONFIG=str(config))
    settings = settings_of(home)  # the folders do not depend on the config
    champion = tracking.champion(settings)
    settings.inbox_dir.mkdir(parents=True)
    settings.drift_inbox_dir.mkdir(parents=True)
    small_training_frame.head(30).to_csv(settings.inbox_dir / "labelled.csv", index=False)
    small_training_frame.head(40).assign(label=-1).to_csv(settings.inbox_dir / "bad.csv")
    unlabelled_frame.head(300).to_csv(settings.drift_inbox_dir / "recent.csv", index=False)
    log = tmp_path / "scheduler.log"

    process, api_url = start_scheduler(home, config, log)
    try:
        assert api_url == f"http://127.0.0.1:{port}/api"
        second = run_cli(case_env(home), "schedule", "--config", str(config), timeout=120)
        assert second.returncode == 75, second.stderr  # busy: try again later
        assert "a scheduler already runs" in second.stderr
        api = PrefectAPI(api_url)
        retraining = api.deployment("retraining", "retraining")
        assert [s["schedule"]["cron"] for s in retraining["schedules"]] == [RETRAIN_CRON]
        assert all(s["active"] for s in retraining["schedules"])
        drift_deployment = api.deployment("drift", "drift")
        assert [s["schedule"]["cron"] for s in drift_deployment["schedules"]] == [DRIFT_CRON]

        run = api.run_deployment("retraining", "retraining")
        assert run["state"]["type"] == "COMPLETED", log.read_text()[-3000:]
        assert not any(settings.inbox_dir.iterdir())
        assert next(p.name for p in settings.archive_dir.iterdir()).endswith("labelled.csv")
        assert len(list(settings.rejected_dir.glob("*.report.json"))) == 1
        manifest = inbox.read_manifest(settings)
        assert [f["name"] for f in manifest["files"]] == ["labelled.csv"]
        assert manifest["dataset"]["rows"] == 30 and "trained_sha256" not in manifest
        assert tracking.champion(settings).version == champion.version

        run = api.run_deployment("drift", "drift")
        assert run["state"]["type"] == "COMPLETED", log.read_text()[-3000:]
        latest = drift.load_report(settings)
        assert latest["source"] == "recent.csv" and latest["summary"]["drift_detected"] is True
    finally:
        stop_scheduler(process, port)
    assert state_lock(settings, "scheduler").holder() is None

    # Restart: the same deployments, schedules, data, registry; nothing new to train on.
    versions = [v.version for v in tracking.list_versions(settings)]
    process, api_url = start_scheduler(home, config, log)
    try:
        api = PrefectAPI(api_url)
        again = api.deployment("retraining", "retraining")
        assert again["id"] == retraining["id"]
        assert [s["schedule"]["cron"] for s in again["schedules"]] == [RETRAIN_CRON]
        assert all(s["active"] for s in again["schedules"])
        runs = api.flow_runs("retraining")
        assert any(r["state"]["type"] == "COMPLETED" for r in runs)  # history kept
        run = api.run_deployment("retraining", "retraining")
        assert run["state"]["type"] == "COMPLETED", log.read_text()[-3000:]
        assert [v.version for v in tracking.list_versions(settings)] == versions
        assert tracking.champion(settings).version == champion.version
        assert inbox.read_manifest(settings) == manifest
    finally:
        stop_scheduler(process, port)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    assert json.loads((home / "locks" / "scheduler.lock").read_text() or "null") is None
    assert os.path.exists(home / "prefect" / "prefect.db")
