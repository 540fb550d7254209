"""The Great Expectations contract on the first rows of a streamed file: in a thread, or in a
child process for one-off jobs (a thread again inside daemonic workers); it agrees with the numpy
row checks, is stopped when a job ends early, and a disagreement or a dead check stops the job."""

from __future__ import annotations

import multiprocessing.process
import os
import signal
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from systemhealer import scoring
from systemhealer.config import load_settings
from systemhealer.data import KPI_FEATURES
from systemhealer.errors import SystemHealerError
from systemhealer.streaming import RawChunk, open_source
from systemhealer.validation import ValidationIssue, ValidationReport


@pytest.fixture(scope="module")
def flawed_file(tmp_path_factory: pytest.TempPathFactory, unlabelled_frame: pd.DataFrame) -> Path:
    """50 incidents with an infinite value and a text cell in their first rows."""
    frame = unlabelled_frame.head(50).reset_index(drop=True)
    frame[KPI_FEATURES[3]] = frame[KPI_FEATURES[3]].astype(object)
    frame.loc[2, KPI_FEATURES[3]] = "broken"
    frame.loc[5, KPI_FEATURES[7]] = np.inf
    path = tmp_path_factory.mktemp("contract") / "incidents.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def first_chunk(flawed_file: Path) -> RawChunk:
    return next(open_source(flawed_file).chunks(100))


def run_contract(chunk: RawChunk, in_child: bool = False) -> dict:
    contract = scoring.ContractSample(40, load_settings().data, "incidents.csv", in_child)
    contract.offer(chunk)
    result = contract.result()
    assert result is not None
    return result


def test_the_contract_runs_in_a_child_process_and_agrees_with_the_row_checks(
    first_chunk: RawChunk,
) -> None:
    contract = scoring.ContractSample(40, load_settings().data, "incidents.csv", in_child=True)
    contract.offer(first_chunk)
    assert contract._worker is not None and contract._worker.name == "systemhealer-contract"
    sample = contract._sample_file
    assert sample is not None and sample.exists()
    result = contract.result()
    assert not sample.exists()
    assert set(result) == {"rows", "blocking_issues", "warnings", "checks_run"}
    assert result["rows"] == 40
    assert result["blocking_issues"] == 2  # the text cell and the infinite value
    assert result["checks_run"] > 100
    assert not contract._worker.is_alive()


def test_in_a_thread_by_default_and_inside_daemonic_processes_with_the_same_result(
    first_chunk: RawChunk, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_child = run_contract(first_chunk, in_child=True)
    contract = scoring.ContractSample(40, load_settings().data, "incidents.csv")
    contract.offer(first_chunk)
    assert isinstance(contract._worker, scoring.threading.Thread)
    assert contract.result() == in_child
    monkeypatch.setattr(
        scoring.multiprocessing, "current_process", lambda: types.SimpleNamespace(daemon=True)
    )
    contract = scoring.ContractSample(40, load_settings().data, "incidents.csv", in_child=True)
    contract.offer(first_chunk)
    assert isinstance(contract._worker, scoring.threading.Thread)
    assert contract.result() == in_child


def test_small_chunks_do_not_shrink_the_sample(flawed_file: Path, first_chunk: RawChunk) -> None:
    """The sample spans chunks (typed ones and one read as text) until it has its rows; a
    file shorter than the sample is checked whole when the job ends."""
    whole = run_contract(first_chunk)
    for in_child in (False, True):  # the child gets the sample in an Arrow file
        contract = scoring.ContractSample(40, load_settings().data, "incidents.csv", in_child)
        for chunk in open_source(flawed_file).chunks(3):
            contract.offer(chunk)
        assert contract.result() == whole
    contract = scoring.ContractSample(500, load_settings().data, "incidents.csv")
    for chunk in open_source(flawed_file).chunks(7):
        contract.offer(chunk)
    assert contract._worker is None  # still collecting: the file has fewer rows
    assert contract.result()["rows"] == 50


def test_a_disagreement_between_the_contract_and_the_row_checks_stops_the_job(
    first_chunk: RawChunk, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stricter(frame: pd.DataFrame, source: str, settings: object, require_label: bool):  # type: ignore[no-untyped-def]
        report = ValidationReport(source=source, rows=len(frame), columns=frame.shape[1])
        report.issues.append(ValidationIssue("range", "too large", True, KPI_FEATURES[0], count=1))
        return report, frame

    monkeypatch.setattr(scoring, "validate_frame", stricter)
    with pytest.raises(SystemHealerError, match="contract and the chunk checks disagree"):
        run_contract(first_chunk)


def test_closing_stops_a_contract_check_still_running(first_chunk: RawChunk) -> None:
    contract = scoring.ContractSample(40, load_settings().data, "incidents.csv", in_child=True)
    contract.offer(first_chunk)
    worker = contract._worker
    contract.close()  # the job failed: it does not wait for the check
    assert worker is not None and not worker.is_alive()
    assert not contract._sample_file.exists()  # type: ignore[union-attr]


def test_no_rows_no_check(first_chunk: RawChunk) -> None:
    contract = scoring.ContractSample(0, load_settings().data, "incidents.csv")
    contract.offer(first_chunk)
    assert contract.result() is None


def test_a_contract_check_that_dies_is_an_error_not_a_pass(first_chunk: RawChunk) -> None:
    contract = scoring.ContractSample(40, load_settings().data, "incidents.csv", in_child=True)
    contract.offer(first_chunk)
    worker = contract._worker
    assert isinstance(worker, multiprocessing.process.BaseProcess)
    os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
    with pytest.raises(SystemHealerError, match=r"stopped .*exit code -9"):
        contract.result()


def test_the_child_starts_before_the_sample_and_is_stopped_if_none_comes() -> None:
    # It imports GX while the job loads its model; a job that ends early does not leave it.
    contract = scoring.ContractSample(40, load_settings().data, "incidents.csv", in_child=True)
    worker = contract._worker
    assert isinstance(worker, multiprocessing.process.BaseProcess) and worker.is_alive()
    assert contract.result() is None  # no sample offered (a file without rows): no check
    worker.join(timeout=10)
    assert not worker.is_alive()


def test_a_child_that_died_before_the_sample_is_an_error(first_chunk: RawChunk) -> None:
    contract = scoring.ContractSample(40, load_settings().data, "incidents.csv", in_child=True)
    worker = contract._worker
    os.kill(worker.pid, signal.SIGKILL)  # type: ignore[union-attr, arg-type]
    worker.join(timeout=10)  # type: ignore[union-attr]
    contract.offer(first_chunk)  # the sample cannot be sent: no crash here
    with pytest.raises(SystemHealerError, match=r"stopped .*exit code -9"):
        contract.result()
    assert not contract._sample_file.exists()  # type: ignore[union-attr]
