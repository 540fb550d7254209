"""Model selection: train candidate configurations, compare them on the same held-out rows
(in-distribution and on simulated deployments), register the best behind the gate.

A gradient-boosted-trees baseline (scikit-learn) is scored the same way and logged beside the
MLPs, so the MLflow comparison shows where the MLP stands. It is never registered: the
diagnosing model stays the MLP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from systemhealer.config import FAULT_CLASSES, Settings
from systemhealer.diagnoser import diagnoses_frame, read_at_class_mix
from systemhealer.errors import ConfigError, TrainingError
from systemhealer.features import DeploymentStats, KpiPreprocessor
from systemhealer.label_shift import class_response, correct_probabilities

GBT_BASELINE = "gbt-baseline"


@dataclass(frozen=True)
class Candidate:
    """One configuration to try: a name and dotted setting overrides."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


DEFAULT_CANDIDATES: tuple[Candidate, ...] = (
    Candidate("mlp-default"),
    Candidate("mlp-no-distillation", {"training.distill_weight": 0.0}),
    Candidate("mlp-no-swap-noise", {"training.swap_share": 0.0}),
    Candidate("mlp-no-cell-noise", {"training.cell_noise": 0.0}),
    Candidate("mlp-early-stopping", {"training.validation_fraction": 0.15}),
    Candidate("mlp-pseudo-deployments", {"training.pseudo_deployments": True}),
    Candidate("mlp-all-features", {"preprocessing.select_top_k": None}),
    Candidate("mlp-normal-scores-only", {"preprocessing.ple_bins": 0}),
    Candidate("mlp-missing-as-median", {"preprocessing.missing_values": "median"}),
    Candidate("mlp-wide", {"training.hidden_sizes": [512, 512]}),
    Candidate("mlp-ensemble-of-3", {"training.ensemble_size": 3}),
    Candidate("mlp-top30-features", {"preprocessing.select_top_k": 30}),
    Candidate(GBT_BASELINE),
)


def choose_candidates(names: list[str] | None) -> list[Candidate]:
    """The candidates named (all of them for None), in the sweep's order; unknown names, or a
    list without an MLP (the baseline is never registered), are a ConfigError naming them."""
    known = [c.name for c in DEFAULT_CANDIDATES]
    unknown = [name for name in names or [] if name not in known]
    if unknown:
        raise ConfigError(
            f"unknown sweep candidate(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    chosen = [c for c in DEFAULT_CANDIDATES if names is None or c.name in names]
    if all(c.name == GBT_BASELINE for c in chosen):
        raise ConfigError(
            f"the sweep needs at least one MLP candidate ({GBT_BASELINE} is never registered)"
        )
    return chosen


def with_overrides(settings: Settings, overrides: dict[str, Any]) -> Settings:
    """A copy of ``settings`` with dotted overrides (``{"training.dropout": 0.3}``), validated."""
    payload = settings.model_dump()
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if (
            section not in payload
            or not isinstance(payload[section], dict)
            or key not in payload[section]
        ):
            raise KeyError(f"unknown setting {dotted!r}")
        payload[section][key] = value
    return type(settings).model_validate(payload)


class TreeDiagnoser:
    """The gradient-boosted-trees baseline with the diagnoser's interface (same preprocessing:
    deployment-relative quantile positions, missing values at the median), so it is scored
    exactly like the MLP."""

    def __init__(self, preprocessor: KpiPreprocessor, seed: int) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.preprocessor = preprocessor
        self.class_response: np.ndarray | None = None
        self.model = HistGradientBoostingClassifier(
            max_iter=300,
            learning_rate=0.08,
            class_weight="balanced",
            random_state=seed,
            early_stopping=True,
        )

    def positions(
        self, features: pd.DataFrame, deployment: DeploymentStats | None = None
    ) -> np.ndarray:
        stats = deployment or self.preprocessor.training
        return stats.positions(self.preprocessor.raw_values(features), missing=0.5)

    def fit(self, features: pd.DataFrame, labels: np.ndarray) -> TreeDiagnoser:
        self.model.fit(self.positions(features), labels)
        self.class_response = class_response(self.probabilities(features), labels)
        return self

    def calibrate(self, name: str, reference: pd.DataFrame) -> DeploymentStats:
        return read_at_class_mix(self, name, reference)

    def probabilities(
        self, features: pd.DataFrame, deployment: DeploymentStats | None = None
    ) -> np.ndarray:
        known = self.model.predict_proba(self.positions(features, deployment))
        full = np.zeros((len(features), len(FAULT_CLASSES)))
        full[:, self.model.classes_.astype(int)] = known
        if deployment is not None and deployment.class_mix is not None:
            full = correct_probabilities(full, deployment.class_mix)
        return full

    def diagnose(
        self, features: pd.DataFrame, deployment: DeploymentStats | None = None
    ) -> pd.DataFrame:
        return diagnoses_frame(self.probabilities(features, deployment))


def best_candidate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The MLP run to register: the best shift score (in-distribution macro-F1 breaks ties).

    Deployments other than the training one are what the sweep chooses for; the in-distribution
    score, dominated by the training file's majority class, still has its say at the gate."""
    mlps = [r for r in results if r["candidate"] != GBT_BASELINE and "error" not in r]
    if not mlps:
        failed = "; ".join(f"{r['candidate']}: {r['error']}" for r in results if "error" in r)
        raise TrainingError(f"no MLP candidate finished ({failed})")
    return max(mlps, key=lambda r: (r["shift_score"], r["eval_macro_f1"]))


def results_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of the sweep (for the flow artifact and the closing note)."""
    lines = [
        "| candidate | eval macro-F1 | shift macro-F1 (calibrated) | shift uncalibrated "
        "| shift, skewed mix | shift, swapped values | shift, clean and noisy halves "
        "| shift score | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['candidate']} | failed: {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['candidate']} | {r['eval_macro_f1']:.4f} | {r['shift_macro_f1']:.4f} | "
            f"{r['shift_uncalibrated_macro_f1']:.4f} | {r['shift_skewed_macro_f1']:.4f} | "
            f"{r['shift_swapped_macro_f1']:.4f} | {r['shift_noisy_macro_f1']:.4f} | "
            f"{r['shift_score']:.4f} | "
            f"{r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)
