import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from systemhealer.data import (
    KPI_FEATURES,
    coerce_numeric,
    collapse_near_copies,
    deduplicate,
    grouped_split,
    read_incidents,
    read_incidents_in_chunks,
    refuse_unpacked_over,
    row_groups,
    sample_ids,
    spreadsheet_safe,
)
from systemhealer.errors import DataValidationError


def _in_chunks(path: Path, rows: int = 64) -> pd.DataFrame:
    chunks, shares = zip(*read_incidents_in_chunks(path, rows), strict=True)
    assert list(shares) == sorted(shares) and shares[-1] == 1.0  # progress only grows, to all
    assert all(len(c) <= rows for c in chunks)
    return pd.concat(chunks, ignore_index=True)


def test_reads_csv_gzip_and_parquet(tmp_path: Path, small_training_frame: pd.DataFrame) -> None:
    small_training_frame.to_csv(tmp_path / "a.csv.gz", index=False)
    small_training_frame.to_csv(tmp_path / "a.csv", index=False)
    small_training_frame.to_parquet(tmp_path / "a.parquet", index=False, row_group_size=100)
    from_csv = read_incidents(tmp_path / "a.csv.gz")
    from_parquet = read_incidents(tmp_path / "a.parquet")
    assert from_csv.shape == from_parquet.shape == small_training_frame.shape
    # In chunks: the same rows, whatever the format.
    for name in ("a.csv.gz", "a.csv", "a.parquet"):
        pd.testing.assert_frame_equal(_in_chunks(tmp_path / name), from_csv, check_dtype=False)


@pytest.mark.parametrize(
    "ids",
    [
        ["007", "008", "X9", "010"],  # text only because of a later chunk: 007 stays 007
        ["1", '"a\rb"', "3", "4"],  # a bare CR inside a quoted id
        ["1", '"   "', "3", "4"],  # an id of spaces
        ["1", "", "3", "123456789012345678901234"],
    ],
    ids=["zero-padded", "carriage-return", "spaces", "gap-and-huge"],
)
def test_ids_read_in_chunks_are_typed_as_in_one_piece(tmp_path: Path, ids: list[str]) -> None:
    path = tmp_path / "ids.csv"
    rows = [f"{i},{n}.5" for n, i in enumerate(ids)]
    path.write_bytes(("sample_id,feature0\n" + "\n".join(rows) + "\n").encode())
    whole = read_incidents(path)["sample_id"]
    chunked = _in_chunks(path, rows=2)["sample_id"]
    pd.testing.assert_series_equal(chunked, whole, check_dtype=False)


def test_reading_in_chunks_keeps_a_header_without_rows_and_names_a_broken_row(
    tmp_path: Path, small_training_frame: pd.DataFrame
) -> None:
    header = ",".join(small_training_frame.columns)
    (tmp_path / "header.csv").write_text(header + "\n")
    ((chunk, share),) = read_incidents_in_chunks(tmp_path / "header.csv", 10)
    assert chunk.empty and list(chunk.columns) == list(small_training_frame.columns)
    assert share == 1.0
    # A row with too many fields far into the file: the file is named as unreadable.
    text = small_training_frame.to_csv(index=False).splitlines()
    text[500] += ",1,2"
    (tmp_path / "ragged.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataValidationError, match=r"ragged.csv: not a readable CSV file"):
        _in_chunks(tmp_path / "ragged.csv")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", "file is empty"),
        ("junk.csv", bytes(range(256)) * 20, "binary content"),
        ("semi.csv", b"sample_id;feature0;feature1\n1;2;3\n", "semicolons"),
        ("junk.parquet", b"PAR1 not really", "not a readable Parquet file"),
        ("packed.csv", gzip.compress(b"feature0,feature1\n1,2\n"), "name the file .csv.gz"),
        ("columnar.csv", b"PAR1\x15\x04\x15\x00" + bytes(200) + b"PAR1", "Parquet file; name it"),
    ],
)
def test_unreadable_files_are_named(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataValidationError, match=message):
        read_incidents(path)
    with pytest.raises(DataValidationError, match=message):
        _in_chunks(path)


def test_repeated_column_names_are_refused_not_renamed(
    tmp_path: Path, small_training_frame: pd.DataFrame
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = small_training_frame.iloc[:5]
    text = frame.to_csv(index=False).replace("feature3,", "feature2,", 1)
    (tmp_path / "twice.csv").write_text(text)  # pandas would read the second as "feature2.1"
    with pytest.raises(DataValidationError, match=r"duplicate column names: feature2$"):
        read_incidents(tmp_path / "twice.csv")
    with pytest.raises(DataValidationError, match=r"duplicate column names: feature2$"):
        _in_chunks(tmp_path / "twice.csv")
    table = pa.Table.from_arrays(
        [pa.array([1.0, 2.0]), pa.array([3.0, 4.0])], names=["feature2", "feature2"]
    )
    pq.write_table(table, tmp_path / "twice.parquet")
    with pytest.raises(DataValidationError, match=r"duplicate column names: feature2$"):
        read_incidents(tmp_path / "twice.parquet")
    with pytest.raises(DataValidationError, match=r"duplicate column names: feature2$"):
        _in_chunks(tmp_path / "twice.parquet")


def test_missing_file() -> None:
    with pytest.raises(DataValidationError, match="file not found"):
        read_incidents(Path("/nonexistent/incidents.csv"))


def test_coerce_numeric_reports_text_cells() -> None:
    frame = pd.DataFrame({"feature0": ["1.5", "abc", "", "NaN", "2e3"]})
    coerced, problems = coerce_numeric(frame, ["feature0"])
    assert coerced["feature0"].iloc[[0, 4]].tolist() == [1.5, 2000.0]
    assert coerced["feature0"].iloc[1:4].isna().all()
    assert len(problems) == 1 and problems[0].rows == [1] and problems[0].examples == ["abc"]


def test_sample_ids_default_to_row_numbers() -> None:
    assert sample_ids(pd.DataFrame({"x": [1, 2, 3]}), offset=10).tolist() == [10, 11, 12]


def test_deduplicate_and_groups(training_frame: pd.DataFrame) -> None:
    unique = deduplicate(training_frame)
    assert len(unique) < len(training_frame)
    features = unique[list(KPI_FEATURES)]
    assert not features.duplicated().any()
    groups = row_groups(features, ignore=("feature1",))
    assert len(groups) == len(unique)


def test_near_copies_count_once_unless_their_labels_differ(training_frame: pd.DataFrame) -> None:
    base = training_frame[list(KPI_FEATURES)].iloc[:3].reset_index(drop=True)
    rounding = base.iloc[[0]] * (1 + 1e-7)  # a public copy with float noise
    config = base.iloc[[0]].assign(feature1=base.feature1.iloc[0] * 10)  # another constant
    rows = pd.concat([base, rounding, config, base.iloc[[1]]], ignore_index=True)
    labels = np.array([0, 1, 2, 0, 0, 5])  # the last row repeats row 1 with another label
    groups = row_groups(rows, ignore=("feature1",))
    assert collapse_near_copies(groups, labels).tolist() == [0, 1, 2, 5]


def test_grouped_split_never_splits_a_group() -> None:
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 300, size=2000)
    labels = groups % 6
    split = grouped_split(labels, groups, 0.15, 0.15, seed=1)
    parts = [set(groups[p]) for p in (split.train, split.validation, split.evaluation)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert len(split.train) + len(split.validation) + len(split.evaluation) == 2000
    assert set(labels[split.evaluation]) == set(range(6))


def test_spreadsheet_safe_neutralises_formulas() -> None:
    frame = pd.DataFrame({"sample_id": ["=cmd|'/c calc'!A1", "ok", "+1"], "x": [1.0, -2.0, 3.0]})
    safe = spreadsheet_safe(frame)
    assert safe["sample_id"].tolist() == ["'=cmd|'/c calc'!A1", "ok", "'+1"]
    assert safe["x"].tolist() == [1.0, -2.0, 3.0]


def test_compressed_files_are_refused_when_their_data_unpack_past_the_limit(
    tmp_path: Path,
) -> None:
    """A .csv.gz of repeated rows is tiny packed; the upload limit bounds what it unpacks to."""
    rows = "feature0,feature1\n" + "1.0,2.0\n" * 400_000  # 3.2 MB of text
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress(rows.encode()))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(
        DataValidationError, match=r"bomb.csv.gz: its data unpack to more than 1 MB"
    ):
        refuse_unpacked_over(bomb, 2**20, "serving.max_upload_mb")
    refuse_unpacked_over(bomb, 4 * 2**20, "serving.max_upload_mb")  # within the limit
    parquet = tmp_path / "rows.parquet"
    pd.DataFrame({"feature0": np.arange(400_000, dtype=float)}).to_parquet(parquet)
    with pytest.raises(DataValidationError, match="unpack to more than 1 MB"):
        refuse_unpacked_over(parquet, 2**20, "serving.max_upload_mb")
    # Corrupt or plain files are left to the reader, which says what is wrong with them.
    (tmp_path / "broken.csv.gz").write_bytes(b"\x1f\x8bnot gzip")
    refuse_unpacked_over(tmp_path / "broken.csv.gz", 10, "x")
    (tmp_path / "plain.csv").write_text(rows)
    refuse_unpacked_over(tmp_path / "plain.csv", 10, "x")
