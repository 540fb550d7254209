"""Inference without the wide input: the network's first layer evaluated on positions directly.

The preprocessing turns each of the m model columns into a normal score z and a ``B``-unit
thermometer code of its position u (:func:`systemhealer.features.encode_positions`), so the
network's input is m·(B+1) wide (340 for 20 columns and 16 bins) although only 3 numbers per
column carry information. With s = u·B, k = min(⌊s⌋, B−1) and f = s − k, thermometer unit t is
+0.5 for t < k, f − 0.5 for t = k and −0.5 for t > k. Its contribution to the first ``Linear``
layer is therefore

    Σ_t W_t·code_t = A[k] + f·W_k,   A[k] = 0.5·Σ_{t<k} W_t − 0.5·W_k − 0.5·Σ_{t>k} W_t

(W_t: the weight column of unit t). Per row and column that is two rows of a table picked by k
plus z times the score's weight column: ``embedding_bag(mode="sum")`` over 3·m (index, weight)
pairs per row. The first layer costs ~3·m·H multiply-adds instead of m·(B+1)·H and the encoded
input is never built. The result equals the dense path up to float32 rounding (the terms are
summed in another order); tests/test_inference.py checks it.

Training keeps the dense path; every inference path (CLI, streaming, HTTP, web, evaluation) goes
through :class:`FusedNetwork` via :meth:`systemhealer.diagnoser.FaultDiagnoser.probabilities`,
so they all agree with each other exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from systemhealer.features import encode_positions, split_missing
from systemhealer.model import FaultEnsemble, FaultMLP


def _fused_table(layer: nn.Linear, columns: int, bins: int) -> torch.Tensor:
    """Rows of the embedding table of one first layer: [score columns (m), A (m·B), W (m·B)]."""
    weight = layer.weight.detach().to(torch.float64)  # (H, m + m·B); sums in float64
    scores = weight[:, :columns].T  # (m, H)
    units = weight[:, columns:].T.reshape(columns, bins, -1)  # (m, B, H): W_t per column
    before = torch.cumsum(units, dim=1) - units  # Σ_{t<k} W_t
    after = units.sum(dim=1, keepdim=True) - before - units  # Σ_{t>k} W_t
    anchors = 0.5 * before - 0.5 * units - 0.5 * after  # A[k]
    table = torch.cat(
        [scores, anchors.reshape(-1, units.shape[2]), units.reshape(-1, units.shape[2])]
    )
    return table.to(torch.float32).contiguous()


class FusedNetwork:
    """A :class:`FaultEnsemble` for inference on positions u (n × m): same probabilities as
    ``softmax(network(encode_positions(u)))`` up to float32 rounding.

    The tables are derived from the weights on first use and again whenever a first layer's
    weights change in place (an optimiser step), so a network that is still being trained is
    never scored with stale tables.
    """

    def __init__(self, network: FaultEnsemble, columns: int, bins: int) -> None:
        if bins <= 0:
            raise ValueError("the fused first layer needs a thermometer code (ple_bins > 0)")
        self.network, self.columns, self.bins = network, columns, bins
        network.eval()  # as the dense inference path does (dropout is skipped here in any case)
        self._members: list[FaultMLP] = list(network.members)  # type: ignore[arg-type]
        self._key: tuple[int, ...] | None = None
        self._tables: list[tuple[torch.Tensor, torch.Tensor]] = []
        for member in self._members:
            first = member.body[0]
            if not isinstance(first, nn.Linear) or first.in_features != columns * (bins + 1):
                raise ValueError("the network's first layer does not take the encoded positions")
        # Index of the first table row of each column's anchors and unit weights.
        # Plain lists: slicing a Sequential builds a new module on every call.
        self._rest = {m: list(m.body)[1:] for m in self._members}
        self._score_rows = np.arange(columns, dtype=np.int64)
        self._anchor_base = self._score_rows * bins + columns

    def _current_tables(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        firsts: list[nn.Linear] = [m.body[0] for m in self._members]  # type: ignore[misc]
        key = tuple(v for f in firsts for v in (id(f.weight), f.weight._version, f.bias._version))
        if key != self._key:
            with torch.no_grad():
                self._tables = [
                    (_fused_table(f, self.columns, self.bins), f.bias.detach().clone())
                    for f in firsts
                ]
            self._key = key
        return self._tables

    def bags(self, positions: np.ndarray, reference_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Table indices and weights (n × 3m each) of positions u (n × m, in [0, 1]; NaN =
        missing, whose code is all zeros: its three weights are 0)."""
        positions, missing = split_missing(positions)
        n, m = positions.shape
        indices = np.empty((n, 3, m), dtype=np.int64)
        weights = np.empty((n, 3, m), dtype=np.float32)
        # Exactly the dense code's float32 arithmetic: s = u·B, unit k = min(⌊s⌋, B−1).
        s = positions.astype(np.float32) * np.float32(self.bins)
        k = np.minimum(np.floor(s), np.float32(self.bins - 1))
        np.subtract(s, k, out=weights[:, 2])
        indices[:, 0] = self._score_rows
        np.add(k.astype(np.int64), self._anchor_base, out=indices[:, 1])
        np.add(indices[:, 1], self.columns * self.bins, out=indices[:, 2])
        weights[:, 0] = encode_positions(positions, 0, reference_rows)  # the normal scores
        weights[:, 1] = 1.0
        if missing is not None:
            weights *= ~missing[:, None, :]
        return torch.from_numpy(indices.reshape(n, 3 * m)), torch.from_numpy(
            weights.reshape(n, 3 * m)
        )

    @torch.inference_mode()
    def probabilities(self, positions: np.ndarray, reference_rows: int) -> np.ndarray:
        """Class probabilities (n × classes, float32) of positions u."""
        indices, weights = self.bags(positions, reference_rows)
        logits = []
        for member, (table, bias) in zip(self._members, self._current_tables(), strict=True):
            hidden = nn.functional.embedding_bag(
                indices, table, mode="sum", per_sample_weights=weights
            )
            hidden += bias
            for layer in self._rest[member]:
                hidden = _evaluate(layer, hidden)
            logits.append(nn.functional.linear(hidden, member.head.weight, member.head.bias))
        return torch.softmax(FaultEnsemble.combine(logits), dim=1).numpy()


def _evaluate(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """One layer of a member's body in inference mode, without the module-call overhead (which
    is most of a single incident's cost): dropout is the identity, as in ``eval()``."""
    if isinstance(layer, nn.Linear):
        return nn.functional.linear(inputs, layer.weight, layer.bias)
    if isinstance(layer, nn.GELU):
        return nn.functional.gelu(inputs, approximate=layer.approximate)
    if isinstance(layer, nn.Dropout):
        return inputs
    return layer(inputs)
