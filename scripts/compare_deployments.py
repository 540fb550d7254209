"""How differently do a deployment's KPIs relate to each other than the training incidents'?

Calibration (docs/calibration.md) undoes per-KPI changes: units, sizes, the class mix. It
cannot undo a change in how KPIs go together. This measures that, without labels on the other
deployment: for each of the model's columns, gradient-boosted trees learn to predict its
quantile position from the other columns' positions on training incidents; the R² is then
measured on held-out training incidents, on the other deployment (positions relative to its own
window), and on held-out incidents with a share of their values swapped within their fault class
(what ``training.swap_share`` does while training). Equal R² means the same joint structure.

    .venv/bin/python scripts/compare_deployments.py data/fault_kpi_train.csv.gz \
        data/fault_kpi_unlabelled_2000.csv.gz
"""

from __future__ import annotations

import argparse

import numpy as np
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
    return DeploymentStats.measure("own", values, columns).positions(values)


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
    fit_positions = pre.training.positions(pre.raw_values(features.iloc[fit]))
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
    other_values = pre.raw_values(read_incidents(args.other))

    def held_r2(values: np.ndarray) -> float:
        stats = DeploymentStats.measure("held-out", values, columns, held_weights)
        return mean_r2(models, stats.positions(values), held_weights)

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


if __name__ == "__main__":
    main()
