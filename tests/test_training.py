"""Training loop: early stopping only with a validation part; near-copies never straddle parts."""

from __future__ import annotations

import numpy as np
import pandas as pd
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


def test_macro_f1_averages_over_the_classes_the_labels_hold() -> None:
    from systemhealer.evaluation import EvaluationReport, balanced_macro_f1, macro_f1

    y = np.array([3, 3, 4, 4])
    pred = np.array([3, 0, 4, 4])  # one class-3 incident diagnosed as class 0
    # Class 0 is absent from the set: the miss lowers class 3's recall, no F1 of 0 is averaged in.
    assert macro_f1(y, pred) == pytest.approx((2 / 3 + 1) / 2)
    assert balanced_macro_f1(y, pred) == pytest.approx((2 / 3 + 1) / 2)
    report = EvaluationReport.score(y, pred)
    assert report.per_class["0"]["support"] == 0 and report.per_class["3"]["recall"] == 0.5


def test_swap_noise_keeps_each_kpi_within_its_fault_class() -> None:
    from systemhealer.shift import swap_within_class

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


def test_cell_noise_offsets_each_value_of_a_noisy_incident_by_its_own_share_of_the_kpi_mean() -> (
    None
):
    from systemhealer.shift import cell_noise

    rng = np.random.default_rng(5)
    values = rng.lognormal(0, 3, size=(4000, 6)) * np.where(rng.random((4000, 6)) < 0.2, -1, 1)
    values[rng.random(values.shape) < 0.1] = np.nan
    means = np.nanmean(values, axis=0)
    noisy = cell_noise(values, 0.3, 0.1, rng)
    assert np.array_equal(np.isnan(noisy), np.isnan(values))  # missing stays missing
    share = (noisy - values) / means  # the offset as a share of the KPI's mean
    touched = ~np.all((share == 0) | np.isnan(share), axis=1)
    assert 0.27 < touched.mean() < 0.33  # about 30 % of the incidents, the rest untouched
    assert np.nanmin(share) >= -0.1 - 1e-9 and np.nanmax(share) <= 0.1 + 1e-9
    up = touched & (np.nanmean(share, axis=1) > 0)
    down = touched & (np.nanmean(share, axis=1) < 0)
    assert abs(up.sum() - down.sum()) < 0.15 * touched.sum()  # both directions, about evenly
    assert np.nanmin(share[up]) >= 0 and np.nanmax(share[down]) <= 0  # one direction each
    # The offset does not depend on the value, and two KPIs of an incident draw independently.
    cells = up[:, None] & ~np.isnan(share)
    assert abs(np.corrcoef(share[cells], np.abs(values[cells]))[0, 1]) < 0.05
    both = up & ~np.isnan(share[:, 0]) & ~np.isnan(share[:, 1])
    assert abs(np.corrcoef(share[both, 0], share[both, 1])[0, 1]) < 0.1
    upward = (cell_noise(values, 1.0, 0.1, rng, direction="up") - values) / means
    assert np.nanmin(upward) >= 0 and np.nanmedian(upward) == pytest.approx(0.05, abs=0.003)
    # An explicit scale replaces the means; a KPI without any value gets no offset.
    scaled = cell_noise(values, 1.0, 0.1, rng, direction="up", scale=np.full(6, 2.0)) - values
    assert np.nanmin(scaled) >= -1e-9 and np.nanmax(scaled) <= 0.2 + 1e-9
    empty = values.copy()
    empty[:, 0] = np.nan
    assert np.isnan(cell_noise(empty, 1.0, 0.1, rng)[:, 0]).all()
    assert cell_noise(values, 0.0, 0.1, rng) is values
    with pytest.raises(ValueError):
        cell_noise(values, 0.3, 0.1, rng, direction="sideways")


def test_a_noisy_half_simulation_noises_the_second_half_of_each_copy_only() -> None:
    from systemhealer.shift import cross_calibrated, shifted_copies

    labels = np.repeat([0, 1, 2], 100)
    values = np.random.default_rng(2).lognormal(0, 2, size=(len(labels), 4))
    features = pd.DataFrame(values, columns=["a", "b", "c", "d"])
    clean_copies = shifted_copies(features, labels, ("a", "b"), ("d",), 3, seed=3)
    noisy_copies = shifted_copies(features, labels, ("a", "b"), ("d",), 3, seed=3, noisy_half=0.1)
    for (clean, y_clean), (noisy, y_noisy) in zip(clean_copies, noisy_copies, strict=True):
        assert np.array_equal(y_clean, y_noisy)  # the same incidents, the same shift
        offset = (noisy - clean).to_numpy() / clean.mean().to_numpy()
        half = len(offset) // 2
        assert (offset[:half] == 0).all()
        assert offset[half:].min() >= 0 and offset[half:].max() <= 0.1 + 1e-9
        assert offset[half:].std() > 0.02

    class Recorder:  # which rows calibrate which
        def diagnose(self, frame: pd.DataFrame, stats: object) -> pd.DataFrame:
            return pd.DataFrame({"predicted_label": np.zeros(len(frame), dtype=int)})

    _, windows = cross_calibrated(
        Recorder(), noisy, lambda w: None, np.random.default_rng(0), ordered=True
    )
    assert [w.reference.tolist() for w in windows] == [
        list(range(half)),
        list(range(half, len(offset))),
    ]


def test_shifted_copies_can_swap_values_within_class() -> None:
    from systemhealer.shift import shifted_copies

    labels = np.repeat([0, 1, 2], [300, 100, 100])
    # Row i holds i * 100 + j in column j: every value tells its row, and so its class.
    values = np.arange(len(labels))[:, None] * 100.0 + np.arange(4)
    features = pd.DataFrame(values, columns=["a", "b", "c", "d"])
    copies = shifted_copies(features, labels, (), (), 3, seed=1, swap_share=0.3)
    plain = shifted_copies(features, labels, (), (), 3, seed=1)
    for (copied, copy_labels), (unswapped, _) in zip(copies, plain, strict=True):
        assert all(80 <= n <= 120 for n in np.bincount(copy_labels))  # about class-balanced
        source_rows = (copied.to_numpy() // 100).astype(int)
        assert (labels[source_rows] == copy_labels[:, None]).all()  # donors of its own class
        own_row = np.array([np.bincount(r).argmax() for r in source_rows])
        foreign = (source_rows != own_row[:, None]).mean()
        assert 0.2 < foreign < 0.4, foreign
        assert ((unswapped.to_numpy() // 100)[:, :1] == unswapped.to_numpy() // 100).all()


def test_gate_compares_the_mean_shift_score() -> None:
    from systemhealer.pipeline import HoldoutScores, gate_decision

    champion = HoldoutScores(0.80, 0.84, 0.20, 0.82, 0.84, 0.82)
    # Better on the balanced simulation, much worse with swapped values: rejected.
    brittle = HoldoutScores(0.80, 0.86, 0.20, 0.82, 0.78, 0.82)
    promoted, reason = gate_decision(brittle, "1", champion, "", gate_on_shift=True)
    assert not promoted and "shift score 0.8200 < 0.8300" in reason
    assert gate_decision(brittle, "1", champion, "", gate_on_shift=False)[0]
    # The same with a clean window reading noisy incidents.
    fragile = HoldoutScores(0.80, 0.85, 0.20, 0.82, 0.84, 0.76)
    assert not gate_decision(fragile, "1", champion, "", gate_on_shift=True)[0]
    steadier = HoldoutScores(0.80, 0.83, 0.20, 0.83, 0.86, 0.82)
    assert gate_decision(steadier, "1", champion, "", gate_on_shift=True)[0]
    # Better everywhere, on rows without two classes the champion diagnoses: rejected.
    promoted, reason = gate_decision(steadier, "1", champion, "", True, lost_classes=[3, 5])
    assert not promoted and "fault class(es) 3, 5, which v1 diagnoses" in reason
