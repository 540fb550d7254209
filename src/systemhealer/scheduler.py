"""The ``systemhealer schedule`` process: a Prefect server (unless one is configured) serving
the retraining and drift deployments, one scheduler per state folder.

Start-up also repairs what a crash may have left: MLflow runs of trainings that died are marked
FAILED, flow runs of a previous scheduler that died are marked Crashed. Everything else lives in
the state folder (Prefect's database, MLflow's store, the inbox and the training data), so a
restarted scheduler carries on where the last one stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from systemhealer.config import Settings
from systemhealer.errors import BusyError, ConfigError
from systemhealer.locks import (
    RETRAINING,
    SCHEDULER,
    describe_holder,
    read_holder,
    recover_interrupted_trainings,
    state_lock,
)


def _check_api(api_url: str) -> None:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=10) as response:
            if response.status == 200:
                return
    except OSError as exc:
        raise ConfigError(f"PREFECT_API_URL {api_url} does not answer: {exc}") from exc
    raise ConfigError(f"PREFECT_API_URL {api_url} is not healthy")


def _terminate_gracefully(signum: int, frame: FrameType | None) -> None:
    # Until Prefect's runner installs its own handler: unwind, so the server is stopped too.
    raise SystemExit(128 + signum)


def _is_prefect_server(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(part.endswith(b"prefect") for part in command) and b"server" in command


def stop_orphaned_server(stale: dict[str, Any] | None, timeout: float = 20) -> int | None:
    """Stop the Prefect server a killed scheduler left running (its pid is in the lock file).

    Only a process of this host whose command line is a Prefect server is touched.
    """
    pid = (stale or {}).get("server_pid")
    if not isinstance(pid, int) or stale.get("host") != socket.gethostname():
        return None
    if not _is_prefect_server(pid):
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_prefect_server(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _is_prefect_server(pid):
        os.kill(pid, signal.SIGKILL)
    return pid


def repair_after_crash(settings: Settings) -> dict[str, list[str]]:
    """Mark what dead processes left running as failed (call with the scheduler lock held)."""
    from systemhealer.orchestration import crash_orphaned_flow_runs

    repaired = {"mlflow_runs": recover_interrupted_trainings(settings)}
    flows = ["drift"]
    if not state_lock(settings, RETRAINING).holder():
        flows.append("retraining")
    # Runs of our deployments are executed by the scheduler only, and it is not running.
    repaired["flow_runs"] = crash_orphaned_flow_runs(
        flows, "the scheduler that ran this flow run stopped", deployments_only=True
    )
    # (Flow runs of trainings that died are marked by the next training: see training_lock.)
    return repaired


def run_scheduler(
    settings: Settings, config_file: str | None, echo: Callable[[str], None] = print
) -> None:
    """Run until stopped (Ctrl-C, SIGTERM): start or reach Prefect, repair, serve the flows."""
    from systemhealer.orchestration import (
        prepare_prefect,
        quiet_prefect_console,
        serve_schedules,
        start_prefect_server,
        stop_prefect_server,
    )

    lock = state_lock(settings, SCHEDULER)
    stale = read_holder(lock.path)  # what a scheduler that died left in the lock file
    if not lock.try_acquire({"home": str(settings.home)}):
        raise BusyError(
            f"a scheduler already runs for {settings.home}: {describe_holder(lock.holder())}"
        )
    orphan = stop_orphaned_server(stale)
    if orphan is not None:
        echo(f"stopped the Prefect server (pid {orphan}) left by a scheduler that died")
    previous_handler = signal.signal(signal.SIGTERM, _terminate_gracefully)
    server = None
    try:
        prepare_prefect(settings)
        if settings.prefect_api_url:
            api_url = settings.prefect_api_url
            _check_api(api_url)
        else:
            server, api_url = start_prefect_server(settings)
        os.environ["PREFECT_API_URL"] = api_url
        lock.update_details({"api_url": api_url, "server_pid": server.pid if server else None})
        import prefect  # noqa: F401  (after PREFECT_API_URL is set)

        quiet_prefect_console()
        repaired = repair_after_crash(settings)
        for kind, ids in repaired.items():
            if ids:
                echo(f"marked {len(ids)} interrupted {kind.replace('_', ' ')} as failed")
        settings.inbox_dir.mkdir(parents=True, exist_ok=True)
        settings.drift_inbox_dir.mkdir(parents=True, exist_ok=True)
        ui = api_url.removesuffix("/api")

        def ready() -> None:
            echo(
                f"Prefect {ui} — deployments 'retraining/retraining' "
                f"(cron '{settings.schedule.retrain_cron}', UTC) and 'drift/drift' "
                f"(cron '{settings.schedule.drift_cron}', UTC)\n"
                f"labelled files  → {settings.inbox_dir}\n"
                f"unlabelled files → {settings.drift_inbox_dir}\n"
                "Ctrl-C or SIGTERM stops the scheduler."
            )

        serve_schedules(settings, config_file, on_ready=ready)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        stop_prefect_server(server)
        lock.release()
