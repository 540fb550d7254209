"""Scheduled drift checks: each new unlabelled file against the champion's training profile.

Served on ``schedule.drift_cron`` by ``systemhealer schedule``; ``systemhealer drift FILE``
checks one file at once, ``--deployment NAME`` against a calibrated deployment's reference
window. Reports: MLflow (monitoring experiment) and JSON under ``<home>/drift``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from systemhealer import drift, tracking
from systemhealer.config import Settings, load_settings
from systemhealer.deployments import is_calibrated, load_reference
from systemhealer.errors import SystemHealerError
from systemhealer.inbox import settled_files


@task(name="check drift", cache_policy=NO_CACHE)
def check_one(
    path: str,
    settings: Settings,
    diagnoser: Any,
    version: str | None,
    keep_file: bool,
    deployment: str | None = None,
) -> dict[str, Any]:
    """Check one file, keep and log its report, move it out of the drift inbox."""
    report = drift.check_file(Path(path), settings, diagnoser, version, deployment)
    drift.log_report(report, settings)
    drift.save_report(report, settings)
    if not keep_file:
        drift.move_checked(Path(path), settings)
    return report.to_dict() | {"headline": report.headline(), "input_refused": report.input_refused}


@flow(name="drift", log_prints=True)
def drift_flow(
    config_file: str | None = None, path: str | None = None, deployment: str | None = None
) -> dict[str, Any]:
    """Check ``path``, or every settled file of the drift inbox, for drift: against the
    champion's training profile, or against calibrated deployment ``deployment``'s window."""
    logger = get_run_logger()
    settings = load_settings(config_file)
    if is_calibrated(deployment):
        if path is None:
            raise SystemHealerError(drift.DEPLOYMENT_NEEDS_FILE)
        load_reference(settings, deployment)  # type: ignore[arg-type]  # known? (raises if not)
    if path is not None:
        files, waiting, keep = [Path(path)], [], True
    else:
        settings.drift_inbox_dir.mkdir(parents=True, exist_ok=True)
        files, waiting = settled_files(settings.drift_inbox_dir, settings.schedule.settle_seconds)
        keep = False
    if not files:
        return {"checked": [], "waiting": [p.name for p in waiting]}
    try:
        diagnoser, version = tracking.load_diagnoser(settings)
    except SystemHealerError as exc:
        # Nothing to compare with (no champion, or one this code cannot load): the files wait
        # in the inbox for a champion.
        logger.warning("%d file(s) wait: %s", len(files), exc)
        return {"checked": [], "waiting": [p.name for p in files + waiting], "reason": str(exc)}
    checked = []
    for file in files:
        report = check_one(
            str(file), settings, diagnoser, version.version if version else None, keep, deployment
        )
        logger.info(report["headline"])
        keys = (
            "source", "report_id", "mlflow_run_id", "baseline", "summary", "headline",
            "input_refused",
        )  # fmt: skip
        checked.append({k: report[k] for k in keys})
    return {"checked": checked, "waiting": [p.name for p in waiting]}
