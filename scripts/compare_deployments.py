"""How differently do a deployment's KPIs relate to each other than the training incidents'?

Calibration (docs/calibration.md) undoes per-KPI changes: units, sizes, the class mix. It
cannot undo a change in how KPIs go together. This measures that, without labels on the other
deployment: for each of the model's columns, gradient-boosted trees learn to predict its
quantile position from the other columns' positions on training incidents; the R² is then
measured on held-out training incidents, on the other deployment (positions relative to its own
window), and on held-out incidents with a share of their values swapped within their fault class
(what ``training.swap_share`` does while training). Equal R² means the same joint structure.
Then, KPI by KPI, how far each distribution moved (Kolmogorov-Smirnov distance against the
class-balanced training incidents, and the ratio of the medians): what calibration undoes.

    .venv/bin/python scripts/compare_deployments.py data/fault_kpi_train.csv.gz \
        data/fault_kpi_unlabelled_2000.csv.gz
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor

from systemhealer.config import Settings
from systemhealer.data import KPI_FEATURES, LABEL, read_incidents
from systemhealer.features import DeploymentStats, KpiPreprocessor, class_balanced_weights
from systemhealer.shift import swap_within_class
from systemhealer.training import distinct_incidents


def mean_r2(models: list, positions: np.ndarray, weights: np.ndarray | None = None) -> float:
    scores = []
    for j, model in enumerate(models):
        others = np.delete(positions, j, axis=1)
        scores.append(model.score(others, positions[:, j], sample_weight=weights))
    return float(np.mean(scores))


def own_positions(values: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
    """Positions relative to the rows' own window, as calibration would read them."""
    return DeploymentStats.measure("own", values, columns).positions(values, missing=0.5)


def weighted_ks(a: np.ndarray, weights: np.ndarray, b: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between weighted sample ``a`` and sample ``b`` (NaN dropped)."""
    keep = ~np.isnan(a)
    a, weights, b = a[keep], weights[keep], b[~np.isnan(b)]
    if not len(a) or not len(b):
        return float("nan")
    order = np.argsort(a)
    a, cdf_a = a[order], np.cumsum(weights[order]) / weights.sum()
    points = np.union1d(a, b)
    at_a = np.concatenate([[0.0], cdf_a])[np.searchsorted(a, points, side="right")]
    at_b = np.searchsorted(np.sort(b), points, side="right") / len(b)
    return float(np.abs(at_a - at_b).max())


def kpi_by_kpi(
    training: pd.DataFrame, labels: np.ndarray, other: pd.DataFrame, model_columns: set[str]
) -> pd.DataFrame:
    """Per KPI: KS distance (training class-balanced) and the ratio of the medians."""
    weights = class_balanced_weights(labels)
    rows = []
    for column in KPI_FEATURES:
        a, b = training[column].to_numpy(float), other[column].to_numpy(float)
        median_a, median_b = np.nanmedian(a), np.nanmedian(b)
        ratio = median_b / median_a if median_a else float("nan")
        rows.append((column, weighted_ks(a, weights, b), ratio, column in model_columns))
    return pd.DataFrame(rows, columns=["kpi", "ks", "median_ratio", "model"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("training", help="labelled incidents (the training deployment)")
    parser.add_argument("other", help="incidents of another deployment (labels ignored)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = Settings()
    rng = np.random.default_rng(args.seed)

    unique, _ = distinct_incidents(read_incidents(args.training), settings)
    labels = unique[LABEL].to_numpy().astype(np.int64)
    features = unique[list(KPI_FEATURES)]
    order = rng.permutation(len(unique))
    fit, held = order[: int(0.7 * len(order))], order[int(0.7 * len(order)) :]
    pre = KpiPreprocessor.fit(
        features.iloc[fit], labels[fit], settings.preprocessing, settings.data.config_like_columns
    )
    columns = pre.columns
    weights = class_balanced_weights(labels[fit])
    fit_positions = pre.training.positions(pre.raw_values(features.iloc[fit]), missing=0.5)
    models = [
        HistGradientBoostingRegressor(max_iter=60, random_state=args.seed).fit(
            np.delete(fit_positions, j, axis=1), fit_positions[:, j], sample_weight=weights
        )
        for j in range(len(columns))
    ]
    # Held-out incidents, weighted so each class counts alike (other deployments are near
    # balanced), each read relative to its own window like a calibrated deployment.
    held_values = pre.raw_values(features.iloc[held])
    held_labels = labels[held]
    held_weights = class_balanced_weights(held_labels)
    other = read_incidents(args.other)
    other_values = pre.raw_values(other)

    def held_r2(values: np.ndarray) -> float:
        stats = DeploymentStats.measure("held-out", values, columns, held_weights)
        return mean_r2(models, stats.positions(values, missing=0.5), held_weights)

    print(f"columns: {', '.join(columns)}")
    print("| incidents | rows | mean R² of a KPI from the others |")
    print("|---|---:|---:|")
    print(
        f"| training, held out (class-balanced) | {len(held_values)} | {held_r2(held_values):.3f} |"
    )
    for share in (0.1, 0.2, 0.3, 0.5):
        swapped = swap_within_class(held_values, held_labels, share, rng)
        print(
            f"| training, held out, {share:.0%} swapped within class | {len(held_values)} | "
            f"{held_r2(swapped):.3f} |"
        )
    print(
        f"| other deployment | {len(other_values)} | "
        f"{mean_r2(models, own_positions(other_values, columns)):.3f} |"
    )

    # KPI by KPI: how far each one's distribution moved (what calibration undoes).
    table = kpi_by_kpi(features, labels, other, set(columns))
    constant = set(settings.data.config_like_columns) | {
        c for c in KPI_FEATURES if features[c].nunique() <= 1
    }
    kinds = {
        "the model's columns": table[table.model],
        "other KPI columns": table[~table.model & ~table.kpi.isin(constant)],
        "configuration-like columns": table[table.kpi.isin(settings.data.config_like_columns)],
    }
    print(
        f"\n(constant in training, left out: {', '.join(sorted(constant - set(settings.data.config_like_columns)))})"
    )
    print(
        "| columns | count | KS distance: median | max | with KS > 0.9 "
        "| median ratio: min | max | moved over 100× |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, part in kinds.items():
        ratio = part.median_ratio.abs()
        far = ((ratio > 100) | (ratio < 0.01)).sum()
        print(
            f"| {name} | {len(part)} | {part.ks.median():.3f} | {part.ks.max():.3f} | "
            f"{(part.ks > 0.9).sum()} | {ratio.min():.3g} | {ratio.max():.3g} | {far} |"
        )
    print("\n| model column | KS distance | median ratio (other / training) |")
    print("|---|---:|---:|")
    for row in table[table.model].itertuples():
        print(f"| {row.kpi} | {row.ks:.3f} | {row.median_ratio:.3g} |")


if __name__ == "__main__":
    main()
