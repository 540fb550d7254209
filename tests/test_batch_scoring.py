"""Batch scoring with the session's champion: chunked == one shot, bad rows, atomic output,
bounded memory, partitions, the Prefect flow on threads and on a local Dask cluster."""

from __future__ import annotations

import gzip
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from systemhealer import scoring
from systemhealer.config import load_settings
from systemhealer.data import PREDICTION_COLUMNS, PROBA_COLUMNS, SAMPLE_ID
from systemhealer.errors import DataValidationError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def champion(trained_state) -> scoring.ScoringModel:  # type: ignore[no-untyped-def]
    return scoring.model_loader(load_settings())()


@pytest.fixture(scope="module")
def one_shot(champion: scoring.ScoringModel, unlabelled_frame: pd.DataFrame) -> pd.DataFrame:
    """The reference: the whole file diagnosed in one call."""
    return scoring.diagnose_frame(champion.diagnoser, unlabelled_frame)


def same_diagnoses(result: pd.DataFrame, reference: pd.DataFrame, exact: bool) -> None:
    assert list(result.columns) == list(PREDICTION_COLUMNS)
    assert result[SAMPLE_ID].tolist() == reference[SAMPLE_ID].tolist()
    assert (result["predicted_label"].to_numpy() == reference["predicted_label"].to_numpy()).all()
    if exact:
        pd.testing.assert_frame_equal(
            result.reset_index(drop=True), reference.reset_index(drop=True)
        )
    else:  # tiny matrix products may round differently in the last bits
        diff = result[list(PROBA_COLUMNS)].to_numpy() - reference[list(PROBA_COLUMNS)].to_numpy()
        assert np.abs(diff).max() < 1e-6


def bad_lines_csv(frame: pd.DataFrame, path: Path) -> Path:
    """``frame`` as CSV with a text cell at data row 130, an infinity at 260, a short row at 390."""
    lines = frame.to_csv(index=False).splitlines()
    cells = lines[130].split(",")
    cells[4] = "n/a?"
    lines[130] = ",".join(cells)
    cells = lines[260].split(",")
    cells[7] = "inf"
    lines[260] = ",".join(cells)
    lines[390] = ",".join(lines[390].split(",")[:50])
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_boolean_kpi_column_is_not_read_as_numbers(
    champion: scoring.ScoringModel, unlabelled_frame: pd.DataFrame, tmp_path: Path
) -> None:
    """True/False are no KPI values in a Parquet file either, as validation and the web say."""
    frame = unlabelled_frame.head(20).assign(feature5=[True, False] * 10)
    frame.to_parquet(tmp_path / "flags.parquet", index=False)
    # Every row is bad: a failed job, not an empty result; the side file says why.
    with pytest.raises(DataValidationError, match="all 20 rows are bad, none was diagnosed"):
        scoring.stream_file(
            tmp_path / "flags.parquet", tmp_path / "out.csv", champion, load_settings(), "skip"
        )
    assert not (tmp_path / "out.csv").exists()
    reasons = pd.read_csv(scoring.bad_rows_path(tmp_path / "out.csv"))["reason"]
    assert reasons.str.contains("'feature5' is not a number").all()
    # The same when the file is scored in partitions.
    staging = tmp_path / "parts"
    staging.mkdir()
    parts = [
        scoring.score_partition(p, staging, champion, load_settings(), "skip")
        for p in scoring.plan_partitions(tmp_path / "flags.parquet", 2)
    ]
    with pytest.raises(DataValidationError, match="all 20 rows are bad"):
        scoring.merge_partitions(
            tmp_path / "flags.parquet", tmp_path / "merged.csv", parts, champion, "skip"
        )
    assert not (tmp_path / "merged.csv").exists()


def test_streamed_output_equals_the_one_shot_path(
    champion: scoring.ScoringModel,
    one_shot: pd.DataFrame,
    unlabelled_frame: pd.DataFrame,
    tmp_path: Path,
) -> None:
    from tests.conftest import UNLABELLED_FILE

    settings = load_settings()
    csv = tmp_path / "incidents.csv"
    unlabelled_frame.to_csv(csv, index=False)
    parquet = tmp_path / "incidents.parquet"
    unlabelled_frame.to_parquet(parquet, index=False, row_group_size=700)
    for source in (UNLABELLED_FILE, csv, parquet):
        for chunk_rows in (None, 450):
            for output in (tmp_path / "out.csv", tmp_path / "out.parquet"):
                summary = scoring.stream_file(
                    source, output, champion, settings, chunk_rows=chunk_rows
                )
                assert summary.rows == len(unlabelled_frame) and summary.bad_rows == 0
                result = pd.read_csv(output) if output.suffix == ".csv" else pd.read_parquet(output)
                same_diagnoses(result, one_shot, exact=chunk_rows is None)
    # And the files themselves: the one-shot writer and the streaming writer agree on values.
    scoring.score_file(csv, tmp_path / "one_shot.csv", champion.diagnoser, settings)
    scoring.stream_file(csv, tmp_path / "streamed.csv", champion, settings)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "streamed.csv"), pd.read_csv(tmp_path / "one_shot.csv")
    )
    # Tiny chunks, and no sample_id column: ids are the row numbers across chunk boundaries.
    head = unlabelled_frame.head(60).drop(columns=[SAMPLE_ID])
    head.to_csv(tmp_path / "no_ids.csv", index=False)
    scoring.stream_file(
        tmp_path / "no_ids.csv", tmp_path / "no_ids_out.csv", champion, settings, chunk_rows=7
    )
    reference = scoring.diagnose_frame(champion.diagnoser, head)
    same_diagnoses(pd.read_csv(tmp_path / "no_ids_out.csv"), reference, exact=False)


def test_bad_rows_fail_with_a_clear_message_or_go_to_a_side_file(
    champion: scoring.ScoringModel, unlabelled_frame: pd.DataFrame, tmp_path: Path
) -> None:
    settings = load_settings()
    frame = unlabelled_frame.head(500)
    source = bad_lines_csv(frame, tmp_path / "incidents.csv")
    output = tmp_path / "out.csv"
    with pytest.raises(DataValidationError, match=r"row 130 \(sample_id 129\): 'feature3' is not"):
        scoring.stream_file(source, output, champion, settings, chunk_rows=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incidents.csv"]  # nothing left behind

    summary = scoring.stream_file(
        source, output, champion, settings, on_bad_rows="skip", chunk_rows=100
    )
    assert (summary.rows, summary.bad_rows) == (497, 3)
    bad = pd.read_csv(summary.bad_rows_file)
    assert bad["row"].tolist() == [130, 260, 390]  # 1-based data rows, as in the file
    assert "'feature3' is not a number ('n/a?')" in bad["reason"][0]
    assert "'feature6' is infinite" in bad["reason"][1]
    assert "has 50 fields, expected 108" in bad["reason"][2]
    assert bad[SAMPLE_ID].tolist()[:2] == [129, 259]
    result = pd.read_csv(output)
    good = frame.drop(index=[129, 259, 389])
    same_diagnoses(result, scoring.diagnose_frame(champion.diagnoser, good), exact=False)
    # A clean job still leaves a side file, with the header only: no stale list of bad rows.
    clean = tmp_path / "clean.csv"
    frame.head(50).to_csv(clean, index=False)
    summary = scoring.stream_file(clean, output, champion, settings, on_bad_rows="skip")
    assert summary.bad_rows == 0 and len(pd.read_csv(summary.bad_rows_file)) == 0


class _FailingDiagnoser:
    """Scores like the champion, then fails at the third call: a job dying half-way."""

    def __init__(self, diagnoser) -> None:  # type: ignore[no-untyped-def]
        self.diagnoser, self.calls = diagnoser, 0

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        return getattr(self.diagnoser, name)

    def probabilities_of_values(self, values, deployment=None):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("worker lost")
        return self.diagnoser.probabilities_of_values(values, deployment)


def test_a_job_that_fails_half_way_leaves_the_earlier_result_untouched(
    champion: scoring.ScoringModel, unlabelled_frame: pd.DataFrame, tmp_path: Path
) -> None:
    source = tmp_path / "incidents.csv"
    unlabelled_frame.head(500).to_csv(source, index=False)
    output = tmp_path / "diagnoses.csv"
    output.write_text("yesterday's diagnoses\n")
    failing = scoring.ScoringModel(_FailingDiagnoser(champion.diagnoser))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="worker lost"):
        scoring.stream_file(
            source, output, failing, load_settings(), on_bad_rows="skip", chunk_rows=100
        )
    assert output.read_text() == "yesterday's diagnoses\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diagnoses.csv", "incidents.csv"]


# The peak is the process's own high-water mark (VmHWM): ru_maxrss would start from the size of
# the test process at the fork, and hide the child's own peak under it.
_MEASURE = """
import pickle, sys
from systemhealer import scoring
from systemhealer.config import load_settings
model = pickle.loads(open(sys.argv[1], "rb").read())
summary = scoring.stream_file(sys.argv[2], sys.argv[3], model, load_settings(), chunk_rows=2000)
peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(summary.rows, int(peak) // 1024)
"""


def test_peak_memory_does_not_grow_with_the_file(
    champion: scoring.ScoringModel, unlabelled_frame: pd.DataFrame, tmp_path: Path
) -> None:
    """Peak RSS of `predict`'s streaming path on 8k and 32k incidents (chunks of 2k): a path
    that held the file would need ~30 MB more per 10k rows for the raw values alone, and several
    times that for the network inputs."""
    model_file = tmp_path / "model.pkl"
    model_file.write_bytes(pickle.dumps(champion))
    table = pa.Table.from_pandas(unlabelled_frame, preserve_index=False)
    peaks = {}
    for rows in (8_000, 32_000):
        big = pa.concat_tables([table] * (rows // len(unlabelled_frame)))
        big = big.set_column(0, SAMPLE_ID, pa.array(np.arange(rows)))
        source = tmp_path / f"incidents_{rows}.csv"
        pacsv.write_csv(big, source)
        done = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(model_file), str(source), str(tmp_path / "o.csv")],
            capture_output=True,
            text=True,
            check=True,
            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        )
        scored, peaks[rows] = map(int, done.stdout.split()[-2:])
        assert scored == rows
    assert peaks[32_000] - peaks[8_000] < 60, peaks
    # Most of the peak is the libraries loaded at start-up (~0.6-0.8 GB, more when the machine
    # is shared); the 1 GB target at 400k rows is measured by `make bench` (836 MB there).
    assert peaks[32_000] < 1200, peaks


def test_partitions_merge_into_the_streamed_output(
    champion: scoring.ScoringModel, unlabelled_frame: pd.DataFrame, tmp_path: Path
) -> None:
    settings = load_settings()
    frame = unlabelled_frame.head(900).drop(columns=[SAMPLE_ID])  # ids from row numbers
    source = bad_lines_csv(frame, tmp_path / "incidents.csv")
    streamed = scoring.stream_file(
        source, tmp_path / "streamed.csv", champion, settings, on_bad_rows="skip", chunk_rows=200
    )
    partitions = scoring.plan_partitions(source, 3, min_bytes=1)
    assert len(partitions) == 3
    staging = tmp_path / "parts"
    staging.mkdir()
    parts = [
        scoring.score_partition(p, staging, champion, settings, "skip", chunk_rows=200)
        for p in reversed(partitions)
    ]
    merged = scoring.merge_partitions(
        source, tmp_path / "merged.csv", parts, champion, on_bad_rows="skip"
    )
    assert (merged.rows, merged.bad_rows, merged.partitions) == (897, 3, 3)
    same_diagnoses(
        pd.read_csv(tmp_path / "merged.csv"), pd.read_csv(tmp_path / "streamed.csv"), exact=False
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(merged.bad_rows_file), pd.read_csv(streamed.bad_rows_file)
    )
    assert pd.read_csv(merged.bad_rows_file)["row"].tolist() == [130, 260, 390]


def test_predict_command_streams_and_sets_bad_rows_aside(
    trained_state, unlabelled_frame: pd.DataFrame, tmp_path: Path, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from tests.test_cli import run_cli

    source = bad_lines_csv(unlabelled_frame.head(450), tmp_path / "incidents.csv")
    output = tmp_path / "diagnoses.parquet"
    args = ["predict", str(source), "-o", str(output), "--chunk-rows", "100", "--no-progress"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 1 and "row 130" in err and "--on-bad-rows skip" in err
    assert not output.exists()
    code, out, _ = run_cli([*args, "--on-bad-rows", "skip"], capsys, monkeypatch)
    assert code == 0, out
    assert "447 incidents diagnosed" in out and "bad rows: 3 set aside" in out
    assert len(pd.read_parquet(output)) == 447
    assert len(pd.read_csv(tmp_path / "diagnoses.bad-rows.csv")) == 3


def test_batch_scoring_flow_scores_a_glob_and_keeps_a_summary(
    trained_state, unlabelled_frame: pd.DataFrame, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from prefect.artifacts import Artifact

    from flows.scoring import run_batch_scoring

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    unlabelled_frame.head(300).to_csv(inbox / "monday.csv", index=False)
    (inbox / "tuesday.csv.gz").write_bytes(
        gzip.compress(unlabelled_frame.tail(200).to_csv(index=False).encode())
    )
    summaries = run_batch_scoring(
        str(inbox / "*.csv*"), output_dir=str(tmp_path / "out"), output_format="parquet"
    )
    assert [s.rows for s in summaries] == [300, 200]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "monday.diagnoses.parquet",
        "tuesday.diagnoses.parquet",
    ]
    tuesday = pd.read_parquet(tmp_path / "out" / "tuesday.diagnoses.parquet")
    assert tuesday[SAMPLE_ID].tolist() == unlabelled_frame[SAMPLE_ID].tail(200).tolist()
    artifact = Artifact.get("batch-scoring-summary")
    assert artifact is not None and "monday.csv" in str(artifact.data)
    assert "| 200 |" in str(artifact.data)


def test_a_file_of_only_bad_rows_fails_alone_in_the_flow(
    trained_state, unlabelled_frame: pd.DataFrame, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from flows.scoring import run_batch_scoring

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    unlabelled_frame.head(100).assign(feature5="n/a?").to_csv(inbox / "a-bad.csv", index=False)
    unlabelled_frame.head(100).to_csv(inbox / "b-good.csv", index=False)
    with pytest.raises(DataValidationError, match=r"a-bad\.csv: all 100 rows are bad"):
        run_batch_scoring(
            str(inbox / "*.csv"), output_dir=str(tmp_path / "out"), on_bad_rows="skip"
        )
    # The good file after it is scored all the same; the bad one leaves only its reasons.
    assert len(pd.read_csv(tmp_path / "out" / "b-good.diagnoses.csv")) == 100
    assert not (tmp_path / "out" / "a-bad.diagnoses.csv").exists()
    assert len(pd.read_csv(tmp_path / "out" / "a-bad.diagnoses.bad-rows.csv")) == 100


def test_dask_local_cluster_scores_like_one_process(
    trained_state, champion: scoring.ScoringModel, unlabelled_frame: pd.DataFrame, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from flows.scoring import run_batch_scoring

    source = tmp_path / "incidents.csv"
    unlabelled_frame.to_csv(source, index=False)
    settings = load_settings()
    scoring.stream_file(source, tmp_path / "single.csv", champion, settings)
    (summary,) = run_batch_scoring(
        [str(source)], outputs=[str(tmp_path / "dask.csv")], dask="local", partitions=2
    )
    assert summary.partitions == 2 and summary.rows == len(unlabelled_frame)
    same_diagnoses(
        pd.read_csv(tmp_path / "dask.csv"), pd.read_csv(tmp_path / "single.csv"), exact=False
    )
    assert json.loads(json.dumps(summary.to_dict()))["rows"] == len(unlabelled_frame)


@pytest.mark.parametrize(
    ("late_id", "kind"),
    [("INC-650", "text"), ("12345678901234567890", "beyond int64"), ("650.5", "fractional")],
)
def test_ids_are_typed_over_the_whole_file_whole_or_in_partitions(
    champion: scoring.ScoringModel,
    unlabelled_frame: pd.DataFrame,
    tmp_path: Path,
    late_id: str,
    kind: str,
) -> None:
    """Chunks typed on their own disagree when a later chunk holds another kind of id: the
    file's whole id column decides, as pandas.read_csv decides it, so ids come back as read."""
    settings = load_settings()
    frame = unlabelled_frame.head(900).copy()
    frame[SAMPLE_ID] = frame[SAMPLE_ID].astype(str)
    frame.loc[650, SAMPLE_ID] = late_id
    source = tmp_path / "incidents.csv"
    frame.to_csv(source, index=False)
    expected = pd.read_csv(source, usecols=[SAMPLE_ID])[SAMPLE_ID].tolist()

    scoring.stream_file(source, tmp_path / "streamed.csv", champion, settings, chunk_rows=200)
    streamed = pd.read_csv(tmp_path / "streamed.csv")
    assert streamed[SAMPLE_ID].tolist() == expected, kind

    partitions = scoring.plan_partitions(source, 3, min_bytes=1)
    assert len(partitions) == 3 and len({p.id_type for p in partitions}) == 1
    staging = tmp_path / "parts"
    staging.mkdir()
    parts = [
        scoring.score_partition(p, staging, champion, settings, chunk_rows=200) for p in partitions
    ]
    scoring.merge_partitions(source, tmp_path / "merged.csv", parts, champion)
    merged = pd.read_csv(tmp_path / "merged.csv")
    assert merged[SAMPLE_ID].tolist() == expected, kind


def test_predict_on_dask_reports_a_bad_file_in_one_line(
    trained_state, unlabelled_frame: pd.DataFrame, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Neither the flow's process nor its Dask workers print Prefect's traceback: the error
    is said once, as on the one-process path."""
    from tests.ops_helpers import case_env, run_cli

    bad = unlabelled_frame.head(50).astype({"feature3": object})
    bad.loc[10, "feature3"] = "abc"
    source = tmp_path / "bad.csv"
    bad.to_csv(source, index=False)
    done = run_cli(
        case_env(trained_state.home), "predict", str(source), "-o", str(tmp_path / "out.csv"),
        "--dask", "local", timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("error: ") and "'feature3' is not a number" in done.stderr
