"""The BentoML service: SystemHealer's diagnoses over HTTP, a thin shell over the library.

Start it with ``systemhealer serve`` (127.0.0.1:3000) or
``bentoml serve systemhealer.service:FaultDiagnosisService``.

- ``POST /predict``        ``{"incident": {...}, "deployment": null}`` → one diagnosis
- ``POST /predict_batch``  ``{"incidents": [...], "deployment": null}`` → diagnoses, in order
- ``POST /predict_csv``    multipart file ``file`` (CSV/Parquet) → CSV as ``systemhealer predict``
- ``GET  /model_info``     the served champion: version, run, training metrics, features
- ``GET  /docs``           OpenAPI docs (spec at ``/docs.json``); ``/livez``, ``/readyz``,
  ``/metrics`` are BentoML's.

The work is done by :mod:`systemhealer.incidents` (checking JSON incidents),
:mod:`systemhealer.serving` (champion hot swap, adaptive batching) and :mod:`systemhealer.scoring`
(the CLI's scoring, reused for uploaded files). This module only wires them to HTTP.
"""

import asyncio
import json
import logging
import os
import time
from typing import Annotated, Any

import bentoml
import orjson
from bentoml._internal.server.http import traffic as _bentoml_traffic
from fastapi import FastAPI, File, Form, UploadFile
from pydantic import BaseModel, Field, RootModel, WithJsonSchema
from starlette.responses import HTMLResponse, JSONResponse, Response

from systemhealer.config import FAULT_CLASSES, load_settings
from systemhealer.data import KPI_FEATURES, SAMPLE_ID
from systemhealer.errors import DeploymentNotFoundError, ModelNotFoundError, SystemHealerError
from systemhealer.http_guard import AnswerTimeout, RequestGuard
from systemhealer.incidents import IncidentError, describe_json, key_given_twice, parse_incidents
from systemhealer.serving import (
    ChampionWatcher,
    Diagnoses,
    DiagnosisJob,
    MicroBatcher,
    ServedModel,
    diagnose_jobs,
    limit_torch_threads,
    score_uploaded_file,
)
from systemhealer.web import create_app as create_web_app

# BentoML's usage analytics would phone home; nothing here reaches the internet.
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# BentoML's request timeout (traffic.timeout) kept every request's timer alive for the whole
# timeout, so memory rose with the request count (issue 7): the same middleware, with the timer
# cancelled once answered. BentoML looks the class up in this module when it builds the app.
_bentoml_traffic.TimeoutMiddleware = AnswerTimeout  # type: ignore[misc]

settings = load_settings()  # frozen; read once, at import, because the decorators need it
JSON_ROUTES = ("/predict", "/predict_batch")
UPLOAD_ROUTE = "/predict_csv"

# --- request and response models (the OpenAPI docs are generated from these) ---

_NUMBER_OR_NULL = {"type": "number", "nullable": True}
INCIDENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Incident",
    "description": "KPI snapshot of one incident. Absent or null features are missing values; "
    "at least one KPI value is needed. 'sample_id' (string or integer) is echoed back.",
    "properties": {
        SAMPLE_ID: {"anyOf": [{"type": "string"}, {"type": "integer"}], "nullable": True},
        **{name: _NUMBER_OR_NULL for name in KPI_FEATURES},
    },
    "additionalProperties": False,
    "example": {SAMPLE_ID: "inc-1", "feature0": 0.0, "feature1": 8.0, "feature2": 1.25},
}
# Incidents are parsed as plain JSON and checked by the library, which names the incident and
# field at fault; the schema above only documents them.
IncidentJSON = Annotated[dict[str, Any], WithJsonSchema(INCIDENT_SCHEMA)]
# (list[dict] rather than list[Any]: pydantic parses it 2.4x faster, ~16 ms per 1,000 incidents)
IncidentListJSON = Annotated[
    list[dict[str, Any]], WithJsonSchema({"type": "array", "items": INCIDENT_SCHEMA})
]
DeploymentName = Annotated[
    str | None,
    Field(
        description="Calibrated deployment whose statistics normalise the incidents "
        "(`systemhealer calibrate NAME FILE`); null = the training data's.",
    ),
]


class Diagnosis(BaseModel):
    """The diagnosis of one incident."""

    sample_id: str | int | None = Field(description="as sent; else the incident's position")
    predicted_label: int = Field(description=f"fault class, one of {list(FAULT_CLASSES)}")
    confidence: float = Field(description="probability of the predicted class")
    probabilities: list[float] = Field(description="probability of each fault class 0…5")
    kpis_read: int = Field(
        description="how many of the KPIs the model reads (/model_info features_used) have a "
        "value in this incident; 0 = no evidence: the answer to an incident it knows nothing of"
    )
    model_version: str = Field(description="registered model version that diagnosed it")


class DiagnosisList(RootModel[list[Diagnosis]]):
    """Diagnoses, one per incident, in request order."""


# --- errors → 4xx (a 5xx is a bug) ---


def _status(exc: SystemHealerError) -> int:
    if isinstance(exc, IncidentError):
        return exc.http_status
    if isinstance(exc, DeploymentNotFoundError):
        return 404
    if isinstance(exc, ModelNotFoundError):
        return 503  # no champion loaded yet: the request was fine, the service is not ready
    return 400


def _error(exc: SystemHealerError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=_status(exc))


def _json(payload: Any) -> Response:
    # orjson: serialising 1,000 diagnoses takes ~1 ms instead of ~10 ms through pydantic.
    return Response(orjson.dumps(payload), media_type="application/json")


def _not_ready() -> str | None:
    """Why the service is not ready (for /readyz), or None."""
    try:
        service = bentoml.get_current_service()
    except bentoml.exceptions.BentoMLException:
        return "starting"
    watcher = getattr(service, "watcher", None)
    return watcher.problem if isinstance(watcher, ChampionWatcher) else None


DOCS_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="UTF-8"><title>SystemHealer API</title>
<link rel="stylesheet" href="/static_content/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/static_content/swagger-ui-bundle.js"></script>
<script>
window.onload = () => { window.ui = SwaggerUIBundle({
  url: "/docs.json", dom_id: "#swagger-ui", validatorUrl: null, deepLinking: true,
  // BentoML's default description embeds badges from img.shields.io & co: drop it.
  responseInterceptor: (res) => {
    if (res.url.endsWith("/docs.json") && res.obj && res.obj.info) {
      res.obj.info.description = "SystemHealer fault diagnosis API.";
      res.text = JSON.stringify(res.obj);
    }
    return res;
  } }); };
</script></body></html>
"""
# Nothing from another host, as on the web pages (the inline script above needs 'unsafe-inline').
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; connect-src 'self'; object-src 'none'"
)

# Plain HTTP routes beside the BentoML APIs: GET pages and the multipart upload (parsed by
# FastAPI here, because BentoML's file inputs fetch URLs sent in place of a file).
http_app = FastAPI(title="SystemHealer", docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.service(
    name="systemhealer",
    workers=1,
    http={"host": settings.serving.host, "port": settings.serving.port},
    traffic={"timeout": 600},
    # Tracing spans cost ~0.5 ms per request; nothing exports them by default.
    tracing={"excluded_urls": ["/predict", "/livez", "/readyz", "/metrics"]},
    logging={
        "access": {
            "enabled": settings.serving.access_log,
            "skip_paths": ["/livez", "/readyz", "/metrics"],
        }
    },
)
@bentoml.asgi_app(http_app, path="/")
# The web platform (pages at / and /ui/…, its API under /ui/api/…; issue 5).
@bentoml.asgi_app(create_web_app(settings), path="/")
# Mounts only answer paths their own routes match, so the API routes above stay reachable;
# the web app must not define /docs or /model_info, and should set docs_url=None.
class FaultDiagnosisService:
    """Fault diagnosis of distributed-system incidents from their KPI snapshots."""

    def __init__(self) -> None:
        logging.getLogger("systemhealer").setLevel(logging.INFO)  # model swaps are worth a line
        limit_torch_threads(1)
        self.settings = settings
        self.watcher = ChampionWatcher(settings)
        if settings.serving.bundled_model:  # inside a Bento: its packaged model, for good
            from systemhealer.bundle import load_bundled

            self.watcher.serve_fixed(load_bundled(settings.serving.bundled_model, settings))
        else:
            self.watcher.start()
        self.batcher: MicroBatcher[DiagnosisJob, Diagnoses] = MicroBatcher(self._diagnose)

    def _diagnose(self, jobs: list[DiagnosisJob]) -> list[Diagnoses | Exception]:
        model = self.watcher.current  # one model for the whole pass, even during a swap
        if model is None:
            return [ModelNotFoundError(self.watcher.problem or "no model loaded")] * len(jobs)
        return diagnose_jobs(model, jobs, self.settings)

    def __is_ready__(self) -> bool:
        return self.watcher.current is not None

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop the champion watcher and the diagnosis thread."""
        self.watcher.stop()
        self.batcher.close()

    @bentoml.api(route="/predict", output_spec=Diagnosis)
    async def predict(self, incident: IncidentJSON, deployment: DeploymentName = None) -> Response:
        """Diagnose one incident (concurrent calls share forward passes)."""
        return await self.diagnose_one(incident, deployment)

    async def diagnose_one(self, incident: dict[str, Any], deployment: str | None) -> Response:
        """What ``/predict`` answers (also reached by :func:`_fast_predict`)."""
        try:
            rows = parse_incidents(incident, max_incidents=1, field="incident", single=True)
            diagnoses = await self.batcher.submit(DiagnosisJob(rows, deployment))
        except SystemHealerError as exc:
            return _error(exc)
        return _json(diagnoses.records()[0])

    @bentoml.api(route="/predict_batch", output_spec=DiagnosisList)
    async def predict_batch(
        self, incidents: IncidentListJSON, deployment: DeploymentName = None
    ) -> Response:
        """Diagnose a list of incidents; answers a list of diagnoses in the same order."""
        return await self.diagnose_many(incidents, deployment)

    async def diagnose_many(
        self, incidents: list[dict[str, Any]], deployment: str | None
    ) -> Response:
        """What ``/predict_batch`` answers (also reached by :func:`_fast_predict_batch`)."""
        try:
            rows = parse_incidents(incidents, self.settings.serving.max_batch_incidents)
            diagnoses = await self.batcher.submit(DiagnosisJob(rows, deployment))
        except SystemHealerError as exc:
            return _error(exc)
        return _json(diagnoses.records())

    @http_app.post(
        UPLOAD_ROUTE,
        response_class=Response,
        responses={200: {"content": {"text/csv": {}}, "description": "the diagnoses as CSV"}},
        summary="Diagnose a CSV or Parquet file of incidents",
    )
    async def predict_csv(
        self,
        file: Annotated[UploadFile, File(description="CSV (.csv, .csv.gz) or Parquet file")],
        deployment: Annotated[str | None, Form(description="calibrated deployment")] = None,
    ) -> Response:
        """Validate and diagnose a file like ``systemhealer predict``; answers the same CSV."""
        try:
            model: ServedModel = self.watcher.require()
            body = await asyncio.to_thread(
                score_uploaded_file, file.file, file.filename, model, deployment, self.settings
            )
        except SystemHealerError as exc:
            return _error(exc)
        return Response(
            body,
            media_type="text/csv",
            headers={
                "Content-Disposition": 'attachment; filename="diagnoses.csv"',
                "X-Model-Version": model.version,
            },
        )

    @http_app.get("/model_info", summary="The served model")
    async def model_info(self) -> JSONResponse:
        """Name, version, alias, run id, training metrics, features and load time."""
        model = self.watcher.current
        if model is None:
            return JSONResponse({"error": self.watcher.problem}, status_code=503)
        stats = self.batcher.stats
        info = model.info()
        info["serving"] = {
            "passes": stats.batches,
            "requests": stats.jobs,
            "largest_pass": stats.largest,
            "model_swaps": self.watcher.swaps,
        }
        return JSONResponse(info)

    @http_app.get("/docs", include_in_schema=False)
    async def docs(self) -> HTMLResponse:
        """Swagger UI from local files (BentoML's own index page loads a tracker)."""
        return HTMLResponse(DOCS_PAGE, headers={"Content-Security-Policy": DOCS_CSP})


def _bad_body(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def _plain_request(body: bytes, field: str) -> tuple[Any, str | None] | JSONResponse:
    """``(payload[field], deployment)`` of a body of the form ``{field: ..., "deployment":
    null | "name"}``, or a 400 answer saying what is wrong with it (BentoML's own route would
    ignore unknown fields, so a mistyped "deployment" key would silently score with the
    training statistics). The shape of ``payload[field]`` is checked by parse_incidents."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson also refuses integers beyond 64 bits and ±Infinity/NaN, which the incident
        # checks name with their field (parse_incidents refuses NaN: it is not JSON).
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:
            return _bad_body(f"malformed JSON: {exc}")
    expected = f"'{field}' and optionally 'deployment'"
    if not isinstance(payload, dict):
        return _bad_body(
            f"the body must be a JSON object with {expected}, got {describe_json(payload)}"
        )
    twice = key_given_twice(body, ("deployment", field))
    if twice is not None:
        return _bad_body(f"the key {twice!r} appears more than once in the body")
    unknown = sorted(set(payload) - {field, "deployment"})
    if unknown:
        names = ", ".join(repr(k) for k in unknown[:5])
        return _bad_body(f"unknown field(s) {names}: the body takes {expected}")
    if field not in payload:
        return _bad_body(f"{field}: field required (the body takes {expected})")
    deployment = payload.get("deployment")
    if not (deployment is None or isinstance(deployment, str)):
        return _bad_body(
            "deployment: must be the name of a calibrated deployment (a string) or null, got "
            f"{describe_json(deployment)}"
        )
    return payload[field], deployment


def _current_service() -> Any:
    try:
        return bentoml.get_current_service()
    except bentoml.exceptions.BentoMLException:
        return None


# /predict and /predict_batch without BentoML's per-request machinery (input model, serde,
# signature inspection, metrics), which costs about as much CPU as the rest of a single-incident
# request: a plain well-formed body is answered right after the request guard's checks by the
# same code as the BentoML API; any other body returns None and takes BentoML's route.
# These requests skip BentoML's own request metrics, so they are counted here
# (``/metrics``: systemhealer_fast_request_duration_seconds_count{endpoint, http_response_code}).
FAST_REQUEST_SECONDS = bentoml.metrics.Histogram(
    name="systemhealer_fast_request_duration_seconds",
    documentation="Requests answered by the fast path, by endpoint and status",
    labelnames=["endpoint", "http_response_code"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def _observe(endpoint: str, started: float, answer: Response | None) -> Response | None:
    if answer is not None:
        FAST_REQUEST_SECONDS.labels(
            endpoint=endpoint, http_response_code=str(answer.status_code)
        ).observe(time.perf_counter() - started)
    return answer


async def _fast_predict(body: bytes) -> Response | None:
    started = time.perf_counter()
    request, service = _plain_request(body, "incident"), _current_service()
    if service is None:
        return None
    if isinstance(request, Response):
        return _observe("/predict", started, request)
    return _observe("/predict", started, await service.diagnose_one(*request))


async def _fast_predict_batch(body: bytes) -> Response | None:
    started = time.perf_counter()
    request, service = _plain_request(body, "incidents"), _current_service()
    if service is None:
        return None
    if isinstance(request, Response):
        return _observe("/predict_batch", started, request)
    return _observe("/predict_batch", started, await service.diagnose_many(*request))


FaultDiagnosisService.add_asgi_middleware(
    RequestGuard,
    json_routes=JSON_ROUTES,
    upload_routes=(UPLOAD_ROUTE,),
    max_body_bytes=int(settings.serving.max_body_mb * 2**20),
    max_upload_bytes=int(settings.serving.max_upload_mb * 2**20),
    api_token=settings.serving.api_token,
    not_ready=_not_ready,
    fast_routes={"/predict": _fast_predict, "/predict_batch": _fast_predict_batch},
)
