"""Batch-scoring benchmark: ``systemhealer predict`` on 400,000 incidents built from the real data.

The table: rows/s of ``predict`` (end to end, the command as a user runs it; and the scoring job
alone, without interpreter start-up and model loading) against a plain ``pandas.read_csv`` of
the same file, and their ratio; peak RSS at 100k and 400k rows; Parquet against CSV; one
process against a local Dask cluster of 2 workers; and whether the output has the same rows and
values as the one-shot path (the whole file read by pandas and diagnosed in one call).

The incidents are the shipped training file (labels dropped) and the unlabelled file, repeated,
with fresh ``sample_id``s. Generated files live in a temporary folder, removed at the end.
Runs against the champion of ``--home`` / ``SYSTEMHEALER_HOME``, or trains a small one with the
default network (inference cost depends on the architecture, not on the training length).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from benchmarks.serving import state_folder
from benchmarks.soak import process_tree

REPO = Path(__file__).resolve().parents[1]
TRAIN_FILE = REPO / "data" / "fault_kpi_train.csv.gz"
UNLABELLED_FILE = REPO / "data" / "fault_kpi_unlabelled_2000.csv.gz"
# A smaller size for a quick look: SYSTEMHEALER_BENCH_BATCH_ROWS=40000 (the labels still say 400k).
ROWS = int(os.environ.get("SYSTEMHEALER_BENCH_BATCH_ROWS", "400000"))
SMALL_ROWS = ROWS // 4

_READ_CSV = """
import sys, time
import pandas as pd
started = time.perf_counter()
frame = pd.read_csv(sys.argv[1])
print(len(frame), time.perf_counter() - started)
"""


def log(message: str) -> None:
    print(f"[batch] {message}", file=sys.stderr, flush=True)


def build_incidents(folder: Path) -> dict[str, Path]:
    """400k- and 100k-incident CSVs and a 400k Parquet file from the shipped data."""
    train = pd.read_csv(TRAIN_FILE).drop(columns=["label"])
    base = pa.Table.from_pandas(
        pd.concat([train, pd.read_csv(UNLABELLED_FILE)], ignore_index=True), preserve_index=False
    )
    repeats = -(-ROWS // base.num_rows)
    table = pa.concat_tables([base] * repeats).slice(0, ROWS).combine_chunks()
    table = table.set_column(0, "sample_id", pa.array(np.arange(ROWS, dtype=np.int64)))
    files = {
        "csv_400k": folder / "incidents_400k.csv",
        "csv_100k": folder / "incidents_100k.csv",
        "parquet_400k": folder / "incidents_400k.parquet",
    }
    pacsv.write_csv(table, files["csv_400k"])
    pacsv.write_csv(table.slice(0, SMALL_ROWS), files["csv_100k"])
    pq.write_table(table, files["parquet_400k"], row_group_size=50_000)
    return files


def _pss_mb(pid: int) -> int:
    """Proportional set size: pages shared between processes (a child forked for a moment
    shares all of its parent's) are split between them, so the sum over a tree is right."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _high_water_mb(pid: int) -> int:
    """A process's peak resident set so far (VmHWM), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _run(command: list[str], env: dict[str, str]) -> tuple[float, int, int, str]:
    """Wall seconds, peak RSS (MB) of the command's process, peak memory of the whole process
    tree (sum of PSS, sampled every 50 ms: a child's memory counts too) and stdout.

    The peak RSS is the process's own high-water mark (VmHWM), sampled with the tree: the
    ru_maxrss that wait4 reports starts from the size of this (parent) process at the fork."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        tree_peak = rss_peak = 0
        while True:
            rss_peak = max(rss_peak, _high_water_mb(process.pid))
            pid, status, _ = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            tree_peak = max(tree_peak, sum(_pss_mb(p) for p in process_tree(process.pid)))
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return seconds, rss_peak, tree_peak, stdout


def pandas_read(path: Path) -> dict[str, float]:
    """A fresh interpreter parses the file with pandas; the time of the read alone."""
    wall, rss, _, stdout = _run([sys.executable, "-c", _READ_CSV, str(path)], dict(os.environ))
    rows, seconds = stdout.split()
    return {"rows": int(rows), "seconds": float(seconds), "wall": wall, "rss_mb": rss}


def predict(
    source: Path, output: Path, home: Path, *extra: str, env_extra: dict[str, str] | None = None
) -> dict[str, Any]:
    """``systemhealer predict`` as a user runs it (``--json`` for the job's own figures)."""
    command = [sys.executable, "-m", "systemhealer.cli", "predict", str(source), "-o", str(output)]
    command += ["--no-progress", "--json", *extra]
    env = {
        **os.environ,
        "SYSTEMHEALER_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **(env_extra or {}),
    }
    wall, rss, tree, stdout = _run(command, env)
    summary = json.loads(stdout[stdout.index("{") :])
    return {"wall": wall, "rss_mb": rss, "tree_pss_mb": tree, "summary": summary}


def compare(output: Path, reference: pd.DataFrame) -> dict[str, Any]:
    """Rows and values of an output against the one-shot reference."""
    result = pd.read_csv(output) if output.suffix == ".csv" else pd.read_parquet(output)
    probabilities = [c for c in result.columns if c.startswith("proba_")]
    same_shape = result.shape == reference.shape and list(result.columns) == list(reference.columns)
    diff = np.abs(result[probabilities].to_numpy() - reference[probabilities].to_numpy())
    return {
        "rows": len(result),
        "same_ids_in_order": bool(
            same_shape and (result["sample_id"] == reference["sample_id"]).all()
        ),
        "same_labels": int((result["predicted_label"] == reference["predicted_label"]).sum()),
        "identical_rows": int((result == reference).all(axis=1).sum()),
        "max_abs_probability_diff": float(diff.max()),
    }


def one_shot_reference(path: Path, home: Path) -> pd.DataFrame:
    """The one-shot path's diagnoses: the whole file read by pandas and diagnosed in one call
    (its GX validation changes no value and is left out: on 400k rows it alone takes minutes)."""
    os.environ["SYSTEMHEALER_HOME"] = str(home)
    from systemhealer import scoring
    from systemhealer.config import load_settings

    model = scoring.model_loader(load_settings())()
    return scoring.diagnose_frame(model.diagnoser, pd.read_csv(path))


def run(home: Path | None, results_dir: Path) -> dict[str, Any]:
    """Build the files, run every measurement, keep the figures in ``results_dir/batch.json``."""
    figures: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pandas": pd.__version__,
            "pyarrow": pa.__version__,
            "load_average_start": os.getloadavg()[0],
        }
    }
    folder = Path(tempfile.mkdtemp(prefix="systemhealer-bench-batch-"))
    try:
        with state_folder(home) as state:
            log(f"building {ROWS:,} incidents in {folder}")
            files = build_incidents(folder)
            figures["file_mb"] = {k: round(p.stat().st_size / 2**20) for k, p in files.items()}
            reads = []
            runs: dict[str, Any] = {}
            # Interleaved, so that a busy moment of a shared machine hits both sides.
            for attempt in range(2):
                log(f"pandas.read_csv, 400k rows ({attempt + 1}/2)")
                reads.append(pandas_read(files["csv_400k"]))
                log(f"predict, CSV 400k rows ({attempt + 1}/2)")
                runs[f"csv_400k_{attempt}"] = predict(
                    files["csv_400k"], folder / f"out_400k_{attempt}.csv", state
                )
            log("predict without the GX sample check, CSV 400k rows")
            runs["csv_400k_no_gx"] = predict(
                files["csv_400k"],
                folder / "out_400k_no_gx.csv",
                state,
                env_extra={"SYSTEMHEALER_SCORING__GX_SAMPLE_ROWS": "0"},
            )
            log("predict, CSV 100k rows")
            runs["csv_100k"] = predict(files["csv_100k"], folder / "out_100k.csv", state)
            log("predict, Parquet 400k rows")
            runs["parquet_400k"] = predict(files["parquet_400k"], folder / "out_parquet.csv", state)
            log("predict --dask local (2 workers), CSV 400k rows")
            runs["dask_400k"] = predict(
                files["csv_400k"], folder / "out_dask.csv", state, "--dask", "local"
            )
            log("the one-shot reference (pandas + one diagnose call over the whole file)")
            reference = one_shot_reference(files["csv_400k"], state)
            figures["equality"] = {
                "predict_csv": compare(folder / "out_400k_0.csv", reference),
                "predict_parquet": compare(folder / "out_parquet.csv", reference),
                "predict_dask": compare(folder / "out_dask.csv", reference),
            }
            figures["model"] = runs["csv_400k_0"]["summary"]["model"]
        figures["pandas_read_csv"] = reads
        figures["predict"] = runs
        figures["machine"]["load_average_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "batch.json").write_text(json.dumps(figures, indent=2))
    (results_dir / "batch.md").write_text(table(figures) + "\n")
    return figures


def table(figures: dict[str, Any]) -> str:
    """The batch table (Markdown)."""
    read = min(figures["pandas_read_csv"], key=lambda r: r["seconds"])
    read_rate = read["rows"] / read["seconds"]
    runs = figures["predict"]
    best_400k = min((runs["csv_400k_0"], runs["csv_400k_1"]), key=lambda r: r["wall"])

    def row(label: str, source: str, figure: dict[str, Any]) -> str:
        summary = figure["summary"]
        rows = summary["rows"] + summary["bad_rows"]
        end_to_end = rows / figure["wall"]
        job = rows / summary["seconds"]
        return (
            f"| {label} | {source} | {rows:,} | {figure['wall']:.1f} | {end_to_end:,.0f} | "
            f"{end_to_end / read_rate:.2f} | {summary['seconds']:.1f} | {job:,.0f} | "
            f"{job / read_rate:.2f} | {figure['rss_mb']:,} | {figure['tree_pss_mb']:,} |"
        )

    lines = [
        "| run | input | rows | wall s | rows/s | × read_csv | job s | job rows/s | × read_csv "
        "| peak RSS MB | peak PSS, all processes MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| pandas.read_csv (parse only) | CSV 400k | {read['rows']:,} | {read['seconds']:.1f} | "
        f"{read_rate:,.0f} | 1.00 | | | | {read['rss_mb']:,} | |",
        row("predict", "CSV 400k", best_400k),
        row("predict, GX sample off", "CSV 400k", runs["csv_400k_no_gx"]),
        row("predict", "CSV 100k", runs["csv_100k"]),
        row("predict", "Parquet 400k", runs["parquet_400k"]),
        row("predict --dask local (2 workers)", "CSV 400k", runs["dask_400k"]),
    ]
    stages = best_400k["summary"].get("stage_seconds") or {}
    equality = figures["equality"]
    machine = figures["machine"]
    notes = [
        "",
        f"File sizes (MB): {figures['file_mb']}. Model: {figures.get('model', '?')}. "
        f"pandas.read_csv: best of {len(figures['pandas_read_csv'])} runs, interleaved with "
        "the predict runs (predict: the faster of 2). Wall = the command end to end (interpreter "
        "start-up and imports included); job = from opening the file to the renamed output "
        "(model loading from MLflow and the GX contract on the first rows included). Peak RSS: "
        "the largest process; peak PSS: the sum over the command's process tree, shared pages "
        "split between processes (the GX check runs in a child process; for Dask, the workers "
        "count too). "
        f"pandas.read_csv end to end (interpreter and import included): {read['wall']:.1f} s.",
        f"Stages of the 400k CSV job (s): {stages} (the parser thread's time overlaps the rest).",
    ]
    for name, figure in equality.items():
        notes.append(
            f"{name} vs the one-shot path: {figure['rows']:,} rows, ids in order: "
            f"{figure['same_ids_in_order']}, same labels {figure['same_labels']:,}, identical rows "
            f"{figure['identical_rows']:,}, max |Δp| {figure['max_abs_probability_diff']:.1e}."
        )
    notes.append(
        f"Machine: {machine['cpus']} CPUs, shared; load average {machine['load_average_start']:.1f} "
        f"at the start, {machine['load_average_end']:.1f} at the end."
    )
    return "\n".join(lines + notes)


if __name__ == "__main__":
    results = run(None, Path(__file__).resolve().parent / "results")
    print(table(results))
