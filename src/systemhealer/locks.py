"""Locks on the state folder: trainings queue one behind another, one scheduler per folder.

A lock is ``fcntl.flock`` on a file under ``<home>/locks/``. The kernel releases it when its
holder exits for any reason, SIGKILL included, so a crashed process never leaves a stale lock
behind. The file also says who holds the lock (pid, host, since when, what for), which is shown
to whoever has to wait. Each :class:`StateLock` opens its own file description, so two threads of
one process exclude each other as two processes do.

The state folder may be shared by several hosts (NFS): Linux maps ``flock`` there onto POSIX
byte-range locks, which NFS v4 serves across hosts.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from systemhealer.config import Settings
from systemhealer.errors import BusyError

log = logging.getLogger(__name__)

TRAINING = "training"
SCHEDULER = "scheduler"
INBOX = "inbox"
RETRAINING = "retraining"
CHAMPION = "champion"  # moves of the champion alias (tracking.champion_lock)
# MLflow tag naming the lock a training run was started under (see recover_interrupted_trainings).
RUN_LOCK_TAG = "systemhealer.lock"


class LockTimeoutError(BusyError):
    """A lock was not free within the time allowed."""


class StateLock:
    """An exclusive, process-crash-safe lock on a file under the state folder."""

    def __init__(self, path: Path, purpose: str) -> None:
        self.path = path
        self.purpose = purpose
        self._fd: int | None = None
        self.acquired_at: datetime | None = None
        # What a previous holder that died left in the file (a clean release empties it).
        self.stale: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def try_acquire(self, details: dict[str, Any] | None = None) -> bool:
        """Take the lock if it is free; never waits."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        self.acquired_at = datetime.now(UTC)
        self.stale = read_holder(self.path)
        holder = {
            "purpose": self.purpose,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": self.acquired_at.isoformat(timespec="seconds"),
            **(details or {}),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        return True

    def acquire(
        self,
        timeout: float | None = None,
        details: dict[str, Any] | None = None,
        on_wait: Callable[[dict[str, Any] | None], None] | None = None,
        poll_seconds: float = 0.25,
    ) -> None:
        """Wait for the lock (``timeout`` None = as long as it takes); ``on_wait`` is called
        once, with the holder's details, if the lock is taken."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waited = False
        while not self.try_acquire(details):
            if not waited:
                waited = True
                if on_wait is not None:
                    on_wait(self.holder())
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"the {self.purpose} lock ({self.path}) is still held by "
                    f"{describe_holder(self.holder())} after {timeout:g} s"
                )
            time.sleep(poll_seconds)

    def update_details(self, details: dict[str, Any]) -> None:
        """Add to what the lock file says about the holder (the lock must be held)."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not held by this object")
        holder = {**(read_holder(self.path) or {}), **details}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        """Give the lock up (and clear the holder's details)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (None when it is free)."""
        if self._fd is not None:
            return read_holder(self.path)
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return read_holder(self.path) or {"purpose": self.purpose}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(path: Path) -> dict[str, Any] | None:
    """The holder details written in a lock file (they may be stale: see StateLock.holder)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        payload = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    where = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    return f"{holder.get('purpose', 'a process')} ({where}, since {holder.get('since', '?')})"


def state_lock(settings: Settings, name: str) -> StateLock:
    """The lock called ``name`` of this state folder."""
    return StateLock(settings.locks_dir / f"{name}.lock", name)


def lock_tag(lock: StateLock) -> str:
    """A short, stable id of a lock file, stored on the MLflow runs started under it."""
    return hashlib.sha256(str(lock.path.resolve()).encode()).hexdigest()[:16]


@contextmanager
def training_lock(settings: Settings, timeout: float | None = None) -> Iterator[dict[str, str]]:
    """Hold the training lock: trainings of one state folder run one at a time, in turn.

    Once the lock is held, no other training of this state folder can be running, so MLflow runs
    still marked RUNNING under this lock belong to trainings that died: they are marked FAILED,
    and so is the Prefect flow run of the last holder if it died. Yields the MLflow tags that
    the new run must carry.
    """
    lock = state_lock(settings, TRAINING)

    def waiting(holder: dict[str, Any] | None) -> None:
        log.warning("training queued: waiting for %s to finish", describe_holder(holder))

    lock.acquire(timeout=timeout, on_wait=waiting, details=_flow_run_details())
    try:
        if lock.stale:
            _crash_dead_flow_run(lock.stale)
        recover_interrupted_trainings(settings, lock)
        yield {RUN_LOCK_TAG: lock_tag(lock)}
    finally:
        lock.release()


def _flow_run_details() -> dict[str, str]:
    """The id of the Prefect flow run this code runs in, if any."""
    try:
        from prefect.runtime import flow_run

        run_id = flow_run.id
    except Exception:  # not in a flow run, or Prefect not importable here
        return {}
    return {"prefect_flow_run_id": str(run_id)} if run_id else {}


def _crash_dead_flow_run(stale: dict[str, Any]) -> None:
    """Mark the flow run of a lock holder that died Crashed (best effort: it is cosmetic)."""
    run_id = stale.get("prefect_flow_run_id")
    if not run_id:
        return
    try:
        from systemhealer.orchestration import crash_flow_run

        crash_flow_run(str(run_id), f"the training process (pid {stale.get('pid')}) died")
    except Exception as exc:
        log.warning("could not mark the flow run %s of a dead training Crashed: %s", run_id, exc)


def recover_interrupted_trainings(settings: Settings, lock: StateLock | None = None) -> list[str]:
    """Mark the MLflow runs of dead trainings FAILED; returns their run ids.

    With ``lock`` (held by the caller) it always sweeps; without, it sweeps only if the training
    lock is free right now (no training running), e.g. when the scheduler starts.
    """
    if settings.mlflow_tracking_uri is None and not (settings.home / "mlflow.db").exists():
        return []  # no store yet, so no run to recover (and no reason to create one here)
    from systemhealer import tracking

    if lock is not None:
        return tracking.fail_interrupted_runs(settings, RUN_LOCK_TAG, lock_tag(lock))
    probe = state_lock(settings, TRAINING)
    if not probe.try_acquire({"during": "recovery sweep"}):
        return []
    try:
        return tracking.fail_interrupted_runs(settings, RUN_LOCK_TAG, lock_tag(probe))
    finally:
        probe.release()


def running_scheduler(settings: Settings) -> dict[str, Any] | None:
    """The live scheduler of this state folder (its holder details, with ``api_url``), if any."""
    return state_lock(settings, SCHEDULER).holder()
