"""How much per-cell noise costs the configured model, with its halves split four ways.

For each fold of ``systemhealer crossval`` (the same folds and models), 3 balanced shifted copies
of the held-out fold (as in the shift evaluation); then every value of a random half of each
copy's incidents is multiplied by its own factor from U(1, 1 + ``--noise``), and the copy is
scored with halves calibrating each other:

- ``clean``: no noise, random halves;
- ``random halves``: half of the incidents noisy, halves drawn at random;
- ``clean <-> noisy``: the clean half calibrates the noisy half and the reverse;
- ``all noisy``: every incident noisy, random halves.

Compare training with and without cell noise (docs/calibration.md, step 4):

    .venv/bin/python scripts/cell_noise_study.py data/fault_kpi_train.csv.gz
    SYSTEMHEALER_TRAINING__CELL_NOISE=0 .venv/bin/python scripts/cell_noise_study.py \
        data/fault_kpi_train.csv.gz
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from systemhealer import deployments
from systemhealer.config import Settings, load_settings
from systemhealer.crossval import fold_models
from systemhealer.data import KPI_FEATURES, LABEL, read_incidents
from systemhealer.diagnoser import FaultDiagnoser
from systemhealer.evaluation import macro_f1
from systemhealer.shift import cell_noise, shifted_copies
from systemhealer.training import distinct_incidents


def score(
    settings: Settings,
    diagnoser: FaultDiagnoser,
    frame: pd.DataFrame,
    truth: np.ndarray,
    halves: list[np.ndarray],
) -> float:
    """Macro-F1 with each half calibrating the scoring of the other."""
    predicted = np.empty(len(truth), dtype=np.int64)
    for reference, scored in (halves, halves[::-1]):
        window = frame.iloc[reference].reset_index(drop=True)
        stats = deployments.measure(settings, diagnoser, "simulated", window)
        predicted[scored] = diagnoser.diagnose(frame.iloc[scored], stats)["predicted_label"]
    return macro_f1(truth, predicted)


def with_noise(
    frame: pd.DataFrame, rows: np.ndarray, size: float, rng: np.random.Generator
) -> pd.DataFrame:
    values = frame.to_numpy(float)
    values[rows] = cell_noise(values[rows], 1.0, size, rng, direction="up")
    return pd.DataFrame(values, columns=frame.columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("training", help="labelled incidents")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.1, help="factors from U(1, 1 + noise)")
    args = parser.parse_args()
    settings = load_settings()
    unique, groups = distinct_incidents(read_incidents(args.training), settings)
    labels = unique[LABEL].to_numpy().astype(np.int64)
    features = unique[list(KPI_FEATURES)]
    config_like = settings.data.config_like_columns
    scores: dict[str, list[float]] = {}

    for fold, (held_out, diagnoser) in enumerate(fold_models(unique, groups, settings, args.folds)):
        rng = np.random.default_rng(100 + fold)
        held = features.iloc[held_out]
        columns = tuple(c for c in held.columns if c not in config_like)

        copies = shifted_copies(
            held, labels[held_out], columns, config_like, 3, settings.training.seed + fold
        )
        for frame, truth in copies:
            n = len(truth)
            order = rng.permutation(n)
            clean_half, noisy_half = order[: n // 2], order[n // 2 :]
            half_noisy = with_noise(frame, noisy_half, args.noise, rng)
            random_halves = np.array_split(rng.permutation(n), 2)
            all_noisy = with_noise(frame, np.arange(n), args.noise, rng)
            halves = [clean_half, noisy_half]
            results = {
                "clean": score(settings, diagnoser, frame, truth, halves),
                "random halves": score(settings, diagnoser, half_noisy, truth, random_halves),
                "clean <-> noisy": score(settings, diagnoser, half_noisy, truth, halves),
                "all noisy": score(settings, diagnoser, all_noisy, truth, halves),
            }
            for name, value in results.items():
                scores.setdefault(name, []).append(value)
        print(f"fold {fold}: " + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in scores.items()))

    print("| halves | macro-F1 |\n|---|---:|")
    for name, values in scores.items():
        print(f"| {name} | {np.mean(values):.4f} ± {np.std(values):.4f} |")


if __name__ == "__main__":
    main()
