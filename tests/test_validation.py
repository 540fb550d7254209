from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from systemhealer.config import DataSettings
from systemhealer.data import KPI_FEATURES
from systemhealer.validation import ChunkedValidation, DataProfile, validate_frame


@pytest.fixture(scope="module")
def frame(small_training_frame: pd.DataFrame) -> pd.DataFrame:
    return small_training_frame.copy()


def check(raw: pd.DataFrame, require_label: bool = True, profile: DataProfile | None = None):
    report, _ = validate_frame(raw, "test", DataSettings(), require_label, profile)
    return report


def test_real_training_data_is_valid(frame: pd.DataFrame) -> None:
    report = check(frame)
    assert report.ok, report.to_text()
    assert report.checks_run > 100


def test_each_blocking_problem_is_named(frame: pd.DataFrame) -> None:
    bad = frame.copy()
    bad["feature3"] = bad["feature3"].astype(object)
    bad.loc[4, "feature3"] = "oops"
    bad.loc[2, "label"] = 9
    bad.loc[7, "feature10"] = np.inf
    report = check(bad)
    assert not report.ok
    found = {(issue.check, issue.column) for issue in report.errors}
    assert found == {("type", "feature3"), ("label_set", "label"), ("infinite", "feature10")}
    by_check = {issue.check: issue for issue in report.errors}
    assert by_check["type"].rows == [4] and "oops" in by_check["type"].message
    assert by_check["label_set"].rows == [2] and "9" in by_check["label_set"].message
    assert by_check["infinite"].rows == [7]
    assert str(bad["sample_id"].iloc[7]) in by_check["infinite"].message


def test_missing_columns_and_missing_label(frame: pd.DataFrame) -> None:
    report = check(frame.drop(columns=["feature20", "label"]))
    assert [i.check for i in report.errors] == ["schema"]
    assert "feature20" in report.errors[0].message and "label" in report.errors[0].message
    # Without the label the same file is fine for scoring, apart from the absent feature.
    assert "label" not in check(frame.drop(columns=["label"]), require_label=False).summary()


def test_text_labels_block_training_but_only_warn_when_diagnosing(frame: pd.DataFrame) -> None:
    named = frame.astype({"label": object})
    named.loc[3, "label"] = "disk fault"
    training = check(named)
    # Said once, as text: not also as a missing label (found by web QA).
    assert [(i.check, i.column, i.rows) for i in training.errors] == [("type", "label", [3])]
    named.loc[5, "label"] = None  # a label really missing is said as such, alone
    assert [(i.check, i.rows) for i in check(named).errors] == [("type", [3]), ("missing", [5])]
    diagnosing = check(named, require_label=False)
    assert diagnosing.ok, diagnosing.to_text()
    assert [(i.check, i.column) for i in diagnosing.warnings] == [("type", "label")]
    # A label column spelled otherwise is not read as one, and the report says so.
    renamed = check(frame.rename(columns={"label": "Label"}), require_label=False)
    assert renamed.ok and [i.check for i in renamed.warnings] == ["label_name"]
    assert "name it 'label'" in renamed.warnings[0].message


def test_repeated_sample_ids_are_a_warning(frame: pd.DataFrame) -> None:
    incidents = frame.copy()
    assert not any(i.check == "repeated_ids" for i in check(incidents).issues)
    incidents["sample_id"] = incidents["sample_id"].astype(object)
    incidents.loc[[3, 7], "sample_id"] = incidents.loc[1, "sample_id"]
    incidents.loc[[20, 21], "sample_id"] = None  # missing ids are not repeated ones
    report = check(incidents)
    (issue,) = [i for i in report.issues if i.check == "repeated_ids"]
    assert report.ok and not issue.blocking
    assert "1 sample_id(s) appear more than once, on 3 rows" in issue.message


def test_row_count_and_class_count(frame: pd.DataFrame) -> None:
    assert {i.check for i in check(frame.head(10)).errors} >= {"row_count"}
    single = frame.copy()
    single["label"] = 3
    assert [i.check for i in check(single).errors] == ["fault_classes"]
    nulls = frame.copy()
    nulls.loc[[1, 5], "label"] = np.nan
    issue = next(i for i in check(nulls).errors if i.check == "missing")
    assert issue.rows == [1, 5]


def test_drift_against_profile_is_a_warning(frame: pd.DataFrame) -> None:
    profile = DataProfile.learn(frame)
    shifted = frame.drop(columns=["label"]).copy()
    shifted["feature12"] = shifted["feature12"] * 1e6
    shifted.loc[: len(shifted) // 2, "feature40"] = np.nan
    report = check(shifted, require_label=False, profile=profile)
    assert report.ok
    warned = {(i.check, i.column) for i in report.warnings}
    assert ("drift", "feature12") in warned
    assert ("missing_drift", "feature40") in warned
    assert ("drift", "feature13") not in warned


def _chunks(frame: pd.DataFrame, rows: int) -> list[pd.DataFrame]:
    return [frame.iloc[i : i + rows] for i in range(0, len(frame), rows)]


def test_a_file_validated_in_chunks_gets_the_report_of_the_whole(frame: pd.DataFrame) -> None:
    """Text in the labels and rows without KPIs in several chunks are counted over the file,
    and the drift warnings come from all its rows, not from one chunk."""
    profile = DataProfile.learn(frame)
    incidents = frame.astype({"label": object})
    incidents.loc[[10, 450], list(KPI_FEATURES)] = np.nan  # the first finding is a later one's
    incidents.loc[[135, 136, 300, 301, 302, 880], "label"] = "disk fault"
    incidents["feature12"] = incidents["feature12"] * 1e6
    incidents.loc[400:, "feature40"] = np.nan  # missing in most rows, none in the first chunks
    whole, _ = validate_frame(incidents, "f.csv", DataSettings(), False, profile, "training")
    chunked = ChunkedValidation("f.csv", DataSettings(), profile, "training")
    for chunk in _chunks(incidents, 128):
        chunked.check(chunk)
    report = chunked.finish()
    assert report.ok and whole.ok
    assert [asdict(i) for i in report.issues] == [asdict(i) for i in whole.issues]  # in order
    assert (report.rows, report.columns, report.checks_run) == (
        whole.rows,
        whole.columns,
        whole.checks_run,
    )
    by_key = {(i.check, i.column): i for i in report.issues}
    assert by_key[("type", "label")].count == 6
    assert by_key[("type", "label")].rows == [135, 136, 300, 301, 302]
    assert ("missing_drift", "feature40") in by_key and ("drift", "feature12") in by_key


def test_ids_repeated_across_chunks_are_a_warning_too(frame: pd.DataFrame) -> None:
    """A file diagnosed in chunks (the web page's jobs) is checked for repeated sample ids
    over the whole file, as one validated whole is (without naming them)."""
    incidents = frame.drop(columns=["label"]).astype({"sample_id": object})
    incidents.loc[[3, 700], "sample_id"] = incidents.loc[500, "sample_id"]  # 3 chunks apart
    incidents.loc[[20, 21], "sample_id"] = None  # missing ids are not repeated ones
    whole, _ = validate_frame(incidents, "f.csv", DataSettings(), False)
    chunked = ChunkedValidation("f.csv", DataSettings())
    for chunk in _chunks(incidents.rename(columns={"sample_id": " sample_id"}), 256):
        chunked.check(chunk)  # a padded header name is read as validate_frame reads it
    (found,) = [i for i in chunked.finish().issues if i.check == "repeated_ids"]
    (expected,) = [i for i in whole.issues if i.check == "repeated_ids"]
    assert not found.blocking and chunked.ok
    assert found.message.startswith("1 sample_id(s) appear more than once, on 3 rows:")
    assert expected.message.startswith("1 sample_id(s) appear more than once, on 3 rows (e.g.")


def test_blocking_problems_in_several_chunks_are_counted_over_the_file(
    frame: pd.DataFrame,
) -> None:
    incidents = frame.drop(columns=["label"]).astype({"feature3": object})
    incidents.loc[[150, 700], "feature3"] = "oops"
    incidents.loc[[20, 720], "feature10"] = np.inf
    whole, _ = validate_frame(incidents, "f.csv", DataSettings(), False)
    chunked = ChunkedValidation("f.csv", DataSettings())
    for chunk in _chunks(incidents, 256):
        chunked.check(chunk)
    assert not chunked.ok and not chunked.unreadable
    assert [asdict(i) for i in chunked.finish().issues] == [asdict(i) for i in whole.issues]
    assert [(i.check, i.rows, i.count) for i in whole.errors] == [
        ("type", [150, 700], 2),
        ("infinite", [20, 720], 2),
    ]
    assert "rows 151, 701" in chunked.report.summary()


def test_true_and_false_are_text_not_numbers(frame: pd.DataFrame) -> None:
    """pandas reads a column of True/False as booleans; they are no KPI values, in a file read
    whole or in chunks (where one chunk may hold nothing else)."""
    incidents = frame.drop(columns=["label"])
    incidents["feature5"] = incidents["feature5"] > incidents["feature5"].median()
    whole, _ = validate_frame(incidents, "f.csv", DataSettings(), False)
    assert [(i.check, i.column) for i in whole.errors] == [("type", "feature5")]
    assert "'True'" in whole.errors[0].message or "'False'" in whole.errors[0].message


def test_a_file_without_the_columns_is_refused_once_and_counted_to_its_end(
    frame: pd.DataFrame,
) -> None:
    incidents = frame.drop(columns=["feature7"])
    whole, _ = validate_frame(incidents, "f.csv", DataSettings(), False)
    chunked = ChunkedValidation("f.csv", DataSettings())
    for chunk in _chunks(incidents, 100):
        chunked.check(chunk)
    assert chunked.unreadable and "feature7" in chunked.report.summary()
    assert [asdict(i) for i in chunked.finish().issues] == [asdict(i) for i in whole.issues]
    assert chunked.report.rows == whole.rows == len(incidents)


def test_names_and_ids_from_the_file_are_cut_short_in_messages(frame: pd.DataFrame) -> None:
    """A file without line breaks is one huge column name; an id can be megabytes: the
    messages name them in 40 characters, not by echoing the file back."""
    report = check(frame.drop(columns=["feature20"]).assign(**{"a" * 100_000: 1.0}))
    (schema,) = report.errors
    assert "unexpected columns: aaa" in schema.message and len(schema.message) < 300
    bad = frame.copy()
    bad["sample_id"] = bad["sample_id"].astype(object)
    bad.loc[7, "sample_id"] = "1" * 100_000
    bad.loc[7, "feature10"] = np.inf
    (infinite,) = check(bad).errors
    assert infinite.rows == [7] and "1111…" in infinite.message and len(infinite.message) < 300
