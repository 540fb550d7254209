"""The fault classifier: a multilayer perceptron over preprocessed KPI features."""

from __future__ import annotations

import torch
from torch import nn


class FaultMLP(nn.Module):
    """Linear → LayerNorm → ReLU → Dropout blocks, then a linear head over the fault classes."""

    def __init__(
        self, n_inputs: int, hidden_sizes: tuple[int, ...], n_classes: int, dropout: float
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.LayerNorm(size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)
        self.n_inputs = n_inputs
        self.hidden_sizes = tuple(hidden_sizes)
        self.n_classes = n_classes
        self.dropout = dropout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits, one row per incident."""
        return self.head(self.body(inputs))

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations (for embedding plots)."""
        return self.body(inputs)

    def architecture(self) -> dict[str, object]:
        return {
            "n_inputs": self.n_inputs,
            "hidden_sizes": list(self.hidden_sizes),
            "n_classes": self.n_classes,
            "dropout": self.dropout,
        }
