"""Out-of-fold macro-F1 of the configured model, per source of the training rows.

The shipped training file was recovered from three public copies of one competition's data
(`../shared/data/fault_kpi_train_provenance.csv` says which). One of them holds the support
vectors of a published SVC: the incidents near a class boundary, i.e. the hard ones. Scoring
each source apart shows what the duplicate-aware cross-validation figures mean for a natural
sample of incidents. Same folds and models as ``systemhealer crossval``; with ``--without
PREFIX`` the three shift simulations are also run on each fold's held-out rows whose source
does not start with PREFIX, beside the same simulations on all held-out rows.

    .venv/bin/python scripts/score_by_source.py data/fault_kpi_train.csv.gz \
        ../shared/data/fault_kpi_train_provenance.csv --without fresh131
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from systemhealer import deployments
from systemhealer.config import load_settings
from systemhealer.crossval import fold_models
from systemhealer.data import KPI_FEATURES, LABEL, SAMPLE_ID, read_incidents
from systemhealer.evaluation import EvaluationReport
from systemhealer.features import DeploymentStats
from systemhealer.shift import SimulatedScores, simulate_deployments
from systemhealer.training import distinct_incidents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("train", help="labelled training file")
    parser.add_argument("provenance", help="CSV with sample_id and source columns")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--without", help="also simulate deployments without this source")
    args = parser.parse_args()

    settings = load_settings()
    unique, groups = distinct_incidents(read_incidents(args.train), settings)
    sources = pd.read_csv(args.provenance).set_index(SAMPLE_ID)["source"]
    source = unique[SAMPLE_ID].map(sources).fillna("unknown").to_numpy()
    labels = unique[LABEL].to_numpy().astype(np.int64)
    features = unique[list(KPI_FEATURES)]
    predicted = np.empty(len(labels), dtype=np.int64)
    simulated: dict[str, list[SimulatedScores]] = {"all": [], f"without {args.without}": []}
    for fold, (held_out, diagnoser) in enumerate(fold_models(unique, groups, settings, args.folds)):
        predicted[held_out] = diagnoser.diagnose(features.iloc[held_out])["predicted_label"]
        if not args.without:
            continue
        kept = held_out[~pd.Series(source[held_out]).str.startswith(args.without).to_numpy()]

        def calibrate(window: pd.DataFrame, model=diagnoser) -> DeploymentStats:
            return deployments.measure(settings, model, "simulated", window)

        for name, rows in zip(simulated, (held_out, kept), strict=True):
            scores = simulate_deployments(
                diagnoser, features.iloc[rows], labels[rows], settings.data.config_like_columns,
                settings.evaluation.shift_copies, settings.training.seed + fold,
                settings.evaluation.shift_swap_share, calibrate,
            )  # fmt: skip
            simulated[name].append(scores)

    print("| source | distinct incidents | class 0 | macro-F1 | class-balanced macro-F1 |")
    print("|---|---:|---:|---:|---:|")
    for name in [*sorted(set(source)), "all"]:
        rows = source == name if name != "all" else np.ones(len(source), dtype=bool)
        report = EvaluationReport.score(labels[rows], predicted[rows])
        print(
            f"| {name} | {rows.sum()} | {(labels[rows] == 0).mean():.0%} "
            f"| {report.macro_f1:.4f} | {report.balanced_macro_f1:.4f} |"
        )
    if args.without:
        print(
            "\n| held-out rows | shift (calibrated) | skewed mix | swapped values | shift score |"
        )
        print("|---|---:|---:|---:|---:|")
        for name, scores in simulated.items():
            mean = {
                k: np.mean([getattr(s, k) for s in scores])
                for k in ("calibrated", "skewed", "swapped")
            }
            score = np.mean(list(mean.values()))
            print(
                f"| {name} | {mean['calibrated']:.4f} | {mean['skewed']:.4f} "
                f"| {mean['swapped']:.4f} | {score:.4f} |"
            )


if __name__ == "__main__":
    main()
