"""Preprocessing: raw KPI features → network inputs, fitted on training rows only.

Every value goes through a signed log (magnitudes span 1e-3…1e15), then is normalised relative
to a *deployment*: robust per-feature centre and scale measured on a reference window of that
deployment's incidents. The training deployment's reference is the training data, weighted so
each fault class counts equally (other deployments are not mixed like the training file).
Missing values become the deployment's centre (0 after normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from systemhealer.config import PreprocessingSettings
from systemhealer.data import KPI_FEATURES

TRAINING_DEPLOYMENT = "training"


def signed_log(values: np.ndarray) -> np.ndarray:
    """sign(x)·log(1+|x|): keeps sign and order, turns rescaling into a shift for large |x|."""
    return np.sign(values) * np.log1p(np.abs(values))


def _weighted_quantiles(
    values: np.ndarray, weights: np.ndarray, qs: tuple[float, ...]
) -> np.ndarray:
    """Per-column weighted quantiles of a 2-D array with NaN (ignored)."""
    out = np.full((len(qs), values.shape[1]), np.nan)
    for j in range(values.shape[1]):
        column = values[:, j]
        seen = ~np.isnan(column)
        if not seen.any():
            continue
        order = np.argsort(column[seen])
        sorted_values = column[seen][order]
        cumulative = np.cumsum(weights[seen][order])
        cumulative /= cumulative[-1]
        for k, q in enumerate(qs):
            out[k, j] = sorted_values[min(np.searchsorted(cumulative, q), len(sorted_values) - 1)]
    return out


@dataclass(frozen=True)
class DeploymentStats:
    """Robust per-feature statistics of one deployment, in the signed-log space."""

    name: str
    columns: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    rows: int
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def measure(
        cls,
        name: str,
        features: pd.DataFrame,
        columns: tuple[str, ...],
        weights: np.ndarray | None = None,
    ) -> DeploymentStats:
        """Measure a deployment from its incidents (labels are never looked at)."""
        logged = signed_log(features.reindex(columns=list(columns)).to_numpy(dtype=np.float64))
        weights = np.ones(len(logged)) if weights is None else np.asarray(weights, dtype=np.float64)
        q25, q50, q75 = _weighted_quantiles(logged, weights, (0.25, 0.5, 0.75))
        scale = (q75 - q25) / 1.349
        # A column that is constant in the reference: scale by 1 so it only shifts.
        scale = np.where(np.isfinite(scale) & (scale > 1e-6), scale, 1.0)
        center = np.where(np.isfinite(q50), q50, 0.0)
        return cls(name=name, columns=columns, center=center, scale=scale, rows=len(features))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "columns": list(self.columns),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "rows": self.rows,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> DeploymentStats:
        return cls(
            name=payload["name"],
            columns=tuple(payload["columns"]),
            center=np.asarray(payload["center"], dtype=np.float64),
            scale=np.asarray(payload["scale"], dtype=np.float64),
            rows=int(payload["rows"]),
            created_at=payload.get("created_at", ""),
        )


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Row weights under which every fault class carries the same total weight."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return (1.0 / counts)[inverse] * len(labels) / len(classes)


@dataclass(frozen=True)
class KpiPreprocessor:
    """The fitted transform from raw KPI features to network inputs."""

    columns: tuple[str, ...]
    training: DeploymentStats
    clip: float

    @classmethod
    def fit(
        cls, features: pd.DataFrame, labels: np.ndarray, settings: PreprocessingSettings,
        config_like: tuple[str, ...] = (),
    ) -> KpiPreprocessor:  # fmt: skip
        """Choose the informative columns and measure the training deployment."""
        numeric = features.reindex(columns=list(KPI_FEATURES))
        varying = numeric.nunique(dropna=True) > 1
        dropped = set(config_like) if settings.drop_config_like else set()
        columns = tuple(c for c in KPI_FEATURES if varying[c] and c not in dropped)
        weights = class_balanced_weights(labels) if settings.balance_reference else None
        training = DeploymentStats.measure(TRAINING_DEPLOYMENT, numeric, columns, weights)
        return cls(columns=columns, training=training, clip=settings.clip)

    def measure_deployment(self, name: str, features: pd.DataFrame) -> DeploymentStats:
        """Statistics of another deployment from a reference window of its incidents."""
        return DeploymentStats.measure(name, features, self.columns)

    def transform(
        self, features: pd.DataFrame, deployment: DeploymentStats | None = None
    ) -> np.ndarray:
        """Raw features → float32 inputs, normalised relative to ``deployment``."""
        stats = deployment or self.training
        if stats.columns != self.columns:
            raise ValueError(f"deployment '{stats.name}' was measured for other columns")
        logged = signed_log(features.reindex(columns=list(self.columns)).to_numpy(dtype=np.float64))
        normalised = (logged - stats.center) / stats.scale
        normalised = np.clip(np.nan_to_num(normalised, nan=0.0), -self.clip, self.clip)
        return normalised.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "training": self.training.to_dict(),
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> KpiPreprocessor:
        return cls(
            columns=tuple(payload["columns"]),
            training=DeploymentStats.from_dict(payload["training"]),
            clip=float(payload["clip"]),
        )
