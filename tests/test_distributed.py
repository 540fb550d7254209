"""`systemhealer train --nproc 2`: DistributedDataParallel on gloo through torchrun, one MLflow
run logged by rank 0 with the metrics of a single-process run."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from systemhealer import distributed, tracking
from systemhealer.config import load_settings

pytestmark = pytest.mark.integration


def test_two_process_training_logs_one_run_with_the_single_process_metrics(
    trained_state, small_training_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from prefect.settings import PREFECT_API_URL

    single = load_settings()
    single_metrics = set(tracking.run_metrics(single, str(trained_state.summary["run_id"])))
    # A state folder of its own (the session's champion stays as it is), the session's Prefect
    # server, and few epochs.
    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
    monkeypatch.setenv("SYSTEMHEALER_TRAINING__MAX_EPOCHS", "4")

    outcome = distributed.launch(small_training_csv, None, nproc=2, show_progress=False)

    assert outcome["promoted"] is True and outcome["model_version"] == "1"
    assert 0.2 < outcome["eval_macro_f1"] <= 1.0
    settings = load_settings()
    tracking.configure(settings)
    runs = mlflow.search_runs(experiment_names=[settings.registry.experiment_name])
    assert len(runs) == 1  # rank 1 logged nothing
    assert set(tracking.run_metrics(settings, outcome["run_id"])) == single_metrics
    _, version = tracking.load_diagnoser(settings)
    assert version is not None and version.version == "1"


def test_a_missing_file_fails_before_any_process_starts(tmp_path: Path) -> None:
    from systemhealer.errors import DataValidationError

    with pytest.raises(DataValidationError, match="file not found"):
        distributed.launch(tmp_path / "nowhere.csv", None, nproc=2, show_progress=False)
