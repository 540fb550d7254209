"""The training flow: validate → prepare → train → evaluate → register → gate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from systemhealer import pipeline, tracking
from systemhealer.config import Settings, load_settings
from systemhealer.data import data_name
from systemhealer.locks import training_lock
from systemhealer.training import EpochCallback, prepare_training_data


# No task caches its result: every run trains afresh (and hashing data frames costs time).
@task(name="validate", cache_policy=NO_CACHE)
def validate(path: str, settings: Settings):  # type: ignore[no-untyped-def]
    return pipeline.validate_training_file(path, settings)


@task(name="preprocess", cache_policy=NO_CACHE)
def preprocess(frame, settings: Settings, source: str):  # type: ignore[no-untyped-def]
    prepared = prepare_training_data(frame, settings)
    pipeline.log_training_context(prepared, settings, source)
    return prepared


@task(name="train", cache_policy=NO_CACHE)
def train(prepared, settings: Settings, on_epoch: EpochCallback | None, show_progress: bool):  # type: ignore[no-untyped-def]
    return pipeline.fit_model(prepared, settings, on_epoch, show_progress)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(prepared, diagnoser, result, settings: Settings):  # type: ignore[no-untyped-def]
    return pipeline.evaluate_candidate(prepared, diagnoser, result, settings)


# The registry is a database that another process may hold for a moment: retry.
@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def register(diagnoser, prepared, candidate, settings: Settings, run_id: str):  # type: ignore[no-untyped-def]
    return pipeline.log_and_register(diagnoser, prepared, candidate, settings, run_id)


@task(name="gate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def gate(version, candidate, prepared, settings: Settings):  # type: ignore[no-untyped-def]
    return pipeline.apply_gate(version, candidate, prepared, settings)


@flow(name="training", log_prints=True)
def training_flow(
    path: str,
    config_file: str | None = None,
    show_progress: bool = True,
    on_epoch: EpochCallback | None = None,
    source_name: str | None = None,
    before_register: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train a fault-diagnosis model on a labelled file and register it behind the gate.
    ``source_name`` names the MLflow run when ``path`` is a stored copy (a web upload);
    ``before_register`` is the last point at which the caller may stop the flow (it raises)."""
    settings = load_settings(config_file)
    stem = data_name(source_name or path)
    # One training at a time per state folder (others queue); the lock also marks the runs of
    # trainings that died (SIGKILL, power loss) FAILED.
    with (
        training_lock(settings) as lock_tags,
        tracking.training_run(settings, f"train-{stem}", lock_tags) as run_id,
    ):
        _, frame = validate(path, settings)
        prepared = preprocess(frame, settings, path)
        result = train(prepared, settings, on_epoch, show_progress)
        diagnoser = pipeline.build_diagnoser(prepared, result, settings)
        candidate = evaluate(prepared, diagnoser, result, settings)
        if before_register is not None:
            before_register()
        version = register(diagnoser, prepared, candidate, settings, run_id)
        decision = gate(version, candidate, prepared, settings)
        return pipeline.summary(run_id, version, candidate, decision, result)
