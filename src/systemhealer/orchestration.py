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
from pathlib import Path

from systemhealer.config import Settings
from systemhealer.errors import SystemHealerError


def prepare_prefect(settings: Settings, quiet: bool = True) -> None:
    """Point Prefect at the state folder (or ``PREFECT_API_URL``) before it is imported."""
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_UI_ENABLED", "true")
    if settings.prefect_api_url:
        os.environ["PREFECT_API_URL"] = settings.prefect_api_url
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
