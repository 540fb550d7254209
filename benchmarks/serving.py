"""Serving benchmark: in-process vs HTTP batch throughput, single-incident latency under load.

Runs the real service (``bentoml serve``) on a free port of 127.0.0.1 against the champion of
``SYSTEMHEALER_HOME`` (or ``--home``); without one, trains a small champion (default network,
few epochs, on 900 incidents) into a temporary state folder first. Everything is stopped and
removed at the end.
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
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.http_load import LoadResult, load, process_tree_cpu_seconds

REPO = Path(__file__).resolve().parents[1]
TRAIN_FILE = REPO / "data" / "fault_kpi_train.csv.gz"
INCIDENTS_FILE = REPO / "data" / "fault_kpi_unlabelled_2000.csv.gz"
BATCH_INCIDENTS = 1_000
CONCURRENCY = (1, 16, 64)
# Small enough for a shared 2-core machine, large enough for a stable p99.
SINGLE_REQUESTS = {1: 600, 16: 3_000, 64: 3_000}
BATCH_REQUESTS = 30
# The benchmark's own champion: the default network, trained briefly.
QUICK_TRAINING_ENV = {
    "SYSTEMHEALER_TRAINING__MAX_EPOCHS": "15",
    "SYSTEMHEALER_TRAINING__PATIENCE": "5",
    "SYSTEMHEALER_TRAINING__TORCH_THREADS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}


def log(message: str) -> None:
    print(f"[serving] {message}", file=sys.stderr, flush=True)


def train_small_champion(home: Path) -> None:
    """Train and register a champion into ``home`` through the real CLI (about a minute)."""
    sample = home / "benchmark_train.csv"
    frame = pd.read_csv(TRAIN_FILE)
    frame.groupby("label").sample(n=150, random_state=0).to_csv(sample, index=False)
    env = {**os.environ, **QUICK_TRAINING_ENV, "SYSTEMHEALER_HOME": str(home)}
    env.pop("SYSTEMHEALER_CONFIG", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "systemhealer.cli", "train", str(sample), "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training the benchmark's champion failed:\n{done.stderr[-3000:]}")


@contextmanager
def state_folder(home: Path | None) -> Iterator[Path]:
    """The given state folder (it must hold a champion), or a temporary one with a new champion."""
    if home is not None:
        yield home
        return
    folder = Path(tempfile.mkdtemp(prefix="systemhealer-bench-"))
    try:
        log(f"training a small champion into {folder} (about a minute)")
        train_small_champion(folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def running_service(home: Path, log_file: Path) -> Iterator[tuple[str, int, int]]:
    """The real service on a free port of 127.0.0.1; yields (host, port, pid); always stopped."""
    from systemhealer.config import load_settings
    from systemhealer.serve import free_port, start_service, stop_service, wait_ready

    os.environ["SYSTEMHEALER_HOME"] = str(home)
    settings = load_settings()
    host, port = "127.0.0.1", free_port()
    with log_file.open("wb") as sink:
        process = start_service(settings, host, port, log=sink)
        try:
            try:
                wait_ready(f"http://{host}:{port}", process, timeout=180)
            except Exception:
                log("the service did not start; its log ends with:")
                print(log_file.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
            yield host, port, process.pid
        finally:
            stop_service(process)


def incident_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON incidents (NaN → null)."""
    return json.loads(frame.to_json(orient="records"))


def in_process_rates(home: Path, frame: pd.DataFrame, repeats: int = 20) -> dict[str, float]:
    """Rows/s of the MLflow pyfunc and of the bare diagnoser, 1,000-row calls, 1 torch thread."""
    import mlflow
    import torch

    from systemhealer import tracking
    from systemhealer.config import load_settings
    from systemhealer.data import feature_matrix

    torch.set_num_threads(1)  # as the service runs it
    os.environ["SYSTEMHEALER_HOME"] = str(home)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings = load_settings()
    tracking.configure(settings)
    pyfunc = mlflow.pyfunc.load_model(tracking.alias_uri(settings))
    diagnoser, _ = tracking.load_diagnoser(settings)
    features = feature_matrix(frame).iloc[:BATCH_INCIDENTS]
    rates = {}
    for name, call in (
        ("pyfunc", lambda: pyfunc.predict(features)),
        ("diagnoser", lambda: diagnoser.diagnose(features)),
    ):
        call(), call()
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        rates[name] = repeats * len(features) / (time.perf_counter() - started)
    return rates


def _serving_stats(host: str, port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://{host}:{port}/model_info", timeout=10) as answer:
        return json.loads(answer.read())["serving"]


def measure_http(host: str, port: int, pid: int, frame: pd.DataFrame) -> dict[str, Any]:
    """Batch throughput and single-incident latency over HTTP, with server CPU per request."""
    records = incident_records(frame)
    batches = [
        json.dumps({"incidents": records[i : i + BATCH_INCIDENTS]}).encode()
        for i in range(0, len(records) - BATCH_INCIDENTS + 1, BATCH_INCIDENTS)
    ]
    singles = [json.dumps({"incident": r}).encode() for r in records[:500]]
    results: dict[str, Any] = {}

    load(host, port, "/predict_batch", batches, 1, 3)  # warm-up
    for concurrency in (1, 2):
        cpu = process_tree_cpu_seconds(pid)
        run = load(host, port, "/predict_batch", batches, concurrency, BATCH_REQUESTS)
        results[f"batch_c{concurrency}"] = _summary(run, process_tree_cpu_seconds(pid) - cpu)
        results[f"batch_c{concurrency}"]["rows_per_second"] = (
            run.requests_per_second * BATCH_INCIDENTS
        )
        log(f"batch c={concurrency}: {results[f'batch_c{concurrency}']}")

    load(host, port, "/predict", singles, 16, 300)  # warm-up
    for concurrency in CONCURRENCY:
        before, cpu = _serving_stats(host, port), process_tree_cpu_seconds(pid)
        run = load(host, port, "/predict", singles, concurrency, SINGLE_REQUESTS[concurrency])
        cpu = process_tree_cpu_seconds(pid) - cpu
        after = _serving_stats(host, port)
        summary = _summary(run, cpu)
        passes = after["passes"] - before["passes"]
        summary["incidents_per_pass"] = (after["requests"] - before["requests"]) / max(passes, 1)
        results[f"single_c{concurrency}"] = summary
        log(f"single c={concurrency}: {summary}")
    return results


def _summary(run: LoadResult, server_cpu_seconds: float) -> dict[str, Any]:
    return {
        "requests": run.requests,
        "errors": run.errors,
        "p50_ms": run.percentile(50),
        "p99_ms": run.percentile(99),
        "requests_per_second": run.requests_per_second,
        "server_cpu_ms_per_request": 1000 * server_cpu_seconds / max(run.requests, 1),
    }


def run(home: Path | None = None, results_dir: Path | None = None) -> dict[str, Any]:
    """Run the serving benchmark against ``home``'s champion (None: train one into a temporary
    folder); returns the figures, also written to ``results_dir``."""
    frame = pd.read_csv(INCIDENTS_FILE)
    with (
        tempfile.TemporaryDirectory(prefix="systemhealer-bench-logs-") as logs,
        state_folder(home) as state,
    ):
        rates = in_process_rates(state, frame)
        log(f"in-process: {rates}")
        with running_service(state, Path(logs) / "service.log") as (host, port, pid):
            http = measure_http(host, port, pid, frame)
    figures = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "in_process_rows_per_second": rates,
        **http,
    }
    figures["batch_ratio_to_pyfunc"] = figures["batch_c1"]["rows_per_second"] / rates["pyfunc"]
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / "serving.json").write_text(json.dumps(figures, indent=2))
        (results_dir / "serving.md").write_text(table(figures) + "\n")
    return figures


def table(figures: dict[str, Any]) -> str:
    """The serving table, as Markdown."""
    rates = figures["in_process_rows_per_second"]
    lines = [
        "| measure | value |",
        "|---|---|",
        f"| in-process pyfunc, 1,000-row calls | {rates['pyfunc']:,.0f} rows/s |",
        f"| in-process FaultDiagnoser, 1,000-row calls | {rates['diagnoser']:,.0f} rows/s |",
    ]
    for concurrency in (1, 2):
        batch = figures[f"batch_c{concurrency}"]
        ratio = batch["rows_per_second"] / rates["pyfunc"]
        lines.append(
            f"| HTTP /predict_batch, 1,000 incidents/request, {concurrency} in flight | "
            f"{batch['rows_per_second']:,.0f} rows/s = {ratio:.0%} of pyfunc "
            f"(p50 {batch['p50_ms']:.0f} ms, server CPU "
            f"{batch['server_cpu_ms_per_request']:.0f} ms/request, {batch['errors']} errors) |"
        )
    lines += [
        "",
        "| /predict, one incident | p50 ms | p99 ms | requests/s | errors | incidents/pass "
        "| server CPU ms/request |",
        "|---|---|---|---|---|---|---|",
    ]
    for concurrency in CONCURRENCY:
        single = figures[f"single_c{concurrency}"]
        lines.append(
            f"| concurrency {concurrency} ({single['requests']} requests) | "
            f"{single['p50_ms']:.1f} | {single['p99_ms']:.1f} | "
            f"{single['requests_per_second']:,.0f} | {single['errors']} | "
            f"{single['incidents_per_pass']:.1f} | {single['server_cpu_ms_per_request']:.2f} |"
        )
    machine = figures["machine"]
    lines.append(
        f"\n{machine['cpus']} CPUs, load average {machine['load_average_1m_at_end']:.1f} at the "
        "end (the load generator runs on the same cores)."
    )
    return "\n".join(lines)
