"""Run reports: everything a training run left in MLflow, gathered in one JSON-ready dict.

The web page draws its result charts from these reports and offers them for download; they are
built from the run's logged artifacts (``validation/report.json``, ``evaluation/*.json``,
``gate.json``, ``data/fingerprint.json``), its metrics and params, through :mod:`tracking`.
"""

from __future__ import annotations

from typing import Any

from systemhealer import tracking
from systemhealer.config import FAULT_CLASSES, Settings

RUN_ARTIFACTS = {
    "validation": "validation/report.json",
    "evaluation": "evaluation/report.json",
    "history": "evaluation/history.json",
    "embedding": "evaluation/embedding.json",
    "gate": "gate.json",
    "fingerprint": "data/fingerprint.json",
}


def run_report(settings: Settings, run_id: str) -> dict[str, Any] | None:
    """The report of one training run, or None if MLflow has no such run."""
    run = tracking.run_details(settings, run_id)
    if run is None:
        return None
    report: dict[str, Any] = {
        "run": run,
        "class_names": list(settings.serving.class_names),
        "fault_classes": list(FAULT_CLASSES),
        "mlflow_run_url": mlflow_run_url(settings, run),
    }
    for key, artifact in RUN_ARTIFACTS.items():
        report[key] = tracking.load_run_json(settings, run_id, artifact)
    report["model_version"] = run["tags"].get("model_version")
    report["champion"] = _champion_at_gate(settings, report["gate"], report["model_version"])
    return report


def mlflow_run_url(settings: Settings, run: dict[str, Any]) -> str:
    """The run's page in the MLflow UI (``web.mlflow_ui_url``)."""
    base = settings.web.mlflow_ui_url.rstrip("/")
    return f"{base}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"


def prefect_ui_url(settings: Settings) -> str:
    """The Prefect UI: ``web.prefect_ui_url``, else the configured API's server, else the
    port ``systemhealer schedule`` starts its server on."""
    if settings.web.prefect_ui_url:
        return settings.web.prefect_ui_url.rstrip("/")
    if settings.prefect_api_url:
        return settings.prefect_api_url.rstrip("/").removesuffix("/api")
    return f"http://127.0.0.1:{settings.schedule.prefect_port}"


def _champion_at_gate(
    settings: Settings, gate: Any, own_version: str | None
) -> dict[str, Any] | None:
    """The champion this run was compared with: its version and its own run's metrics."""
    version = gate.get("champion_version") if isinstance(gate, dict) else None
    if not version or str(version) == str(own_version):
        return None
    try:
        info = tracking.get_version(settings, str(version))
    except Exception:
        return {"version": str(version), "metrics": {}, "tags": {}}
    metrics = tracking.run_metrics(settings, info.run_id) if info.run_id else {}
    return {"version": info.version, "run_id": info.run_id, "metrics": metrics, "tags": info.tags}


def version_summary(
    settings: Settings,
    info: tracking.ModelVersionInfo,
    champion_version: str | None,
    fingerprints: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of the models page: registry facts, headline metrics, data fingerprint.

    ``fingerprints`` caches the fingerprint artifacts by run id (they never change). The
    champion is named by the caller: registry searches do not always return aliases."""
    run = tracking.run_details(settings, info.run_id) if info.run_id else None
    metrics = run["metrics"] if run else {}
    fingerprint = None
    if info.run_id:
        cache = fingerprints if fingerprints is not None else {}
        if info.run_id not in cache:
            cache[info.run_id] = tracking.load_run_json(
                settings, info.run_id, RUN_ARTIFACTS["fingerprint"]
            )
        fingerprint = cache[info.run_id]
    return {
        **info.to_dict(),
        "champion": info.version == champion_version,
        "metrics": metrics,
        "params": {
            k: v for k, v in (run["params"] if run else {}).items() if k.startswith("data.")
        },
        "fingerprint": fingerprint,
        "run_status": run["status"] if run else None,
        "mlflow_run_url": mlflow_run_url(settings, run) if run else None,
    }
