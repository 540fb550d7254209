"""Incidents sent as JSON (one object, or a list of objects) → validated KPI feature rows.

The HTTP service and the web page call these functions; they never look at a raw value
themselves. Every problem is a :class:`IncidentError` whose message names the incident (its
position in the request) and the field at fault, so a caller can fix the request.

The checks are the data contract of ``systemhealer predict`` applied to JSON: numbers or null
for KPI features (absent or null = missing), no ±inf, no unknown fields, at least one KPI value
per incident. They run in plain Python/NumPy, not Great Expectations: a single incident must be
checked in microseconds, not in the ~100 ms a GX run costs. Uploaded files take the path of
``systemhealer predict`` instead (:func:`systemhealer.serving.score_uploaded_file`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from systemhealer.data import KPI_FEATURES, LABEL, SAMPLE_ID
from systemhealer.errors import DataValidationError

# A label is accepted and ignored, as `systemhealer predict` ignores a label column.
INCIDENT_FIELDS: frozenset[str] = frozenset((SAMPLE_ID, LABEL, *KPI_FEATURES))
MAX_SAMPLE_ID_CHARS = 256
_NUMBER_TYPES = frozenset({int, float, type(None)})


class IncidentError(DataValidationError):
    """An incident sent to the service breaks the data contract (HTTP 400)."""

    http_status = 400


class TooManyIncidentsError(IncidentError):
    """More incidents in one request than the configured limit (HTTP 413)."""

    http_status = 413


@dataclass(frozen=True)
class IncidentRows:
    """Validated incidents: ids and a float64 KPI matrix (NaN = missing), in request order."""

    sample_ids: list[Any]
    features: np.ndarray

    def __len__(self) -> int:
        return len(self.sample_ids)

    def frame(self) -> pd.DataFrame:
        """The incidents as the validated frame ``systemhealer predict`` scores."""
        frame = pd.DataFrame(self.features, columns=list(KPI_FEATURES))
        frame.insert(0, SAMPLE_ID, pd.Series(self.sample_ids, dtype=object))
        return frame


def describe_json(value: Any) -> str:
    """What kind of JSON value ``value`` was decoded from, for error messages."""
    kind = type(value).__name__
    names = {
        "str": "a string", "bool": "a boolean", "list": "a list", "dict": "an object",
        "int": "a number", "float": "a number", "NoneType": "null",
    }  # fmt: skip
    if isinstance(value, str):
        shown = value if len(value) <= 20 else value[:20] + "…"
        return f"a string ({shown!r})"
    return names.get(kind, kind)


def key_given_twice(body: bytes, keys: Sequence[str]) -> str | None:
    """The first of ``keys`` that a JSON body's top-level object holds more than once, else
    None. JSON parsers keep the last copy without a word, so ``{"deployment": "x",
    "deployment": null}`` would quietly be scored with the training statistics."""
    if not any(body.count(json.dumps(key).encode()) > 1 for key in keys):
        return None  # the common case, decided without parsing
    try:  # every object read as its list of (key, value) pairs
        pairs = json.loads(body, object_pairs_hook=lambda items: items)
    except (ValueError, RecursionError):
        return None  # the caller's parser reports what is wrong with it
    if not isinstance(pairs, list) or not all(isinstance(p, tuple) for p in pairs):
        return None
    names = [name for name, _ in pairs]
    return next((k for i, k in enumerate(names) if k in keys and k in names[:i]), None)


def _sample_id(incident: Mapping[str, Any], where: str, position: int) -> Any:
    value = incident.get(SAMPLE_ID)
    if value is None:
        # As `systemhealer predict` does for files without ids: the row's position.
        return position
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise IncidentError(
            f"{where}.{SAMPLE_ID}: must be a string or an integer, got {describe_json(value)}"
        )
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise IncidentError(
            f"{where}.{SAMPLE_ID}: integer outside the 64-bit range; send it as a string"
        )
    if isinstance(value, str) and len(value) > MAX_SAMPLE_ID_CHARS:
        raise IncidentError(
            f"{where}.{SAMPLE_ID}: longer than {MAX_SAMPLE_ID_CHARS} characters ({len(value)})"
        )
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate (\ud800): no answer can carry it
            raise IncidentError(
                f"{where}.{SAMPLE_ID}: not valid Unicode (unpaired surrogate "
                f"{value[exc.start]!r} at character {exc.start})"
            ) from exc
    return value


def _unknown_fields_message(where: str, unknown: set[str]) -> str:
    shown = ", ".join(repr(name) for name in sorted(unknown)[:5])
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    return (
        f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {shown}{more}; "
        f"an incident has '{SAMPLE_ID}' (optional), KPI features "
        f"'{KPI_FEATURES[0]}' … '{KPI_FEATURES[-1]}' and an ignored '{LABEL}'"
    )


def _bad_value(where: str, row: list[Any]) -> IncidentError:
    for name, value in zip(KPI_FEATURES, row, strict=True):
        if type(value) not in _NUMBER_TYPES:
            return IncidentError(
                f"{where}.{name}: must be a number or null (missing), got {describe_json(value)}"
            )
    raise AssertionError("no bad value in row")  # pragma: no cover


def parse_incidents(
    incidents: Any, max_incidents: int, field: str = "incidents", single: bool = False
) -> IncidentRows:
    """Check incidents sent as JSON and turn them into KPI rows.

    ``incidents`` is the decoded JSON: a list of objects (or, with ``single``, one object).
    Raises :class:`IncidentError` naming the incident and field at fault, or
    :class:`TooManyIncidentsError` past ``max_incidents``.
    """
    if single:
        items: Sequence[Any] = [incidents]
    elif not isinstance(incidents, list):
        raise IncidentError(f"{field}: must be a list of incidents, got {describe_json(incidents)}")
    else:
        items = incidents
    if not items:
        raise IncidentError(f"{field}: the list is empty; send at least one incident")
    if len(items) > max_incidents:
        raise TooManyIncidentsError(
            f"{field}: {len(items)} incidents in one request; the limit is {max_incidents} "
            "(serving.max_batch_incidents). Send larger sets as a file to POST /predict_csv, "
            "or score them offline with `systemhealer predict FILE --output OUT`"
        )
    ids: list[Any] = []
    rows: list[list[Any]] = []
    for position, incident in enumerate(items):
        where = field if single else f"{field}[{position}]"
        if not isinstance(incident, dict):
            raise IncidentError(
                f"{where}: must be an object of KPI features, got {describe_json(incident)}"
            )
        unknown = incident.keys() - INCIDENT_FIELDS
        if unknown:
            raise IncidentError(_unknown_fields_message(where, unknown))
        ids.append(_sample_id(incident, where, position))
        row = list(map(incident.get, KPI_FEATURES))
        if not set(map(type, row)) <= _NUMBER_TYPES:
            raise _bad_value(where, row)
        rows.append(row)
    try:
        features = np.array(rows, dtype=np.float64)
    except OverflowError:
        # An integer too large for a float64: report it like an infinity.
        features = np.array([[_finite_or_inf(v) for v in row] for row in rows], dtype=np.float64)
    _refuse_infinite(features, field, single)
    _refuse_nan(features, rows, field, single)
    _refuse_empty(features, field, single)
    return IncidentRows(sample_ids=ids, features=features)


def _refuse_nan(features: np.ndarray, rows: list[list[Any]], field: str, single: bool) -> None:
    """A NaN that was not sent as null came from a ``NaN`` literal, which is not JSON (parsers
    that accept it would otherwise pass it off as a missing value)."""
    missing = np.isnan(features).sum(axis=1)
    sent_null = np.fromiter((row.count(None) for row in rows), dtype=np.int64, count=len(rows))
    literal = np.flatnonzero(missing != sent_null)
    if not len(literal):
        return
    row = int(literal[0])
    column = next(j for j, v in enumerate(rows[row]) if v is not None and v != v)
    where = field if single else f"{field}[{row}]"
    raise IncidentError(
        f"{where}.{KPI_FEATURES[column]}: NaN is not JSON; send null for a missing value"
    )


def _finite_or_inf(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _refuse_infinite(features: np.ndarray, field: str, single: bool) -> None:
    infinite = np.isinf(features)
    if not infinite.any():
        return
    row, column = (int(i) for i in np.argwhere(infinite)[0])
    where = field if single else f"{field}[{row}]"
    count = int(infinite.sum())
    more = f" ({count} infinite values in all)" if count > 1 else ""
    raise IncidentError(
        f"{where}.{KPI_FEATURES[column]}: {features[row, column]} is not a KPI value{more}; "
        "send null for a missing value"
    )


def _refuse_empty(features: np.ndarray, field: str, single: bool) -> None:
    empty = np.isnan(features).all(axis=1)
    if not empty.any():
        return
    rows = np.flatnonzero(empty)
    where = field if single else f"{field}[{int(rows[0])}]"
    more = f" ({len(rows)} incidents in all)" if len(rows) > 1 else ""
    raise IncidentError(
        f"{where}: all {len(KPI_FEATURES)} KPI features are missing (absent or null){more}; "
        "a diagnosis needs at least one KPI value"
    )
