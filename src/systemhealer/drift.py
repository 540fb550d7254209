"""Drift monitoring: new unlabelled incidents against the champion's training profile, or
against a calibrated deployment's reference window.

Two views of the same file:

- **Great Expectations**, through :func:`systemhealer.validation.validate_frame`: the data
  contract (schema, types, no infinities) and, against the training profile, value ranges and
  missing fractions — what ``systemhealer validate`` reports;
- **a per-feature distribution distance**: the population stability index (PSI) over the
  training deciles and the Wasserstein-1 distance, both on signed-log values
  ``sign(x)·log(1 + |x|)``, because KPI magnitudes span 1e-3 … 1e15 and a shift by a factor
  matters as much at 1e3 as at 1e12.

A feature drifted when its PSI exceeds ``schedule.drift_psi_threshold`` (0.25 is the usual
"major shift" mark); the file drifted when at least ``schedule.drift_feature_share`` of the
features the model uses did. Reports are kept as JSON under ``<home>/drift/`` (newest also as
``latest.json`` when it has a verdict) and logged to MLflow in the monitoring experiment.

Incidents of another deployment differ from the training data by design (other units, sizes,
class mix; ``docs/calibration.md``), so against the training profile they always drift. Checked
with ``deployment=NAME``, they are compared with that deployment's reference window instead —
the same profile (value ranges, missing fractions, sketches) learned from the window — which
says when the deployment has changed since it was calibrated, and should be calibrated again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from systemhealer.config import Settings
from systemhealer.data import KPI_FEATURES, label_columns, read_incidents
from systemhealer.errors import DataValidationError, SystemHealerError
from systemhealer.features import TRAINING_DEPLOYMENT

SKETCH_PROBS = np.linspace(0.0, 1.0, 21)
DECILES = np.linspace(0.1, 0.9, 9)
# PSI of an empty bin would be infinite: floor the shares (the usual convention).
_MIN_SHARE = 1e-4
# Distances on more rows than this add nothing but time.
MAX_ROWS = 100_000
LATEST = "latest.json"
_REPORT_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9_.-]{1,100}$")


def signed_log(values: np.ndarray) -> np.ndarray:
    """``sign(x)·log(1 + |x|)``: keeps the sign, compresses magnitudes (NaN stays NaN)."""
    values = np.asarray(values, dtype=np.float64)
    return np.sign(values) * np.log1p(np.abs(values))


def _finite_signed_log(values: pd.Series | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return signed_log(array[np.isfinite(array)])


@dataclass(frozen=True)
class FeatureSketch:
    """One feature's training distribution, small enough to live in the model's metadata."""

    edges: list[float]  # inner bin edges: the distinct training deciles (signed-log)
    fractions: list[float]  # training share of each bin, len(edges) + 1
    quantiles: list[float]  # signed-log quantiles at SKETCH_PROBS

    @classmethod
    def learn(cls, values: pd.Series | np.ndarray) -> FeatureSketch | None:
        """Sketch the finite values of a feature (None if it has none)."""
        logged = _finite_signed_log(values)
        if logged.size == 0:
            return None
        edges = np.unique(np.quantile(logged, DECILES))
        counts = np.bincount(np.searchsorted(edges, logged, side="right"), minlength=len(edges) + 1)
        return cls(
            edges=[float(e) for e in edges],
            fractions=[float(c) for c in counts / logged.size],
            quantiles=[float(q) for q in np.quantile(logged, SKETCH_PROBS)],
        )

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FeatureSketch:
        return cls(
            edges=list(payload["edges"]),
            fractions=list(payload["fractions"]),
            quantiles=list(payload["quantiles"]),
        )

    def psi(self, values: pd.Series | np.ndarray) -> float | None:
        """Population stability index of ``values`` against the training bins."""
        logged = _finite_signed_log(values)
        if logged.size == 0:
            return None
        edges = np.asarray(self.edges)
        counts = np.bincount(np.searchsorted(edges, logged, side="right"), minlength=len(edges) + 1)
        actual = np.maximum(counts / logged.size, _MIN_SHARE)
        expected = np.maximum(np.asarray(self.fractions), _MIN_SHARE)
        return float(np.sum((actual - expected) * np.log(actual / expected)))

    def wasserstein(self, values: pd.Series | np.ndarray) -> float | None:
        """Wasserstein-1 distance in signed-log units (1.0 ≈ magnitudes off by a factor e),
        from the two quantile functions on the sketch's grid."""
        logged = _finite_signed_log(values)
        if logged.size == 0:
            return None
        gap = np.abs(np.quantile(logged, SKETCH_PROBS) - np.asarray(self.quantiles))
        return float(np.trapezoid(gap, SKETCH_PROBS))


def sketch_features(features: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Sketches of every KPI feature with finite training values (for DataProfile)."""
    sketches = {}
    for column in KPI_FEATURES:
        if column in features.columns:
            sketch = FeatureSketch.learn(features[column])
            if sketch is not None:
                sketches[column] = asdict(sketch)
    return sketches


@dataclass
class DriftReport:
    """What a drift check found in one file of incidents."""

    source: str
    checked_at: str
    rows: int
    champion_version: str | None
    validation: dict[str, Any]
    summary: dict[str, Any]
    features: list[dict[str, Any]] = field(default_factory=list)
    mlflow_run_id: str | None = None
    report_id: str | None = None
    # What the incidents were compared with: "training" (the champion's training profile) or
    # the name of a calibrated deployment (its reference window).
    baseline: str = TRAINING_DEPLOYMENT

    @property
    def drift_detected(self) -> bool | None:
        return self.summary.get("drift_detected")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> str:
        """One line for logs and the CLI."""
        s = self.summary
        if s.get("drift_detected") is None:
            return f"{self.source}: no drift verdict ({s.get('reason', 'unknown')})"
        verdict = "DRIFT" if s["drift_detected"] else "no drift"
        top = ", ".join(f"{f['feature']} (PSI {f['psi']:.2f})" for f in self.top_features(3))
        against = (
            "the training data"
            if self.baseline == TRAINING_DEPLOYMENT
            else f"deployment '{self.baseline}'s reference window"
        )
        return (
            f"{self.source}: {verdict} against {against} — {s['features_drifted']}/"
            f"{s['features_checked']} features over PSI {s['psi_threshold']:g}"
            + (f"; most shifted: {top}" if top else "")
        )

    def top_features(self, n: int = 5) -> list[dict[str, Any]]:
        """The most shifted of the features the verdict counts (those the model uses)."""
        scored = [f for f in self.features if f.get("psi") is not None and f["used_by_model"]]
        return sorted(scored, key=lambda f: f["psi"], reverse=True)[:n]

    @property
    def input_refused(self) -> bool:
        """The file could not be read or breaks the data contract (not a drift question)."""
        return not self.validation.get("ok", False)


def feature_distances(
    features: pd.DataFrame,
    profile: Any,
    used_columns: set[str],
    psi_threshold: float,
) -> list[dict[str, Any]]:
    """Per-feature PSI, Wasserstein-1 and missing fractions against the training profile."""
    rows = []
    for column in KPI_FEATURES:
        values = features[column] if column in features.columns else pd.Series(dtype=float)
        payload = profile.distributions.get(column)
        sketch = FeatureSketch.from_dict(payload) if payload else None
        psi = sketch.psi(values) if sketch else None
        rows.append(
            {
                "feature": column,
                "psi": None if psi is None else round(psi, 4),
                "wasserstein": None
                if sketch is None or psi is None
                else round(float(sketch.wasserstein(values) or 0.0), 4),
                "missing_fraction": round(float(values.isna().mean()) if len(values) else 1.0, 4),
                "training_missing_fraction": round(profile.missing_fraction.get(column, 0.0), 4),
                "used_by_model": column in used_columns,
                "drifted": bool(psi is not None and psi > psi_threshold),
            }
        )
    return rows


def _summary(
    table: list[dict[str, Any]], rows: int, settings: Settings, reason: str | None
) -> dict[str, Any]:
    schedule = settings.schedule
    base = {
        "psi_threshold": schedule.drift_psi_threshold,
        "feature_share_threshold": schedule.drift_feature_share,
    }
    if reason:
        return {**base, "drift_detected": None, "reason": reason}
    checked = [f for f in table if f["used_by_model"] and f["psi"] is not None]
    if not checked:
        return {**base, "drift_detected": None, "reason": "no feature could be compared"}
    drifted = [f for f in checked if f["drifted"]]
    share = len(drifted) / len(checked)
    return {
        **base,
        "drift_detected": share >= schedule.drift_feature_share,
        "features_checked": len(checked),
        "features_drifted": len(drifted),
        "share_drifted": round(share, 4),
        "max_psi": max(f["psi"] for f in checked),
        "mean_psi": round(float(np.mean([f["psi"] for f in checked])), 4),
        "mean_wasserstein": round(float(np.mean([f["wasserstein"] for f in checked])), 4),
        "drifted_features": [f["feature"] for f in sorted(drifted, key=lambda f: -f["psi"])],
    }


# Why ``--deployment`` needs a file (the CLI and the flow refuse alike).
DEPLOYMENT_NEEDS_FILE = (
    "a deployment's incidents are checked one file at a time: give the file (the drift inbox "
    "holds incidents of the training deployment)"
)


def baseline_profile(settings: Settings, diagnoser: Any, deployment: str | None) -> Any:
    """The profile incidents are compared with: the champion's training profile, or the one of
    deployment ``deployment``'s reference window (DeploymentNotFoundError if there is none)."""
    from systemhealer.deployments import is_calibrated, reference_profile

    if not is_calibrated(deployment):
        return diagnoser.profile
    return reference_profile(settings, deployment)  # type: ignore[arg-type]


def baseline_label(deployment: str | None) -> str:
    """How warnings name what incidents are compared with."""
    from systemhealer.deployments import is_calibrated

    return f"deployment '{deployment}' window" if is_calibrated(deployment) else "training"


def check_frame(
    raw: pd.DataFrame,
    source: str,
    settings: Settings,
    diagnoser: Any,
    version: str | None,
    deployment: str | None = None,
) -> DriftReport:
    """Drift of a frame of incidents against ``diagnoser``'s training profile, or against the
    reference window of calibrated deployment ``deployment`` (no side effects)."""
    from systemhealer.deployments import SMALL_WINDOW, is_calibrated
    from systemhealer.validation import validate_frame

    checked_at = datetime.now(UTC).isoformat(timespec="seconds")
    profile = baseline_profile(settings, diagnoser, deployment)
    if len(raw) > MAX_ROWS:
        raw = raw.sample(MAX_ROWS, random_state=0)
    # Labels, if any, are not needed to measure drift: check the file as unlabelled incidents.
    unlabelled = raw.drop(columns=label_columns(raw.columns))
    report, frame = validate_frame(
        unlabelled, source, settings.data, False, profile, baseline_label(deployment)
    )
    table: list[dict[str, Any]] = []
    reason = None
    if not report.ok:
        reason = f"the file breaks the data contract: {report.summary()}"
    elif profile is None or not profile.distributions:
        reason = "the champion was trained before drift sketches existed; retrain it"
    elif is_calibrated(deployment) and profile.rows < SMALL_WINDOW:
        # Deciles and ranges of a few dozen incidents: any file would drift from them.
        reason = (
            f"deployment '{deployment}' was calibrated from {profile.rows} incidents; a drift "
            f"verdict needs a reference window of at least {SMALL_WINDOW}"
        )
    elif len(frame) < settings.schedule.drift_min_rows:
        reason = (
            f"{len(frame)} incidents; at least {settings.schedule.drift_min_rows} are needed "
            "(schedule.drift_min_rows)"
        )
    if report.ok and profile is not None:
        table = feature_distances(
            frame,
            profile,
            set(diagnoser.preprocessor.columns),
            settings.schedule.drift_psi_threshold,
        )
    return DriftReport(
        source=source,
        checked_at=checked_at,
        rows=len(raw),
        champion_version=version,
        validation=report.to_dict(),
        summary=_summary(table, len(frame), settings, reason),
        features=table,
        baseline=deployment or TRAINING_DEPLOYMENT,
    )


def check_file(
    path: Path,
    settings: Settings,
    diagnoser: Any,
    version: str | None,
    deployment: str | None = None,
) -> DriftReport:
    """Drift of a CSV/Parquet file (against the training profile or ``deployment``'s window);
    an unreadable file gives a report saying why."""
    try:
        raw = read_incidents(path)
    except Exception as exc:  # unreadable (or a bug): a report saying so, the inbox moves on
        empty = {"ok": False, "source": path.name, "issues": [{"message": str(exc)}]}
        return DriftReport(
            source=path.name,
            checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
            rows=0,
            champion_version=version,
            validation=empty,
            summary=_summary([], 0, settings, f"unreadable: {exc}"),
            baseline=deployment or TRAINING_DEPLOYMENT,
        )
    return check_frame(raw, path.name, settings, diagnoser, version, deployment)


# --- keeping reports ---


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).name)[:80].lstrip(".") or "incidents"


def _write_json_atomic(target: Path, payload: dict[str, Any]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_report(report: DriftReport, settings: Settings) -> Path:
    """Keep the report as JSON (and, if it has a verdict, as ``latest.json``: a file that gave
    none does not hide the last verdict); prune the oldest beyond the limit."""
    folder = settings.drift_reports_dir
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report_id = f"{stamp}-{_safe_stem(report.source)}"
    n = 1
    while (folder / f"{report_id}.json").exists():
        n += 1
        report_id = f"{stamp}-{_safe_stem(report.source)}-{n}"
    report.report_id = report_id
    target = folder / f"{report_id}.json"
    _write_json_atomic(target, report.to_dict())
    if report.drift_detected is not None:
        _write_json_atomic(folder / LATEST, report.to_dict())
    kept = sorted(p for p in folder.glob("*.json") if p.name != LATEST)
    for old in kept[: max(0, len(kept) - settings.schedule.keep_drift_reports)]:
        old.unlink(missing_ok=True)
    return target


def log_report(report: DriftReport, settings: Settings) -> str:
    """Log the report to MLflow (monitoring experiment): metrics, tags, the JSON artifact."""
    from systemhealer import tracking

    tags = {
        "systemhealer.kind": "drift",
        "source": report.source,
        "champion_version": str(report.champion_version),
        "drift_detected": str(report.drift_detected),
        "baseline": report.baseline,
    }
    with tracking.monitoring_run(settings, f"drift-{_safe_stem(report.source)}", tags) as run_id:
        numbers = {
            k: float(v)
            for k, v in report.summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        numbers["rows"] = float(report.rows)
        tracking.log_metrics(numbers)
        report.mlflow_run_id = run_id
        tracking.log_json(report.to_dict(), "drift/report.json")
    return run_id


def list_reports(settings: Settings, limit: int = 50) -> list[dict[str, Any]]:
    """Summaries of the kept reports, newest first (for the web page and the CLI)."""
    folder = settings.drift_reports_dir
    if not folder.exists():
        return []
    found = []
    for path in sorted((p for p in folder.glob("*.json") if p.name != LATEST), reverse=True):
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found.append(
            {
                "report_id": path.stem,
                "source": payload.get("source"),
                "checked_at": payload.get("checked_at"),
                "rows": payload.get("rows"),
                "champion_version": payload.get("champion_version"),
                "baseline": payload.get("baseline", TRAINING_DEPLOYMENT),
                "summary": payload.get("summary", {}),
            }
        )
        if len(found) >= limit:
            break
    return found


def load_report(settings: Settings, report_id: str = "latest") -> dict[str, Any]:
    """One kept report by id (as listed), or with ``latest`` the newest that has a verdict.

    The id is checked against the pattern of ids this module writes, so an id taken from a
    request can never name a file outside the reports folder.
    """
    if report_id == "latest":
        path = settings.drift_reports_dir / LATEST
    elif _REPORT_ID.match(report_id) and ".." not in report_id:
        path = settings.drift_reports_dir / f"{report_id}.json"
    else:
        raise DataValidationError(f"invalid drift report id {report_id!r}")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SystemHealerError(f"no drift report {report_id!r} yet") from exc


def move_checked(path: Path, settings: Settings) -> Path:
    """Move a checked file out of the drift inbox (into ``checked/`` under it)."""
    target_dir = settings.drift_inbox_dir / "checked"
    target_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = target_dir / f"{stamp}-{path.name}"
    n = 1
    while target.exists():
        n += 1
        target = target_dir / f"{stamp}-{n}-{path.name}"
    shutil.move(str(path), target)
    return target
