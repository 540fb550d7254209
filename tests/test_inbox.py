"""The inbox: validate, merge with de-duplication, archive or reject; safe to run again."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from systemhealer import inbox
from systemhealer.config import Settings, load_settings


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SYSTEMHEALER_SCHEDULE__SETTLE_SECONDS", "0")
    return load_settings()


def drop(settings: Settings, name: str, frame: pd.DataFrame | str | bytes) -> Path:
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    path = settings.inbox_dir / name
    if isinstance(frame, pd.DataFrame):
        if name.endswith(".parquet"):
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
    elif isinstance(frame, bytes):
        path.write_bytes(frame)
    else:
        path.write_text(frame)
    return path


def test_good_files_merge_without_duplicates_and_bad_ones_are_set_aside(
    settings: Settings, small_training_frame: pd.DataFrame
) -> None:
    first, second = small_training_frame.iloc[:500], small_training_frame.iloc[400:]
    drop(settings, "a.csv", first)
    drop(settings, "b.parquet", second)  # 100 incidents overlap with a.csv
    broken = first.head(20).astype({"feature7": object})
    broken.loc[broken.index[2], "feature7"] = "=HYPERLINK(1)"
    drop(settings, "broken.csv", broken)
    drop(settings, "notes.txt", "not incidents")
    drop(settings, ".hidden.csv", first.head(5))  # ignored: being copied in
    drop(settings, "upload.csv.part", first.head(5))  # ignored: partial download

    result = inbox.process_inbox(settings)

    by_name = {f.name: f for f in result.files}
    assert set(by_name) == {"a.csv", "b.parquet", "broken.csv", "notes.txt"}
    assert by_name["a.csv"].status == by_name["b.parquet"].status == "merged"
    expected = len(inbox.deduplicate(small_training_frame))
    dataset = inbox.load_dataset(settings)
    assert result.dataset_rows == len(dataset) == expected
    assert by_name["a.csv"].rows_added + by_name["b.parquet"].rows_added == expected
    assert by_name["b.parquet"].rows_added <= len(second) - 100
    assert dataset["sample_id"].map(type).eq(str).all()
    assert dataset["label"].dtype == "int64"

    assert by_name["broken.csv"].status == "rejected"
    report = json.loads(Path(by_name["broken.csv"].report).read_text())
    assert report["ok"] is False and "feature7" in report["text"] and "row 3" in report["text"]
    assert Path(by_name["broken.csv"].moved_to).exists()
    assert "not a CSV" in by_name["notes.txt"].message

    remaining = sorted(p.name for p in settings.inbox_dir.iterdir())
    assert remaining == [".hidden.csv", "upload.csv.part"]
    assert len(list(settings.archive_dir.iterdir())) == 2
    manifest = inbox.read_manifest(settings)
    assert [f["name"] for f in manifest["files"]] == ["a.csv", "b.parquet"]
    assert manifest["dataset"]["rows"] == expected


def test_a_file_merged_before_is_archived_not_merged_twice(
    settings: Settings, small_training_frame: pd.DataFrame
) -> None:
    path = drop(settings, "a.csv", small_training_frame.head(300))
    kept = settings.home / "a-copy.csv"
    shutil.copy(path, kept)
    inbox.process_inbox(settings)
    before = inbox.read_manifest(settings)["dataset"]
    # As if a run died after merging, before archiving: the same bytes are back in the inbox.
    shutil.copy(kept, settings.inbox_dir / "a.csv")
    result = inbox.process_inbox(settings)
    assert [f.status for f in result.files] == ["already merged"]
    assert inbox.read_manifest(settings)["dataset"] == before
    assert result.rows_added == 0 and not any(settings.inbox_dir.iterdir())


def test_files_still_being_written_wait(
    settings: Settings, small_training_frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYSTEMHEALER_SCHEDULE__SETTLE_SECONDS", "60")
    slow = load_settings()
    path = drop(slow, "fresh.csv", small_training_frame.head(10))
    result = inbox.process_inbox(slow)
    assert result.files == [] and result.waiting == ["fresh.csv"]
    old = time.time() - 120
    os.utime(path, (old, old))
    assert [f.status for f in inbox.process_inbox(slow).files] == ["merged"]


def test_oversized_files_are_rejected_unread(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYSTEMHEALER_SCHEDULE__MAX_FILE_MB", "0.001")
    small_limit = load_settings()
    drop(small_limit, "big.csv", b"x" * 5000)
    (outcome,) = inbox.process_inbox(small_limit).files
    assert outcome.status == "rejected" and "schedule.max_file_mb" in outcome.message


def test_training_is_needed_only_for_new_data(
    settings: Settings, small_training_frame: pd.DataFrame
) -> None:
    needed, reason = inbox.training_needed(settings, have_champion=False)
    assert not needed and "no training data" in reason
    drop(settings, "few.csv", small_training_frame.head(10))
    inbox.process_inbox(settings)
    needed, reason = inbox.training_needed(settings, have_champion=False)
    assert not needed and "waiting for more files" in reason
    drop(settings, "more.csv", small_training_frame.iloc[10:])
    inbox.process_inbox(settings)
    needed, reason = inbox.training_needed(settings, have_champion=True)
    assert needed and "changed" in reason
    sha = inbox.read_manifest(settings)["dataset"]["sha256"]
    inbox.record_trained(settings, sha, {"model_version": "1", "promoted": True})
    assert inbox.training_needed(settings, have_champion=True) == (
        False,
        "no new training data since the last training",
    )
    assert inbox.training_needed(settings, have_champion=False)[0]  # the champion is gone


def test_a_file_that_trips_a_bug_is_rejected_and_the_rest_merged(
    settings: Settings, small_training_frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = inbox.validate_file

    def flaky(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(path).name == "poison.csv":
            raise RuntimeError("a bug in a reader")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(inbox, "validate_file", flaky)
    drop(settings, "poison.csv", small_training_frame.iloc[10:20])
    drop(settings, "good.csv", small_training_frame.head(10))
    outcomes = {f.name: f for f in inbox.process_inbox(settings).files}
    assert outcomes["good.csv"].status == "merged"
    assert outcomes["poison.csv"].status == "rejected"
    assert "RuntimeError: a bug in a reader" in outcomes["poison.csv"].message
    assert not any(settings.inbox_dir.iterdir())
