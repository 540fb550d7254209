"""The training job's stages, called one by one as tasks by ``flows/training.py``.

validate → prepare (dedupe, split, preprocess) → train → evaluate → register → gate.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from systemhealer import deployments, tracking
from systemhealer.config import Settings
from systemhealer.data import KPI_FEATURES, clipped
from systemhealer.diagnoser import FaultDiagnoser
from systemhealer.errors import SystemHealerError
from systemhealer.evaluation import (
    EvaluationReport,
    embedding_2d,
    plot_confusion,
    plot_embedding,
    plot_loss_curves,
)
from systemhealer.features import DeploymentStats
from systemhealer.shift import shift_score, simulate_deployments
from systemhealer.training import EpochCallback, PreparedData, TrainingResult, train_ensemble
from systemhealer.validation import DataProfile, ValidationReport, require_valid, validate_file

log = logging.getLogger(__name__)


def validate_training_file(
    path: Path | str, settings: Settings
) -> tuple[ValidationReport, pd.DataFrame]:
    """Validate a labelled file; log the report to the active run; raise if it blocks."""
    report, frame = validate_file(path, settings.data, require_label=True)
    tracking.log_json(report.to_dict(), "validation/report.json")
    require_valid(report)
    return report, frame


def fit_model(
    prepared: PreparedData,
    settings: Settings,
    on_epoch: EpochCallback | None = None,
    show_progress: bool = True,
) -> TrainingResult:
    """Train the MLP on the training part (early-stopping on the validation part, if any)."""
    split = prepared.split
    monitored = split.validation if len(split.validation) else split.evaluation

    def log_epoch(record: dict[str, float]) -> None:
        curves = {
            k: v for k, v in record.items() if k in ("train_loss", "val_loss", "val_macro_f1")
        }
        tracking.log_metrics(curves, step=int(record.get("step", record["epoch"])))
        if on_epoch:
            on_epoch(record)

    return train_ensemble(
        prepared.training_inputs(settings.training),
        prepared.labels[split.train],
        prepared.inputs(monitored),
        prepared.labels[monitored],
        settings.training,
        on_epoch=log_epoch,
        show_progress=show_progress,
        targets=prepared.training_targets(settings.training),
    )


@dataclass(frozen=True)
class HoldoutScores:
    """Macro-F1 of one model on the held-out rows: as they are, and on simulated deployments."""

    eval_macro_f1: float
    shift_macro_f1: float
    shift_uncalibrated_macro_f1: float
    # Calibrated, on shifted copies in the evaluation rows' own skewed class mix.
    shift_skewed_macro_f1: float
    # Calibrated, on balanced shifted copies with a share of their KPI values swapped within
    # class (evaluation.shift_swap_share).
    shift_swapped_macro_f1: float
    # Calibrated, on balanced shifted copies whose clean half and cell-noisy half calibrate
    # each other (evaluation.shift_cell_noise).
    shift_noisy_macro_f1: float

    @property
    def shift_score(self) -> float:
        """What the gate and the sweep compare under shift: the mean of the four calibrated
        simulations (balanced, skewed mix, swapped values, clean and noisy halves)."""
        return shift_score(
            self.shift_macro_f1,
            self.shift_skewed_macro_f1,
            self.shift_swapped_macro_f1,
            self.shift_noisy_macro_f1,
        )


def holdout_scores(
    diagnoser: FaultDiagnoser, prepared: PreparedData, settings: Settings
) -> HoldoutScores:
    """Score a diagnoser on this run's evaluation rows and on their simulated shifts."""
    part = prepared.split.evaluation
    predicted = diagnoser.diagnose(prepared.features(part))["predicted_label"].to_numpy()
    seed = settings.training.seed

    def calibrate(window: pd.DataFrame) -> DeploymentStats:
        return deployments.measure(settings, diagnoser, "simulated", window)

    simulated = simulate_deployments(
        diagnoser, prepared.features(part), prepared.labels[part],
        settings.data.config_like_columns, settings.evaluation.shift_copies, seed,
        settings.evaluation.shift_swap_share, calibrate, settings.evaluation.shift_cell_noise,
    )  # fmt: skip
    return HoldoutScores(
        eval_macro_f1=EvaluationReport.score(prepared.labels[part], predicted).macro_f1,
        shift_macro_f1=simulated.calibrated,
        shift_uncalibrated_macro_f1=simulated.uncalibrated,
        shift_skewed_macro_f1=simulated.skewed,
        shift_swapped_macro_f1=simulated.swapped,
        shift_noisy_macro_f1=simulated.noisy,
    )


def score_metrics(scores: HoldoutScores) -> dict[str, float]:
    """The held-out scores as MLflow metrics (the same names for every run compared)."""
    return {**asdict(scores), "shift_score": scores.shift_score}


@dataclass
class CandidateEvaluation:
    """How the freshly trained model did on the held-out evaluation part."""

    evaluation: EvaluationReport
    scores: HoldoutScores
    metrics: dict[str, float] = field(default_factory=dict)


def build_diagnoser(
    prepared: PreparedData, result: TrainingResult, settings: Settings
) -> FaultDiagnoser:
    profile = DataProfile.learn(prepared.features(prepared.split.train))
    metadata = {"fingerprint": prepared.fingerprint, "best_epoch": result.best_epoch}
    diagnoser = FaultDiagnoser(prepared.preprocessor, result.network, profile, metadata)
    train = prepared.split.train
    diagnoser.measure_class_response(prepared.features(train), prepared.labels[train])
    return diagnoser


def evaluate_candidate(
    prepared: PreparedData, diagnoser: FaultDiagnoser, result: TrainingResult, settings: Settings
) -> CandidateEvaluation:
    """Score the evaluation part, draw the plots, log everything to the active run."""
    part = prepared.split.evaluation
    features, labels = prepared.features(part), prepared.labels[part]
    predicted = diagnoser.diagnose(features)["predicted_label"].to_numpy()
    report = EvaluationReport.score(labels, predicted)
    scores = holdout_scores(diagnoser, prepared, settings)
    names = settings.serving.class_names
    metrics = report.metrics("eval")
    metrics.update(score_metrics(scores))
    metrics["train_seconds"] = result.seconds
    metrics["best_epoch"] = float(result.best_epoch)
    tracking.log_metrics(metrics)
    tracking.log_json(report.to_dict(), "evaluation/report.json")
    tracking.log_json(result.history, "evaluation/history.json")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        points = embedding_2d(diagnoser.embed(features), seed=settings.training.seed)
        tracking.log_json(
            {
                "x": points[:, 0].round(4).tolist(),
                "y": points[:, 1].round(4).tolist(),
                "label": labels.tolist(),
            },
            "evaluation/embedding.json",
        )
        for plot in (
            plot_confusion(report, names, folder / "confusion_matrix.png"),
            plot_loss_curves(result.history, folder / "loss_curves.png"),
            plot_embedding(
                points,
                labels,
                names,
                folder / "embedding.png",
                "Penultimate layer (PCA), evaluation part",
            ),
        ):
            tracking.log_artifact(plot, "plots")
    return CandidateEvaluation(evaluation=report, scores=scores, metrics=metrics)


def log_training_context(prepared: PreparedData, settings: Settings, source: str) -> None:
    """Params, data fingerprint and split sizes of the run."""
    split = prepared.split
    tracking.log_params(
        {
            **{f"training.{k}": v for k, v in settings.training.model_dump().items()},
            **{f"preprocessing.{k}": v for k, v in settings.preprocessing.model_dump().items()},
            "data.source": Path(source).name,
            "data.sha256": prepared.fingerprint["sha256"],
            "data.rows": prepared.fingerprint["rows"],
            "data.duplicates_dropped": prepared.duplicates_dropped,
            "split.train": len(split.train),
            "split.validation": len(split.validation),
            "split.evaluation": len(split.evaluation),
            "features.kept": len(prepared.preprocessor.columns),
        }
    )
    tracking.log_json(prepared.fingerprint, "data/fingerprint.json")
    tracking.set_tags({"data.sha256": str(prepared.fingerprint["sha256"])})


def log_and_register(
    diagnoser: FaultDiagnoser,
    prepared: PreparedData,
    candidate: CandidateEvaluation,
    settings: Settings,
    run_id: str,
) -> tracking.ModelVersionInfo:
    """Log the pyfunc model and register it as a new version."""
    example = prepared.features(prepared.split.evaluation[:5])
    model_uri = tracking.log_diagnoser(diagnoser, example)
    tags = {
        "eval_macro_f1": f"{candidate.evaluation.macro_f1:.4f}",
        "shift_macro_f1": f"{candidate.scores.shift_macro_f1:.4f}",
        "shift_score": f"{candidate.scores.shift_score:.4f}",
        "data.sha256": str(prepared.fingerprint["sha256"]),
        "data.rows": str(prepared.fingerprint["rows"]),
        "run_id": run_id,
    }
    return tracking.register(settings, model_uri, tags)


@dataclass(frozen=True)
class GateDecision:
    """Whether the new version took the champion alias, and why."""

    promoted: bool
    reason: str
    candidate: HoldoutScores
    champion_version: str | None
    champion: HoldoutScores | None

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        for side in ("candidate", "champion"):
            scores = getattr(self, side)
            if scores is not None:
                payload[side]["shift_score"] = scores.shift_score
        return payload


def champion_scores(
    prepared: PreparedData, settings: Settings
) -> tuple[str | None, HoldoutScores | None, str, list[int]]:
    """The current champion's scores on this run's held-out rows (None if there is none or it
    cannot be loaded; the third item says why) and the fault classes it diagnoses that this
    run's data lacks."""
    current = tracking.champion(settings)
    if current is None:
        return None, None, "no champion yet", []
    try:
        diagnoser, _ = tracking.load_diagnoser(
            settings, tracking.version_uri(settings, current.version)
        )
    except SystemHealerError as exc:
        return current.version, None, f"champion v{current.version} cannot be loaded ({exc})", []
    lost = sorted((diagnoser.trained_classes or frozenset()) - set(np.unique(prepared.labels)))
    return current.version, holdout_scores(diagnoser, prepared, settings), "", lost


def gate_decision(
    candidate: HoldoutScores,
    champion_version: str | None,
    champion: HoldoutScores | None,
    why_none: str,
    gate_on_shift: bool,
    lost_classes: Sequence[int] = (),
) -> tuple[bool, str]:
    """Promote if at least as good as the champion on the same rows: in-distribution macro-F1
    and, when ``gate_on_shift``, the shift score (mean of the calibrated simulations) too.
    Never promote a model that cannot diagnose fault classes the champion diagnoses
    (``lost_classes``): its scores, on rows without those classes, cannot show the loss."""
    if champion is None:
        return True, why_none
    if lost_classes:
        names = ", ".join(str(c) for c in lost_classes)
        return False, (
            f"the training data has no incidents of fault class(es) {names}, which "
            f"v{champion_version} diagnoses: not promoted (`systemhealer promote` if intended)"
        )
    compared = [("macro-F1", candidate.eval_macro_f1, champion.eval_macro_f1)]
    if gate_on_shift:
        compared.append(("shift score", candidate.shift_score, champion.shift_score))
    parts = [
        f"{name} {mine:.4f} {'>=' if mine >= theirs else '<'} {theirs:.4f}"
        for name, mine, theirs in compared
    ]
    promoted = all(mine >= theirs for _, mine, theirs in compared)
    return promoted, f"{', '.join(parts)} of v{champion_version} (same rows)"


def decide_gate(
    version: tracking.ModelVersionInfo,
    scores: HoldoutScores,
    prepared: PreparedData,
    settings: Settings,
) -> GateDecision:
    """Promote ``version`` to champion only if it is at least as good as the champion on the
    same held-out rows (or there is no champion), and tag the version with the verdict. A gate
    that fails tags it ``gate=failed``: no registered version is left without a verdict."""
    try:
        # Held from reading the champion to moving the alias: a promotion or rollback by hand
        # meanwhile would otherwise be judged against, or overwritten (a few seconds' wait).
        with tracking.champion_lock(settings):
            champion_version, champion, why_none, lost = champion_scores(prepared, settings)
            promoted, reason = gate_decision(
                scores, champion_version, champion, why_none,
                settings.evaluation.gate_on_shift, lost,
            )  # fmt: skip
            verdict = "promoted" if promoted else "rejected"
            tracking.set_version_tags(
                settings, version.version, {"gate": verdict, "gate_reason": reason}
            )
            if promoted:  # the alias moves last (it refuses a model that cannot be loaded)
                tracking.assign_champion(settings, version.version)
    except Exception as exc:
        try:
            tracking.set_version_tags(
                settings,
                version.version,
                {"gate": "failed", "gate_reason": clipped(f"the gate failed: {exc}", 1000)},
            )
        except Exception:  # the gate's own error is the one to report
            log.exception("could not tag version %s gate=failed", version.version)
        raise
    return GateDecision(promoted, reason, scores, champion_version, champion)


def apply_gate(
    version: tracking.ModelVersionInfo,
    candidate: CandidateEvaluation,
    prepared: PreparedData,
    settings: Settings,
) -> GateDecision:
    """The gate for a training run (:func:`decide_gate`), recorded in its MLflow run too."""
    decision = decide_gate(version, candidate.scores, prepared, settings)
    tracking.log_json(decision.to_dict(), "gate.json")
    tracking.set_tags(
        {"gate": "promoted" if decision.promoted else "rejected", "model_version": version.version}
    )
    if decision.champion is not None:
        tracking.log_metrics(
            {
                "champion_eval_macro_f1": decision.champion.eval_macro_f1,
                "champion_shift_macro_f1": decision.champion.shift_macro_f1,
                "champion_shift_score": decision.champion.shift_score,
            }
        )
    return decision


def example_features(prepared: PreparedData, rows: int = 5) -> pd.DataFrame:
    return prepared.incidents.iloc[:rows][list(KPI_FEATURES)]


def summary(
    run_id: str,
    version: tracking.ModelVersionInfo,
    candidate: CandidateEvaluation,
    decision: GateDecision,
    result: TrainingResult,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "model_version": version.version,
        "eval_macro_f1": round(candidate.evaluation.macro_f1, 4),
        "eval_accuracy": round(candidate.evaluation.accuracy, 4),
        "eval_balanced_macro_f1": round(candidate.evaluation.balanced_macro_f1, 4),
        "shift_macro_f1": round(candidate.scores.shift_macro_f1, 4),
        "shift_uncalibrated_macro_f1": round(candidate.scores.shift_uncalibrated_macro_f1, 4),
        "shift_skewed_macro_f1": round(candidate.scores.shift_skewed_macro_f1, 4),
        "shift_swapped_macro_f1": round(candidate.scores.shift_swapped_macro_f1, 4),
        "shift_noisy_macro_f1": round(candidate.scores.shift_noisy_macro_f1, 4),
        "shift_score": round(candidate.scores.shift_score, 4),
        "promoted": decision.promoted,
        "gate_reason": decision.reason,
        "epochs": len(result.history),
        "train_seconds": round(result.seconds, 1),
    }


def as_json(payload: Any) -> str:
    return json.dumps(
        payload, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)
    )
