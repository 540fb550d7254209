"""Background jobs of the web page: trainings and file diagnoses, queued and kept as JSON files.

Every job is a folder ``<jobs_dir>/<job id>/``:

- ``job.json``      queue state (status, times, attempts, worker pid), written by the runner;
- ``progress.json`` what the worker is doing now (stage, epoch, losses, rows done);
- ``result.json``   what it produced; ``error.json`` why it failed (with the validation report);
- the uploaded input file, the outputs (``diagnoses.csv`` …) and ``worker.log``.

The state lives on disk, so a restart of the service keeps the queue: jobs still queued run after
the restart, jobs that were running are queued again (once; a second interruption fails them).

One :class:`JobRunner` per state folder runs the queue (an ``flock`` on ``runner.lock`` decides
which process, should several serve the same folder), one job at a time per kind by default.
A training runs the real Prefect training flow in a child process (``python -m systemhealer.jobs
train FOLDER``): the service stays responsive, a crash of the training cannot take the service
down, and cancelling is a signal. A file diagnosis runs in a thread of the service with the
champion it already holds, in chunks, reporting rows done.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from systemhealer.config import FAULT_CLASSES, Settings
from systemhealer.errors import DataValidationError, SystemHealerError

log = logging.getLogger(__name__)

TRAIN = "train"
DIAGNOSE = "diagnose"
JOB_KINDS = (TRAIN, DIAGNOSE)
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled",
)  # fmt: skip
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
# Training stages, in the order the flow runs them (the names of its Prefect tasks).
TRAINING_STAGES = ("validate", "preprocess", "train", "evaluate", "register", "gate")
# Files of a job folder that may be read back by name (never a path from a request).
JOB_FILES = frozenset(
    {"job.json", "progress.json", "result.json", "error.json", "validation.json",
     "report.json", "diagnoses.csv", "diagnoses.json", "diagnoses.parquet", "worker.log"}
)  # fmt: skip
_ID = re.compile(r"^[0-9]{8}T[0-9]{12}-[0-9a-f]{6}$")
_INPUT_SUFFIXES = (".csv.gz", ".csv", ".parquet", ".pq")
MAX_ATTEMPTS = 2
# Training stages past which a cancel is refused: the registry (version, champion alias) changes.
NO_RETURN_STAGES = ("register", "gate", "done")
UPLOAD_TTL = timedelta(hours=24)


class JobNotFoundError(SystemHealerError):
    """No job (or no such file of a job) has the requested id."""

    exit_code = 3


class JobCancelledError(SystemHealerError):
    """The job was cancelled while it ran."""


class JobConflictError(SystemHealerError):
    """The job cannot be cancelled (any more): it has finished, or it is changing the registry."""

    http_status = 409


@contextlib.contextmanager
def cancel_lock(folder: Path) -> Iterator[None]:
    """Held while a cancel is accepted, while a training commits to registering its model and
    while the executor signals it: a cancel is either seen before the commit or refused."""
    fd = os.open(folder / "cancel.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _training_stage(folder: Path) -> str | None:
    """The stage a training job's ``progress.json`` says it is in."""
    return (read_json(folder / "progress.json") or {}).get("stage")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_id() -> str:
    """An id that sorts in creation order (UTC time to the microsecond) plus 24 random bits."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}"


def check_id(job_id: str) -> str:
    """Ids become folder names: refuse anything that is not one of ours."""
    if not isinstance(job_id, str) or not _ID.match(job_id):
        raise JobNotFoundError(f"no job with id {job_id!r}")
    return job_id


def input_name(filename: str | None) -> str:
    """The stored name of an uploaded file: ``input`` plus its type suffix, never its path."""
    name = Path(filename or "").name.lower()
    for suffix in _INPUT_SUFFIXES:
        if name.endswith(suffix):
            return f"input{suffix}"
    if name.endswith(".gz"):
        return "input.csv.gz"
    return "input.csv"


def write_json(path: Path, payload: Any) -> None:
    """Write JSON beside ``path`` and rename it into place: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, default=_json_default)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class Job:
    """One queued, running or finished job."""

    id: str
    kind: str
    status: str
    created_at: str
    source: str
    input_file: str
    params: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    attempts: int = 0
    pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Job:
        known = {k: v for k, v in payload.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class JobStore:
    """The jobs of one state folder, one folder each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.RLock()

    def folder(self, job_id: str) -> Path:
        return self.root / check_id(job_id)

    def create(
        self, kind: str, source: str, params: dict[str, Any], take_input: Callable[[Path], None]
    ) -> Job:
        """A new queued job; ``take_input(path)`` puts the input file at ``path``."""
        if kind not in JOB_KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        job = Job(
            id=new_id(),
            kind=kind,
            status=QUEUED,
            created_at=_now(),
            source=Path(source).name or "upload",
            input_file=input_name(source),
            params=params,
        )
        folder = self.folder(job.id)
        folder.mkdir(parents=True, exist_ok=False)
        try:
            take_input(folder / job.input_file)
            self.save(job)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return job

    def save(self, job: Job) -> None:
        write_json(self.folder(job.id) / "job.json", job.to_dict())

    def get(self, job_id: str) -> Job:
        payload = read_json(self.folder(job_id) / "job.json")
        if not isinstance(payload, dict):
            raise JobNotFoundError(f"no job with id {job_id!r}")
        return Job.from_dict(payload)

    def update(self, job_id: str, **changes: Any) -> Job:
        """Change fields of a job under the store's lock; returns the job as saved."""
        with self._lock:
            job = self.get(job_id)
            for key, value in changes.items():
                setattr(job, key, value)
            self.save(job)
            return job

    def claim(self, job_id: str) -> Job | None:
        """Mark a queued job running, checked and set under the store's lock (a cancel in
        between wins: None); returns the job as saved."""
        with self._lock:
            job = self.get(job_id)
            if job.status != QUEUED:
                return None
            return self.update(
                job_id, status=RUNNING, started_at=_now(), attempts=job.attempts + 1, error=None
            )

    def drop_input(self, job: Job) -> None:
        """Delete the file a job was queued with (its results stay)."""
        (self.folder(job.id) / job.input_file).unlink(missing_ok=True)

    def list(self, kind: str | None = None) -> list[Job]:
        """Jobs, newest first."""
        if not self.root.exists():
            return []
        jobs = []
        for folder in sorted(self.root.iterdir(), reverse=True):
            if not _ID.match(folder.name):
                continue
            payload = read_json(folder / "job.json")
            if isinstance(payload, dict) and (kind is None or payload.get("kind") == kind):
                jobs.append(Job.from_dict(payload))
        return jobs

    def queued(self, kind: str) -> list[Job]:
        """Queued jobs of a kind, in the order they will run."""
        return [j for j in reversed(self.list(kind)) if j.status == QUEUED]

    def queue_position(self, job: Job) -> int | None:
        """1 = next to run; None unless the job is queued."""
        if job.status != QUEUED:
            return None
        ids = [j.id for j in self.queued(job.kind)]
        return ids.index(job.id) + 1 if job.id in ids else None

    def path(self, job_id: str, name: str) -> Path:
        """A file of a job, by its name in :data:`JOB_FILES` (or the job's input file)."""
        job = self.get(job_id)
        if name not in JOB_FILES and name != job.input_file:
            raise JobNotFoundError(f"job {job_id} has no file {name!r}")
        return self.folder(job_id) / name

    def read(self, job_id: str, name: str) -> Any | None:
        return read_json(self.path(job_id, name))

    def write(self, job_id: str, name: str, payload: Any) -> None:
        write_json(self.path(job_id, name), payload)

    def request_cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once; ask a running one to stop (the runner stops it)."""
        with self._lock:
            job = self.get(job_id)
            if job.status == QUEUED:
                self.drop_input(job)
                return self.update(job_id, status=CANCELLED, finished_at=_now())
            if job.status in FINISHED:
                raise JobConflictError(f"job {job_id} has already {job.status}: nothing to cancel")
            with cancel_lock(self.folder(job_id)):
                stage = _training_stage(self.folder(job_id))
                if job.kind == TRAIN and stage in NO_RETURN_STAGES:
                    doing = (
                        "has finished" if stage == "done" else f"is registering its model ({stage})"
                    )
                    raise JobConflictError(
                        f"job {job_id} {doing}: too late to cancel; "
                        "roll the champion back on the Models page if needed"
                    )
                (self.folder(job_id) / "cancel").touch()
            return job

    def cancel_requested(self, job_id: str) -> bool:
        return (self.folder(job_id) / "cancel").exists()

    def prune(self, keep: int) -> list[str]:
        """Delete the oldest finished jobs beyond ``keep``; returns their ids."""
        finished = [j for j in self.list() if j.status in FINISHED]
        removed = []
        for job in finished[keep:]:
            shutil.rmtree(self.folder(job.id), ignore_errors=True)
            removed.append(job.id)
        return removed


# --- uploads waiting for a decision (a training file is validated before it is queued) ---


@dataclass(frozen=True)
class Upload:
    """A file uploaded and validated, not yet turned into a job."""

    id: str
    filename: str
    path: Path
    meta: dict[str, Any]


class UploadStore:
    """Uploaded files kept under ``<jobs_dir>/uploads/<id>/`` for a day at most, and while
    they fit in ``max_bytes`` together (the oldest go first when a new one would not fit)."""

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        # Held by make_room and by whoever turns an upload into a job (take it, move its file):
        # an upload being queued is never removed under the request queuing it.
        self.lock = threading.Lock()

    def new(self, filename: str | None) -> Upload:
        self.prune()
        upload_id = new_id()
        folder = self.root / upload_id
        folder.mkdir(parents=True)
        name = Path(filename or "upload").name or "upload"
        return Upload(upload_id, name, folder / input_name(name), {"filename": name})

    def save_meta(self, upload: Upload, meta: dict[str, Any]) -> None:
        write_json(upload.path.parent / "upload.json", {**meta, "filename": upload.filename})

    def get(self, upload_id: str) -> Upload:
        folder = self.root / check_id(upload_id)
        meta = read_json(folder / "upload.json")
        if not isinstance(meta, dict):
            raise JobNotFoundError(
                f"no upload with id {upload_id!r} (uploads are kept a day, the oldest removed "
                "sooner when newer ones need the space): upload the file again"
            )
        filename = str(meta.get("filename", "upload"))
        return Upload(upload_id, filename, folder / input_name(filename), meta)

    def discard(self, upload_id: str) -> None:
        shutil.rmtree(self.root / check_id(upload_id), ignore_errors=True)

    def prune(self) -> None:
        if not self.root.exists():
            return
        cutoff = time.time() - UPLOAD_TTL.total_seconds()
        for folder in self.root.iterdir():
            with contextlib.suppress(OSError):
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)

    def make_room(self, upload: Upload) -> list[str]:
        """Remove the oldest other uploads waiting for a click (checked, with their
        ``upload.json``) until all fit in ``max_bytes``; returns their ids. Uploads still being
        received or checked are counted, never removed; ``upload`` itself always stays."""
        if self.max_bytes is None or not self.root.exists():
            return []
        with self.lock:
            sizes: list[tuple[float, int, Path]] = []
            for folder in self.root.iterdir():
                with contextlib.suppress(OSError):
                    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                    sizes.append((folder.stat().st_mtime, size, folder))
            total = sum(size for _, size, _ in sizes)
            removed = []
            for _, size, folder in sorted(sizes, key=lambda item: item[0]):
                if total <= self.max_bytes:
                    break
                if folder.name == upload.id or not (folder / "upload.json").exists():
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                total -= size
                removed.append(folder.name)
            return removed


# --- the runner ---

Executor = Callable[[Job], None]


class JobRunner:
    """Runs queued jobs: ``workers[kind]`` at a time per kind, each with ``executors[kind]``.

    An executor writes the job's progress and result files and returns; it raises
    :class:`SystemHealerError` (the message is shown to the user) or
    :class:`JobCancelledError`. The runner owns ``job.json``.
    """

    def __init__(
        self,
        store: JobStore,
        executors: dict[str, Executor],
        workers: dict[str, int],
        poll_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.executors = executors
        self.workers = workers
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._claim = threading.Lock()
        self._lock_fd: int | None = None

    @property
    def active(self) -> bool:
        """True when this process runs the queue (it holds the runner lock)."""
        return self._lock_fd is not None

    def start(self) -> None:
        """Run the queue here if no other process of this state folder does (else stand by)."""
        starter = threading.Thread(target=self._take_over, name="jobs-standby", daemon=True)
        starter.start()
        self._threads.append(starter)

    def _try_lock(self) -> bool:
        self.store.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.store.root / "runner.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _take_over(self) -> None:
        # Stand by while another process runs the queue; take over if it goes away.
        while not self._stop.is_set():
            if self._try_lock():
                break
            self._stop.wait(5.0)
        if self._stop.is_set():
            return
        self.recover()
        for kind, count in self.workers.items():
            for index in range(count):
                thread = threading.Thread(
                    target=self._lane, args=(kind,), name=f"jobs-{kind}-{index}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def recover(self) -> None:
        """Jobs left running by a stopped service: queue them again, or fail them after
        :data:`MAX_ATTEMPTS` interruptions."""
        for job in self.store.list():
            if job.status != RUNNING:
                continue
            if job.attempts >= MAX_ATTEMPTS:
                self.store.update(
                    job.id,
                    status=FAILED,
                    finished_at=_now(),
                    error=f"interrupted {job.attempts} times by restarts of the service",
                    pid=None,
                )
            else:
                log.warning("job %s was interrupted by a restart: queued again", job.id)
                self.store.update(job.id, status=QUEUED, pid=None, started_at=None)

    def wake(self) -> None:
        """A job was queued: look at the queue now rather than at the next poll."""
        self._wake.set()

    def _claim_next(self, kind: str) -> Job | None:
        with self._claim:
            for candidate in self.store.queued(kind):
                claimed = self.store.claim(candidate.id)
                if claimed is not None:
                    return claimed
        return None

    def _lane(self, kind: str) -> None:
        while not self._stop.is_set():
            job = self._claim_next(kind)
            if job is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            self.run(job)

    def run(self, job: Job) -> Job:
        """Run one claimed job to its end and record how it ended. A finished diagnosis drops
        its input file (its diagnoses are the result; kept, the inputs of the last
        ``web.keep_jobs`` jobs would take up to 20 GB). A training keeps its input: the data
        behind a registered model (MLflow records only its fingerprint)."""
        try:
            self.executors[job.kind](job)
        except JobCancelledError:
            ended = self.store.update(job.id, status=CANCELLED, finished_at=_now(), pid=None)
        except Exception as exc:
            if self._stop.is_set():
                # Stopped by an orderly shutdown: left RUNNING, so recover() queues it again,
                # and not counted as an attempt (only crashes are).
                return self.store.update(job.id, attempts=max(0, job.attempts - 1), pid=None)
            ended = self._failed(job, exc)
        else:
            ended = self.store.update(job.id, status=SUCCEEDED, finished_at=_now(), pid=None)
        if job.kind != TRAIN:
            self.store.drop_input(job)
        return ended

    def _failed(self, job: Job, exc: Exception) -> Job:
        if isinstance(exc, SystemHealerError):
            return self.store.update(
                job.id, status=FAILED, finished_at=_now(), error=str(exc), pid=None
            )
        # A bug: keep the service up, say what happened.
        log.error("job %s failed", job.id, exc_info=exc)
        return self.store.update(
            job.id,
            status=FAILED,
            finished_at=_now(),
            error=f"internal error: {type(exc).__name__}: {exc}",
            pid=None,
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop taking jobs; running trainings get SIGTERM (they are queued again on restart)."""
        self._stop.set()
        self._wake.set()
        for job in self.store.list() if self.active else []:
            if job.status == RUNNING and job.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


# --- training: the Prefect flow in a child process ---


_PARENT_PID = "SYSTEMHEALER_JOB_PARENT_PID"


def _die_with_parent() -> None:
    """In a training's child process: be sent SIGTERM when the service that started it dies,
    so no orphan keeps training (Linux). Set here, after exec, rather than between fork and exec
    (``preexec_fn``), which is unsafe in a process with threads such as the service."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    expected = os.environ.get(_PARENT_PID)
    if expected and os.getppid() != int(expected):
        sys.exit(143)  # the service died before the line above ran


@dataclass
class TrainingExecutor:
    """Runs a training job as ``python -m systemhealer.jobs train FOLDER``."""

    store: JobStore
    settings: Settings
    config_file: str | None = None
    poll_seconds: float = 0.5
    # Seconds after a cancel at which the child is signalled if it has not stopped by itself.
    escalation: tuple[tuple[float, int], ...] = ((30.0, signal.SIGTERM), (50.0, signal.SIGKILL))

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SYSTEMHEALER_HOME"] = str(self.settings.home)
        if self.config_file:
            env["SYSTEMHEALER_CONFIG"] = str(self.config_file)
        # A busy machine may take a while to start Prefect's temporary server.
        env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        env[_PARENT_PID] = str(os.getpid())
        return env

    def __call__(self, job: Job) -> None:
        folder = self.store.folder(job.id)
        for stale in ("progress.json", "result.json", "error.json", "cancel"):
            (folder / stale).unlink(missing_ok=True)
        write_json(folder / "progress.json", {"stage": "starting", "updated_at": _now()})
        with (folder / "worker.log").open("ab") as worker_log:
            process = subprocess.Popen(
                [sys.executable, "-m", "systemhealer.jobs", TRAIN, str(folder)],
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                start_new_session=True,  # its own process group: cancel stops Prefect's server too
            )
        self.store.update(job.id, pid=process.pid)
        # A cancel is first the child's to honour: it stops at its next epoch, or at the latest
        # before registering (TrainingProgress.commit), and lets Prefect record the run as
        # failed. Only a child that does not stop in time gets SIGTERM, then SIGKILL (its Prefect
        # server, in the same process group, with it) - never once it has committed.
        cancel_seen: float | None = None
        signalled = 0
        while process.poll() is None:
            if cancel_seen is None and self.store.cancel_requested(job.id):
                cancel_seen = time.monotonic()
            if cancel_seen is not None and signalled < len(self.escalation):
                grace, sig = self.escalation[signalled]
                if time.monotonic() - cancel_seen >= grace:
                    with cancel_lock(folder):  # not once it has committed to registering
                        if _training_stage(folder) not in NO_RETURN_STAGES:
                            with contextlib.suppress(ProcessLookupError):
                                os.killpg(process.pid, sig)
                            signalled += 1
            time.sleep(self.poll_seconds)
        if process.returncode != 0:
            error = read_json(folder / "error.json")
            stopped = signalled and process.returncode in (143, -signal.SIGTERM, -signal.SIGKILL)
            if stopped or (isinstance(error, dict) and error.get("type") == "JobCancelledError"):
                raise JobCancelledError("cancelled")
            if isinstance(error, dict) and error.get("message"):
                raise SystemHealerError(str(error["message"]))
            raise SystemHealerError(
                f"the training process exited with code {process.returncode}: "
                + _log_tail(folder / "worker.log")
            )


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:])[-600:] or "(empty log)"


class TrainingProgress:
    """Writes ``progress.json`` of a training: the flow's current stage and every epoch."""

    def __init__(self, folder: Path, max_epochs: int, min_interval: float = 0.25) -> None:
        self.path = folder / "progress.json"
        self.cancel_file = folder / "cancel"
        self.state: dict[str, Any] = {
            "stage": "validate",
            "stages_done": [],
            "epoch": 0,
            "max_epochs": max_epochs,
            "history": [],
            "started_at": _now(),
        }
        self.min_interval = min_interval
        self._written = 0.0
        self._lock = threading.Lock()
        self.flush(force=True)

    def flush(self, force: bool = False) -> None:
        with self._lock:
            if force or time.monotonic() - self._written >= self.min_interval:
                write_json(self.path, {**self.state, "updated_at": _now()})
                self._written = time.monotonic()

    def stage(self, name: str, done: bool) -> None:
        """A task of the flow started (``done`` False) or finished."""
        if name not in TRAINING_STAGES:
            return
        done_list = self.state["stages_done"]
        if done and name not in done_list:
            done_list.append(name)
        if not done:
            self.state["stage"] = name
        elif name != TRAINING_STAGES[-1]:
            self.state["stage"] = TRAINING_STAGES[TRAINING_STAGES.index(name) + 1]
        self.flush(force=True)

    def epoch(self, record: dict[str, float]) -> None:
        """The flow's ``on_epoch`` callback: epoch, losses and validation macro-F1. Stops the
        training (JobCancelledError) once the job was asked to cancel."""
        clean = {k: float(v) for k, v in record.items() if isinstance(v, (int, float))}
        if self.cancel_file.exists():
            raise JobCancelledError(
                f"cancelled while training (epoch {int(clean.get('epoch', 0))})"
            )
        self.state["stage"] = "train"
        self.state["epoch"] = int(clean.get("epoch", len(self.state["history"]) + 1))
        self.state["history"].append(clean)
        self.flush()

    def commit(self) -> None:
        """The flow's ``before_register`` callback: the last point a cancel stops the training.
        Past it, the registry changes and a cancel is refused."""
        with cancel_lock(self.path.parent):
            if self.cancel_file.exists():
                raise JobCancelledError("cancelled before the model was registered")
            self.state["stage"] = "register"
            self.flush(force=True)


class _StageWatcher(logging.Handler):
    """Follows the flow's tasks through the records Prefect logs for each task run."""

    def __init__(self, progress: TrainingProgress) -> None:
        super().__init__(level=logging.DEBUG)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        name = getattr(record, "task_name", None)
        if not name:
            run_name = str(getattr(record, "task_run_name", "") or "")
            name = run_name.rsplit("-", 1)[0] if run_name else None
        if not name:
            return
        message = record.getMessage()
        done = message.startswith("Finished in state")
        self.progress.stage(str(name), done=done and "Completed" in message)


def _train_here(folder: Path) -> int:
    """The child process of a training job: run the flow, write the result or the error."""
    from systemhealer import reports
    from systemhealer.config import load_settings
    from systemhealer.orchestration import prepare_prefect, quiet_prefect_console

    # SIGTERM (cancel, service stopping) → SystemExit, so Prefect stops its temporary server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _die_with_parent()
    job = Job.from_dict(json.loads((folder / "job.json").read_text()))
    try:
        settings = load_settings()
        prepare_prefect(settings)
        from flows.training import training_flow

        quiet_prefect_console()
        progress = TrainingProgress(folder, settings.training.max_epochs)
        task_logger = logging.getLogger("prefect.task_runs")
        task_logger.setLevel(logging.INFO)
        task_logger.addHandler(_StageWatcher(progress))
        summary = training_flow(
            str(folder / job.input_file),
            show_progress=False,
            on_epoch=progress.epoch,
            before_register=progress.commit,
            source_name=job.source,
        )
        progress.state["stage"] = "done"
        progress.flush(force=True)
        report = reports.run_report(settings, str(summary["run_id"]))
        write_json(folder / "result.json", {"summary": summary, "report": report})
    except SystemHealerError as exc:
        report = getattr(exc, "report", None)
        write_json(
            folder / "error.json",
            {
                "message": str(exc),
                "type": type(exc).__name__,
                "validation": report.to_dict() if hasattr(report, "to_dict") else None,
            },
        )
        return exc.exit_code or 1
    except Exception as exc:
        log.exception("training job failed")
        write_json(
            folder / "error.json",
            {"message": f"internal error: {type(exc).__name__}: {exc}", "type": "internal"},
        )
        return 70
    return 0


# --- file diagnosis: in a thread of the service, in chunks ---

ModelLoader = Callable[[], tuple[Any, str]]


@dataclass
class DiagnosisExecutor:
    """Validates and diagnoses a file of incidents with the champion, ``web.chunk_rows`` at a
    time: memory holds one chunk of the file and the diagnoses, not the whole file.

    Writes ``validation.json``, ``diagnoses.csv`` (exactly what ``systemhealer predict`` writes),
    ``diagnoses.parquet`` (for the page's table) and ``result.json`` (summary and chart data).
    A blocking problem in any chunk fails the job and writes no diagnoses; the chunks after it
    are still checked (not diagnosed), so that the report lists the whole file's problems.
    """

    store: JobStore
    settings: Settings
    load_model: ModelLoader

    def __call__(self, job: Job) -> None:
        from systemhealer.data import label_columns, read_incidents_in_chunks
        from systemhealer.deployments import deployment_stats
        from systemhealer.drift import baseline_label, baseline_profile
        from systemhealer.evaluation import scores_against_labels
        from systemhealer.scoring import atomic_write, diagnose_frame
        from systemhealer.validation import ChunkedValidation, require_valid

        folder = self.store.folder(job.id)
        for stale in ("progress.json", "result.json", "error.json", "validation.json", "cancel"):
            (folder / stale).unlink(missing_ok=True)
        progress: dict[str, Any] = {"stage": "reading", "rows_done": 0, "rows": None}

        def report(**changes: Any) -> None:
            progress.update(changes, updated_at=_now())
            write_json(folder / "progress.json", progress)

        def refuse(validation: ChunkedValidation) -> None:
            checked = validation.finish().to_dict()
            write_json(folder / "validation.json", checked)
            try:
                require_valid(validation.report)
            except DataValidationError as exc:
                write_json(folder / "error.json", {"message": str(exc), "validation": checked})
                raise

        report()
        diagnoser, version = self.load_model()
        deployment = job.params.get("deployment") or None
        # Range and missing-value warnings against what these incidents should look like: the
        # training data, or the chosen deployment's reference window (its units, not training's).
        validation = ChunkedValidation(
            job.source,
            self.settings.data,
            baseline_profile(self.settings, diagnoser, deployment),
            baseline_label(deployment),
        )
        stats = deployment_stats(self.settings, diagnoser, deployment)
        sample = EmbeddingSample(self.settings.web.embedding_points)
        parts: list[pd.DataFrame] = []
        labels: list[pd.Series] = []
        unread = 0
        try:
            for raw, share in read_incidents_in_chunks(
                folder / job.input_file, self.settings.web.chunk_rows
            ):
                if self.store.cancel_requested(job.id):
                    raise JobCancelledError("cancelled")
                first_row = validation.report.rows
                frame = validation.check(raw)
                if not validation.ok:  # the rest is only checked, for the file's whole report
                    _release_chunk()
                    report(stage="validating", rows_done=validation.report.rows)
                    continue
                diagnosed = diagnose_frame(diagnoser, frame, stats, first_row)
                parts.append(diagnosed)
                unread += int((diagnoser.kpis_read(frame) == 0).sum())
                sample.offer(frame, first_row)
                # A labelled file: how the diagnoses compare with its labels, as they were
                # written (validation turned text in them to missing values).
                labelled = label_columns(raw.columns)
                if labelled:
                    labels.append(raw[labelled[0]].reset_index(drop=True))
                _release_chunk()
                done = validation.report.rows
                # The total is estimated from the share of the file read (exact at the end).
                estimate = max(done, round(done / share))
                report(stage="diagnosing", rows_done=done, rows=estimate, rows_estimated=True)
        except DataValidationError as exc:  # unreadable: named by the file the user sent
            raise DataValidationError(
                str(exc).replace(str(folder / job.input_file), job.source)
            ) from exc
        refuse(validation)  # any blocking problem (a file of 0 rows too) stops the job here
        diagnoses = pd.concat(parts, ignore_index=True)
        del parts
        report(stage="writing", rows=len(diagnoses), rows_estimated=False)
        atomic_write(diagnoses, folder / "diagnoses.csv")
        atomic_write(diagnoses, folder / "diagnoses.parquet")
        summary = diagnosis_summary(diagnoses, diagnoser, stats, unread, sample)
        summary.update(
            model_version=version,
            deployment=deployment or "training",
            source=job.source,
            warnings=len(validation.report.warnings),
        )
        if labels:
            predicted = diagnoses["predicted_label"].to_numpy()
            scores = scores_against_labels(pd.concat(labels, ignore_index=True), predicted)
            if scores is not None:
                summary["label_scores"] = scores
        write_json(folder / "result.json", summary)
        report(stage="done")


def _release_chunk() -> None:
    """Free what scoring one chunk left behind, so that a long job's memory stays that of a
    chunk: reference cycles (Great Expectations' objects hold the chunk's frames; left to
    Python's occasional full collection they held about 1 GB of a 940,000-row job), and the
    freed heap that glibc keeps between the diagnoses kept of each chunk (``malloc_trim``; a
    no-op where there is no glibc)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class EmbeddingSample:
    """A uniform random sample of at most ``size`` incidents of a file read in chunks: their
    KPI features and row positions, for the embedding chart. Every row draws a key from one
    seeded stream and the ``size`` smallest keys stay, so the sample does not depend on how
    the file is cut (a file of at most ``size`` rows is kept whole, in order)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self._rng = np.random.default_rng(seed)
        self._keys = np.zeros(0)
        self.positions = np.zeros(0, dtype=np.int64)
        self.features = pd.DataFrame()

    def offer(self, incidents: pd.DataFrame, first_row: int) -> None:
        from systemhealer.data import feature_matrix

        keys = self._rng.random(len(incidents))
        if len(self._keys) >= self.size:
            taken = np.flatnonzero(keys < self._keys.max())
        else:
            taken = np.arange(len(incidents))
        if not len(taken):
            return
        keys = np.concatenate([self._keys, keys[taken]])
        positions = np.concatenate([self.positions, taken + first_row])
        features = pd.concat(
            [self.features, feature_matrix(incidents.iloc[taken])], ignore_index=True
        )
        kept = np.sort(np.argsort(keys, kind="stable")[: self.size])  # in file order
        self._keys, self.positions = keys[kept], positions[kept]
        self.features = features.iloc[kept].reset_index(drop=True)


def diagnosis_summary(
    diagnoses: pd.DataFrame,
    diagnoser: Any,
    deployment: Any,
    unread: int,
    sample: EmbeddingSample,
) -> dict[str, Any]:
    """Chart data of a set of diagnoses: class counts, confidence histogram, the 2-D embedding
    of a ``sample`` of them, and how many incidents have no value in any of the model's
    ``model_kpis`` KPIs (``unread``: their diagnosis rests on no evidence)."""
    from systemhealer.evaluation import embedding_2d

    labels = diagnoses["predicted_label"].to_numpy()
    confidence = diagnoses["confidence"].to_numpy(dtype=np.float64)
    counts = {str(c): int((labels == c).sum()) for c in FAULT_CLASSES}
    edges = np.linspace(0.0, 1.0, 21)
    histogram, _ = np.histogram(np.clip(confidence, 0.0, 1.0), bins=edges)
    rows = len(diagnoses)
    points = np.zeros((0, 2))
    if len(sample.positions):
        points = embedding_2d(diagnoser.embed(sample.features, deployment))
    return {
        "rows": rows,
        "class_counts": counts,
        "class_confidence": {
            str(c): float(confidence[labels == c].mean()) if (labels == c).any() else None
            for c in FAULT_CLASSES
        },
        "mean_confidence": float(confidence.mean()) if rows else None,
        "low_confidence": int((confidence < 0.5).sum()),
        "model_kpis": len(diagnoser.preprocessor.columns),
        "unread": unread,
        "confidence_histogram": {"edges": edges.round(2).tolist(), "counts": histogram.tolist()},
        "embedding": {
            "x": np.round(points[:, 0], 4).tolist() if len(points) else [],
            "y": np.round(points[:, 1], 4).tolist() if len(points) else [],
            "label": labels[sample.positions].tolist(),
            "sample_id": [str(s) for s in diagnoses["sample_id"].to_numpy()[sample.positions]],
        },
    }


def iter_diagnoses_json(path: Path, model_version: str | None) -> Iterator[bytes]:
    """The diagnoses of ``diagnoses.parquet`` as a JSON list, as the service's /predict_batch
    answers them, produced in pieces (a file may hold millions)."""
    from systemhealer.data import PROBA_COLUMNS

    frame = pd.read_parquet(path)
    yield b"["
    for start in range(0, len(frame), 5_000):
        part = frame.iloc[start : start + 5_000]
        records = [
            {
                "sample_id": json_value(sid),
                "predicted_label": int(label),
                "confidence": float(conf),
                "probabilities": [float(p) for p in probas],
                "model_version": model_version,
            }
            for sid, label, conf, probas in zip(
                part["sample_id"].to_numpy(),
                part["predicted_label"].to_numpy(),
                part["confidence"].to_numpy(),
                part[list(PROBA_COLUMNS)].to_numpy(),
                strict=True,
            )
        ]
        text = json.dumps(records, default=str)[1:-1]
        yield (b"," if start else b"") + text.encode()
    yield b"]"


def json_value(value: Any) -> Any:
    """A table cell as JSON can hold it: numpy scalars as Python ones, missing (NaN, NA) and
    infinite values as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is pd.NA:
        return None
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m systemhealer.jobs train FOLDER``: the child process of a training job."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != TRAIN:
        print("usage: python -m systemhealer.jobs train JOB_FOLDER", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    return _train_here(Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())
