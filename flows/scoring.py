"""The batch-scoring flow: files (or globs) in, files of diagnoses out, one task per partition.

For scheduled scoring jobs. Each file is split into partitions (byte ranges of a CSV, row groups
of a Parquet file); each partition is one task (retried on unexpected failures, never on bad
data) that writes a part file; the parts of a file are merged in order into its output, which
appears atomically. The summary of every file (incidents, incidents/s, fault classes, bad rows)
is kept as a Markdown artifact of the flow run.

Tasks run on Prefect's thread pool, or on a Dask cluster through prefect-dask's DaskTaskRunner:
``run_batch_scoring(..., dask="local")`` (a local cluster of 2 worker processes) or
``dask="tcp://scheduler:8786"``. Workers need the input and output folders at the same paths
(a shared filesystem); the model is loaded once here and shipped to them.
"""

from __future__ import annotations

import glob
import logging
import pickle
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from systemhealer import scoring
from systemhealer.config import load_settings
from systemhealer.errors import DataValidationError, SystemHealerError
from systemhealer.streaming import Partition

LOCAL_CLUSTER = {"n_workers": 2, "threads_per_worker": 1, "processes": True}


def _retry_unless_bad_data(task: Any, task_run: Any, state: Any) -> bool:
    """Bad data stays bad: retry only unexpected failures (a lost worker, a full disk)."""
    try:
        state.result()
    except SystemHealerError:
        return False
    except Exception:
        return True
    return True


@task(
    name="score-partition",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_unless_bad_data,
    cache_policy=NO_CACHE,
)
def score_partition(
    partition: Partition,
    staging: str,
    job: bytes,
    on_bad_rows: str,
    chunk_rows: int | None,
    threads: int,
) -> scoring.PartResult:
    """Score one partition of one file into a part file.

    ``job`` is the pickled (model, settings) pair: opaque bytes, so that neither Prefect nor
    Dask walks through the model's fields on the way to a worker.
    """
    model, settings = pickle.loads(job)
    if threads == 1:
        import torch

        torch.set_num_threads(1)  # one core per Dask worker thread
    return scoring.score_partition(
        partition, staging, model, settings, on_bad_rows, chunk_rows, threads=threads
    )


def expand_inputs(inputs: list[str] | str) -> list[Path]:
    """Files named, or matched by glob patterns, in order and without repeats."""
    patterns = [inputs] if isinstance(inputs, str) else list(inputs)
    found: list[Path] = []
    for pattern in patterns:
        matches = (
            sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        )
        if not matches:
            raise DataValidationError(f"no file matches {pattern}")
        found += [Path(m) for m in matches if Path(m) not in found]
    return found


def output_paths(
    files: list[Path], outputs: list[str] | None, output_dir: str | None, output_format: str
) -> list[Path]:
    """The given outputs, or ``output_dir/<name>.diagnoses.<format>`` per file."""
    if outputs is not None:
        if len(outputs) != len(files):
            raise DataValidationError(f"{len(files)} input files but {len(outputs)} outputs")
        return [Path(o) for o in outputs]
    if output_dir is None:
        raise DataValidationError("give the outputs or an output folder")
    if output_format not in ("csv", "parquet"):
        raise DataValidationError("the output format must be csv or parquet")
    stems = [f.name.split(".")[0] for f in files]
    if len(set(stems)) != len(stems):
        raise DataValidationError("input files share a name; give the outputs one by one")
    return [Path(output_dir) / f"{stem}.diagnoses.{output_format}" for stem in stems]


def summary_markdown(summaries: list[scoring.ScoringSummary], failures: dict[str, str]) -> str:
    """The flow run's summary: one row per file, then the failures."""
    lines = [
        "# Batch scoring",
        "",
        "| input | output | incidents | bad rows | partitions | seconds | incidents/s | fault classes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in summaries:
        classes = ", ".join(f"{c}: {n}" for c, n in s.class_counts.items())
        bad = f"{s.bad_rows} → `{Path(s.bad_rows_file).name}`" if s.bad_rows_file else "0"
        lines.append(
            f"| `{s.source}` | `{s.output}` | {s.rows} | {bad} | {s.partitions} | "
            f"{s.seconds:.1f} | {s.rows_per_second:,.0f} | {classes} |"
        )
    total = sum(s.rows for s in summaries)
    lines += ["", f"{len(summaries)} file(s), {total} incidents diagnosed."]
    if summaries:
        lines.append(
            f"Model: {summaries[0].model}; deployment statistics: {summaries[0].deployment}."
        )
    if failures:
        lines += ["", "## Failed", ""] + [f"- `{f}`: {why}" for f, why in failures.items()]
    return "\n".join(lines)


@flow(name="batch-scoring", log_prints=True)
def batch_scoring_flow(
    inputs: list[str] | str,
    output_dir: str | None = None,
    outputs: list[str] | None = None,
    output_format: str = "csv",
    model_uri: str | None = None,
    deployment: str | None = None,
    on_bad_rows: str = "fail",
    chunk_rows: int | None = None,
    partitions: int = 1,
    threads: int = scoring.DEFAULT_THREADS,
    config_file: str | None = None,
    show_progress: bool = False,
) -> list[scoring.ScoringSummary]:
    """Score every file of ``inputs`` into ``outputs`` (or ``output_dir``) with the champion.

    A file whose partitions all succeed gets its output; a file with bad rows (``fail``) or a
    failed partition gets none, and the flow run fails after the others are done.
    """
    from tqdm.auto import tqdm

    settings = load_settings(config_file)
    files = expand_inputs(inputs)
    targets = output_paths(files, outputs, output_dir, output_format)
    for source, target in zip(files, targets, strict=True):
        scoring.check_job(source, target, on_bad_rows)
    model = scoring.model_loader(settings, model_uri, deployment)()
    job = pickle.dumps((model, settings))
    started = time.perf_counter()
    run = uuid.uuid4().hex[:8]
    staging = {f: t.parent / f".{t.name}.parts-{run}" for f, t in zip(files, targets, strict=True)}
    futures: dict[Any, Path] = {}
    try:
        for source in files:
            staging[source].mkdir(parents=True, exist_ok=True)
            for partition in scoring.plan_partitions(source, partitions):
                future = score_partition.submit(
                    partition,
                    str(staging[source]),
                    job,
                    on_bad_rows,
                    chunk_rows,
                    threads,
                )
                futures[future] = source
        parts: dict[Path, list[scoring.PartResult]] = {f: [] for f in files}
        failures: dict[str, str] = {}
        errors: list[BaseException] = []
        bar = tqdm(
            total=len(futures), unit=" partitions", desc="scoring", disable=not show_progress
        )
        rows = 0
        for future in as_completed(list(futures)):
            source = futures[future]
            try:
                part = future.result()
            except Exception as exc:
                failures.setdefault(str(source), str(exc))
                errors.append(exc)
            else:
                parts[source].append(part)
                rows += part.rows_seen
            bar.update(1)
            bar.set_postfix_str(
                f"{rows:,} incidents, {rows / (time.perf_counter() - started):,.0f}/s"
            )
        bar.close()
        summaries = []
        for source, target in zip(files, targets, strict=True):
            if str(source) in failures:
                continue
            try:
                summary = scoring.merge_partitions(
                    source, target, parts[source], model, on_bad_rows,
                    time.perf_counter() - started,
                )  # fmt: skip
            except SystemHealerError as exc:  # e.g. every row bad: this file fails, not the rest
                failures[str(source)] = str(exc)
                errors.append(exc)
                continue
            summaries.append(summary)
            print(scoring.summary_text(summary))
    finally:
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)
    create_markdown_artifact(
        markdown=summary_markdown(summaries, failures),
        key="batch-scoring-summary",
        description=f"{len(summaries)} file(s) scored, {len(failures)} failed",
    )
    if errors:
        raise errors[0]
    return summaries


def task_runner(dask: str) -> Any:
    """prefect-dask's runner: ``local`` = a LocalCluster of 2 worker processes, else the
    address of a running scheduler."""
    from prefect_dask import DaskTaskRunner

    # The scheduler and nannies of a local cluster log every start and stop at INFO.
    logging.getLogger("distributed").setLevel(logging.ERROR)
    if dask == "local":
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                **LOCAL_CLUSTER,
                "host": "127.0.0.1",
                "dashboard_address": None,
                "silence_logs": logging.ERROR,
            },
        )
    return DaskTaskRunner(address=dask)


def run_batch_scoring(
    inputs: list[str] | str,
    outputs: list[str] | None = None,
    output_dir: str | None = None,
    dask: str | None = None,
    partitions: int | None = None,
    config_file: str | None = None,
    **options: Any,
) -> list[scoring.ScoringSummary]:
    """Run the flow here (threads) or with its partitions on a Dask cluster."""
    settings = load_settings(config_file)
    if dask:
        runner_flow = batch_scoring_flow.with_options(task_runner=task_runner(dask))
        return runner_flow(
            inputs,
            output_dir=output_dir,
            outputs=outputs,
            partitions=partitions or settings.scoring.partitions,
            threads=1,
            config_file=config_file,
            **options,
        )
    return batch_scoring_flow(
        inputs,
        output_dir=output_dir,
        outputs=outputs,
        partitions=partitions or 1,
        config_file=config_file,
        **options,
    )
