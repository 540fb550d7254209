"""MLflow and Prefect state on PostgreSQL: training, registry and flow runs against real servers.

Needs a PostgreSQL server and a role that may create databases, given as
``SYSTEMHEALER_TEST_POSTGRES=postgresql://USER:PASSWORD@127.0.0.1:5432/postgres`` (``.ci/run``
installs Debian's ``postgresql``, starts it and sets this). The test creates two fresh
databases, runs an MLflow tracking server and a Prefect server on them (127.0.0.1, free ports),
trains through the CLI, promotes by hand, reads the state back from PostgreSQL itself, and drops
the databases again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import pytest

from systemhealer import tracking
from systemhealer.serve import free_port
from tests.ops_helpers import case_env, prefect_server, run_cli, settings_of

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

DSN_VARIABLE = "SYSTEMHEALER_TEST_POSTGRES"


def _with_database(dsn: str, database: str, scheme: str | None = None) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}", scheme=scheme or parts.scheme))


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """Two fresh databases (MLflow's, Prefect's); their URLs; dropped afterwards."""
    dsn = os.environ.get(DSN_VARIABLE)
    if not dsn:
        pytest.skip(
            f"no PostgreSQL server given: set {DSN_VARIABLE}=postgresql://USER:PASSWORD@"
            "127.0.0.1:5432/postgres (a role with CREATEDB); .ci/run starts one"
        )
    import psycopg2

    try:
        admin = psycopg2.connect(dsn, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"the PostgreSQL server of {DSN_VARIABLE} does not answer: {exc}")
    admin.autocommit = True
    suffix = uuid4().hex[:8]
    names = {"mlflow": f"systemhealer_mlflow_{suffix}", "prefect": f"systemhealer_prefect_{suffix}"}
    with admin.cursor() as cursor:
        for name in names.values():
            cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {kind: _with_database(dsn, name) for kind, name in names.items()}
    finally:
        with admin.cursor() as cursor:
            for name in names.values():
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def query(url: str, sql: str) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(url, connect_timeout=5) as connection, connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} not healthy after {timeout:.0f} s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def mlflow_server(
    databases: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = folder / "mlflow.log"
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the pinned driver is psycopg2.
        *(
            "--backend-store-uri",
            databases["mlflow"].replace("postgresql://", "postgresql+psycopg2://", 1),
        ),
        *("--artifacts-destination", str(folder / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    process = subprocess.Popen(
        command, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(5)


def test_training_registry_and_flow_runs_live_in_postgresql(
    databases: dict[str, str], mlflow_server: str, tmp_path: Path, small_training_csv: Path
) -> None:
    prefect_db = _with_database(
        databases["prefect"], urlsplit(databases["prefect"]).path[1:], "postgresql+asyncpg"
    )
    home = tmp_path / "home"
    with prefect_server(
        tmp_path / "prefect", PREFECT_API_DATABASE_CONNECTION_URL=prefect_db
    ) as api_url:
        env = case_env(home, api_url, MLFLOW_TRACKING_URI=mlflow_server)
        trained = run_cli(env, "train", str(small_training_csv), "--no-progress")
        assert trained.returncode == 0, trained.stderr[-3000:]
        assert "promoted to champion" in trained.stdout

        settings = settings_of(home, MLFLOW_TRACKING_URI=mlflow_server)
        champion = tracking.champion(settings)
        assert champion is not None and champion.version == "1"
        assert champion.tags["gate"] == "promoted"
        diagnoser, _ = tracking.load_diagnoser(settings)  # artifacts served by the server
        assert diagnoser.profile is not None

        assert [v.version for v in tracking.list_versions(settings)] == ["1"]
        tracking.set_champion(settings, "1")  # a hand promotion, as `systemhealer promote 1`
        assert tracking.champion_history(settings) == ["1", "1"]

        # The state is in PostgreSQL itself, not in a file under the state folder.
        assert not (home / "mlflow.db").exists()
        rows = query(databases["mlflow"], "SELECT name, version FROM model_versions")
        assert rows == [(settings.registry.model_name, 1)]
        aliases = query(databases["mlflow"], "SELECT alias, version FROM registered_model_aliases")
        assert aliases == [("champion", 1)]
        runs = query(databases["mlflow"], "SELECT status FROM runs")
        assert runs == [("FINISHED",)]
        flow_runs = query(
            databases["prefect"],
            "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id",
        )
        assert ("training", "COMPLETED") in flow_runs
