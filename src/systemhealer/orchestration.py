"""Prefect: where its state lives, how its servers start. The only module that configures Prefect.

Call :func:`prepare_prefect` before importing ``prefect`` so its settings take effect.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from systemhealer.config import Settings
from systemhealer.errors import ConfigError, SystemHealerError


def prepare_prefect(settings: Settings, quiet: bool = True) -> None:
    """Point Prefect at the state folder (or ``PREFECT_API_URL``) before it is imported."""
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary server migrates a fresh database first: on a busy 2-core machine that takes
    # longer than Prefect's 20 s default, and the command would fail for no fault of the user.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_UI_ENABLED", "true")
    # A running `systemhealer schedule` serves this state folder's Prefect database: use its
    # server rather than a second, temporary one on the same SQLite file.
    api_url = settings.prefect_api_url or scheduler_api_url(settings)
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def quiet_prefect_console() -> None:
    """Failures are reported by the CLI in one line: keep Prefect's tracebacks off the console.

    Call after ``prefect`` is imported (its logging setup resets levels on import).
    """
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.engine", "prefect"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def start_prefect_server(
    settings: Settings, host: str = "127.0.0.1", timeout: float = 60
) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Start ``prefect server start`` (unless one answers already); returns (process, api url)."""
    port = settings.schedule.prefect_port
    api_url = f"http://{host}:{port}/api"
    if _port_open(host, port):
        return None, api_url
    prepare_prefect(settings)
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    log_file = (settings.home / "prefect-server.log").open("ab")
    process = subprocess.Popen(
        [prefect, "server", "start", "--host", host, "--port", str(port)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PREFECT_HOME": str(settings.prefect_home)},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemHealerError(
                f"Prefect server exited; see {settings.home / 'prefect-server.log'}"
            )
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return process, api_url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise SystemHealerError(f"Prefect server did not become healthy in {timeout:.0f} s")


def stop_prefect_server(process: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    """Stop a server started by :func:`start_prefect_server` (SIGTERM, then SIGKILL)."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def scheduler_api_url(settings: Settings) -> str | None:
    """The Prefect API of the live scheduler of this state folder, if one runs."""
    from systemhealer.locks import running_scheduler

    holder = running_scheduler(settings)
    url = holder.get("api_url") if holder else None
    return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None


def check_cron(expression: str, setting: str) -> str:
    """A cron expression Prefect accepts, or a ConfigError naming the setting."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=expression)
    except ValidationError as exc:
        raise ConfigError(
            f"{setting}: {expression!r} is not a valid cron expression "
            "(five fields: minute hour day-of-month month day-of-week, UTC)"
        ) from exc
    return expression


def crash_orphaned_flow_runs(
    flow_names: list[str],
    reason: str,
    deployments_only: bool = False,
    older_than_seconds: float = 0,
) -> list[str]:
    """Mark RUNNING/PENDING runs of these flows Crashed: their process is known to be gone.

    Call only when that is known, e.g. with the lock their runs hold. ``deployments_only``
    restricts the sweep to runs of deployments (not flows run by hand).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    now = datetime.now(UTC)
    crashed = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=flow_names)),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                ),
                deployment_id=FlowRunFilterDeploymentId(is_null_=False)
                if deployments_only
                else None,
            ),
        )
        for run in runs:
            started = run.start_time or run.expected_start_time or now
            if (now - started).total_seconds() < older_than_seconds:
                continue
            client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
            crashed.append(str(run.id))
    return crashed


def crash_flow_run(flow_run_id: str, reason: str) -> bool:
    """Mark one flow run Crashed if it is still RUNNING or PENDING; True if it was."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        if run.state is None or run.state.type not in (StateType.RUNNING, StateType.PENDING):
            return False
        client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
    return True


def serve_schedules(
    settings: Settings, config_file: str | None, on_ready: Callable[[], None] | None = None
) -> None:
    """Register the retraining and drift deployments on their crons, call ``on_ready``, then
    run their flow runs until stopped (Ctrl-C / SIGTERM). Needs a Prefect server
    (``PREFECT_API_URL``)."""
    import asyncio
    import contextlib

    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner
    from prefect.types.entrypoint import EntrypointType

    from flows.drift import drift_flow
    from flows.retraining import retraining_flow

    schedule = settings.schedule
    parameters = {"config_file": config_file}
    deployments = [
        retraining_flow.to_deployment(
            name="retraining",
            entrypoint_type=EntrypointType.MODULE_PATH,
            cron=check_cron(schedule.retrain_cron, "schedule.retrain_cron"),
            parameters=parameters,
            description="Merge labelled files from the inbox, then train behind the gate.",
            tags=["systemhealer"],
        ),
        drift_flow.to_deployment(
            name="drift",
            entrypoint_type=EntrypointType.MODULE_PATH,
            cron=check_cron(schedule.drift_cron, "schedule.drift_cron"),
            parameters=parameters,
            description="Check unlabelled files of the drift inbox against the champion.",
            tags=["systemhealer"],
        ),
    ]
    # What prefect.serve does, with a hook once the deployments are registered. Schedules stay
    # active when the scheduler stops: runs that fall due meanwhile are run when it is back
    # (each is idempotent), and a restart changes nothing on the server.
    runner = Runner(pause_on_shutdown=False)
    for deployment in deployments:
        runner.add_deployment(deployment)
    if on_ready is not None:
        on_ready()
    with contextlib.suppress(KeyboardInterrupt, TerminationSignal):
        asyncio.run(runner.start())
