"""The fused first layer used for inference equals the dense network on the encoded input."""

from __future__ import annotations

from dataclasses import replace

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
    # Missing values (an all-zero code), a whole row of them included.
    u[-1] = np.nan
    u[len(edges) + bins + 1 :][rng.random((n - len(edges) - bins - 1, m)) < 0.1] = np.nan
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
    assert np.isfinite(fused).all()
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


def test_per_class_statistics_survive_save_and_load(
    small_training_frame: pd.DataFrame, tmp_path
) -> None:
    """class_response / class_cdfs / class_observed round-trip, a class absent from training
    included; a model saved without them still loads and calibrates with plain quantiles."""
    frame = small_training_frame[small_training_frame["label"] != 5]  # class 5 absent
    features, labels = frame[list(KPI_FEATURES)], frame["label"].to_numpy()
    preprocessor = KpiPreprocessor.fit(features, labels, PreprocessingSettings())
    torch.manual_seed(0)
    network = FaultEnsemble([FaultMLP(preprocessor.n_inputs, (16,), 6, 0.1)]).eval()
    diagnoser = FaultDiagnoser(preprocessor, network)
    diagnoser.measure_class_response(features, labels)
    assert np.isnan(diagnoser.class_response[:, 5]).all()
    assert (
        np.isnan(preprocessor.class_cdfs[5]).all() and (preprocessor.class_observed[5] == 0).all()
    )
    again = FaultDiagnoser.load(diagnoser.save(tmp_path / "model"))
    np.testing.assert_allclose(again.class_response, diagnoser.class_response, equal_nan=True)
    np.testing.assert_allclose(
        again.preprocessor.class_cdfs, preprocessor.class_cdfs, atol=1e-6, equal_nan=True
    )
    np.testing.assert_allclose(
        again.preprocessor.class_observed, preprocessor.class_observed, atol=1e-6
    )
    read = again.calibrate("site", features.iloc[:300])
    assert read.reference_mix is not None and read.reference_mix[5] == 0
    # An older model: no per-class statistics → the window's own quantiles, no mix.
    older = FaultDiagnoser(replace(preprocessor, class_cdfs=None, class_observed=None), network)
    plain = older.calibrate("site", features.iloc[:300])
    assert plain.reference_mix is None and plain.class_mix is None
    np.testing.assert_array_equal(
        plain.quantiles, preprocessor.measure_deployment("site", features.iloc[:300]).quantiles
    )


def test_the_saved_format_says_how_missing_values_are_read(
    small_training_frame: pd.DataFrame, tmp_path
) -> None:
    """A model whose missing values give no evidence is saved in format 3, which SystemHealer
    versions reading only format 2 refuse (they would read missing values as the median); a
    median-reading model stays in format 2. Unknown formats and readings are refused."""
    import json

    from systemhealer.errors import ModelNotFoundError

    features = small_training_frame[list(KPI_FEATURES)]
    labels = small_training_frame["label"].to_numpy()
    preprocessor = KpiPreprocessor.fit(features, labels, PreprocessingSettings())
    torch.manual_seed(0)
    network = FaultEnsemble([FaultMLP(preprocessor.n_inputs, (16,), 6, 0.1)]).eval()
    formats = {}
    for reading in ("no_evidence", "median"):
        diagnoser = FaultDiagnoser(replace(preprocessor, missing_values=reading), network)
        folder = diagnoser.save(tmp_path / reading)
        formats[reading] = json.loads((folder / "model.json").read_text())["format"]
        again = FaultDiagnoser.load(folder)
        assert again.preprocessor.missing_values == reading
        np.testing.assert_array_equal(
            again.probabilities(features), diagnoser.probabilities(features)
        )
    assert formats == {"no_evidence": 3, "median": 2}

    meta = tmp_path / "median" / "model.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": 4}))
    with pytest.raises(ModelNotFoundError, match="format 4"):
        FaultDiagnoser.load(tmp_path / "median")
    saved = tmp_path / "no_evidence" / "preprocessor.json"
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "missing_values": "zero"}))
    with pytest.raises(ValueError, match="missing values"):
        FaultDiagnoser.load(tmp_path / "no_evidence")
