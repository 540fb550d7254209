"""Training: de-duplicate, split without leaks, fit the preprocessing, train the MLP."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from systemhealer.config import FAULT_CLASSES, Settings, TrainingSettings
from systemhealer.data import (
    KPI_FEATURES,
    LABEL,
    Split,
    collapse_near_copies,
    deduplicate,
    fingerprint,
    grouped_holdout,
    grouped_split,
    row_groups,
)
from systemhealer.errors import TrainingError
from systemhealer.evaluation import macro_f1
from systemhealer.features import KpiPreprocessor
from systemhealer.model import FaultEnsemble, FaultMLP
from systemhealer.shift import cell_noise, kpi_means, pseudo_deployment, swap_within_class

EpochCallback = Callable[[dict[str, float]], None]
# Network inputs of the training rows for one epoch (drawn anew each epoch when augmenting).
InputSampler = Callable[[np.random.Generator], np.ndarray]


@dataclass
class PreparedData:
    """Training data after de-duplication, split and preprocessing."""

    incidents: pd.DataFrame
    labels: np.ndarray
    split: Split
    preprocessor: KpiPreprocessor
    duplicates_dropped: int
    fingerprint: dict[str, object]

    def features(self, part: np.ndarray) -> pd.DataFrame:
        return self.incidents.iloc[part][list(KPI_FEATURES)]

    def inputs(self, part: np.ndarray) -> np.ndarray:
        return self.preprocessor.transform(self.features(part))

    def training_targets(self, settings: TrainingSettings) -> np.ndarray | None:
        """Distillation targets of the training part (None: train on the labels alone)."""
        part = self.split.train
        preprocessor = self.preprocessor
        # The teacher reads missing values at the median (a forest needs a number; letting it
        # split on missing values itself scored the same in crossval).
        positions = preprocessor.training.positions(
            preprocessor.raw_values(self.features(part)), missing=0.5
        )
        return distillation_targets(positions, self.labels[part], settings)

    def training_inputs(self, settings: TrainingSettings) -> InputSampler:
        """Training inputs per epoch: normalised relative to a freshly simulated deployment
        (random class mix, finite reference window), or to the training reference itself."""
        part = self.split.train
        values = self.preprocessor.raw_values(self.features(part))
        labels = self.labels[part]
        base = self.preprocessor.encode(values, self.preprocessor.training)
        augmented = settings.swap_share > 0 or (
            settings.cell_noise > 0 and settings.cell_noise_share > 0
        )
        means = kpi_means(values)  # the scale of each KPI's cell noise

        def sample(rng: np.random.Generator) -> np.ndarray:
            simulated = (
                settings.pseudo_deployments and rng.random() >= settings.p_training_reference
            )
            if not simulated and not augmented:
                return base
            epoch_values = swap_within_class(values, labels, settings.swap_share, rng)
            epoch_values = cell_noise(
                epoch_values, settings.cell_noise_share, settings.cell_noise, rng, scale=means
            )
            stats = (
                pseudo_deployment(values, labels, self.preprocessor.columns, rng)
                if simulated
                else self.preprocessor.training
            )
            return self.preprocessor.encode(epoch_values, stats)

        return sample


def distinct_incidents(
    incidents: pd.DataFrame, settings: Settings
) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per incident (exact duplicates and near-copies collapsed), with its group key.

    Near-copies are rows equal at 5 significant digits apart from configuration-like columns
    (which the model drops anyway): in duplicate-aware CV, counting them once scored +0.006
    shift-simulated macro-F1, and they can never straddle two parts of a split.
    """
    unique = deduplicate(incidents)
    groups = row_groups(unique[list(KPI_FEATURES)], ignore=settings.data.config_like_columns)
    keep = collapse_near_copies(groups, unique[LABEL].to_numpy())
    return unique.iloc[keep].reset_index(drop=True), groups[keep]


def splittable_incidents(
    incidents: pd.DataFrame, settings: Settings
) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`distinct_incidents`, refused (TrainingError) when a fault class has fewer than 3
    of them: the split needs one in each of train, validation and evaluation."""
    unique, groups = distinct_incidents(incidents, settings)
    counts = np.bincount(unique[LABEL].to_numpy().astype(np.int64), minlength=len(FAULT_CLASSES))
    if (counts[counts > 0] < 3).any():
        rare = [str(c) for c in FAULT_CLASSES if 0 < counts[c] < 3]
        raise TrainingError(
            f"fault class(es) {', '.join(rare)} have fewer than 3 distinct incidents "
            f"({len(incidents)} rows, {len(unique)} distinct: copies and near-copies count "
            "once); cannot split them into train, validation and evaluation"
        )
    return unique, groups


def prepare_training_data(incidents: pd.DataFrame, settings: Settings) -> PreparedData:
    """De-duplicate, split so identical incidents never straddle two parts, fit preprocessing
    on the training part only."""
    data_fingerprint = fingerprint(incidents)
    unique, groups = splittable_incidents(incidents, settings)
    labels = unique[LABEL].to_numpy().astype(np.int64)
    features = unique[list(KPI_FEATURES)]
    t = settings.training
    split = grouped_split(labels, groups, t.validation_fraction, t.evaluation_fraction, t.seed)
    preprocessor = KpiPreprocessor.fit(
        features.iloc[split.train],
        labels[split.train],
        settings.preprocessing,
        config_like=settings.data.config_like_columns,
    )
    return PreparedData(
        incidents=unique,
        labels=labels,
        split=split,
        preprocessor=preprocessor,
        duplicates_dropped=len(incidents) - len(unique),
        fingerprint=data_fingerprint,
    )


def grouped_split_of(
    rows: np.ndarray, labels: np.ndarray, groups: np.ndarray, settings: Settings
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into train and validation parts without splitting a group."""
    train, validation = grouped_holdout(
        labels[rows],
        groups[rows],
        settings.training.validation_fraction,
        settings.training.seed + 1,
    )
    return rows[train], rows[validation]


@dataclass
class TrainingResult:
    """The best network (by validation macro-F1) and its per-epoch history."""

    network: FaultMLP | FaultEnsemble
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights (classes absent from training get weight 0)."""
    counts = np.bincount(labels, minlength=len(FAULT_CLASSES)).astype(np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def early_stopping(settings: TrainingSettings) -> bool:
    """Whether training keeps its best validation epoch (else: all epochs, the last one)."""
    return settings.validation_fraction > 0


def distillation_targets(
    positions: np.ndarray, labels: np.ndarray, settings: TrainingSettings
) -> np.ndarray | None:
    """Training targets that mix the labels with a random forest's out-of-bag probabilities.

    The forest (the *teacher*, used only during training) learns the quantile positions the
    MLP sees (missing values at the median); each row's target is
    ``(1 - w)·one_hot(label) + w·teacher(row)``, where the teacher's opinion of a row comes only
    from trees that did not see it. It passes on which incidents look alike across classes, which
    labels alone do not: +0.01–0.02 class-balanced macro-F1 in duplicate-aware CV on the shipped
    data. None when ``settings.distill_weight`` is 0.
    """
    if settings.distill_weight <= 0:
        return None
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(
        n_estimators=settings.teacher_trees, oob_score=True, n_jobs=1, random_state=settings.seed
    ).fit(positions, labels)
    teacher = np.zeros((len(labels), len(FAULT_CLASSES)))
    # A row that every tree saw has no out-of-bag vote: zeros (NaN in older scikit-learn).
    oob = np.nan_to_num(forest.oob_decision_function_, nan=0.0)
    teacher[:, forest.classes_] = oob
    unseen = ~(oob > 0).any(axis=1)
    one_hot = np.eye(len(FAULT_CLASSES))[labels]
    teacher[unseen] = one_hot[unseen]
    w = settings.distill_weight
    return ((1 - w) * one_hot + w * teacher).astype(np.float32)


def learning_rate_schedule(
    optimiser: torch.optim.Optimizer, settings: TrainingSettings, rows: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """One-cycle schedule over ``max_epochs`` (warm up, then anneal), or a constant rate."""
    if settings.lr_schedule == "constant":
        return None
    full, rest = divmod(rows, settings.batch_size)
    steps_per_epoch = full + (1 if rest >= 2 else 0)  # batches of one row are skipped
    return torch.optim.lr_scheduler.OneCycleLR(
        optimiser,
        max_lr=settings.learning_rate,
        total_steps=max(1, settings.max_epochs * steps_per_epoch),
    )


def train_network(
    x_train: np.ndarray | InputSampler,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    settings: TrainingSettings,
    on_epoch: EpochCallback | None = None,
    show_progress: bool = True,
    targets: np.ndarray | None = None,
) -> TrainingResult:
    """Train the MLP with class-weighted loss.

    With a validation part (``settings.validation_fraction`` > 0) training stops early and keeps
    the epoch with the best macro-F1 on ``x_val``; without, it runs ``max_epochs`` and keeps the
    last, and ``x_val`` only draws the curves.

    ``targets`` (rows of class probabilities, see :func:`distillation_targets`) replace the
    one-hot labels in the training loss; the class weights still come from ``y_train``.
    """
    from systemhealer import distributed

    if distributed.is_distributed():  # under torchrun: the same training, split across processes
        return distributed.train_network_ddp(
            x_train, y_train, x_val, y_val, settings, on_epoch, show_progress, targets
        )
    started = time.perf_counter()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    rng = seed_everything(settings.seed)
    sample = x_train if callable(x_train) else (lambda _rng: x_train)
    network = FaultMLP(x_val.shape[1], settings.hidden_sizes, len(FAULT_CLASSES), settings.dropout)
    weights = class_weights(y_train) if settings.class_weighted else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=settings.label_smoothing)
    eval_loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimiser = torch.optim.AdamW(
        network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    scheduler = learning_rate_schedule(optimiser, settings, len(y_train))
    yt = torch.from_numpy(y_train.astype(np.int64) if targets is None else targets)
    xv, yv = torch.from_numpy(x_val), torch.from_numpy(y_val.astype(np.int64))
    result = TrainingResult(network=network)
    best_score, best_state, stale = -1.0, copy.deepcopy(network.state_dict()), 0
    bar = tqdm(
        range(1, settings.max_epochs + 1), desc="training", unit="epoch", disable=not show_progress
    )
    for epoch in bar:
        network.train()
        xt = torch.from_numpy(sample(rng))
        order = torch.from_numpy(rng.permutation(len(xt)))
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            if len(batch) < 2:
                continue
            optimiser.zero_grad()
            loss = loss_fn(network(xt[batch]), yt[batch])
            loss.backward()
            optimiser.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * len(batch)
        network.eval()
        with torch.inference_mode():
            logits = network(xv)
            val_loss = float(eval_loss_fn(logits, yv))
            val_f1 = macro_f1(y_val, logits.argmax(1).numpy())
        if not np.isfinite(total):
            raise TrainingError("training diverged (loss is not finite); lower the learning rate")
        record = {
            "epoch": epoch,
            "train_loss": total / len(xt),
            "val_loss": val_loss,
            "val_macro_f1": val_f1,
        }
        result.history.append(record)
        if on_epoch:
            on_epoch(record)
        bar.set_postfix(
            loss=f"{record['train_loss']:.3f}", val_loss=f"{val_loss:.3f}", f1=f"{val_f1:.3f}"
        )
        if not early_stopping(settings):
            result.best_epoch = epoch
        elif val_f1 > best_score + 1e-4:
            best_score, best_state, stale, result.best_epoch = (
                val_f1,
                copy.deepcopy(network.state_dict()),
                0,
                epoch,
            )
        else:
            stale += 1
            if stale >= settings.patience:
                break
    bar.close()
    if early_stopping(settings):
        network.load_state_dict(best_state)
    network.eval()
    result.seconds = time.perf_counter() - started
    return result


def train_ensemble(
    x_train: np.ndarray | InputSampler,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    settings: TrainingSettings,
    on_epoch: EpochCallback | None = None,
    show_progress: bool = True,
    targets: np.ndarray | None = None,
) -> TrainingResult:
    """Train ``settings.ensemble_size`` MLPs from consecutive seeds; average their probabilities.

    The history is the concatenation of the members' epochs (each record names its member).
    """
    members, history, seconds, best = [], [], 0.0, 0
    for member in range(settings.ensemble_size):
        member_settings = settings.model_copy(update={"seed": settings.seed + member})

        def tagged(
            record: dict[str, float], member: int = member, done: int = len(history)
        ) -> None:
            if on_epoch:
                on_epoch({**record, "member": member, "step": done + record["epoch"]})

        result = train_network(
            x_train, y_train, x_val, y_val, member_settings, tagged, show_progress, targets
        )
        history += [{**h, "member": member} for h in result.history]
        members.append(result.network)
        seconds += result.seconds
        best = best or result.best_epoch
    ensemble = FaultEnsemble(members)  # type: ignore[arg-type]
    ensemble.eval()
    return TrainingResult(network=ensemble, history=history, best_epoch=best, seconds=seconds)
