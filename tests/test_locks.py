"""State-folder locks: waiting, timeouts, holders, and release when the holder is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from systemhealer.config import load_settings
from systemhealer.locks import (
    LockTimeoutError,
    StateLock,
    read_holder,
    state_lock,
    training_lock,
)


def test_a_second_holder_waits_until_the_first_releases(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    first = StateLock(path, "first")
    first.acquire(details={"job": "one"})
    assert first.holder()["job"] == "one"
    seen: list[dict] = []
    order: list[str] = []

    def second() -> None:
        lock = StateLock(path, "second")
        lock.acquire(on_wait=lambda holder: seen.append(holder or {}))
        order.append("second acquired")
        lock.release()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.6)
    assert order == []  # still waiting
    order.append("first released")
    first.release()
    thread.join(5)
    assert order == ["first released", "second acquired"]
    assert seen and seen[0]["purpose"] == "first" and seen[0]["pid"] == os.getpid()
    assert StateLock(path, "probe").holder() is None
    assert read_holder(path) is None  # a clean release leaves nothing behind


def test_timeout_names_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with (
        StateLock(path, "training"),
        pytest.raises(LockTimeoutError, match=r"training .*pid \d+"),
    ):
        StateLock(path, "other").acquire(timeout=0.5)


def test_a_sigkilled_holder_frees_the_lock_and_leaves_its_details(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from systemhealer.locks import StateLock
        lock = StateLock(Path({str(path)!r}), "doomed")
        assert lock.try_acquire({{"prefect_flow_run_id": "abc"}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    process = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert process.returncode == -signal.SIGKILL
    lock = StateLock(path, "next")
    assert lock.holder() is None  # the kernel released it
    assert lock.try_acquire()
    assert lock.stale is not None and lock.stale["purpose"] == "doomed"
    assert lock.stale["prefect_flow_run_id"] == "abc"
    lock.release()


def test_trainings_of_two_processes_run_one_after_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "home"))
    log = tmp_path / "intervals.jsonl"
    script = textwrap.dedent(
        f"""
        import json, time
        from systemhealer.config import load_settings
        from systemhealer.locks import training_lock
        with training_lock(load_settings()) as tags:
            start = time.time()
            time.sleep(1.0)
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps({{"start": start, "end": time.time(), "tags": tags}}) + "\\n")
        """
    )
    processes = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    assert [p.wait(120) for p in processes] == [0, 0]
    first, second = sorted(
        (json.loads(line) for line in log.read_text().splitlines()), key=lambda r: r["start"]
    )
    assert first["end"] <= second["start"]  # queued, never overlapping
    assert first["tags"] == second["tags"] and "systemhealer.lock" in first["tags"]
    # Nothing held afterwards; the lock is usable in this process too.
    settings = load_settings()
    assert state_lock(settings, "training").holder() is None
    with training_lock(settings, timeout=5):
        pass
