"""Property-based tests (hypothesis) of everything that parses input: numeric coercion, file
reading, validation, JSON incidents, names and ids that become paths, spreadsheet-safe CSV.

The property is always the same promise: any input gets either a result that honours the data
contract or a SystemHealerError that says what is wrong — never another exception.
"""

from __future__ import annotations

import csv
import gzip
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from systemhealer.config import FAULT_CLASSES, DataSettings, load_settings
from systemhealer.data import (
    KPI_FEATURES,
    coerce_numeric,
    read_incidents,
    spreadsheet_safe,
    text_to_numbers,
)
from systemhealer.errors import DataValidationError, SystemHealerError
from systemhealer.incidents import IncidentError, parse_incidents
from systemhealer.scoring import atomic_write

QUICK = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
SLOW = settings(
    max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
MISSING_SPELLINGS = ("", "nan", "NaN", "na", "N/A", "null", "None", "  ")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
not_a_number = st.text(min_size=1, max_size=12).map(lambda s: "x" + s)  # never parses
cells = st.one_of(
    finite,
    st.integers(-(10**15), 10**15),
    finite.map(repr),
    st.sampled_from(MISSING_SPELLINGS),
    not_a_number,
    st.none(),
    st.just(float("nan")),
)


@QUICK
@given(st.lists(cells, min_size=1, max_size=40))
def test_text_to_numbers_parses_numbers_and_flags_exactly_the_text(values: list[Any]) -> None:
    series = pd.Series(values, dtype=object)
    numbers, bad = text_to_numbers(series)
    assert numbers.dtype == np.float64 and len(numbers) == len(values)
    assert bad.dtype == bool and len(bad) == len(values)
    for value, number, flagged in zip(values, numbers, bad, strict=True):
        if isinstance(value, str) and value.startswith("x"):
            assert flagged and math.isnan(number)
        elif (
            (
                isinstance(value, str)
                and value.strip().lower() in {"", "nan", "na", "n/a", "null", "none"}
            )
            or value is None
            or (isinstance(value, float) and math.isnan(value))
        ):
            assert not flagged and math.isnan(number)
        else:
            assert not flagged
            assert number == pytest.approx(float(value), rel=1e-12, abs=0)


@QUICK
@given(st.lists(cells, min_size=1, max_size=30))
def test_coerce_numeric_reports_every_text_cell_of_a_column(values: list[Any]) -> None:
    frame = pd.DataFrame({"feature0": pd.Series(values, dtype=object), "other": "kept"})
    coerced, problems = coerce_numeric(frame, ["feature0", "absent_column"])
    assert coerced["feature0"].dtype == np.float64
    assert coerced["other"].tolist() == ["kept"] * len(values)
    text_rows = [i for i, v in enumerate(values) if isinstance(v, str) and v.startswith("x")]
    if not text_rows:
        assert problems == []
    else:
        (problem,) = problems
        assert problem.column == "feature0" and problem.count == len(text_rows)
        assert problem.rows == text_rows[:5]


@SLOW
@given(
    st.one_of(
        st.binary(max_size=3000),
        st.text(max_size=2000).map(str.encode),
        st.lists(st.lists(st.text(max_size=8), min_size=1, max_size=6), max_size=20).map(
            lambda rows: "\n".join(",".join(r) for r in rows).encode()
        ),
    ),
    st.sampled_from([".csv", ".csv.gz", ".parquet", ".gz"]),
)
# A truncated download (EOFError once escaped as an internal error) and a blank file.
@example(gzip.compress(b"feature0,feature1\n" + b"1,2\n" * 500)[:40], ".csv.gz")
@example(b"\n\n", ".csv")
def test_read_incidents_reads_or_refuses_any_bytes(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"incidents{suffix}"
        path.write_bytes(content)
        try:
            frame = read_incidents(path)
        except DataValidationError as exc:
            assert str(path) in str(exc)
        else:
            assert isinstance(frame, pd.DataFrame)


feature_values = st.one_of(
    finite, st.none(), st.just(float("inf")), st.just("text"), st.just("1e3"), st.just("")
)


@st.composite
def incident_frames(draw: st.DrawFn) -> pd.DataFrame:
    """Frames near the contract: some columns dropped or renamed, odd values, odd labels."""
    rows = draw(st.integers(0, 8))
    columns = list(KPI_FEATURES)
    dropped = draw(st.sets(st.sampled_from(columns), max_size=2))
    data: dict[str, Any] = {}
    for column in columns:
        if column in dropped:
            continue
        if draw(st.integers(0, 25)) == 0:  # a few columns get odd values
            data[column] = draw(st.lists(feature_values, min_size=rows, max_size=rows))
        else:
            data[column] = draw(st.lists(finite, min_size=rows, max_size=rows))
    if draw(st.booleans()):
        labels = st.one_of(st.sampled_from(FAULT_CLASSES), st.integers(-3, 9), st.just("x"))
        data["label"] = draw(st.lists(labels, min_size=rows, max_size=rows))
    return pd.DataFrame(data, index=range(rows))


@SLOW
@given(incident_frames(), st.booleans())
def test_validation_accepts_only_what_the_contract_allows(
    frame: pd.DataFrame, require_label: bool
) -> None:
    from systemhealer.validation import validate_frame

    data = DataSettings(min_training_rows=2)
    report, coerced = validate_frame(frame, "fuzz", data, require_label)
    assert report.rows == len(frame)
    if not report.ok:
        assert report.errors and all(issue.message for issue in report.errors)
        return
    features = coerced[list(KPI_FEATURES)]
    assert all(features[c].dtype == np.float64 for c in KPI_FEATURES)
    assert not np.isinf(features.to_numpy()).any()
    if require_label:
        assert len(coerced) >= data.min_training_rows
        assert set(coerced["label"].astype(int)) <= set(FAULT_CLASSES)


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), finite, st.just(float("inf")), st.text(max_size=10)
)
json_values = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=10), children, max_size=4),
    ),
    max_leaves=12,
)
incident_dicts = st.dictionaries(
    st.sampled_from([*KPI_FEATURES[:6], "sample_id", "label", "unknown"]), json_leaf, max_size=8
)


@QUICK
@given(st.one_of(json_values, incident_dicts, st.lists(incident_dicts, max_size=5)))
def test_json_incidents_parse_or_get_a_4xx_error(payload: Any) -> None:
    for single in (False, True):
        try:
            rows = parse_incidents(payload, max_incidents=3, single=single)
        except IncidentError as exc:
            assert 400 <= exc.http_status < 500 and str(exc)
        else:
            assert rows.features.shape == (len(rows), len(KPI_FEATURES))
            assert not np.isinf(rows.features).any()
            assert (~np.isnan(rows.features)).any(axis=1).all()


@QUICK
@given(st.dictionaries(st.sampled_from(KPI_FEATURES), finite, min_size=1))
def test_valid_incidents_keep_their_values(incident: dict[str, float]) -> None:
    rows = parse_incidents(incident, max_incidents=1, field="incident", single=True)
    for name, value in incident.items():
        assert rows.features[0, KPI_FEATURES.index(name)] == value


@QUICK
@given(st.lists(st.one_of(st.text(max_size=20), st.integers(), finite), min_size=1, max_size=20))
def test_csv_outputs_never_start_a_text_cell_with_a_formula(ids: list[Any]) -> None:
    frame = pd.DataFrame(
        {"sample_id": pd.Series(ids, dtype=object), "predicted_label": 1, "confidence": -0.5}
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "out.csv"
        atomic_write(frame, path)  # how every diagnoses CSV is written
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    assert rows[0] == ["sample_id", "predicted_label", "confidence"]
    for (cell, *_), original in zip(rows[1:], ids, strict=True):
        text = str(original)
        if text.startswith(FORMULA_START):
            assert cell == "'" + text  # neutralised, and still readable
        else:
            assert not cell.startswith(FORMULA_START) or cell == text
    assert spreadsheet_safe(frame)["confidence"].tolist() == [-0.5] * len(ids)  # numbers untouched


@QUICK
@given(st.text(max_size=80))
def test_deployment_names_never_leave_their_folder(name: str) -> None:
    from systemhealer.deployments import check_name

    settings = load_settings()
    try:
        checked = check_name(name)
    except DataValidationError:
        return
    folder = settings.deployments_dir.resolve()
    assert (folder / f"{checked}.parquet").resolve().parent == folder


@QUICK
@given(st.text(max_size=120))
def test_drift_report_ids_never_leave_their_folder(report_id: str) -> None:
    from systemhealer.drift import load_report

    assume(report_id != "latest")
    try:
        load_report(load_settings(), report_id)
    except SystemHealerError as exc:  # invalid, or valid and absent
        assert "drift report" in str(exc)
