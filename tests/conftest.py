"""Shared fixtures: tiny real data, a private state folder, one small model trained once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_FILE = REPO / "data" / "fault_kpi_train.csv.gz"
UNLABELLED_FILE = REPO / "data" / "fault_kpi_unlabelled_2000.csv.gz"

# Small and quick: the tests check behaviour, not model quality.
FAST_TRAINING_ENV = {
    "SYSTEMHEALER_TRAINING__MAX_EPOCHS": "12",
    "SYSTEMHEALER_TRAINING__PATIENCE": "5",
    "SYSTEMHEALER_TRAINING__HIDDEN_SIZES": "[64, 32]",
    "SYSTEMHEALER_TRAINING__TORCH_THREADS": "1",
    "SYSTEMHEALER_TRAINING__ENSEMBLE_SIZE": "1",
    "SYSTEMHEALER_TRAINING__TEACHER_TREES": "50",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
}


@pytest.fixture(scope="session")
def training_frame() -> pd.DataFrame:
    """The shipped training file."""
    return pd.read_csv(TRAIN_FILE)


@pytest.fixture(scope="session")
def small_training_frame(training_frame: pd.DataFrame) -> pd.DataFrame:
    """About 900 incidents with every fault class, sampled reproducibly."""
    sample = training_frame.groupby("label").sample(n=150, random_state=0)
    return sample.sort_values("sample_id").reset_index(drop=True)


@pytest.fixture(scope="session")
def unlabelled_frame() -> pd.DataFrame:
    return pd.read_csv(UNLABELLED_FILE)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def small_training_csv(session_dir: Path, small_training_frame: pd.DataFrame) -> Path:
    path = session_dir / "small_train.csv"
    small_training_frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test session gets its own state folder and fast training settings."""
    home = tmp_path_factory.mktemp("systemhealer-home")
    saved = dict(os.environ)
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "SYSTEMHEALER_CONFIG"):
        os.environ.pop(key, None)
    os.environ.update(FAST_TRAINING_ENV)
    os.environ["SYSTEMHEALER_HOME"] = str(home)
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    try:
        yield home
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def prefect_harness(isolated_environment: Path) -> Iterator[None]:
    """A temporary Prefect server for the flows run in this session."""
    from systemhealer.config import load_settings
    from systemhealer.orchestration import prepare_prefect

    prepare_prefect(load_settings())
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@dataclass(frozen=True)
class TrainedState:
    """A state folder holding one champion trained on the small sample."""

    home: Path
    summary: dict[str, object]
    train_csv: Path


@pytest.fixture(scope="session")
def trained_state(
    prefect_harness: None, isolated_environment: Path, small_training_csv: Path
) -> TrainedState:
    """Train once per session through the real Prefect flow into the session's state folder."""
    from flows.training import training_flow

    summary = training_flow(str(small_training_csv), show_progress=False)
    return TrainedState(home=isolated_environment, summary=summary, train_csv=small_training_csv)
