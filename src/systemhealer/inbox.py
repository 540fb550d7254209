"""The inbox: labelled incident files dropped into a folder grow the training data set.

Each run of the retraining flow (``flows/retraining.py``) takes the files that have settled
(unchanged for ``schedule.settle_seconds``), validates each against the data contract (Great
Expectations, labels required), merges the valid ones into the training data set kept under the
state folder — dropping incidents it already holds — and archives them. A rejected file is moved
aside with its validation report. Then, if the data set changed since the last training, the
training flow runs on it and the gate decides.

Every step survives being killed and run again: the data set is replaced atomically (written
beside, then renamed) and remembers the content hash of each file it holds, so a file merged
but not yet archived is archived next time without being merged twice; the hash of the last
data set trained on is recorded only after the training finished, so an interrupted training
is simply run again.

To drop a file safely, copy it under a name starting with ``.`` or ending in ``.part`` and
rename it when complete (or just copy it: it waits until it has settled).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from systemhealer.config import Settings
from systemhealer.data import KPI_FEATURES, LABEL, SAMPLE_ID, deduplicate, fingerprint
from systemhealer.locks import INBOX, state_lock
from systemhealer.validation import DataProfile, ValidationIssue, ValidationReport, validate_file

log = logging.getLogger(__name__)

DATASET = "incidents.parquet"
MANIFEST = "manifest.json"
ACCEPTED_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
# Names of files still being written by the usual tools (rsync, browsers, curl -o x.part).
_IN_PROGRESS_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart")


@dataclass
class FileOutcome:
    """What happened to one inbox file."""

    name: str
    status: str  # merged | already merged | rejected
    sha256: str
    rows: int = 0
    rows_added: int = 0
    moved_to: str = ""
    report: str = ""
    message: str = ""


@dataclass
class InboxResult:
    """One pass over the inbox."""

    files: list[FileOutcome] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # not settled yet: next run
    dataset_rows: int = 0
    rows_added: int = 0

    @property
    def rejected(self) -> list[FileOutcome]:
        return [f for f in self.files if f.status == "rejected"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": [asdict(f) for f in self.files],
            "waiting": self.waiting,
            "dataset_rows": self.dataset_rows,
            "rows_added": self.rows_added,
        }


def settled_files(folder: Path, settle_seconds: float) -> tuple[list[Path], list[Path]]:
    """Files of ``folder`` (not its subfolders) that are ready, and those still settling.

    Hidden files and names of partial downloads are ignored; a file counts as settled once its
    modification time is ``settle_seconds`` old.
    """
    if not folder.is_dir():
        return [], []
    now = time.time()
    ready, waiting = [], []
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith(".") or name.lower().endswith(_IN_PROGRESS_SUFFIXES):
            continue
        try:
            if not path.is_file():
                continue
            age = now - path.stat().st_mtime
        except OSError:  # vanished meanwhile
            continue
        (ready if age >= settle_seconds else waiting).append(path)
    return ready, waiting


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_path(settings: Settings) -> Path:
    """Where the training data set that the inbox grows is kept."""
    return settings.training_data_dir / DATASET


def read_manifest(settings: Settings) -> dict[str, Any]:
    """What the data set holds: merged files (by content hash), its fingerprint, last trained."""
    path = settings.training_data_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        manifest = {}
    manifest.setdefault("files", [])
    return manifest


def _replace_atomically(target: Path, write: Any) -> None:
    """Write ``target`` under a temporary name beside it, flush it to disk, rename it over."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _write_manifest(settings: Settings, manifest: dict[str, Any]) -> None:
    _replace_atomically(
        settings.training_data_dir / MANIFEST,
        lambda p: p.write_text(json.dumps(manifest, indent=1)),
    )


def load_dataset(settings: Settings) -> pd.DataFrame | None:
    path = dataset_path(settings)
    return pd.read_parquet(path) if path.exists() else None


def _stamped(folder: Path, name: str) -> Path:
    """A new path in ``folder`` for ``name``, prefixed with the UTC time (never overwrites)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target, n = folder / f"{stamp}-{name}", 1
    while target.exists() or target.with_name(target.name + ".report.json").exists():
        n += 1
        target = folder / f"{stamp}-{n}-{name}"
    return target


def _incident_rows(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The columns the data set keeps: ``sample_id`` (as text), KPI features, label.

    Incidents without an id get ``<file name>:<row>``, so each stays traceable to its file.
    """
    generated = pd.Series([f"{Path(source).name}:{i}" for i in range(len(frame))], dtype=object)
    if SAMPLE_ID in frame.columns:
        given = frame[SAMPLE_ID].reset_index(drop=True)
        ids = given.astype("string").fillna("").astype(object)
        ids = ids.where(ids != "", generated)
    else:
        ids = generated
    columns = {SAMPLE_ID: ids.astype(str).to_numpy()}
    columns.update({c: frame[c].to_numpy(dtype=np.float64) for c in KPI_FEATURES})
    columns[LABEL] = frame[LABEL].to_numpy(dtype=np.int64)
    return pd.DataFrame(columns)


def validate_inbox_file(
    path: Path, settings: Settings, profile: DataProfile | None
) -> tuple[ValidationReport, pd.DataFrame]:
    """The training contract for one increment: labels required; any row count and class
    count (the merged data set must meet the training minimums, not each file)."""
    size_mb = path.stat().st_size / 2**20
    if size_mb > settings.schedule.max_file_mb:
        report = ValidationReport(source=path.name, rows=0, columns=0, checks_run=1)
        report.issues.append(
            ValidationIssue(
                "size",
                f"file of {size_mb:.1f} MB is over the limit of "
                f"{settings.schedule.max_file_mb:g} MB (schedule.max_file_mb)",
                True,
            )
        )
        return report, pd.DataFrame()
    if not path.name.lower().endswith(ACCEPTED_SUFFIXES):
        report = ValidationReport(source=path.name, rows=0, columns=0, checks_run=1)
        report.issues.append(
            ValidationIssue(
                "file_type",
                f"'{path.name}' is not a CSV (.csv, .csv.gz) or Parquet (.parquet, .pq) file",
                True,
            )
        )
        return report, pd.DataFrame()
    increment = settings.data.model_copy(update={"min_training_rows": 1, "min_fault_classes": 1})
    report, frame = validate_file(path, increment, require_label=True, profile=profile)
    report.source = path.name
    return report, frame


def _reject(path: Path, report: ValidationReport, sha: str, settings: Settings) -> FileOutcome:
    target = _stamped(settings.rejected_dir, path.name)
    report_path = target.with_name(target.name + ".report.json")
    payload = {**report.to_dict(), "text": report.to_text(), "sha256": sha}
    report_path.write_text(json.dumps(payload, indent=1))
    shutil.move(str(path), target)
    log.warning("inbox: rejected %s: %s", path.name, report.summary())
    return FileOutcome(
        name=path.name,
        status="rejected",
        sha256=sha,
        rows=report.rows,
        moved_to=str(target),
        report=str(report_path),
        message=report.summary(),
    )


def process_inbox(settings: Settings, profile: DataProfile | None = None) -> InboxResult:
    """Validate, merge (de-duplicated) and archive the settled inbox files; reject bad ones.

    Holds the inbox lock, so two runs never merge at once. ``profile`` (the champion's) adds
    drift warnings to the kept reports; they never block a file.
    """
    result = InboxResult()
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    with state_lock(settings, INBOX):
        ready, waiting = settled_files(settings.inbox_dir, settings.schedule.settle_seconds)
        result.waiting = [p.name for p in waiting]
        manifest = read_manifest(settings)
        known = {entry["sha256"] for entry in manifest["files"]}
        dataset = load_dataset(settings)
        for path in ready:
            sha = file_sha256(path)
            if sha in known:
                # Merged before (a run died before archiving it, or it was dropped twice).
                target = _stamped(settings.archive_dir, path.name)
                shutil.move(str(path), target)
                result.files.append(
                    FileOutcome(path.name, "already merged", sha, moved_to=str(target))
                )
                continue
            try:
                report, frame = validate_inbox_file(path, settings, profile)
            except Exception as exc:  # a file that trips a bug must not block the inbox
                log.exception("inbox: cannot validate %s", path.name)
                report, frame = ValidationReport(path.name, 0, 0, checks_run=1), pd.DataFrame()
                report.issues.append(
                    ValidationIssue("readable", f"cannot read: {type(exc).__name__}: {exc}", True)
                )
            if not report.ok:
                result.files.append(_reject(path, report, sha, settings))
                continue
            incoming = _incident_rows(frame, path.name)
            before = 0 if dataset is None else len(dataset)
            merged = incoming if dataset is None else pd.concat([dataset, incoming])
            merged = deduplicate(merged.reset_index(drop=True))
            added = len(merged) - before
            info = fingerprint(merged)
            _replace_atomically(
                dataset_path(settings), lambda p, m=merged: m.to_parquet(p, index=False)
            )
            dataset = merged
            # Only now, with the data set on disk, does the manifest say the file is in it.
            manifest["files"].append(
                {
                    "name": path.name,
                    "sha256": sha,
                    "rows": len(incoming),
                    "rows_added": added,
                    "merged_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "warnings": len(report.warnings),
                }
            )
            manifest["dataset"] = info
            _write_manifest(settings, manifest)
            known.add(sha)
            target = _stamped(settings.archive_dir, path.name)
            shutil.move(str(path), target)
            result.rows_added += added
            result.files.append(
                FileOutcome(
                    path.name,
                    "merged",
                    sha,
                    rows=len(incoming),
                    rows_added=added,
                    moved_to=str(target),
                    message=f"{added} new incidents, {len(incoming) - added} already known",
                )
            )
            log.info("inbox: merged %s (%d new incidents)", path.name, added)
        result.dataset_rows = 0 if dataset is None else len(dataset)
    return result


def training_needed(settings: Settings, have_champion: bool) -> tuple[bool, str]:
    """Whether the retraining flow should train now, and why (or why not)."""
    manifest = read_manifest(settings)
    dataset = manifest.get("dataset")
    if not dataset or not dataset_path(settings).exists():
        return False, f"no training data yet: drop labelled files into {settings.inbox_dir}"
    rows = int(dataset.get("rows", 0))
    classes = len(dataset.get("class_counts", {}))
    if rows < settings.data.min_training_rows or classes < settings.data.min_fault_classes:
        return False, (
            f"the training data holds {rows} incidents of {classes} fault class(es); "
            f"training needs {settings.data.min_training_rows} and "
            f"{settings.data.min_fault_classes}: waiting for more files"
        )
    if dataset["sha256"] != manifest.get("trained_sha256"):
        return True, f"the training data changed ({rows} incidents)"
    if not have_champion:
        return True, "there is no champion"
    if settings.schedule.retrain_without_new_data:
        return True, "schedule.retrain_without_new_data is set"
    return False, "no new training data since the last training"


def record_trained(settings: Settings, dataset_sha256: str, summary: dict[str, Any]) -> None:
    """Remember that the data set with this hash was trained on (whatever the gate said)."""
    with state_lock(settings, INBOX):
        manifest = read_manifest(settings)
        manifest["trained_sha256"] = dataset_sha256
        manifest["last_training"] = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            **{k: summary.get(k) for k in ("run_id", "model_version", "promoted", "gate_reason")},
        }
        _write_manifest(settings, manifest)
