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
    coerce_numeric,
    missing_columns,
    read_incidents,
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
    return [str(frame[SAMPLE_ID].iloc[r]) for r in rows if r < len(frame)]


def _rows_text(rows: list[int], count: int) -> str:
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


def _finite_check(features: pd.DataFrame) -> list[ValidationIssue]:
    """No ±inf in any KPI feature, checked by GX over the cells in long form (one expectation
    for all 107 columns; per-column expectations cost ~50 ms each)."""
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
        shown = [int(r) for r in at[:5]]
        refs = _row_refs(features, shown)
        issues.append(
            ValidationIssue(
                "infinite",
                f"'{column}' has {len(at)} infinite value(s) at {_rows_text(shown, len(at))}"
                + (f" (sample_id {', '.join(refs)})" if refs else "")
                + "; use empty cells for missing values",
                True,
                column,
                shown,
                refs,
                len(at),
            )
        )
    return issues


def drift_table(
    features: pd.DataFrame, profile: DataProfile, settings: DataSettings
) -> pd.DataFrame:
    """Per-feature drift statistics of new data against the training profile."""
    rows = []
    for column in KPI_FEATURES:
        values = features[column]
        observed = values.dropna()
        low, high = profile.low.get(column), profile.high.get(column)
        if low is None or high is None or observed.empty:
            outside = 0.0
        else:
            outside = float(((observed < low) | (observed > high)).mean())
        rows.append(
            {
                "feature": column,
                "outside_range_fraction": outside,
                "missing_fraction": float(values.isna().mean()),
                "allowed_missing_fraction": min(1.0, profile.missing_fraction[column] + 0.1),
                "training_low": low,
                "training_high": high,
            }
        )
    return pd.DataFrame(rows)


def _drift_check(
    features: pd.DataFrame, profile: DataProfile, settings: DataSettings, baseline: str
) -> tuple[list[ValidationIssue], int]:
    """GX checks over the per-feature drift table: value ranges and missing fractions against
    the profile of ``baseline`` (named in the messages)."""
    table = drift_table(features, profile, settings)
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


def _issue_from_result(frame: pd.DataFrame, result: Any, blocking: bool) -> ValidationIssue | None:
    if result.success:
        return None
    config = result.expectation_config
    kind = config.type
    kwargs = config.kwargs
    column = kwargs.get("column")
    details = result.result or {}
    rows = [int(i) for i in (details.get("unexpected_index_list") or [])[:5]]
    count = int(details.get("unexpected_count") or len(rows))
    refs = _row_refs(frame, rows)
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
    if kind == "expect_column_values_to_not_be_null":
        message = f"'{column}' is missing in {count} row(s): {at}{ids}"
        return ValidationIssue("missing", message, blocking, column, rows, refs, count)
    return ValidationIssue(kind, f"{kind} failed on {column or 'the table'}", blocking, column)


def validate_frame(
    raw: pd.DataFrame,
    source: str,
    settings: DataSettings,
    require_label: bool,
    profile: DataProfile | None = None,
    baseline: str = "training",
) -> tuple[ValidationReport, pd.DataFrame]:
    """Validate incidents; return the report and the frame with numeric columns coerced.
    With a ``profile``, value ranges and missing fractions are checked against it; ``baseline``
    names what it was learned from in the warnings ("training", or a deployment's window)."""
    report = ValidationReport(source=source, rows=len(raw), columns=raw.shape[1])
    raw = raw.reset_index(drop=True)
    raw.columns = [str(c).strip() for c in raw.columns]
    absent = missing_columns(raw, require_label)
    if absent:
        shown = ", ".join(absent[:8]) + (f" … ({len(absent)} in all)" if len(absent) > 8 else "")
        extra = [c for c in raw.columns if c not in (*KPI_FEATURES, LABEL, SAMPLE_ID)]
        hint = f"; unexpected columns: {', '.join(extra[:5])}" if extra else ""
        report.issues.append(ValidationIssue("schema", f"missing columns: {shown}{hint}", True))
        report.checks_run = 1
        return report, raw
    duplicated = raw.columns[raw.columns.duplicated()].tolist()
    if duplicated:
        report.issues.append(
            ValidationIssue("schema", f"duplicate column names: {', '.join(duplicated)}", True)
        )
        return report, raw
    numeric_columns = [*KPI_FEATURES, LABEL] if LABEL in raw.columns else list(KPI_FEATURES)
    frame, bad_cells = coerce_numeric(raw, numeric_columns)
    for bad in bad_cells:
        refs = _row_refs(raw, bad.rows)
        report.issues.append(
            ValidationIssue(
                "type",
                f"'{bad.column}' must be numeric but has text in {bad.count} row(s), e.g. "
                f"{', '.join(repr(e) for e in bad.examples)} at {_rows_text(bad.rows, bad.count)}"
                + (f" (sample_id {', '.join(refs)})" if refs else ""),
                # Labels are not needed to diagnose: there, text in them is only a warning.
                require_label or bad.column != LABEL,
                bad.column,
                bad.rows,
                refs,
                bad.count,
            )
        )
    results = _run_suite(frame, _contract_expectations(require_label, settings))
    report.checks_run = len(results) + 2 * len(KPI_FEATURES)
    for result in results:
        issue = _issue_from_result(frame, result, blocking=True)
        if issue is not None:
            report.issues.append(issue)
    report.issues.extend(_finite_check(frame))
    all_missing = frame[list(KPI_FEATURES)].isna().all(axis=1)
    if all_missing.any():
        rows = [int(i) for i in np.flatnonzero(all_missing.to_numpy())[:5]]
        report.issues.append(
            ValidationIssue(
                "empty_rows",
                f"{int(all_missing.sum())} row(s) have no KPI value at all: "
                f"{_rows_text(rows, int(all_missing.sum()))}",
                blocking=False,
                rows=rows,
                count=int(all_missing.sum()),
            )
        )
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
    if profile is not None and report.ok and len(frame):
        drift_issues, checks = _drift_check(frame, profile, settings, baseline)
        report.issues.extend(drift_issues)
        report.checks_run += checks
    return report, frame


def validate_file(
    path: Path | str,
    settings: DataSettings,
    require_label: bool,
    profile: DataProfile | None = None,
) -> tuple[ValidationReport, pd.DataFrame]:
    """Read and validate a file; unreadable files give a report with one blocking issue."""
    try:
        raw = read_incidents(path)
    except DataValidationError as exc:
        report = ValidationReport(source=str(path), rows=0, columns=0, checks_run=1)
        report.issues.append(ValidationIssue("readable", str(exc).split(": ", 1)[-1], True))
        return report, pd.DataFrame()
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
