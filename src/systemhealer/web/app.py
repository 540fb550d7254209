"""The web platform: pages at ``/`` and ``/ui/…``, their JSON API under ``/ui/api/…``.

Mounted in the BentoML service (``service.py``) and runnable alone (``python -m
systemhealer.web``). Pages and scripts are files of this package (``web/static``): nothing is
loaded from another host. Work is done by the library: :mod:`systemhealer.jobs` (the queue),
:mod:`systemhealer.reports`, :mod:`systemhealer.tracking`, :mod:`systemhealer.validation`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from systemhealer import jobs, reports, tracking
from systemhealer.config import FAULT_CLASSES, Settings
from systemhealer.data import KPI_FEATURES, LABEL, PREDICTION_COLUMNS, refuse_unpacked_over
from systemhealer.errors import (
    DataValidationError,
    DeploymentNotFoundError,
    ModelNotFoundError,
    SystemHealerError,
    TrainingError,
)
from systemhealer.web.guard import BodyLimit, TokenError, token_dependency

STATIC = Path(__file__).parent / "static"
PAGES = ("home", "train", "diagnose", "models")
API = "/ui/api"
MAX_PAGE_ROWS = 500
# A page of security headers: scripts, styles, images and requests only from this server.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; frame-ancestors 'self'; base-uri 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class ChampionCache:
    """The champion's diagnoser, loaded once per version (the alias is checked on each use)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._loaded: tuple[str, Any] | None = None

    def get(self) -> tuple[Any, str]:
        """(diagnoser, version) of the current champion; ModelNotFoundError without one."""
        current = tracking.champion(self.settings)
        if current is None:
            raise ModelNotFoundError(
                "there is no champion model yet: train one on the Train page first"
            )
        with self._lock:
            if self._loaded is None or self._loaded[0] != current.version:
                diagnoser, _ = tracking.load_diagnoser(
                    self.settings, tracking.version_uri(self.settings, current.version)
                )
                self._loaded = (current.version, diagnoser)
            return self._loaded[1], self._loaded[0]

    def profile(self) -> Any | None:
        """The champion's training data profile (for drift warnings), if there is a champion."""
        try:
            diagnoser, _ = self.get()
        except SystemHealerError:
            return None
        return diagnoser.profile


class TableCache:
    """The few diagnosis tables last paged through, kept in memory (sorting needs them whole)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._tables: OrderedDict[tuple[str, int], pd.DataFrame] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> pd.DataFrame:
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            if key in self._tables:
                self._tables.move_to_end(key)
                return self._tables[key]
        table = pd.read_parquet(path)
        with self._lock:
            self._tables[key] = table
            while len(self._tables) > self.size:
                self._tables.popitem(last=False)
        return table


UPLOAD_LIMIT = "serving.max_upload_mb"
# A promotion or rollback waits this long at most for a gate that is deciding (then 409).
CHAMPION_WAIT_SECONDS = 60.0


class IncidentsRequest(BaseModel):
    """One incident or a list of incidents, as JSON."""

    model_config = ConfigDict(extra="forbid")  # a mistyped field is an error, not ignored

    incident: dict[str, Any] | None = Field(None, description="one incident")
    incidents: list[Any] | None = Field(None, description="several incidents")
    deployment: str | None = Field(None, description="calibrated deployment, null = training")


class TrainingRequest(BaseModel):
    """Train on an upload that passed validation."""

    model_config = ConfigDict(extra="forbid")  # a mistyped field is an error, not ignored

    upload_id: str


class DiagnosisRequest(BaseModel):
    """Diagnose an upload whose type and header were checked."""

    model_config = ConfigDict(extra="forbid")  # a mistyped field is an error, not ignored

    upload_id: str
    deployment: str | None = None


def _status_of(exc: SystemHealerError) -> int:
    status = getattr(exc, "http_status", None)
    if isinstance(status, int):
        return status
    if isinstance(exc, TokenError):
        return 401
    if isinstance(exc, jobs.JobNotFoundError | DeploymentNotFoundError | ModelNotFoundError):
        return 404
    if isinstance(exc, DataValidationError):
        return 422
    return 400


def _error_payload(exc: SystemHealerError) -> dict[str, Any]:
    payload: dict[str, Any] = {"error": str(exc)}
    report = getattr(exc, "report", None)
    if report is not None and hasattr(report, "to_dict"):
        payload["validation"] = report.to_dict()
    return payload


@cache
def _page_html(name: str) -> str:
    layout = (STATIC / "pages" / "layout.html").read_text()
    body = (STATIC / "pages" / f"{name}.html").read_text()
    return layout.replace("{{page}}", name).replace("{{content}}", body)


def _copy_upload(file: UploadFile, target: Path) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        shutil.copyfileobj(file.file, out, length=1 << 20)
    return target.stat().st_size


def create_app(
    settings: Settings, config_file: str | None = None, run_jobs: bool = True
) -> FastAPI:
    """The web platform as a FastAPI app; ``run_jobs`` starts the background job queue with it."""
    store = jobs.JobStore(settings.jobs_dir)
    uploads = jobs.UploadStore(
        settings.jobs_dir / "uploads", int(settings.web.max_stored_uploads_mb * 2**20)
    )
    # Training files are validated whole in the request: a few at a time bound the memory.
    validating = threading.BoundedSemaphore(2)
    champion = ChampionCache(settings)
    tables = TableCache()
    fingerprints: dict[str, Any] = {}
    runner = jobs.JobRunner(
        store,
        executors={
            jobs.TRAIN: jobs.TrainingExecutor(store, settings, config_file),
            jobs.DIAGNOSE: jobs.DiagnosisExecutor(store, settings, champion.get),
        },
        workers={
            jobs.TRAIN: settings.web.training_workers,
            jobs.DIAGNOSE: settings.web.scoring_workers,
        },
    )
    require_token = Depends(token_dependency(settings.serving.api_token))

    async def keys_once(request: Request) -> None:
        """Refuse a body that names a field twice (its parser would keep the last quietly)."""
        from systemhealer.incidents import key_given_twice

        twice = key_given_twice(await request.body(), tuple(IncidentsRequest.model_fields))
        if twice is not None:
            raise DataValidationError(f"the key {twice!r} appears more than once in the body")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if run_jobs:
            runner.start()
        try:
            yield
        finally:
            if run_jobs:
                runner.stop()

    app = FastAPI(
        title="SystemHealer web",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.runner = runner
    app.add_middleware(
        BodyLimit,
        prefix=API,
        max_bytes=int(settings.serving.max_upload_mb * 2**20),
        setting=UPLOAD_LIMIT,
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if request.url.path.startswith(API):
            response.headers.setdefault("Cache-Control", "no-store")
        elif request.url.path.startswith("/ui/static/"):
            # Revalidate (a cheap 304): an upgraded service never runs yesterday's scripts.
            response.headers.setdefault("Cache-Control", "no-cache")
        return response

    @app.exception_handler(SystemHealerError)
    async def user_error(_: Request, exc: SystemHealerError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, TokenError) else None
        return JSONResponse(_error_payload(exc), status_code=_status_of(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
            for e in exc.errors()[:3]
        ]
        return JSONResponse({"error": "; ".join(problems) or "invalid request"}, status_code=422)

    # --- pages ---

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home_page() -> HTMLResponse:
        return HTMLResponse(_page_html("home"))

    def page_route(name: str) -> None:
        def page() -> HTMLResponse:
            return HTMLResponse(_page_html(name))

        app.add_api_route(f"/ui/{name}", page, response_class=HTMLResponse, name=f"page-{name}")

    for name in PAGES[1:]:
        page_route(name)

    @app.get("/ui", include_in_schema=False)
    @app.get("/ui/", include_in_schema=False)
    def ui_root() -> RedirectResponse:
        return RedirectResponse("/", status_code=307)

    app.mount("/ui/static", StaticFiles(directory=STATIC), name="web-static")

    # --- settings the page needs, status ---

    @app.get(f"{API}/config")
    def page_config() -> dict[str, Any]:
        return {
            "class_names": list(settings.serving.class_names),
            "fault_classes": list(FAULT_CLASSES),
            "features": list(KPI_FEATURES),
            "token_required": settings.serving.api_token is not None,
            "max_upload_bytes": int(settings.serving.max_upload_mb * 2**20),
            "max_incidents": settings.serving.max_batch_incidents,
            "mlflow_ui_url": settings.web.mlflow_ui_url,
            "prefect_ui_url": reports.prefect_ui_url(settings),
            "model_name": settings.registry.model_name,
            "max_epochs": settings.training.max_epochs,
            "ensemble_size": settings.training.ensemble_size,
        }

    @app.get(f"{API}/status")
    def status() -> dict[str, Any]:
        current = tracking.champion(settings)
        queue: dict[str, dict[str, int]] = {}
        for kind in jobs.JOB_KINDS:
            listed = store.list(kind)
            queue[kind] = {
                "queued": sum(j.status == jobs.QUEUED for j in listed),
                "running": sum(j.status == jobs.RUNNING for j in listed),
            }
        return {
            "champion": reports.version_summary(settings, current, current.version, fingerprints)
            if current
            else None,
            "queue": queue,
            "runner_active": runner.active or not run_jobs,
        }

    # --- jobs ---

    def job_view(
        job: jobs.Job, full: bool = True, listed: list[jobs.Job] | None = None
    ) -> dict[str, Any]:
        """A job as the page shows it; ``listed`` = the jobs of its kind, if already read."""
        same_kind = store.list(job.kind) if listed is None else listed
        queued = [j.id for j in reversed(same_kind) if j.status == jobs.QUEUED]
        view = job.to_dict()
        view.pop("pid", None)
        view["queue_position"] = queued.index(job.id) + 1 if job.id in queued else None
        view["running"] = sum(j.status == jobs.RUNNING for j in same_kind)
        view["progress"] = store.read(job.id, "progress.json")
        if job.status == jobs.FAILED:
            view["error_detail"] = store.read(job.id, "error.json")
        if full and job.status == jobs.SUCCEEDED:
            view["result"] = store.read(job.id, "result.json")
        progress = view["progress"] or {}
        if job.kind == jobs.TRAIN and job.status == jobs.RUNNING and not progress.get("epoch"):
            view["waiting_for"] = _training_lock_holder(settings, job.pid)
        return view

    @app.get(f"{API}/jobs")
    def list_jobs(
        kind: Annotated[Literal["train", "diagnose"] | None, Query()] = None,
    ) -> list[dict[str, Any]]:
        listed = store.list(kind)
        by_kind = {k: [j for j in listed if j.kind == k] for k in jobs.JOB_KINDS}
        return [job_view(j, full=False, listed=by_kind[j.kind]) for j in listed[:50]]

    @app.get(f"{API}/jobs/{{job_id}}")
    def get_job(job_id: str) -> dict[str, Any]:
        return job_view(store.get(job_id))

    @app.post(f"{API}/jobs/{{job_id}}/cancel", dependencies=[require_token])
    def cancel_job(job_id: str) -> dict[str, Any]:
        return job_view(store.request_cancel(job_id), full=False)

    def queue(kind: str, source: str, params: dict[str, Any], take: Any) -> jobs.Job:
        job = store.create(kind, source, params, take)
        store.prune(settings.web.keep_jobs)
        runner.wake()
        return job

    # --- uploads: stored and checked at once; the verdict is an answer, not an HTTP error ---

    @app.post(f"{API}/uploads", dependencies=[require_token])
    def upload_file(
        file: Annotated[UploadFile, File()],
        purpose: Annotated[Literal["train", "diagnose"], Form()] = "train",
    ) -> dict[str, Any]:
        """Store an uploaded file and check it: a training file is validated in full (blocking
        errors and drift warnings against the champion), a file to diagnose by its type and
        header (its rows are checked by the job). ``ok`` false says why, in ``error``."""
        upload = uploads.new(file.filename)
        size = _copy_upload(file, upload.path)
        answer: dict[str, Any] = {
            "upload_id": upload.id,
            "filename": upload.filename,
            "size_bytes": size,
            "purpose": purpose,
        }
        try:
            _refuse_bombs(upload.path, upload.filename)
            if purpose == "train":
                with validating:
                    answer.update(_check_training_file(upload.path, upload.filename))
            else:
                champion.get()  # no champion: say so before anything is queued
                _check_header(upload.path, upload.filename)
                answer["ok"] = True
        except SystemHealerError as exc:
            answer.update(ok=False, **_error_payload(exc))
        if answer["ok"]:
            uploads.save_meta(upload, answer)
            uploads.make_room(upload)
        else:
            uploads.discard(upload.id)  # nothing can be done with it
            answer.pop("upload_id")
        return answer

    def _refuse_bombs(path: Path, shown: str) -> None:
        try:
            refuse_unpacked_over(path, int(settings.serving.max_upload_mb * 2**20), UPLOAD_LIMIT)
        except DataValidationError as exc:
            raise DataValidationError(str(exc).replace(path.name, shown)) from exc

    def _check_training_file(path: Path, shown: str) -> dict[str, Any]:
        from systemhealer.validation import validate_file

        report, frame = validate_file(
            path, settings.data, require_label=True, profile=champion.profile()
        )
        report.source = shown
        for issue in report.issues:
            issue.message = issue.message.replace(str(path), shown)
        counts: dict[str, int] = {}
        if LABEL in frame.columns and report.ok:
            values = pd.to_numeric(frame[LABEL], errors="coerce").dropna().astype(int)
            counts = {str(c): int((values == c).sum()) for c in FAULT_CLASSES}
        checked: dict[str, Any] = {
            "ok": report.ok,
            "validation": report.to_dict(),
            "class_counts": counts,
        }
        if not report.ok:
            checked["error"] = report.summary()
        else:  # what training will refuse after de-duplication, refused here already
            from systemhealer.training import splittable_incidents

            try:
                splittable_incidents(frame, settings)
            except TrainingError as exc:
                checked.update(ok=False, error=f"{shown}: {exc}")
        return checked

    def queue_upload(
        upload_id: str, kind: str, params: Callable[[jobs.Upload], dict[str, Any]]
    ) -> tuple[jobs.Job, jobs.Upload]:
        """Turn a checked upload into a queued job of ``kind``, its file moved into the job."""
        purpose = "train" if kind == jobs.TRAIN else "diagnose"
        with uploads.lock:  # not removed to make room while it is being moved
            upload = uploads.get(upload_id)
            if upload.meta.get("purpose") != purpose or not upload.meta.get("ok"):
                raise jobs.JobNotFoundError(f"no checked upload {upload_id!r} to {purpose}")
            try:
                job = queue(
                    kind, upload.filename, params(upload),
                    lambda target: os.replace(upload.path, target),
                )  # fmt: skip
            except FileNotFoundError as exc:  # a second request for it won the race
                raise jobs.JobConflictError(
                    f"upload {upload_id!r} is gone: queued by another request, or expired"
                ) from exc
        uploads.discard(upload.id)
        return job, upload

    # --- training ---

    @app.post(f"{API}/training-jobs", status_code=202, dependencies=[require_token])
    def start_training(request: TrainingRequest) -> dict[str, Any]:
        """Queue a training of a validated upload through the Prefect training flow."""
        job, upload = queue_upload(
            request.upload_id,
            jobs.TRAIN,
            lambda upload: {
                "class_counts": upload.meta.get("class_counts"),
                "rows": _rows(upload.meta),
            },
        )
        store.write(job.id, "validation.json", upload.meta.get("validation"))
        return job_view(job, full=False)

    # --- diagnosis ---

    @app.post(f"{API}/diagnosis-jobs", status_code=202, dependencies=[require_token])
    def start_diagnosis(request: DiagnosisRequest) -> dict[str, Any]:
        """Queue a checked upload for diagnosis (validated and scored in the background)."""
        from systemhealer.deployments import is_calibrated, list_deployments

        deployment = (request.deployment or "").strip() or None
        if not is_calibrated(deployment):  # none, or "training": the training statistics
            deployment = None
        if deployment is not None and deployment not in {
            d.name for d in list_deployments(settings)
        }:
            raise DeploymentNotFoundError(f"no calibrated deployment named {deployment!r}")
        job, _ = queue_upload(
            request.upload_id, jobs.DIAGNOSE, lambda _: {"deployment": deployment}
        )
        return job_view(job, full=False)

    @app.post(f"{API}/diagnose", dependencies=[require_token, Depends(keys_once)])
    def diagnose_incidents(request: IncidentsRequest) -> dict[str, Any]:
        """Diagnose one incident or a short list sent as JSON: rows and chart data, or
        ``ok`` false and the field at fault."""
        from systemhealer.deployments import deployment_stats
        from systemhealer.diagnoser import diagnoses_frame
        from systemhealer.incidents import parse_incidents

        try:
            if (request.incident is None) == (request.incidents is None):
                raise DataValidationError(
                    "send either 'incident' (one object) or 'incidents' (a list)"
                )
            if request.incident is not None:
                rows = parse_incidents(request.incident, 1, field="incident", single=True)
            else:
                rows = parse_incidents(request.incidents, settings.serving.max_batch_incidents)
            diagnoser, version = champion.get()
            stats = deployment_stats(settings, diagnoser, request.deployment or None)
        except SystemHealerError as exc:
            return {"ok": False, **_error_payload(exc)}
        features = pd.DataFrame(rows.features, columns=list(KPI_FEATURES))
        diagnoses = diagnoses_frame(diagnoser.probabilities(features, stats))
        diagnoses.insert(0, "sample_id", pd.Series(rows.sample_ids, dtype=object))
        kpis_read = diagnoser.kpis_read(features)
        sample = jobs.EmbeddingSample(settings.web.embedding_points)
        sample.offer(features, 0)
        unread = int((kpis_read == 0).sum())
        summary = jobs.diagnosis_summary(diagnoses, diagnoser, stats, unread, sample)
        records = [
            {**{k: jobs.json_value(v) for k, v in record.items()}, "kpis_read": int(read)}
            for record, read in zip(
                diagnoses[list(PREDICTION_COLUMNS)].to_dict(orient="records"),
                kpis_read,
                strict=True,
            )
        ]
        return {
            "ok": True,
            **summary,
            "model_version": version,
            "deployment": request.deployment or "training",
            "diagnoses": records,
        }

    @app.get(f"{API}/diagnose/example")
    def example_incident() -> dict[str, Any]:
        """A real incident to start from: the champion's logged input example."""
        current = tracking.champion(settings)
        if current is None:
            raise ModelNotFoundError("there is no champion model yet")
        example = tracking.input_example(settings, current.version)
        if example is None or example.empty:
            raise ModelNotFoundError(f"version {current.version} has no input example")
        row = example.iloc[0]
        incident: dict[str, Any] = {"sample_id": "example-1"}
        incident.update({k: jobs.json_value(row.get(k)) for k in KPI_FEATURES if k in row.index})
        return {"incident": {k: (None if _missing(v) else v) for k, v in incident.items()}}

    @app.get(f"{API}/jobs/{{job_id}}/rows")
    def diagnosis_rows(
        job_id: str,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_ROWS)] = 25,
        sort: Annotated[str | None, Query()] = None,
        descending: Annotated[bool, Query()] = False,
    ) -> dict[str, Any]:
        """A page of a diagnosis job's table, sorted by any of its columns."""
        path = store.path(job_id, "diagnoses.parquet")
        if not path.exists():
            raise jobs.JobNotFoundError(f"job {job_id} has no diagnoses (yet)")
        table = tables.get(path)
        if sort is not None:
            if sort not in PREDICTION_COLUMNS:
                raise DataValidationError(f"cannot sort by {sort!r}")
            table = table.sort_values(sort, ascending=not descending, kind="stable")
        page = table.iloc[offset : offset + limit]
        return {
            "total": len(table),
            "offset": offset,
            "rows": [
                {k: jobs.json_value(v) for k, v in r.items()}
                for r in page.to_dict(orient="records")
            ],
        }

    @app.get(f"{API}/jobs/{{job_id}}/download/{{name}}")
    def download_job_file(job_id: str, name: str) -> Response:
        """Results by job id and a fixed name: never a path from the request."""
        job = store.get(job_id)
        stem = f"systemhealer-{job.kind}-{job.id}"
        if job.kind == jobs.DIAGNOSE and name in ("diagnoses.csv", "validation.json"):
            path = store.path(job_id, name)
            if path.exists():
                return FileResponse(path, filename=f"{stem}-{name}")
        if job.kind == jobs.DIAGNOSE and name == "diagnoses.json":
            parquet = store.path(job_id, "diagnoses.parquet")
            result = store.read(job_id, "result.json") or {}
            if parquet.exists():
                return StreamingResponse(
                    jobs.iter_diagnoses_json(parquet, result.get("model_version")),
                    media_type="application/json",
                    headers=_attachment(f"{stem}-diagnoses.json"),
                )
        if job.kind == jobs.TRAIN and name == "report.json":
            result = store.read(job_id, "result.json")
            if isinstance(result, dict):
                return JSONResponse(result, headers=_attachment(f"{stem}-report.json"))
        raise jobs.JobNotFoundError(f"job {job_id} has no downloadable {name!r}")

    # --- models ---

    @app.get(f"{API}/models")
    def list_models() -> dict[str, Any]:
        versions = tracking.list_versions(settings)
        current = tracking.champion(settings)
        champion_version = current.version if current else None
        earlier = [v for v in tracking.champion_history(settings) if v != champion_version]
        return {
            "model_name": settings.registry.model_name,
            "champion_alias": settings.registry.champion_alias,
            "champion_version": champion_version,
            # What a rollback would restore (None: nothing to roll back to).
            "rollback_to": earlier[-1] if champion_version and earlier else None,
            "versions": [
                reports.version_summary(settings, v, champion_version, fingerprints)
                for v in versions
            ],
            "prefect_ui_url": reports.prefect_ui_url(settings),
            "mlflow_ui_url": settings.web.mlflow_ui_url,
        }

    def checked_version(version: str) -> str:
        # ASCII digits only: "²" is a digit to str.isdigit, and int() refuses it.
        if not (version.isascii() and version.isdigit()) or len(version) > 9:
            raise ModelNotFoundError(f"no model version {version!r}")
        return str(int(version))  # as the registry spells it: "01" → "1"

    @app.get(f"{API}/models/{{version}}/report")
    def model_report(version: str, download: bool = False) -> JSONResponse:
        info = tracking.get_version(settings, checked_version(version))
        report = reports.run_report(settings, info.run_id) if info.run_id else None
        if report is None:
            raise ModelNotFoundError(f"version {version} has no training run in MLflow")
        headers = _attachment(f"{settings.registry.model_name}-v{version}-report.json")
        return JSONResponse(report, headers=headers if download else None)

    archive_lock = threading.Lock()

    @app.get(f"{API}/models/{{version}}/archive")
    def model_archive(version: str) -> FileResponse:
        """The registered MLflow model of a version as a zip (``mlflow.pyfunc.load_model``
        loads the unpacked folder)."""
        info = tracking.get_version(settings, checked_version(version))
        name = f"{settings.registry.model_name}-v{info.version}"
        target = settings.jobs_dir / "archives" / f"{name}.zip"
        with archive_lock:
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                    folder = tracking.download_model(
                        settings, tracking.version_uri(settings, info.version), Path(tmp) / name
                    )
                    made = shutil.make_archive(str(Path(tmp) / name), "zip", folder)
                    os.replace(made, target)
        return FileResponse(target, media_type="application/zip", filename=f"{name}.zip")

    @app.post(f"{API}/models/{{version}}/promote", dependencies=[require_token])
    def promote(version: str) -> dict[str, Any]:
        return {
            "champion": tracking.set_champion(
                settings, checked_version(version), timeout=CHAMPION_WAIT_SECONDS
            )
        }

    @app.post(f"{API}/models/rollback", dependencies=[require_token])
    def rollback() -> JSONResponse:
        try:
            before, after = tracking.rollback_champion(settings, timeout=CHAMPION_WAIT_SECONDS)
        except ModelNotFoundError as exc:  # nothing to roll back to: the request conflicts
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse({"from": before, "champion": after})

    # --- deployments (calibration) ---

    @app.get(f"{API}/deployments")
    def deployments_list() -> list[dict[str, Any]]:
        from systemhealer.deployments import list_deployments

        return [d.to_dict() for d in list_deployments(settings)]

    @app.post(f"{API}/deployments", dependencies=[require_token])
    def calibrate(
        name: Annotated[str, Form()], file: Annotated[UploadFile, File()]
    ) -> dict[str, Any]:
        """Register (or replace) a deployment from a file of its unlabelled incidents."""
        from systemhealer.deployments import check_name, reference_warnings, register_deployment
        from systemhealer.validation import require_valid, validate_file

        settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        shown = Path(file.filename or "upload").name
        with tempfile.TemporaryDirectory(dir=settings.jobs_dir) as tmp:
            path = Path(tmp) / jobs.input_name(file.filename)
            _copy_upload(file, path)
            try:
                check_name(name)
                _refuse_bombs(path, shown)
                report, frame = validate_file(
                    path, settings.data, require_label=False, drop_labels=True
                )  # never sees labels
                report.source = shown
                for issue in report.issues:
                    issue.message = issue.message.replace(str(path), shown)
                require_valid(report)
                warnings = [issue.message for issue in report.warnings]
                try:
                    diagnoser, _ = champion.get()
                except ModelNotFoundError:
                    pass
                else:  # refuses a window the champion cannot calibrate on, before storing
                    warnings += reference_warnings(settings, diagnoser, frame)
                info = register_deployment(settings, name, frame, source=shown)
            except SystemHealerError as exc:
                return {"ok": False, **_error_payload(exc)}
        return {
            "ok": True,
            "deployment": info.to_dict(),
            "class_mix": _estimated_mix(info.name),
            "warnings": warnings,
        }

    @app.delete(f"{API}/deployments/{{name}}", dependencies=[require_token])
    def remove_deployment(name: str) -> dict[str, Any]:
        """Forget a deployment; its incidents are refused until it is calibrated again."""
        from systemhealer.deployments import remove_deployment

        return {"removed": remove_deployment(settings, name).to_dict()}  # 404 / 422 if not

    def _estimated_mix(name: str) -> list[float] | None:
        """The champion's estimate of the deployment's class mix (also warms its statistics)."""
        from systemhealer.deployments import deployment_stats

        try:
            diagnoser, _ = champion.get()
        except ModelNotFoundError:
            return None
        stats = deployment_stats(settings, diagnoser, name)
        if stats is None or stats.reference_mix is None:
            return None
        return [round(float(share), 4) for share in stats.reference_mix]

    return app


def _training_lock_holder(settings: Settings, own_pid: int | None) -> str | None:
    """Who holds the training lock, if not this job's own process (a scheduled retraining, a
    `systemhealer train`): the flow waits for it before it starts."""
    from systemhealer.locks import TRAINING, describe_holder, state_lock

    holder = state_lock(settings, TRAINING).holder()
    if holder is None or holder.get("pid") == own_pid:
        return None
    return describe_holder(holder)


def _check_header(path: Path, shown: str) -> None:
    """Refuse a file whose type or header is wrong at once (rows are checked by the job)."""
    from systemhealer.streaming import open_source

    try:
        open_source(path)
    except DataValidationError as exc:
        raise DataValidationError(str(exc).replace(str(path), shown)) from exc
    except (OSError, ValueError) as exc:  # e.g. a Parquet file pyarrow cannot open
        raise DataValidationError(f"{shown}: not a readable CSV or Parquet file ({exc})") from exc


def _rows(meta: dict[str, Any]) -> int | None:
    validation = meta.get("validation")
    return validation.get("rows") if isinstance(validation, dict) else None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not np.isfinite(value))


def _attachment(filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}
