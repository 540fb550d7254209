"""Data validation with Great Expectations: blocking contract checks and drift warnings.

This module is the only one that talks to Great Expectations. The contract (schema, types,
label set, row count, class count, no infinities) blocks a run; a profile learned from the
training data (value ranges, missing fractions) flags drift in new data as warnings.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from systemhealer.config import FAULT_CLASSES, DataSettings
from systemhealer.data import (
    KPI_FEATURES,
    LABEL,
    SAMPLE_ID,
    clipped,
    coerce_numeric,
    label_columns,
    missing_columns,
    read_incidents,
    text_to_numbers,
)
from systemhealer.errors import DataValidationError

_FINITE = float(np.finfo(np.float64).max)


@dataclass
class ValidationIssue:
    """One finding: which check, which column, which rows, blocking or a warning."""

    check: str
    message: str
    blocking: bool
    column: str | None = None
    rows: list[int] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    """What validation found in one file or frame."""

    source: str
    rows: int
    columns: int
    issues: list[ValidationIssue] = field(default_factory=list)
    checks_run: int = 0

    @property
    def ok(self) -> bool:
        return not any(issue.blocking for issue in self.issues)

    @property
    def errors(self) -> list[ValidationIssue]:
        return [i for i in self.issues if i.blocking]

    @property
    def warnings(self) -> list[ValidationIssue]:
        return [i for i in self.issues if not i.blocking]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """First blocking problem in one line (for errors and exit messages)."""
        if self.ok:
            return f"{self.source}: valid ({self.rows} rows, {len(self.warnings)} warnings)"
        first = self.errors[0]
        more = len(self.errors) - 1
        return f"{self.source}: {first.message}" + (
            f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        )

    def to_text(self, max_warnings: int = 15) -> str:
        """A readable report: errors first, then drift warnings."""
        verdict = "VALID" if self.ok else "INVALID"
        lines = [
            f"{verdict}: {self.source} — {self.rows} rows, {self.columns} columns, "
            f"{self.checks_run} checks, {len(self.errors)} errors, {len(self.warnings)} warnings"
        ]
        for issue in self.errors:
            lines.append(f"  ERROR   [{issue.check}] {issue.message}")
        for issue in self.warnings[:max_warnings]:
            lines.append(f"  warning [{issue.check}] {issue.message}")
        if len(self.warnings) > max_warnings:
            lines.append(f"  … and {len(self.warnings) - max_warnings} more warnings")
        return "\n".join(lines)


@dataclass(frozen=True)
class DataProfile:
    """Per-feature value ranges and missing fractions learned from training data."""

    low: dict[str, float]
    high: dict[str, float]
    missing_fraction: dict[str, float]
    rows: int
    # Per-feature distribution sketches for drift distances (see systemhealer.drift); empty in
    # models trained before they existed.
    distributions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def learn(cls, features: pd.DataFrame) -> DataProfile:
        from systemhealer.drift import sketch_features

        low, high, missing = {}, {}, {}
        for column in KPI_FEATURES:
            values = features[column]
            missing[column] = float(values.isna().mean())
            finite = values[np.isfinite(values)]
            if len(finite):
                low[column] = float(finite.quantile(0.005))
                high[column] = float(finite.quantile(0.995))
        return cls(
            low=low,
            high=high,
            missing_fraction=missing,
            rows=len(features),
            distributions=sketch_features(features),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> DataProfile:
        return cls(**payload)


def _row_refs(frame: pd.DataFrame, rows: list[int]) -> list[str]:
    if SAMPLE_ID not in frame.columns:
        return []
    return [clipped(frame[SAMPLE_ID].iloc[r]) for r in rows if r < len(frame)]


def _rows_text(rows: list[int], count: int) -> str:
    """Row numbers as a person counts them (``rows`` are 0-based positions in the file)."""
    shown = ", ".join(str(r + 1) for r in rows)
    return f"row{'s' if count > 1 else ''} {shown}" + (
        f" … ({count} rows)" if count > len(rows) else ""
    )


@cache
def load_great_expectations() -> Any:
    """The ``great_expectations`` module: it takes seconds to import, so only when validation
    really runs (or just before, to overlap the import with other work)."""
    import great_expectations as gx

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return gx


def _run_suite(frame: pd.DataFrame, expectations: list[Any]) -> list[Any]:
    """Run expectations over a frame in an ephemeral GX context; one result per expectation."""
    gx = load_great_expectations()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas("incidents")
        .add_dataframe_asset("incidents")
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name="incidents"))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = gx.ValidationDefinition(data=batch_definition, suite=suite, name="incidents")
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "partial_unexpected_count": 5},
    )
    return list(result.results)


def _contract_expectations(require_label: bool, settings: DataSettings) -> list[Any]:
    exp = load_great_expectations().expectations
    min_rows = settings.min_training_rows if require_label else 1
    expectations: list[Any] = [exp.ExpectTableRowCountToBeBetween(min_value=min_rows)]
    if require_label:
        expectations += [
            exp.ExpectColumnValuesToNotBeNull(column=LABEL),
            exp.ExpectColumnValuesToBeInSet(column=LABEL, value_set=list(FAULT_CLASSES)),
            exp.ExpectColumnUniqueValueCountToBeBetween(
                column=LABEL, min_value=settings.min_fault_classes
            ),
        ]
    return expectations


def _finite_check(features: pd.DataFrame, first_row: int = 0) -> list[ValidationIssue]:
    """No ±inf in any KPI feature, checked by GX over the cells in long form (one expectation
    for all 107 columns; per-column expectations cost ~50 ms each). Rows are named counting
    from ``first_row`` (the frame's first row in its file)."""
    values = features[list(KPI_FEATURES)].to_numpy(dtype=np.float64)
    cells = pd.DataFrame({"kpi_value": values.ravel()})
    exp = load_great_expectations().expectations
    (result,) = _run_suite(
        cells,
        [
            exp.ExpectColumnValuesToBeBetween(
                column="kpi_value", min_value=-_FINITE, max_value=_FINITE
            )
        ],
    )
    if result.success:
        return []
    flat = np.asarray(result.result.get("unexpected_index_list") or [], dtype=np.int64)
    rows, cols = np.divmod(flat, len(KPI_FEATURES))
    issues = []
    for col in np.unique(cols):
        column = KPI_FEATURES[int(col)]
        at = rows[cols == col]
        refs = _row_refs(features, [int(r) for r in at[:5]])
        shown = [int(r) + first_row for r in at[:5]]
        issues.append(_worded(ValidationIssue("infinite", "", True, column, shown, refs, len(at))))
    return issues


@dataclass
class DriftCounts:
    """Per KPI: rows, values present, values outside the profile's range. Counts of the chunks
    of a file add up to the whole file's, so its drift warnings need one chunk in memory."""

    profile: DataProfile
    rows: int = 0
    observed: np.ndarray = field(default_factory=lambda: np.zeros(len(KPI_FEATURES), np.int64))
    outside: np.ndarray = field(default_factory=lambda: np.zeros(len(KPI_FEATURES), np.int64))

    def add(self, features: pd.DataFrame) -> None:
        values = features[list(KPI_FEATURES)].to_numpy(dtype=np.float64)
        present = ~np.isnan(values)
        low = np.array([self.profile.low.get(c, np.nan) for c in KPI_FEATURES])
        high = np.array([self.profile.high.get(c, np.nan) for c in KPI_FEATURES])
        with np.errstate(invalid="ignore"):
            outside = present & ((values < low) | (values > high))
        self.rows += len(values)
        self.observed += present.sum(axis=0)
        self.outside += outside.sum(axis=0)

    def table(self) -> pd.DataFrame:
        """Per-feature drift statistics against the profile."""
        rows = []
        for j, column in enumerate(KPI_FEATURES):
            low, high = self.profile.low.get(column), self.profile.high.get(column)
            known = low is not None and high is not None and self.observed[j] > 0
            rows.append(
                {
                    "feature": column,
                    "outside_range_fraction": self.outside[j] / self.observed[j] if known else 0.0,
                    "missing_fraction": 1 - self.observed[j] / self.rows if self.rows else np.nan,
                    "allowed_missing_fraction": min(
                        1.0, self.profile.missing_fraction[column] + 0.1
                    ),
                    "training_low": low,
                    "training_high": high,
                }
            )
        return pd.DataFrame(rows)


def drift_table(features: pd.DataFrame, profile: DataProfile) -> pd.DataFrame:
    """Per-feature drift statistics of new data against the training profile."""
    counts = DriftCounts(profile)
    counts.add(features)
    return counts.table()


def _drift_check(
    table: pd.DataFrame, profile: DataProfile, settings: DataSettings, baseline: str
) -> tuple[list[ValidationIssue], int]:
    """GX checks over a per-feature drift table (:class:`DriftCounts`): value ranges and missing
    fractions against the profile of ``baseline`` (named in the messages)."""
    exp = load_great_expectations().expectations
    results = _run_suite(
        table,
        [
            exp.ExpectColumnValuesToBeBetween(
                column="outside_range_fraction", max_value=1 - settings.drift_mostly
            ),
            exp.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="allowed_missing_fraction", column_B="missing_fraction", or_equal=True
            ),
        ],
    )
    issues = []
    for result in results:
        if result.success:
            continue
        for idx in result.result.get("unexpected_index_list") or []:
            row = table.iloc[int(idx)]
            if result.expectation_config.type == "expect_column_values_to_be_between":
                message = (
                    f"'{row.feature}': {100 * row.outside_range_fraction:.1f}% of values outside "
                    f"the {baseline} range [{row.training_low:.3g}, {row.training_high:.3g}]"
                )
                check = "drift"
            else:
                message = (
                    f"'{row.feature}' is missing in {100 * row.missing_fraction:.1f}% of rows "
                    f"({baseline}: {100 * profile.missing_fraction[row.feature]:.1f}%)"
                )
                check = "missing_drift"
            issues.append(ValidationIssue(check, message, False, str(row.feature)))
    return issues, len(KPI_FEATURES) * len(results)


# The findings about single rows, which :class:`ChunkedValidation` adds up over the chunks.
_COUNTED = ("type", "infinite", "empty_rows")


def _worded(issue: ValidationIssue) -> ValidationIssue:
    """``issue`` (one of :data:`_COUNTED`) with its message written from its fields."""
    at = _rows_text(issue.rows, issue.count)
    ids = f" (sample_id {', '.join(issue.sample_ids)})" if issue.sample_ids else ""
    if issue.check == "type":
        issue.message = (
            f"'{issue.column}' must be numeric but has text in {issue.count} row(s), e.g. "
            f"{', '.join(repr(e) for e in issue.examples)} at {at}{ids}"
        )
    elif issue.check == "infinite":
        issue.message = (
            f"'{issue.column}' has {issue.count} infinite value(s) at {at}{ids}; "
            "use empty cells for missing values"
        )
    elif issue.check == "empty_rows":
        issue.message = f"{issue.count} row(s) have no KPI value at all: {at}"
    return issue


# The order in which validate_frame reports its findings (the contract's checks between).
_ORDER = {
    "schema": 0,
    "type": 1,
    "infinite": 3,
    "empty_rows": 4,
    "label_name": 5,
    "repeated_ids": 5,
    "drift": 6,
}
_COLUMNS = {name: i for i, name in enumerate([*KPI_FEATURES, LABEL])}


def _report_order(issue: ValidationIssue) -> tuple[int, int]:
    rank = _ORDER.get(issue.check, 7 if issue.check == "missing_drift" else 2)
    return rank, _COLUMNS.get(issue.column or "", -1)


def _missing_labels(
    frame: pd.DataFrame, raw: pd.DataFrame, first_row: int
) -> ValidationIssue | None:
    """Labels that are missing, not counting cells of text (read as missing; reported as text)."""
    missing = frame[LABEL].isna()
    if not pd.api.types.is_numeric_dtype(raw[LABEL]):
        missing &= ~text_to_numbers(raw[LABEL].astype(object))[1]
    if not missing.any():
        return None
    positions = [int(i) for i in np.flatnonzero(missing.to_numpy())[:5]]
    return _missing_issue(frame, LABEL, positions, int(missing.sum()), first_row, blocking=True)


def _missing_issue(
    frame: pd.DataFrame,
    column: str,
    positions: list[int],
    count: int,
    first_row: int,
    blocking: bool,
) -> ValidationIssue:
    """``column`` missing in ``count`` rows, the first at ``positions`` of ``frame``."""
    refs = _row_refs(frame, positions)
    ids = f" (sample_id {', '.join(refs)})" if refs else ""
    rows = [r + first_row for r in positions]
    message = f"'{column}' is missing in {count} row(s): {_rows_text(rows, count)}{ids}"
    return ValidationIssue("missing", message, blocking, column, rows, refs, count)


def _issue_from_result(
    frame: pd.DataFrame, result: Any, blocking: bool, first_row: int = 0
) -> ValidationIssue | None:
    if result.success:
        return None
    config = result.expectation_config
    kind = config.type
    kwargs = config.kwargs
    column = kwargs.get("column")
    details = result.result or {}
    positions = [int(i) for i in (details.get("unexpected_index_list") or [])[:5]]
    count = int(details.get("unexpected_count") or len(positions))
    if kind == "expect_column_values_to_not_be_null":
        return _missing_issue(frame, column, positions, count, first_row, blocking)
    refs = _row_refs(frame, positions)
    rows = [r + first_row for r in positions]
    at = _rows_text(rows, count) if rows else ""
    ids = f" (sample_id {', '.join(refs)})" if refs else ""
    if kind == "expect_table_row_count_to_be_between":
        return ValidationIssue(
            "row_count",
            f"{details.get('observed_value', 0)} rows; at least {kwargs['min_value']} needed",
            blocking,
        )
    if kind == "expect_column_unique_value_count_to_be_between":
        return ValidationIssue(
            "fault_classes",
            f"'{column}' has {details.get('observed_value')} fault class(es); "
            f"a labelled file needs at least {kwargs['min_value']}",
            blocking,
            column,
        )
    if kind == "expect_column_values_to_be_in_set":
        values = sorted({_shown(v) for v in details.get("partial_unexpected_list") or []})
        return ValidationIssue(
            "label_set",
            f"'{column}' has {count} value(s) outside {list(FAULT_CLASSES)}: "
            f"{', '.join(values[:5])} at {at}{ids}",
            blocking, column, rows, refs, count,
        )  # fmt: skip
    return ValidationIssue(kind, f"{kind} failed on {column or 'the table'}", blocking, column)


def validate_frame(
    raw: pd.DataFrame,
    source: str,
    settings: DataSettings,
    require_label: bool,
    profile: DataProfile | None = None,
    baseline: str = "training",
    first_row: int = 0,
    check_ids: bool = True,
) -> tuple[ValidationReport, pd.DataFrame]:
    """Validate incidents; return the report and the frame with numeric columns coerced.
    With a ``profile``, value ranges and missing fractions are checked against it; ``baseline``
    names what it was learned from in the warnings ("training", or a deployment's window).
    ``first_row``: the position of the frame's first row in its file, for the rows named (see
    :class:`ChunkedValidation`); ``check_ids``: warn about repeated sample ids (off for a chunk,
    which holds only part of the ids)."""
    report = ValidationReport(source=source, rows=len(raw), columns=raw.shape[1])
    raw = raw.reset_index(drop=True)
    raw.columns = [str(c).strip() for c in raw.columns]
    absent = missing_columns(raw, require_label)
    if absent:
        shown = ", ".join(absent[:8]) + (f" … ({len(absent)} in all)" if len(absent) > 8 else "")
        extra = [c for c in raw.columns if c not in (*KPI_FEATURES, LABEL, SAMPLE_ID)]
        hint = f"; unexpected columns: {', '.join(map(clipped, extra[:5]))}" if extra else ""
        report.issues.append(ValidationIssue("schema", f"missing columns: {shown}{hint}", True))
        report.checks_run = 1
        return report, raw
    duplicated = raw.columns[raw.columns.duplicated()].tolist()
    if duplicated:
        report.issues.append(
            ValidationIssue(
                "schema", f"duplicate column names: {', '.join(map(clipped, duplicated[:8]))}", True
            )
        )
        return report, raw
    numeric_columns = [*KPI_FEATURES, LABEL] if LABEL in raw.columns else list(KPI_FEATURES)
    frame, bad_cells = coerce_numeric(raw, numeric_columns)
    for bad in bad_cells:
        issue = ValidationIssue(
            "type",
            "",
            # Labels are not needed to diagnose: there, text in them is only a warning.
            require_label or bad.column != LABEL,
            bad.column,
            [r + first_row for r in bad.rows],
            _row_refs(raw, bad.rows),
            bad.count,
            bad.examples,
        )
        report.issues.append(_worded(issue))
    results = _run_suite(frame, _contract_expectations(require_label, settings))
    report.checks_run = len(results) + 2 * len(KPI_FEATURES)
    for result in results:
        found = _issue_from_result(frame, result, blocking=True, first_row=first_row)
        if found is not None and found.check == "missing" and found.column == LABEL:
            found = _missing_labels(frame, raw, first_row)  # text labels are said once, as text
        if found is not None:
            report.issues.append(found)
    report.issues.extend(_finite_check(frame, first_row))
    all_missing = frame[list(KPI_FEATURES)].isna().all(axis=1).to_numpy()
    if all_missing.any():
        rows = [int(i) + first_row for i in np.flatnonzero(all_missing)[:5]]
        empty = ValidationIssue("empty_rows", "", False, rows=rows, count=int(all_missing.sum()))
        report.issues.append(_worded(empty))
    lookalikes = [c for c in frame.columns if c != LABEL and c.lower() == LABEL]
    if lookalikes and LABEL not in frame.columns:
        report.issues.append(
            ValidationIssue(
                "label_name",
                f"column '{lookalikes[0]}' is not read as the fault class: name it '{LABEL}'",
                blocking=False,
                column=lookalikes[0],
            )
        )
    if check_ids and SAMPLE_ID in raw.columns:
        report.issues.extend(_repeated_ids(raw[SAMPLE_ID]))
    if profile is not None and report.ok and len(frame):
        drift_issues, checks = _drift_check(
            drift_table(frame, profile), profile, settings, baseline
        )
        report.issues.extend(drift_issues)
        report.checks_run += checks
    return report, frame


def _repeated_ids(ids: pd.Series) -> list[ValidationIssue]:
    """A warning if some sample ids appear more than once: their diagnoses cannot be told apart
    by id (missing ids are not counted)."""
    repeated = ids[ids.duplicated(keep=False) & ids.notna()]
    if repeated.empty:
        return []
    distinct = pd.unique(repeated)
    shown = ", ".join(clipped(v) for v in distinct[:5])
    return [_repeated_ids_issue(len(distinct), len(repeated), f" (e.g. {shown})")]


def _repeated_ids_issue(distinct: int, rows: int, examples: str = "") -> ValidationIssue:
    return ValidationIssue(
        "repeated_ids",
        f"{distinct} {SAMPLE_ID}(s) appear more than once, on {rows} rows{examples}: their "
        "diagnoses cannot be told apart by id",
        blocking=False,
        column=SAMPLE_ID,
    )


def _id_hashes(ids: pd.Series) -> np.ndarray:
    """64-bit hashes of the ids given (missing ones left out): 8 bytes an incident, so a
    file read in chunks can be checked for repeated ids without keeping them."""
    return pd.util.hash_pandas_object(ids[ids.notna()], index=False).to_numpy()


class ChunkedValidation:
    """:func:`validate_frame` of a file to diagnose that is read in chunks, one chunk in memory.

    Each chunk gets the whole contract (Great Expectations included), its rows named by their
    place in the file. The report adds the chunks up: text in number columns, infinite values
    and rows without any KPI value counted over the file, the range and missing-value warnings
    checked once on counts over all its rows, the findings in :func:`validate_frame`'s order:
    once every chunk is checked, what it reports for the file in one piece. Labels are not
    required (a file to train on is validated whole: training needs all of it in memory).
    """

    def __init__(
        self,
        source: str,
        settings: DataSettings,
        profile: DataProfile | None = None,
        baseline: str = "training",
    ) -> None:
        self.settings, self.profile, self.baseline = settings, profile, baseline
        self.report = ValidationReport(source=source, rows=0, columns=0)
        self.drift = DriftCounts(profile) if profile is not None else None
        self._id_hashes: list[np.ndarray] = []  # of every chunk, for repeated sample ids
        self._finished = False

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def unreadable(self) -> bool:
        """The columns are wrong (the same in every chunk): later chunks are only counted."""
        return any(issue.check == "schema" for issue in self.report.issues)

    def check(self, raw: pd.DataFrame) -> pd.DataFrame:
        """Validate the next chunk; return it with its numeric columns coerced. Check
        :attr:`ok` before using it; after a blocking problem, checking the remaining chunks
        completes the file's report."""
        if self.unreadable:  # counted only: the report says how many rows the file has
            self.report.rows += len(raw)
            return raw
        first_row = self.report.rows
        chunk, frame = validate_frame(
            raw, self.report.source, self.settings, False, first_row=first_row, check_ids=False
        )
        self.report.rows += chunk.rows
        self.report.columns = chunk.columns
        ids = [c for c in raw.columns if str(c).strip() == SAMPLE_ID]  # as validate_frame reads
        if ids:
            self._id_hashes.append(_id_hashes(raw[ids[0]]))
        self.report.checks_run = max(self.report.checks_run, chunk.checks_run)
        for issue in chunk.issues:
            self._add(issue)
        if self.drift is not None and chunk.ok:
            self.drift.add(frame)
        return frame

    def _add(self, issue: ValidationIssue) -> None:
        key = (issue.check, issue.column, issue.blocking)
        same = next((i for i in self.report.issues if (i.check, i.column, i.blocking) == key), None)
        if same is None:
            self.report.issues.append(issue)
            self.report.issues.sort(key=_report_order)  # stable: as validate_frame lists them
        elif issue.check in _COUNTED:  # counted over the file
            room = max(0, 5 - len(same.rows))  # rows named, and their ids if the file has any
            same.rows += issue.rows[:room]
            same.sample_ids += issue.sample_ids[:room]
            same.examples += issue.examples[: max(0, 3 - len(same.examples))]
            same.count += issue.count
            _worded(same)
        # any other finding (a misnamed label column) is the same in every chunk: said once

    def finish(self) -> ValidationReport:
        """The report of the whole file, with its range and missing-value warnings and a
        warning if sample ids repeat (counted over the file; two different ids share a hash
        with a chance of about 1 in 4·10^7 in a file of a million incidents)."""
        if not self._finished and self._id_hashes:
            _, counts = np.unique(np.concatenate(self._id_hashes), return_counts=True)
            repeated = counts[counts > 1]
            if len(repeated):
                self.report.issues.append(_repeated_ids_issue(len(repeated), int(repeated.sum())))
                self.report.issues.sort(key=_report_order)
            self._id_hashes = []
        if not self._finished and self.drift is not None and self.ok and self.report.rows:
            assert self.profile is not None
            issues, checks = _drift_check(
                self.drift.table(), self.profile, self.settings, self.baseline
            )
            self.report.issues.extend(issues)
            self.report.checks_run += checks
        self._finished = True
        return self.report


def validate_file(
    path: Path | str,
    settings: DataSettings,
    require_label: bool,
    profile: DataProfile | None = None,
    drop_labels: bool = False,
) -> tuple[ValidationReport, pd.DataFrame]:
    """Read and validate a file; unreadable files give a report with one blocking issue.
    ``drop_labels``: label columns are dropped unread (a calibration window's)."""
    try:
        raw = read_incidents(path)
    except DataValidationError as exc:
        report = ValidationReport(source=str(path), rows=0, columns=0, checks_run=1)
        report.issues.append(ValidationIssue("readable", str(exc).split(": ", 1)[-1], True))
        return report, pd.DataFrame()
    if drop_labels:
        raw = raw.drop(columns=label_columns(raw.columns))
    return validate_frame(raw, str(path), settings, require_label, profile)


def _shown(value: object) -> str:
    """A label value as the user wrote it: 6.0 read as a float is shown as 6."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def require_valid(report: ValidationReport) -> None:
    """Raise a DataValidationError carrying the report when it has blocking issues."""
    if not report.ok:
        raise DataValidationError(report.summary(), report=report)
