"""The ``systemhealer`` command line: thin commands over the library."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from systemhealer.config import Settings, load_settings
from systemhealer.errors import DataValidationError, ModelNotFoundError, SystemHealerError

if TYPE_CHECKING:
    import pandas as pd

    from systemhealer.features import DeploymentStats

app = typer.Typer(
    name="systemhealer",
    help="Fault diagnosis for distributed systems: validate, train, register, predict, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="YAML config file.", exists=False)
]
ProgressOption = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Show a progress bar (default: when standard error is a terminal).",
        show_default=False,
    ),
]


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


def _show_progress(progress: bool | None) -> bool:
    """A bar redrawn with carriage returns only belongs on a terminal, not in logs."""
    return sys.stderr.isatty() if progress is None else progress


def _echo_json(payload: object) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


def _deployment_name(name: str | None, hint: str, training_allowed: bool = True) -> str | None:
    """A deployment name checked as a usage error (exit 2); ``training`` names the training
    data's statistics where they can be used."""
    from systemhealer.deployments import check_name
    from systemhealer.features import TRAINING_DEPLOYMENT

    if name is None or (training_allowed and name == TRAINING_DEPLOYMENT):
        return name
    try:
        return check_name(name)
    except SystemHealerError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from exc


def _echo_warnings(messages: Sequence[str]) -> None:
    for message in messages:
        typer.echo(f"warning: {message}", err=True)


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="CSV or Parquet file of incidents.")],
    training: Annotated[
        bool | None,
        typer.Option(
            "--training/--incidents",
            help="Validate as labelled training data (default: if it has a label column).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Check a file against the data contract; drift against the champion's training profile."""
    from systemhealer import validation
    from systemhealer.data import LABEL, read_incidents

    settings = _settings(config)
    profile = _champion_profile(settings)
    try:
        raw = read_incidents(path)
    except SystemHealerError as exc:
        report = validation.ValidationReport(source=str(path), rows=0, columns=0, checks_run=1)
        report.issues.append(validation.ValidationIssue("readable", str(exc), True))
    else:
        require_label = training if training is not None else LABEL in map(str, raw.columns)
        report, _ = validation.validate_frame(raw, str(path), settings.data, require_label, profile)
    typer.echo(report.to_json() if as_json else report.to_text())
    raise typer.Exit(0 if report.ok else 1)


def _champion_profile(settings: Settings):  # type: ignore[no-untyped-def]
    """The champion's training profile for drift warnings, if there is a champion."""
    from systemhealer import tracking

    try:
        if tracking.champion(settings) is None:
            return None
        diagnoser, _ = tracking.load_diagnoser(settings)
    except SystemHealerError:
        return None
    return diagnoser.profile


@app.command()
def train(
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="Labelled CSV or Parquet file of incidents.")
    ],
    config: ConfigOption = None,
    progress: ProgressOption = None,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="Train on N processes (DistributedDataParallel, gloo, CPU) through torchrun.",
        ),
    ] = 1,
) -> None:
    """Validate, train, evaluate, register; the gate decides whether it becomes champion."""
    from systemhealer.orchestration import prepare_prefect, quiet_prefect_console

    settings = _settings(config)
    progress = _show_progress(progress)
    if nproc > 1:
        from systemhealer.distributed import launch

        outcome = launch(path, config, nproc, show_progress=progress)
    else:
        prepare_prefect(settings)
        from flows.training import training_flow

        quiet_prefect_console()
        outcome = training_flow(str(path), str(config) if config else None, show_progress=progress)
    verdict = "promoted to champion" if outcome["promoted"] else "registered, NOT promoted"
    typer.echo(
        f"model version {outcome['model_version']} {verdict}: {outcome['gate_reason']}\n"
        f"evaluation macro-F1 {outcome['eval_macro_f1']:.4f} "
        f"({outcome['eval_balanced_macro_f1']:.4f} class-balanced), "
        f"accuracy {outcome['eval_accuracy']:.4f}; "
        f"simulated other deployments: macro-F1 {outcome['shift_macro_f1']:.4f} calibrated, "
        f"{outcome['shift_uncalibrated_macro_f1']:.4f} uncalibrated, "
        f"{outcome['shift_skewed_macro_f1']:.4f} calibrated with a skewed class mix, "
        f"{outcome['shift_swapped_macro_f1']:.4f} calibrated with values swapped within class, "
        f"{outcome['shift_noisy_macro_f1']:.4f} with a clean and a noisy half calibrating each "
        f"other (shift score {outcome['shift_score']:.4f})\n"
        f"{outcome['epochs']} epochs in {outcome['train_seconds']} s; MLflow run {outcome['run_id']}"
    )


@app.command()
def predict(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="CSV or Parquet file of incidents.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Where to write the diagnoses (.csv, .csv.gz, .parquet or .pq)."
        ),
    ],
    model_uri: Annotated[
        str | None, typer.Option("--model-uri", help="MLflow model URI (default: the champion).")
    ] = None,
    deployment: Annotated[
        str | None,
        typer.Option(
            "--deployment",
            help="Calibrated deployment the incidents come from (default: the training data's).",
        ),
    ] = None,
    on_bad_rows: Annotated[
        Literal["fail", "skip"],
        typer.Option(
            "--on-bad-rows",
            help="fail: stop at the first bad row, write nothing; skip: score the other rows "
            "and list the bad ones with the reason in OUTPUT's .bad-rows.csv side file.",
        ),
    ] = "fail",
    chunk_rows: Annotated[
        int | None,
        typer.Option("--chunk-rows", min=1, help="Rows per chunk (default: scoring.chunk_rows)."),
    ] = None,
    dask: Annotated[
        str | None,
        typer.Option(
            "--dask",
            help="Score partitions of the file on a Dask cluster: a scheduler address "
            "(tcp://host:8786), or 'local' for a local cluster of 2 workers.",
        ),
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option(
            "--partitions", min=1, help="Partitions with --dask (default: scoring.partitions)."
        ),
    ] = None,
    progress: ProgressOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the job's summary (with stage timings) as JSON.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Diagnose every incident of a file, chunk by chunk, with the champion (or --model-uri)."""
    from systemhealer import scoring

    settings = _settings(config)
    progress = _show_progress(progress)
    _deployment_name(deployment, "--deployment")
    scoring.check_job(path, output, on_bad_rows)
    replacing = output.exists()  # replaced only once the job succeeded (renamed into place)
    if dask:
        from systemhealer.orchestration import prepare_prefect, quiet_prefect_console

        warning = scoring.partition_warning(path, partitions or settings.scoring.partitions)
        if warning:
            _echo_warnings([warning])
        prepare_prefect(settings)
        # Dask workers started here log their failed tasks to their own console: the error
        # is reported once, below (their logs still reach the Prefect API).
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        from flows.scoring import run_batch_scoring

        quiet_prefect_console()

        (summary,) = run_batch_scoring(
            [str(path)],
            outputs=[str(output)],
            model_uri=model_uri,
            deployment=deployment,
            on_bad_rows=on_bad_rows,
            chunk_rows=chunk_rows,
            partitions=partitions,
            dask=dask,
            config_file=str(config) if config else None,
            show_progress=progress,
        )
    else:
        loader = scoring.model_loader(settings, model_uri, deployment)
        summary = scoring.stream_file(
            path,
            output,
            loader,
            settings,
            on_bad_rows,
            chunk_rows,
            progress=progress,
            contract_in_child=True,  # a one-off process: GX is imported beside the job
        )
    if as_json:
        _echo_json({**summary.to_dict(), "replaced_output": replacing})
        return
    typer.echo(scoring.summary_text(summary))
    if replacing:
        typer.echo(f"note: {output} existed; the earlier diagnoses in it are replaced")
    from systemhealer.data import has_label_column

    if has_label_column(path):
        where = f" --deployment {deployment}" if deployment else ""
        typer.echo(
            f"the file has a label column (not used to diagnose); to score the diagnoses "
            f"against it: systemhealer evaluate {path}{where}"
        )


@app.command()
def crossval(
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="Labelled CSV or Parquet file of incidents.")
    ],
    folds: Annotated[int, typer.Option(min=2, max=20, help="Number of folds.")] = 5,
    config: ConfigOption = None,
) -> None:
    """Duplicate-aware cross-validation of the configured model (nothing is registered)."""
    from systemhealer import crossval as cv
    from systemhealer import validation

    settings = _settings(config)
    report, frame = validation.validate_file(path, settings.data, require_label=True)
    validation.require_valid(report)

    def show(fold: cv.FoldScores) -> None:
        typer.echo(
            f"fold {fold.fold}: eval macro-F1 {fold.eval_macro_f1:.4f} "
            f"({fold.eval_balanced_macro_f1:.4f} class-balanced), shift {fold.shift_macro_f1:.4f} "
            f"(uncalibrated {fold.shift_uncalibrated_macro_f1:.4f}, skewed mix "
            f"{fold.shift_skewed_macro_f1:.4f}, swapped values {fold.shift_swapped_macro_f1:.4f}, "
            f"clean and noisy halves {fold.shift_noisy_macro_f1:.4f}), {fold.train_seconds:.0f} s"
        )

    typer.echo(cv.summary_table(cv.cross_validate(frame, settings, folds, on_fold=show)))


@app.command()
def sweep(
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="Labelled CSV or Parquet file of incidents.")
    ],
    candidates: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated candidate names (default: all; an unknown name is refused with the list)."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Train candidate configurations (and a GBT baseline), register the best MLP behind the gate."""
    from systemhealer.orchestration import prepare_prefect, quiet_prefect_console

    settings = _settings(config)
    prepare_prefect(settings)
    from flows.sweep import sweep_flow

    quiet_prefect_console()
    names = [c.strip() for c in candidates.split(",")] if candidates else None
    outcome = sweep_flow(str(path), str(config) if config else None, names)
    verdict = "promoted to champion" if outcome["promoted"] else "registered, NOT promoted"
    typer.echo(outcome["table"])
    typer.echo(
        f"best: {outcome['best']} → version {outcome['model_version']} {verdict}: {outcome['gate_reason']}"
    )


@app.command()
def calibrate(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Deployment name (letters, digits, _ . -).")
    ],
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH",
            help="Unlabelled incidents of that deployment (a label column is ignored).",
        ),
    ],
    config: ConfigOption = None,
) -> None:
    """Register or replace deployment NAME from a reference window of its incidents."""
    from systemhealer import deployments, tracking, validation

    settings = _settings(config)
    _deployment_name(name, "NAME", training_allowed=False)
    report, incidents = validation.validate_file(
        path, settings.data, require_label=False, drop_labels=True
    )  # never sees labels
    validation.require_valid(report)
    warnings = [issue.message for issue in report.warnings]
    try:
        diagnoser, version = tracking.load_diagnoser(settings)
    except ModelNotFoundError:
        diagnoser = version = None
    if diagnoser is not None:  # refuse a window the champion cannot calibrate on, before storing
        warnings += deployments.reference_warnings(settings, diagnoser, incidents)
    previous = deployments.find_deployment(settings, name)
    info = deployments.register_deployment(settings, name, incidents, str(path))
    _echo_warnings(warnings)
    typer.echo(f"deployment '{info.name}' calibrated from {info.rows} incidents of {info.source}")
    if previous is not None:
        typer.echo(
            f"it replaces the window of {previous.rows} incidents of {previous.source} "
            f"calibrated {previous.calibrated_at}"
        )
    if diagnoser is None:
        typer.echo("no champion yet: the class-mix estimate is shown once a model is trained")
        return
    reference = deployments.load_reference(settings, name)
    stats = deployments.measure(settings, diagnoser, name, reference)
    mix = deployments.estimate_deployment_mix(diagnoser, reference, stats)
    method = "model response" if stats.reference_mix is not None else "EM"
    read = (
        "statistics read at this mix"
        if stats.reference_mix is not None
        else "statistics read as they are (calibration.read_class_mix off, an older model, or "
        "too few incidents with values)"
    )

    def shares(values: Sequence[float]) -> str:
        names = settings.serving.class_names
        return ", ".join(f"{c}: {s:.1%}" for c, s in zip(names, values, strict=True))

    applied = (
        f"probabilities re-weighted towards {shares(stats.class_mix)}"
        if stats.class_mix is not None
        else "probabilities not re-weighted (calibration.label_shift_correction)"
    )
    typer.echo(
        f"estimated class mix (champion v{version.version if version else '?'}, {method}): "
        f"{shares(mix)}; {read}; {applied}"
    )


@app.command()
def evaluate(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH", help="Labelled incidents of one deployment (CSV or Parquet)."
        ),
    ],
    deployment: Annotated[
        str | None,
        typer.Option(
            "--deployment",
            help="Score with this calibrated deployment, or 'training' for the training data's "
            "statistics (default: the file's random halves calibrate each other).",
        ),
    ] = None,
    model_uri: Annotated[
        str | None, typer.Option("--model-uri", help="MLflow model URI (default: the champion).")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(min=0, help="Seed of the random split into halves \\[default: 0]."),
    ] = None,
    halves: Annotated[
        str | None,
        typer.Option(
            help="How the file is split when its halves calibrate each other: 'random' "
            "(default), or 'ordered' (its first and second half as they are in the file — a "
            "file whose later incidents differ from its earlier ones scores lower so).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Also write each incident's label and diagnoses, calibrated and not "
            "(.csv, .csv.gz, .parquet or .pq).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Score the model on labelled incidents of another deployment, calibrated and not."""
    from systemhealer import assessment, deployments, tracking, validation
    from systemhealer.data import KPI_FEATURES, LABEL, SAMPLE_ID
    from systemhealer.features import TRAINING_DEPLOYMENT
    from systemhealer.scoring import atomic_write, check_output

    settings = _settings(config)
    if halves not in (None, "random", "ordered"):
        raise typer.BadParameter("use 'random' or 'ordered'", param_hint="--halves")
    if halves == "ordered" and seed is not None:
        raise typer.BadParameter("ordered halves are not drawn at random", param_hint="--seed")
    if deployment is not None and (halves is not None or seed is not None):
        raise typer.BadParameter(
            "with --deployment the whole file is scored with that deployment's statistics: "
            "there are no halves",
            param_hint="--halves/--seed",
        )
    if _deployment_name(deployment, "--deployment") not in (None, TRAINING_DEPLOYMENT):
        deployments.load_reference(settings, deployment)  # type: ignore[arg-type]  # exists?
    if output is not None:
        check_output(path, output)
    # Halves need enough incidents to calibrate each other; a calibrated deployment scores any.
    contract = (
        settings.data
        if deployment is None
        else settings.data.model_copy(update={"min_training_rows": 2, "min_fault_classes": 1})
    )
    report, frame = validation.validate_file(path, contract, require_label=True)
    validation.require_valid(report)
    _echo_warnings([issue.message for issue in report.warnings])
    diagnoser, version = tracking.load_diagnoser(settings, model_uri)
    features = frame[list(KPI_FEATURES)].reset_index(drop=True)
    labels = frame[LABEL].to_numpy(dtype="int64")
    if deployment is None:
        window_warnings: list[str] = []

        def calibrate_half(window: pd.DataFrame) -> DeploymentStats:
            # Each half is checked as `calibrate` checks a window, for the model scored.
            try:
                found = deployments.reference_warnings(settings, diagnoser, window)
            except DataValidationError as exc:
                raise DataValidationError(
                    f"{path}: a half cannot calibrate the other: {exc}"
                ) from exc
            window_warnings.extend(w for w in found if w not in window_warnings)
            return deployments.measure(settings, diagnoser, "halves", window)

        result = assessment.assess_with_halves(
            diagnoser, features, labels, calibrate_half, seed or 0, ordered=halves == "ordered"
        )
        _echo_warnings([f"as a reference window, a half of the file: {w}" for w in window_warnings])
    else:
        stats = deployments.deployment_stats(settings, diagnoser, deployment)
        result = assessment.assess_with_deployment(diagnoser, features, labels, deployment, stats)
    model = f"version {version.version}" if version else str(model_uri)
    if output is not None:
        ids = frame[SAMPLE_ID].reset_index(drop=True) if SAMPLE_ID in frame.columns else None
        table = assessment.incident_table(result, labels, ids)
        atomic_write(table, output)
    run_id = assessment.log_assessment(settings, result, str(path), model)
    if as_json:
        _echo_json({**result.to_dict(), "model": model, "mlflow_run_id": run_id})
        return
    typer.echo(f"model {model}")
    for line in assessment.summary_lines(result, settings.serving.class_names):
        typer.echo(line)
    typer.echo(f"MLflow run {run_id} ({tracking.monitoring_experiment(settings)})")


@app.command(name="deployments")
def list_deployments_command(
    remove: Annotated[
        str | None,
        typer.Option(
            "--remove",
            metavar="NAME",
            help="Forget deployment NAME (its reference window) instead of listing.",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """List calibrated deployments, or remove one."""
    from systemhealer import deployments

    settings = _settings(config)
    if remove is not None:
        _deployment_name(remove, "--remove", training_allowed=False)
        info = deployments.remove_deployment(settings, remove)
        typer.echo(
            f"deployment '{info.name}' removed ({info.rows} reference incidents from "
            f"{info.source}, calibrated {info.calibrated_at}); its incidents are refused until "
            f"`systemhealer calibrate {info.name} FILE` registers it again"
        )
        return
    found = deployments.list_deployments(settings)
    if not found:
        typer.echo("no deployments calibrated yet; use `systemhealer calibrate NAME FILE`")
    for info in found:
        typer.echo(
            f"{info.name}: {info.rows} reference incidents from {info.source}, calibrated {info.calibrated_at}"
        )


@app.command()
def promote(
    version: Annotated[
        str, typer.Argument(metavar="VERSION", help="Registered model version to make champion.")
    ],
    config: ConfigOption = None,
) -> None:
    """Move the champion alias to VERSION by hand."""
    from systemhealer import tracking

    settings = _settings(config)
    version = tracking.set_champion(settings, version)
    typer.echo(f"version {version} is now {settings.model_uri}")


@app.command()
def rollback(config: ConfigOption = None) -> None:
    """Move the champion alias back to the previous champion."""
    from systemhealer import tracking

    settings = _settings(config)
    before, after = tracking.rollback_champion(settings)
    typer.echo(f"champion rolled back from version {before} to version {after}")


@app.command()
def models(
    config: ConfigOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the versions, tags and aliases as JSON.")
    ] = False,
) -> None:
    """List registered versions with their evaluation scores and gate decisions."""
    from systemhealer import tracking

    settings = _settings(config)
    versions = tracking.list_versions(settings)
    if as_json:
        _echo_json([v.to_dict() for v in versions])
        return
    if not versions:
        typer.echo(f"no versions of '{settings.registry.model_name}' registered yet")
    for v in versions:
        alias = " (champion)" if settings.registry.champion_alias in v.aliases else ""
        typer.echo(
            f"v{v.version}{alias}: eval macro-F1 {v.tags.get('eval_macro_f1', '?')}, "
            f"gate {v.tags.get('gate', '?')} — {v.tags.get('gate_reason', '')}"
        )


@app.command()
def info(config: ConfigOption = None) -> None:
    """Where the state, the MLflow store and the champion are."""
    from systemhealer import tracking

    settings = _settings(config)
    current = tracking.champion(settings)
    _echo_json(
        {
            "home": str(settings.home),
            "mlflow_tracking_uri": settings.tracking_uri,
            "prefect_api_url": settings.prefect_api_url or "(temporary local server)",
            "model": settings.model_uri,
            "champion_version": current.version if current else None,
        }
    )


@app.command()
def serve(
    port: Annotated[
        int | None,
        typer.Option("--port", min=1, max=65535, help="Port (default: serving.port, 3000)."),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Address to bind (default: serving.host, 127.0.0.1)."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the champion over HTTP (BentoML) until Ctrl-C; takes up new champions live."""
    from systemhealer import tracking
    from systemhealer.serve import check_port, run_service

    settings = _settings(config)
    host, port = host or settings.serving.host, port or settings.serving.port
    check_port(host, port)
    url = f"http://{host}:{port}"
    if tracking.champion(settings) is None:
        typer.echo(
            "note: no champion yet; the service starts but is not ready until "
            "`systemhealer train FILE` registers one (it is taken up without a restart)"
        )
    typer.echo(
        f"serving {settings.model_uri} on {url}: POST /predict, /predict_batch, /predict_csv; "
        f"GET /model_info, /readyz; API docs {url}/docs (Ctrl-C to stop)"
    )
    raise typer.Exit(run_service(settings, host, port, config))


@app.command()
def bento(
    version: Annotated[
        str | None, typer.Option("--version", help="Registered version (default: the champion).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Package the service with the champion inside as a Bento (offline `bentoml build`)."""
    from systemhealer.bundle import build_bento

    settings = _settings(config)
    tag, model = build_bento(settings, version)
    # bentofile.yaml's envs reach only the container: here, name the packed model (not
    # ":latest", which a later build moves) or the service would serve the registry's champion.
    typer.echo(
        f"built Bento {tag} with model {model} (store: {settings.home / 'bentoml'}); serve it "
        f"with `BENTOML_HOME={settings.home / 'bentoml'} SYSTEMHEALER_SERVING__BUNDLED_MODEL="
        f"{model} bentoml serve {tag}`, or, where Docker runs, `bentoml containerize {tag}` "
        f"then `docker run --rm -p 3000:3000 {tag}`"
    )


@app.command()
def schedule(config: ConfigOption = None) -> None:
    """Serve scheduled retraining (inbox → merge → train → gate) and drift checks with Prefect.

    Starts a Prefect server on 127.0.0.1:schedule.prefect_port unless PREFECT_API_URL is set;
    runs until Ctrl-C or SIGTERM. Crons, folders and thresholds: the `schedule` config section.
    """
    from systemhealer.scheduler import run_scheduler

    settings = _settings(config)
    # The flow runs start in other processes: give them an absolute config path.
    run_scheduler(settings, str(config.resolve()) if config else None, echo=typer.echo)


@app.command()
def retrain(
    config: ConfigOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the flow's outcome (inbox, training) as JSON.")
    ] = False,
) -> None:
    """Run the retraining flow once, now: merge the inbox; train if the data changed."""
    from systemhealer.orchestration import prepare_prefect, quiet_prefect_console

    settings = _settings(config)
    prepare_prefect(settings)
    from flows.retraining import retraining_flow

    quiet_prefect_console()
    outcome = retraining_flow(str(config.resolve()) if config else None)
    files = outcome.get("inbox", {}).get("files", [])
    if as_json:
        _echo_json(outcome)
    else:
        for file in files:
            where = f" → {file['report']}" if file["status"] == "rejected" else ""
            typer.echo(f"{file['name']}: {file['status']} — {file['message']}{where}")
        training = outcome.get("training")
        if training:
            verdict = "promoted to champion" if training["promoted"] else "registered, NOT promoted"
            typer.echo(
                f"model version {training['model_version']} {verdict}: {training['gate_reason']}"
            )
        else:
            typer.echo(f"no training: {outcome['reason']}")
    # A refused file is bad input: the run did the rest, and the exit code says so (cron, CI).
    refused = [file["name"] for file in files if file["status"] == "rejected"]
    if refused:
        typer.echo(f"error: refused inbox file(s): {', '.join(refused)}", err=True)
        raise typer.Exit(1)


@app.command()
def drift(
    path: Annotated[
        Path | None,
        typer.Argument(metavar="PATH", help="File of incidents (default: the drift inbox)."),
    ] = None,
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help="Exit with code 1 if drift is found.")
    ] = False,
    config: ConfigOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the drift report as JSON.")
    ] = False,
    deployment: Annotated[
        str | None,
        typer.Option(
            help="Compare with this calibrated deployment's reference window instead of the "
            "champion's training data (incidents of another deployment always differ from those)."
        ),
    ] = None,
) -> None:
    """Check incidents for drift against the champion's training profile (or a deployment's
    reference window); keep the report."""
    from systemhealer import deployments
    from systemhealer.drift import DEPLOYMENT_NEEDS_FILE
    from systemhealer.orchestration import prepare_prefect, quiet_prefect_console

    settings = _settings(config)
    name = _deployment_name(deployment, "--deployment")
    if not deployments.is_calibrated(name):
        name = None
    if path is not None and not path.is_file():
        raise SystemHealerError(f"{path}: no such file")
    if name is not None and path is None:
        raise typer.BadParameter(DEPLOYMENT_NEEDS_FILE, param_hint="--deployment")
    if name is not None:
        deployments.load_reference(settings, name)  # exists? (before Prefect starts)
    prepare_prefect(settings)
    from flows.drift import drift_flow

    quiet_prefect_console()
    outcome = drift_flow(
        str(config.resolve()) if config else None, str(path.resolve()) if path else None, name
    )
    if outcome.get("reason") and (path is not None or fail_on_drift):
        # Files that could not be checked (no champion to compare with): not "no drift".
        raise ModelNotFoundError(f"nothing checked: {outcome['reason']}")
    if as_json:
        _echo_json(outcome)
    else:
        for checked in outcome["checked"]:
            typer.echo(f"{checked['headline']}\nreport: {checked['report_id']}")
        if not outcome["checked"]:
            typer.echo(f"nothing checked ({outcome.get('reason', 'the drift inbox is empty')})")
    refused = [c for c in outcome["checked"] if c["input_refused"]]
    if path is not None and refused:
        # A file that cannot be read or breaks the data contract is bad input, not "no drift".
        raise DataValidationError(f"{path}: {refused[0]['summary']['reason']}")
    drifted = any(c["summary"].get("drift_detected") for c in outcome["checked"])
    raise typer.Exit(1 if fail_on_drift and drifted else 0)


class _Terminated(SystemExit):
    """SIGTERM arrived (systemd, ``docker stop``, Prefect cancelling)."""


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C: partial outputs, locks, MLflow runs and child processes
    are cleaned up on the way out."""
    raise _Terminated(128 + signum)


def main() -> None:
    """Entry point: user errors become one line on stderr and an exit code, no traceback."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        code = app(standalone_mode=False)
    except SystemHealerError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except _Terminated as exc:
        typer.echo("stopped (SIGTERM)", err=True)
        sys.exit(exc.code)
    except OSError as exc:  # a file or connection of the machine: a full disk, a lost mount, …
        if os.environ.get("SYSTEMHEALER_DEBUG"):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(74)  # EX_IOERR
    except Exception as exc:  # a bug: one line, the traceback only on request
        # Usage errors (typer vendors click: match by interface, not by class).
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("SYSTEMHEALER_DEBUG"):
            raise
        typer.echo(
            f"internal error: {type(exc).__name__}: {exc} (set SYSTEMHEALER_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(70)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
