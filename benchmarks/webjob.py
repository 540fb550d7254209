"""Web diagnosis-job benchmark: the page's file job on uploads as large as the limit lets in.

A diagnosis job reads, validates and diagnoses its file ``web.chunk_rows`` rows at a time. The
table: the job's peak memory (RSS of the process, which holds the champion as the service does)
against the peak of a plain ``pandas.read_csv`` of the same file (what holding the whole file
costs at least), and rows/s, on two files of about ``serving.max_upload_mb`` (200 MB):
training-like incidents (~1.7 kB a row) and incidents of zeros (~216 B a row, the most rows the
limit lets in). Each run is a fresh interpreter running ``jobs.DiagnosisExecutor`` on a job
folder, as the service's job queue does.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.batch import TRAIN_FILE, _run, log
from benchmarks.serving import state_folder

# A smaller size for a quick look: SYSTEMHEALER_BENCH_WEBJOB_MB=20.
TARGET_MB = int(os.environ.get("SYSTEMHEALER_BENCH_WEBJOB_MB", "195"))

# Peak memory is read from /proc/self/status (VmHWM) in the measured process itself: the
# ru_maxrss that wait4 reports for a child starts from its parent's size when it was forked.
_PEAK = """
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
"""

_READ_CSV = (
    _PEAK
    + """
import json, sys, time
import pandas as pd
started = time.perf_counter()
frame = pd.read_csv(sys.argv[1])
print(json.dumps({"rows": len(frame), "seconds": time.perf_counter() - started, "rss_mb": peak_mb()}))
"""
)

_JOB = (
    _PEAK
    + """
import json, shutil, sys, time
from pathlib import Path
from systemhealer import jobs
from systemhealer.config import load_settings
from systemhealer.web.app import ChampionCache

settings = load_settings()
champion = ChampionCache(settings)
champion.get()
before = peak_mb()
store = jobs.JobStore(Path(sys.argv[2]))
source = Path(sys.argv[1])
job = store.create(jobs.DIAGNOSE, source.name, {}, lambda path: shutil.copy(source, path))
started = time.perf_counter()
jobs.DiagnosisExecutor(store, settings, champion.get)(job)
seconds = time.perf_counter() - started
result = store.read(job.id, "result.json")
print(json.dumps({
    "rows": result["rows"], "seconds": seconds, "rss_before_job_mb": before, "rss_mb": peak_mb()
}))
"""
)


def build_files(folder: Path) -> dict[str, Path]:
    """Two CSVs of about TARGET_MB: training-like incidents, and rows of zeros."""
    train = pd.read_csv(TRAIN_FILE).drop(columns=["label"])
    body = train.to_csv(index=False, header=False)
    header = ",".join(train.columns) + "\n"
    target = TARGET_MB << 20
    files = {"training_like": folder / "training_like.csv", "zeros": folder / "zeros.csv"}
    with files["training_like"].open("w") as out:
        out.write(header)
        for _ in range(max(1, target // len(body))):
            out.write(body)
    zero_row = ",".join("0" for _ in train.columns) + "\n"
    with files["zeros"].open("w") as out:
        out.write(header)
        block = zero_row * 10_000
        for _ in range(max(1, target // len(block))):
            out.write(block)
    return files


def _measured(script: str, *args: str, env: dict[str, str]) -> dict[str, Any]:
    _, _, _, stdout = _run([sys.executable, "-c", script, *args], env)
    return json.loads(stdout.strip().splitlines()[-1])


def pandas_read(source: Path) -> dict[str, Any]:
    return _measured(_READ_CSV, str(source), env=dict(os.environ))


def diagnosis_job(source: Path, home: Path, jobs_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "SYSTEMHEALER_HOME": str(home)}
    return _measured(_JOB, str(source), str(jobs_dir), env=env)


def run(home: Path | None, results_dir: Path) -> dict[str, Any]:
    """Build the files, run the measurements, keep the figures in ``results_dir/webjob.json``."""
    from systemhealer.config import load_settings

    figures: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_start": os.getloadavg()[0],
        },
        "chunk_rows": load_settings().web.chunk_rows,
        "runs": {},
    }
    folder = Path(tempfile.mkdtemp(prefix="systemhealer-bench-webjob-"))
    try:
        with state_folder(home) as state:
            log(f"building two CSVs of about {TARGET_MB} MB in {folder}")
            for name, path in build_files(folder).items():
                log(f"pandas.read_csv and a diagnosis job: {name}")
                figures["runs"][name] = {
                    "file_mb": round(path.stat().st_size / 2**20, 1),
                    "pandas_read_csv": pandas_read(path),
                    "job": diagnosis_job(path, state, folder / f"jobs-{name}"),
                }
        figures["machine"]["load_average_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "webjob.json").write_text(json.dumps(figures, indent=2))
    (results_dir / "webjob.md").write_text(table(figures) + "\n")
    return figures


def table(figures: dict[str, Any]) -> str:
    lines = [
        "| file | MB | rows | read_csv peak RSS MB | job peak RSS MB | job RSS before the job MB "
        "| job peak ÷ read_csv peak | job s | job rows/s | read_csv rows/s | job ÷ read_csv rows/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in figures["runs"].items():
        read, job = run["pandas_read_csv"], run["job"]
        job_rate, read_rate = job["rows"] / job["seconds"], read["rows"] / read["seconds"]
        lines.append(
            f"| {name} | {run['file_mb']:.0f} | {job['rows']:,} | {read['rss_mb']:,} | "
            f"{job['rss_mb']:,} | {job['rss_before_job_mb']:,} | "
            f"{job['rss_mb'] / read['rss_mb']:.2f} | {job['seconds']:.1f} | {job_rate:,.0f} | "
            f"{read_rate:,.0f} | {job_rate / read_rate:.3f} |"
        )
    machine = figures["machine"]
    lines += [
        "",
        f"`web.chunk_rows` {figures['chunk_rows']:,}. Peak RSS: the process's high-water mark "
        "(VmHWM; the job's process loads the champion first, as the service holds it: 'before "
        "the job'). "
        "read_csv: a fresh interpreter parsing the whole file with pandas (the least that holding "
        "it costs). Job: validation (Great Expectations per chunk), diagnosis, writing the CSV "
        "and Parquet downloads and the chart data.",
        f"Machine: {machine['cpus']} CPUs, shared; load average "
        f"{machine['load_average_start']:.1f} at the start, "
        f"{machine.get('load_average_end', float('nan')):.1f} at the end.",
    ]
    return "\n".join(lines)
