"""Experiment (not adopted): adapt the network to a deployment's unlabelled reference window.

For each fold of ``systemhealer crossval`` and each simulated deployment (the balanced, skewed and
swapped copies of the held-out fold), halves A/B calibrate each other as in the shift
evaluation; then a copy of the network is fine-tuned on window A alone and scores B:

- ``self-training``: soft pseudo-labels (the model's own corrected probabilities, sharpened at
  temperature 0.5, renewed every 5 epochs), cross-entropy on them;
- ``information-max``: SHOT-style (Liang et al., 2020), the head frozen, per-incident entropy
  plus the KL distance of the window's mean output from its estimated class mix.

Usage: .venv/bin/python scripts/try_reference_adaptation.py data/fault_kpi_train.csv.gz [--folds N]
Findings are in docs/calibration.md (every variant scored lower than no adaptation).
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass

import numpy as np
import torch

from systemhealer import deployments
from systemhealer.config import load_settings
from systemhealer.crossval import fold_models
from systemhealer.data import KPI_FEATURES, LABEL, read_incidents
from systemhealer.evaluation import macro_f1
from systemhealer.features import DeploymentStats
from systemhealer.label_shift import correct_probabilities
from systemhealer.model import FaultEnsemble
from systemhealer.shift import N_CLASSES, shifted_copies
from systemhealer.training import distinct_incidents


@dataclass(frozen=True)
class Adaptation:
    name: str
    method: str  # "none", "self-training" or "information-max"
    epochs: int = 0
    learning_rate: float = 0.0


ADAPTATIONS = (
    Adaptation("none", "none"),
    Adaptation("self-training, 10 epochs, lr 1e-4", "self-training", 10, 1e-4),
    Adaptation("self-training, 20 epochs, lr 2e-4", "self-training", 20, 2e-4),
    Adaptation("information-max, 10 epochs, lr 1e-4", "information-max", 10, 1e-4),
)


def probabilities(network: FaultEnsemble, inputs: np.ndarray, stats: DeploymentStats) -> np.ndarray:
    network.eval()
    with torch.no_grad():
        p = torch.softmax(network(torch.from_numpy(inputs)), 1).numpy()
    return p if stats.class_mix is None else correct_probabilities(p, stats.class_mix)


def adapted(
    network: FaultEnsemble, window: np.ndarray, stats: DeploymentStats, how: Adaptation
) -> FaultEnsemble:
    """A copy of ``network`` fine-tuned on the unlabelled inputs of one reference window."""
    if how.method == "none":
        return network
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tuned = copy.deepcopy(network)
    frozen_head = how.method == "information-max"
    params = [p for n, p in tuned.named_parameters() if not (frozen_head and "head" in n)]
    optimiser = torch.optim.Adam(params, lr=how.learning_rate)
    inputs = torch.from_numpy(window)
    mix = stats.reference_mix if stats.reference_mix is not None else np.full(N_CLASSES, 1 / 6)
    target_mix = torch.from_numpy(mix.astype(np.float32))
    targets = torch.zeros(0)
    for epoch in range(how.epochs):
        if how.method == "self-training" and epoch % 5 == 0:
            sharpened = probabilities(tuned, window, stats) ** 2  # temperature 0.5
            targets = torch.from_numpy((sharpened / sharpened.sum(1, keepdims=True)).astype("f4"))
        tuned.train()
        order = rng.permutation(len(window))
        for start in range(0, len(order) - 1, 64):
            batch = torch.from_numpy(order[start : start + 64])
            optimiser.zero_grad()
            logits = tuned(inputs[batch])
            if how.method == "self-training":
                loss = -(targets[batch] * torch.log_softmax(logits, 1)).sum(1).mean()
            else:
                p = torch.softmax(logits, 1)
                entropy = -(p * torch.log(p + 1e-8)).sum(1).mean()
                mean = p.mean(0)
                loss = entropy + (mean * torch.log((mean + 1e-8) / (target_mix + 1e-8))).sum()
            loss.backward()
            optimiser.step()
    tuned.eval()
    return tuned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train")
    parser.add_argument("--folds", type=int, default=5, help="how many of the 5 folds to run")
    args = parser.parse_args()
    settings = load_settings()
    unique, groups = distinct_incidents(read_incidents(args.train), settings)
    labels = unique[LABEL].to_numpy().astype(np.int64)
    features = unique[list(KPI_FEATURES)]
    config_like = settings.data.config_like_columns
    columns = tuple(c for c in KPI_FEATURES if c not in config_like)
    scores: dict[str, dict[str, list[float]]] = {
        a.name: {"balanced": [], "skewed": [], "swapped": []} for a in ADAPTATIONS
    }
    for fold, (held_out, diagnoser) in enumerate(fold_models(unique, groups, settings, 5)):
        if fold >= args.folds:
            break
        pre = diagnoser.preprocessor
        simulations = {"balanced": (True, 0.0), "skewed": (False, 0.0), "swapped": (True, 0.3)}
        for simulation, (balanced, share) in simulations.items():
            copies = shifted_copies(
                features.iloc[held_out], labels[held_out], columns, config_like,
                settings.evaluation.shift_copies, settings.training.seed + fold, balanced, share,
            )  # fmt: skip
            for number, (shifted, truth) in enumerate(copies):
                order = np.random.default_rng(100 + number).permutation(len(shifted))
                halves = (order[: len(order) // 2], order[len(order) // 2 :])
                predicted = {a.name: np.empty(len(shifted), dtype=int) for a in ADAPTATIONS}
                for reference, scored in (halves, halves[::-1]):
                    window = shifted.iloc[reference].reset_index(drop=True)
                    stats = deployments.measure(settings, diagnoser, "simulated", window)
                    x_window = pre.encode(pre.raw_values(window), stats)
                    x_scored = pre.encode(pre.raw_values(shifted.iloc[scored]), stats)
                    for how in ADAPTATIONS:
                        network = adapted(diagnoser.network, x_window, stats, how)
                        p = probabilities(network, x_scored, stats)
                        predicted[how.name][scored] = p.argmax(1)
                for how in ADAPTATIONS:
                    scores[how.name][simulation].append(macro_f1(truth, predicted[how.name]))
        print(f"after fold {fold}:", flush=True)
        for name, by_simulation in scores.items():
            means = {k: float(np.mean(v)) for k, v in by_simulation.items()}
            print(
                f"  {name:38s} balanced {means['balanced']:.4f}  skewed {means['skewed']:.4f}  "
                f"swapped {means['swapped']:.4f}  mean of the three {np.mean(list(means.values())):.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
