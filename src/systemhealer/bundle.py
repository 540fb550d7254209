"""Packaging the service as a Bento with the champion inside (``systemhealer bento``).

The registry is not inside a container, so the Bento carries its model: the champion is
imported from MLflow into BentoML's model store (``bentoml.mlflow.import_model``), the
``systemhealer`` package is built as a wheel, and ``bentoml build`` packs both with
``bentofile.yaml``. A service started from the Bento serves that model
(``serving.bundled_model``); it has no registry to poll, so it never swaps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from systemhealer.config import Settings
from systemhealer.errors import ModelNotFoundError, SystemHealerError
from systemhealer.serving import ServedModel

REPO = Path(__file__).resolve().parents[2]
BENTO_MODEL = "fault-diagnosis"
WHEEL_DIR = REPO / "dist"


def bentoml_env(settings: Settings) -> dict[str, str]:
    """BentoML's store under the state folder; no usage analytics."""
    env = dict(os.environ)
    env.setdefault("BENTOML_HOME", str(settings.home / "bentoml"))
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    return env


def import_champion(settings: Settings, version: str | None = None) -> str:
    """Import the champion (or ``version``) from MLflow into BentoML's store; returns its tag."""
    from systemhealer import tracking

    info = tracking.get_version(settings, version) if version else tracking.champion(settings)
    if info is None:
        raise ModelNotFoundError(
            "no champion to package: train one first (`systemhealer train FILE`)"
        )
    # A damaged model is named here (ModelNotFoundError), not packed to fail when served.
    tracking.load_diagnoser(settings, tracking.version_uri(settings, info.version))
    os.environ.update({k: v for k, v in bentoml_env(settings).items() if k.startswith("BENTOML_")})
    import bentoml

    tracking.configure(settings)  # bentoml.mlflow resolves models:/ URIs through MLflow
    metrics = tracking.run_metrics(settings, info.run_id) if info.run_id else {}
    model = bentoml.mlflow.import_model(
        BENTO_MODEL,
        model_uri=tracking.version_uri(settings, info.version),
        labels={"registry_version": str(info.version)},
        metadata={
            "model_name": settings.registry.model_name,
            "version": str(info.version),
            "alias": settings.registry.champion_alias,
            "run_id": info.run_id or "",
            "training_metrics": {k: float(v) for k, v in metrics.items()},
            "tags": dict(info.tags),
            "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return str(model.tag)


def load_bundled(tag: str, settings: Settings) -> ServedModel:
    """The model packed in a Bento, as the service serves it."""
    import bentoml

    from systemhealer.diagnoser import FaultDiagnoser

    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound as exc:
        raise ModelNotFoundError(f"no BentoML model '{tag}' in this Bento or store") from exc
    folder = Path(model.path) / "mlflow_model" / "artifacts" / "diagnoser"
    if not folder.is_dir():
        raise ModelNotFoundError(f"BentoML model '{tag}' is not a SystemHealer diagnoser")
    meta = dict(model.info.metadata)
    return ServedModel(
        diagnoser=FaultDiagnoser.load(folder),
        model_name=str(meta.get("model_name", settings.registry.model_name)),
        version=str(meta.get("version", model.tag.version)),
        alias=f"{meta.get('alias', 'champion')} (packaged in the Bento as {model.tag})",
        run_id=str(meta.get("run_id")) or None,
        metrics=dict(meta.get("training_metrics") or {}),
        tags=dict(meta.get("tags") or {}),
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def build_wheel() -> Path:
    """Build the ``systemhealer`` wheel offline (no dependencies, no isolated build env)."""
    WHEEL_DIR.mkdir(exist_ok=True)
    for old in WHEEL_DIR.glob("systemhealer-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as scratch:
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--quiet", "-w", str(WHEEL_DIR), str(REPO)],
            cwd=scratch,
            capture_output=True,
            text=True,
        )  # fmt: skip
    if built.returncode != 0:
        raise SystemHealerError(f"building the systemhealer wheel failed:\n{built.stderr[-2000:]}")
    (wheel,) = WHEEL_DIR.glob("systemhealer-*.whl")
    return wheel


def build_bento(settings: Settings, version: str | None = None) -> tuple[str, str]:
    """Import the champion, build the wheel, run ``bentoml build``; returns the Bento's tag
    and the packed model's tag."""
    wheel = build_wheel()
    bentofile = (REPO / "bentofile.yaml").read_text()
    if f"dist/{wheel.name}" not in bentofile:
        raise SystemHealerError(f"bentofile.yaml must list dist/{wheel.name} under python.wheels")
    tag = import_champion(settings, version)
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", str(REPO / "bentofile.yaml"),
         "--output", "tag", str(REPO)],
        cwd=REPO,  # bentoml reads the wheel relative to the build context, from anywhere
        env=bentoml_env(settings),
        capture_output=True,
        text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemHealerError(
            f"bentoml build failed (model {tag} was imported): "
            + (result.stderr.strip().splitlines() or ["no output"])[-1]
        )
    return result.stdout.strip().splitlines()[-1].removeprefix("__tag__:"), tag
