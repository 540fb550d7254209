"""The fault diagnoser: the fitted preprocessing and the network, saved and loaded together.

Raw KPI features go in, diagnoses come out; no caller preprocesses by hand. Saved as plain
JSON plus a torch state dict loaded with ``weights_only=True``: never an arbitrary pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from systemhealer.config import FAULT_CLASSES
from systemhealer.data import KPI_FEATURES, PROBA_COLUMNS
from systemhealer.errors import ModelNotFoundError
from systemhealer.features import DeploymentStats, KpiPreprocessor, encode_positions
from systemhealer.inference import FusedNetwork
from systemhealer.label_shift import class_response, correct_probabilities, mix_from_response
from systemhealer.model import FaultEnsemble
from systemhealer.validation import DataProfile

_PREPROCESSOR = "preprocessor.json"
_NETWORK = "network.pt"
_META = "model.json"
# Bumped when the saved form changes; folders of other formats are refused with a clear message.
# Format 3: missing values give no evidence (KpiPreprocessor.missing_values); SystemHealer that
# reads only format 2 would read them as the median, so it must refuse such a model.
FORMAT_VERSION = 3
READABLE_FORMATS = (2, 3)
# Incidents of a reference window the class-mix estimate averages over (at most).
MIX_ESTIMATE_ROWS = 5_000


@dataclass
class FaultDiagnoser:
    """Preprocessing + MLP + the training profile used for drift checks."""

    preprocessor: KpiPreprocessor
    network: FaultEnsemble
    profile: DataProfile | None = None
    metadata: dict[str, Any] | None = None
    # Column c: the network's average probabilities over training incidents of fault class c
    # (NaN for a class absent from training); what class-mix estimation compares against.
    class_response: np.ndarray | None = None
    # Statistics measured for calibrated deployments, keyed by (name, file version).
    deployment_cache: dict[tuple[str, int], DeploymentStats] = field(
        default_factory=dict, repr=False
    )

    # The inference form of ``network`` (see systemhealer.inference), built on first use.
    _fused: FusedNetwork | None = field(default=None, init=False, repr=False, compare=False)

    def probabilities(
        self, features: pd.DataFrame, deployment: DeploymentStats | None = None
    ) -> np.ndarray:
        """Class probabilities, one row per incident."""
        return self.probabilities_of_values(self.preprocessor.raw_values(features), deployment)

    @cached_property
    def kpi_positions(self) -> np.ndarray:
        """Where the model's columns are in ``KPI_FEATURES`` (for callers holding all KPIs)."""
        index = {name: j for j, name in enumerate(KPI_FEATURES)}
        return np.asarray([index[c] for c in self.preprocessor.columns], dtype=np.intp)

    @torch.inference_mode()
    def probabilities_of_values(
        self, values: np.ndarray, deployment: DeploymentStats | None = None
    ) -> np.ndarray:
        """Class probabilities of raw values already in the model's columns (float64, n × m,
        NaN = missing): what :meth:`probabilities` runs after selecting the columns."""
        if len(values) == 0:
            return np.zeros((0, len(FAULT_CLASSES)), dtype=np.float32)
        stats = self.preprocessor.statistics(deployment)
        positions = self.preprocessor.positions(values, stats)
        if self.preprocessor.ple_bins > 0:
            probabilities = self._fused_network().probabilities(positions, stats.rows)
        else:  # no thermometer code: the network's input is just the normal scores
            self.network.eval()
            inputs = encode_positions(positions, 0, stats.rows)
            probabilities = torch.softmax(self.network(torch.from_numpy(inputs)), dim=1).numpy()
        if deployment is not None and deployment.class_mix is not None:
            probabilities = correct_probabilities(probabilities, deployment.class_mix)
        return probabilities

    def calibrate(self, name: str, reference: pd.DataFrame) -> DeploymentStats:
        """Statistics of deployment ``name`` from a reference window of its incidents, read at
        the deployment's estimated class mix (see :func:`read_at_class_mix`)."""
        return read_at_class_mix(self, name, reference)

    @property
    def trained_classes(self) -> frozenset[int] | None:
        """The fault classes this model was trained on (None: not recorded with the model)."""
        if self.class_response is None:
            return None
        seen = ~np.isnan(self.class_response).all(axis=0)
        return frozenset(int(c) for c in np.flatnonzero(seen))

    def measure_class_response(self, features: pd.DataFrame, labels: np.ndarray) -> None:
        """Record the network's average output per fault class over (training) incidents."""
        self.class_response = class_response(self.probabilities(features), labels)

    def _fused_network(self) -> FusedNetwork:
        fused = self._fused
        if fused is None or fused.network is not self.network:
            fused = FusedNetwork(
                self.network, len(self.preprocessor.columns), self.preprocessor.ple_bins
            )
            self._fused = fused
        return fused

    def diagnose(
        self, features: pd.DataFrame, deployment: DeploymentStats | None = None
    ) -> pd.DataFrame:
        """``predicted_label``, ``confidence``, ``proba_0…5`` per incident."""
        return diagnoses_frame(self.probabilities(features, deployment))

    def kpis_read(self, features: pd.DataFrame) -> np.ndarray:
        """Per incident, how many of the model's KPIs have a value (0: no evidence at all)."""
        return (~np.isnan(self.preprocessor.raw_values(features))).sum(axis=1)

    @torch.inference_mode()
    def embed(
        self, features: pd.DataFrame, deployment: DeploymentStats | None = None
    ) -> np.ndarray:
        """Penultimate-layer activations per incident."""
        self.network.eval()
        inputs = torch.from_numpy(self.preprocessor.transform(features, deployment))
        return self.network.embed(inputs).numpy()

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / _PREPROCESSOR).write_text(json.dumps(self.preprocessor.to_dict()))
        torch.save(self.network.state_dict(), folder / _NETWORK)
        meta = {
            # Models that read missing values as the median stay readable by older versions.
            "format": FORMAT_VERSION if self.preprocessor.missing_values != "median" else 2,
            "architecture": self.network.architecture(),
            "profile": self.profile.to_dict() if self.profile else None,
            "metadata": self.metadata or {},
            "class_response": None
            if self.class_response is None
            else [[None if np.isnan(v) else float(v) for v in row] for row in self.class_response],
        }
        (folder / _META).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> FaultDiagnoser:
        folder = Path(folder)
        meta = json.loads((folder / _META).read_text())
        if meta.get("format") not in READABLE_FORMATS:
            raise ModelNotFoundError(
                f"model saved in format {meta.get('format', 1)}; this SystemHealer reads formats "
                f"{', '.join(map(str, READABLE_FORMATS))}: retrain it"
            )
        arch = meta["architecture"]
        network = FaultEnsemble.from_architecture(arch)
        network.load_state_dict(torch.load(folder / _NETWORK, weights_only=True))
        network.eval()
        preprocessor = KpiPreprocessor.from_dict(json.loads((folder / _PREPROCESSOR).read_text()))
        profile = DataProfile.from_dict(meta["profile"]) if meta.get("profile") else None
        response = meta.get("class_response")
        return cls(
            preprocessor,
            network,
            profile,
            meta.get("metadata") or {},
            None if response is None else np.asarray(response, dtype=np.float64),
        )


class MixAwareModel(Protocol):
    """What :func:`read_at_class_mix` needs of a model (the MLP, or the sweep's tree baseline)."""

    preprocessor: KpiPreprocessor
    class_response: np.ndarray | None

    def probabilities(
        self, features: pd.DataFrame, deployment: DeploymentStats | None = None
    ) -> np.ndarray: ...


def read_at_class_mix(
    model: MixAwareModel, name: str, reference: pd.DataFrame, iterations: int = 40
) -> DeploymentStats:
    """A deployment's statistics from a reference window, read at its estimated class mix.

    The mix and the statistics depend on each other: the model's outputs over the window
    estimate the mix (:func:`~systemhealer.label_shift.mix_from_response`), and the mix decides
    how the window's quantiles line up with the training ones
    (:meth:`KpiPreprocessor.for_class_mix`). Starting from a balanced mix, the two are
    alternated until the mix settles. Each round moves twice as far as the estimate suggests
    (over-relaxation: the plain alternation converges slowly on strongly skewed windows; a
    factor of 3 oscillates). A model without per-class statistics gets the plain quantiles (a
    balanced mix assumed).
    """
    pre = model.preprocessor
    stats = pre.measure_deployment(name, reference)
    if model.class_response is None or pre.class_cdfs is None:
        return stats
    window = reference
    if len(window) > MIX_ESTIMATE_ROWS:  # plenty for an average; keeps calibration quick
        rows = np.random.default_rng(0).choice(len(window), MIX_ESTIMATE_ROWS, replace=False)
        window = window.iloc[np.sort(rows)]
    known = ~np.isnan(model.class_response[0])
    mix = known / known.sum()
    for _ in range(iterations):
        read = pre.for_class_mix(stats, mix)
        mean = model.probabilities(window, read).mean(axis=0)
        updated = mix_from_response(mean, model.class_response)
        if np.abs(updated - mix).max() < 1e-3:
            mix = updated
            break
        mix = np.clip(mix + 2.0 * (updated - mix), 0.0, None)
        mix = mix / mix.sum()
    return pre.for_class_mix(stats, mix)


def diagnoses_frame(probabilities: np.ndarray) -> pd.DataFrame:
    """Probabilities → the diagnosis columns."""
    frame = pd.DataFrame(probabilities.astype(np.float64), columns=list(PROBA_COLUMNS))
    frame.insert(0, "confidence", probabilities.max(axis=1).astype(np.float64))
    frame.insert(0, "predicted_label", np.asarray(FAULT_CLASSES)[probabilities.argmax(axis=1)])
    return frame
