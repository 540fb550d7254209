"""MLflow: experiment runs, the logged pyfunc model and the model registry.

The only module that talks to MLflow. Every ``models:/NAME@ALIAS`` URI is built here.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from systemhealer.config import Settings
from systemhealer.data import KPI_FEATURES, PROBA_COLUMNS
from systemhealer.diagnoser import FaultDiagnoser
from systemhealer.errors import ModelDamagedError, ModelNotFoundError, SystemHealerError
from systemhealer.locks import CHAMPION, state_lock

log = logging.getLogger(__name__)

_CHAMPION_HISTORY = "champion_history"
# Explicit requirements: inference would write torch==2.13.0+cpu, which PyPI cannot install.
PIP_REQUIREMENTS = [
    "torch==2.13.0",
    "mlflow==3.17.2",
    "pandas==3.1.1",
    "numpy==2.4.6",
    "scikit-learn==1.9.1",
    "pydantic-settings>=2.4,<3",
    "pyyaml>=6",
]


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured store and make sure the experiment exists."""
    settings.home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Chatter an operator cannot act on (creating the store's tables, checking the example).
    for chatty in ("mlflow.store.db.utils", "mlflow.pyfunc", "alembic.runtime.migration"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into os.environ, where the next
    # load_settings() would take it for the user's choice: keep the environment as it was.
    before = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    name = settings.registry.experiment_name
    if client.get_experiment_by_name(name) is None:
        location = None
        if settings.mlflow_tracking_uri is None:
            settings.artifact_root.mkdir(parents=True, exist_ok=True)
            location = settings.artifact_root.as_uri()
        try:
            client.create_experiment(name, artifact_location=location)
        except MlflowException:
            # Created meanwhile by a concurrent process: fine.
            if client.get_experiment_by_name(name) is None:
                raise
    mlflow.set_experiment(name)
    return client


@contextmanager
def training_run(
    settings: Settings, run_name: str | None = None, tags: dict[str, str] | None = None
) -> Iterator[str]:
    """An MLflow run around one training; marked FAILED if the block raises. Yields the run id."""
    configure(settings)
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        yield run.info.run_id


def log_params(params: dict[str, Any]) -> None:
    mlflow.log_params(
        {k: (json.dumps(v) if isinstance(v, (list, tuple, dict)) else v) for k, v in params.items()}
    )


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics(metrics, step=step)


def log_artifact(path: Path, folder: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=folder)


def log_json(payload: Any, name: str) -> None:
    mlflow.log_dict(payload, name)


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


class DiagnosisPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: raw KPI features in → ``predicted_label``, ``confidence``, ``proba_0…5``."""

    def load_context(self, context: Any) -> None:
        self.diagnoser = FaultDiagnoser.load(context.artifacts["diagnoser"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        features = pd.DataFrame(model_input).reindex(columns=list(KPI_FEATURES)).astype("float64")
        return self.diagnoser.diagnose(features)


def model_signature() -> ModelSignature:
    inputs = Schema([ColSpec("double", c, required=False) for c in KPI_FEATURES])
    outputs = Schema(
        [ColSpec("long", "predicted_label"), ColSpec("double", "confidence")]
        + [ColSpec("double", c) for c in PROBA_COLUMNS]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_diagnoser(diagnoser: FaultDiagnoser, input_example: pd.DataFrame) -> str:
    """Log the diagnoser as one pyfunc model in the active run; returns its model URI."""
    package = Path(__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        folder = diagnoser.save(Path(tmp) / "diagnoser")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(package / "pyfunc_model.py"),  # as code: nothing is pickled
            artifacts={"diagnoser": str(folder)},
            code_paths=[str(package)],
            signature=model_signature(),
            input_example=input_example.reset_index(drop=True),
            pip_requirements=PIP_REQUIREMENTS,
        )
    return info.model_uri


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered model version and what the registry says of it."""

    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: list[str]
    created_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "run_id": self.run_id,
            "source": self.source,
            "tags": self.tags,
            "aliases": self.aliases,
            "created_ms": self.created_ms,
        }


def _info(mv: Any) -> ModelVersionInfo:
    return ModelVersionInfo(
        version=str(mv.version),
        run_id=mv.run_id,
        source=mv.source,
        tags=dict(mv.tags or {}),
        aliases=list(getattr(mv, "aliases", []) or []),
        created_ms=int(mv.creation_timestamp or 0),
    )


def register(settings: Settings, model_uri: str, tags: dict[str, str]) -> ModelVersionInfo:
    """Register a logged model as a new version of the fault-diagnosis model."""
    client = configure(settings)
    mv = mlflow.register_model(model_uri, settings.registry.model_name, tags=tags)
    return _info(client.get_model_version(settings.registry.model_name, mv.version))


def alias_uri(settings: Settings, alias: str | None = None) -> str:
    return f"models:/{settings.registry.model_name}@{alias or settings.registry.champion_alias}"


def version_uri(settings: Settings, version: str) -> str:
    return f"models:/{settings.registry.model_name}/{version}"


def champion(settings: Settings) -> ModelVersionInfo | None:
    """The version that holds the champion alias, or None."""
    client = configure(settings)
    try:
        mv = client.get_model_version_by_alias(
            settings.registry.model_name, settings.registry.champion_alias
        )
    except MlflowException:
        return None
    return _info(mv)


def get_version(settings: Settings, version: str) -> ModelVersionInfo:
    client = configure(settings)
    try:
        return _info(client.get_model_version(settings.registry.model_name, str(version)))
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"model '{settings.registry.model_name}' has no version {version}"
        ) from exc


def list_versions(settings: Settings) -> list[ModelVersionInfo]:
    """All registered versions, newest first."""
    client = configure(settings)
    name = settings.registry.model_name
    try:
        found = client.search_model_versions(f"name='{name}'")
        # Searches return versions without their aliases; the registered model has them.
        aliases = client.get_registered_model(name).aliases if found else {}
    except MlflowException:
        return []
    versions = [
        replace(
            info,
            aliases=sorted(
                {*info.aliases, *(a for a, v in aliases.items() if str(v) == info.version)}
            ),
        )
        for info in map(_info, found)
    ]
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def set_version_tags(settings: Settings, version: str, tags: dict[str, str]) -> None:
    client = configure(settings)
    for key, value in tags.items():
        client.set_model_version_tag(settings.registry.model_name, version, key, value)


def champion_history(settings: Settings) -> list[str]:
    client = configure(settings)
    try:
        model = client.get_registered_model(settings.registry.model_name)
    except MlflowException:
        return []
    # As the registry spells versions ("1", never "01": an older release recorded requests'
    # spelling, and "01" never equals "1" when rolling back).
    history = json.loads(model.tags.get(_CHAMPION_HISTORY, "[]"))
    return [str(int(v)) if str(v).isascii() and str(v).isdigit() else str(v) for v in history]


@contextmanager
def champion_lock(settings: Settings, timeout: float | None = None) -> Iterator[None]:
    """Moves of the champion alias one at a time: a hand promotion or rollback waits for a
    gate that is judging against the current champion, and the gate's move cannot overwrite
    one made while it was scoring (nor two moves lose each other's history entry).
    ``timeout``: seconds to wait at most (LockTimeoutError, a BusyError), None = as long as it
    takes."""
    lock = state_lock(settings, CHAMPION)
    lock.acquire(timeout=timeout)
    try:
        yield
    finally:
        lock.release()


def set_champion(
    settings: Settings, version: str, record: bool = True, timeout: float | None = None
) -> str:
    """Give ``version`` the champion alias; remember the move so it can be rolled back.
    Returns the version as the registry spells it."""
    with champion_lock(settings, timeout):
        return assign_champion(settings, version, record)


def assign_champion(settings: Settings, version: str, record: bool = True) -> str:
    """:func:`set_champion` for a caller that holds :func:`champion_lock`."""
    client = configure(settings)
    name = settings.registry.model_name
    version = get_version(settings, version).version  # the registry's spelling: "01" → "1"
    # Never hand the alias to a model that cannot be loaded: the service, predict, validate
    # and every later gate would fail on it (ModelNotFoundError names what is damaged).
    load_diagnoser(settings, version_uri(settings, version))
    client.set_registered_model_alias(name, settings.registry.champion_alias, version)
    if record:
        history = [*champion_history(settings), version][-50:]
        client.set_registered_model_tag(name, _CHAMPION_HISTORY, json.dumps(history))
    return version


def rollback_champion(settings: Settings, timeout: float | None = None) -> tuple[str, str]:
    """Move the champion alias back to the previous champion. Returns (from, to)."""
    with champion_lock(settings, timeout):
        return _roll_back(settings)


def _roll_back(settings: Settings) -> tuple[str, str]:
    client = configure(settings)
    history = champion_history(settings)
    current = champion(settings)
    if current is None:
        raise ModelNotFoundError("there is no champion to roll back")
    while history and history[-1] == current.version:
        history.pop()
    if not history:
        raise ModelNotFoundError(
            f"version {current.version} is the first champion; nothing to roll back to"
        )
    target = history[-1]
    get_version(settings, target)  # deleted meanwhile (MLflow UI)? say so, exit 3
    load_diagnoser(settings, version_uri(settings, target))  # and loadable
    client.set_registered_model_alias(
        settings.registry.model_name, settings.registry.champion_alias, target
    )
    client.set_registered_model_tag(
        settings.registry.model_name, _CHAMPION_HISTORY, json.dumps(history)
    )
    return current.version, target


def download_model(settings: Settings, model_uri: str, destination: Path) -> Path:
    """Download a logged model's folder (for archives and for fast loading)."""
    configure(settings)
    try:
        return Path(
            mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(destination))
        )
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"cannot find model {model_uri}: {exc.message.splitlines()[0]}"
        ) from exc


def resolve_uri(settings: Settings, model_uri: str | None) -> tuple[str, ModelVersionInfo | None]:
    """The URI to load (default: the champion) and, for registry URIs, the version behind it."""
    if model_uri is None:
        current = champion(settings)
        if current is None:
            raise ModelNotFoundError(
                f"no champion: model '{settings.registry.model_name}' has no version with alias "
                f"'{settings.registry.champion_alias}' yet; run `systemhealer train` first"
            )
        return version_uri(settings, current.version), current
    return model_uri, None


def load_diagnoser(
    settings: Settings, model_uri: str | None = None
) -> tuple[FaultDiagnoser, ModelVersionInfo | None]:
    """Load the diagnoser behind a model URI (default: the champion), without pyfunc overhead."""
    uri, version = resolve_uri(settings, model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder = download_model(settings, uri, Path(tmp))
        diagnoser_dir = folder / "artifacts" / "diagnoser"
        if not diagnoser_dir.exists():
            raise ModelDamagedError(f"{uri} is not a SystemHealer fault-diagnosis model")
        try:
            return FaultDiagnoser.load(diagnoser_dir), version
        except SystemHealerError:
            raise
        except Exception as exc:  # truncated or corrupt files: torch, JSON, EOF, missing keys
            detail = str(exc).splitlines()[0] if str(exc) else "no detail"
            raise ModelDamagedError(
                f"{uri} cannot be loaded, its files are damaged ({type(exc).__name__}: {detail})"
            ) from exc


def run_metrics(settings: Settings, run_id: str) -> dict[str, float]:
    client = configure(settings)
    try:
        return dict(client.get_run(run_id).data.metrics)
    except MlflowException:
        return {}


def run_url(settings: Settings, run_id: str, ui_base: str = "http://127.0.0.1:5000") -> str:
    client = configure(settings)
    experiment_id = client.get_run(run_id).info.experiment_id
    return f"{ui_base}/#/experiments/{experiment_id}/runs/{run_id}"


def run_details(settings: Settings, run_id: str) -> dict[str, Any] | None:
    """A run's status, times, experiment, params, metrics and tags; None if there is no such run."""
    client = configure(settings)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "start_ms": run.info.start_time,
        "end_ms": run.info.end_time,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
    }


def load_run_json(settings: Settings, run_id: str, name: str) -> Any | None:
    """A JSON artifact of a run (``evaluation/report.json``, ``gate.json`` …); None if absent."""
    configure(settings)
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{name}")
    except (MlflowException, OSError, ValueError):
        return None


def input_example(settings: Settings, version: str) -> pd.DataFrame | None:
    """The input example logged with a registered version (real KPI rows), or None."""
    configure(settings)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{version_uri(settings, version)}/input_example.json", dst_path=tmp
            )
            payload = json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):
            return None
    if not isinstance(payload, dict) or "data" not in payload:
        return None
    return pd.DataFrame(payload["data"], columns=payload.get("columns"))


# --- crash recovery and monitoring runs (scheduled retraining, drift) ---


def fail_interrupted_runs(settings: Settings, tag: str, value: str) -> list[str]:
    """Mark RUNNING training runs tagged ``tag=value`` FAILED: their process died mid-run.

    The caller holds the lock named by the tag, so no live training can own them. A model version
    such a run registered before the gate decided is tagged ``gate=interrupted``; the champion
    alias is never touched.
    """
    client = configure(settings)
    experiment = client.get_experiment_by_name(settings.registry.experiment_name)
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{tag}` = '{value}'",
        max_results=1000,
    )
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    failed = []
    for run in runs:
        run_id = run.info.run_id
        client.set_tag(run_id, "systemhealer.interrupted", f"process died; marked FAILED {stamp}")
        client.set_terminated(run_id, status="FAILED")
        failed.append(run_id)
        try:
            versions = client.search_model_versions(f"run_id = '{run_id}'")
        except MlflowException:
            versions = []
        for mv in versions:
            if "gate" not in (mv.tags or {}):
                client.set_model_version_tag(mv.name, mv.version, "gate", "interrupted")
                client.set_model_version_tag(
                    mv.name, mv.version, "gate_reason", "the training died before the gate ran"
                )
        log.warning("marked interrupted training run %s FAILED", run_id)
    return failed


def monitoring_experiment(settings: Settings) -> str:
    """Name of the experiment that holds drift checks (apart from the training runs)."""
    return f"{settings.registry.experiment_name}-monitoring"


@contextmanager
def monitoring_run(
    settings: Settings, run_name: str, tags: dict[str, str] | None = None
) -> Iterator[str]:
    """An MLflow run in the monitoring experiment (marked FAILED if the block raises)."""
    client = configure(settings)
    name = monitoring_experiment(settings)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if settings.mlflow_tracking_uri is None:
            location = (settings.artifact_root / "monitoring").as_uri()
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
        except MlflowException:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            experiment_id = found.experiment_id
    else:
        experiment_id = experiment.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        yield run.info.run_id


def list_runs(
    settings: Settings, experiment: str, filter_string: str = "", max_results: int = 100
) -> list[dict[str, Any]]:
    """Runs of an experiment, newest first: id, status, times, tags, metrics."""
    client = configure(settings)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=filter_string,
        max_results=max_results,
        order_by=["attributes.start_time DESC"],
    )
    return [
        {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "start_ms": run.info.start_time,
            "end_ms": run.info.end_time,
            "tags": dict(run.data.tags),
            "metrics": dict(run.data.metrics),
        }
        for run in runs
    ]
