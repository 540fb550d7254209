"""Out-of-fold macro-F1 of the configured model, per public copy the training rows came from.

The shipped training file was recovered from three public copies of one competition's data
(`data/fault_kpi_train_provenance.csv.gz` says which copy each row came from). One of
them holds the support vectors of a published SVC: incidents near a class boundary, the hard
ones. Many of those incidents are also in another copy; the others are not. Each distinct
incident (as ``crossval`` groups them) is counted in every copy one of its rows came from, and
``--hard PREFIX`` also scores the incidents found *only* in the copy whose name starts with
PREFIX apart from the rest, and runs the four shift simulations of every fold on the held-out
incidents without them, beside the same simulations on all held-out incidents. Same folds and
models as ``systemhealer crossval``; ``--train-without-hard`` trains them without those.

    .venv/bin/python scripts/score_by_source.py data/fault_kpi_train.csv.gz \
        data/fault_kpi_train_provenance.csv.gz --hard fresh131
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from systemhealer.config import load_settings
from systemhealer.crossval import fold_models, simulate_fold
from systemhealer.data import KPI_FEATURES, LABEL, SAMPLE_ID, read_incidents, row_groups
from systemhealer.evaluation import EvaluationReport
from systemhealer.shift import SimulatedScores
from systemhealer.training import distinct_incidents


def copies_of(
    raw: pd.DataFrame,
    unique: pd.DataFrame,
    groups: np.ndarray,
    sources: pd.Series,
    ignore: tuple[str, ...],
) -> list[frozenset[str]]:
    """Per distinct incident (near-copy group and label, as ``distinct_incidents`` keeps them
    apart): the sources of all raw rows that are copies of it."""
    found = pd.DataFrame({
        "group": row_groups(raw[list(KPI_FEATURES)], ignore=ignore),
        "label": raw[LABEL].to_numpy(),
        "source": raw[SAMPLE_ID].map(sources).fillna("unknown").to_numpy(),
    })  # fmt: skip
    by_incident = found.groupby(["group", "label"])["source"].agg(frozenset)
    return [by_incident[(g, y)] for g, y in zip(groups, unique[LABEL], strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("train", help="labelled training file")
    parser.add_argument("provenance", help="CSV with sample_id and source columns")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--hard", help="name prefix of the copy of hard incidents")
    parser.add_argument(
        "--train-without-hard",
        action="store_true",
        help="never train on the incidents found only in the --hard copy (still scored)",
    )
    args = parser.parse_args()

    settings = load_settings()
    raw = read_incidents(args.train)
    unique, groups = distinct_incidents(raw, settings)
    sources = pd.read_csv(args.provenance).set_index(SAMPLE_ID)["source"]
    copies = copies_of(raw, unique, groups, sources, settings.data.config_like_columns)
    only_hard = np.array(
        [bool(args.hard) and all(s.startswith(args.hard) for s in c) for c in copies]
    )
    labels = unique[LABEL].to_numpy().astype(np.int64)
    features = unique[list(KPI_FEATURES)]
    predicted = np.empty(len(labels), dtype=np.int64)
    simulated: dict[str, list[SimulatedScores]] = {"all": [], f"not only in {args.hard}": []}
    never_train = only_hard if args.train_without_hard else None
    models = fold_models(unique, groups, settings, args.folds, never_train)
    for fold, (held_out, diagnoser) in enumerate(models):
        predicted[held_out] = diagnoser.diagnose(features.iloc[held_out])["predicted_label"]
        if args.hard:
            for name, rows in zip(
                simulated, (held_out, held_out[~only_hard[held_out]]), strict=True
            ):
                simulated[name].append(
                    simulate_fold(diagnoser, features.iloc[rows], labels[rows], settings, fold)
                )

    parts = {f"in {s}": np.array([s in c for c in copies]) for s in sorted(set().union(*copies))}
    if args.hard:
        parts[f"only in {args.hard}…"] = only_hard
        parts[f"not only in {args.hard}…"] = ~only_hard
    parts["all"] = np.ones(len(labels), dtype=bool)
    print(
        "| incidents | distinct | class 0 | class 1 | class 2 | macro-F1 | class-balanced macro-F1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rows in parts.items():
        if not rows.any():
            print(f"| {name} | 0 | | | | | |")
            continue
        report = EvaluationReport.score(labels[rows], predicted[rows])
        counts = np.bincount(labels[rows], minlength=3)
        print(
            f"| {name} | {rows.sum()} | {counts[0]} | {counts[1]} | {counts[2]} "
            f"| {report.macro_f1:.4f} | {report.balanced_macro_f1:.4f} |"
        )
    if args.hard:
        print(
            "\n| held-out incidents | shift (calibrated) | skewed mix | swapped values "
            "| clean and noisy halves | shift score |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for name, scores in simulated.items():
            mean = {
                k: float(np.mean([getattr(s, k) for s in scores]))
                for k in ("calibrated", "skewed", "swapped", "noisy")
            }
            print(
                f"| {name} | {mean['calibrated']:.4f} | {mean['skewed']:.4f} "
                f"| {mean['swapped']:.4f} | {mean['noisy']:.4f} "
                f"| {np.mean(list(mean.values())):.4f} |"
            )


if __name__ == "__main__":
    main()
