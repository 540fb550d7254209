"""The fault classifier: a multilayer perceptron over preprocessed KPI features."""

from __future__ import annotations

import torch
from torch import nn


class FaultMLP(nn.Module):
    """Linear → GELU → Dropout blocks, then a linear head over the fault classes."""

    def __init__(
        self, n_inputs: int, hidden_sizes: tuple[int, ...], n_classes: int, dropout: float
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.GELU(), nn.Dropout(dropout)]
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


class FaultEnsemble(nn.Module):
    """A few MLPs trained from different seeds; their class probabilities are averaged."""

    def __init__(self, members: list[FaultMLP]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Log of the members' mean probabilities (so softmax gives the mean back)."""
        return self.combine([m(inputs) for m in self.members])

    @staticmethod
    def combine(member_logits: list[torch.Tensor]) -> torch.Tensor:
        """The members' logits → log of their mean probabilities."""
        probabilities = torch.stack([torch.softmax(x, dim=1) for x in member_logits]).mean(0)
        return torch.log(probabilities.clamp_min(1e-12))

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """The first member's penultimate layer (for embedding plots)."""
        return self.members[0].embed(inputs)  # type: ignore[operator]

    def architecture(self) -> dict[str, object]:
        return {**self.members[0].architecture(), "members": len(self.members)}  # type: ignore[operator]

    @classmethod
    def from_architecture(cls, architecture: dict[str, object]) -> FaultEnsemble:
        """Empty members of the saved shape, ready for ``load_state_dict``."""
        return cls(
            [
                FaultMLP(
                    n_inputs=int(architecture["n_inputs"]),  # type: ignore[arg-type]
                    hidden_sizes=tuple(architecture["hidden_sizes"]),  # type: ignore[arg-type]
                    n_classes=int(architecture["n_classes"]),  # type: ignore[arg-type]
                    dropout=float(architecture["dropout"]),  # type: ignore[arg-type]
                )
                for _ in range(int(architecture.get("members", 1)))  # type: ignore[call-overload]
            ]
        )
