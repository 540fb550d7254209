"""Running the BentoML service as a process: for ``systemhealer serve``, tests and benchmarks.

The service itself is :mod:`systemhealer.service`; this module starts ``bentoml serve`` on it
with the right environment (state folder, config file, no usage analytics), waits until it is
ready, and always stops it again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

import psutil

from systemhealer.config import Settings
from systemhealer.errors import ConfigError, SystemHealerError

SERVICE = "systemhealer.service:FaultDiagnosisService"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken, with a message saying what to do."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another port with --port"
            ) from exc


def service_env(
    settings: Settings,
    config_file: Path | str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a service process: this one's, plus the state folder and config."""
    env = {**os.environ, **(extra or {})}
    env["SYSTEMHEALER_HOME"] = str(settings.home)
    if config_file is not None:
        env["SYSTEMHEALER_CONFIG"] = str(Path(config_file).resolve())
    env.setdefault("BENTOML_HOME", str(settings.home / "bentoml"))
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")  # no usage analytics: nothing leaves the host
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # glibc gives a threaded process up to 8 malloc arenas a core, each keeping its own
    # high-water memory (the worker's threads: uploads, the batcher, model swaps). With 2, one
    # 7-minute soak each: 928 MB at the end instead of 958, no late step (issue 7, soak.md).
    env.setdefault("MALLOC_ARENA_MAX", "2")
    return env


def serve_command(host: str, port: int) -> list[str]:
    """``bentoml serve`` on the SystemHealer service, with this interpreter."""
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]


def start_service(
    settings: Settings,
    host: str,
    port: int,
    config_file: Path | str | None = None,
    log: IO[bytes] | int | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start the service in the background (its own process group); returns at once."""
    check_port(host, port)
    return subprocess.Popen(
        serve_command(host, port),
        env=service_env(settings, config_file, extra_env),
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_ready(
    url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 120.0
) -> None:
    """Wait until ``url``/readyz answers 200; raise if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemHealerError(f"the service exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace").strip() or f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.3)
    raise SystemHealerError(f"the service at {url} is not ready after {timeout:.0f} s: {last}")


def stop_service(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Stop a service started by :func:`start_service`: SIGTERM, then SIGKILL, its group, then
    any of its processes left over (BentoML starts its workers in sessions of their own, so a
    worker busy with a backlog can outlive the group)."""
    if process.poll() is not None:
        return
    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        family = []
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    left = [p for p in family if p.is_running()]
    for leftover in left:
        with contextlib.suppress(psutil.Error):
            leftover.terminate()
    _, alive = psutil.wait_procs(left, timeout=5)
    for leftover in alive:
        with contextlib.suppress(psutil.Error):
            leftover.kill()


def run_service(
    settings: Settings, host: str, port: int, config_file: Path | str | None = None
) -> int:
    """Serve in the foreground until Ctrl-C or SIGTERM; returns the exit code."""
    check_port(host, port)
    process = subprocess.Popen(
        serve_command(host, port), env=service_env(settings, config_file), start_new_session=True
    )

    def forward(signum: int, _frame: object) -> None:
        # Only pass the signal on: waiting here would deadlock with process.wait() below.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        return process.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        stop_service(process)
        signal.signal(signal.SIGTERM, previous)
