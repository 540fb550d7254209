"""How much per-cell noise costs the configured model, with its halves split four ways.

For each fold of ``systemhealer crossval`` (the same folds and models), the balanced shifted copies
of the held-out fold that the shift evaluation scores; in the noisy ones every value of the
second half of each copy's incidents is offset by its own U(0, ``--noise``) times the KPI's mean
(``shift.shifted_copies(noisy_half=...)``, the same incidents and shifts), and each copy is
scored with halves calibrating each other (``shift.shift_scores``):

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
from systemhealer.features import DeploymentStats
from systemhealer.shift import cell_noise, shift_scores, shifted_copies
from systemhealer.training import distinct_incidents


def fold_scores(
    settings: Settings,
    diagnoser: FaultDiagnoser,
    held: pd.DataFrame,
    truth: np.ndarray,
    seed: int,
    noise: float,
) -> dict[str, float]:
    """Calibrated macro-F1 of one fold's model on its copies, four ways."""
    config_like = settings.data.config_like_columns
    columns = tuple(c for c in held.columns if c not in config_like)
    shifts = settings.evaluation.shift_copies
    clean = shifted_copies(held, truth, columns, config_like, shifts, seed)
    half_noisy = shifted_copies(held, truth, columns, config_like, shifts, seed, noisy_half=noise)
    rng = np.random.default_rng([seed, 2])
    all_noisy = [
        (pd.DataFrame(cell_noise(f.to_numpy(float), 1.0, noise, rng, "up"), columns=f.columns), y)
        for f, y in clean
    ]

    def calibrate(window: pd.DataFrame) -> DeploymentStats:
        return deployments.measure(settings, diagnoser, "simulated", window)

    return {
        "clean": shift_scores(diagnoser, clean, seed, calibrate).calibrated,
        "random halves": shift_scores(diagnoser, half_noisy, seed, calibrate).calibrated,
        "clean <-> noisy": shift_scores(
            diagnoser, half_noisy, seed, calibrate, ordered_halves=True
        ).calibrated,
        "all noisy": shift_scores(diagnoser, all_noisy, seed, calibrate).calibrated,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("training", help="labelled incidents")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--noise", type=float, default=0.1, help="offsets U(0, noise) times the KPI mean"
    )
    args = parser.parse_args()
    settings = load_settings()
    unique, groups = distinct_incidents(read_incidents(args.training), settings)
    labels = unique[LABEL].to_numpy().astype(np.int64)
    features = unique[list(KPI_FEATURES)]
    scores: dict[str, list[float]] = {}
    for fold, (held_out, diagnoser) in enumerate(fold_models(unique, groups, settings, args.folds)):
        seed = settings.training.seed + fold
        found = fold_scores(
            settings, diagnoser, features.iloc[held_out], labels[held_out], seed, args.noise
        )
        for name, value in found.items():
            scores.setdefault(name, []).append(value)
        print(f"fold {fold}: " + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in scores.items()))

    print("| halves | macro-F1 |\n|---|---:|")
    for name, values in scores.items():
        print(f"| {name} | {np.mean(values):.4f} ± {np.std(values):.4f} |")


if __name__ == "__main__":
    main()
