"""Security basics: loopback by default, no pickle from user input, safe YAML, spreadsheet-safe
CSV outputs end to end (diagnoses and the bad-rows side file)."""

from __future__ import annotations

import ast
import csv
import inspect
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from systemhealer.config import Settings
from systemhealer.data import KPI_FEATURES

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "src" / "systemhealer").rglob("*.py"), *(REPO / "flows").glob("*.py")])
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

# Unpickling is allowed only of bytes this process made itself, never of anything a user sent.
PICKLE_ALLOWED = {
    # The batch-scoring flow pickles the loaded champion once and hands the bytes to its own
    # Dask tasks (flows/scoring.py: `job = pickle.dumps((model, settings))`).
    ("flows/scoring.py", "pickle.loads"),
}
UNSAFE_CALLS = {
    "pickle.load",
    "pickle.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "joblib.load",
    "dill.load",
    "dill.loads",
    "pd.read_pickle",
    "pandas.read_pickle",
    "mlflow.pyfunc.load_model",  # runs the logged code: the service loads JSON + weights
    "yaml.load",
    "yaml.unsafe_load",
    "marshal.loads",
    "shelve.open",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unsafe_loads() -> list[str]:
    found = []
    for path in SOURCES:
        relative = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(), filename=relative)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name in UNSAFE_CALLS and (relative, name) not in PICKLE_ALLOWED:
                found.append(f"{relative}:{node.lineno} {name}")
            if name == "torch.load":
                weights_only = keywords.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append(f"{relative}:{node.lineno} torch.load without weights_only=True")
            if name in ("np.load", "numpy.load"):
                allow = keywords.get("allow_pickle")
                if isinstance(allow, ast.Constant) and allow.value:
                    found.append(f"{relative}:{node.lineno} np.load(allow_pickle=True)")
    return found


def test_no_pickle_is_loaded_from_user_input() -> None:
    assert SOURCES and unsafe_loads() == []


def test_servers_bind_loopback_by_default() -> None:
    from systemhealer.orchestration import start_prefect_server

    assert Settings().serving.host == "127.0.0.1"
    assert inspect.signature(start_prefect_server).parameters["host"].default == "127.0.0.1"
    # Nothing in the code, the Makefile or the scripts opens a port on every interface.
    for path in [*SOURCES, REPO / "Makefile", *(REPO / "scripts").glob("*"), REPO / ".ci" / "run"]:
        if path.is_file():
            assert "0.0.0.0" not in path.read_text(), path


@pytest.mark.integration
def test_predict_outputs_are_spreadsheet_safe(trained_state, tmp_path: Path) -> None:
    frame = pd.read_csv(trained_state.train_csv).drop(columns=["label"]).head(6)
    frame["sample_id"] = [
        '=HYPERLINK("http://x","y")',
        "+1+1",
        "-2+3",
        "@SUM(A1)",
        "ok\r=cmd|' /C calc'!A0",
        "plain",
    ]
    frame = frame.astype({"feature5": object})
    frame.loc[1, "feature5"] = "=1+2"  # a bad row: goes to the side file with its text
    source = tmp_path / "hostile.csv"
    frame.to_csv(source, index=False)
    output = tmp_path / "diagnoses.csv"
    env = {"SYSTEMHEALER_HOME": str(trained_state.home)}
    command = [sys.executable, "-m", "systemhealer.cli", "predict", str(source)]
    done = subprocess.run(
        [*command, "--output", str(output), "--on-bad-rows", "skip", "--no-progress"],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    written = [output, *tmp_path.glob("*.bad-rows.csv")]
    assert len(written) == 2, written
    for path in written:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        assert len(rows) > 1
        for row in rows[1:]:
            for cell in row:
                is_number = cell.lstrip("-+").replace(".", "", 1).replace("e-", "", 1).isdigit()
                assert is_number or not cell.startswith(FORMULA_START), (path.name, cell)
    diagnosed = pd.read_csv(output, dtype={"sample_id": str})
    assert len(diagnosed) == 5 and '\'=HYPERLINK("http://x","y")' in set(diagnosed.sample_id)
    assert set(KPI_FEATURES).isdisjoint(diagnosed.columns)
