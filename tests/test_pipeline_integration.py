"""End to end through the real Prefect flow, MLflow registry and gate, on a small sample."""

from __future__ import annotations

import pandas as pd
import pytest

from systemhealer import scoring, tracking
from systemhealer.config import load_settings
from systemhealer.data import PREDICTION_COLUMNS

pytestmark = pytest.mark.integration


def test_first_training_registers_a_champion(trained_state) -> None:
    settings = load_settings()
    summary = trained_state.summary
    assert summary["promoted"] is True
    assert summary["gate_reason"] == "no champion yet"
    champion = tracking.champion(settings)
    assert champion is not None and champion.version == summary["model_version"]
    assert champion.tags["gate"] == "promoted"
    assert 0.3 < summary["eval_macro_f1"] <= 1.0
    metrics = tracking.run_metrics(settings, summary["run_id"])
    assert {"eval_macro_f1", "eval_accuracy", "train_loss", "val_loss", "val_macro_f1"} <= set(
        metrics
    )


def test_predict_with_the_champion(trained_state, tmp_path, unlabelled_frame) -> None:
    settings = load_settings()
    diagnoser, _ = tracking.load_diagnoser(settings)
    source = tmp_path / "incidents.csv"
    unlabelled_frame.head(300).to_csv(source, index=False)
    summary = scoring.score_file(source, tmp_path / "out.csv", diagnoser, settings)
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == list(PREDICTION_COLUMNS)
    assert len(out) == summary.rows == 300
    assert out["sample_id"].tolist() == unlabelled_frame["sample_id"].head(300).tolist()
    probabilities = out[[c for c in out.columns if c.startswith("proba_")]].to_numpy()
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-5
    assert (out["confidence"] == probabilities.max(axis=1)).all()
