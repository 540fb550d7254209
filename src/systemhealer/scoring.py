"""Batch scoring: a file of incidents in, a file of diagnoses out."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from systemhealer.config import Settings
from systemhealer.data import PREDICTION_COLUMNS, SAMPLE_ID, feature_matrix, sample_ids, write_table
from systemhealer.diagnoser import FaultDiagnoser
from systemhealer.features import DeploymentStats
from systemhealer.validation import require_valid, validate_frame


@dataclass(frozen=True)
class ScoringSummary:
    """What a scoring job did."""

    rows: int
    output: str
    class_counts: dict[str, int]
    deployment: str


def diagnose_frame(
    diagnoser: FaultDiagnoser,
    incidents: pd.DataFrame,
    deployment: DeploymentStats | None = None,
    id_offset: int = 0,
) -> pd.DataFrame:
    """Validated incidents → the prediction columns, ``sample_id`` first."""
    diagnoses = diagnoser.diagnose(feature_matrix(incidents), deployment)
    diagnoses.insert(0, SAMPLE_ID, sample_ids(incidents, offset=id_offset).to_numpy())
    return diagnoses[list(PREDICTION_COLUMNS)]


def atomic_write(frame: pd.DataFrame, output: Path) -> None:
    """Write to a temporary file beside ``output``, then rename: never a half-written result."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=output.suffix, dir=output.parent)
    os.close(fd)
    try:
        write_table(frame, Path(tmp))
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def score_file(
    path: Path,
    output: Path,
    diagnoser: FaultDiagnoser,
    settings: Settings,
    deployment: DeploymentStats | None = None,
) -> ScoringSummary:
    """Validate and score a whole file of incidents; write the diagnoses atomically."""
    from systemhealer.data import read_incidents

    raw = read_incidents(path)
    report, frame = validate_frame(raw, str(path), settings.data, require_label=False)
    require_valid(report)
    diagnoses = diagnose_frame(diagnoser, frame, deployment)
    atomic_write(diagnoses, output)
    counts = diagnoses["predicted_label"].value_counts().sort_index()
    return ScoringSummary(
        rows=len(diagnoses),
        output=str(output),
        class_counts={str(k): int(v) for k, v in counts.items()},
        deployment=deployment.name if deployment else "training",
    )
