"""Incident data: the schema, reading CSV/Parquet, numeric coercion, fingerprints, splits."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from csv import QUOTE_ALL
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from systemhealer.config import FAULT_CLASSES, N_KPI_FEATURES
from systemhealer.errors import DataValidationError

KPI_FEATURES: tuple[str, ...] = tuple(f"feature{i}" for i in range(N_KPI_FEATURES))
LABEL = "label"
SAMPLE_ID = "sample_id"
PROBA_COLUMNS: tuple[str, ...] = tuple(f"proba_{c}" for c in FAULT_CLASSES)
PREDICTION_COLUMNS: tuple[str, ...] = (SAMPLE_ID, "predicted_label", "confidence", *PROBA_COLUMNS)
SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq", ".gz", ".csv.gz")


def clipped(text: object, limit: int = 40) -> str:
    """A name, id or cell from a file, cut short for a message (a file without line breaks
    makes its whole text one column name; an id can be megabytes)."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def data_name(path: str | Path) -> str:
    """A data file's name without folder and type suffix (``night.2024.06.csv.gz`` →
    ``night.2024.06``), to name runs and reports after it."""
    name = Path(path).name
    for suffix in (".csv.gz", *SUPPORTED_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "data"
    return name or "data"


def file_format(path: Path) -> str:
    """'parquet' or 'csv', judged by the file name (``.csv.gz`` is CSV)."""
    name = path.name.lower()
    return "parquet" if name.endswith((".parquet", ".pq")) else "csv"


def label_columns(names: Iterable[object]) -> list[object]:
    """The columns named ``label`` once surrounding spaces are stripped (as validation reads
    names): what to drop so that a step never sees labels, or to read them from."""
    return [name for name in names if str(name).strip() == LABEL]


def has_label_column(path: Path) -> bool:
    """Whether a readable file's header names a ``label`` column (False if it cannot tell)."""
    try:
        if file_format(path) == "parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
        else:
            names = list(pd.read_csv(path, nrows=0).columns)
    except (OSError, ValueError, pa.ArrowException):
        return False
    return bool(label_columns(names))


def _refuse_unreadable(path: Path) -> None:
    """What can be told of a file before parsing it: there, not a folder, not empty, and a
    CSV that is text (not gzip under another name, not binary)."""
    if not path.exists():
        raise DataValidationError(f"{path}: file not found")
    if path.is_dir():
        raise DataValidationError(f"{path}: is a folder, expected a CSV or Parquet file")
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: file is empty")
    if file_format(path) == "csv" and not path.name.lower().endswith(".gz"):
        with path.open("rb") as handle:
            refuse_binary_csv(handle.read(4096), path)


def refuse_binary_csv(start: bytes, path: Path) -> None:
    """A file named CSV (not .gz) whose first bytes are not text: say what it is, if known."""
    if start.startswith(b"\x1f\x8b"):
        raise DataValidationError(f"{path}: gzip-compressed; name the file .csv.gz")
    if start.startswith(b"PAR1"):
        raise DataValidationError(f"{path}: a Parquet file; name it .parquet")
    if b"\x00" in start:
        raise DataValidationError(f"{path}: binary content, not a CSV text file")


def _unreadable(path: Path, exc: BaseException) -> DataValidationError:
    kind = "Parquet" if file_format(path) == "parquet" else "CSV"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataValidationError(f"{path}: not a readable {kind} file ({first[:200]})")


# What reading a broken file raises. EOFError and zlib.error: a truncated or corrupt .gz (found
# by tests/test_properties.py).
_READ_ERRORS = (
    UnicodeDecodeError,
    pd.errors.ParserError,
    ValueError,
    OSError,
    EOFError,
    zlib.error,
)


def _csv_header(path: Path) -> list[object]:
    """The header as written (pandas renames a repeated column "feature2.1")."""
    header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    return header.iloc[0].tolist() if len(header) else []


def read_incidents(path: Path | str) -> pd.DataFrame:
    """Read a CSV or Parquet file of incidents as it is (no coercion), or explain why not."""
    path = Path(path)
    _refuse_unreadable(path)
    try:
        if file_format(path) == "parquet":
            import pyarrow.parquet as pq

            refuse_duplicate_names(pq.read_schema(path).names, path)
            frame = pd.read_parquet(path)
        else:
            refuse_duplicate_names(_csv_header(path), path)
            frame = pd.read_csv(path, low_memory=False)
    except pd.errors.EmptyDataError as exc:  # a ValueError: before the clause below
        raise DataValidationError(f"{path}: no header and no rows") from exc
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    _refuse_wrong_delimiter(frame, path)
    return frame


def read_incidents_in_chunks(path: Path | str, rows: int) -> Iterator[tuple[pd.DataFrame, float]]:
    """:func:`read_incidents` ``rows`` at a time, with its checks and messages: each chunk as
    it is (no coercion) and the share of the file read so far (by bytes for a CSV, so an
    estimate). A file without rows gives one empty chunk with its columns.

    pandas types each chunk's columns on their own. That is harmless for the KPIs and labels
    (validation coerces them, and True/False are text either way), not for ``sample_id``: ids
    such as ``007`` would read as 7 in a chunk without a text id. A CSV's ids are therefore read
    first for the whole file, as :func:`read_incidents` types them, and put into each chunk."""
    path = Path(path)
    _refuse_unreadable(path)
    try:
        if file_format(path) == "parquet":
            yield from _parquet_chunks(path, rows)
        else:
            yield from _csv_chunks(path, rows)
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(f"{path}: no header and no rows") from exc
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc


def _parquet_chunks(path: Path, rows: int) -> Iterator[tuple[pd.DataFrame, float]]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as file:
        refuse_duplicate_names(file.schema_arrow.names, path)
        total, done = file.metadata.num_rows, 0
        for batch in file.iter_batches(batch_size=rows):
            done += batch.num_rows
            yield batch.to_pandas(), done / total
        if total == 0:
            yield file.schema_arrow.empty_table().to_pandas(), 1.0


def _csv_chunks(path: Path, rows: int) -> Iterator[tuple[pd.DataFrame, float]]:
    header = _csv_header(path)
    refuse_duplicate_names(header, path)
    id_name = next((name for name in header if str(name).strip() == SAMPLE_ID), None)
    ids = None if id_name is None else _whole_file_ids(path, id_name, rows)
    done = 0
    size = path.stat().st_size
    packed = path.name.lower().endswith(".gz")
    with (
        path.open("rb") as raw,
        gzip.open(raw) if packed else contextlib.nullcontext(raw) as text,
        # The position of ``raw`` (packed bytes) tells how far the reading is.
        pd.read_csv(text, chunksize=rows, low_memory=False, compression=None) as reader,
    ):
        first = True
        for chunk in reader:
            if first:
                _refuse_wrong_delimiter(chunk, path)
                first = False
            if ids is not None:
                chunk[id_name] = ids.iloc[done : done + len(chunk)].to_numpy()
            done += len(chunk)
            yield chunk, min(1.0, raw.tell() / size)
        if first:  # a header without rows
            empty = pd.DataFrame(columns=[str(c) for c in header])
            _refuse_wrong_delimiter(empty, path)
            yield empty, 1.0


def _whole_file_ids(path: Path, name: object, rows: int) -> pd.Series:
    """The ``sample_id`` column typed as :func:`read_incidents` types it, without holding the
    file (pandas would tokenize all of it to type one column): its text read in chunks, then
    parsed again on its own."""
    text = [c.iloc[:, 0] for c in pd.read_csv(path, usecols=[name], dtype=str, chunksize=rows)]
    # Every cell quoted: an id of spaces or with a bare CR must stay one row.
    column = pd.concat(text, ignore_index=True).to_frame().to_csv(index=False, quoting=QUOTE_ALL)
    return pd.read_csv(io.StringIO(column), low_memory=False).iloc[:, 0]


def refuse_unpacked_over(path: Path | str, max_bytes: int, setting: str) -> None:
    """Refuse (DataValidationError) a compressed upload whose data unpack to more than
    ``max_bytes``: the upload limit bounds the data, not its packing, so a small .csv.gz of
    repeated rows cannot unpack into gigabytes in a server's memory."""
    path = Path(path)
    if path.name.lower().endswith(".gz"):
        unpacked = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 20):
                    unpacked += len(chunk)
                    if unpacked > max_bytes:
                        break
        except (OSError, EOFError, zlib.error):
            return  # corrupt: reading it says so
    elif file_format(path) == "parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(path).metadata
        except (OSError, ValueError, pa.ArrowException):
            return  # not Parquet: reading it says so
        unpacked = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    else:
        return
    if unpacked > max_bytes:
        raise DataValidationError(
            f"{path.name}: its data unpack to more than {max_bytes / 2**20:g} MB ({setting}, "
            "which bounds the data, not its packing); split the file, raise the setting, or use "
            "the command line, which has no such limit (`systemhealer train`, `predict`, "
            "`calibrate`)"
        )


def refuse_duplicate_names(names: Iterable[object], path: Path) -> None:
    """A DataValidationError naming the column names the header repeats (blank ones aside)."""
    counts = Counter(str(name).strip() for name in names if str(name).strip())
    duplicated = sorted(name for name, n in counts.items() if n > 1)
    if duplicated:
        raise DataValidationError(
            f"{path}: duplicate column names: {', '.join(map(clipped, duplicated[:8]))}"
        )


def _refuse_wrong_delimiter(frame: pd.DataFrame, path: Path) -> None:
    if frame.shape[1] > 2 or frame.shape[1] == 0:
        return
    header = ",".join(str(c) for c in frame.columns)
    for delimiter, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
        if header.count(delimiter) >= 2:
            raise DataValidationError(
                f"{path}: the header is split by {name}s, not commas; "
                "save the file as comma-separated CSV"
            )


def missing_columns(frame: pd.DataFrame, require_label: bool) -> list[str]:
    """Columns of the contract that the frame lacks."""
    wanted = [*KPI_FEATURES, LABEL] if require_label else list(KPI_FEATURES)
    present = set(map(str, frame.columns))
    return [c for c in wanted if c not in present]


@dataclass(frozen=True)
class BadCells:
    """Cells of a column that are neither numbers nor empty."""

    column: str
    rows: list[int]
    examples: list[str]
    count: int


def coerce_numeric(
    frame: pd.DataFrame, columns: tuple[str, ...] | list[str]
) -> tuple[pd.DataFrame, list[BadCells]]:
    """Turn ``columns`` into float64; report text cells that are not numbers (they become NaN)."""
    coerced = frame.copy()
    problems: list[BadCells] = []
    for column in columns:
        if column not in coerced.columns:
            continue
        values = coerced[column]
        if pd.api.types.is_bool_dtype(values):
            # True/False are not KPI values or fault classes: text, as in every other reader.
            values = values.astype(object)
        elif pd.api.types.is_numeric_dtype(values):
            coerced[column] = values.astype("float64")
            continue
        numbers, bad = text_to_numbers(values)
        if bad.any():
            idx = np.flatnonzero(bad.to_numpy())
            problems.append(
                BadCells(
                    column=column,
                    rows=[int(i) for i in idx[:5]],
                    examples=[str(v).strip()[:40] for v in values.iloc[idx[:3]]],
                    count=int(bad.sum()),
                )
            )
        coerced[column] = numbers
    return coerced, problems


def text_to_numbers(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Text cells → float64 numbers (NaN where missing or not a number) and a boolean mask of
    the cells that are neither numbers nor missing."""
    as_text = values.astype("string").str.strip()
    numbers = pd.to_numeric(as_text.replace("", pd.NA), errors="coerce")
    bad = numbers.isna() & as_text.notna() & (as_text != "")
    # Spreadsheet spellings of missing values are missing, not errors.
    bad &= ~as_text.str.lower().isin(["nan", "na", "n/a", "null", "none"])
    return numbers.astype("float64"), bad.fillna(False).astype(bool)


def feature_matrix(frame: pd.DataFrame) -> pd.DataFrame:
    """The KPI feature columns as float64, absent ones as NaN, in contract order."""
    out = frame.reindex(columns=list(KPI_FEATURES))
    return out.apply(pd.to_numeric, errors="coerce").astype("float64")


def sample_ids(frame: pd.DataFrame, offset: int = 0) -> pd.Series:
    """The ``sample_id`` column, or row numbers (from ``offset``) when the input has none."""
    if SAMPLE_ID in frame.columns:
        return frame[SAMPLE_ID].reset_index(drop=True)
    return pd.Series(np.arange(offset, offset + len(frame)), name=SAMPLE_ID)


def fingerprint(frame: pd.DataFrame) -> dict[str, object]:
    """A data fingerprint: content hash, row count, class counts."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    info: dict[str, object] = {"sha256": digest.hexdigest(), "rows": len(frame)}
    if LABEL in frame.columns:
        counts = frame[LABEL].value_counts().sort_index()
        info["class_counts"] = {str(int(k)): int(v) for k, v in counts.items()}
    return info


def row_groups(features: pd.DataFrame, ignore: tuple[str, ...] = ()) -> np.ndarray:
    """Group key per row: rows with identical KPI values (``ignore`` columns aside) share it.

    Configuration-like columns are ignored because some copies of the same incident differ
    only there (a missing value that stayed as the configuration constant); values are compared
    at 5 significant digits because other public copies carry rounding noise.
    """
    kept = features.drop(columns=[c for c in ignore if c in features.columns])
    rounded = pd.DataFrame(significant(kept.to_numpy(dtype=np.float64), 5), columns=kept.columns)
    return pd.util.hash_pandas_object(rounded, index=False).to_numpy()


def significant(values: np.ndarray, digits: int) -> np.ndarray:
    """Round to ``digits`` significant digits (NaN and 0 stay as they are)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.floor(np.log10(np.abs(values)))
        scale = np.where(np.isfinite(magnitude), 10.0 ** (digits - 1 - magnitude), 1.0)
        return np.round(values * scale) / scale


def collapse_near_copies(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Positions of the first row of each (near-copy group, label) pair, in file order.

    Copies of one incident that differ only by rounding or a configuration column would count
    several times in training; one of them is kept (a different label is kept apart).
    """
    keys = pd.DataFrame({"group": groups, "label": labels})
    return np.flatnonzero(~keys.duplicated().to_numpy())


def deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop incidents whose KPI features and label repeat an earlier row."""
    keys = [c for c in (*KPI_FEATURES, LABEL) if c in frame.columns]
    return frame.drop_duplicates(subset=keys).reset_index(drop=True)


@dataclass(frozen=True)
class Split:
    """Row positions of the train, validation and evaluation parts."""

    train: np.ndarray
    validation: np.ndarray
    evaluation: np.ndarray


def grouped_holdout(
    labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split row positions in two (kept, held out) so that no group falls on both sides.

    Whole groups are assigned, stratified by each group's first label (sklearn's
    StratifiedGroupKFold does the same far more slowly: seconds per split on 7k rows).
    """
    if fraction <= 0:
        return np.arange(len(labels)), np.arange(0)
    _, first_row, inverse = np.unique(groups, return_index=True, return_inverse=True)
    strata = labels[first_row]
    counts = np.bincount(strata)
    stratify = strata if counts[counts > 0].min() >= 2 else None
    from sklearn.model_selection import train_test_split  # slow to import; only needed here

    kept, held = train_test_split(
        np.arange(len(first_row)), test_size=fraction, random_state=seed, stratify=stratify
    )
    positions = np.arange(len(labels))
    return positions[np.isin(inverse, kept)], positions[np.isin(inverse, held)]


def grouped_split(
    labels: np.ndarray,
    groups: np.ndarray,
    validation_fraction: float,
    evaluation_fraction: float,
    seed: int,
) -> Split:
    """Stratified train/validation/evaluation split in which no group falls on two sides."""
    rest, evaluation = grouped_holdout(labels, groups, evaluation_fraction, seed)
    train, validation = grouped_holdout(
        labels[rest], groups[rest], validation_fraction / (1 - evaluation_fraction), seed + 1
    )
    return Split(train=rest[train], validation=rest[validation], evaluation=evaluation)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Prefix text cells that a spreadsheet would run as a formula with a quote."""
    out = frame
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values):
            continue
        text = values.astype("string")
        risky = text.str.startswith(_FORMULA_START).fillna(False)
        if risky.any():
            if out is frame:
                out = frame.copy()
            out[column] = text.where(~risky, "'" + text)
    return out


_PLAIN_NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"


def spreadsheet_safe_text(values: pa.Array) -> pa.Array:
    """:func:`spreadsheet_safe` for one Arrow text column (e.g. the raw cells of bad rows):
    cells starting like a formula get a quote in front; plain numbers stay as they are."""
    risky = pc.and_(
        pc.match_substring_regex(values, "^[=+\\-@\t\r]"),
        pc.invert(pc.match_substring_regex(values, _PLAIN_NUMBER)),
    )
    quoted = pc.binary_join_element_wise("'", values, "")
    return pc.if_else(pc.fill_null(risky, False), quoted, values)
