"""Serving machinery, independent of BentoML: the served champion, its hot swap, and batching.

- :class:`ChampionWatcher` loads ``models:/fault-diagnosis@champion`` and polls the alias in a
  background thread. A new champion is loaded and warmed up completely *before* one reference
  is replaced, so requests in flight finish on the model they started with and never fail.
- :class:`MicroBatcher` runs the incidents of concurrent requests through the network together:
  while one forward pass runs, new requests queue up; the next pass takes all of them. No timer,
  so a lone request is never held back, and under load the passes grow on their own.
- :func:`diagnose_jobs` is what one pass does: one model, rows grouped by deployment.
- :func:`score_uploaded_file` scores an uploaded file exactly as ``systemhealer predict`` does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

import numpy as np
import pandas as pd

from systemhealer.config import FAULT_CLASSES, Settings
from systemhealer.data import KPI_FEATURES, refuse_unpacked_over
from systemhealer.diagnoser import FaultDiagnoser
from systemhealer.errors import DataValidationError, ModelNotFoundError
from systemhealer.incidents import IncidentError, IncidentRows, TooManyIncidentsError

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True)
class ServedModel:
    """The model a request is diagnosed with, and what the registry says of it."""

    diagnoser: FaultDiagnoser
    model_name: str
    version: str
    alias: str
    run_id: str | None
    metrics: dict[str, float]
    tags: dict[str, str]
    loaded_at: str

    def info(self) -> dict[str, Any]:
        """What the model-info endpoint answers."""
        return {
            "name": self.model_name,
            "version": self.version,
            "alias": self.alias,
            "uri": f"models:/{self.model_name}/{self.version}",
            "run_id": self.run_id,
            "training_metrics": self.metrics,
            "gate": {k: v for k, v in self.tags.items() if k.startswith(("gate", "eval_"))},
            "features": list(KPI_FEATURES),
            "features_used": list(self.diagnoser.preprocessor.columns),
            # How a missing KPI reads: "no_evidence" (it moves nothing) or "median" (older models).
            "missing_values": self.diagnoser.preprocessor.missing_values,
            "fault_classes": list(FAULT_CLASSES),
            "loaded_at": self.loaded_at,
        }


def limit_torch_threads(threads: int = 1) -> None:
    """Give torch one intra-op thread: requests are diagnosed concurrently with the HTTP event
    loop, and on a small MLP extra threads cost more in synchronisation than they save."""
    import torch

    torch.set_num_threads(threads)


def no_champion_message(settings: Settings) -> str:
    """What readiness and the endpoints say while there is no champion to serve."""
    return (
        f"no champion: model '{settings.registry.model_name}' has no version with alias "
        f"'{settings.registry.champion_alias}' yet; train one with `systemhealer train FILE` "
        "(this service takes it up within "
        f"{settings.serving.model_poll_seconds:g} s, no restart needed)"
    )


class ChampionWatcher:
    """Holds the served model; a background thread swaps in each new champion."""

    def __init__(self, settings: Settings, poll_seconds: float | None = None) -> None:
        self.settings = settings
        self.poll_seconds = poll_seconds or settings.serving.model_poll_seconds
        self._current: ServedModel | None = None
        self._problem: str | None = "loading the champion"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0

    @property
    def current(self) -> ServedModel | None:
        """The model to diagnose with now (None until one is loaded)."""
        return self._current

    @property
    def problem(self) -> str | None:
        """Why no model is served (None when one is)."""
        return None if self._current is not None else self._problem

    def require(self) -> ServedModel:
        """The current model, or :class:`ModelNotFoundError` saying why there is none."""
        model = self._current
        if model is None:
            raise ModelNotFoundError(self._problem or "no model loaded yet")
        return model

    def refresh(self) -> bool:
        """Look at the champion alias once; load and swap in a new champion. True if swapped."""
        from systemhealer import tracking

        champion = tracking.champion(self.settings)
        if champion is None:
            self._problem = no_champion_message(self.settings)
            if self._current is not None:
                log.warning(
                    "the champion alias is gone; still serving version %s", self._current.version
                )
            return False
        if self._current is not None and self._current.version == champion.version:
            return False
        uri = tracking.version_uri(self.settings, champion.version)
        diagnoser, _ = tracking.load_diagnoser(self.settings, uri)
        # Warm up (first call initialises torch kernels) before anyone is served by it.
        diagnoser.probabilities(pd.DataFrame(np.ones((2, len(KPI_FEATURES))), columns=KPI_FEATURES))
        # So are the calibrated deployments' statistics: no request waits for them.
        from systemhealer.deployments import warm_deployments

        warm_deployments(self.settings, diagnoser)
        model = ServedModel(
            diagnoser=diagnoser,
            model_name=self.settings.registry.model_name,
            version=champion.version,
            alias=self.settings.registry.champion_alias,
            run_id=champion.run_id,
            metrics=tracking.run_metrics(self.settings, champion.run_id) if champion.run_id else {},
            tags=champion.tags,
            loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        previous = self._current
        self._current = model  # the swap: one reference, replaced atomically
        self.swaps += 1
        log.info(
            "serving model %s version %s%s",
            model.model_name,
            model.version,
            f" (was version {previous.version})" if previous else "",
        )
        return True

    def serve_fixed(self, model: ServedModel) -> None:
        """Serve ``model`` for good (a Bento's packaged model): no registry, no polling."""
        self._current = model
        self.swaps += 1
        log.info("serving packaged model %s version %s", model.model_name, model.version)

    def _poll(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception as exc:  # a registry hiccup must not stop the watcher
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._problem = f"cannot load the champion: {first}"
                log.warning("champion poll failed: %s", first)
            if self._stop.wait(self.poll_seconds):
                return

    def start(self) -> None:
        """Load the champion and keep polling, in a daemon thread (returns at once)."""
        # MLflow's download progress bar would print on every swap.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="champion-watcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling (the served model stays usable)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


@dataclass(frozen=True)
class DiagnosisJob:
    """The incidents of one request and the deployment whose statistics normalise them."""

    rows: IncidentRows
    deployment: str | None = None


@dataclass(frozen=True)
class Diagnoses:
    """Diagnoses of one job: sample ids, class probabilities, and the model version used."""

    sample_ids: list[Any]
    probabilities: np.ndarray
    model_version: str
    kpis_read: np.ndarray  # per incident: how many of the model's KPIs have a value

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready object per incident, in request order."""
        labels = np.asarray(FAULT_CLASSES)[self.probabilities.argmax(axis=1)].tolist()
        confidence = self.probabilities.max(axis=1).astype(np.float64).tolist()
        probabilities = self.probabilities.astype(np.float64).tolist()
        return [
            {
                "sample_id": sample_id,
                "predicted_label": label,
                "confidence": conf,
                "probabilities": probas,
                "kpis_read": read,
                "model_version": self.model_version,
            }
            for sample_id, label, conf, probas, read in zip(
                self.sample_ids,
                labels,
                confidence,
                probabilities,
                self.kpis_read.tolist(),
                strict=True,
            )
        ]


def diagnose_jobs(
    model: ServedModel, jobs: Sequence[DiagnosisJob], settings: Settings
) -> list[Diagnoses | Exception]:
    """One forward pass per deployment over all jobs; an error fails only its own jobs."""
    from systemhealer.deployments import deployment_stats

    results: list[Diagnoses | Exception] = [ValueError("not diagnosed")] * len(jobs)
    by_deployment: dict[str | None, list[int]] = {}
    for index, job in enumerate(jobs):
        by_deployment.setdefault(job.deployment, []).append(index)
    for deployment, indices in by_deployment.items():
        try:
            stats = deployment_stats(settings, model.diagnoser, deployment)
        except Exception as exc:
            for index in indices:
                results[index] = exc
            continue
        # Straight from the parsed KPI matrix to the model's columns: no frame per pass.
        columns = model.diagnoser.kpi_positions
        values = np.concatenate([jobs[i].rows.features[:, columns] for i in indices])
        probabilities = model.diagnoser.probabilities_of_values(values, stats)
        read = (~np.isnan(values)).sum(axis=1)
        start = 0
        for index in indices:
            n = len(jobs[index].rows)
            results[index] = Diagnoses(
                jobs[index].rows.sample_ids,
                probabilities[start : start + n],
                model.version,
                read[start : start + n],
            )
            start += n
    return results


@dataclass
class _BatchStats:
    batches: int = 0
    jobs: int = 0
    largest: int = 0


@dataclass
class MicroBatcher(Generic[J, R]):
    """Adaptive batching: jobs submitted while a pass runs share the next pass.

    ``run_batch`` gets a list of jobs and returns one result (or exception) per job; it runs in
    one dedicated thread, so the event loop keeps accepting and parsing requests meanwhile.
    """

    run_batch: Callable[[list[J]], Sequence[R | Exception]]
    max_jobs: int = 256
    stats: _BatchStats = field(default_factory=_BatchStats)

    def __post_init__(self) -> None:
        self._queue: list[tuple[J, asyncio.Future[R]]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diagnosis")
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, job: J) -> R:
        """Queue one job; returns its result when its pass is done (or raises its error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((job, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_jobs], self._queue[self.max_jobs :]
                jobs = [job for job, _ in batch]
                self.stats.batches += 1
                self.stats.jobs += len(jobs)
                self.stats.largest = max(self.stats.largest, len(jobs))
                try:
                    results = await loop.run_in_executor(self._executor, self.run_batch, jobs)
                    if len(results) != len(jobs):
                        raise RuntimeError(f"{len(results)} results for {len(jobs)} jobs")
                except Exception as exc:  # a bug in the pass: fail its requests, keep serving
                    log.exception("diagnosis pass failed")
                    results = [exc] * len(jobs)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # the client went away
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._drainer = None

    def close(self) -> None:
        """Stop the diagnosis thread once its work is done."""
        self._executor.shutdown(wait=False, cancel_futures=True)


_UPLOAD_SUFFIXES = (".csv.gz", ".csv", ".parquet", ".pq", ".gz")


def upload_suffix(filename: str | None) -> str:
    """The file-type suffix of an uploaded file's name (default ``.csv``); never a path."""
    name = Path(filename or "").name.lower()
    for suffix in _UPLOAD_SUFFIXES:
        if name.endswith(suffix):
            return ".csv.gz" if suffix == ".gz" else suffix
    return ".csv"


def score_uploaded_file(
    stream: BinaryIO,
    filename: str | None,
    model: ServedModel,
    deployment: str | None,
    settings: Settings,
) -> bytes:
    """Score an uploaded CSV/Parquet file as ``systemhealer predict`` does; the CSV it writes.

    Problems (unreadable file, missing columns, bad rows) raise :class:`IncidentError` naming
    the upload, not the temporary file it was saved to.
    """
    from systemhealer.deployments import deployment_stats
    from systemhealer.scoring import SKIP_HINT, ScoringModel, stream_file

    shown = Path(filename or "upload").name
    with tempfile.TemporaryDirectory(prefix="systemhealer-upload-") as folder:
        source = Path(folder) / f"incidents{upload_suffix(filename)}"
        output = Path(folder) / "diagnoses.csv"
        with source.open("wb") as target:
            shutil.copyfileobj(stream, target, length=1 << 20)
        try:
            refuse_unpacked_over(
                source, int(settings.serving.max_upload_mb * 2**20), "serving.max_upload_mb"
            )
        except DataValidationError as exc:  # the data are too large: 413, as a large upload
            raise TooManyIncidentsError(str(exc).replace(source.name, shown)) from exc
        try:
            stats = deployment_stats(settings, model.diagnoser, deployment)
            scoring_model = ScoringModel(model.diagnoser, stats, f"version {model.version}")
            stream_file(source, output, scoring_model, settings, on_bad_rows="fail", threads=1)
        except IncidentError:
            raise
        except DataValidationError as exc:
            message = str(exc).replace(str(source), shown).replace(source.name, shown)
            # The CLI's option has no HTTP counterpart: say where it is.
            message = message.replace(
                SKIP_HINT,
                "fix or remove those rows, or score the file with `systemhealer predict "
                "--on-bad-rows skip`, which lists the bad ones in a side file",
            )
            raise IncidentError(message) from exc
        return output.read_bytes()
