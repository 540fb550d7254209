"""Incident tables in chunks and diagnosis tables written atomically, with bounded memory.

Reading: a CSV (optionally ``.gz``) is cut into blocks of ``chunk_rows`` rows at real row ends
(quote-aware), and each block is parsed on its own by pyarrow (multi-threaded) with the KPI
columns typed as float64. A block that does not parse that way (text in a number column, a row
with the wrong number of fields) is parsed again as text so that its bad rows can be named and
the others kept. Parquet is read in record batches. A file can be split into partitions (byte
ranges of a CSV, row groups of a Parquet file) for parallel workers.

Writing: rows go to a temporary file beside the target, renamed onto it only on ``commit()``;
a failed job never leaves a half-written result under the final name.
"""

from __future__ import annotations

import collections
import csv
import io
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Generic, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from systemhealer.data import (
    KPI_FEATURES,
    SAMPLE_ID,
    clipped,
    file_format,
    refuse_binary_csv,
    refuse_duplicate_names,
)
from systemhealer.errors import DataValidationError

# pandas.read_csv's default spellings of a missing value: the one-shot path reads with pandas,
# so the streaming path must call the same cells missing.
NA_VALUES: tuple[str, ...] = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip
_SCAN_BYTES = 16 << 20


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Finished files get the usual permissions (temporary files are created private).
_FILE_MODE = 0o666 & ~_umask()
_NEWLINE, _QUOTE = 10, 34


@dataclass(frozen=True)
class Partition:
    """A slice of one input file that one task scores.

    CSV: the byte range ``[start, stop)`` (``start`` 0 = the first row after the header, ``stop``
    None = to the end). Parquet: row groups ``[start, stop)``. ``first_row`` is the data row
    number of the slice's first row when known without reading the rows before it (None for a
    CSV byte range: the merge step adds the offset).
    """

    path: str
    index: int = 0
    count: int = 1
    start: int = 0
    stop: int | None = None
    first_row: int | None = 0
    # CSV: the type of the whole file's sample_id column (pyarrow's name, e.g. "int64",
    # "string"), measured once when the file is split, so every partition writes ids alike.
    id_type: str | None = None


@dataclass(frozen=True)
class RaggedRow:
    """A CSV row with the wrong number of fields."""

    position: int
    fields: int
    expected: int
    text: str


@dataclass
class RawChunk:
    """One chunk as read: typed (KPI columns float64) or, when that failed, as read by pandas.

    ``positions`` are the data row numbers of the chunk's rows relative to the partition; rows
    dropped by the parser (``ragged``) are not in ``typed``/``raw`` but keep their numbers.
    """

    positions: np.ndarray
    typed: pa.Table | None = None
    raw: pd.DataFrame | None = None
    ragged: list[RaggedRow] = field(default_factory=list)
    progress: int = 0
    seconds: float = 0.0  # reading and parsing it

    @property
    def rows(self) -> int:
        return len(self.positions) + len(self.ragged)

    @property
    def nbytes(self) -> int:
        """Memory held by the parsed rows (text cells of a chunk parsed as text included)."""
        if self.typed is not None:
            return self.typed.nbytes
        if self.raw is not None:
            return int(self.raw.memory_usage(index=False, deep=True).sum())
        return 0


def check_source_file(path: Path) -> None:
    """Refuse paths that are not a readable file of incidents, with the one-shot path's words."""
    if not path.exists():
        raise DataValidationError(f"{path}: file not found")
    if path.is_dir():
        raise DataValidationError(f"{path}: is a folder, expected a CSV or Parquet file")
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: file is empty")


def check_columns(names: list[str], path: Path) -> None:
    """The contract's schema part: no duplicate names (first: a repeated column also makes
    another one look missing), every KPI column present."""
    refuse_duplicate_names(names, path)
    absent = [c for c in KPI_FEATURES if c not in names]
    if absent:
        header = ",".join(names)
        for delimiter, word in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if len(names) <= 2 and header.count(delimiter) >= 2:
                raise DataValidationError(
                    f"{path}: the header is split by {word}s, not commas; "
                    "save the file as comma-separated CSV"
                )
        shown = ", ".join(absent[:8]) + (f" … ({len(absent)} in all)" if len(absent) > 8 else "")
        extra = [c for c in names if c not in (*KPI_FEATURES, SAMPLE_ID, "label")]
        hint = f"; unexpected columns: {', '.join(map(clipped, extra[:5]))}" if extra else ""
        raise DataValidationError(f"{path}: missing columns: {shown}{hint}")


def _codec(path: Path) -> str | None:
    if file_format(path) != "csv":
        return None
    try:
        return pa.Codec.detect(str(path)).name
    except (ValueError, TypeError):
        return None


def _row_ends(data: bytes, begin: int, quoted: bool) -> tuple[np.ndarray, bool]:
    """Offsets of the newlines in ``data[begin:]`` that end a row (not inside quotes), and
    whether the data ends inside quotes. Doubled quotes ("") keep the parity right."""
    found: list[np.ndarray] = []
    for offset in range(begin, len(data), _SCAN_BYTES):
        piece = np.frombuffer(
            data, np.uint8, count=min(_SCAN_BYTES, len(data) - offset), offset=offset
        )
        ends = np.flatnonzero(piece == _NEWLINE)
        quotes = np.flatnonzero(piece == _QUOTE)
        if len(quotes) or quoted:
            inside = (np.searchsorted(quotes, ends) + quoted) % 2 == 1
            ends = ends[~inside]
            quoted = bool((len(quotes) + quoted) % 2)
        found.append(ends + offset)
    if not found:
        return np.empty(0, dtype=np.int64), quoted
    return np.concatenate(found).astype(np.int64), quoted


# Blocks of the id pass: a row longer than this makes the ids text (see CsvSource.id_type).
_ID_PASS_BLOCK = 1 << 22


class CsvSource:
    """A CSV file of incidents: its header, and its rows in blocks of ``chunk_rows``."""

    def __init__(self, path: Path) -> None:
        check_source_file(path)
        self.path = path
        self.codec = _codec(path)
        self.size = path.stat().st_size
        with self._open() as (stream, _):
            head = b""
            ends = np.empty(0, dtype=np.int64)
            while not len(ends):
                more = stream.read(1 << 16)
                if not more:
                    break
                if not head and self.codec is None:
                    refuse_binary_csv(more[:4096], path)
                elif not head and b"\x00" in more[:4096]:
                    raise DataValidationError(f"{path}: binary content, not a CSV text file")
                ends, _ = _row_ends(head + more, 0, False)
                head += more
            line = head[: ends[0] + 1] if len(ends) else head
        try:
            text = line.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataValidationError(f"{path}: not a readable CSV file (not UTF-8 text)") from exc
        try:  # pandas, as validation reads it: no limit on a column name's length
            header = pd.read_csv(
                io.StringIO(text), header=None, nrows=1, dtype=str, keep_default_na=False
            )
            names = header.iloc[0].tolist() if len(header) else []
        except pd.errors.EmptyDataError:
            names = []
        except pd.errors.ParserError as exc:
            raise DataValidationError(
                f"{path}: the first line is not a CSV header ({exc}); is this a CSV file?"
            ) from exc
        if not names or not "".join(names).strip():
            raise DataValidationError(f"{path}: no header and no rows")
        self.columns = [name.strip() for name in names]
        self.header_bytes = len(line)
        check_columns(self.columns, path)
        self.include = [c for c in (SAMPLE_ID, *KPI_FEATURES) if c in self.columns]

    def _open(self) -> _Stream:
        return _Stream(self.path, self.codec)

    def id_type(self) -> pa.DataType | None:
        """The type of the whole file's ``sample_id`` column, as pandas.read_csv types it:
        int64, else uint64, else float64 (unless every id is an integer), else text. Blocks
        typed on their own disagree (ids 1, 2, … then ``INC-7``), and the output's id column is
        fixed by its first block. One pass over the file reading the id column only; when the
        pass cannot read the file (an id longer than its blocks, a damaged file: the blocks'
        parser reports the latter), ids are text, which always parses."""
        if SAMPLE_ID not in self.include:
            return None
        if not hasattr(self, "_id_type"):
            try:
                self._id_type: pa.DataType = self._scan_id_type()
            except (OSError, pa.ArrowException):
                self._id_type = pa.string()
        return self._id_type

    def _scan_id_type(self) -> pa.DataType:
        kinds = [pa.int64(), pa.uint64(), pa.float64()]
        integral = True
        reader = pacsv.open_csv(
            pa.input_stream(str(self.path), compression=self.codec),
            read_options=pacsv.ReadOptions(
                column_names=self.columns, skip_rows=1, block_size=_ID_PASS_BLOCK
            ),
            parse_options=pacsv.ParseOptions(invalid_row_handler=lambda _: "skip"),
            convert_options=pacsv.ConvertOptions(
                include_columns=[SAMPLE_ID],
                column_types={SAMPLE_ID: pa.string()},
                null_values=list(NA_VALUES),
                strings_can_be_null=True,
            ),
        )
        for batch in reader:
            ids = pc.utf8_trim_whitespace(batch.column(0).drop_null())  # " 2" reads as 2
            if integral and len(ids):
                integral = bool(pc.all(pc.match_substring_regex(ids, r"^[+-]?[0-9]+$")).as_py())
            while kinds:
                try:
                    pc.cast(ids, kinds[0])
                    break
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    kinds.pop(0)
            if not kinds:
                return pa.string()
        if kinds[0] == pa.float64() and integral:
            return pa.string()  # integers beyond uint64: text, as pandas reads them
        return kinds[0]

    def partitions(self, count: int, min_bytes: int = 1 << 20) -> list[Partition]:
        """Split into about ``count`` byte ranges of at least ``min_bytes``, cut at row ends
        (a compressed file is one partition)."""
        data_bytes = self.size - self.header_bytes
        count = min(count, max(1, data_bytes // max(min_bytes, 1)))
        id_type = None if (kind := self.id_type()) is None else str(kind)
        if self.codec is not None or count <= 1:
            return [Partition(str(self.path), id_type=id_type)]
        targets = [self.header_bytes + data_bytes * k // count for k in range(1, count)]
        cuts: list[int] = []
        quoted = False
        with self.path.open("rb") as handle:
            handle.seek(self.header_bytes)
            offset = self.header_bytes
            while targets and (block := handle.read(_SCAN_BYTES)):
                ends, after = _row_ends(block, 0, quoted)
                while targets and targets[0] < offset + len(block):
                    later = ends[ends + offset >= targets[0]]
                    if not len(later):
                        break
                    cut = int(later[0]) + offset + 1
                    if cut < self.size and (not cuts or cut > cuts[-1]):
                        cuts.append(cut)
                    targets.pop(0)
                quoted = after
                offset += len(block)
        bounds = [self.header_bytes, *cuts, None]
        return [
            Partition(
                str(self.path),
                index=i,
                count=len(bounds) - 1,
                start=0 if i == 0 else int(bounds[i]),  # type: ignore[arg-type]
                stop=bounds[i + 1],
                first_row=0 if i == 0 else None,
                id_type=id_type,
            )
            for i in range(len(bounds) - 1)
        ]

    def chunks(self, chunk_rows: int, partition: Partition | None = None) -> Iterator[RawChunk]:
        """Parsed blocks of ``chunk_rows`` rows (blank lines are not rows) of one partition."""
        start = partition.start if partition else 0
        stop = partition.stop if partition else None
        parser = _BlockParser(self.columns, self.include)
        # The whole file's id type: every block (and partition) writes its ids alike.
        known = partition.id_type if partition else None
        parser.id_type = pa.type_for_alias(known) if known else self.id_type()
        position = 0
        clock = time.perf_counter()
        for block, progress in self._blocks(chunk_rows, start, stop):
            chunk = parser.parse(block, position)
            del block  # not held while the chunk waits in a queue
            chunk.progress = progress
            chunk.seconds = time.perf_counter() - clock
            position += chunk.rows
            yield chunk
            clock = time.perf_counter()

    def _blocks(
        self, chunk_rows: int, start: int, stop: int | None
    ) -> Iterator[tuple[memoryview, int]]:
        with self._open() as (stream, raw):
            begin = start or self.header_bytes
            if self.codec is None:
                stream.seek(begin)
            else:  # a compressed file is one partition: skip the header by reading it
                stream.read(self.header_bytes)
            remaining = None if stop is None else stop - begin
            pending, ends, quoted, eof = b"", np.empty(0, dtype=np.int64), False, False
            bytes_per_row = 2048.0
            while True:
                if len(ends) >= chunk_rows or (eof and pending):
                    cut = int(ends[chunk_rows - 1]) + 1 if len(ends) >= chunk_rows else len(pending)
                    # A view, not a copy: one block's bytes are alive at a time.
                    yield memoryview(pending)[:cut], raw.tell()
                    pending = pending[cut:]
                    ends = ends[ends >= cut] - cut
                    continue
                if eof:
                    return
                want = max(1 << 20, int((chunk_rows - len(ends)) * bytes_per_row * 1.05))
                if remaining is not None:
                    want = min(want, remaining)
                more = stream.read(want) if want > 0 else b""
                if not more:
                    eof = True
                    continue
                if remaining is not None:
                    remaining -= len(more)
                scanned = len(pending)
                pending += more
                new_ends, quoted = _row_ends(pending, scanned, quoted)
                ends = np.concatenate([ends, new_ends]) if len(ends) else new_ends
                if len(ends):
                    bytes_per_row = max(16.0, (int(ends[-1]) + 1) / len(ends))


class _Stream:
    """The file, decompressed if need be; yields (stream, raw file) so progress can be read
    in bytes of the file on disk."""

    def __init__(self, path: Path, codec: str | None) -> None:
        self.path, self.codec = path, codec

    def __enter__(self) -> tuple[pa.NativeFile | _Decompressed, pa.NativeFile]:
        self.raw = pa.OSFile(str(self.path), "rb")
        self.stream = (
            _Decompressed(pa.CompressedInputStream(self.raw, self.codec), self.path)
            if self.codec
            else self.raw
        )
        return self.stream, self.raw

    def __exit__(self, *exc: object) -> None:
        self.stream.close()
        self.raw.close()


class _Decompressed:
    """A decompressing stream whose read errors (a truncated or corrupt file) are reported as
    bad input, not as an internal error."""

    def __init__(self, stream: pa.NativeFile, path: Path) -> None:
        self.inner, self.path = stream, path

    def read(self, size: int) -> bytes:
        try:
            return self.inner.read(size)
        except OSError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataValidationError(
                f"{self.path}: not a readable compressed CSV file, truncated or corrupt "
                f"({first[:200]})"
            ) from exc

    def close(self) -> None:
        self.inner.close()


class _BlockParser:
    """Parse CSV blocks: fast and typed, or slowly as text when the fast way fails."""

    def __init__(self, columns: list[str], include: list[str]) -> None:
        self.columns, self.include = columns, include
        self.id_type: pa.DataType | None = None

    def _convert(self, types: dict[str, pa.DataType]) -> pacsv.ConvertOptions:
        return pacsv.ConvertOptions(
            column_types=types,
            include_columns=self.include,
            null_values=list(NA_VALUES),
            strings_can_be_null=True,
        )

    def parse(self, block: bytes | memoryview, position: int) -> RawChunk:
        types: dict[str, pa.DataType] = dict.fromkeys(KPI_FEATURES, pa.float64())
        if self.id_type is not None:
            types[SAMPLE_ID] = self.id_type
        try:
            table = pacsv.read_csv(
                pa.py_buffer(block),
                read_options=pacsv.ReadOptions(column_names=self.columns),
                convert_options=self._convert(types),
            )
        except pa.ArrowInvalid:
            return self._parse_text(block, position)
        if SAMPLE_ID in self.include and self.id_type is None:
            kind = table.schema.field(SAMPLE_ID).type
            if not pa.types.is_null(kind):
                self.id_type = kind
        positions = np.arange(position, position + table.num_rows)
        return RawChunk(positions=positions, typed=table)

    def _parse_text(self, block: bytes | memoryview, position: int) -> RawChunk:
        ragged: list[pacsv.InvalidRow] = []

        def keep(row: pacsv.InvalidRow) -> str:
            ragged.append(row)
            return "skip"

        table = pacsv.read_csv(
            pa.py_buffer(block),
            # One block for the whole chunk: a cell over the default 1 MB block size would
            # straddle two blocks and fail the parse (the fast path's error that led here).
            read_options=pacsv.ReadOptions(
                column_names=self.columns, use_threads=False, block_size=len(block) + 1
            ),
            parse_options=pacsv.ParseOptions(invalid_row_handler=keep),
            convert_options=self._convert(dict.fromkeys(self.include, pa.string())),
        )
        # Row numbers of the parser count from 1 at the block's first line.
        dropped = np.asarray([row.number - 1 for row in ragged], dtype=np.int64)
        kept = np.setdiff1d(np.arange(table.num_rows + len(ragged)), dropped)
        if SAMPLE_ID in self.include:
            table = self._typed_ids(table)
        raw = table.to_pandas()
        raw.index = pd.RangeIndex(len(raw))
        return RawChunk(
            positions=kept + position,
            raw=raw,
            ragged=[
                RaggedRow(int(d) + position, row.actual_columns, row.expected_columns, row.text)
                for d, row in zip(dropped, ragged, strict=True)
            ],
        )

    def _typed_ids(self, table: pa.Table) -> pa.Table:
        """Sample ids read as text get the type the earlier blocks had (or int, or float)."""
        column = table.column(SAMPLE_ID)
        for kind in [self.id_type] if self.id_type is not None else [pa.int64(), pa.float64()]:
            try:
                typed = pc.cast(column, kind)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            return table.set_column(table.schema.get_field_index(SAMPLE_ID), SAMPLE_ID, typed)
        return table


class ParquetSource:
    """A Parquet file of incidents: its columns, and its rows in record batches."""

    def __init__(self, path: Path) -> None:
        check_source_file(path)
        self.path = path
        try:
            self.file = pq.ParquetFile(str(path))
        except (pa.ArrowInvalid, OSError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataValidationError(
                f"{path}: not a readable Parquet file ({first[:200]})"
            ) from exc
        self.size = self.file.metadata.num_rows
        original = self.file.schema_arrow.names
        self.columns = [name.strip() for name in original]
        check_columns(self.columns, path)
        self._names = dict(zip(self.columns, original, strict=True))
        self.include = [c for c in (SAMPLE_ID, *KPI_FEATURES) if c in self.columns]

    def partitions(self, count: int, min_bytes: int = 0) -> list[Partition]:
        """Contiguous runs of row groups, at most ``count`` of them."""
        groups = self.file.num_row_groups
        count = max(1, min(count, groups))
        bounds = [groups * k // count for k in range(count + 1)]
        rows = [self.file.metadata.row_group(g).num_rows for g in range(groups)]
        return [
            Partition(
                str(self.path),
                index=i,
                count=count,
                start=bounds[i],
                stop=bounds[i + 1],
                first_row=sum(rows[: bounds[i]]),
            )
            for i in range(count)
        ]

    def chunks(self, chunk_rows: int, partition: Partition | None = None) -> Iterator[RawChunk]:
        """Record batches of ``chunk_rows`` rows; KPI columns cast to float64 when numeric."""
        groups = self.file.num_row_groups
        start = partition.start if partition else 0
        stop = partition.stop if partition and partition.stop is not None else groups
        position = 0
        batches = self.file.iter_batches(
            batch_size=chunk_rows,
            row_groups=list(range(start, stop)),
            columns=[self._names[c] for c in self.include],
        )
        clock = time.perf_counter()
        for batch in batches:
            table = pa.Table.from_batches([batch]).rename_columns(self.include)
            positions = np.arange(position, position + table.num_rows)
            position += table.num_rows
            if all(_numeric(table.schema.field(c).type) for c in KPI_FEATURES):
                casts = [
                    pc.cast(table.column(c), pa.float64()) if c in KPI_FEATURES else table.column(c)
                    for c in self.include
                ]
                chunk = RawChunk(positions, pa.table(casts, names=self.include), progress=position)
            else:
                chunk = RawChunk(positions, raw=table.to_pandas(), progress=position)
            chunk.seconds = time.perf_counter() - clock
            yield chunk
            clock = time.perf_counter()


def _numeric(kind: pa.DataType) -> bool:
    """Numbers (or no value at all); booleans are not KPI values (see ``coerce_numeric``)."""
    return pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_null(kind)


IncidentSource = CsvSource | ParquetSource


def open_source(path: Path | str) -> IncidentSource:
    """Open a CSV or Parquet file of incidents (judged by its name) and check its columns."""
    path = Path(path)
    return ParquetSource(path) if file_format(path) == "parquet" else CsvSource(path)


T = TypeVar("T")
_DONE = object()


class Prefetch(Generic[T]):
    """Iterate ``source`` in a background thread, ahead of the consumer within a budget.

    Parsing (pyarrow, which releases the GIL) overlaps with scoring and with loading the model.
    The items waiting at any time cost at most ``budget`` together (by ``cost``, e.g. bytes; by
    default each item costs 1, so ``budget`` is a number of items); one item is always let
    through, whatever it costs. Exceptions of the source are raised in the consumer.
    """

    def __init__(
        self, source: Iterable[T], budget: int = 2, cost: Callable[[T], int] | None = None
    ) -> None:
        self._source = source
        self._budget = budget
        self._cost = cost or (lambda _: 1)
        self._items: collections.deque[tuple[object, int]] = collections.deque()
        self._held = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._started = False

    def start(self) -> None:
        """Start reading ahead (``with`` and iteration start it too)."""
        if not self._started:
            self._started = True
            self._thread.start()

    def _put(self, item: object, cost: int) -> bool:
        with self._changed:
            while self._items and self._held + cost > self._budget:
                if self._stop.is_set():
                    return False
                self._changed.wait(timeout=0.1)
            if self._stop.is_set():
                return False
            self._items.append((item, cost))
            self._held += cost
            self._changed.notify_all()
            return True

    def _run(self) -> None:
        iterator = iter(self._source)
        try:
            for item in iterator:
                if not self._put(item, self._cost(item)):
                    break
            else:
                self._put(_DONE, 0)
        except BaseException as exc:  # handed over to the consumer
            self._put(exc, 0)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> Prefetch[T]:
        self.start()
        return self

    def __iter__(self) -> Iterator[T]:
        self.start()
        while True:
            with self._changed:
                while not self._items:
                    self._changed.wait()
                item, cost = self._items.popleft()
                self._held -= cost
                self._changed.notify_all()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def close(self) -> None:
        """Stop the background thread (it stops at its next item)."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AtomicTableWriter:
    """Append Arrow tables to a temporary file beside ``path``; ``commit()`` renames it onto
    ``path``. Leaving the ``with`` block without ``commit()`` deletes the temporary file.

    ``kind``: ``csv`` (``.gz`` compressed if the name says so), ``parquet`` or ``arrow`` (IPC,
    for partition parts). The CSV header is written as plain names, unquoted.
    """

    def __init__(self, path: Path, columns: list[str], kind: str | None = None) -> None:
        self.path = path
        self.columns = columns
        self.kind = kind or file_format(path)
        self.rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self._sink: pa.NativeFile | None = None
        self._writer: pacsv.CSVWriter | pq.ParquetWriter | pa.RecordBatchFileWriter | None = None
        self._schema: pa.Schema | None = None
        self._done = False

    def __enter__(self) -> AtomicTableWriter:
        return self

    def _open(self, schema: pa.Schema) -> None:
        self._schema = schema
        if self.kind == "parquet":
            self._writer = pq.ParquetWriter(str(self.tmp), schema)
        elif self.kind == "arrow":
            self._sink = pa.OSFile(str(self.tmp), "wb")
            self._writer = pa.ipc.new_file(self._sink, schema)
        else:
            sink = pa.OSFile(str(self.tmp), "wb")
            self._sink = (
                pa.CompressedOutputStream(sink, "gzip")
                if self.path.name.lower().endswith(".gz")
                else sink
            )
            line = io.StringIO()
            csv.writer(line, lineterminator="\n").writerow(self.columns)
            self._sink.write(line.getvalue().encode())
            self._writer = pacsv.CSVWriter(
                self._sink, schema, write_options=pacsv.WriteOptions(include_header=False)
            )

    def write(self, table: pa.Table) -> None:
        """Append rows (columns named and ordered as ``columns``)."""
        if self._writer is None:
            self._open(table.schema)
        elif not table.schema.equals(self._schema):
            table = table.cast(self._schema)
        self._writer.write_table(table)  # type: ignore[union-attr]
        self.rows += table.num_rows

    def commit(self, empty_schema: pa.Schema | None = None) -> Path:
        """Close and rename onto the final name; a file that got no rows gets the header."""
        if self._writer is None:
            schema = empty_schema or pa.schema([(c, pa.string()) for c in self.columns])
            self._open(schema)
            if self.kind != "csv":
                self._writer.write_table(schema.empty_table())  # type: ignore[union-attr]
        self._close()
        os.chmod(self.tmp, _FILE_MODE)
        os.replace(self.tmp, self.path)
        self._done = True
        return self.path

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._sink is not None and not self._sink.closed:
            self._sink.close()

    def abort(self) -> None:
        """Drop the temporary file; the final name is untouched."""
        if self._done:
            return
        try:
            self._close()
        finally:
            self.tmp.unlink(missing_ok=True)
            self._done = True

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()
