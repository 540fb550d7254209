"""How well a model diagnoses a labelled set of incidents from another deployment.

The protocol mirrors how SystemHealer is used there: the set is split at random into halves A
and B; A's incidents, without their labels, calibrate the scoring of B and B's those of A, so
calibration never sees a label nor the rows it scores. The same incidents read with the
training deployment's statistics give the uncalibrated score beside it. With a deployment
already calibrated (``systemhealer calibrate``) every incident is scored with its statistics
instead, and the set is not used for calibration at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from systemhealer import tracking
from systemhealer.config import FAULT_CLASSES, Settings
from systemhealer.diagnoser import FaultDiagnoser
from systemhealer.errors import DataValidationError
from systemhealer.evaluation import EvaluationReport
from systemhealer.features import DeploymentStats
from systemhealer.shift import N_CLASSES, cross_calibrated


@dataclass(frozen=True)
class DeploymentAssessment:
    """Scores of one model on one labelled set, calibrated and not."""

    method: str  # "halves" (random), "ordered halves" or "deployment NAME"
    seed: int | None  # of the random split into halves
    calibrated: EvaluationReport
    uncalibrated: EvaluationReport
    class_mix: list[float]  # the set's actual mix, from its labels
    # Per calibration window: the mix it was estimated (and read) at, and its actual mix when
    # the window is part of the set (halves); empty when nothing was estimated.
    estimated_mixes: list[list[float]]
    window_mixes: list[list[float]]
    # Per incident, in the set's order: the diagnosis calibrated and uncalibrated.
    calibrated_labels: np.ndarray = field(repr=False)
    uncalibrated_labels: np.ndarray = field(repr=False)

    @property
    def mix_error(self) -> float | None:
        """Mean L1 distance between each window's estimated and actual class mix (halves)."""
        if not self.estimated_mixes or len(self.window_mixes) != len(self.estimated_mixes):
            return None
        pairs = zip(self.estimated_mixes, self.window_mixes, strict=True)
        return float(np.mean([np.abs(np.subtract(e, a)).sum() for e, a in pairs]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "seed": self.seed,
            "rows": self.calibrated.rows,
            "calibrated": self.calibrated.to_dict(),
            "uncalibrated": self.uncalibrated.to_dict(),
            "class_mix": self.class_mix,
            "estimated_mixes": self.estimated_mixes,
            "window_mixes": self.window_mixes,
            "mix_error_l1": self.mix_error,
        }


def class_mix(labels: np.ndarray) -> list[float]:
    counts = np.bincount(labels, minlength=N_CLASSES)
    return (counts / max(len(labels), 1)).tolist()


def _predicted(
    diagnoser: FaultDiagnoser, features: pd.DataFrame, stats: DeploymentStats | None
) -> np.ndarray:
    return diagnoser.diagnose(features, stats)["predicted_label"].to_numpy()


def assess_with_halves(
    diagnoser: FaultDiagnoser,
    features: pd.DataFrame,
    labels: np.ndarray,
    calibrate: Callable[[pd.DataFrame], DeploymentStats],
    seed: int = 0,
    ordered: bool = False,
) -> DeploymentAssessment:
    """Split the set in random halves (``ordered``: its first and second half, as they are in
    the file); each half, unlabelled, calibrates the other's scoring.

    ``calibrate`` turns a window of unlabelled incidents into deployment statistics as
    ``systemhealer calibrate`` does (``deployments.measure``). Only ``features`` reach it."""
    if len(labels) < 2:
        raise DataValidationError("a labelled set needs at least 2 incidents to be split in halves")
    features = features.reset_index(drop=True)
    predicted, windows = cross_calibrated(
        diagnoser, features, calibrate, np.random.default_rng(seed), ordered
    )
    plain = _predicted(diagnoser, features, None)
    # Both halves' mixes or none (a half too small to estimate from is read as it is).
    estimated = windows if all(w.stats.reference_mix is not None for w in windows) else []
    return DeploymentAssessment(
        method="ordered halves" if ordered else "halves",
        seed=None if ordered else seed,
        calibrated=EvaluationReport.score(labels, predicted),
        uncalibrated=EvaluationReport.score(labels, plain),
        class_mix=class_mix(labels),
        estimated_mixes=[[float(s) for s in w.stats.reference_mix] for w in estimated],  # type: ignore[union-attr]
        window_mixes=[class_mix(labels[w.reference]) for w in estimated],
        calibrated_labels=predicted,
        uncalibrated_labels=plain,
    )


def assess_with_deployment(
    diagnoser: FaultDiagnoser,
    features: pd.DataFrame,
    labels: np.ndarray,
    name: str,
    stats: DeploymentStats | None,
) -> DeploymentAssessment:
    """Score every incident with an already calibrated deployment's statistics (its reference
    window's estimated mix is reported; that window's actual mix is unknown); None = the
    training data's statistics."""
    mixes = (
        []
        if stats is None or stats.reference_mix is None
        else [[float(s) for s in stats.reference_mix]]
    )
    predicted, plain = _predicted(diagnoser, features, stats), _predicted(diagnoser, features, None)
    return DeploymentAssessment(
        method=f"deployment {name}",
        seed=None,
        calibrated=EvaluationReport.score(labels, predicted),
        uncalibrated=EvaluationReport.score(labels, plain),
        class_mix=class_mix(labels),
        estimated_mixes=mixes,
        window_mixes=[],
        calibrated_labels=predicted,
        uncalibrated_labels=plain,
    )


def incident_table(
    assessment: DeploymentAssessment, labels: np.ndarray, sample_ids: pd.Series | None
) -> pd.DataFrame:
    """One row per incident: its label, its diagnosis calibrated and not, and whether the
    calibrated one is right (what ``evaluate --output`` writes)."""
    table = pd.DataFrame({
        "label": labels,
        "predicted_label": assessment.calibrated_labels,
        "predicted_label_uncalibrated": assessment.uncalibrated_labels,
        "correct": assessment.calibrated_labels == labels,
    })  # fmt: skip
    if sample_ids is not None:
        table.insert(0, "sample_id", sample_ids.to_numpy())
    return table


def log_assessment(
    settings: Settings, assessment: DeploymentAssessment, source: str, model: str
) -> str:
    """Record the assessment as a run of the monitoring experiment (beside drift checks);
    returns the MLflow run id."""
    tags = {"systemhealer.kind": "deployment-evaluation", "source": source, "model": model,
            "method": assessment.method}  # fmt: skip
    name = "evaluate-" + (Path(source).name[:80] or "incidents")
    with tracking.monitoring_run(settings, name, tags) as run_id:
        if assessment.seed is not None:
            tracking.log_params({"seed": assessment.seed})
        metrics = {
            **assessment.calibrated.metrics("calibrated"),
            **assessment.uncalibrated.metrics("uncalibrated"),
            "rows": float(assessment.calibrated.rows),
        }
        if assessment.mix_error is not None:
            metrics["class_mix_error_l1"] = assessment.mix_error
        tracking.log_metrics(metrics)
        tracking.log_json(assessment.to_dict(), "evaluation/assessment.json")
    return run_id


def summary_lines(assessment: DeploymentAssessment, class_names: tuple[str, ...]) -> list[str]:
    """The assessment as a few lines of text for the CLI."""
    cal, plain = assessment.calibrated, assessment.uncalibrated

    def shares(values: list[float]) -> str:
        return ", ".join(f"{n}: {s:.1%}" for n, s in zip(class_names, values, strict=True))

    how = {
        "halves": "random halves calibrating each other (labels never used for calibration)",
        "ordered halves": "the file's first and second half calibrating each other (labels "
        "never used for calibration)",
    }.get(assessment.method, assessment.method)

    def class_f1(c: int, name: str) -> str:
        scores = cal.per_class[str(c)]
        return f"{name}: {scores['f1']:.3f}" if scores["support"] else f"{name}: n/a (none)"

    lines = [
        f"{cal.rows} labelled incidents; calibrated with {how}",
        f"macro-F1 calibrated {cal.macro_f1:.4f} (class-balanced {cal.balanced_macro_f1:.4f}, "
        f"accuracy {cal.accuracy:.4f}); uncalibrated {plain.macro_f1:.4f} "
        f"(class-balanced {plain.balanced_macro_f1:.4f}, accuracy {plain.accuracy:.4f})",
        "F1 per class, calibrated: "
        + ", ".join(class_f1(c, n) for c, n in zip(FAULT_CLASSES, class_names, strict=True)),
        f"actual class mix: {shares(assessment.class_mix)}",
    ]
    if assessment.window_mixes:
        for i, (estimated, actual) in enumerate(
            zip(assessment.estimated_mixes, assessment.window_mixes, strict=True)
        ):
            lines.append(f"half {i + 1}, estimated class mix: {shares(estimated)}")
            lines.append(f"half {i + 1}, actual class mix:    {shares(actual)}")
        lines.append(
            f"class-mix estimate off by {assessment.mix_error:.3f} (L1, mean of the halves)"
        )
    for mix in assessment.estimated_mixes if not assessment.window_mixes else []:
        lines.append(f"the deployment's reference window, estimated class mix: {shares(mix)}")
    lines.append("confusion (rows: actual, columns: diagnosed), calibrated:")
    lines += ["  " + " ".join(f"{n:>5d}" for n in row) for row in cal.confusion]
    return lines
