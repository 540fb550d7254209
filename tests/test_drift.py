"""Drift: distances on signed-log values, reports kept and logged, the drift and retraining flows."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from systemhealer import drift, inbox, tracking
from systemhealer.config import load_settings
from systemhealer.data import KPI_FEATURES
from systemhealer.errors import DataValidationError


def test_psi_and_wasserstein_see_a_shift_of_magnitude_not_noise() -> None:
    rng = np.random.default_rng(0)
    training = rng.lognormal(5, 1, 5000)
    sketch = drift.FeatureSketch.learn(training)
    assert sketch is not None and abs(sum(sketch.fractions) - 1) < 1e-9
    same = rng.lognormal(5, 1, 2000)
    assert sketch.psi(same) < 0.05
    assert sketch.wasserstein(same) < 0.1
    hundredfold = same * 100
    assert sketch.psi(hundredfold) > 1.0
    assert sketch.wasserstein(hundredfold) == pytest.approx(np.log(100), rel=0.05)
    # Signs survive: the same magnitudes, negated, are far away.
    assert sketch.psi(-same) > 1.0


def test_point_masses_missing_and_infinite_values_give_finite_answers() -> None:
    training = np.r_[np.zeros(700), np.arange(300.0), [np.nan] * 50, [np.inf]]
    sketch = drift.FeatureSketch.learn(training)
    assert sketch is not None and len(sketch.edges) < 9  # the ties collapsed
    assert np.isfinite(sketch.psi(np.r_[np.zeros(70), np.arange(30.0)]))
    assert sketch.psi(np.zeros(100)) > 0.25  # all in the point mass: drift
    assert sketch.psi(np.array([np.nan, np.inf])) is None  # nothing finite to compare
    assert drift.FeatureSketch.learn(np.array([np.nan])) is None


def test_report_ids_from_requests_never_leave_the_reports_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path))
    settings = load_settings()
    for bad in ("../../etc/passwd", "20260101T000000Z-../x", "/etc/passwd", "", "a" * 300):
        with pytest.raises(DataValidationError):
            drift.load_report(settings, bad)


@pytest.mark.integration
def test_drift_of_the_training_data_and_of_another_deployment(
    trained_state, small_training_frame: pd.DataFrame, unlabelled_frame: pd.DataFrame
) -> None:
    settings = load_settings()
    diagnoser, _ = tracking.load_diagnoser(settings)
    assert set(diagnoser.profile.distributions) >= set(diagnoser.preprocessor.columns)

    same = drift.check_frame(small_training_frame, "train.csv", settings, diagnoser, "1")
    other = drift.check_frame(unlabelled_frame, "other.csv", settings, diagnoser, "1")
    assert same.summary["drift_detected"] is False, same.headline()
    assert other.summary["drift_detected"] is True, other.headline()
    assert other.summary["mean_psi"] > 3 * same.summary["mean_psi"]
    # The GX view is part of the report: the contract passed, range warnings were raised.
    assert other.validation["ok"] is True
    assert any(i["check"] == "drift" for i in other.validation["issues"])
    assert {f["feature"] for f in other.features} == set(KPI_FEATURES)
    # The headline's "most shifted" are among the features the verdict counts.
    assert other.top_features() and all(f["used_by_model"] for f in other.top_features())

    broken = unlabelled_frame.head(50).drop(columns=["feature3"])
    report = drift.check_frame(broken, "broken.csv", settings, diagnoser, "1")
    assert report.summary["drift_detected"] is None and "contract" in report.summary["reason"]


@pytest.mark.integration
def test_drift_flow_keeps_reports_and_logs_them_to_mlflow(
    trained_state, unlabelled_frame: pd.DataFrame
) -> None:
    from flows.drift import drift_flow

    settings = load_settings()
    settings.drift_inbox_dir.mkdir(parents=True, exist_ok=True)
    source = settings.drift_inbox_dir / "week1.csv"
    unlabelled_frame.head(400).to_csv(source, index=False)
    old = time.time() - 600
    os.utime(source, (old, old))
    outcome = drift_flow()
    (checked,) = outcome["checked"]
    assert checked["summary"]["drift_detected"] is True
    assert not source.exists() and list((settings.drift_inbox_dir / "checked").iterdir())

    latest = drift.load_report(settings)
    assert latest["report_id"] == checked["report_id"]
    assert drift.load_report(settings, checked["report_id"])["source"] == "week1.csv"
    assert drift.list_reports(settings)[0]["report_id"] == checked["report_id"]
    runs = tracking.list_runs(settings, tracking.monitoring_experiment(settings))
    logged = next(r for r in runs if r["run_id"] == checked["mlflow_run_id"])
    assert logged["status"] == "FINISHED" and logged["tags"]["drift_detected"] == "True"
    assert logged["metrics"]["features_drifted"] == checked["summary"]["features_drifted"]


@pytest.mark.integration
def test_drift_against_a_calibrated_deployment_s_reference_window(
    trained_state,
    unlabelled_frame: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Incidents of another deployment always drift from the training data; against their own
    deployment's window they do not, unless the deployment changes again."""
    from flows.drift import drift_flow
    from systemhealer import deployments
    from tests.test_cli import run_cli

    settings = load_settings()
    diagnoser, _ = tracking.load_diagnoser(settings)
    window, later = unlabelled_frame.iloc[::2], unlabelled_frame.iloc[1::2]
    deployments.register_deployment(settings, "drift-site", window, "window.csv")
    try:
        against_training = drift.check_frame(later, "later.csv", settings, diagnoser, "1")
        against_window = drift.check_frame(
            later, "later.csv", settings, diagnoser, "1", deployment="drift-site"
        )
        assert against_training.summary["drift_detected"] is True
        assert against_window.summary["drift_detected"] is False, against_window.headline()
        assert against_window.baseline == "drift-site"
        # Samples of the window itself do not drift from it (PSI's sampling noise at the
        # smallest size given a verdict stays under the mark); smaller ones get no verdict.
        for seed in range(5):
            sample = window.sample(settings.schedule.drift_min_rows, random_state=seed)
            report = drift.check_frame(sample, "s.csv", settings, diagnoser, "1", "drift-site")
            assert report.summary["drift_detected"] is False, report.headline()
        few = drift.check_frame(window.head(50), "s.csv", settings, diagnoser, "1", "drift-site")
        assert few.summary["drift_detected"] is None and "drift_min_rows" in few.summary["reason"]
        assert "deployment 'drift-site'" in against_window.headline()
        # The GX range checks use the window's ranges too: no range warnings on the same kind
        # of incidents, where the training ranges warn.
        assert not any(i["check"] == "drift" for i in against_window.validation["issues"])
        assert any(
            i["check"] == "drift" and "the training range" in i["message"]
            for i in against_training.validation["issues"]
        )

        # The deployment changed: eight of the model's KPIs in other units.
        moved = list(diagnoser.preprocessor.columns[:8])
        changed = later.copy()
        changed[moved] = changed[moved] * 1000.0
        path = tmp_path / "changed.csv"
        changed.to_csv(path, index=False)
        outcome = drift_flow(path=str(path), deployment="drift-site")
        (checked,) = outcome["checked"]
        assert checked["baseline"] == "drift-site"
        assert checked["summary"]["drift_detected"] is True
        assert set(checked["summary"]["drifted_features"]) >= set(moved)
        kept = drift.load_report(settings, checked["report_id"])
        assert kept["baseline"] == "drift-site"
        assert any(
            "the deployment 'drift-site' window range" in i["message"]
            for i in kept["validation"]["issues"]
        )
        runs = tracking.list_runs(settings, tracking.monitoring_experiment(settings))
        logged = next(r for r in runs if r["run_id"] == checked["mlflow_run_id"])
        assert logged["tags"]["baseline"] == "drift-site"

        code, _, err = run_cli(["drift", "--deployment", "drift-site"], capsys, monkeypatch)
        assert code == 2 and "one file at a time" in err
        code, _, err = run_cli(
            ["drift", str(path), "--deployment", "no-such-site"], capsys, monkeypatch
        )
        assert code == 3 and "no deployment named 'no-such-site'" in err
        code, out, _ = run_cli(
            ["drift", str(path), "--deployment", "drift-site"], capsys, monkeypatch
        )
        assert code == 0 and "DRIFT against deployment 'drift-site'" in out
        # A file that breaks the data contract is bad input (exit 1, even without
        # --fail-on-drift); its report does not replace the last verdict.
        last = drift.load_report(settings)["report_id"]
        broken = tmp_path / "broken.csv"
        later.drop(columns=["feature3"]).to_csv(broken, index=False)
        code, _, err = run_cli(
            ["drift", str(broken), "--deployment", "drift-site"], capsys, monkeypatch
        )
        assert code == 1 and "breaks the data contract" in err and "feature3" in err
        assert drift.load_report(settings)["report_id"] == last
        # A window of a few dozen incidents gives no verdict: any file would drift from it.
        deployments.register_deployment(settings, "drift-tiny", window.head(40), "tiny.csv")
        tiny = drift.check_frame(later, "later.csv", settings, diagnoser, "1", "drift-tiny")
        assert tiny.summary["drift_detected"] is None and "at least 100" in tiny.summary["reason"]
    finally:
        deployments.remove_deployment(settings, "drift-site")
        if deployments.find_deployment(settings, "drift-tiny"):
            deployments.remove_deployment(settings, "drift-tiny")


@pytest.mark.integration
def test_retraining_flow_merges_trains_then_waits_for_new_data(
    prefect_harness, small_training_frame: pd.DataFrame, tmp_path: Path
) -> None:
    from flows.retraining import retraining_flow

    saved = os.environ.get("SYSTEMHEALER_HOME")
    os.environ["SYSTEMHEALER_HOME"] = str(tmp_path / "home")
    os.environ["SYSTEMHEALER_SCHEDULE__SETTLE_SECONDS"] = "0"
    try:
        settings = load_settings()
        settings.inbox_dir.mkdir(parents=True)
        small_training_frame.to_csv(settings.inbox_dir / "history.csv", index=False)
        bad = small_training_frame.head(30).assign(label=7)
        bad.to_csv(settings.inbox_dir / "bad-labels.csv", index=False)

        first = retraining_flow()
        statuses = {f["name"]: f["status"] for f in first["inbox"]["files"]}
        assert statuses == {"history.csv": "merged", "bad-labels.csv": "rejected"}
        assert first["trained"] and first["training"]["promoted"]
        champion = tracking.champion(settings)
        assert champion is not None and champion.version == first["training"]["model_version"]
        manifest = inbox.read_manifest(settings)
        assert manifest["trained_sha256"] == manifest["dataset"]["sha256"]
        rejected = json.loads(next(settings.rejected_dir.glob("*.report.json")).read_text())
        assert "label" in rejected["text"]

        second = retraining_flow()
        assert not second["trained"] and "no new training data" in second["reason"]
        assert tracking.champion(settings).version == champion.version
    finally:
        os.environ.pop("SYSTEMHEALER_SCHEDULE__SETTLE_SECONDS")
        if saved is None:
            os.environ.pop("SYSTEMHEALER_HOME")
        else:
            os.environ["SYSTEMHEALER_HOME"] = saved


@pytest.mark.integration
def test_retrain_command_exits_1_naming_a_refused_inbox_file(
    prefect_harness,
    small_training_frame: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from .test_cli import run_cli

    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SYSTEMHEALER_SCHEDULE__SETTLE_SECONDS", "0")
    settings = load_settings()
    settings.inbox_dir.mkdir(parents=True)
    small_training_frame.head(30).assign(label=7).to_csv(settings.inbox_dir / "bad.csv")
    code, out, err = run_cli(["retrain"], capsys, monkeypatch)
    assert code == 1 and "bad.csv: rejected" in out and "refused inbox file(s): bad.csv" in err
    assert list(settings.rejected_dir.glob("*bad*.report.json"))
    # Nothing left to refuse: the next run is fine.
    code, out, _ = run_cli(["retrain"], capsys, monkeypatch)
    assert code == 0 and "no training" in out
