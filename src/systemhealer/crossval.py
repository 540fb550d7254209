"""Duplicate-aware cross-validation of the configured model on a labelled file.

Folds are made of whole groups of (near-)identical incidents, so no incident is scored by a
model that saw a copy of it. Each fold reports in-distribution macro-F1 and the macro-F1 on
simulated deployments (calibrated on the other half of each shifted copy, and uncalibrated).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from systemhealer import deployments
from systemhealer.config import Settings
from systemhealer.data import KPI_FEATURES, LABEL, Split
from systemhealer.diagnoser import FaultDiagnoser
from systemhealer.errors import TrainingError
from systemhealer.evaluation import balanced_macro_f1, macro_f1
from systemhealer.features import DeploymentStats, KpiPreprocessor
from systemhealer.shift import SimulatedScores, shift_score, simulate_deployments
from systemhealer.training import (
    PreparedData,
    distinct_incidents,
    grouped_split_of,
    train_ensemble,
)


@dataclass(frozen=True)
class FoldScores:
    """One fold's scores."""

    fold: int
    rows: int
    eval_macro_f1: float
    eval_balanced_macro_f1: float
    shift_macro_f1: float
    shift_uncalibrated_macro_f1: float
    shift_skewed_macro_f1: float
    shift_swapped_macro_f1: float
    shift_noisy_macro_f1: float
    train_seconds: float

    @property
    def shift_score(self) -> float:
        """The mean of the four calibrated simulations, as the gate compares them."""
        return shift_score(
            self.shift_macro_f1,
            self.shift_skewed_macro_f1,
            self.shift_swapped_macro_f1,
            self.shift_noisy_macro_f1,
        )


def group_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Row positions of each fold; whole groups, stratified by each group's first label."""
    _, first_row, inverse = np.unique(groups, return_index=True, return_inverse=True)
    counts = np.bincount(labels[first_row])
    short = [(c, int(n)) for c, n in enumerate(counts) if 0 < n < folds]
    if short:
        found = ", ".join(f"class {c} has {n}" for c, n in short)
        raise TrainingError(
            f"{folds} folds need {folds} distinct incidents of each fault class, but {found} "
            "(copies and near-copies count once); use fewer folds"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    positions = np.arange(len(labels))
    return [
        positions[np.isin(inverse, test)]
        for _, test in splitter.split(first_row, labels[first_row])
    ]


def fit_fold(
    unique: pd.DataFrame,
    labels: np.ndarray,
    groups: np.ndarray,
    rest: np.ndarray,
    held_out: np.ndarray,
    settings: Settings,
) -> FaultDiagnoser:
    """The configured model trained on rows ``rest`` of the distinct incidents (``held_out``
    only draws the training curves when there is no validation part)."""
    features = unique[list(KPI_FEATURES)]
    train, validation = grouped_split_of(rest, labels, groups, settings)
    monitored = validation if len(validation) else held_out  # curves only, without a part
    split = Split(train=train, validation=validation, evaluation=held_out)
    preprocessor = KpiPreprocessor.fit(
        features.iloc[train], labels[train], settings.preprocessing,
        settings.data.config_like_columns,
    )  # fmt: skip
    prepared = PreparedData(unique, labels, split, preprocessor, 0, {})
    result = train_ensemble(
        prepared.training_inputs(settings.training), labels[train],
        prepared.inputs(monitored), labels[monitored], settings.training, show_progress=False,
        targets=prepared.training_targets(settings.training),
    )  # fmt: skip
    diagnoser = FaultDiagnoser(preprocessor, result.network)  # type: ignore[arg-type]
    diagnoser.measure_class_response(features.iloc[train], labels[train])
    return diagnoser


def cross_validate(
    incidents: pd.DataFrame,
    settings: Settings,
    folds: int = 5,
    on_fold: Callable[[FoldScores], None] | None = None,
) -> list[FoldScores]:
    """Train and score the configured model once per fold."""
    unique, groups = distinct_incidents(incidents, settings)
    labels = unique[LABEL].to_numpy().astype(np.int64)
    features = unique[list(KPI_FEATURES)]
    results = []
    started = time.perf_counter()
    for fold, (held_out, diagnoser) in enumerate(fold_models(unique, groups, settings, folds)):
        predicted = diagnoser.diagnose(features.iloc[held_out])["predicted_label"].to_numpy()
        simulated = simulate_fold(
            diagnoser, features.iloc[held_out], labels[held_out], settings, fold
        )
        scores = FoldScores(
            fold, len(held_out), macro_f1(labels[held_out], predicted),
            balanced_macro_f1(labels[held_out], predicted), simulated.calibrated,
            simulated.uncalibrated, simulated.skewed, simulated.swapped, simulated.noisy,
            time.perf_counter() - started,
        )  # fmt: skip
        results.append(scores)
        if on_fold:
            on_fold(scores)
        started = time.perf_counter()
    return results


def simulate_fold(
    diagnoser: FaultDiagnoser,
    features: pd.DataFrame,
    labels: np.ndarray,
    settings: Settings,
    fold: int,
) -> SimulatedScores:
    """The four shift simulations of one fold's held-out rows, as ``crossval`` runs them."""

    def calibrate(window: pd.DataFrame) -> DeploymentStats:
        return deployments.measure(settings, diagnoser, "simulated", window)

    return simulate_deployments(
        diagnoser, features, labels, settings.data.config_like_columns,
        settings.evaluation.shift_copies, settings.training.seed + fold,
        settings.evaluation.shift_swap_share, calibrate, settings.evaluation.shift_cell_noise,
    )  # fmt: skip


def fold_models(
    unique: pd.DataFrame,
    groups: np.ndarray,
    settings: Settings,
    folds: int,
    never_train: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, FaultDiagnoser]]:
    """Per fold: the held-out rows of the distinct incidents, and the model trained on the rest
    (without the rows flagged in ``never_train``, which are still held out in their fold)."""
    labels = unique[LABEL].to_numpy().astype(np.int64)
    for held_out in group_folds(labels, groups, folds, settings.training.seed):
        rest = np.setdiff1d(np.arange(len(labels)), held_out)
        if never_train is not None:
            rest = rest[~never_train[rest]]
        yield held_out, fit_fold(unique, labels, groups, rest, held_out, settings)


def summary_table(results: list[FoldScores]) -> str:
    """Markdown table of the folds with their mean and standard deviation."""
    lines = [
        "| fold | rows | eval macro-F1 | eval balanced macro-F1 | shift macro-F1 (calibrated) "
        "| shift uncalibrated | shift, skewed mix | shift, swapped values "
        "| shift, clean and noisy halves | shift score | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.fold} | {r.rows} | {r.eval_macro_f1:.4f} | {r.eval_balanced_macro_f1:.4f} | "
            f"{r.shift_macro_f1:.4f} | {r.shift_uncalibrated_macro_f1:.4f} | "
            f"{r.shift_skewed_macro_f1:.4f} | {r.shift_swapped_macro_f1:.4f} | "
            f"{r.shift_noisy_macro_f1:.4f} | {r.shift_score:.4f} | {r.train_seconds:.0f} |"
        )
    frame = pd.DataFrame([{**asdict(r), "shift_score": r.shift_score} for r in results])
    mean, std = frame.mean(numeric_only=True), frame.std(numeric_only=True)
    lines.append(
        f"| mean ± sd | | {mean.eval_macro_f1:.4f} ± {std.eval_macro_f1:.4f} | "
        f"{mean.eval_balanced_macro_f1:.4f} ± {std.eval_balanced_macro_f1:.4f} | "
        f"{mean.shift_macro_f1:.4f} ± {std.shift_macro_f1:.4f} | {mean.shift_uncalibrated_macro_f1:.4f} | "
        f"{mean.shift_skewed_macro_f1:.4f} ± {std.shift_skewed_macro_f1:.4f} | "
        f"{mean.shift_swapped_macro_f1:.4f} ± {std.shift_swapped_macro_f1:.4f} | "
        f"{mean.shift_noisy_macro_f1:.4f} ± {std.shift_noisy_macro_f1:.4f} | "
        f"{mean.shift_score:.4f} ± {std.shift_score:.4f} | |"
    )
    return "\n".join(lines)
