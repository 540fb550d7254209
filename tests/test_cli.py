"""The command line as a user meets it: exit codes and one-line errors, champion untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from systemhealer import tracking
from systemhealer.cli import main
from systemhealer.config import load_settings
from systemhealer.serve import free_port, stop_service, wait_ready


def run_cli(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["systemhealer", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def broken_files(folder: Path, frame: pd.DataFrame) -> dict[str, Path]:
    """One file per kind of breakage a user can hand us."""
    files: dict[str, Path] = {}

    def save(name: str, data: pd.DataFrame, **kwargs: object) -> None:
        files[name] = folder / f"{name}.csv"
        data.to_csv(files[name], index=False, **kwargs)

    text = frame.copy()
    text["feature3"] = text["feature3"].astype(object)
    text.loc[4, "feature3"] = "oops"
    save("text_in_numeric", text)
    unknown = frame.copy()
    unknown.loc[2, "label"] = 9
    save("unknown_label", unknown)
    save("header_only", frame.head(0))
    save("semicolons", frame, sep=";")
    single = frame.copy()
    single["label"] = 2
    save("single_class", single)
    infinite = frame.copy()
    infinite.loc[7, "feature10"] = np.inf
    save("infinite", infinite)
    save("missing_column", frame.drop(columns=["feature20"]))
    files["empty"] = folder / "empty.csv"
    files["empty"].write_bytes(b"")
    files["binary"] = folder / "binary.csv"
    files["binary"].write_bytes(bytes(range(256)) * 40)
    return files


EXPECTED = {
    "text_in_numeric": "'feature3' must be numeric",
    "unknown_label": "outside [0, 1, 2, 3, 4, 5]",
    "header_only": "0 rows",
    "semicolons": "semicolons",
    "single_class": "1 fault class",
    "infinite": "'feature10' has 1 infinite",
    "missing_column": "missing columns: feature20",
    "empty": "file is empty",
    "binary": "binary content",
}


def test_validate_names_every_problem(tmp_path, small_training_frame, capsys, monkeypatch) -> None:
    for name, path in broken_files(tmp_path, small_training_frame.head(200)).items():
        code, out, _ = run_cli(["validate", str(path), "--training"], capsys, monkeypatch)
        assert code == 1, name
        assert "INVALID" in out and EXPECTED[name] in out, (name, out)
    good = tmp_path / "good.csv"
    small_training_frame.to_csv(good, index=False)
    code, out, _ = run_cli(["validate", str(good)], capsys, monkeypatch)
    assert code == 0 and out.startswith("VALID"), out


def test_bad_settings_and_arguments_are_usage_errors(
    tmp_path, small_training_frame, capsys, monkeypatch
) -> None:
    """Exit 2 (or the error's own code) and one line, never an 'internal error'."""
    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "empty-state"))
    code, _, err = run_cli(["models", "--config", str(tmp_path)], capsys, monkeypatch)
    assert code == 2 and "cannot be read" in err, err
    monkeypatch.setenv("SYSTEMHEALER_TRAINING__HIDDEN_SIZES", "[64,")
    code, _, err = run_cli(["models"], capsys, monkeypatch)
    assert code == 2 and "invalid settings in the environment" in err, err
    monkeypatch.delenv("SYSTEMHEALER_TRAINING__HIDDEN_SIZES")
    code, _, err = run_cli(["serve", "--port", "99999"], capsys, monkeypatch)
    assert code == 2 and "--port" in err, err
    tiny = tmp_path / "tiny.csv"
    small_training_frame.groupby("label").head(10).to_csv(tiny, index=False)
    code, _, err = run_cli(["crossval", str(tiny), "--folds", "20"], capsys, monkeypatch)
    assert code not in (0, 70) and "20 folds need 20 distinct incidents" in err, err
    # Nothing to compare a file with is an error, not "no drift".
    code, _, err = run_cli(["drift", str(tiny), "--fail-on-drift"], capsys, monkeypatch)
    assert code == 3 and "nothing checked: no champion" in err, err
    assert "internal error" not in err


@pytest.mark.integration
def test_train_refuses_broken_files_and_keeps_the_champion(
    trained_state, tmp_path, small_training_frame, capsys, monkeypatch
) -> None:
    settings = load_settings()
    before = tracking.champion(settings)
    versions_before = len(tracking.list_versions(settings))
    for name, path in broken_files(tmp_path, small_training_frame.head(200)).items():
        code, out, err = run_cli(["train", str(path), "--no-progress"], capsys, monkeypatch)
        assert code == 1, (name, out, err)
        assert err.startswith("error: ") and EXPECTED[name] in err, (name, err)
        assert "Traceback" not in err + out
    assert tracking.champion(settings) == before
    assert len(tracking.list_versions(settings)) == versions_before


@pytest.mark.integration
def test_predict_cli_and_bad_input(
    trained_state, tmp_path, unlabelled_frame, capsys, monkeypatch
) -> None:
    source = tmp_path / "incidents.csv"
    unlabelled_frame.head(50).drop(columns=["sample_id"]).to_csv(source, index=False)
    out_file = tmp_path / "diagnoses.csv"
    code, out, err = run_cli(
        ["predict", str(source), "--output", str(out_file)], capsys, monkeypatch
    )
    assert code == 0, out
    assert "scoring:" not in err  # no progress bar when standard error is not a terminal
    result = pd.read_csv(out_file)
    assert result["sample_id"].tolist() == list(range(50))  # row numbers when there is no id
    assert "no sample_id column" in out  # and the output says so
    assert "existed" not in out
    code, out, _ = run_cli(
        ["predict", str(source), "--output", str(out_file), "--json"], capsys, monkeypatch
    )
    assert code == 0 and json.loads(out)["replaced_output"] is True
    code, out, _ = run_cli(["predict", str(source), "-o", str(out_file)], capsys, monkeypatch)
    assert code == 0 and f"{out_file} existed; the earlier diagnoses in it are replaced" in out
    code, _, err = run_cli(
        ["predict", str(source), "-o", str(tmp_path / "again.csv"), "--progress"],
        capsys,
        monkeypatch,
    )
    assert code == 0 and "scoring:" in err  # asked for, it is shown anyway
    # An output where nothing can be written is named before any work (exit 2).
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    for command in (["predict", str(source)], ["evaluate", str(source)]):
        code, _, err = run_cli([*command, "-o", str(blocked / "out.csv")], capsys, monkeypatch)
        assert code == 2 and f"{blocked / 'out.csv'}: cannot be written there" in err, err
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\x00\x01garbage")
    code, _, err = run_cli(
        ["predict", str(bad), "--output", str(tmp_path / "x.csv")], capsys, monkeypatch
    )
    assert code == 1 and "binary" in err and not (tmp_path / "x.csv").exists()
    code, _, err = run_cli(
        [
            "predict",
            str(source),
            "--output",
            str(tmp_path / "y.csv"),
            "--model-uri",
            "models:/fault-diagnosis/999",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 3 and "999" in err


@pytest.mark.integration
def test_bento_builds_from_any_working_directory(
    trained_state, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout: bentoml must still find the wheel
    code, out, err = run_cli(["bento"], capsys, monkeypatch)
    assert code == 0, err
    tag = out.split("built Bento ", 1)[1].split()[0]
    bentos = trained_state.home / "bentoml" / "bentos" / tag.split(":")[0]
    assert (bentos / tag.split(":")[1] / "bento.yaml").exists()
    assert list(tmp_path.iterdir()) == []  # nothing written where it was run

    # The command it prints serves the packed model, even where no registry is at hand.
    command = out.split("serve it with `", 1)[1].split("`", 1)[0].split()
    env = dict(os.environ, SYSTEMHEALER_HOME=str(tmp_path / "elsewhere"))
    while "=" in command[0]:
        name, value = command.pop(0).split("=", 1)
        env[name] = value
    assert command[:3] == ["bentoml", "serve", tag]
    port = free_port()
    bentoml = Path(sys.executable).parent / "bentoml"
    service = subprocess.Popen(
        [str(bentoml), "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp_path, start_new_session=True,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}", service, timeout=180)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/model_info", timeout=30) as response:
            info = json.load(response)
        assert "packaged in the Bento" in info["alias"], info
    finally:
        stop_service(service)
