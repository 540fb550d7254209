"""Training loop: early stopping only with a validation part; near-copies never straddle parts."""

from __future__ import annotations

import numpy as np
import pytest

from systemhealer.config import FAULT_CLASSES, TrainingSettings
from systemhealer.data import grouped_split
from systemhealer.training import train_network


def _noise(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 8)).astype(np.float32), rng.integers(0, len(FAULT_CLASSES), rows)


def test_without_a_validation_part_every_epoch_runs_and_the_last_is_kept() -> None:
    x, y = _noise(300, 0)
    settings = TrainingSettings(
        hidden_sizes=(16,), max_epochs=6, patience=1, validation_fraction=0.0, torch_threads=1
    )
    result = train_network(x[:200], y[:200], x[200:], y[200:], settings, show_progress=False)
    assert len(result.history) == 6 and result.best_epoch == 6


def test_with_a_validation_part_training_stops_early_on_noise() -> None:
    x, y = _noise(300, 1)
    settings = TrainingSettings(
        hidden_sizes=(16,), max_epochs=40, patience=2, validation_fraction=0.15, torch_threads=1
    )
    result = train_network(x[:200], y[:200], x[200:], y[200:], settings, show_progress=False)
    assert len(result.history) < 40
    assert result.best_epoch == len(result.history) - 2


def test_a_zero_validation_fraction_gives_an_empty_validation_part() -> None:
    labels = np.arange(600) % len(FAULT_CLASSES)
    split = grouped_split(labels, np.arange(600), 0.0, 0.15, seed=3)
    assert len(split.validation) == 0
    assert len(split.train) + len(split.evaluation) == 600


def test_balanced_macro_f1_weighs_every_class_alike() -> None:
    from systemhealer.evaluation import balanced_macro_f1, macro_f1

    y = np.array([0, 1, 2] * 20)
    rng = np.random.default_rng(2)
    pred = np.where(rng.random(60) < 0.7, y, rng.integers(0, 3, 60))
    assert balanced_macro_f1(y, pred) == pytest.approx(macro_f1(y, pred))  # balanced already
    skewed_y = np.concatenate([y, np.zeros(120, dtype=int)])  # class 0 five times as common
    skewed_pred = np.concatenate([pred, np.zeros(120, dtype=int)])  # ... and always right
    assert macro_f1(skewed_y, skewed_pred) > balanced_macro_f1(skewed_y, skewed_pred)


def test_swap_noise_keeps_each_kpi_within_its_fault_class() -> None:
    from systemhealer.training import swap_within_class

    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1, 2], 400)
    # Each class lives in its own value range, so a value's class is readable from the value.
    values = labels[:, None] * 10.0 + rng.random((len(labels), 5))
    swapped = swap_within_class(values, labels, 0.3, rng)
    assert swapped.shape == values.shape
    assert (np.floor(swapped / 10) == labels[:, None]).all()  # never a value of another class
    changed = (swapped != values).mean()
    assert 0.25 < changed < 0.32  # ~30 % replaced (a few by their own value)
    for j in range(values.shape[1]):  # every KPI keeps the values of its class
        for fault in range(3):
            own = set(values[labels == fault, j])
            assert set(swapped[labels == fault, j]) <= own
    assert swap_within_class(values, labels, 0.0, rng) is values
