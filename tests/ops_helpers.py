"""Helpers of the operations tests: private state folders, a real Prefect server, the CLI in a
subprocess (so it can be killed), and the Prefect REST API read with plain HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from systemhealer.config import Settings, load_settings
from systemhealer.serve import free_port

# What a state folder of these tests must not inherit from the test session.
_FOREIGN = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "SYSTEMHEALER_CONFIG", "PREFECT_HOME")


def settings_of(home: Path, **env: str) -> Settings:
    """Settings of another state folder (and extra environment), without touching os.environ
    for longer than the call."""
    saved = dict(os.environ)
    try:
        os.environ["SYSTEMHEALER_HOME"] = str(home)
        os.environ.update(env)
        return load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def case_env(home: Path, api_url: str | None = None, **extra: str) -> dict[str, str]:
    """Environment of a subprocess working on ``home`` (fast training settings kept)."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN}
    env["SYSTEMHEALER_HOME"] = str(home)
    env["PREFECT_HOME"] = str(home / "prefect")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "systemhealer.cli", *args]


def run_cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``systemhealer ARGS``; its output is returned (and shown if the test fails)."""
    return subprocess.run(
        cli_command(*args), env=env, capture_output=True, text=True, timeout=timeout
    )


@contextmanager
def prefect_server(home: Path, **env: str) -> Iterator[str]:
    """A real ``prefect server`` on a free port of 127.0.0.1 with its state under ``home``;
    yields its API URL and always stops it."""
    from systemhealer.orchestration import start_prefect_server, stop_prefect_server

    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    settings = settings_of(home, SYSTEMHEALER_SCHEDULE__PREFECT_PORT=str(port))
    saved = dict(os.environ)
    os.environ.update(env)
    os.environ["PREFECT_HOME"] = str(settings.prefect_home)
    try:
        process, api_url = start_prefect_server(settings, timeout=180)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert process is not None, f"port {port} was taken"
    try:
        yield api_url
    finally:
        stop_prefect_server(process)


# Answers a Prefect server gives when it is busy (e.g. SQLITE_BUSY under load) and wants the
# client to retry; Prefect's own client retries these, so the tests' plain HTTP does too.
_RETRYABLE = {429, 502, 503}


class _RetryingTransport(httpx.HTTPTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(6):
            response = super().handle_request(request)
            if response.status_code not in _RETRYABLE or attempt == 5:
                return response
            response.close()
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")


class PrefectAPI:
    """The few Prefect REST calls the tests need, independent of the session's Prefect client.
    Like Prefect's client, it retries the answers a busy server asks to be retried."""

    def __init__(self, api_url: str) -> None:
        self.api = api_url.rstrip("/")
        self.http = httpx.Client(timeout=30, transport=_RetryingTransport())

    def deployment(self, flow: str, name: str) -> dict[str, Any]:
        answer = self.http.get(f"{self.api}/deployments/name/{flow}/{name}")
        answer.raise_for_status()
        return answer.json()

    def run_deployment(self, flow: str, name: str, timeout: float = 600) -> dict[str, Any]:
        """Create a flow run of a deployment now and wait until it is final."""
        deployment = self.deployment(flow, name)
        created = self.http.post(
            f"{self.api}/deployments/{deployment['id']}/create_flow_run", json={}
        )
        created.raise_for_status()
        return self.wait_final(created.json()["id"], timeout)

    def flow_run(self, run_id: str) -> dict[str, Any]:
        answer = self.http.get(f"{self.api}/flow_runs/{run_id}")
        answer.raise_for_status()
        return answer.json()

    def wait_final(self, run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} not final after {timeout:.0f} s: {run['state']}")

    def flow_runs(self, flow: str) -> list[dict[str, Any]]:
        answer = self.http.post(
            f"{self.api}/flow_runs/filter", json={"flows": {"name": {"any_": [flow]}}}
        )
        answer.raise_for_status()
        return answer.json()
