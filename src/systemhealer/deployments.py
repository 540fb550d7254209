"""Deployments: named reference windows of unlabelled incidents, kept with the state.

A deployment is calibrated from a file of its own incidents; labels, if present, are dropped
before anything is stored. The reference rows themselves are kept (not statistics), so any model,
including a future champion, measures its own statistics from them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from systemhealer.config import Settings
from systemhealer.data import KPI_FEATURES, feature_matrix
from systemhealer.errors import DataValidationError, DeploymentNotFoundError, SystemHealerError
from systemhealer.features import TRAINING_DEPLOYMENT, DeploymentStats
from systemhealer.label_shift import estimate_class_mix
from systemhealer.locks import state_lock

if TYPE_CHECKING:  # torch is imported only by commands that score
    from systemhealer.diagnoser import FaultDiagnoser
    from systemhealer.validation import DataProfile

log = logging.getLogger(__name__)

# Reference windows smaller than this get a warning: in simulation they lose accuracy
# (docs/calibration.md, Limits).
SMALL_WINDOW = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class DeploymentInfo:
    """What is known of a calibrated deployment."""

    name: str
    rows: int
    source: str
    calibrated_at: str

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "rows": self.rows,
            "source": self.source,
            "calibrated_at": self.calibrated_at,
        }


def check_name(name: str) -> str:
    """Deployment names become file names: letters, digits, ``_.-``, at most 64 characters."""
    if not _NAME.fullmatch(name or "") or name.casefold() == TRAINING_DEPLOYMENT.casefold():
        raise DataValidationError(
            f"invalid deployment name {name!r}: use 1-64 letters, digits, '_', '.', '-' "
            f"(not starting with a symbol, not '{TRAINING_DEPLOYMENT}')"
        )
    return name


def _paths(settings: Settings, name: str) -> tuple[Path, Path]:
    folder = settings.deployments_dir
    return folder / f"{check_name(name)}.parquet", folder / f"{name}.json"


def register_deployment(
    settings: Settings, name: str, incidents: pd.DataFrame, source: str
) -> DeploymentInfo:
    """Register or replace deployment ``name`` from validated, unlabelled (or label-stripped) incidents."""
    reference = reference_window(settings, incidents)
    limits = settings.calibration
    if len(reference) > limits.max_reference_rows:
        reference = reference.sample(limits.max_reference_rows, random_state=0)
    data_path, meta_path = _paths(settings, name)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    info = DeploymentInfo(
        name, len(reference), Path(source).name, datetime.now(UTC).isoformat(timespec="seconds")
    )
    # Write both files under temporary names, then rename: a failure never leaves half a
    # deployment; under a lock, so two calibrations of one name never mix their files.
    with state_lock(settings, "deployments"):
        # Names differing only in case would share files on a case-insensitive file system.
        twin = next(
            (
                d.name
                for d in list_deployments(settings)
                if d.name != name and d.name.casefold() == name.casefold()
            ),
            None,
        )
        if twin is not None:
            raise DataValidationError(
                f"deployment {twin!r} exists: names may not differ only in case; "
                f"replace {twin!r} or choose another name"
            )
        for target, write in (
            (data_path, lambda p: reference.reset_index(drop=True).to_parquet(p, index=False)),
            (meta_path, lambda p: Path(p).write_text(json.dumps(info.to_dict(), indent=2))),
        ):
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            os.close(fd)
            try:
                write(tmp)
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
    _reference_cached.cache_clear()
    _profile_cached.cache_clear()
    return info


def remove_deployment(settings: Settings, name: str) -> DeploymentInfo:
    """Forget deployment ``name`` (its reference window and description); what it was is
    returned. Incidents of it are then refused until it is calibrated again."""
    data_path, meta_path = _paths(settings, name)
    with state_lock(settings, "deployments"):
        info = find_deployment(settings, name)
        if info is None and not data_path.exists():
            load_reference(settings, name)  # raises DeploymentNotFoundError, naming the known
        meta_path.unlink(missing_ok=True)  # first: a deployment without one is not listed
        data_path.unlink(missing_ok=True)
    _reference_cached.cache_clear()
    _profile_cached.cache_clear()
    # A window without a description is left only by a crash between the two renames.
    return info or DeploymentInfo(name, 0, "(no description)", "")


def reference_window(settings: Settings, incidents: pd.DataFrame) -> pd.DataFrame:
    """The KPI values of the incidents that have any, refused (DataValidationError) when fewer
    than ``calibration.min_reference_rows`` incidents, or distinct incidents, are left."""
    reference = feature_matrix(incidents)
    reference = reference[reference.notna().any(axis=1)]
    minimum = settings.calibration.min_reference_rows
    if len(reference) < minimum:
        raise DataValidationError(
            f"a deployment needs at least {minimum} incidents with KPI values to calibrate; "
            f"got {len(reference)}"
        )
    distinct = len(reference.drop_duplicates())
    if distinct < minimum:
        raise DataValidationError(
            f"a deployment needs at least {minimum} distinct incidents to calibrate; the "
            f"{len(reference)} incidents with KPI values hold only {distinct} (the rest are "
            "copies)"
        )
    return reference


def reference_warnings(
    settings: Settings, diagnoser: FaultDiagnoser, incidents: pd.DataFrame
) -> list[str]:
    """What a reference window lacks for ``diagnoser``, as warnings; a window the model could
    not calibrate on at all (see :func:`reference_window`, and too few incidents with a value,
    or distinct ones, in the model's KPI columns) is refused (DataValidationError)."""
    columns = diagnoser.preprocessor.columns
    values = diagnoser.preprocessor.raw_values(reference_window(settings, incidents))
    present = ~np.isnan(values)
    informative = int(present.any(axis=1).sum())
    minimum = settings.calibration.min_reference_rows
    if informative < minimum:
        raise DataValidationError(
            f"only {informative} of the {len(values)} incidents have a value in any of the "
            f"{len(columns)} KPI columns the model reads ({', '.join(columns)}); a deployment "
            f"needs at least {minimum}: is this a file of the same KPIs?"
        )
    # Distinct as the model sees them (a sentinel stands for missing, which NaN cannot).
    seen = np.where(present, values, np.inf)[present.any(axis=1)]
    distinct = len(np.unique(seen, axis=0))
    if distinct < minimum:
        raise DataValidationError(
            f"a deployment needs at least {minimum} distinct incidents to calibrate; in the "
            f"{len(columns)} KPIs the model reads, its {informative} incidents hold only "
            f"{distinct}"
        )
    warnings = []
    if informative < SMALL_WINDOW:
        warnings.append(
            f"{informative} incidents are a small reference window (a few hundred are wanted); "
            "expect less accurate diagnoses on this deployment"
        )
    for j, column in enumerate(columns):
        observed = values[present[:, j], j]
        if len(observed) == 0:
            warnings.append(
                f"{column}: no value in the window; this KPI is left out of this deployment's "
                "diagnoses (read as missing in every incident)"
            )
        elif np.unique(observed).size == 1:
            warnings.append(
                f"{column}: one value ({observed[0]:g}) in the whole window; this KPI will "
                "tell this deployment's incidents apart only by whether they are above or "
                "below it"
            )
        elif len(observed) < len(values) / 2:
            warnings.append(
                f"{column}: values in only {len(observed)} of the {len(values)} incidents; "
                "its statistics rest on those"
            )
    return warnings


def find_deployment(settings: Settings, name: str) -> DeploymentInfo | None:
    """The calibrated deployment called ``name``, if there is one."""
    return next((d for d in list_deployments(settings) if d.name == name), None)


def list_deployments(settings: Settings) -> list[DeploymentInfo]:
    folder = settings.deployments_dir
    if not folder.exists():
        return []
    found = []
    for meta in sorted(folder.glob("*.json")):
        try:
            found.append(DeploymentInfo(**json.loads(meta.read_text())))
        except (ValueError, TypeError):
            continue
    return found


def load_reference(settings: Settings, name: str) -> pd.DataFrame:
    """The reference incidents of a deployment (KPI features only)."""
    data_path, _ = _paths(settings, name)
    if not data_path.exists():
        names = [d.name for d in list_deployments(settings)]
        known = ", ".join(names[:10]) or "none yet"
        if len(names) > 10:
            known += f" and {len(names) - 10} more (systemhealer deployments)"
        raise DeploymentNotFoundError(
            f"no deployment named '{name}' (known: {known}); register it with "
            f'`systemhealer calibrate {name} FILE` or the web page\'s "Calibrate a deployment"'
        )
    try:
        return _reference_cached(str(data_path), data_path.stat().st_mtime_ns)
    except FileNotFoundError:  # removed meanwhile
        raise DeploymentNotFoundError(f"deployment '{name}' was just removed") from None


@lru_cache(maxsize=16)
def _reference_cached(path: str, mtime_ns: int) -> pd.DataFrame:
    return pd.read_parquet(path).reindex(columns=list(KPI_FEATURES))


def is_calibrated(name: str | None) -> bool:
    """Whether ``name`` names a calibrated deployment rather than the training data's."""
    return name is not None and name != TRAINING_DEPLOYMENT


def reference_profile(settings: Settings, name: str) -> DataProfile:
    """The data profile (value ranges, missing fractions, drift sketches) of deployment
    ``name``'s reference window: what its new incidents are checked against. Learned once per
    stored window."""
    load_reference(settings, name)  # raises DeploymentNotFoundError, naming the known
    data_path, _ = _paths(settings, name)
    try:
        return _profile_cached(str(data_path), data_path.stat().st_mtime_ns)
    except FileNotFoundError:  # removed meanwhile
        raise DeploymentNotFoundError(f"deployment '{name}' was just removed") from None


@lru_cache(maxsize=16)
def _profile_cached(path: str, mtime_ns: int) -> DataProfile:
    from systemhealer.validation import DataProfile

    return DataProfile.learn(_reference_cached(path, mtime_ns))


def deployment_stats(
    settings: Settings, diagnoser: FaultDiagnoser, name: str | None
) -> DeploymentStats | None:
    """The statistics ``diagnoser`` normalises with for deployment ``name``; None = training.

    The window was checked against the model in service when it was calibrated; a later
    champion may read other KPIs, so it is checked again for each model (DataValidationError
    if it cannot calibrate this one: diagnoses would rest on no evidence)."""
    if not is_calibrated(name):
        return None
    data_path, _ = _paths(settings, name)  # type: ignore[arg-type]
    key = (name, data_path.stat().st_mtime_ns if data_path.exists() else 0)
    cached = diagnoser.deployment_cache.get(key)
    if cached is None:
        reference = load_reference(settings, name)
        try:
            reference_warnings(settings, diagnoser, reference)
        except DataValidationError as exc:
            raise DataValidationError(
                f"deployment '{name}' cannot calibrate the model in service: {exc}. Calibrate "
                f"it again (`systemhealer calibrate {name} FILE` or the web page's \"Calibrate a "
                'deployment") with incidents that have the KPIs this model reads'
            ) from exc
        cached = measure(settings, diagnoser, name, reference)
        diagnoser.deployment_cache[key] = cached
    return cached


def warm_deployments(settings: Settings, diagnoser: FaultDiagnoser) -> None:
    """Compute (and cache on ``diagnoser``) the statistics of every calibrated deployment."""
    for info in list_deployments(settings):
        try:
            deployment_stats(settings, diagnoser, info.name)
        except (SystemHealerError, OSError, ValueError) as exc:  # a request will report it
            log.warning("deployment %r not prepared: %s", info.name, exc)


def measure(
    settings: Settings, diagnoser: FaultDiagnoser, name: str, reference: pd.DataFrame
) -> DeploymentStats:
    """The deployment's statistics from its reference window: read at its estimated class mix
    (``calibration.read_class_mix``) or as the window is; with
    ``calibration.label_shift_correction`` λ > 0, probabilities are also re-weighted towards
    that mix: to s·mix + (1−s)·balanced with s = λ·n/(n+100) for a window of n incidents, each
    share floored at ``calibration.min_class_share``. A window with fewer than
    ``calibration.min_reference_rows`` incidents that have a value in the model's columns is
    read as it is, without either. Only this estimate is ever applied; the EM estimate of
    models without per-class statistics is reported, never applied."""
    calibration = settings.calibration
    # Incidents with a value in at least one of the model's columns: what the estimate rests on.
    values = diagnoser.preprocessor.raw_values(reference)
    informative = int((~np.isnan(values)).any(axis=1).sum())
    if not calibration.read_class_mix or informative < calibration.min_reference_rows:
        return diagnoser.preprocessor.measure_deployment(name, reference)
    stats = diagnoser.calibrate(name, reference)
    # Trust the estimate less on small windows: full λ only from a few hundred incidents.
    strength = calibration.label_shift_correction * informative / (informative + 100)
    if strength > 0 and stats.reference_mix is not None and diagnoser.class_response is not None:
        known = ~np.isnan(diagnoser.class_response[0])
        balanced = known / known.sum()
        mix = strength * stats.reference_mix + (1 - strength) * balanced
        stats = replace(stats, class_mix=floor_shares(mix, calibration.min_class_share))
    return stats


def floor_shares(mix: np.ndarray, floor: float) -> np.ndarray:
    """Keep every class share at least ``floor`` (EM can drive a share to zero, which would
    forbid that class outright), then renormalise."""
    floored = np.maximum(mix, floor)
    return floored / floored.sum()


def estimate_deployment_mix(
    diagnoser: FaultDiagnoser, reference: pd.DataFrame, stats: DeploymentStats
) -> np.ndarray:
    """A deployment's class mix: the one its statistics were read at if they were (see
    :meth:`FaultDiagnoser.calibrate`), else EM on the model's view of its reference window."""
    if stats.reference_mix is not None:
        return stats.reference_mix
    return estimate_class_mix(diagnoser.probabilities(reference, replace(stats, class_mix=None)))
