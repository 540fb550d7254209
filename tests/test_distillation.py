"""Knowledge distillation: a random forest's out-of-bag opinion mixed into the MLP's targets."""

from __future__ import annotations

import numpy as np

from systemhealer.config import FAULT_CLASSES, TrainingSettings
from systemhealer.training import distillation_targets, train_network


def test_targets_mix_labels_with_out_of_bag_probabilities() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(FAULT_CLASSES), 600)
    noise = rng.random((600, 5))  # nothing to learn: an honest teacher is unsure
    settings = TrainingSettings(distill_weight=0.5, teacher_trees=60)
    targets = distillation_targets(noise, labels, settings)
    assert targets is not None and targets.shape == (600, len(FAULT_CLASSES))
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-5)
    on_label = targets[np.arange(600), labels]
    assert (on_label >= 0.5 - 1e-6).all()  # the label keeps its share
    # In-bag a forest would recall each row's label (~0.9); out-of-bag it is near chance.
    teacher_on_label = (on_label - 0.5) / 0.5
    assert teacher_on_label.mean() < 0.4


def test_no_teacher_when_the_weight_is_zero() -> None:
    labels = np.arange(60) % len(FAULT_CLASSES)
    settings = TrainingSettings(distill_weight=0.0)
    assert distillation_targets(np.zeros((60, 3)), labels, settings) is None


def test_network_learns_from_probability_targets() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, len(FAULT_CLASSES), 900)
    inputs = (np.eye(len(FAULT_CLASSES))[labels] * 3 + rng.normal(size=(900, 6))).astype(np.float32)
    settings = TrainingSettings(
        hidden_sizes=(32,),
        batch_size=32,
        max_epochs=15,
        patience=15,
        torch_threads=1,
        teacher_trees=40,
    )
    targets = distillation_targets(inputs, labels, settings)
    result = train_network(
        inputs[:700], labels[:700], inputs[700:], labels[700:], settings,
        show_progress=False, targets=None if targets is None else targets[:700],
    )  # fmt: skip
    assert result.history[-1]["val_macro_f1"] > 0.8
