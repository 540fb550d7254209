"""Simulated deployment shifts: for training augmentation and for shift-aware model selection.

A simulated deployment differs from the training one the way real deployments do: a third to a
half of the KPI features rescaled by 10^2…10^6 (either direction), mild factors on the rest,
configuration constants replaced, and another class mix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from systemhealer.config import FAULT_CLASSES
from systemhealer.evaluation import macro_f1
from systemhealer.features import DeploymentStats

N_CLASSES = len(FAULT_CLASSES)


@dataclass(frozen=True)
class ShiftSpec:
    """One simulated deployment change: per-column factors and configuration-constant factors."""

    scale: dict[str, float]
    config_factor: dict[str, float]


def random_shift(
    rng: np.random.Generator,
    columns: tuple[str, ...],
    config_like: tuple[str, ...],
    fraction: tuple[float, float] = (1 / 3, 1 / 2),
    log10_factor: tuple[float, float] = (2.0, 6.0),
    jitter_log10: float = 0.5,
) -> ShiftSpec:
    """Draw a deployment change for ``columns`` (and new constants for ``config_like``)."""
    n = len(columns)
    big = set(rng.choice(n, size=round(rng.uniform(*fraction) * n), replace=False).tolist())
    scale = {}
    for j, column in enumerate(columns):
        exponent = (
            rng.uniform(*log10_factor) if j in big else rng.uniform(-jitter_log10, jitter_log10)
        )
        if j in big and rng.random() < 0.5:
            exponent = -exponent
        scale[column] = float(10.0**exponent)
    config = {c: float(10.0 ** rng.uniform(-1, 1)) for c in config_like}
    return ShiftSpec(scale=scale, config_factor=config)


def swap_within_class(
    values: np.ndarray, labels: np.ndarray, share: float, rng: np.random.Generator
) -> np.ndarray:
    """Training incidents with about ``share`` of their KPI values each replaced by the same
    KPI of another incident of the same fault class (class-conditional swap noise).

    Every KPI keeps its distribution within each class, but the incidents' joint patterns are
    loosened, so the network learns evidence that holds KPI by KPI rather than combinations
    particular to the training deployment. The shipped unlabelled deployment looks like that:
    its KPIs are much less predictable from each other than the training incidents' (mean R²
    0.17 → 0.10), about what swapping 30 % of the values within class does
    (scripts/compare_deployments.py, docs/calibration.md). Used as training augmentation
    (``training.swap_share``) and to simulate such deployments (``shifted_copies``).
    """
    if share <= 0:
        return values
    swapped = values.copy()
    for fault in np.unique(labels):
        rows = np.flatnonzero(labels == fault)
        own = values[rows]
        donors = rng.integers(0, len(rows), size=own.shape)
        donated = np.take_along_axis(own, donors, axis=0)
        swapped[rows] = np.where(rng.random(own.shape) < share, donated, own)
    return swapped


def kpi_means(values: np.ndarray) -> np.ndarray:
    """Each KPI's mean, missing values aside (NaN for a KPI without any value)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an all-missing KPI
        return np.nanmean(values, axis=0)


def cell_noise(
    values: np.ndarray,
    share: float,
    size: float,
    rng: np.random.Generator,
    direction: str = "both",
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """Incidents with about ``share`` of them noisy: every KPI value of a noisy incident gets its
    own offset drawn from U(0, ``size``) times the KPI's mean (``scale``; by default the mean of
    ``values``, missing values aside), independently per cell.

    With ``direction="both"`` half of the noisy incidents get the offsets subtracted instead, so
    the network sees clean incidents read against a noisy reference window as well as noisy
    incidents read against a clean one. The shipped unlabelled deployment looks like this: its
    rows 1000-1999 are copies of rows 0-999, in order, with every value x turned into
    x + U(0, 0.1) · mean of its KPI (measured: the difference is within 0–10 % of the KPI's mean
    in all 104 varying KPIs and does not depend on x). Calibration undoes per-KPI changes, not
    per-cell ones; narrow KPIs whose mean is large beside their spread (``feature2``, values
    near 1.1) move across much of their range. Used as training augmentation
    (``training.cell_noise``) and by the fourth shift simulation.
    """
    if direction not in ("both", "up"):
        raise ValueError(f"direction must be 'both' or 'up', not {direction!r}")
    if share <= 0 or size <= 0:
        return values
    if scale is None:
        scale = kpi_means(values)
    scale = np.nan_to_num(np.asarray(scale, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    noisy = np.flatnonzero(rng.random(len(values)) < share)
    offsets = rng.uniform(0.0, size, size=(len(noisy), values.shape[1])) * scale
    if direction == "both":
        offsets[rng.random(len(noisy)) < 0.5] *= -1.0
    result = values.copy()
    result[noisy] += offsets
    return result


def apply_shift(features: pd.DataFrame, spec: ShiftSpec) -> pd.DataFrame:
    """Apply a shift to raw KPI features (configuration columns: every value times its factor)."""
    shifted = features.copy()
    for column, factor in {**spec.scale, **spec.config_factor}.items():
        if column in shifted.columns:
            shifted[column] = shifted[column] * factor
    return shifted


def resample_class_mix(
    labels: np.ndarray,
    rng: np.random.Generator,
    mix: np.ndarray,
    n: int | None = None,
    replace: bool = False,
) -> np.ndarray:
    """Row positions of a sample whose class proportions follow ``mix``.

    Without replacement ``n`` is capped so that no class needs more rows than it has.
    """
    by_class = [np.flatnonzero(labels == c) for c in range(len(mix))]
    counts = np.array([len(rows) for rows in by_class])
    n = len(labels) if n is None else n
    wanted = mix > 0
    if not replace:
        n = int(min(n, np.min(counts[wanted] / mix[wanted])))
    take = rng.multinomial(n, mix)
    if not replace:
        take = np.minimum(take, counts)
    parts = [
        rng.choice(rows, size=t, replace=replace)
        for rows, t in zip(by_class, take, strict=True)
        if t > 0 and len(rows)
    ]
    sample = np.concatenate(parts) if parts else np.zeros(0, dtype=int)
    rng.shuffle(sample)
    return sample


def pseudo_deployment(
    values: np.ndarray,
    labels: np.ndarray,
    columns: tuple[str, ...],
    rng: np.random.Generator,
    reference_rows: tuple[int, int] = (300, 1500),
    concentration: float = 5.0,
) -> DeploymentStats:
    """Statistics of a simulated deployment's reference window drawn from training rows.

    The window has a random class mix (Dirichlet around uniform) and a random size, so the
    network learns under the noise of finite, differently mixed calibration windows. (Rescaling
    is not needed here: quantile positions do not change under it.)
    """
    mix = rng.dirichlet(np.full(N_CLASSES, concentration))
    present = np.bincount(labels, minlength=N_CLASSES) > 0
    mix = np.where(present, mix, 0)
    mix = mix / mix.sum()
    rows = resample_class_mix(labels, rng, mix, n=int(rng.integers(*reference_rows)), replace=True)
    return DeploymentStats.measure("pseudo", values[rows], columns)


@dataclass(frozen=True)
class ShiftScores:
    """Macro-F1 on simulated deployments: calibrated with the other half, and uncalibrated."""

    calibrated: float
    uncalibrated: float
    shifts: int
    rows: int


def shifted_copies(
    features: pd.DataFrame,
    labels: np.ndarray,
    columns: tuple[str, ...],
    config_like: tuple[str, ...],
    shifts: int,
    seed: int,
    balanced: bool = True,
    swap_share: float = 0.0,
    noisy_half: float = 0.0,
) -> list[tuple[pd.DataFrame, np.ndarray]]:
    """``shifts`` shifted copies of held-out rows (the same for every model): class-balanced, or
    with ``balanced=False`` all rows in their own (skewed) class mix, reshuffled.

    With ``swap_share`` > 0 about that share of each copied incident's KPI values is first
    replaced by the same KPI of another held-out incident of its class: a deployment whose KPIs
    go together less tightly than the training ones, which calibration cannot undo (the shipped
    unlabelled deployment looks like a share of 0.3, docs/calibration.md).

    With ``noisy_half`` > 0 the second half of each copy's incidents has every value offset by
    its own U(0, ``noisy_half``) times the copy's mean of that KPI (``cell_noise``, the noise of
    the shipped unlabelled deployment's second half): score such copies with
    ``ordered_halves`` so that the clean half calibrates the noisy one and the reverse. The
    noise has its own random stream, so the copies are otherwise those of the same seed
    without noise (paired comparisons)."""
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng([seed, 1])
    present = np.bincount(labels, minlength=N_CLASSES) > 0
    mix = present / present.sum()
    copies = []
    for _ in range(shifts):
        rows = resample_class_mix(labels, rng, mix) if balanced else rng.permutation(len(labels))
        copied = features.iloc[rows].reset_index(drop=True)
        if swap_share > 0:
            values = swap_within_class(copied.to_numpy(float), labels[rows], swap_share, rng)
            copied = pd.DataFrame(values, columns=copied.columns)
        spec = random_shift(rng, columns, config_like)
        copied = apply_shift(copied, spec)
        if noisy_half > 0:
            values = copied.to_numpy(float)
            half = len(values) // 2
            means = kpi_means(values)  # over the whole copy, in its units
            values[half:] = cell_noise(
                values[half:], 1.0, noisy_half, noise_rng, direction="up", scale=means
            )
            copied = pd.DataFrame(values, columns=copied.columns)
        copies.append((copied, labels[rows]))
    return copies


@dataclass(frozen=True)
class CalibrationWindow:
    """One half of a set, used (without labels) to calibrate the scoring of the other half."""

    reference: np.ndarray  # row positions of the window
    scored: np.ndarray  # row positions scored with its statistics
    stats: DeploymentStats


def cross_calibrated(
    diagnoser: object,
    features: pd.DataFrame,
    calibrate: Callable[[pd.DataFrame], DeploymentStats],
    rng: np.random.Generator,
    ordered: bool = False,
) -> tuple[np.ndarray, list[CalibrationWindow]]:
    """Diagnoses of every row of ``features``, split at random (``ordered``: first and second
    half) into halves A and B: A calibrates the scoring of B and B of A, so no row is scored
    with statistics it took part in. ``calibrate`` sees KPI values only (what the caller passes
    in ``features``)."""
    order = np.arange(len(features)) if ordered else rng.permutation(len(features))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    predicted = np.empty(len(features), dtype=np.int64)
    windows = []
    for reference, scored in (halves, halves[::-1]):
        stats = calibrate(features.iloc[reference].reset_index(drop=True))
        diagnoses = diagnoser.diagnose(features.iloc[scored], stats)  # type: ignore[attr-defined]
        predicted[scored] = diagnoses["predicted_label"].to_numpy()
        windows.append(CalibrationWindow(reference, scored, stats))
    return predicted, windows


def shift_scores(
    diagnoser: object,
    copies: list[tuple[pd.DataFrame, np.ndarray]],
    seed: int,
    calibrate: Callable[[pd.DataFrame], DeploymentStats] | None = None,
    ordered_halves: bool = False,
) -> ShiftScores:
    """Score a diagnoser on shifted copies: each copy is split in halves A/B; A calibrates the
    scoring of B and B of A (never the rows scored). ``calibrate`` turns a reference window
    into statistics as the product does (``deployments.measure``); default: plain quantiles.
    Uncalibrated = training statistics."""
    rng = np.random.default_rng(seed + 1)
    calibrated, uncalibrated, rows = [], [], 0

    def plain_quantiles(window: pd.DataFrame) -> DeploymentStats:
        return diagnoser.preprocessor.measure_deployment("simulated", window)  # type: ignore[attr-defined]

    for features, labels in copies:
        predicted, _ = cross_calibrated(
            diagnoser, features, calibrate or plain_quantiles, rng, ordered_halves
        )
        calibrated.append(macro_f1(labels, predicted))
        plain = diagnoser.diagnose(features)["predicted_label"].to_numpy()  # type: ignore[attr-defined]
        uncalibrated.append(macro_f1(labels, plain))
        rows += len(labels)
    return ShiftScores(float(np.mean(calibrated)), float(np.mean(uncalibrated)), len(copies), rows)


def shift_score(balanced: float, skewed: float, swapped: float, noisy: float) -> float:
    """One figure for model selection under shift: the mean of the four calibrated
    simulations (balanced copies, copies in the held-out rows' own mix, swapped values, a
    clean half and a noisy half calibrating each other)."""
    return float(np.mean([balanced, skewed, swapped, noisy]))


@dataclass(frozen=True)
class SimulatedScores:
    """Macro-F1 of one diagnoser on the four simulated deployments of one held-out set."""

    calibrated: float  # balanced copies, halves calibrating each other
    uncalibrated: float  # the same copies read with the training statistics
    skewed: float  # copies in the held-out rows' own class mix, calibrated
    swapped: float  # balanced copies with values swapped within class, calibrated
    noisy: float  # balanced copies, a clean and a cell-noisy half calibrating each other


def simulate_deployments(
    diagnoser: object,
    features: pd.DataFrame,
    labels: np.ndarray,
    config_like: tuple[str, ...],
    shifts: int,
    seed: int,
    swap_share: float,
    calibrate: Callable[[pd.DataFrame], DeploymentStats],
    noise: float,
) -> SimulatedScores:
    """Score a diagnoser on the four simulations of held-out ``features`` (the copies are the
    same for every model given the same seed)."""
    columns = tuple(c for c in features.columns if c not in config_like)

    def score(balanced: bool, share: float, noisy_half: float = 0.0) -> ShiftScores:
        copies = shifted_copies(
            features, labels, columns, config_like, shifts, seed, balanced, share, noisy_half
        )
        return shift_scores(diagnoser, copies, seed, calibrate, ordered_halves=noisy_half > 0)

    shifted, skewed, swapped = score(True, 0.0), score(False, 0.0), score(True, swap_share)
    noisy = score(True, 0.0, noise)
    return SimulatedScores(
        shifted.calibrated,
        shifted.uncalibrated,
        skewed.calibrated,
        swapped.calibrated,
        noisy.calibrated,
    )
