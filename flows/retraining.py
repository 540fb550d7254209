"""Scheduled retraining: merge the inbox into the training data, then train behind the gate.

Served on ``schedule.retrain_cron`` by ``systemhealer schedule``. The service picks up a new
champion by itself (it polls the alias), so promoting is the end of this flow's job.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.training import training_flow
from systemhealer import inbox, tracking
from systemhealer.config import Settings, load_settings
from systemhealer.errors import SystemHealerError
from systemhealer.locks import RETRAINING, describe_holder, state_lock


@task(name="merge inbox", cache_policy=NO_CACHE)
def merge_inbox(settings: Settings) -> dict[str, Any]:
    """Validate, de-duplicate and merge the settled inbox files; archive or reject each."""
    profile = None
    try:
        if tracking.champion(settings) is not None:
            profile = tracking.load_diagnoser(settings)[0].profile
    except SystemHealerError:
        profile = None  # drift warnings in the reports are a nicety, never a reason to stop
    return inbox.process_inbox(settings, profile).to_dict()


@flow(name="retraining", log_prints=True)
def retraining_flow(config_file: str | None = None) -> dict[str, Any]:
    """Merge new labelled incidents from the inbox; retrain if the training data changed."""
    logger = get_run_logger()
    settings = load_settings(config_file)
    # A training may outlast the cron interval: a run that finds the previous one still
    # going leaves the work to it rather than training the same data twice.
    lock = state_lock(settings, RETRAINING)
    if not lock.try_acquire():
        reason = f"the previous retraining is still running: {describe_holder(lock.holder())}"
        logger.info("skipped: %s", reason)
        return {"skipped": True, "trained": False, "reason": reason}
    try:
        return _retrain(settings, config_file)
    finally:
        lock.release()


def _retrain(settings: Settings, config_file: str | None) -> dict[str, Any]:
    logger = get_run_logger()
    merged = merge_inbox(settings)
    for outcome in merged["files"]:
        logger.info("%s: %s %s", outcome["name"], outcome["status"], outcome["message"])
    needed, reason = inbox.training_needed(settings, tracking.champion(settings) is not None)
    outcome: dict[str, Any] = {"inbox": merged, "trained": needed, "reason": reason}
    if not needed:
        logger.info("no training: %s", reason)
        return outcome
    logger.info("training: %s", reason)
    data_sha = inbox.read_manifest(settings)["dataset"]["sha256"]
    summary = training_flow(
        str(inbox.dataset_path(settings)), config_file=config_file, show_progress=False
    )
    inbox.record_trained(settings, data_sha, summary)
    logger.info(
        "model version %s %s: %s",
        summary["model_version"],
        "promoted to champion" if summary["promoted"] else "registered, not promoted",
        summary["gate_reason"],
    )
    outcome["training"] = summary
    return outcome
