"""The sweep flow: train candidate configurations, log each as a run, register the best."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from systemhealer import pipeline, tracking
from systemhealer.config import Settings, load_settings
from systemhealer.locks import training_lock
from systemhealer.sweep import (
    GBT_BASELINE,
    Candidate,
    TreeDiagnoser,
    best_candidate,
    choose_candidates,
    results_table,
    with_overrides,
)
from systemhealer.training import prepare_training_data


@task(name="validate", cache_policy=NO_CACHE)
def validate(path: str, settings: Settings):  # type: ignore[no-untyped-def]
    from systemhealer.validation import require_valid, validate_file

    report, frame = validate_file(path, settings.data, require_label=True)
    require_valid(report)
    return frame


@task(name="candidate", cache_policy=NO_CACHE)
def run_candidate(
    frame,
    candidate: Candidate,
    base: Settings,
    source: str,
    sweep_id: str,
    lock_tags: dict[str, str] | None = None,
) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Train and score one candidate as its own MLflow run (the model is logged, not registered)."""
    settings = with_overrides(base, candidate.overrides)
    tags = {"sweep": sweep_id, "candidate": candidate.name, **(lock_tags or {})}
    with tracking.training_run(settings, run_name=f"sweep-{candidate.name}", tags=tags) as run_id:
        tracking.log_params(
            {
                "candidate": candidate.name,
                **{f"override.{k}": v for k, v in candidate.overrides.items()},
            }
        )
        prepared = prepare_training_data(frame, settings)
        pipeline.log_training_context(prepared, settings, source)
        started = time.perf_counter()
        if candidate.name == GBT_BASELINE:
            part = prepared.split.train
            model = TreeDiagnoser(prepared.preprocessor, settings.training.seed).fit(
                prepared.features(part), prepared.labels[part]
            )
            scores = pipeline.holdout_scores(model, prepared, settings)  # type: ignore[arg-type]
            seconds = time.perf_counter() - started
            metrics = pipeline.score_metrics(scores)
            tracking.log_metrics({**metrics, "train_seconds": seconds})
            return {
                "candidate": candidate.name,
                "run_id": run_id,
                **metrics,
                "train_seconds": seconds,
            }
        result = pipeline.fit_model(prepared, settings, show_progress=False)
        diagnoser = pipeline.build_diagnoser(prepared, result, settings)
        evaluation = pipeline.evaluate_candidate(prepared, diagnoser, result, settings)
        model_uri = tracking.log_diagnoser(diagnoser, pipeline.example_features(prepared))
        return {
            "candidate": candidate.name,
            "run_id": run_id,
            "model_uri": model_uri,
            **pipeline.score_metrics(evaluation.scores),
            "train_seconds": result.seconds,
            "overrides": candidate.overrides,
        }


@flow(name="sweep")
def sweep_flow(
    path: str, config_file: str | None = None, candidates: list[str] | None = None
) -> dict[str, Any]:
    """Try candidate configurations on one labelled file; register the best MLP behind the gate."""
    base = load_settings(config_file)
    chosen = choose_candidates(candidates)
    frame = validate(path, base)
    # Like every training: one at a time per state folder (the gate below reads and moves the
    # champion alias), and runs of a killed sweep are marked FAILED by the next training.
    with training_lock(base) as lock_tags:
        return _sweep(frame, chosen, base, path, lock_tags)


def _sweep(
    frame: pd.DataFrame,
    chosen: list[Candidate],
    base: Settings,
    path: str,
    lock_tags: dict[str, str],
) -> dict[str, Any]:
    """Train the candidates in turn, register the best MLP, and let the gate decide."""
    sweep_id = f"sweep-{int(time.time())}"
    results = []
    for candidate in chosen:
        try:
            results.append(run_candidate(frame, candidate, base, path, sweep_id, lock_tags))
        except Exception as exc:  # one failed candidate must not sink the sweep
            results.append({"candidate": candidate.name, "error": f"{type(exc).__name__}: {exc}"})
    best = best_candidate(results)
    settings = with_overrides(base, best.get("overrides", {}))
    prepared = prepare_training_data(frame, settings)
    version = tracking.register(
        settings,
        best["model_uri"],
        {
            "sweep": sweep_id,
            "candidate": best["candidate"],
            "eval_macro_f1": f"{best['eval_macro_f1']:.4f}",
            "shift_macro_f1": f"{best['shift_macro_f1']:.4f}",
            "shift_score": f"{best['shift_score']:.4f}",
            "run_id": best["run_id"],
        },
    )
    candidate_scores = pipeline.HoldoutScores(
        **{name: best[name] for name in pipeline.HoldoutScores.__dataclass_fields__}
    )
    decision = pipeline.decide_gate(version, candidate_scores, prepared, settings)
    promoted, reason = decision.promoted, decision.reason
    table = results_table(results)
    create_markdown_artifact(
        key="sweep-results",
        markdown=f"## Sweep {sweep_id} on {Path(path).name}\n\n{table}\n\nBest: {best['candidate']} → v{version.version}, {'promoted' if promoted else 'not promoted'}: {reason}",
    )
    return {
        "sweep": sweep_id,
        "results": results,
        "best": best["candidate"],
        "model_version": version.version,
        "promoted": promoted,
        "gate_reason": reason,
        "table": table,
    }
