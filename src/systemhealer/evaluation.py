"""Evaluation: macro-F1 (the headline), accuracy, per-class scores, confusion matrix, plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from systemhealer.config import FAULT_CLASSES


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the fault classes present in ``y_true``: a diagnosis of a class the set
    does not hold still counts as a miss of the true class, but an absent class is not
    averaged in as an F1 of 0 (when every class is present, as usual, this is plain macro-F1)."""
    if len(y_true) == 0:
        return 0.0
    present = np.unique(y_true)
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))


def balanced_macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 as if every fault class present were equally frequent (rows weighted by
    1/class count): the score to expect on a deployment with a balanced class mix."""
    if len(y_true) == 0:
        return 0.0
    present, inverse, counts = np.unique(y_true, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse]
    score = f1_score(
        y_true, y_pred, labels=present, average="macro", sample_weight=weights, zero_division=0
    )
    return float(score)


@dataclass(frozen=True)
class EvaluationReport:
    """Scores of one model on one labelled set."""

    macro_f1: float
    accuracy: float
    balanced_macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    rows: int

    @classmethod
    def score(cls, y_true: np.ndarray, y_pred: np.ndarray) -> EvaluationReport:
        labels = list(FAULT_CLASSES)
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0
        )
        per_class = {
            str(c): {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(labels)
        }
        return cls(
            macro_f1=macro_f1(y_true, y_pred),
            accuracy=float(accuracy_score(y_true, y_pred)),
            balanced_macro_f1=balanced_macro_f1(y_true, y_pred),
            per_class=per_class,
            confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
            rows=len(y_true),
        )

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat metrics for MLflow: ``{prefix}_macro_f1``, ``{prefix}_f1_class_3`` …"""
        flat = {
            f"{prefix}_macro_f1": self.macro_f1,
            f"{prefix}_accuracy": self.accuracy,
            f"{prefix}_balanced_macro_f1": self.balanced_macro_f1,
        }
        for c, scores in self.per_class.items():
            if scores["support"]:  # a class the set has no incident of has no F1
                flat[f"{prefix}_f1_class_{c}"] = scores["f1"]
        return flat

    def to_dict(self) -> dict[str, Any]:
        return {
            "macro_f1": self.macro_f1,
            "accuracy": self.accuracy,
            "balanced_macro_f1": self.balanced_macro_f1,
            "per_class": self.per_class,
            "confusion": self.confusion,
            "rows": self.rows,
        }


def scores_against_labels(labels: pd.Series, predicted: np.ndarray) -> dict[str, Any] | None:
    """When a file handed in for diagnosis carries a ``label`` column: how the diagnoses compare
    with it (``report``), or how many labels are not fault classes (``unusable``: ``bad`` of
    ``rows``), in which case nothing is scored. None when the column holds no label at all."""
    from systemhealer.data import coerce_numeric  # the contract's reading: True/False are text

    column = labels.rename("label").to_frame()
    values = coerce_numeric(column, ["label"])[0]["label"].to_numpy(dtype=np.float64)
    if labels.isna().all():
        return None
    known = np.isin(values, FAULT_CLASSES)
    if not known.all():
        return {"unusable": {"bad": int((~known).sum()), "rows": len(values)}}
    return {"report": EvaluationReport.score(values.astype(np.int64), predicted).to_dict()}


def plot_confusion(report: EvaluationReport, class_names: tuple[str, ...], path: Path) -> Path:
    matrix = np.asarray(report.confusion)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    for (i, j), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    ax.set_xlabel("predicted fault class")
    ax.set_ylabel("true fault class")
    ax.set_title(f"Confusion matrix (macro-F1 {report.macro_f1:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_loss_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Loss and validation macro-F1 per epoch, one line per ensemble member."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for member in sorted({int(h.get("member", 0)) for h in history}):
        curve = [h for h in history if int(h.get("member", 0)) == member]
        epochs = [h["epoch"] for h in curve]
        suffix = f" (member {member})" if member else ""
        left.plot(
            epochs,
            [h["train_loss"] for h in curve],
            color="tab:blue",
            alpha=1 / (1 + member),
            label="train" + suffix,
        )
        left.plot(
            epochs,
            [h["val_loss"] for h in curve],
            color="tab:orange",
            alpha=1 / (1 + member),
            label="validation" + suffix,
        )
        right.plot(
            epochs, [h["val_macro_f1"] for h in curve], color="tab:green", alpha=1 / (1 + member)
        )
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.legend(fontsize=7)
    right.set_xlabel("epoch")
    right.set_ylabel("validation macro-F1")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def embedding_2d(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """Project penultimate-layer activations to 2-D (PCA: fast and deterministic)."""
    if len(embeddings) < 2:
        return np.zeros((len(embeddings), 2))
    n = min(2, embeddings.shape[1], len(embeddings))
    points = PCA(n_components=n, random_state=seed).fit_transform(embeddings)
    if n < 2:
        points = np.hstack([points, np.zeros((len(points), 2 - n))])
    return points


def plot_embedding(
    points: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], path: Path, title: str
) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5))
    for c, name in zip(FAULT_CLASSES, class_names, strict=True):
        mask = labels == c
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.6, label=name)
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
