"""How consistently the configured model diagnoses the shipped unlabelled deployment's noisy
copies: a check on a real other deployment that needs no labels.

Rows 1000-1999 of ``fault_kpi_unlabelled_2000.csv`` are copies of rows 0-999, in order, with
every value x turned into x + U(0, 0.1) · the KPI's mean (docs/calibration.md, *How another
deployment differs*). The script first measures that (each second-half row's nearest first-half
row in signed-log space, and the offsets as shares of the KPI means), then trains the configured
model on every distinct training incident and diagnoses both halves, calibrated three ways:

- ``ordered halves``: the first half calibrates the second and the reverse (a clean window
  reading noisy incidents, and a noisy window reading clean ones);
- ``random halves``: random halves calibrate each other (mean of 3 splits);
- ``whole file``: the file calibrates itself.

and reports how often an incident and its noisy copy get the same diagnosis. Agreement is not
accuracy (a model that always says "class 0" agrees perfectly): read it beside ``crossval``.

    .venv/bin/python scripts/noisy_copies_study.py data/fault_kpi_train.csv.gz \\
        data/fault_kpi_unlabelled_2000.csv.gz
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from systemhealer import deployments
from systemhealer.config import Settings, load_settings
from systemhealer.crossval import fit_fold
from systemhealer.data import KPI_FEATURES, LABEL, read_incidents
from systemhealer.diagnoser import FaultDiagnoser
from systemhealer.shift import kpi_means
from systemhealer.training import distinct_incidents


def signed_log(values: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.sign(values) * np.log1p(np.abs(values)))


def copy_pairs(values: np.ndarray) -> np.ndarray:
    """For each row of the second half, its nearest row of the first half."""
    half = len(values) // 2
    finder = NearestNeighbors(n_neighbors=1).fit(signed_log(values[:half]))
    _, nearest = finder.kneighbors(signed_log(values[half : 2 * half]))
    return nearest[:, 0]


def diagnoses(
    settings: Settings,
    diagnoser: FaultDiagnoser,
    features: pd.DataFrame,
    scored: np.ndarray,
    window: np.ndarray,
) -> np.ndarray:
    """Diagnoses of rows ``scored``, calibrated with rows ``window`` as the reference."""
    stats = deployments.measure(settings, diagnoser, "study", features.iloc[window])
    return diagnoser.diagnose(features.iloc[scored], stats)["predicted_label"].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("training", help="labelled incidents")
    parser.add_argument("unlabelled", help="the shipped unlabelled deployment")
    parser.add_argument("--splits", type=int, default=3, help="random splits to average")
    args = parser.parse_args()
    settings = load_settings()

    features = pd.read_csv(args.unlabelled).reindex(columns=list(KPI_FEATURES))
    values = features.to_numpy(np.float64)
    half = len(values) // 2
    pairs = copy_pairs(values)
    in_order = float(np.mean(pairs == np.arange(half)))
    with np.errstate(invalid="ignore", divide="ignore"):  # constant KPIs: mean 0
        offsets = (values[half : 2 * half] - values[pairs]) / kpi_means(values[:half])
    print(
        f"second-half rows whose nearest first-half row is the one {half} rows up: {in_order:.3f}"
    )
    print(
        "offset / KPI mean: quantiles 0, 1, 50, 99, 100 %:",
        np.round(np.nanquantile(offsets, [0, 0.01, 0.5, 0.99, 1]), 4).tolist(),
    )

    incidents, groups = distinct_incidents(read_incidents(args.training), settings)
    labels = incidents[LABEL].to_numpy().astype(np.int64)
    everything = np.arange(len(labels))
    diagnoser = fit_fold(incidents, labels, groups, everything, everything[:500], settings)

    first, second = np.arange(half), np.arange(half, 2 * half)
    ordered_first = diagnoses(settings, diagnoser, features, first, second)
    ordered_second = diagnoses(settings, diagnoser, features, second, first)
    results = {"ordered halves": float(np.mean(ordered_first[pairs] == ordered_second))}
    rng = np.random.default_rng(0)
    agreement = []
    for _ in range(args.splits):
        order = rng.permutation(2 * half)
        a, b = order[:half], order[half:]
        predicted = np.empty(2 * half, dtype=np.int64)
        predicted[a] = diagnoses(settings, diagnoser, features, a, b)
        predicted[b] = diagnoses(settings, diagnoser, features, b, a)
        agreement.append(np.mean(predicted[pairs] == predicted[half:]))
    results["random halves"] = float(np.mean(agreement))
    whole = np.arange(2 * half)
    predicted = diagnoses(settings, diagnoser, features, whole, whole)
    results["whole file"] = float(np.mean(predicted[pairs] == predicted[half:]))
    print("| calibration | incident and its noisy copy diagnosed alike |")
    print("|---|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:.3f} |")
    mix = np.bincount(predicted[:half], minlength=6)
    print("first half, whole file calibrating:", mix.tolist())


if __name__ == "__main__":
    main()
