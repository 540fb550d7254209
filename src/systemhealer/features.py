"""Preprocessing: raw KPI features → network inputs, relative to a deployment.

Between deployments the same fault looks different: features differ in magnitude by factors of
10^2…10^6, configuration-like columns take other constants, and the class mix differs. So every
value is read *relative to its deployment*: a deployment is described by the per-feature
quantiles of a reference window of its own (unlabelled) incidents, and each value becomes its
position in that distribution — u = F_ref(x) — which no per-feature rescaling can change.
The network sees the normal score Φ⁻¹(u) and a piecewise-linear ("thermometer") encoding of u
(Gorishniy et al., 2022), which lets an MLP draw tree-like thresholds.

The training deployment's reference is the training part itself, weighted so that each fault
class counts equally (other deployments are not mixed like the training file). Missing values
give the network no evidence: their code is all zeros, the centre of every unit's range, so they
add nothing to the first layer (models trained before 2026-12 read them as the deployment's median,
u = 0.5). Constant and configuration-like columns are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtri

from systemhealer.config import FAULT_CLASSES, PreprocessingSettings
from systemhealer.data import KPI_FEATURES

TRAINING_DEPLOYMENT = "training"


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Row weights under which every fault class present carries the same total weight."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])


def _weighted_quantiles(column: np.ndarray, weights: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Weighted quantiles of one column at ``probs`` (NaN ignored; midpoint ECDF convention)."""
    seen = ~np.isnan(column)
    values, w = column[seen], weights[seen]
    if values.size == 0:
        return np.zeros_like(probs)
    order = np.argsort(values, kind="mergesort")
    values, w = values[order], w[order]
    cumulative = np.cumsum(w)
    positions = (cumulative - 0.5 * w) / cumulative[-1]
    return np.interp(probs, positions, values)


def _cdf(quantiles: np.ndarray, probs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Map values through the piecewise-linear CDFs given by ``quantiles`` at ``probs``.

    ``quantiles`` is (len(probs), m), one non-decreasing grid per column; ``values`` is (n, m).
    Ties (runs of equal quantiles: a point mass) get the middle of their probability span.
    One binary search per cell; the rest are lookups in the column's small grid tables, on
    contiguous column copies (most of the cost of the naive version was 2-D fancy indexing).
    """
    k, m = quantiles.shape
    out = np.empty(values.shape, dtype=np.float64)
    columns = np.ascontiguousarray(values.T)
    # Per grid index i (1 … k−1), the interval [q[i−1], q[i]]: its start probability and rise.
    start = np.concatenate([probs[:1], probs[:-1]])
    rise = np.concatenate([[0.0], np.diff(probs)])
    for j in range(m):
        grid, x = quantiles[:, j], columns[j]
        lo = np.searchsorted(grid, x, side="left")
        i = np.clip(lo, 1, k - 1)
        left = grid.take(i - 1)
        width = grid.take(i) - left
        with np.errstate(invalid="ignore"):
            t = np.where(width > 0, (x - left) / np.where(width > 0, width, 1.0), 0.5)
        u = start.take(i) + t * rise.take(i)
        u[lo == 0] = probs[0]
        u[lo == k] = probs[-1]
        # A value equal to a grid point: its run of equal quantiles ends at ``run_end``.
        tie = (lo < k) & (grid.take(np.minimum(lo, k - 1)) == x)
        if tie.any():
            first = lo[tie]
            last = np.searchsorted(grid, grid, side="right").take(first)
            u[tie] = 0.5 * (probs[np.maximum(first - 1, 0)] + probs[np.maximum(last - 1, 0)])
        out[:, j] = u
    return out


@dataclass(frozen=True)
class DeploymentStats:
    """Per-feature reference distribution of one deployment (a quantile grid per column)."""

    name: str
    columns: tuple[str, ...]
    probs: np.ndarray
    quantiles: np.ndarray  # (len(probs), len(columns)), non-decreasing per column
    rows: int
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # Estimated class mix of the deployment; when set, probabilities are corrected for it.
    class_mix: np.ndarray | None = None
    # The class mix the quantile grid was corrected for (see KpiPreprocessor.for_class_mix).
    reference_mix: np.ndarray | None = None

    @classmethod
    def measure(
        cls,
        name: str,
        features: pd.DataFrame | np.ndarray,
        columns: tuple[str, ...],
        weights: np.ndarray | None = None,
        n_quantiles: int = 256,
    ) -> DeploymentStats:
        """Measure a deployment from a reference window of its incidents (never their labels).

        ``features`` is a frame with the KPI columns or an array already restricted to ``columns``.
        """
        values = (
            features.reindex(columns=list(columns)).to_numpy(dtype=np.float64)
            if isinstance(features, pd.DataFrame)
            else np.asarray(features, dtype=np.float64)
        )
        w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
        probs = np.linspace(0.0, 1.0, n_quantiles)
        grid = np.stack(
            [_weighted_quantiles(values[:, j], w, probs) for j in range(values.shape[1])], axis=1
        )
        grid[:, np.isnan(values).all(axis=0)] = np.nan  # a column the window has no value in
        return cls(name=name, columns=tuple(columns), probs=probs, quantiles=grid, rows=len(values))

    def positions(self, values: np.ndarray, *, missing: float) -> np.ndarray:
        """u = F_ref(x) per cell. A missing value reads as ``missing`` (0.5: the deployment's
        median; NaN: it stays missing), and so does every value of a column the reference window
        had no value in (nothing to compare a value with). The network's inputs come from
        :meth:`KpiPreprocessor.positions`, which picks ``missing`` for the model."""
        unmeasured = np.isnan(self.quantiles).all(axis=0)
        grid = np.where(unmeasured, 0.0, self.quantiles) if unmeasured.any() else self.quantiles
        u = _cdf(grid, self.probs, values)
        u[np.isnan(values)] = missing
        u[:, unmeasured] = missing
        return u

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "columns": list(self.columns),
            "probs": self.probs.tolist(),
            "quantiles": self.quantiles.tolist(),
            "rows": self.rows,
            "created_at": self.created_at,
            "class_mix": None if self.class_mix is None else self.class_mix.tolist(),
            "reference_mix": None if self.reference_mix is None else self.reference_mix.tolist(),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> DeploymentStats:
        return cls(
            name=payload["name"],
            columns=tuple(payload["columns"]),
            probs=np.asarray(payload["probs"], dtype=np.float64),
            quantiles=np.asarray(payload["quantiles"], dtype=np.float64),
            rows=int(payload["rows"]),
            created_at=payload.get("created_at", ""),
            class_mix=None
            if payload.get("class_mix") is None
            else np.asarray(payload["class_mix"]),
            reference_mix=None
            if payload.get("reference_mix") is None
            else np.asarray(payload["reference_mix"]),
        )


def split_missing(u: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions with missing ones (NaN) set to 0.5, and where they were (None: nowhere), for
    codes that compute on every cell and then blank the missing ones."""
    missing = np.isnan(u)
    if not missing.any():
        return u, None
    return np.where(missing, 0.5, u), missing


def encode_positions(u: np.ndarray, ple_bins: int, reference_rows: int) -> np.ndarray:
    """Positions u ∈ [0, 1] → normal scores plus a ``ple_bins``-unit thermometer code of u.

    Row layout: the m normal scores, then for each column its ``ple_bins`` thermometer units.
    A missing position (NaN) is coded as all zeros: the score and every unit at the centre of
    their range, which no observed value gives (with 2 or more units), so it adds nothing to the
    network's first layer.
    """
    u, missing = split_missing(u)
    eps = max(0.5 / max(reference_rows, 1), 1e-3)
    scores = ndtri(np.clip(u, eps, 1 - eps)).astype(np.float32)
    if missing is not None:
        scores[missing] = 0.0
    if ple_bins <= 0:
        return scores
    n, m = u.shape
    thermometer = np.empty((n, m, ple_bins), dtype=np.float32)  # contiguous: fast in-place ops
    steps = np.arange(ple_bins, dtype=np.float32)
    np.subtract((u.astype(np.float32) * np.float32(ple_bins))[:, :, None], steps, out=thermometer)
    np.clip(thermometer, np.float32(0.0), np.float32(1.0), out=thermometer)
    thermometer -= np.float32(0.5)
    if missing is not None:
        thermometer[missing] = 0.0
    return np.concatenate([scores, thermometer.reshape(n, m * ple_bins)], axis=1)


@dataclass(frozen=True)
class KpiPreprocessor:
    """The fitted transform from raw KPI features to network inputs."""

    columns: tuple[str, ...]
    training: DeploymentStats
    ple_bins: int
    # F_c(q_k) per fault class c: where the training deployment's class-balanced quantile k of
    # each column falls in class c's own distribution, shape (classes, quantiles, columns); NaN
    # for a class absent from training. None for models trained before it existed.
    class_cdfs: np.ndarray | None = None
    # Share of each class's training incidents with a value in each column, (classes, columns):
    # F_c covers observed values only, so class c weighs in by π_c·observed[c, j].
    class_observed: np.ndarray | None = None
    # How a missing value reads: "no_evidence" (an all-zero code) or "median" (u = 0.5; models
    # trained before the setting existed, whose saved preprocessor does not name it).
    missing_values: str = "median"

    @property
    def n_inputs(self) -> int:
        return len(self.columns) * (self.ple_bins + 1) if self.ple_bins > 0 else len(self.columns)

    @classmethod
    def fit(
        cls,
        features: pd.DataFrame,
        labels: np.ndarray,
        settings: PreprocessingSettings,
        config_like: tuple[str, ...] = (),
    ) -> KpiPreprocessor:
        """Choose the columns and measure the (class-balanced) training deployment."""
        numeric = features.reindex(columns=list(KPI_FEATURES))
        varying = numeric.nunique(dropna=True) > 1
        dropped = set(config_like) if settings.drop_config_like else set()
        columns = tuple(c for c in KPI_FEATURES if varying[c] and c not in dropped)
        if settings.select_top_k and settings.select_top_k < len(columns):
            columns = select_informative_columns(numeric, labels, columns, settings.select_top_k)
        weights = class_balanced_weights(labels) if settings.balance_reference else None
        training = DeploymentStats.measure(TRAINING_DEPLOYMENT, numeric, columns, weights)
        return cls(
            columns=columns,
            training=training,
            ple_bins=settings.ple_bins,
            class_cdfs=class_cdfs(numeric.reindex(columns=list(columns)), labels, training),
            class_observed=class_observed(numeric.reindex(columns=list(columns)), labels),
            missing_values=settings.missing_values,
        )

    def raw_values(self, features: pd.DataFrame) -> np.ndarray:
        """The model's columns as a float64 array (NaN for missing)."""
        return features.reindex(columns=list(self.columns)).to_numpy(dtype=np.float64)

    def measure_deployment(self, name: str, features: pd.DataFrame) -> DeploymentStats:
        """Statistics of a deployment from a reference window of its incidents."""
        return DeploymentStats.measure(name, features, self.columns)

    def positions(self, values: np.ndarray, stats: DeploymentStats) -> np.ndarray:
        """Raw values (columns of the model) → positions u relative to ``stats``; a missing
        value is NaN, or 0.5 for a model that reads it as the median."""
        return stats.positions(
            values, missing=np.nan if self.missing_values == "no_evidence" else 0.5
        )

    def encode(self, values: np.ndarray, stats: DeploymentStats) -> np.ndarray:
        """Raw values (columns of the model) → network inputs relative to ``stats``."""
        return encode_positions(self.positions(values, stats), self.ple_bins, stats.rows)

    def transform(
        self, features: pd.DataFrame, deployment: DeploymentStats | None = None
    ) -> np.ndarray:
        """Raw features → float32 inputs, relative to ``deployment`` (default: training)."""
        return self.encode(self.raw_values(features), self.statistics(deployment))

    def for_class_mix(self, stats: DeploymentStats, mix: np.ndarray) -> DeploymentStats:
        """``stats`` read as a deployment whose incidents are mixed as ``mix``.

        The network learned positions in the class-balanced training distribution F_bal. A
        deployment mixed as ``mix`` has, in training units, the distribution F_mix = Σ mix_c F_c;
        its own quantile u is the training value F_mix⁻¹(u), whose position is F_bal(F_mix⁻¹(u)).
        Equivalently: its quantile grid is re-read at u_k = F_mix(q_k), the share of the mixed
        deployment below the balanced training quantile k. A balanced mix changes nothing.
        """
        if self.class_cdfs is None:
            raise ValueError("this model was trained without per-class statistics")
        present = ~np.isnan(self.class_cdfs[:, 0, 0])
        weights = np.where(present, np.asarray(mix, dtype=np.float64), 0.0)
        if not weights.sum() > 0:
            raise ValueError("a class mix needs weight on a class the model was trained on")
        weights = weights / weights.sum()
        observed = (
            np.ones((len(weights), len(self.columns)))
            if self.class_observed is None
            else self.class_observed
        )
        # Per column, class c weighs in by mix_c × its share of observed values there.
        per_column = weights[:, None] * observed
        total = per_column.sum(axis=0)
        per_column = np.where(total > 0, per_column / np.where(total > 0, total, 1.0), 1 / 6)
        shares = np.einsum("cj,ckj->kj", per_column, np.nan_to_num(self.class_cdfs))
        # A value on an untied grid point reads as the middle of its step, so F_c can dip by a
        # step's half at such points; the grid must stay non-decreasing.
        shares = np.maximum.accumulate(shares, axis=0)
        grid = np.stack(
            [
                np.interp(shares[:, j], stats.probs, stats.quantiles[:, j])
                for j in range(len(self.columns))
            ],
            axis=1,
        )
        return replace(stats, quantiles=grid, reference_mix=weights)

    def statistics(self, deployment: DeploymentStats | None = None) -> DeploymentStats:
        """The reference statistics to read values against (default: the training ones)."""
        stats = deployment or self.training
        if stats.columns != self.columns:
            raise ValueError(f"deployment '{stats.name}' was measured for other columns")
        return stats

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "training": self.training.to_dict(),
            "ple_bins": self.ple_bins,
            "class_cdfs": None
            if self.class_cdfs is None
            else [None if np.isnan(c[0, 0]) else np.round(c, 6).tolist() for c in self.class_cdfs],
            "class_observed": None
            if self.class_observed is None
            else np.round(self.class_observed, 6).tolist(),
            "missing_values": self.missing_values,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> KpiPreprocessor:
        training = DeploymentStats.from_dict(payload["training"])
        return cls(
            columns=tuple(payload["columns"]),
            training=training,
            ple_bins=int(payload["ple_bins"]),
            class_cdfs=_class_cdfs_from_json(payload.get("class_cdfs"), training.quantiles.shape),
            class_observed=None
            if payload.get("class_observed") is None
            else np.asarray(payload["class_observed"], dtype=np.float64),
            missing_values=_missing_values(payload.get("missing_values", "median")),
        )


def _missing_values(value: object) -> str:
    if value not in ("no_evidence", "median"):
        raise ValueError(f"unknown reading of missing values in a saved model: {value!r}")
    return str(value)


def class_cdfs(values: pd.DataFrame, labels: np.ndarray, reference: DeploymentStats) -> np.ndarray:
    """F_c(q_k): the share of fault class c's incidents below each quantile of ``reference``,
    shape (classes, quantiles, columns); NaN for a class without incidents."""
    out = np.full((len(FAULT_CLASSES), *reference.quantiles.shape), np.nan)
    for c in FAULT_CLASSES:
        rows = labels == c
        if rows.any():
            own = DeploymentStats.measure("class", values.loc[rows], reference.columns)
            # A column without values in class c: weighed out by class_observed anyway.
            out[c] = _cdf(np.nan_to_num(own.quantiles), own.probs, reference.quantiles)
    return out


def class_observed(values: pd.DataFrame, labels: np.ndarray) -> np.ndarray:
    """Share of each fault class's incidents with a value in each column (0 for a class
    without incidents)."""
    seen = values.notna().to_numpy()
    out = np.zeros((len(FAULT_CLASSES), seen.shape[1]))
    for c in FAULT_CLASSES:
        if (labels == c).any():
            out[c] = seen[labels == c].mean(axis=0)
    return out


def _class_cdfs_from_json(
    payload: list[list[list[float]] | None] | None, shape: tuple[int, ...]
) -> np.ndarray | None:
    if payload is None:
        return None
    return np.stack([np.full(shape, np.nan) if c is None else np.asarray(c) for c in payload])


def select_informative_columns(
    features: pd.DataFrame, labels: np.ndarray, columns: tuple[str, ...], k: int, seed: int = 0
) -> tuple[str, ...]:
    """The ``k`` columns a random forest finds most informative, measured on class-balanced
    quantile positions (so the choice does not depend on units), in contract order."""
    from sklearn.ensemble import RandomForestClassifier

    stats = DeploymentStats.measure("selection", features, columns, class_balanced_weights(labels))
    # Missing values at the median: the forest needs a number (the choice predates no_evidence).
    positions = stats.positions(
        features.reindex(columns=list(columns)).to_numpy(dtype=np.float64), missing=0.5
    )
    forest = RandomForestClassifier(
        n_estimators=200, n_jobs=1, random_state=seed, class_weight="balanced", min_samples_leaf=2
    ).fit(positions, labels)
    chosen = set(np.argsort(-forest.feature_importances_)[:k].tolist())
    return tuple(c for i, c in enumerate(columns) if i in chosen)
