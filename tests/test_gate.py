"""The promotion gate, promote and rollback, in a registry of their own."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from systemhealer import tracking
from systemhealer.config import load_settings
from systemhealer.errors import ModelDamagedError, ModelNotFoundError

from .test_cli import run_cli

pytestmark = pytest.mark.integration


def test_worse_model_does_not_take_the_alias(
    prefect_harness,
    small_training_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.training import training_flow

    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "state"))
    first = training_flow(str(small_training_csv), show_progress=False)
    assert first["promoted"]
    # A crippled network: two hidden units, one epoch, a tiny learning rate.
    monkeypatch.setenv("SYSTEMHEALER_TRAINING__HIDDEN_SIZES", "[2]")
    monkeypatch.setenv("SYSTEMHEALER_TRAINING__MAX_EPOCHS", "1")
    monkeypatch.setenv("SYSTEMHEALER_TRAINING__LEARNING_RATE", "0.00001")
    second = training_flow(str(small_training_csv), show_progress=False)
    settings = load_settings()
    assert not second["promoted"]
    assert second["eval_macro_f1"] < first["eval_macro_f1"]
    assert tracking.champion(settings).version == first["model_version"]
    rejected = tracking.get_version(settings, second["model_version"])
    assert rejected.tags["gate"] == "rejected"
    assert f"of v{first['model_version']}" in rejected.tags["gate_reason"]

    # By hand: promote the rejected version, then roll back to the gate's choice.
    tracking.set_champion(settings, second["model_version"])
    assert tracking.champion(settings).version == second["model_version"]
    # The listing marks the champion (registry searches return versions without aliases).
    marked = [v.version for v in tracking.list_versions(settings) if "champion" in v.aliases]
    assert marked == [second["model_version"]]
    code, out, _ = run_cli(["models"], capsys, monkeypatch)
    assert code == 0 and f"v{second['model_version']} (champion):" in out
    assert f"v{first['model_version']} (champion)" not in out
    assert tracking.rollback_champion(settings) == (second["model_version"], first["model_version"])
    assert tracking.champion(settings).version == first["model_version"]
    with pytest.raises(ModelNotFoundError, match="nothing to roll back"):
        tracking.rollback_champion(settings)
    with pytest.raises(ModelNotFoundError, match="no version 42"):
        tracking.set_champion(settings, "42")
    # Another spelling of the champion's own version is the same version: the history stays
    # rollback-able (it once recorded "01", which never equals "1").
    spelled = "0" + first["model_version"]
    assert tracking.set_champion(settings, spelled) == first["model_version"]
    assert tracking.champion_history(settings)[-1] == first["model_version"]
    with pytest.raises(ModelNotFoundError, match="nothing to roll back"):
        tracking.rollback_champion(settings)


def _damage_network(settings, version: str) -> None:  # type: ignore[no-untyped-def]
    """Truncate a registered version's network weights, as a full disk or a bad copy would."""
    model_id = tracking.get_version(settings, version).source.removeprefix("models:/")
    (weights,) = (settings.artifact_root / "models" / model_id).rglob("network.pt")
    weights.write_bytes(weights.read_bytes()[:100])


def test_a_damaged_model_is_named_and_never_made_champion(
    prefect_harness,
    small_training_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.training import training_flow

    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "state"))
    first = training_flow(str(small_training_csv), show_progress=False)["model_version"]
    settings = load_settings()
    _damage_network(settings, first)
    with pytest.raises(ModelDamagedError, match="cannot be loaded, its files are damaged"):
        tracking.load_diagnoser(settings)
    code, _, err = run_cli(
        ["predict", str(small_training_csv), "-o", str(tmp_path / "out.csv")], capsys, monkeypatch
    )
    assert code == 3 and "damaged" in err and not (tmp_path / "out.csv").exists()

    # Training goes on: the gate replaces a champion it cannot load.
    second = training_flow(str(small_training_csv), show_progress=False)
    assert second["promoted"] and "cannot be loaded" in second["gate_reason"]
    # The damaged version never gets the alias back, by hand or by rollback.
    with pytest.raises(ModelNotFoundError, match="damaged"):
        tracking.set_champion(settings, first)
    with pytest.raises(ModelNotFoundError, match="damaged"):
        tracking.rollback_champion(settings)
    assert tracking.champion(settings).version == second["model_version"]
    code, _, err = run_cli(["promote", first], capsys, monkeypatch)
    assert code == 3 and "damaged" in err
    assert tracking.champion(settings).version == second["model_version"]


def test_a_gate_that_fails_leaves_a_verdict_on_the_version(
    prefect_harness, small_training_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.training import training_flow
    from systemhealer import pipeline

    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "state"))

    def broken(*_: object) -> None:
        raise RuntimeError("registry unreachable")

    monkeypatch.setattr(pipeline, "champion_scores", broken)
    with pytest.raises(RuntimeError, match="registry unreachable"):
        training_flow(str(small_training_csv), show_progress=False)
    settings = load_settings()
    (version,) = tracking.list_versions(settings)
    assert (
        version.tags["gate"] == "failed" and "registry unreachable" in version.tags["gate_reason"]
    )
    assert tracking.champion(settings) is None


def test_a_model_trained_without_some_fault_classes_never_replaces_the_champion(
    prefect_harness, small_training_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scored on rows of two classes, a two-class model looks as good as the champion; it
    cannot diagnose the other four, so the gate keeps the champion."""
    import pandas as pd

    from flows.training import training_flow

    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "state"))
    first = training_flow(str(small_training_csv), show_progress=False)
    two_classes = tmp_path / "two_classes.csv"
    frame = pd.read_csv(small_training_csv)
    frame[frame["label"] <= 1].to_csv(two_classes, index=False)
    second = training_flow(str(two_classes), show_progress=False)
    assert not second["promoted"]
    assert "fault class(es) 2, 3, 4, 5" in second["gate_reason"]
    assert tracking.champion(load_settings()).version == first["model_version"]


def test_a_hand_promotion_waits_for_a_gate_that_is_judging(
    prefect_harness, small_training_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate holds the champion lock from reading the champion to moving the alias: a
    promotion by hand meanwhile waits, then applies, instead of being overwritten by a gate
    that judged against the champion it replaced (found by ops QA: a lost update)."""
    from flows.training import training_flow
    from systemhealer import pipeline

    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("SYSTEMHEALER_TRAINING__MAX_EPOCHS", "2")
    first = training_flow(str(small_training_csv), show_progress=False)["model_version"]
    second = training_flow(str(small_training_csv), show_progress=False)["model_version"]
    settings = load_settings()
    tracking.set_champion(settings, first)

    judged_against, hand, moved = [], [], []
    real_scores = pipeline.champion_scores

    def scores_then_a_hand_promotion(prepared, settings):  # type: ignore[no-untyped-def]
        found = real_scores(prepared, settings)
        judged_against.append(found[0])
        promotion = threading.Thread(
            target=lambda: moved.append(tracking.set_champion(settings, second))
        )
        promotion.start()
        promotion.join(2.0)
        hand.append((promotion, promotion.is_alive()))
        return found

    monkeypatch.setattr(pipeline, "champion_scores", scores_then_a_hand_promotion)
    third = training_flow(str(small_training_csv), show_progress=False)
    ((promotion, waited),) = hand
    promotion.join(60)
    assert waited, "the promotion by hand did not wait for the gate"
    assert judged_against == [first] and moved == [second]
    assert tracking.champion(settings).version == second  # the later move stands
    history = tracking.champion_history(settings)
    expected = [third["model_version"], second] if third["promoted"] else [first, second]
    assert history[-2:] == expected
