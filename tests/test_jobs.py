"""The job queue of the web page: persisted state, order, positions, restarts, cancelling."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from systemhealer import jobs
from systemhealer.errors import DataValidationError, SystemHealerError


def _new(store: jobs.JobStore, kind: str = jobs.DIAGNOSE, name: str = "incidents.csv") -> jobs.Job:
    return store.create(kind, name, {}, lambda target: target.write_text("sample_id\n1\n"))


def _wait(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_jobs_persist_and_queue_in_order(tmp_path: Path) -> None:
    store = jobs.JobStore(tmp_path)
    first, second = _new(store), _new(store)
    assert (store.folder(first.id) / "input.csv").read_text().startswith("sample_id")
    # A new store over the same folder (a restarted service) sees the same queue.
    again = jobs.JobStore(tmp_path)
    assert [j.id for j in again.queued(jobs.DIAGNOSE)] == [first.id, second.id]
    assert again.queue_position(again.get(second.id)) == 2
    assert again.list()[0].id == second.id  # newest first
    assert again.queued(jobs.TRAIN) == []


def test_ids_and_file_names_never_become_paths(tmp_path: Path) -> None:
    store = jobs.JobStore(tmp_path)
    job = _new(store)
    for bad in ("../etc", "..", "x/../../y", "", job.id + "/.."):
        with pytest.raises(jobs.JobNotFoundError):
            store.folder(bad)
    with pytest.raises(jobs.JobNotFoundError):
        store.path(job.id, "../../job.json")
    with pytest.raises(jobs.JobNotFoundError):
        store.path(job.id, "secret.txt")
    assert jobs.input_name("../../evil.parquet") == "input.parquet"
    assert jobs.input_name("C:\\x\\data.csv.gz") == "input.csv.gz"
    assert jobs.input_name(None) == "input.csv"


def test_runner_runs_one_at_a_time_in_order_and_records_outcomes(tmp_path: Path) -> None:
    store = jobs.JobStore(tmp_path)
    ran: list[str] = []
    running = threading.Semaphore(1)
    overlap: list[bool] = []

    def executor(job: jobs.Job) -> None:
        if not running.acquire(blocking=False):
            overlap.append(True)
        try:
            time.sleep(0.05)
            ran.append(job.id)
            if job.source == "bad.csv":
                raise DataValidationError("bad.csv: missing columns: feature0")
            if job.source == "bug.csv":
                raise RuntimeError("boom")
        finally:
            running.release()

    created = [_new(store, name=n) for n in ("a.csv", "bad.csv", "bug.csv", "d.csv")]
    runner = jobs.JobRunner(store, {jobs.DIAGNOSE: executor}, {jobs.DIAGNOSE: 1}, poll_seconds=0.05)
    runner.start()
    try:
        _wait(lambda: all(store.get(j.id).status in jobs.FINISHED for j in created))
    finally:
        runner.stop()
    assert ran == [j.id for j in created]
    assert not overlap
    statuses = {store.get(j.id).source: store.get(j.id) for j in created}
    assert statuses["a.csv"].status == jobs.SUCCEEDED
    assert statuses["bad.csv"].status == jobs.FAILED
    assert statuses["bad.csv"].error == "bad.csv: missing columns: feature0"
    assert statuses["bug.csv"].error == "internal error: RuntimeError: boom"
    assert statuses["d.csv"].status == jobs.SUCCEEDED
    assert all(s.attempts == 1 and s.started_at and s.finished_at for s in statuses.values())


def test_restart_queues_interrupted_jobs_again_then_gives_up(tmp_path: Path) -> None:
    store = jobs.JobStore(tmp_path)
    once = store.update(_new(store).id, status=jobs.RUNNING, attempts=1)
    twice = store.update(_new(store).id, status=jobs.RUNNING, attempts=jobs.MAX_ATTEMPTS)
    jobs.JobRunner(store, {}, {}).recover()
    assert store.get(once.id).status == jobs.QUEUED
    assert store.get(twice.id).status == jobs.FAILED
    assert "interrupted" in (store.get(twice.id).error or "")


def test_cancel_a_queued_and_a_running_job(tmp_path: Path) -> None:
    store = jobs.JobStore(tmp_path)
    started = threading.Event()

    def executor(job: jobs.Job) -> None:
        started.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if store.cancel_requested(job.id):
                raise jobs.JobCancelledError("cancelled")
            time.sleep(0.02)

    running, waiting = _new(store), _new(store)
    runner = jobs.JobRunner(store, {jobs.DIAGNOSE: executor}, {jobs.DIAGNOSE: 1}, poll_seconds=0.05)
    runner.start()
    try:
        assert started.wait(10)
        assert store.request_cancel(waiting.id).status == jobs.CANCELLED
        store.request_cancel(running.id)
        _wait(lambda: store.get(running.id).status == jobs.CANCELLED)
    finally:
        runner.stop()
    assert store.get(waiting.id).started_at is None  # it never ran
    # Nothing left to cancel: a finished job, or a training changing the registry.
    with pytest.raises(jobs.JobConflictError, match="already cancelled"):
        store.request_cancel(waiting.id)
    training = _new(store, jobs.TRAIN, "train.csv")
    store.update(training.id, status=jobs.RUNNING)
    store.write(training.id, "progress.json", {"stage": "gate"})
    with pytest.raises(jobs.JobConflictError, match="too late to cancel"):
        store.request_cancel(training.id)
    assert not store.cancel_requested(training.id)


def test_only_one_runner_per_state_folder(tmp_path: Path) -> None:
    store = jobs.JobStore(tmp_path)
    first = jobs.JobRunner(store, {}, {jobs.DIAGNOSE: 1}, poll_seconds=0.05)
    second = jobs.JobRunner(store, {}, {jobs.DIAGNOSE: 1}, poll_seconds=0.05)
    first.start()
    try:
        _wait(lambda: first.active)
        second.start()
        time.sleep(0.3)
        assert not second.active  # stands by while the first runs the queue
    finally:
        second.stop()
        first.stop()


def test_prune_keeps_the_newest_finished_jobs(tmp_path: Path) -> None:
    store = jobs.JobStore(tmp_path)
    made = [_new(store) for _ in range(4)]
    for job in made[:3]:
        store.update(job.id, status=jobs.SUCCEEDED)
    removed = store.prune(keep=1)
    assert sorted(removed) == sorted(j.id for j in made[:2])
    assert {j.id for j in store.list()} == {made[2].id, made[3].id}


def test_uploads_are_kept_by_id(tmp_path: Path) -> None:
    uploads = jobs.UploadStore(tmp_path / "uploads")
    upload = uploads.new("../../train.csv")
    assert upload.path.parent.parent == tmp_path / "uploads"
    upload.path.write_text("x")
    uploads.save_meta(upload, {"ok": True})
    assert uploads.get(upload.id).meta["ok"] is True
    assert uploads.get(upload.id).filename == "train.csv"
    uploads.discard(upload.id)
    with pytest.raises(jobs.JobNotFoundError):
        uploads.get(upload.id)


def test_uploads_make_room_for_a_new_one_oldest_first(tmp_path: Path) -> None:
    uploads = jobs.UploadStore(tmp_path / "uploads", max_bytes=2500)
    made = []
    for age, name in ((300, "a.csv"), (200, "b.csv"), (100, "c.csv")):
        upload = uploads.new(name)
        upload.path.write_bytes(b"x" * 1000)
        uploads.save_meta(upload, {"ok": True})
        os.utime(upload.path.parent, (time.time() - age, time.time() - age))
        made.append(upload)
    assert uploads.make_room(made[-1]) == [made[0].id]  # 3,000 bytes > 2,500: the oldest goes
    with pytest.raises(jobs.JobNotFoundError, match="upload the file again"):
        uploads.get(made[0].id)
    assert uploads.get(made[1].id).filename == "b.csv"
    arriving = uploads.new("e.csv")  # still being received or checked: no upload.json yet
    arriving.path.write_bytes(b"x" * 1000)
    os.utime(arriving.path.parent, (time.time() - 900, time.time() - 900))  # the oldest
    newest = uploads.new("d.csv")
    newest.path.write_bytes(b"x" * 5000)  # over the cap alone: the others go, it stays
    assert sorted(uploads.make_room(newest)) == sorted([made[1].id, made[2].id])
    assert newest.path.exists() and arriving.path.exists()


def test_a_finished_diagnosis_keeps_its_results_not_its_input(tmp_path: Path) -> None:
    store = jobs.JobStore(tmp_path)

    def refuse(job: jobs.Job) -> None:
        raise SystemHealerError("bad rows")

    for outcome, executor in (("succeeded", lambda job: None), ("failed", refuse)):
        runner = jobs.JobRunner(store, {jobs.DIAGNOSE: executor}, {jobs.DIAGNOSE: 1})
        job = _new(store)
        assert (store.folder(job.id) / job.input_file).exists()
        assert runner.run(store.get(job.id)).status == outcome
        assert not (store.folder(job.id) / job.input_file).exists()
    queued = _new(store)
    assert store.request_cancel(queued.id).status == jobs.CANCELLED
    assert not (store.folder(queued.id) / queued.input_file).exists()
    assert store.claim(queued.id) is None  # a runner that listed it before the cancel
    assert store.get(queued.id).status == jobs.CANCELLED
    # A training keeps the data behind its model.
    runner = jobs.JobRunner(store, {jobs.TRAIN: lambda job: None}, {jobs.TRAIN: 1})
    training = _new(store, jobs.TRAIN, "night.csv")
    assert runner.run(store.get(training.id)).status == jobs.SUCCEEDED
    assert (store.folder(training.id) / training.input_file).exists()


def test_an_orderly_shutdown_leaves_the_running_job_to_run_again(tmp_path: Path) -> None:
    store = jobs.JobStore(tmp_path)
    started, stopped = threading.Event(), threading.Event()

    def executor(job: jobs.Job) -> None:
        started.set()
        stopped.wait(10)
        # What a training sees when the service stops: its process was terminated.
        raise SystemHealerError("the training process exited with code 143")

    job = _new(store)
    runner = jobs.JobRunner(store, {jobs.DIAGNOSE: executor}, {jobs.DIAGNOSE: 1}, poll_seconds=0.05)
    runner.start()
    assert started.wait(10)
    stopping = threading.Thread(target=runner.stop)
    stopping.start()
    time.sleep(0.2)
    stopped.set()
    stopping.join(20)
    left = store.get(job.id)
    assert left.status == jobs.RUNNING and left.attempts == 0  # not counted as a crash
    jobs.JobRunner(store, {}, {}).recover()
    assert store.get(job.id).status == jobs.QUEUED


def test_a_cancel_is_seen_before_a_training_registers_or_refused_after(tmp_path: Path) -> None:
    """The commit point: a cancel accepted after the last epoch still stops the training
    before it touches the registry; once committed, a cancel is refused."""
    store = jobs.JobStore(tmp_path)
    cancelled, committed = (_new(store, jobs.TRAIN, "train.csv") for _ in range(2))
    for job in (cancelled, committed):
        store.update(job.id, status=jobs.RUNNING)
    progress = jobs.TrainingProgress(store.folder(cancelled.id), max_epochs=5)
    progress.stage("evaluate", done=False)  # training over, not registered yet
    store.request_cancel(cancelled.id)
    with pytest.raises(jobs.JobCancelledError, match="before the model was registered"):
        progress.commit()
    with pytest.raises(jobs.JobCancelledError, match=r"epoch 3\)"):
        progress.epoch({"epoch": 3, "train_loss": 0.5})

    progress = jobs.TrainingProgress(store.folder(committed.id), max_epochs=5)
    progress.commit()
    assert store.read(committed.id, "progress.json")["stage"] == "register"
    with pytest.raises(jobs.JobConflictError, match="registering its model"):
        store.request_cancel(committed.id)
    assert not store.cancel_requested(committed.id)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_cancelling_a_training_stops_it_at_the_next_epoch(
    tmp_path: Path, small_training_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real child process, Prefect flow and MLflow run: the child stops itself (no signal
    needed), the run is FAILED, nothing is registered."""
    import mlflow

    from systemhealer import tracking
    from systemhealer.config import load_settings

    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SYSTEMHEALER_TRAINING__MAX_EPOCHS", "500")  # runs until cancelled
    monkeypatch.setenv("SYSTEMHEALER_TRAINING__PATIENCE", "500")
    settings = load_settings()
    store = jobs.JobStore(tmp_path / "jobs")
    job = store.create(
        jobs.TRAIN,
        "night shift.csv",
        {},
        lambda target: target.write_bytes(small_training_csv.read_bytes()),
    )
    executor = jobs.TrainingExecutor(store, settings, poll_seconds=0.1)
    # No signal before the wait below ends: the job is cancelled by the child stopping itself.
    executor.escalation = ((120.0, 15), (150.0, 9))
    runner = jobs.JobRunner(store, {jobs.TRAIN: executor}, {jobs.TRAIN: 1}, poll_seconds=0.1)
    runner.start()
    try:
        _wait(lambda: (store.read(job.id, "progress.json") or {}).get("epoch", 0) >= 2, timeout=180)
        store.request_cancel(job.id)
        _wait(lambda: store.get(job.id).status == jobs.CANCELLED, timeout=60)
    finally:
        runner.stop()
    error = store.read(job.id, "error.json")
    assert error["type"] == "JobCancelledError" and "cancelled while training" in error["message"]
    tracking.configure(settings)
    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["status"]) == ["FAILED"]
    assert list(runs["tags.mlflow.runName"]) == ["train-night shift"]  # the upload's name
    assert tracking.list_versions(settings) == []
