"""Chunked reading and atomic writing (no model needed): every row once, in order, as pandas
reads it; bad rows found with their reasons; partitions that tile the file; nothing half-written."""

from __future__ import annotations

import gzip
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from torch import nn

from systemhealer.data import KPI_FEATURES, SAMPLE_ID
from systemhealer.errors import DataValidationError
from systemhealer.scoring import check_chunk
from systemhealer.streaming import AtomicTableWriter, Prefetch, RawChunk, open_source


def kpi_values(chunks: list[RawChunk]) -> np.ndarray:
    return np.vstack([c.typed.select(list(KPI_FEATURES)).to_pandas().to_numpy() for c in chunks])


@pytest.fixture(scope="module")
def incidents(unlabelled_frame: pd.DataFrame) -> pd.DataFrame:
    return unlabelled_frame.head(300).reset_index(drop=True)


@pytest.fixture(scope="module")
def incidents_csv(tmp_path_factory: pytest.TempPathFactory, incidents: pd.DataFrame) -> Path:
    path = tmp_path_factory.mktemp("streaming") / "incidents.csv"
    incidents.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("chunk_rows", [1, 7, 250, 10_000])
def test_chunks_cover_every_row_once_as_pandas_reads_it(
    incidents_csv: Path, incidents: pd.DataFrame, chunk_rows: int
) -> None:
    chunks = list(open_source(incidents_csv).chunks(chunk_rows))
    assert [len(c.positions) for c in chunks[:-1]] == [chunk_rows] * (len(chunks) - 1)
    positions = np.concatenate([c.positions for c in chunks])
    assert positions.tolist() == list(range(len(incidents)))
    ids = np.concatenate([c.typed.column(SAMPLE_ID).to_numpy() for c in chunks])
    assert ids.tolist() == incidents[SAMPLE_ID].tolist()
    expected = pd.read_csv(incidents_csv)[list(KPI_FEATURES)].to_numpy()
    np.testing.assert_array_equal(kpi_values(chunks), expected)  # NaN == NaN here
    assert chunks[-1].progress == incidents_csv.stat().st_size


def test_gzip_and_parquet_read_the_same(
    tmp_path: Path, incidents_csv: Path, incidents: pd.DataFrame
) -> None:
    packed = tmp_path / "incidents.csv.gz"
    packed.write_bytes(gzip.compress(incidents_csv.read_bytes()))
    parquet = tmp_path / "incidents.parquet"
    incidents.to_parquet(parquet, index=False, row_group_size=100)
    plain = kpi_values(list(open_source(incidents_csv).chunks(64)))
    np.testing.assert_array_equal(kpi_values(list(open_source(packed).chunks(64))), plain)
    np.testing.assert_array_equal(kpi_values(list(open_source(parquet).chunks(64))), plain)


def test_a_truncated_gzip_file_is_bad_input(tmp_path: Path, incidents_csv: Path) -> None:
    packed = gzip.compress(incidents_csv.read_bytes())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataValidationError, match="truncated or corrupt"):
        list(open_source(cut).chunks(64))


def test_quoted_newlines_and_commas_stay_inside_their_row(tmp_path: Path) -> None:
    values = {column: np.arange(5) + i / 1000 for i, column in enumerate(KPI_FEATURES)}
    frame = pd.DataFrame({SAMPLE_ID: ["a", 'b,"x"\nsecond line', "c", "d\n\ne", "f"], **values})
    path = tmp_path / "quoted.csv"
    frame.to_csv(path, index=False)
    for chunk_rows in (1, 2, 3):
        chunks = list(open_source(path).chunks(chunk_rows))
        ids = [i for c in chunks for i in c.typed.column(SAMPLE_ID).to_pylist()]
        assert ids == frame[SAMPLE_ID].tolist()
        np.testing.assert_array_equal(kpi_values(chunks), frame[list(KPI_FEATURES)].to_numpy())


def test_csv_partitions_tile_the_file(incidents_csv: Path, incidents: pd.DataFrame) -> None:
    source = open_source(incidents_csv)
    partitions = source.partitions(4, min_bytes=1)
    assert len(partitions) == 4
    assert partitions[0].first_row == 0 and all(p.first_row is None for p in partitions[1:])
    parts = [list(source.chunks(50, p)) for p in partitions]
    assert all(p[0].positions[0] == 0 for p in parts)  # row numbers restart per byte range
    np.testing.assert_array_equal(
        np.vstack([kpi_values(p) for p in parts]), incidents[list(KPI_FEATURES)].to_numpy()
    )
    assert len(source.partitions(4)) == 1  # default: at least 1 MB per partition


def test_parquet_partitions_are_row_groups(tmp_path: Path, incidents: pd.DataFrame) -> None:
    path = tmp_path / "incidents.parquet"
    group = len(incidents) // 6
    incidents.head(6 * group).to_parquet(path, index=False, row_group_size=group)
    partitions = open_source(path).partitions(3)
    assert [p.first_row for p in partitions] == [0, 2 * group, 4 * group]


def test_chunk_checks_name_bad_rows(tmp_path: Path, incidents: pd.DataFrame) -> None:
    lines = incidents.head(40).to_csv(index=False).splitlines()
    fields = lines[3].split(",")
    fields[5] = "twelve"  # row 3 (1-based data row): text in feature4
    lines[3] = ",".join(fields)
    fields = lines[8].split(",")
    fields[2] = "-inf"  # row 8: infinite feature1
    lines[8] = ",".join(fields)
    lines[20] = lines[20] + ",1"  # row 20: one field too many
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    (chunk,) = open_source(path).chunks(100)
    checked = check_chunk(chunk)
    bad = checked.bad.to_pandas()
    assert bad["row"].tolist() == [2, 7, 19]  # positions (0-based) of the bad rows
    assert "'feature4' is not a number ('twelve')" in bad["reason"][0]
    assert "'feature1' is infinite" in bad["reason"][1]
    assert "has 109 fields, expected 108" in bad["reason"][2]
    assert bad[SAMPLE_ID].tolist()[:2] == ["2", "7"]
    assert checked.positions.tolist() == [i for i in range(40) if i not in (2, 7, 19)]
    assert checked.ids.tolist() == checked.positions.tolist()
    assert checked.cell_counts == {
        ("type", "feature4"): 1,
        ("infinite", "feature1"): 1,
        ("fields", "*"): 1,
    }
    # Cells the one-shot path calls missing are missing here too, not bad.
    lines = incidents.head(3).to_csv(index=False).splitlines()
    lines[1] = lines[1].replace(lines[1].split(",")[1], "NA", 1)
    path.write_text("\n".join(lines) + "\n")
    (chunk,) = open_source(path).chunks(100)
    assert check_chunk(chunk).bad is None


def test_a_missing_id_in_a_later_chunk_stays_missing(
    tmp_path: Path, incidents: pd.DataFrame
) -> None:
    from systemhealer.scoring import diagnoses_table

    frame = incidents.head(6).copy()
    frame[SAMPLE_ID] = pd.array([10, 11, 12, 13, None, 15], dtype="Int64")
    frame[KPI_FEATURES[0]] = [np.nan, 1.0, 2.0, 3.0, 4.0, 5.0]
    path = tmp_path / "ids.csv"
    frame.to_csv(path, index=False)
    target = tmp_path / "out.csv"
    with AtomicTableWriter(target, ["sample_id", "p"]) as writer:
        for chunk in open_source(path).chunks(3):
            checked = check_chunk(chunk)
            table = diagnoses_table(checked.ids, np.full((len(checked.ids), 6), 1 / 6))
            writer.write(table.select([0, 2]).rename_columns(["sample_id", "p"]))
        writer.commit()
    assert pd.read_csv(target)[SAMPLE_ID].tolist()[:4] == [10, 11, 12, 13]
    assert pd.read_csv(target)[SAMPLE_ID].isna().tolist() == [False] * 4 + [True, False]


def test_rows_without_any_kpi_value_are_missing_whether_null_or_nan(tmp_path: Path) -> None:
    header = ",".join([SAMPLE_ID, *KPI_FEATURES])
    empty = ",".join(["1", *[""] * len(KPI_FEATURES)])
    nan = ",".join(["2", *["NAN"] * len(KPI_FEATURES)])
    full = ",".join(["3", *["1.5"] * len(KPI_FEATURES)])
    path = tmp_path / "empty.csv"
    path.write_text("\n".join([header, empty, nan, full]) + "\n")
    (chunk,) = open_source(path).chunks(10)
    checked = check_chunk(chunk)
    assert checked.bad is None  # missing values are not bad rows
    assert np.isnan(checked.values()).all(axis=1).tolist() == [True, True, False]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b"\x00\x01\x02 binary", "binary"),
        (gzip.compress(b"sample_id,feature0\n1,2\n"), "name the file .csv.gz"),
        (b"PAR1\x15\x04" + bytes(100) + b"PAR1", "a Parquet file; name it .parquet"),
        (b"sample_id;feature0;feature1\n1;2;3\n", "semicolon"),
        (b"sample_id,feature0\n1,2\n", "missing columns: feature1"),
    ],
)
def test_unusable_files_are_refused_before_reading(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "broken.csv"
    path.write_bytes(content)
    with pytest.raises(DataValidationError, match=message):
        open_source(path)


def test_a_file_without_line_breaks_is_refused_in_a_few_words(tmp_path: Path) -> None:
    path = tmp_path / "one-line.csv"
    path.write_bytes(b"a" * 300_000)  # one field longer than the csv module's limit
    with pytest.raises(DataValidationError, match="missing columns: feature0") as refused:
        open_source(path)
    assert len(str(refused.value)) < 400
    path.write_bytes(b"sample_id," + b"b" * 100_000 + b"\n")
    with pytest.raises(DataValidationError, match="unexpected columns: bbb") as refused:
        open_source(path)
    assert len(str(refused.value)) < 1000


def test_a_long_extra_column_name_is_read_as_validation_reads_it(
    tmp_path: Path, incidents: pd.DataFrame
) -> None:
    """validate ignores an extra column whatever its name; so does predict's reader (it used
    Python's csv module, whose 128 KB field limit refused the header)."""
    path = tmp_path / "long-name.csv"
    incidents.head(5).assign(**{"note" * 40_000: 1}).to_csv(path, index=False)
    source = open_source(path)
    assert source.columns[-1] == "note" * 40_000
    assert sum(len(chunk.positions) for chunk in source.chunks(100)) == 5


def test_duplicate_columns_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    path.write_text(",".join([*KPI_FEATURES, "feature3"]) + "\n")
    with pytest.raises(DataValidationError, match="duplicate column names: feature3"):
        open_source(path)
    # A repeated name in place of another column: named as such, not as "missing feature4".
    renamed = [("feature3" if c == "feature4" else c) for c in KPI_FEATURES]
    path.write_text(",".join(renamed) + "\n")
    with pytest.raises(DataValidationError, match=r"duplicate column names: feature3$"):
        open_source(path)


def test_atomic_writer_renames_on_commit_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("earlier result\n")
    table = pa.table({"a": [1, 2], "b": [0.5, 0.25]})
    with pytest.raises(RuntimeError), AtomicTableWriter(target, ["a", "b"]) as writer:
        writer.write(table)
        raise RuntimeError("the job died half-way")
    assert target.read_text() == "earlier result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    with AtomicTableWriter(target, ["a", "b"]) as writer:
        writer.write(table)
        writer.write(table)
        writer.commit()
    assert target.read_text() == "a,b\n1,0.5\n2,0.25\n1,0.5\n2,0.25\n"
    assert target.stat().st_mode & 0o044  # readable like any other result, not private
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_prefetch_reads_ahead_boundedly_and_hands_over_errors() -> None:
    produced: list[int] = []

    def numbers():  # type: ignore[no-untyped-def]
        for i in range(100):
            produced.append(i)
            yield i
        raise ValueError("source broke")

    with Prefetch(numbers(), budget=2) as ahead:
        iterator = iter(ahead)
        assert next(iterator) == 0
        threading.Event().wait(0.3)
        assert len(produced) <= 4  # one handed over, two queued, one waiting to be queued
        with pytest.raises(ValueError, match="source broke"):
            list(iterator)


def test_prefetch_within_a_memory_budget_lets_an_oversized_item_through() -> None:
    produced: list[int] = []

    def sizes():  # type: ignore[no-untyped-def]
        for size in (4, 4, 4, 4, 50, 4, 4):
            produced.append(size)
            yield size

    with Prefetch(sizes(), budget=10, cost=lambda size: size) as ahead:
        iterator = iter(ahead)
        assert next(iterator) == 4
        threading.Event().wait(0.3)
        assert len(produced) == 4  # one handed over, two waiting (8 ≤ 10), one held back
        assert list(iterator) == [4, 4, 4, 50, 4, 4]  # 50 > budget still passes, alone


def test_a_chunk_knows_the_memory_it_holds(incidents_csv: Path) -> None:
    (chunk,) = open_source(incidents_csv).chunks(10_000)
    assert chunk.nbytes == chunk.typed.nbytes > 300 * len(KPI_FEATURES) * 8 * 0.9
    text = RawChunk(positions=chunk.positions, raw=chunk.typed.to_pandas().astype(str))
    assert text.nbytes > chunk.nbytes


def test_shard_losses_add_up_to_the_batch_mean() -> None:
    """What DDP training relies on: each rank's share (its weighted, label-smoothed loss sum over
    the batch's weight) adds up to the single-process batch mean, hence the same gradient."""
    torch.manual_seed(0)
    logits, labels, weights = torch.randn(12, 6), torch.randint(0, 6, (12,)), torch.rand(6) + 0.1
    mean = nn.CrossEntropyLoss(weight=weights, label_smoothing=0.05)(logits, labels)
    shard_sum = nn.CrossEntropyLoss(weight=weights, label_smoothing=0.05, reduction="sum")
    shares = [shard_sum(logits[r::2], labels[r::2]) / weights[labels].sum() for r in (0, 1)]
    assert torch.allclose(sum(shares), mean, atol=1e-6)


def test_a_compressed_csv_is_one_partition_and_the_user_is_told(tmp_path: Path) -> None:
    from systemhealer.scoring import partition_warning, plan_partitions

    values = np.random.default_rng(0).normal(size=(3000, len(KPI_FEATURES)))
    frame = pd.DataFrame(values, columns=list(KPI_FEATURES))
    frame.insert(0, SAMPLE_ID, range(3000))
    plain, packed = tmp_path / "kpis.csv", tmp_path / "kpis.csv.gz"
    frame.to_csv(plain, index=False)
    with gzip.open(packed, "wt") as out:
        frame.to_csv(out, index=False)
    assert len(plan_partitions(packed, 4, min_bytes=1)) == 1
    warning = partition_warning(packed, 4)
    assert warning is not None and "kpis.csv.gz is compressed" in warning and "not 4" in warning
    assert len(plan_partitions(plain, 4, min_bytes=1)) > 1
    assert partition_warning(plain, 4) is None
    assert partition_warning(packed, 1) is None  # one partition was asked for


def _ids_of(chunks: list[RawChunk]) -> list[object]:
    return [
        v
        for c in chunks
        for v in (
            c.typed.column(SAMPLE_ID).to_pylist() if c.typed is not None else c.raw[SAMPLE_ID]
        )
    ]


def test_ids_are_typed_as_pandas_types_the_whole_column(
    tmp_path: Path, incidents: pd.DataFrame
) -> None:
    """Spaces around an id, an id too long for the id pass's blocks: the file's ids come back
    as pandas reads them, and every partition is told the same type."""
    frame = incidents.head(40).copy()
    frame[SAMPLE_ID] = [f" {i}" if i % 7 == 0 else str(i) for i in range(40)]
    path = tmp_path / "spaces.csv"
    frame.to_csv(path, index=False)
    source = open_source(path)
    assert source.id_type() == pa.int64()
    assert _ids_of(list(source.chunks(10))) == pd.read_csv(path)[SAMPLE_ID].tolist()
    partitions = source.partitions(3, min_bytes=1)
    assert len(partitions) == 3 and {p.id_type for p in partitions} == {"int64"}

    frame[SAMPLE_ID] = [str(i) for i in range(40)]
    frame.loc[30, SAMPLE_ID] = "x" * (5 << 20)  # longer than a block of the id pass
    path = tmp_path / "long-id.csv"
    frame.to_csv(path, index=False)
    source = open_source(path)
    assert source.id_type() == pa.string()  # text: what always parses
    assert _ids_of(list(source.chunks(10))) == pd.read_csv(path)[SAMPLE_ID].tolist()
    assert {p.id_type for p in source.partitions(3, min_bytes=1)} == {"string"}
