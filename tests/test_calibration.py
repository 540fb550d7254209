"""Deployment calibration through the CLI, and the sweep that registers its best run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from systemhealer import assessment, deployments, tracking
from systemhealer.config import load_settings
from systemhealer.data import KPI_FEATURES
from systemhealer.errors import ConfigError, DataValidationError
from systemhealer.locks import RUN_LOCK_TAG, TRAINING, lock_tag, state_lock
from systemhealer.shift import apply_shift, random_shift

from .test_cli import run_cli

pytestmark = pytest.mark.integration


def balanced_rows(training_frame: pd.DataFrame, per_class: int, seed: int) -> pd.DataFrame:
    """``per_class`` incidents of every fault class, shuffled: a near-balanced deployment."""
    return (
        training_frame.groupby("label", group_keys=False)
        .sample(per_class, random_state=seed)
        .sample(frac=1, random_state=seed + 1)
        .reset_index(drop=True)
    )


def test_calibrate_then_predict_with_the_deployment(
    trained_state, tmp_path: Path, training_frame: pd.DataFrame, capsys, monkeypatch
) -> None:
    settings = load_settings()
    diagnoser, _ = tracking.load_diagnoser(settings)
    # Another "deployment": rows rescaled by large per-feature factors; labels kept to check.
    # Like the deployments the product is built for, its class mix is near balanced.
    rows = balanced_rows(training_frame, 200, seed=5)
    spec = random_shift(np.random.default_rng(7), tuple(KPI_FEATURES[2:]), ())
    shifted = apply_shift(rows, spec)
    reference, scored = shifted.iloc[:600], shifted.iloc[600:]
    reference_file = tmp_path / "reference.csv"
    reference.to_csv(reference_file, index=False)  # with its label column: must be ignored
    scored_file = tmp_path / "scored.csv"
    scored.drop(columns=["label"]).to_csv(scored_file, index=False)

    code, out, err = run_cli(["calibrate", "site-b", str(reference_file)], capsys, monkeypatch)
    assert code == 0, err
    assert "calibrated from 600 incidents" in out and "estimated class mix" in out
    stored = deployments.load_reference(settings, "site-b")
    assert "label" not in stored.columns and len(stored) == 600

    calibrated_out, plain_out = tmp_path / "calibrated.csv", tmp_path / "plain.csv"
    code, out, err = run_cli(
        ["predict", str(scored_file), "-o", str(calibrated_out), "--deployment", "site-b"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    code, out, err = run_cli(
        ["predict", str(scored_file), "-o", str(plain_out)], capsys, monkeypatch
    )
    assert code == 0, err
    assert "training" in out  # the fallback says which statistics it used
    truth = scored["label"].to_numpy()
    calibrated = pd.read_csv(calibrated_out)["predicted_label"].to_numpy()
    plain = pd.read_csv(plain_out)["predicted_label"].to_numpy()
    # Same rows scored in the training deployment's own units, for reference.
    unshifted = diagnoser.diagnose(rows.iloc[600:][list(KPI_FEATURES)])[
        "predicted_label"
    ].to_numpy()
    assert (calibrated == truth).mean() > (plain == truth).mean() + 0.1
    assert (calibrated == unshifted).mean() > 0.6

    code, out, _ = run_cli(["deployments"], capsys, monkeypatch)
    assert "site-b: 600 reference incidents" in out

    # Removed, it is no longer listed and its incidents are refused; the output is untouched.
    before = calibrated_out.read_bytes()
    code, out, err = run_cli(["deployments", "--remove", "site-b"], capsys, monkeypatch)
    assert code == 0 and "'site-b' removed (600 reference incidents" in out, err
    code, out, _ = run_cli(["deployments"], capsys, monkeypatch)
    assert "site-b" not in out
    code, _, err = run_cli(
        ["predict", str(scored_file), "-o", str(calibrated_out), "--deployment", "site-b"],
        capsys,
        monkeypatch,
    )
    assert code == 3 and "no deployment named 'site-b'" in err
    assert calibrated_out.read_bytes() == before
    code, _, err = run_cli(["deployments", "--remove", "site-b"], capsys, monkeypatch)
    assert code == 3 and "no deployment named 'site-b'" in err
    code, _, err = run_cli(["deployments", "--remove", "training"], capsys, monkeypatch)
    assert code == 2  # the training statistics are not a deployment


def test_a_skewed_deployment_is_read_at_its_estimated_class_mix(
    trained_state, training_frame: pd.DataFrame
) -> None:
    settings = load_settings()
    diagnoser, _ = tracking.load_diagnoser(settings)
    # A deployment in other units where 70 % of incidents are class 0 (6 % each other class).
    counts = {0: 700, 1: 60, 2: 60, 3: 60, 4: 60, 5: 60}
    rows = pd.concat(
        [training_frame[training_frame["label"] == c].sample(n, random_state=c, replace=False)
         for c, n in counts.items()]
    ).sample(frac=1, random_state=9).reset_index(drop=True)  # fmt: skip
    shifted = apply_shift(rows, random_shift(np.random.default_rng(8), tuple(KPI_FEATURES[2:]), ()))
    reference, scored = shifted.iloc[::2], shifted.iloc[1::2]
    features = scored[list(KPI_FEATURES)].reset_index(drop=True)

    measured = deployments.measure(settings, diagnoser, "skewed", reference[list(KPI_FEATURES)])
    assert measured.reference_mix is not None and measured.reference_mix.argmax() == 0
    assert measured.reference_mix[0] > 0.45  # a balanced reading would assume 1/6
    # Probabilities are re-weighted to the estimate (floored so no class becomes impossible).
    assert measured.class_mix is not None and measured.class_mix.min() >= 0.019
    read = replace(measured, class_mix=None)  # the reading alone, compared below
    plain = diagnoser.preprocessor.measure_deployment("skewed", reference)
    # The same incidents in the training deployment's units, read against its reference.
    pre = diagnoser.preprocessor
    wanted = pre.training.positions(pre.raw_values(rows.iloc[1::2]), missing=0.5)
    error = {
        name: np.abs(stats.positions(pre.raw_values(features), missing=0.5) - wanted).mean()
        for name, stats in (("read at its mix", read), ("read as balanced", plain))
    }
    assert error["read at its mix"] < 0.8 * error["read as balanced"], error
    # So the diagnoses agree more often with those of the same incidents in training units.
    unshifted = diagnoser.diagnose(rows.iloc[1::2][list(KPI_FEATURES)].reset_index(drop=True))[
        "predicted_label"
    ]
    agreement = {
        name: (diagnoser.diagnose(features, stats)["predicted_label"] == unshifted).mean()
        for name, stats in (("read at its mix", read), ("read as balanced", plain))
    }
    assert agreement["read at its mix"] > agreement["read as balanced"] + 0.03, agreement


def test_calibrate_refuses_bad_names_and_files(
    trained_state, tmp_path: Path, capsys, monkeypatch
) -> None:
    good = tmp_path / "ok.csv"
    pd.DataFrame({c: [1.0] * 30 for c in KPI_FEATURES}).to_csv(good, index=False)
    code, _, err = run_cli(["calibrate", "../etc/passwd", str(good)], capsys, monkeypatch)
    assert code == 2 and "invalid deployment name" in err  # bad usage
    code, _, err = run_cli(
        ["calibrate", "tiny", str(good.with_name("missing.csv"))], capsys, monkeypatch
    )
    assert code == 1 and "file not found" in err
    few = tmp_path / "few.csv"
    pd.DataFrame({c: [1.0] * 5 for c in KPI_FEATURES}).to_csv(few, index=False)
    code, _, err = run_cli(["calibrate", "tiny", str(few)], capsys, monkeypatch)
    assert code == 1 and "at least" in err
    code, _, err = run_cli(
        ["predict", str(good), "-o", str(tmp_path / "o.csv"), "--deployment", "nowhere"],
        capsys,
        monkeypatch,
    )
    assert code == 3 and "no deployment named 'nowhere'" in err
    code, _, err = run_cli(["calibrate", "Training", str(good)], capsys, monkeypatch)
    assert code == 2 and "invalid deployment name" in err  # the training statistics' name


def test_deployment_names_differing_only_in_case_are_refused(
    tmp_path: Path, unlabelled_frame: pd.DataFrame, monkeypatch
) -> None:
    """On a case-insensitive file system 'DC2' and 'dc2' would share their files."""
    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path))
    settings = load_settings()
    window = unlabelled_frame.iloc[:100]
    deployments.register_deployment(settings, "DC2", window, "dc2.csv")
    with pytest.raises(DataValidationError, match="'DC2' exists: names may not differ only in"):
        deployments.register_deployment(settings, "dc2", window, "dc2.csv")
    deployments.register_deployment(settings, "DC2", window, "again.csv")  # replacing is fine
    assert [d.name for d in deployments.list_deployments(settings)] == ["DC2"]


def test_calibrate_refuses_windows_the_model_cannot_read_and_warns_about_weak_ones(
    trained_state, tmp_path: Path, unlabelled_frame: pd.DataFrame, capsys, monkeypatch
) -> None:
    settings = load_settings()
    diagnoser, _ = tracking.load_diagnoser(settings)
    model_columns = list(diagnoser.preprocessor.columns)
    window = unlabelled_frame.iloc[:400].reset_index(drop=True)

    def calibrate(name: str, frame: pd.DataFrame) -> tuple[int, str, str]:
        path = tmp_path / f"{name}.csv"
        frame.to_csv(path, index=False)
        return run_cli(["calibrate", name, str(path)], capsys, monkeypatch)

    # Other KPIs only: nothing the model reads, so nothing to calibrate on; nothing is stored.
    code, _, err = calibrate("blind", window.assign(**dict.fromkeys(model_columns, np.nan)))
    assert code == 1
    assert f"have a value in any of the {len(model_columns)} KPI columns the model reads" in err
    # One incident copied 300 times: no distribution to measure.
    code, _, err = calibrate("copies", pd.concat([window.iloc[[0]]] * 300))
    assert code == 1 and "at least 20 distinct incidents" in err and "only 1" in err
    assert not {"blind", "copies"} & {d.name for d in deployments.list_deployments(settings)}

    # A KPI the deployment does not record and one it holds constant: stored, with warnings.
    empty, constant = model_columns[0], model_columns[1]
    code, out, err = calibrate("gaps", window.assign(**{empty: np.nan, constant: 5.0}))
    assert code == 0, err
    assert f"warning: {empty}: no value in the window" in err
    assert f"warning: {constant}: one value (5) in the whole window" in err
    assert "small reference window" not in err
    # Replacing a deployment says what it replaces; a small window is warned about.
    path = tmp_path / "small.csv"
    window.iloc[:60].to_csv(path, index=False)
    code, out, err = run_cli(["calibrate", "gaps", str(path)], capsys, monkeypatch)
    assert code == 0, err
    assert "it replaces the window of 400 incidents of gaps.csv" in out
    assert "warning: 60 incidents are a small reference window" in err
    assert deployments.find_deployment(settings, "gaps").rows == 60  # type: ignore[union-attr]

    # Scoring incidents without a value in any of the model's columns says so.
    blank = tmp_path / "blank.csv"
    window.iloc[:30].assign(**dict.fromkeys(model_columns, np.nan)).to_csv(blank, index=False)
    code, out, err = run_cli(
        ["predict", str(blank), "-o", str(tmp_path / "blank-out.csv")], capsys, monkeypatch
    )
    assert code == 0, err
    assert "warning: 30 incidents have no value in any of the KPIs the model reads" in out

    # A window calibrated before this champion (with no champion, or one reading other KPIs)
    # is checked again for the model in service: without its KPIs it is refused, not read as
    # "every KPI missing" into silent diagnoses.
    deployments.register_deployment(
        settings, "older", window.assign(**dict.fromkeys(model_columns, np.nan)), "older.csv"
    )
    try:
        code, _, err = run_cli(
            ["predict", str(tmp_path / "gaps.csv"), "-o", str(tmp_path / "older-out.csv"),
             "--deployment", "older"],
            capsys, monkeypatch,
        )  # fmt: skip
        assert code == 1 and "deployment 'older' cannot calibrate the model in service" in err
        assert "systemhealer calibrate older FILE" in err
        assert not (tmp_path / "older-out.csv").exists()
    finally:
        deployments.remove_deployment(settings, "older")


def test_evaluate_refuses_outputs_it_must_not_write(
    trained_state, tmp_path: Path, training_frame: pd.DataFrame, capsys, monkeypatch
) -> None:
    labelled = tmp_path / "labelled.csv"
    balanced_rows(training_frame, 20, seed=3).to_csv(labelled, index=False)
    before = labelled.read_bytes()
    for output, message in (
        (labelled, "would overwrite the input"),
        (tmp_path, "is a folder"),
        (tmp_path / "scores.xlsx", "outputs are written as .csv"),
    ):
        code, _, err = run_cli(["evaluate", str(labelled), "-o", str(output)], capsys, monkeypatch)
        assert code == 1 and message in err, err
    assert labelled.read_bytes() == before
    code, _, err = run_cli(["evaluate", str(labelled), "--seed", "-1"], capsys, monkeypatch)
    assert code == 2
    # The training data's statistics are a deployment too: calibrated = uncalibrated.
    code, out, err = run_cli(
        ["evaluate", str(labelled), "--deployment", "training", "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["calibrated"]["macro_f1"] == result["uncalibrated"]["macro_f1"]
    # A handful of labelled incidents can be scored with a calibrated deployment, not as halves.
    few = tmp_path / "few.csv"
    training_frame[training_frame["label"] == 3].iloc[:12].to_csv(few, index=False)
    code, out, err = run_cli(
        ["evaluate", str(few), "--deployment", "training"], capsys, monkeypatch
    )
    assert code == 0, err
    assert "12 labelled incidents" in out and "Class 0: n/a (none)" in out
    code, _, err = run_cli(["evaluate", str(few)], capsys, monkeypatch)
    assert code == 1 and "at least 50" in err


def test_evaluate_scores_a_labelled_deployment_with_halves_calibrating_each_other(
    trained_state, tmp_path: Path, training_frame: pd.DataFrame, capsys, monkeypatch
) -> None:
    # A labelled set from "another deployment": near balanced, every KPI in other units.
    rows = balanced_rows(training_frame, 120, seed=3)
    spec = random_shift(np.random.default_rng(5), tuple(KPI_FEATURES[2:]), ())
    labelled = tmp_path / "other-site.csv"
    apply_shift(rows, spec).to_csv(labelled, index=False)

    per_incident = tmp_path / "per-incident.csv"
    code, out, err = run_cli(
        ["evaluate", str(labelled), "--json", "-o", str(per_incident)], capsys, monkeypatch
    )
    assert code == 0, err
    result = json.loads(out)
    table = pd.read_csv(per_incident)
    assert list(table["sample_id"]) == list(rows["sample_id"])
    assert list(table["label"]) == list(rows["label"])
    assert table["correct"].mean() == pytest.approx(result["calibrated"]["accuracy"])
    uncalibrated = (table["predicted_label_uncalibrated"] == table["label"]).mean()
    assert uncalibrated == pytest.approx(result["uncalibrated"]["accuracy"])
    assert result["method"] == "halves" and result["rows"] == 720
    assert result["calibrated"]["macro_f1"] > result["uncalibrated"]["macro_f1"] + 0.15
    assert sum(map(sum, result["calibrated"]["confusion"])) == 720
    assert result["class_mix"] == pytest.approx([1 / 6] * 6)
    assert len(result["estimated_mixes"]) == len(result["window_mixes"]) == 2
    assert result["mix_error_l1"] < 0.5 and result["seed"] == 0
    # Tracked in MLflow beside the drift checks, with the seed that reproduces the halves.
    run = tracking.run_details(load_settings(), result["mlflow_run_id"])
    assert run is not None and run["tags"]["systemhealer.kind"] == "deployment-evaluation"
    assert run["params"]["seed"] == "0"
    assert run["metrics"]["calibrated_macro_f1"] == pytest.approx(result["calibrated"]["macro_f1"])

    code, out, err = run_cli(["evaluate", str(labelled)], capsys, monkeypatch)
    assert code == 0, err
    assert "halves calibrating each other" in out and "uncalibrated" in out

    # The file's own first and second half, as a file ordered by how it was gathered splits.
    code, out, err = run_cli(
        ["evaluate", str(labelled), "--halves", "ordered", "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    ordered = json.loads(out)
    assert ordered["method"] == "ordered halves" and ordered["seed"] is None
    truth = rows["label"].to_numpy()
    first, second = (assessment.class_mix(part) for part in np.split(truth, 2))
    assert np.allclose(ordered["window_mixes"], [first, second])
    for wrong in (
        ["--halves", "odd"],
        ["--halves", "ordered", "--seed", "3"],
        ["--deployment", "training", "--halves", "ordered"],
    ):
        code, _, err = run_cli(["evaluate", str(labelled), *wrong], capsys, monkeypatch)
        assert code == 2 and ("--halves" in err or "--seed" in err), (wrong, err)

    # With a calibrated deployment the whole set is scored with its statistics.
    reference = tmp_path / "window.csv"
    apply_shift(training_frame.sample(600, random_state=8), spec).drop(columns=["label"]).to_csv(
        reference, index=False
    )
    assert run_cli(["calibrate", "site-e", str(reference)], capsys, monkeypatch)[0] == 0
    code, out, err = run_cli(
        ["evaluate", str(labelled), "--deployment", "site-e", "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    scored = json.loads(out)
    assert scored["method"] == "deployment site-e"
    assert scored["calibrated"]["macro_f1"] > scored["uncalibrated"]["macro_f1"] + 0.15
    # The same diagnoses as `predict --deployment` writes.
    diagnoses = tmp_path / "site-e.csv"
    code, out, err = run_cli(
        ["predict", str(labelled), "-o", str(diagnoses), "--deployment", "site-e"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    assert f"systemhealer evaluate {labelled} --deployment site-e" in out
    predicted = pd.read_csv(diagnoses)["predicted_label"].to_numpy()
    accuracy = (predicted == rows["label"].to_numpy()).mean()
    assert scored["calibrated"]["accuracy"] == pytest.approx(accuracy)

    # Without labels there is nothing to score against: a clear error, exit code 1.
    unlabelled = tmp_path / "unlabelled.csv"
    rows.drop(columns=["label"]).to_csv(unlabelled, index=False)
    code, _, err = run_cli(["evaluate", str(unlabelled)], capsys, monkeypatch)
    assert code == 1 and "missing columns: label" in err
    unknown = tmp_path / "unknown-label.csv"
    rows.assign(label=rows["label"].where(rows.index != 3, 9)).to_csv(unknown, index=False)
    code, _, err = run_cli(["evaluate", str(unknown)], capsys, monkeypatch)
    assert code == 1 and "outside" in err
    code, _, err = run_cli(
        ["evaluate", str(labelled), "--deployment", "nowhere"], capsys, monkeypatch
    )
    assert code == 3 and "no deployment named 'nowhere'" in err
    # Halves too small to calibrate from are scored, with a warning.
    small = tmp_path / "small.csv"
    apply_shift(rows.iloc[:120], spec).to_csv(small, index=False)
    code, out, err = run_cli(["evaluate", str(small)], capsys, monkeypatch)
    assert code == 0 and "120 labelled incidents" in out
    assert "a half of the file: 60 incidents are a small reference window" in err
    # Each half is checked as `calibrate` checks a window: one without the model's KPIs is
    # refused, not scored as if it had told the model something.
    blind = rows.copy()
    model_columns = list(tracking.load_diagnoser(load_settings())[0].preprocessor.columns)
    blind.loc[blind.index < len(blind) // 2, model_columns] = np.nan
    blind_path = tmp_path / "blind.csv"
    blind.to_csv(blind_path, index=False)
    code, _, err = run_cli(
        ["evaluate", str(blind_path), "--halves", "ordered"], capsys, monkeypatch
    )
    assert code == 1 and "a half cannot calibrate the other" in err and "same KPIs" in err
    # --halves is about halves: with --deployment, even its default value is a usage error.
    code, _, err = run_cli(
        ["evaluate", str(labelled), "--deployment", "site-e", "--halves", "random"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 2 and "no halves" in err


def test_halves_never_show_calibration_a_label_or_the_rows_scored(
    trained_state, training_frame: pd.DataFrame
) -> None:
    settings = load_settings()
    diagnoser, _ = tracking.load_diagnoser(settings)
    # feature13 is never missing: distinct values tell the incidents apart.
    rows = training_frame.drop_duplicates("feature13").sample(300, random_state=1)
    rows = rows.reset_index(drop=True)
    windows: list[pd.DataFrame] = []

    def calibrate(window: pd.DataFrame):
        windows.append(window)
        return deployments.measure(settings, diagnoser, "spy", window)

    features = rows[list(KPI_FEATURES)]
    result = assessment.assess_with_halves(
        diagnoser, features, rows["label"].to_numpy(), calibrate, seed=2
    )
    assert len(windows) == 2 and all("label" not in w.columns for w in windows)
    seen = [set(w["feature13"]) for w in windows]
    assert len(seen[0]) + len(seen[1]) == 300 and not seen[0] & seen[1]
    assert result.calibrated.rows == result.uncalibrated.rows == 300


def test_sweep_registers_its_best_mlp(
    prefect_harness, small_training_csv: Path, tmp_path: Path, monkeypatch
) -> None:
    from flows.sweep import sweep_flow

    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("SYSTEMHEALER_TRAINING__MAX_EPOCHS", "4")
    outcome = sweep_flow(
        str(small_training_csv),
        candidates=["mlp-default", "mlp-normal-scores-only", "gbt-baseline"],
    )
    results = {r["candidate"]: r for r in outcome["results"]}
    assert set(results) == {"mlp-default", "mlp-normal-scores-only", "gbt-baseline"}
    mlps = [r for name, r in results.items() if name != "gbt-baseline"]
    best = max(mlps, key=lambda r: (r["shift_score"], r["eval_macro_f1"]))
    assert outcome["best"] == best["candidate"]
    settings = load_settings()
    version = tracking.get_version(settings, outcome["model_version"])
    assert version.run_id == best["run_id"] and version.tags["candidate"] == best["candidate"]
    assert outcome["promoted"] and tracking.champion(settings).version == version.version
    # Every candidate, the baseline included, is a run with comparable metrics.
    for r in results.values():
        metrics = tracking.run_metrics(settings, r["run_id"])
        assert {
            "eval_macro_f1",
            "shift_macro_f1",
            "shift_uncalibrated_macro_f1",
            "shift_skewed_macro_f1",
            "shift_swapped_macro_f1",
            "shift_noisy_macro_f1",
            "shift_score",
        } <= set(metrics)
        assert metrics["shift_score"] == pytest.approx(
            np.mean([metrics[f"shift_{s}macro_f1"] for s in ("", "skewed_", "swapped_", "noisy_")])
        )
        # Taken under the training lock, like every training: a killed sweep's runs are
        # marked FAILED by the next training, and the gate never races another one.
        tags = tracking.configure(settings).get_run(r["run_id"]).data.tags
        assert tags[RUN_LOCK_TAG] == lock_tag(state_lock(settings, TRAINING))


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["mlp-defualt"], "unknown sweep candidate(s) mlp-defualt; known: mlp-default,"),
        (["gbt-baseline"], "needs at least one MLP candidate"),
    ],
)
def test_sweep_refuses_bad_candidate_names_before_any_work(
    prefect_harness, small_training_csv: Path, tmp_path: Path, monkeypatch, names, message
) -> None:
    from flows.sweep import sweep_flow

    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "state"))
    with pytest.raises(ConfigError) as refused:
        sweep_flow(str(small_training_csv), candidates=names)
    assert message in str(refused.value)
    assert not (tmp_path / "state" / "mlflow.db").exists()


def test_crossval_reports_every_simulation_and_the_shift_score(
    small_training_csv: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("SYSTEMHEALER_TRAINING__MAX_EPOCHS", "3")
    code, out, err = run_cli(
        ["crossval", str(small_training_csv), "--folds", "2"], capsys, monkeypatch
    )
    assert code == 0, err
    assert out.count("fold ") >= 2 and "swapped values" in out and "noisy halves" in out
    header, _, *rows = [line for line in out.splitlines() if line.startswith("|")]
    assert "shift score" in header and len(rows) == 3  # two folds and their mean
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    shift, skewed, swapped, noisy, score = (float(cells[i]) for i in (4, 6, 7, 8, 9))
    assert score == pytest.approx((shift + skewed + swapped + noisy) / 4, abs=1e-4)
    assert rows[-1].startswith("| mean ± sd")
