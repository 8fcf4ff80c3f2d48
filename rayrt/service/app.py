"""The HTTP API: a Ray Serve ingress (FastAPI), the master server of the planning service.

Routes::

    GET  /health                         scheduler queue and computers
    GET  /queue                          compute queue in run order: position, job id, priority
    POST /patients                       multipart upload (a zip or DICOM files) -> 201 PatientSummary
    GET  /patients                       stored patient ids
    GET  /patients/{id}                  PatientSummary
    POST /patients/{id}/structures       a delineation request (method: auto | grow | interpolate |
                                         margin | boolean | ring | polygons | pet_threshold | edit)
    GET  /patients/{id}/structures/log   the operations log (?name= for one structure)
    GET  /patients/{id}/rtstruct         every structure as an RTSTRUCT file
    POST /jobs                           JobRequest (patient_id, order, priority, machines) -> 201 Job
    GET  /jobs                           every job
    GET  /jobs/{id}                      Job: state, stage, per-stage progress, errors, timestamps
    POST /jobs/{id}/cancel               drop a queued job
    GET  /jobs/{id}/results              JobResults: the files the stages wrote
    GET  /jobs/{id}/results/{path}       one result file

Bad input answers 4xx with ``{"error", "message", "field"?}`` (from
:class:`~rayrt.domain.errors.InputError`); nothing stored changes on a rejected request.

NOTE: no ``from __future__ import annotations`` in this module: FastAPI must see real types on
the route signatures of a ``@serve.ingress`` class.
"""

import logging
import mimetypes
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayrt.domain.errors import InputError
from rayrt.domain.job import Job
from rayrt.pipeline import validate_order
from rayrt.service.intake import import_upload
from rayrt.service.models import JobList, JobRequest, JobResults, PatientSummary
from rayrt.service.settings import ServiceSettings
from rayrt.service.store import Store
from rayrt.service.structures import StructuresResponse, apply_structure_request, structure_log, structures_rtstruct

log = logging.getLogger("rayrt.service")

api = FastAPI(title="rayrt", description="Elastic cloud radiotherapy treatment planning on Ray", version="0.1.0")


@api.exception_handler(InputError)
async def _input_error(request: Request, exc: InputError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content=exc.to_json())


@api.exception_handler(RequestValidationError)
async def _request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    body = {"error": "request", "message": f"invalid request: {field or 'body'}: {first.get('msg')}"}
    if field:
        body["field"] = field
    return JSONResponse(status_code=422, content=body)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
    message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
    return JSONResponse(status_code=exc.status_code, content={"error": kind, "message": message}, headers=getattr(exc, "headers", None))


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse(status_code=500, content={"error": "internal", "message": f"{type(exc).__name__}: {exc}"})


@serve.deployment(name="rayrt-ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=32)
@serve.ingress(api)
class Ingress:
    """The ingress replica: validates requests, writes the store, hands jobs to the scheduler."""

    def __init__(self, settings: dict):
        from rayrt.service.scheduler import get_or_create_scheduler

        self.settings = ServiceSettings.model_validate(settings)
        self.store = Store(self.settings.data_dir)
        self.scheduler = get_or_create_scheduler(self.settings)

    @api.get("/health")
    async def health(self) -> dict:
        status = await self.scheduler.get_status.remote()
        return {"ok": True, "store": self.store.location, "scheduler": status}

    @api.get("/queue")
    async def queue(self) -> dict:
        """The compute queue: ``queued`` in run order with each job's 0-based ``position``
        (priority, then age), the ``running`` jobs with their computers, and ``free_cpus``."""
        return await self.scheduler.queue_status.remote()

    # ---------------------------------------------------------------- patients
    @api.post("/patients", status_code=201, response_model=PatientSummary)
    async def create_patient(self, request: Request) -> PatientSummary:
        try:
            form = await request.form(max_files=self.settings.max_upload_files, max_fields=1000)
        except Exception as exc:  # malformed multipart, or not multipart at all
            raise InputError(f"expected a multipart/form-data upload with DICOM files or a zip: {exc}", kind="upload", field="files", status=400) from None
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        try:
            files = [(u.filename or "upload", u.file) for u in uploads]
            return await run_in_threadpool(import_upload, self.store, files, self.settings.max_upload_files)
        finally:
            await form.close()

    @api.get("/patients")
    def list_patients(self) -> dict:
        return {"patients": self.store.list_patients()}

    @api.get("/patients/{patient_id}", response_model=PatientSummary)
    def get_patient(self, patient_id: str) -> PatientSummary:
        return self.store.get_patient(patient_id)

    # ---------------------------------------------------------------- structures
    @api.post("/patients/{patient_id}/structures", status_code=201, response_model=StructuresResponse)
    async def create_structures(self, patient_id: str, request: Request) -> StructuresResponse:
        try:
            body = await request.json()
        except Exception:
            raise InputError("expected a JSON body with a 'method' (auto, grow, interpolate, margin, boolean, ring, polygons, pet_threshold, edit)", kind="request", field="method", status=422) from None
        return await run_in_threadpool(apply_structure_request, self.store, patient_id, body)

    @api.get("/patients/{patient_id}/structures/log")
    def get_structure_log(self, patient_id: str, name: str | None = None) -> dict:
        return structure_log(self.store, patient_id, name)

    @api.get("/patients/{patient_id}/rtstruct")
    def get_rtstruct(self, patient_id: str) -> Response:
        data = structures_rtstruct(self.store, patient_id)
        return Response(content=data, media_type="application/dicom", headers={"Content-Disposition": 'attachment; filename="rtstruct.dcm"'})

    # ---------------------------------------------------------------- jobs
    @api.post("/jobs", status_code=201, response_model=Job)
    async def create_job(self, req: JobRequest) -> Job:
        patient = await run_in_threadpool(self.store.get_patient, req.patient_id)
        order = validate_order(req.order, patient.structure_names) if req.order is not None else None
        job = Job(
            patient_id=patient.id,
            order=order.model_dump(mode="json") if order else None,
            machines=list(req.machines),
            priority=req.priority,
        )
        await run_in_threadpool(self.store.create_job, job, order)
        await self.scheduler.submit.remote(job.id, job.priority, job.created_at.isoformat())
        return job

    @api.get("/jobs", response_model=JobList)
    def list_jobs(self) -> JobList:
        return JobList(jobs=self.store.list_jobs())

    @api.get("/jobs/{job_id}", response_model=Job)
    def get_job(self, job_id: str) -> Job:
        return self.store.get_job(job_id)

    @api.post("/jobs/{job_id}/cancel")
    async def cancel_job(self, job_id: str) -> dict:
        job = await run_in_threadpool(self.store.get_job, job_id)
        cancelled = await self.scheduler.cancel.remote(job.id)
        if not cancelled:
            raise InputError(f"job {job_id} is {job.state.value}, not queued: only a queued job can be cancelled", kind="conflict", field="job_id", status=409)
        return {"job_id": job_id, "state": "cancelled"}

    @api.get("/jobs/{job_id}/results", response_model=JobResults)
    def list_results(self, job_id: str) -> JobResults:
        job = self.store.get_job(job_id)
        return JobResults(job_id=job.id, state=job.state.value, files=self.store.list_results(job_id))

    @api.get("/jobs/{job_id}/results/{path:path}")
    def get_result(self, job_id: str, path: str) -> Response:
        data = self.store.read_result(job_id, path)
        media = mimetypes.guess_type(path)[0] or ("application/json" if path.endswith(".json") else "application/octet-stream")
        name = path.rsplit("/", 1)[-1]
        return Response(content=data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


def build_app(settings: ServiceSettings) -> Any:
    """The Serve application (``serve.run(build_app(settings))``)."""
    return Ingress.bind(settings.model_dump())


def app_builder(args: dict) -> Any:
    """Entry for ``serve run rayrt.service.app:app_builder data_dir=...`` and Serve config files."""
    from rayrt.service.settings import load_settings

    return build_app(load_settings(**{k: v for k, v in (args or {}).items()}))
