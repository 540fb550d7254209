"""Batch scoring: files of incidents in, files of diagnoses out.

Three ways, one scoring function (``FaultDiagnoser.diagnose``) and one set of output columns:

- :func:`score_file` — one shot: the whole file in memory, validated by the full Great
  Expectations contract. For small files (uploads, tests).
- :func:`stream_file` — what ``systemhealer predict`` runs: the file in chunks with bounded
  memory, parsing overlapped with scoring, the output written as it goes to a temporary file
  that is renamed onto the final name at the end.
- :func:`score_partition` + :func:`merge_partitions` — one slice of a file per task (the Prefect
  batch-scoring flow, on threads or on a Dask cluster), merged in order into one output.

What validates what in the chunked paths: the schema (every KPI column, no duplicates) is checked
once from the header; every chunk gets row-level checks in numpy that implement the contract's
row rules (KPI values are numbers, and finite) and decide the bad rows; the Great Expectations
contract itself (:func:`systemhealer.validation.validate_frame`) runs on the first
``scoring.gx_sample_rows`` rows of each file, and the job stops if it and the numpy checks
disagree there. Rows without any KPI value are scored (as in the one-shot path) and counted.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from systemhealer.config import FAULT_CLASSES, DataSettings, Settings
from systemhealer.data import (
    KPI_FEATURES,
    PREDICTION_COLUMNS,
    SAMPLE_ID,
    coerce_numeric,
    feature_matrix,
    file_format,
    sample_ids,
    spreadsheet_safe,
    spreadsheet_safe_text,
    text_to_numbers,
)
from systemhealer.errors import DataValidationError, OutputError, SystemHealerError
from systemhealer.features import TRAINING_DEPLOYMENT, DeploymentStats
from systemhealer.streaming import (
    AtomicTableWriter,
    ParquetSource,
    Partition,
    Prefetch,
    RawChunk,
    open_source,
)
from systemhealer.validation import require_valid, validate_frame

if TYPE_CHECKING:  # torch (via the diagnoser) is imported while the first chunks are parsed
    from systemhealer.diagnoser import FaultDiagnoser

ON_BAD_ROWS = ("fail", "skip")
BAD_ROWS_SUFFIX = ".bad-rows.csv"
SKIP_HINT = "use --on-bad-rows skip to score the other rows and list the bad ones in a side file"


@dataclass(frozen=True)
class ScoringModel:
    """What a job scores with: the diagnoser and the deployment statistics it normalises with."""

    diagnoser: FaultDiagnoser
    deployment: DeploymentStats | None = None
    description: str = "the given model"

    @property
    def deployment_name(self) -> str:
        return self.deployment.name if self.deployment else TRAINING_DEPLOYMENT


ModelLoader = Callable[[], ScoringModel]


@dataclass(frozen=True)
class ScoringSummary:
    """What a scoring job did."""

    rows: int
    output: str
    class_counts: dict[str, int]
    deployment: str
    bad_rows: int = 0
    bad_rows_file: str | None = None
    empty_rows: int = 0
    seconds: float = 0.0
    chunks: int = 0
    partitions: int = 1
    source: str = ""
    model: str = ""
    contract_sample: dict[str, Any] | None = None
    # The input had no sample_id column: the output numbers its incidents in file order.
    generated_ids: bool = False
    # Seconds per stage (the parser thread's time overlaps the others').
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        """Incidents read (scored or set aside) per second of the job."""
        return (self.rows + self.bad_rows) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": round(self.rows_per_second, 1)}


# --- the one-shot path ------------------------------------------------------------------------


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
    """Write CSV (``.gz`` too) or Parquet by name, as the streamed outputs are written (the same
    quoting and number format; CSV text made spreadsheet-safe), under a temporary name, then
    rename: never a half-written result."""
    safe = spreadsheet_safe(frame) if file_format(output) == "csv" else frame
    # Ids of any other kind (text, mixed, dates, integers beyond int64) are written as text.
    text = [c for c in safe.columns if not pd.api.types.is_numeric_dtype(safe[c])]
    table = pa.Table.from_pandas(safe.astype(dict.fromkeys(text, "string")), preserve_index=False)
    with AtomicTableWriter(output, [str(c) for c in frame.columns]) as out:
        out.write(table)
        out.commit()


def score_file(
    path: Path,
    output: Path,
    diagnoser: FaultDiagnoser,
    settings: Settings,
    deployment: DeploymentStats | None = None,
) -> ScoringSummary:
    """Validate and score a whole file of incidents in memory; write the diagnoses atomically."""
    from systemhealer.data import read_incidents

    started = time.perf_counter()
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
        deployment=deployment.name if deployment else TRAINING_DEPLOYMENT,
        seconds=time.perf_counter() - started,
        source=str(path),
        generated_ids=SAMPLE_ID not in raw.columns,
    )


# --- row-level checks of one chunk --------------------------------------------------------------


@dataclass
class CheckedChunk:
    """A chunk split into rows to score and bad rows with their reasons.

    The rows to score are a float64 matrix of the KPI columns (NaN = missing); :meth:`values`
    takes the columns a model needs.
    """

    kpis: np.ndarray
    positions: np.ndarray
    ids: np.ndarray | None
    bad: pa.Table | None
    cell_counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.positions)

    def values(self, columns: np.ndarray | None = None) -> np.ndarray:
        """KPI values (float64, NaN = missing) of the rows to score; ``columns`` are indices into
        ``KPI_FEATURES`` (default: all)."""
        return self.kpis if columns is None else self.kpis[:, columns]

    @property
    def features(self) -> pd.DataFrame:
        """The rows to score as a frame of the KPI columns."""
        return pd.DataFrame(self.values(), columns=list(KPI_FEATURES), copy=False)


def _kpi_matrix(table: pa.Table) -> np.ndarray:
    """The KPI columns of a typed table as a float64 matrix (NaN = missing). Column-major, so
    that filling and reading a column are contiguous."""
    matrix = np.empty((table.num_rows, len(KPI_FEATURES)), dtype=np.float64, order="F")
    for j, column in enumerate(KPI_FEATURES):
        matrix[:, j] = table.column(column).to_numpy()
    return matrix


def _bad_table(
    positions: np.ndarray, reasons: list[str], values: pa.Table | None, with_id: bool
) -> pa.Table:
    """Bad rows: ``row`` (position for now; 1-based in the side file), ``reason``, input as text."""
    columns = [SAMPLE_ID, *KPI_FEATURES] if with_id else list(KPI_FEATURES)
    arrays: list[pa.Array] = [pa.array(positions, pa.int64()), pa.array(reasons, pa.string())]
    for column in columns:
        if values is None:
            arrays.append(pa.nulls(len(positions), pa.string()))
        else:
            # The raw cells as sent: neutralise formulas, as in the diagnoses themselves.
            text = pc.cast(values.column(column), pa.string()).combine_chunks()
            arrays.append(spreadsheet_safe_text(text))
    return pa.table(arrays, names=["row", "reason", *columns])


def _check_typed(chunk: RawChunk) -> CheckedChunk | None:
    """The usual case, checked in one pass over the KPI matrix: a chunk parsed typed whose KPI
    values are all finite. None if it has an infinite value (the general path names them)."""
    table = chunk.typed
    if table is None or chunk.ragged:
        return None
    matrix = _kpi_matrix(table)
    if np.isinf(matrix).any():
        return None
    # A float NaN (Arrow reads "NAN", Parquet may hold it) is missing like a null.
    ids = (
        table.column(SAMPLE_ID).to_numpy(zero_copy_only=False)
        if SAMPLE_ID in table.column_names
        else None
    )
    return CheckedChunk(matrix, chunk.positions, ids, None)


def check_chunk(chunk: RawChunk) -> CheckedChunk:
    """Apply the contract's row rules to a chunk: KPI values must be numbers and finite."""
    fast = _check_typed(chunk)
    if fast is not None:
        return fast
    problems: dict[int, list[str]] = {}
    counts: Counter[tuple[str, str]] = Counter()
    if chunk.typed is not None:
        table = chunk.typed
        matrix = _kpi_matrix(table)
        ids = (
            table.column(SAMPLE_ID).to_numpy(zero_copy_only=False)
            if SAMPLE_ID in table.column_names
            else None
        )
    else:
        raw = chunk.raw if chunk.raw is not None else pd.DataFrame()
        coerced, bad_cells = coerce_numeric(raw, list(KPI_FEATURES))
        for cells in bad_cells:
            _, mask = text_to_numbers(raw[cells.column])
            where = np.flatnonzero(mask.to_numpy())
            counts["type", cells.column] += len(where)
            texts = raw[cells.column].iloc[where].astype("string").str.strip().str.slice(0, 40)
            for i, text in zip(where, texts, strict=True):
                problems.setdefault(int(i), []).append(
                    f"'{cells.column}' is not a number ({text!r})"
                )
        matrix = coerced[list(KPI_FEATURES)].to_numpy(dtype=np.float64)
        ids = raw[SAMPLE_ID].to_numpy() if SAMPLE_ID in raw.columns else None
        table = None
    infinite = np.isinf(matrix)
    if infinite.any():
        for j in np.flatnonzero(infinite.any(axis=0)):
            column = KPI_FEATURES[j]
            rows = np.flatnonzero(infinite[:, j])
            counts["infinite", column] += len(rows)
            for i in rows:
                problems.setdefault(int(i), []).append(f"'{column}' is infinite ({matrix[i, j]})")
    bad: pa.Table | None = None
    with_id = ids is not None
    if problems or chunk.ragged:
        where = np.asarray(sorted(problems), dtype=np.int64)
        keep = np.ones(len(matrix), dtype=bool)
        keep[where] = False
        if table is not None:
            values = table.take(pa.array(where))
        else:
            values = pa.Table.from_pandas(
                raw.iloc[where].astype("string"),
                preserve_index=False,  # type: ignore[union-attr]
            )
        parts = [
            _bad_table(
                chunk.positions[where], ["; ".join(problems[i]) for i in where], values, with_id
            )
        ]
        if chunk.ragged:
            parts.append(
                _bad_table(
                    np.asarray([r.position for r in chunk.ragged], dtype=np.int64),
                    [
                        f"has {r.fields} fields, expected {r.expected}: {r.text[:120]}"
                        for r in chunk.ragged
                    ],
                    None,
                    with_id,
                )
            )
            counts["fields", "*"] += len(chunk.ragged)
        bad = pa.concat_tables(parts).sort_by("row")
        matrix, positions = matrix[keep], chunk.positions[keep]
        ids = ids[keep] if ids is not None else None
    else:
        positions = chunk.positions
    return CheckedChunk(matrix, positions, ids, bad, counts)


# --- the Great Expectations contract on the first rows ------------------------------------------


def _as_text(chunk: RawChunk) -> pd.DataFrame:
    """A chunk as a chunk read as text holds it: KPI cells as strings, ids as typed."""
    if chunk.raw is not None:
        return chunk.raw
    typed = chunk.typed
    assert typed is not None
    schema = pa.schema(
        [f if f.name == SAMPLE_ID else pa.field(f.name, pa.string()) for f in typed.schema]
    )
    return typed.cast(schema).to_pandas()


class ContractSample:
    """Run the GX contract on the first rows of a file beside the job, then check that it agrees
    with the numpy row checks on those rows (it is the reference they implement).

    In a thread by default: a long-lived process (the service) imports Great Expectations once.
    ``in_child`` runs it in a child process instead, for a one-off job (``systemhealer
    predict``): importing GX costs seconds of CPU, and in a thread it would hold the GIL the
    scoring loop needs. The child starts at once and imports GX while the job loads its model;
    the sample then goes to it in a temporary Arrow file. Daemonic processes (Dask workers)
    cannot have children: a thread again. :meth:`close` stops the check.
    """

    def __init__(
        self, rows: int, settings: DataSettings, source: str, in_child: bool = False
    ) -> None:
        self.rows, self.settings, self.source = rows, settings, source
        self.in_child = in_child and not multiprocessing.current_process().daemon
        self._worker: threading.Thread | multiprocessing.process.BaseProcess | None = None
        self._answer: Any = None  # the parent's end of the child's pipe, or the thread's list
        self._request: multiprocessing.connection.Connection | None = None  # sample → child
        self._sample_file: Path | None = None
        self._expected: Counter[tuple[str, str]] = Counter()
        self._sample_rows = 0
        self._offered = False
        self._pending: list[RawChunk] = []  # the sample's rows so far
        self._pending_rows = 0
        if self.in_child and rows > 0:
            self._start_child()

    def _start_child(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._answer, sender = context.Pipe(duplex=False)
        requests, self._request = context.Pipe(duplex=False)
        self._worker = context.Process(
            target=_contract_child,
            args=(requests, sender, self.source, self.settings),
            name="systemhealer-contract",
            daemon=True,
        )
        self._worker.start()
        sender.close()  # the child holds the only writing end: its death ends recv()
        requests.close()

    def offer(self, chunk: RawChunk) -> None:
        """Collect the sample from the file's first chunks, as many as its rows need (small
        ``--chunk-rows`` do not shrink it); the check starts once it is complete."""
        if self._offered or self.rows <= 0:
            return
        n = min(self.rows - self._pending_rows, len(chunk.positions))
        if n == 0:
            return
        self._pending_rows += n
        if chunk.typed is not None:
            self._pending.append(
                RawChunk(positions=chunk.positions[:n], typed=chunk.typed.slice(0, n))
            )
        else:
            raw = chunk.raw.iloc[:n].reset_index(drop=True)  # type: ignore[union-attr]
            self._pending.append(RawChunk(positions=chunk.positions[:n], raw=raw))
        if self._pending_rows >= self.rows:
            self._start()

    def _start(self) -> None:
        """Start the check on the rows collected (a file shorter than the sample: all)."""
        pending, self._pending = self._pending, []
        positions = np.concatenate([c.positions for c in pending])
        if all(c.typed is not None for c in pending):
            typed = pa.concat_tables([c.typed for c in pending], promote_options="permissive")
            sample = RawChunk(positions=positions, typed=typed)
            frame = typed.to_pandas()
        else:  # some rows were read as text: the sample is text, as those chunks are
            frame = pd.concat([_as_text(c) for c in pending], ignore_index=True)
            sample = RawChunk(positions=positions, raw=frame)
        n = len(positions)
        self._expected = check_chunk(sample).cell_counts
        self._sample_rows = n
        self._offered = True
        if not self.in_child:
            self._answer = []
            self._worker = threading.Thread(
                target=_contract_job,
                args=(self._answer.append, frame, self.source, self.settings),
                daemon=True,
            )
            self._worker.start()
            return
        fd, name = tempfile.mkstemp(prefix="systemhealer-contract-", suffix=".arrow")
        os.close(fd)
        self._sample_file = Path(name)
        frame.to_feather(self._sample_file)
        with contextlib.suppress(OSError):  # a child that died early: result() says how
            self._request.send(str(self._sample_file))  # type: ignore[union-attr]

    def _outcome(self) -> tuple[str, Any]:
        worker = self._worker
        outcome: tuple[str, Any] | None = None
        if isinstance(worker, threading.Thread):
            worker.join()
            outcome = self._answer[0] if self._answer else None
            stopped = "its thread ended without an answer"
        else:
            received: BaseException | None = None
            try:
                outcome = self._answer.recv()
            except Exception as exc:  # EOF: the child died; or an answer that does not unpickle
                received = exc
            worker.join(timeout=30)  # type: ignore[union-attr]  # it exits once it has answered
            self.close()
            stopped = f"its process ended with exit code {worker.exitcode}"  # type: ignore[union-attr]
            if received is not None and not isinstance(received, EOFError):
                stopped += f"; its answer could not be read: {received}"
        if outcome is None:
            raise SystemHealerError(
                f"{self.source}: the Great Expectations check of the first rows stopped ({stopped})"
            )
        return outcome

    def close(self) -> None:
        """Stop the check if it still runs (a job that failed does not wait for it)."""
        if self._request is not None:
            self._request.close()
        worker = self._worker
        if isinstance(worker, multiprocessing.process.BaseProcess) and worker.is_alive():
            worker.terminate()
            worker.join(timeout=5)
        if self._sample_file is not None:
            self._sample_file.unlink(missing_ok=True)

    def result(self) -> dict[str, Any] | None:
        """Wait for the contract; raise if it blocks rows the numpy checks let through."""
        if not self._offered and self._pending:
            self._start()
        if not self._offered:
            self.close()
            return None
        kind, report = self._outcome()
        if kind == "error":
            raise report
        found: Counter[tuple[str, str]] = Counter()
        for issue in report.errors:
            found[issue.check, issue.column or "*"] += issue.count or 1
        if found != self._expected:
            raise SystemHealerError(
                f"{self.source}: the Great Expectations contract and the chunk checks disagree on "
                f"the first {self._sample_rows} rows (contract: {dict(found)}, chunk checks: "
                f"{dict(self._expected)}); please report this, with the file if possible"
            )
        return {
            "rows": self._sample_rows,
            "blocking_issues": len(report.errors),
            "warnings": len(report.warnings),
            "checks_run": report.checks_run,
        }


def _contract_child(
    requests: multiprocessing.connection.Connection,
    sender: multiprocessing.connection.Connection,
    source: str,
    settings: DataSettings,
) -> None:
    """The child process of a :class:`ContractSample`: import GX, wait for the sample's file,
    validate, answer."""
    from systemhealer.validation import load_great_expectations

    try:
        load_great_expectations()  # seconds, while the parent loads its model
    except Exception as exc:  # said as the check's answer, not as a dead child
        sender.send(("error", SystemHealerError(f"{source}: Great Expectations: {exc!r}")))
        return
    try:
        sample = requests.recv()
    except EOFError:  # the job ended without a sample
        return
    _contract_job(sender.send, pd.read_feather(sample), source, settings)
    sender.close()


def _contract_job(
    answer: Callable[[tuple[str, Any]], None],
    frame: pd.DataFrame,
    source: str,
    settings: DataSettings,
) -> None:
    """Validate a sample with the GX contract; answer ("report", report) or ("error", exc)."""
    try:
        report, _ = validate_frame(frame, source, settings, require_label=False)
        outcome: tuple[str, Any] = ("report", report)
    except Exception as exc:  # handed over to the job
        outcome = ("error", exc)
    try:
        answer(outcome)
    except Exception:  # an exception that cannot cross the pipe still says what it was
        answer(("error", SystemHealerError(f"{source}: {outcome[1]}")))


# --- scoring chunks -----------------------------------------------------------------------------

# Rows per call of the diagnoser: bounds the preprocessing's temporaries (its encoding expands a
# row many-fold) whatever the chunk size. Calls run on ``threads`` threads at once: numpy and
# torch release the GIL, so the cores are shared with the parsing thread.
SCORE_BATCH_ROWS = 4096
# Memory of the chunks parsed ahead of the one being scored: ~70k rows of KPI values, enough
# that the parser keeps a core busy while the model loads (imports and MLflow take seconds).
# A chunk parsed as text (a bad file) counts what its strings cost, so fewer of them wait.
PREFETCH_BYTES = 64 << 20

DEFAULT_THREADS = max(1, min(2, os.cpu_count() or 1))


def diagnose_rows(
    model: ScoringModel, values: np.ndarray, pool: ThreadPoolExecutor | None = None
) -> np.ndarray:
    """Class probabilities of raw values in the model's columns (see
    :meth:`FaultDiagnoser.probabilities_of_values`), in batches of at most
    :data:`SCORE_BATCH_ROWS` rows."""
    diagnoser = model.diagnoser
    parts = max(1, -(-len(values) // SCORE_BATCH_ROWS))
    if parts == 1:
        return diagnoser.probabilities_of_values(values, model.deployment)
    bounds = np.linspace(0, len(values), parts + 1).astype(int)
    batches = [values[a:b] for a, b in itertools.pairwise(bounds)]

    def probabilities(batch: np.ndarray) -> np.ndarray:
        return diagnoser.probabilities_of_values(batch, model.deployment)

    results = list(pool.map(probabilities, batches) if pool else map(probabilities, batches))
    return np.concatenate(results)


def diagnoses_table(ids: np.ndarray, probabilities: np.ndarray) -> pa.Table:
    """The prediction columns as Arrow: what ``diagnoses_frame`` with the ids in front gives,
    without the pandas round trip (text ids are made spreadsheet-safe as there)."""
    if ids.dtype.kind in "iuf":
        id_column = pa.array(ids, from_pandas=True)  # a missing id (NaN) stays missing
    else:
        frame = spreadsheet_safe(pd.DataFrame({SAMPLE_ID: ids}))
        id_column = pa.Table.from_pandas(frame, preserve_index=False).column(0)
    labels = np.asarray(FAULT_CLASSES)[probabilities.argmax(axis=1)]
    columns = [id_column, pa.array(labels), pa.array(probabilities.max(axis=1).astype(np.float64))]
    wide = probabilities.astype(np.float64)
    columns += [pa.array(wide[:, j]) for j in range(wide.shape[1])]
    return pa.table(columns, names=list(PREDICTION_COLUMNS))


@dataclass
class _Tally:
    rows_seen: int = 0
    rows: int = 0
    bad_rows: int = 0
    empty_rows: int = 0
    chunks: int = 0
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(len(FAULT_CLASSES), int))
    stages: Counter[str] = field(default_factory=Counter)

    def counts(self) -> dict[str, int]:
        return {str(c): int(n) for c, n in zip(FAULT_CLASSES, self.class_counts, strict=True) if n}


def _bad_rows_message(source: str, bad: pa.Table, offset: int | None, where: str = "") -> str:
    first = bad.slice(0, 1).to_pylist()[0]
    row = f"row {first['row'] + 1 + offset}" if offset is not None else f"a row{where}"
    ident = f" (sample_id {first[SAMPLE_ID]})" if first.get(SAMPLE_ID) else ""
    more = f" (and {bad.num_rows - 1} more bad rows in the same chunk)" if bad.num_rows > 1 else ""
    return f"{source}: {row}{ident}: {first['reason']}{more}; nothing was written ({SKIP_HINT})"


def _score_chunks(
    chunks: Iterable[RawChunk],
    model: ScoringModel,
    out: AtomicTableWriter,
    bad_out: AtomicTableWriter | None,
    source: str,
    first_row: int | None,
    on_chunk: Callable[[RawChunk, _Tally], None] | None = None,
    contract: ContractSample | None = None,
    where: str = "",
    threads: int = 1,
) -> _Tally:
    """Check, score and write chunks; bad rows go to ``bad_out`` (or raise if it is None)."""
    import torch

    tally = _Tally()
    pool = stack_pool = None
    torch_threads = torch.get_num_threads()
    if threads > 1:
        stack_pool = pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score")
        torch.set_num_threads(1)  # the pool's threads share the cores instead
    try:
        _score_loop(
            chunks, model, out, bad_out, source, first_row, on_chunk, contract, where, pool, tally
        )
    finally:
        if stack_pool is not None:
            stack_pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(torch_threads)
    return tally


def _score_loop(
    chunks: Iterable[RawChunk],
    model: ScoringModel,
    out: AtomicTableWriter,
    bad_out: AtomicTableWriter | None,
    source: str,
    first_row: int | None,
    on_chunk: Callable[[RawChunk, _Tally], None] | None,
    contract: ContractSample | None,
    where: str,
    pool: ThreadPoolExecutor | None,
    tally: _Tally,
) -> None:
    offset = first_row or 0
    stages = tally.stages
    iterator = iter(chunks)
    while True:
        clock = time.perf_counter()
        chunk = next(iterator, None)
        if chunk is None:
            break
        stages["reading (waited for)"] += time.perf_counter() - clock
        stages["reading (parser thread)"] += chunk.seconds
        clock = time.perf_counter()
        if contract is not None:
            contract.offer(chunk)
        checked = check_chunk(chunk)
        chunk.typed = chunk.raw = None  # the checked copy is all that is needed from here
        stages["row checks"] += time.perf_counter() - clock
        if checked.bad is not None:
            if bad_out is None:
                raise DataValidationError(_bad_rows_message(source, checked.bad, first_row, where))
            rows = pc.add(checked.bad.column("row"), 1 + offset)
            bad_out.write(checked.bad.set_column(0, "row", rows))
            tally.bad_rows += checked.bad.num_rows
        clock = time.perf_counter()
        values = checked.values(model.diagnoser.kpi_positions)
        probabilities = diagnose_rows(model, values, pool)
        stages["diagnosis (preprocessing + network)"] += time.perf_counter() - clock
        clock = time.perf_counter()
        ids = checked.ids if checked.ids is not None else checked.positions + offset
        diagnoses = diagnoses_table(ids, probabilities)
        out.write(diagnoses)
        stages["writing"] += time.perf_counter() - clock
        tally.class_counts += np.bincount(
            diagnoses.column("predicted_label").to_numpy(), minlength=len(FAULT_CLASSES)
        )[: len(FAULT_CLASSES)]
        tally.rows += diagnoses.num_rows
        tally.rows_seen += chunk.rows
        # Incidents with no value in any column the model reads (not only none at all).
        tally.empty_rows += int(np.isnan(values).all(axis=1).sum())
        tally.chunks += 1
        if on_chunk is not None:
            on_chunk(chunk, tally)


def bad_rows_path(output: Path) -> Path:
    """The side file of bad rows beside an output: ``out.csv`` → ``out.bad-rows.csv``."""
    name = output.name
    for suffix in (".csv.gz", ".csv", ".parquet", ".pq", ".gz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return output.with_name(name + BAD_ROWS_SUFFIX)


def check_job(path: Path, output: Path, on_bad_rows: str) -> None:
    """Refuse a job that cannot be right before any work: unknown mode, output over input."""
    if on_bad_rows not in ON_BAD_ROWS:
        raise DataValidationError(f"--on-bad-rows must be one of {', '.join(ON_BAD_ROWS)}")
    check_output(path, output)
    if on_bad_rows == "skip" and path.resolve() == bad_rows_path(output).resolve():
        raise DataValidationError(f"{output}: its bad-rows side file would overwrite the input")


OUTPUT_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def check_output(path: Path, output: Path) -> None:
    """Refuse an output that would overwrite the input, is a folder, names a format that is
    not written (anything but CSV, gzipped CSV or Parquet), or lies where nothing can be
    written (checked by writing there: before the work, not after it)."""
    if output.resolve() == path.resolve():
        raise DataValidationError(f"{output}: the output would overwrite the input")
    if output.is_dir():
        raise DataValidationError(f"{output}: is a folder; give the output file's name")
    if not output.name.lower().endswith(OUTPUT_SUFFIXES):
        raise DataValidationError(
            f"{output}: outputs are written as {', '.join(OUTPUT_SUFFIXES)}; "
            "give the file one of these endings"
        )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}.probe."):
            pass
    except OSError as exc:
        raise OutputError(f"{output}: cannot be written there ({exc.strerror or exc})") from exc


def _empty_output_schema() -> pa.Schema:
    return pa.schema(
        [(SAMPLE_ID, pa.int64()), ("predicted_label", pa.int64()), ("confidence", pa.float64())]
        + [(c, pa.float64()) for c in PREDICTION_COLUMNS[3:]]
    )


def _bad_rows_schema(with_id: bool) -> pa.Schema:
    columns = [SAMPLE_ID, *KPI_FEATURES] if with_id else list(KPI_FEATURES)
    return pa.schema(
        [("row", pa.int64()), ("reason", pa.string())] + [(c, pa.string()) for c in columns]
    )


class _ProgressBar:
    """rows/s and an ETA: exact for Parquet, from the bytes read for CSV."""

    def __init__(self, source: Any, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.csv = not isinstance(source, ParquetSource)
        self.size = source.size
        self.bar = tqdm(
            total=None if self.csv else self.size,
            unit=" rows",
            unit_scale=True,
            desc="scoring",
            disable=not enabled,
            mininterval=0.5,
            smoothing=0.1,
        )

    def update(self, chunk: RawChunk, tally: _Tally) -> None:
        if self.csv and chunk.progress:
            # The total rows of a CSV are estimated from the bytes read so far.
            self.bar.total = max(
                tally.rows_seen, round(tally.rows_seen * self.size / chunk.progress)
            )
        self.bar.update(chunk.rows)

    def close(self) -> None:
        if self.csv and self.bar.total is not None:
            self.bar.total = self.bar.n
            self.bar.refresh()
        self.bar.close()


def stream_file(
    path: Path | str,
    output: Path | str,
    model: ScoringModel | ModelLoader,
    settings: Settings,
    on_bad_rows: str = "fail",
    chunk_rows: int | None = None,
    progress: bool = False,
    threads: int = DEFAULT_THREADS,
    contract_in_child: bool = False,
) -> ScoringSummary:
    """Score a CSV/Parquet file chunk by chunk into ``output`` (CSV or Parquet by its name).

    ``model`` may be a loader: it is then called while the first chunks are being parsed.
    ``on_bad_rows``: ``fail`` stops at the first bad row and writes nothing; ``skip`` scores the
    other rows and writes the bad ones with their reasons to :func:`bad_rows_path`.
    ``contract_in_child``: run the GX sample check in a child process (see
    :class:`ContractSample`; for one-off jobs such as ``systemhealer predict``).
    """
    path, output = Path(path), Path(output)
    check_job(path, output, on_bad_rows)
    source = open_source(path)  # the header is checked before anything else happens
    chunk_rows = chunk_rows or settings.scoring.chunk_rows
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        contract = ContractSample(
            settings.scoring.gx_sample_rows, settings.data, str(path), in_child=contract_in_child
        )
        stack.callback(contract.close)
        chunks = stack.enter_context(
            Prefetch(source.chunks(chunk_rows), budget=PREFETCH_BYTES, cost=lambda c: c.nbytes)
        )
        out = stack.enter_context(AtomicTableWriter(output, list(PREDICTION_COLUMNS)))
        bad_out = None
        if on_bad_rows == "skip":
            bad_out = stack.enter_context(
                AtomicTableWriter(bad_rows_path(output), ["row", "reason", *_id_columns(source)])
            )
        # The model loads while the background thread parses the first chunks.
        clock = time.perf_counter()
        loaded = model if isinstance(model, ScoringModel) else model()
        loading = time.perf_counter() - clock
        bar = _ProgressBar(source, progress)
        stack.callback(bar.close)
        tally = _score_chunks(
            chunks, loaded, out, bad_out, str(path), 0, bar.update, contract, threads=threads
        )
        _refuse_nothing_diagnosed(
            path, output, tally.rows_seen, tally.rows, bad_out,
            _bad_rows_schema(SAMPLE_ID in source.include),
        )  # fmt: skip
        clock = time.perf_counter()
        contract_result = contract.result()
        tally.stages["model loading"] += loading
        tally.stages["data contract check (waited for)"] += time.perf_counter() - clock
        out.commit(_empty_output_schema())
        if bad_out is not None:
            bad_out.commit(_bad_rows_schema(SAMPLE_ID in source.include))
    return ScoringSummary(
        rows=tally.rows,
        output=str(output),
        class_counts=tally.counts(),
        deployment=loaded.deployment_name,
        bad_rows=tally.bad_rows,
        bad_rows_file=str(bad_rows_path(output)) if on_bad_rows == "skip" else None,
        empty_rows=tally.empty_rows,
        seconds=time.perf_counter() - started,
        chunks=tally.chunks,
        source=str(path),
        model=loaded.description,
        contract_sample=contract_result,
        generated_ids=SAMPLE_ID not in source.include,
        stage_seconds={k: round(v, 2) for k, v in tally.stages.items()},
    )


def _refuse_nothing_diagnosed(
    path: Path,
    output: Path,
    rows_seen: int,
    rows: int,
    bad_out: AtomicTableWriter | None,
    bad_schema: pa.Schema,
) -> None:
    """A file without rows, or whose every row is bad, is a failed job, not an empty result:
    the output stays as it was (a skipping job keeps the reasons in its side file)."""
    if rows_seen == 0:
        raise DataValidationError(f"{path}: 0 rows; at least 1 needed")
    if rows == 0:
        if bad_out is not None:
            bad_out.commit(bad_schema)
        raise DataValidationError(
            f"{path}: all {rows_seen} rows are bad, none was diagnosed; {output} was not "
            f"written (the reasons: {bad_rows_path(output)})"
        )


def _id_columns(source: Any) -> list[str]:
    return [SAMPLE_ID, *KPI_FEATURES] if SAMPLE_ID in source.include else list(KPI_FEATURES)


# --- partitions (the flow, on threads or Dask workers) ------------------------------------------


@dataclass(frozen=True)
class PartResult:
    """What scoring one partition produced: a part file of diagnoses (Arrow IPC) and counts."""

    partition: Partition
    output: str
    bad_output: str | None
    rows_seen: int
    rows: int
    bad_rows: int
    empty_rows: int
    chunks: int
    class_counts: dict[str, int]
    seconds: float
    generated_ids: bool
    contract_sample: dict[str, Any] | None = None


def partition_warning(path: Path, wanted: int) -> str | None:
    """Why ``path`` will not be spread over ``wanted`` partitions, if it will not: a compressed
    CSV cannot be split at byte offsets, so it is scored as one partition."""
    if wanted > 1 and getattr(open_source(path), "codec", None) is not None:
        return (
            f"{path.name} is compressed and is scored as one partition, not {wanted}: "
            "decompress it (or convert it to Parquet) to spread it over the workers"
        )
    return None


def plan_partitions(path: Path | str, count: int, min_bytes: int = 1 << 20) -> list[Partition]:
    """Split a file into about ``count`` partitions (CSV byte ranges of at least ``min_bytes``,
    Parquet row groups)."""
    return open_source(Path(path)).partitions(count, min_bytes)


def score_partition(
    partition: Partition,
    staging: Path | str,
    model: ScoringModel,
    settings: Settings,
    on_bad_rows: str = "fail",
    chunk_rows: int | None = None,
    threads: int = 1,
) -> PartResult:
    """Score one partition into ``staging/part-NNNNN.arrow`` (+ ``.bad.arrow`` when skipping)."""
    started = time.perf_counter()
    staging = Path(staging)
    source = open_source(Path(partition.path))
    name = f"part-{partition.index:05d}"
    contract = (
        ContractSample(settings.scoring.gx_sample_rows, settings.data, partition.path)
        if partition.index == 0
        else None
    )
    where = f" of partition {partition.index + 1}/{partition.count}"
    chunk_rows = chunk_rows or settings.scoring.chunk_rows
    with contextlib.ExitStack() as stack:
        chunks = stack.enter_context(Prefetch(source.chunks(chunk_rows, partition), budget=1))
        if contract is not None:
            stack.callback(contract.close)
        out = stack.enter_context(
            AtomicTableWriter(staging / f"{name}.arrow", list(PREDICTION_COLUMNS), kind="arrow")
        )
        bad_out = None
        if on_bad_rows == "skip":
            bad_out = stack.enter_context(
                AtomicTableWriter(
                    staging / f"{name}.bad.arrow", ["row", "reason", *_id_columns(source)], "arrow"
                )
            )
        tally = _score_chunks(
            chunks,
            model,
            out,
            bad_out,
            partition.path,
            partition.first_row,
            None,
            contract,
            where,
            threads,
        )
        contract_result = contract.result() if contract is not None else None
        out.commit(_empty_output_schema())
        if bad_out is not None:
            bad_out.commit(_bad_rows_schema(SAMPLE_ID in source.include))
    return PartResult(
        partition=partition,
        output=str(staging / f"{name}.arrow"),
        bad_output=str(staging / f"{name}.bad.arrow") if bad_out is not None else None,
        rows_seen=tally.rows_seen,
        rows=tally.rows,
        bad_rows=tally.bad_rows,
        empty_rows=tally.empty_rows,
        chunks=tally.chunks,
        class_counts=tally.counts(),
        seconds=time.perf_counter() - started,
        generated_ids=SAMPLE_ID not in source.include,
        contract_sample=contract_result,
    )


def _copy_part(path: str, writer: AtomicTableWriter, column: str | None, offset: int) -> None:
    with pa.memory_map(path) as handle:
        reader = pa.ipc.open_file(handle)
        for i in range(reader.num_record_batches):
            table = pa.Table.from_batches([reader.get_batch(i)])
            if column is not None and offset:
                index = table.schema.get_field_index(column)
                table = table.set_column(index, column, pc.add(table.column(column), offset))
            writer.write(table)


def merge_partitions(
    path: Path | str,
    output: Path | str,
    parts: list[PartResult],
    model: ScoringModel,
    on_bad_rows: str = "fail",
    seconds: float | None = None,
) -> ScoringSummary:
    """Concatenate the parts of one file in order into ``output`` (atomically), fixing row
    numbers of CSV byte ranges that did not know how many rows came before them."""
    path, output = Path(path), Path(output)
    parts = sorted(parts, key=lambda p: p.partition.index)
    bad_schema = _bad_rows_schema(bool(parts) and not parts[0].generated_ids)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(AtomicTableWriter(output, list(PREDICTION_COLUMNS)))
        bad_out = None
        if on_bad_rows == "skip":
            bad_out = stack.enter_context(
                AtomicTableWriter(bad_rows_path(output), bad_schema.names)
            )
        rows_before = 0
        for part in parts:
            offset = rows_before if part.partition.first_row is None else 0
            _copy_part(part.output, out, SAMPLE_ID if part.generated_ids else None, offset)
            if bad_out is not None and part.bad_output:
                _copy_part(part.bad_output, bad_out, "row", offset)
            rows_before += part.rows_seen
        _refuse_nothing_diagnosed(
            path, output, rows_before, sum(p.rows for p in parts), bad_out, bad_schema
        )
        out.commit(_empty_output_schema())
        if bad_out is not None:
            bad_out.commit(bad_schema)
    counts: Counter[str] = Counter()
    for part in parts:
        counts.update(part.class_counts)
    contract = next((p.contract_sample for p in parts if p.contract_sample), None)
    return ScoringSummary(
        rows=sum(p.rows for p in parts),
        output=str(output),
        class_counts={c: counts[c] for c in sorted(counts, key=int)},
        deployment=model.deployment_name,
        bad_rows=sum(p.bad_rows for p in parts),
        bad_rows_file=str(bad_rows_path(output)) if on_bad_rows == "skip" else None,
        empty_rows=sum(p.empty_rows for p in parts),
        seconds=seconds if seconds is not None else sum(p.seconds for p in parts),
        chunks=sum(p.chunks for p in parts),
        partitions=len(parts),
        source=str(path),
        model=model.description,
        contract_sample=contract,
        generated_ids=bool(parts) and parts[0].generated_ids,
    )


# --- for the command line and the flow ----------------------------------------------------------


def model_loader(
    settings: Settings, model_uri: str | None = None, deployment: str | None = None
) -> ModelLoader:
    """A loader of the champion (or ``model_uri``) with the statistics of ``deployment``."""

    def load() -> ScoringModel:
        from systemhealer import deployments, tracking

        diagnoser, version = tracking.load_diagnoser(settings, model_uri)
        stats = deployments.deployment_stats(settings, diagnoser, deployment)
        description = f"version {version.version}" if version else str(model_uri)
        return ScoringModel(diagnoser, stats, description)

    return load


def _fixed_costs(stages: dict[str, float]) -> str:
    """The part of a job's time that does not grow with its rows, which a small file's
    incidents/s figure mostly measures."""
    fixed = {
        "loading the model": stages.get("model loading", 0.0),
        "waiting for the data contract check": stages.get("data contract check (waited for)", 0.0),
    }
    shown = [f"{what} {seconds:.1f} s" for what, seconds in fixed.items() if seconds >= 0.05]
    return f" (of which {', '.join(shown)})" if shown else ""


def summary_text(summary: ScoringSummary) -> str:
    """What a job did, in a few lines for the terminal."""
    lines = [
        f"{summary.rows} incidents diagnosed with {summary.model} "
        f"(deployment statistics: {summary.deployment}) → {summary.output}",
        f"predicted fault classes: {summary.class_counts}",
        f"{summary.seconds:.1f} s, {summary.rows_per_second:,.0f} incidents/s, "
        f"{summary.chunks} chunks"
        + (f" in {summary.partitions} partitions" if summary.partitions > 1 else "")
        + _fixed_costs(summary.stage_seconds),
    ]
    if summary.generated_ids:
        lines.append(
            f"note: the file has no {SAMPLE_ID} column; the output's {SAMPLE_ID} is each "
            "incident's row number in the file, from 0"
        )
    if summary.bad_rows_file is not None:
        lines.append(f"bad rows: {summary.bad_rows} set aside → {summary.bad_rows_file}")
    if summary.empty_rows:
        lines.append(
            f"warning: {summary.empty_rows} incidents have no value in any of the KPIs the "
            "model reads; their diagnoses rest on no evidence"
        )
    if summary.contract_sample:
        sample = summary.contract_sample
        lines.append(
            f"data contract (Great Expectations) on the first {sample['rows']} rows: "
            f"{sample['blocking_issues']} blocking issues (set aside), {sample['warnings']} warnings"
        )
    return "\n".join(lines)
