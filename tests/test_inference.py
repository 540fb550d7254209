"""The fused first layer used for inference equals the dense network on the encoded input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from systemhealer.config import PreprocessingSettings
from systemhealer.data import KPI_FEATURES
from systemhealer.diagnoser import FaultDiagnoser
from systemhealer.features import KpiPreprocessor, encode_positions
from systemhealer.inference import FusedNetwork
from systemhealer.model import FaultEnsemble, FaultMLP


def _network(columns: int, bins: int, members: int, seed: int = 0) -> FaultEnsemble:
    torch.manual_seed(seed)
    return FaultEnsemble(
        [FaultMLP(columns * (bins + 1), (32, 16), 6, dropout=0.3) for _ in range(members)]
    ).eval()


def _dense(network: FaultEnsemble, u: np.ndarray, bins: int, rows: int) -> np.ndarray:
    with torch.inference_mode():
        inputs = torch.from_numpy(encode_positions(u, bins, rows))
        return torch.softmax(network(inputs), dim=1).numpy()


def _positions(rng: np.random.Generator, n: int, m: int, bins: int) -> np.ndarray:
    u = rng.uniform(0, 1, (n, m))
    # The edges of the code: 0, 1, exact bin boundaries, just around them, the median.
    edges = np.array([0.0, 1.0, 0.5, 1 / bins, 1 - 1 / bins, np.nextafter(1.0, 0), 1e-9])
    u[: len(edges)] = edges[:, None]
    u[len(edges) : len(edges) + bins + 1] = (np.arange(bins + 1) / bins)[:, None]
    return u


@pytest.mark.parametrize(("bins", "members"), [(16, 1), (16, 3), (4, 2), (1, 1)])
def test_fused_equals_dense(bins: int, members: int) -> None:
    rng = np.random.default_rng(bins * 10 + members)
    columns = 7
    network = _network(columns, bins, members)
    with torch.no_grad():  # trained-looking weights: larger than at initialisation
        for member in network.members:
            member.body[0].weight.mul_(4.0)
    u = _positions(rng, 500, columns, bins)
    dense = _dense(network, u, bins, rows=300)
    fused = FusedNetwork(network, columns, bins).probabilities(u, reference_rows=300)
    assert fused.dtype == np.float32 and fused.shape == dense.shape
    np.testing.assert_allclose(fused, dense, atol=1e-5, rtol=0)
    assert (fused.argmax(1) == dense.argmax(1)).mean() > 0.99


def test_fused_follows_weight_updates() -> None:
    network = _network(3, 8, 1)
    fused = FusedNetwork(network, 3, 8)
    u = np.random.default_rng(1).uniform(size=(50, 3))
    before = fused.probabilities(u, 100)
    with torch.no_grad():
        network.members[0].body[0].weight.add_(0.5)  # an optimiser step: in place
    after = fused.probabilities(u, 100)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _dense(network, u, 8, 100), atol=1e-5, rtol=0)


def test_fused_refuses_a_network_of_other_inputs() -> None:
    with pytest.raises(ValueError, match="first layer"):
        FusedNetwork(_network(3, 8, 1), 4, 8)


def test_diagnoser_paths_agree(small_training_frame: pd.DataFrame) -> None:
    """Frames, values in the model's columns and whole KPI matrices give the same scores, equal
    to the dense network on the preprocessor's encoded input."""
    features = small_training_frame[list(KPI_FEATURES)]
    preprocessor = KpiPreprocessor.fit(
        features, small_training_frame["label"].to_numpy(), PreprocessingSettings()
    )
    torch.manual_seed(0)
    network = FaultEnsemble([FaultMLP(preprocessor.n_inputs, (64, 32), 6, 0.1)]).eval()
    diagnoser = FaultDiagnoser(preprocessor, network)
    with torch.inference_mode():
        dense = torch.softmax(network(torch.from_numpy(preprocessor.transform(features))), 1)
    from_frame = diagnoser.probabilities(features)
    kpis = features.to_numpy(dtype=np.float64)
    from_kpis = diagnoser.probabilities_of_values(kpis[:, diagnoser.kpi_positions])
    np.testing.assert_allclose(from_frame, dense.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(from_frame, from_kpis)
    # Row by row as the service does: the same numbers as the whole batch.
    one_by_one = np.concatenate([diagnoser.probabilities(features.iloc[[i]]) for i in range(20)])
    np.testing.assert_allclose(one_by_one, from_frame[:20], atol=1e-6, rtol=0)
