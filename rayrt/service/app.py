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
    GET  /patients/{id}/viewer           the image viewer's description: grid, planes, series, structures, doses
    GET  /patients/{id}/slices/{plane}/{index}   one image slice (?series=), int16 HU / float32, gzip
    GET  /patients/{id}/masks/{plane}/{index}    every structure's mask on a slice, packed bits, gzip
    GET  /patients/{id}/doses/{n}/{plane}/{index}  an uploaded dose on a slice, float32 Gy, gzip
    GET  /patients/{id}/views/{plane}/{index}    image + masks + doses (?dose=upload:0) of a slice in one answer
    POST /jobs                           JobRequest (patient_id, order, priority, machines) -> 201 Job
    GET  /jobs                           every job
    GET  /jobs/{id}                      Job: state, stage, per-stage progress, errors, timestamps
    POST /jobs/{id}/cancel               drop a queued job
    GET  /jobs/{id}/results              JobResults: the files the stages wrote
    GET  /jobs/{id}/results/{path}       one result file
    GET  /jobs/{id}/events               server-sent events: the Job on every change, then 'end'
    GET  /jobs/{id}/plans                per machine: plan, MU, QA verdict, goals, download routes
    GET  /jobs/{id}/plans/{machine}      one machine's entry
    GET  /jobs/{id}/plans/{machine}/{kind}  rtplan | rtdose | rtstruct | qa | dvh | plan
    GET  /jobs/{id}/viewer               the viewer's description with the job's plan doses and prescription
    GET  /jobs/{id}/plans/{machine}/dose/{plane}/{index}  a plan's dose on a slice, float32 Gy, gzip
    GET  /jobs/{id}/views/{plane}/{index}        image + masks + doses (?dose=plan:standard) in one answer
    GET  /jobs/{id}/report               the plan review as a PDF (DVHs, dose planes, goals, QA, reviews)
    GET  /jobs/{id}/dvh                  full cumulative DVHs of every plan (JSON, the report's DVHs)
    POST /jobs/{id}/book                 book the job's plan on a machine {machine?, fractions?}
    GET  /machines                       treatment machines: status, bookings, estimated wait
    GET  /machines/{name}/bookings       one machine's bookings
    POST /machines/{name}/status         {state, cause?, reason?}; down re-plans the booked patients
    GET  /cluster                        nodes, CPUs, controlled computers, queued / running jobs, tasks

A job plans when its request carries ``options`` (rayrt.domain.planning.PlanningRequest fields
over the configs/planning.yaml defaults, ``{}`` for the defaults) with an ``order``: the standard
plan, one converted plan per ``machines`` entry, QA and DICOM export; without ``options`` only
the analysis stages run. The order and the planning request are validated here, once, and the
stored Job carries both as models.

Bad input answers 4xx with ``{"error", "message", "field"?}`` (from
:class:`~rayrt.domain.errors.InputError`); nothing stored changes on a rejected request.

NOTE: no ``from __future__ import annotations`` in this module: FastAPI must see real types on
the route signatures of a ``@serve.ingress`` class.
"""

import asyncio
import hashlib
import json
import logging
import mimetypes
import time
import uuid
from typing import Any, Awaitable, Callable

import ray
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.util.state import summarize_tasks
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayrt.domain.errors import InputError
from rayrt.domain.job import Job
from rayrt.domain.order import MedicalOrder
from rayrt.domain.planning import PlanningRequest, planning_request
from rayrt.domain.review import PlanReview, PlanReviews, ReviewDecision, ReviewRequest
from rayrt.imaging.arrays import safe_name
from rayrt.pipeline import check_request, validate_order
from rayrt.pipeline.export import NOT_RELEASED, ExportResult, qa_result, rtdose_result, rtplan_result
from rayrt.report.dvhs import DVHCurves
from rayrt.service.admission import AdmissionMiddleware, AdmissionPolicy
from rayrt.service.admission import set_policy as set_admission
from rayrt.service.audit import AuditCheck, AuditEntry, AuditQuery, AuditRecord
from rayrt.service.audit_http import AuditMiddleware, note, set_sink
from rayrt.service.audit_log import get_or_create_audit_log
from rayrt.service.auth import (
    COOKIE,
    Authenticator,
    AuthMiddleware,
    check_bind,
    request_user,
    requires,
    set_authenticator,
)
from rayrt.service.deidentification import deidentify_file, patient_key
from rayrt.service.http_guard import BodyTooLarge, GuardMiddleware, GuardPolicy, require_json, set_policy
from rayrt.service.idempotency import HEADER as IDEMPOTENCY_HEADER
from rayrt.service.idempotency import IdempotencyStore, check_key
from rayrt.service.import_task import import_remote
from rayrt.service.intake import upload_digest
from rayrt.service.machine_queues import get_or_create_registry
from rayrt.service.models import (
    Heartbeat,
    JobList,
    JobPlans,
    JobRequest,
    JobResults,
    JobSnapshots,
    PatientSummary,
    PlanEntry,
    QueueStatus,
    SchedulerStatus,
    TaskCounts,
)
from rayrt.service.process import interactive_priority
from rayrt.service.report_data import dvh_curves_remote, report_remote
from rayrt.service.reviews import add_review, load_reviews
from rayrt.service.scheduler import ReplanToScheduler, get_or_create_scheduler, registry_name
from rayrt.service.settings import ServiceSettings, load_settings
from rayrt.service.store import Store, check_id
from rayrt.service.structures import StructuresResponse, apply_structure_request, structure_log, structures_rtstruct
from rayrt.service.users import Role, User, UserStore, parse_role
from rayrt.service.viewer import SliceAnswer, Viewer, ViewerInfo
from rayrt.service.web import router as web_router

log = logging.getLogger("rayrt.service")

#: the API description and its page are routes of the ingress like any other (signed in: a clinician),
#: not FastAPI's built-in public ones
api = FastAPI(
    title="rayrt",
    description="Elastic cloud radiotherapy treatment planning on Ray",
    version="0.1.0",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


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
    return JSONResponse(
        status_code=exc.status_code, content={"error": kind, "message": message}, headers=getattr(exc, "headers", None)
    )


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """500 with a reference to the service log, never the exception's text (it may hold store paths)."""
    ref = uuid.uuid4().hex[:12]
    log.exception("internal error %s on %s %s", ref, request.method, request.url.path)
    return JSONResponse(
        status_code=500,
        content={"error": "internal", "message": f"internal error (reference {ref}; the service log has the details)"},
    )


api.add_middleware(AuthMiddleware)  # 401 before anything else for a non-public path without a valid token (auth)
api.add_middleware(AuditMiddleware)  # one audit record per answered request, denied ones included (audit_http)
api.add_middleware(AdmissionMiddleware)  # bounded requests / progress streams per replica, 429 beyond (admission)
api.add_middleware(GuardMiddleware)  # outermost: host / cross-site / body-size checks, security headers (http_guard)

#: the one rule of each route (rayrt.service.auth.requires)
CLINICIAN = requires(Role.clinician)
PHYSICIST = requires(Role.physicist)
ADMIN = requires(Role.admin)


def if_match_version(header: str | None) -> int | None:
    """The structure version an ``If-Match`` header names (``3`` or ``"3"``), None without one."""
    if header is None:
        return None
    text = header.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise InputError(
            "If-Match must be the structure_version the edit was made from (GET /patients/{id}), e.g. If-Match: 3",
            kind="request",
            field="If-Match",
            status=422,
        )
    return int(text)


def check_job_request(
    req: JobRequest, structure_names: list[str]
) -> tuple[MedicalOrder | None, PlanningRequest | None]:
    """The order and the planning request of a job request, each validated once, here: the order
    against the patient's structures, the planning request (the configs/planning.yaml defaults
    with ``options`` and ``machines``) by :func:`rayrt.pipeline.check_request` (conversion
    options, known machines). The planning request is None when the request asks for no plan
    (no ``options``: ``machines`` are then only recorded). InputError 4xx naming the field."""
    order = validate_order(req.order, structure_names) if req.order is not None else None
    if req.options is None:
        return order, None
    if order is None:
        raise InputError(
            "planning ('options') needs a medical order: send 'order' too", kind="request", field="order", status=422
        )
    planning = planning_request(req.options, list(req.machines))
    check_request(planning)
    return order, planning


class MachineStatusRequest(BaseModel):
    """Body of ``POST /machines/{name}/status``."""

    state: str = Field(description="available | busy | down")
    cause: str | None = Field(default=None, description="malfunction | maintenance (required for down)")
    reason: str = ""


class SessionRequest(BaseModel):
    """Body of ``POST /session``: the token the web page signs in with."""

    token: str = Field(min_length=1, max_length=200)


class NewUserRequest(BaseModel):
    """Body of ``POST /users``."""

    name: str
    role: str = Field(description="clinician | physicist | admin")


class UserInfo(BaseModel):
    """A user as the API shows it (never a token or its hash)."""

    name: str
    role: Role
    created_at: str
    revoked_at: str | None = None

    @classmethod
    def of(cls, u: User) -> "UserInfo":
        revoked = u.revoked_at.isoformat() if u.revoked_at else None
        return cls(name=u.name, role=u.role, created_at=u.created_at.isoformat(), revoked_at=revoked)


class AuditPage(BaseModel):
    """``GET /audit``: the chain's check and the matching records."""

    check: AuditCheck
    records: list[AuditRecord]


class BookingRequest(BaseModel):
    """Body of ``POST /jobs/{id}/book``."""

    machine: str | None = None
    fractions: int | None = Field(default=None, ge=1)


#: least time between two pulls of changed job snapshots from the scheduler by one ingress replica (s):
#: changes that arrive meanwhile are taken together by the next pull
STATUS_REFRESH_S = 0.1
#: a pull waits up to this long at the scheduler for a change (long poll, s): an idle service makes
#: one call per this interval, and a change reaches the cache at once. Well below STATUS_STALE_S.
STATUS_LONG_POLL_S = 1.0
#: a status cache not refreshed for this long is bypassed: GET /jobs/{id} reads the store (s)
STATUS_STALE_S = 2.0
#: an unfinished job whose cached status has not changed for this long is checked against the store (s)
STATUS_REVALIDATE_S = 5.0


api.include_router(web_router)  # the web view (/ui); included before @serve.ingress freezes the app


@serve.deployment(name="rayrt-ingress", ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    """The ingress replica: validates requests, writes the store, hands jobs to the scheduler."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        set_policy(
            GuardPolicy.for_bind(
                settings.host, settings.trusted_hosts, settings.allowed_origins, int(settings.max_body_mb * 2**20)
            )
        )
        self.store = Store(self.settings.data_dir)
        check_bind(settings.host, settings.auth)
        set_admission(AdmissionPolicy.of(settings))
        self.users = UserStore(self.store)
        self.keys = IdempotencyStore(self.store)
        self._key_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._patient_locks: dict[str, asyncio.Lock] = {}  # structure edits, per patient
        self._review_locks: dict[str, asyncio.Lock] = {}  # review appends, per job
        self._viewer = Viewer(self.store, settings.viewer_cache_mb)  # the viewer's slices and their cache
        set_authenticator(Authenticator(self.users, open=not settings.auth))
        self.audit = get_or_create_audit_log(settings)
        set_sink(self._audit)
        self.scheduler = get_or_create_scheduler(self.settings)
        reniced = interactive_priority()  # the HTTP path (this replica, the node's proxy) at niceness 0, compute at 19
        log.info("ingress: niceness 0 for pids %s", reniced)
        # status cache: job id -> Job JSON as last saved, kept current by the scheduler's snapshots
        self._jobs: dict[str, bytes] = {}
        self._snap_version = 0
        self._snap_incarnation: str | None = None
        self._jobver: dict[str, int] = {}  # job id -> scheduler version of the cached snapshot
        self._snap_ok = 0.0  # monotonic time of the last successful refresh
        self._refresher = None
        self._checked: dict[str, tuple[bytes, float]] = {}  # job id -> (cached bytes, when last trusted / checked)
        self._reg: Any = None  # the machine registry actor, created on first use

    async def _audit(self, entry: AuditEntry) -> None:
        await self.audit.record.remote([entry])

    async def _once(
        self,
        request: Request,
        route: str,
        digest: Callable[[], Awaitable[str]],
        create: Callable[[], Awaitable[Any]],
        ids: Callable[[dict], dict],
    ) -> Any:
        """``create()``, or with an ``Idempotency-Key`` the answer to that key's first request
        (rayrt.service.idempotency; one request per key at a time in this replica)."""
        key = check_key(request.headers.get(IDEMPOTENCY_HEADER))
        if key is None:
            return await create()
        user = request_user(request).name
        lock = self._key_locks.setdefault((user, route, key), asyncio.Lock())
        try:
            async with lock:
                request_sha256 = await digest()
                rec = await run_in_threadpool(self.keys.replay, user, route, key, request_sha256)
                if rec is not None:
                    note(request, **ids(rec.body))
                    return JSONResponse(rec.body, status_code=rec.status, headers={"Idempotent-Replayed": "true"})
                out = await create()
                body = out.model_dump(mode="json")
                await run_in_threadpool(self.keys.remember, user, route, key, request_sha256, 201, body)
                return out
        finally:
            if not lock.locked():
                self._key_locks.pop((user, route, key), None)

    # ---------------------------------------------------------------- status cache
    def _ensure_refresher(self) -> None:
        """Start the background task that pulls changed job snapshots from the scheduler: a long
        poll (``STATUS_LONG_POLL_S``) that answers when a job changes, then at least
        ``STATUS_REFRESH_S`` before the next pull; one actor call at a time for all pollers together."""
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self._sync(wait_s=STATUS_LONG_POLL_S)
            except Exception:  # scheduler restarting: the cache goes stale and get_job reads the store
                log.debug("status snapshot refresh failed", exc_info=True)
            await asyncio.sleep(STATUS_REFRESH_S)

    async def _sync(self, wait_s: float = 0.0) -> None:
        """Pull the job snapshots that changed since the last pull (``wait_s`` > 0: wait that long
        for a change when there is none). Also called right after a request that changed jobs
        through the scheduler (submit, cancel, machine status) and by ``GET /queue``: this
        replica's next status answers then include that change (read your writes)."""
        out: JobSnapshots = await self.scheduler.snapshots_since.remote(
            self._snap_version, self._snap_incarnation, wait_s
        )
        if out.incarnation != self._snap_incarnation:  # the scheduler restarted: its versions start again
            self._snap_incarnation = out.incarnation
            self._snap_version, self._jobver = 0, {}
        for jid, (v, data) in out.jobs.items():
            if v > self._jobver.get(jid, 0):  # an answer to an earlier, concurrent pull never overwrites a newer one
                self._jobver[jid] = v
                self._jobs[jid] = data
        self._snap_version = max(self._snap_version, out.version)
        self._snap_ok = time.monotonic()

    async def _sync_quietly(self) -> None:
        try:
            await self._sync()
        except Exception:
            log.debug("status snapshot sync failed", exc_info=True)

    async def _revalidate(self, jid: str, data: bytes) -> bytes:
        """Safety net: a cached job that is not finished and has not changed for ``STATUS_REVALIDATE_S``
        is compared with the store once per that interval (bounds the staleness of a lost snapshot)."""
        now = time.monotonic()
        seen = self._checked.get(jid)
        if seen is not None and seen[0] is data and now - seen[1] < STATUS_REVALIDATE_S:
            return data
        if seen is None or seen[0] is not data:  # changed since: trust it for another interval
            self._checked[jid] = (data, now)
            return data
        if Job.model_validate_json(data).state.finished:
            self._checked[jid] = (data, float("inf"))  # a finished job no longer changes on its own
            return data
        try:
            disk = await run_in_threadpool(self.store.read_bytes, f"jobs/{jid}/job.json")
            if Job.model_validate_json(disk).state.finished and self._jobs.get(jid) is data:
                log.warning(
                    "status cache: job %s was stale (%s); the store says it finished",
                    jid,
                    "no snapshot of its last save",
                )
                self._jobs[jid] = data = disk
        except Exception:
            log.debug("status revalidation of %s failed", jid, exc_info=True)
        self._checked[jid] = (data, now)
        return data

    def _cache_fresh(self) -> bool:
        return time.monotonic() - self._snap_ok < STATUS_STALE_S

    @api.get("/health")
    async def health(self) -> dict:
        """Public: the service answers and its scheduler is reachable (nothing about patients or jobs)."""
        await self.scheduler.get_status.remote()
        return {"ok": True}

    # ---------------------------------------------------------------- users and sessions
    @api.post("/session")
    def create_session(self, req: SessionRequest, request: Request) -> Response:
        """Public: the web page signs in with a token; the answer sets the ``rayrt_session`` cookie
        (HttpOnly, SameSite=Strict, Secure over HTTPS) that its later requests carry."""
        user = self.users.authenticate(req.token) if self.settings.auth else None
        if self.settings.auth and user is None:
            raise InputError("unknown or revoked token", kind="unauthorized", field="token", status=401)
        request.state.audit_user = user.name if user is not None else "local"
        body = UserInfo.of(user).model_dump_json() if user is not None else '{"name": "local", "role": "admin"}'
        resp = Response(content=body, media_type="application/json")
        resp.set_cookie(
            COOKIE, req.token, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/"
        )
        return resp

    @api.delete("/session")
    def end_session(self) -> Response:
        """Public: sign the web page out (the cookie is cleared; the token itself stays valid)."""
        resp = Response(status_code=204)
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    @api.get("/openapi.json", include_in_schema=False, dependencies=CLINICIAN)
    def openapi_document(self) -> dict:
        """The OpenAPI description of this API."""
        return api.openapi()

    @api.get("/docs", include_in_schema=False, dependencies=CLINICIAN)
    def api_docs(self, request: Request) -> Response:
        """The interactive API page (Swagger UI) over ``/openapi.json``."""
        root = str(request.scope.get("root_path") or "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="rayrt API")

    @api.get("/me", response_model=UserInfo, dependencies=CLINICIAN)
    def me(self, request: Request) -> UserInfo:
        """The user this request acts as."""
        return UserInfo.of(request_user(request))

    @api.get("/users", dependencies=ADMIN)
    def list_users(self) -> dict:
        """Every user, revoked ones included (names, roles, dates; never tokens)."""
        return {"users": [UserInfo.of(u).model_dump(mode="json") for u in self.users.list()]}

    @api.post("/users", status_code=201, dependencies=ADMIN)
    def add_user(self, req: NewUserRequest, request: Request) -> dict:
        """A new user; the answer carries its token, the only time the service ever shows it."""
        note(request, target_user=req.name)
        user, token = self.users.add(req.name, parse_role(req.role))
        return {**UserInfo.of(user).model_dump(mode="json"), "token": token}

    @api.post("/users/{name}/revoke", dependencies=ADMIN)
    def revoke_user(self, name: str) -> UserInfo:
        """Revoke a user's token (effective within rayrt.service.users.RELOAD_S on every replica)."""
        return UserInfo.of(self.users.revoke(name))

    @api.get("/audit", response_model=AuditPage, dependencies=ADMIN)
    async def audit_trail(
        self,
        user: str | None = None,
        patient_id: str | None = None,
        job_id: str | None = None,
        after_seq: int = Query(default=0, ge=0),
        limit: int = Query(default=100, ge=1, le=10000),
    ) -> AuditPage:
        """The newest ``limit`` audit records that match (after record ``after_seq``), and the
        chain's check made when the service started."""
        q = AuditQuery(user=user, patient_id=patient_id, job_id=job_id, after_seq=after_seq, limit=limit)
        records = await self.audit.query.remote(q)
        return AuditPage(check=await self.audit.ready.remote(), records=records)

    @api.get("/queue", response_model=QueueStatus, dependencies=CLINICIAN)
    async def queue(self) -> QueueStatus:
        """The compute queue: ``queued`` in run order with each job's 0-based ``position``
        (priority, then age), the ``running`` jobs with their computers, and ``free_cpus``."""
        out = await self.scheduler.queue_status.remote()
        await self._sync_quietly()  # job statuses at least as new as this queue
        return out

    # ---------------------------------------------------------------- patients
    @api.post("/patients", status_code=201, response_model=PatientSummary, dependencies=CLINICIAN)
    async def create_patient(self, request: Request) -> PatientSummary:
        try:
            form = await request.form(max_files=self.settings.max_upload_files, max_fields=1000)
        except BodyTooLarge:  # answered 413 by the guard
            raise
        except Exception as exc:  # malformed multipart, or not multipart at all
            raise InputError(
                f"expected a multipart/form-data upload with DICOM files or a zip: {exc}",
                kind="upload",
                field="files",
                status=400,
            ) from None
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        try:
            files = [(u.filename or "upload", u.file) for u in uploads]

            async def create() -> PatientSummary:  # the import itself runs in a Ray task, off this replica
                summary = await import_remote(
                    self.store, files, self.settings.max_upload_files, self.settings.import_options
                )
                note(request, patient_id=summary.id)
                return summary

            return await self._once(
                request,
                "POST /patients",
                lambda: run_in_threadpool(upload_digest, files),
                create,
                lambda body: {"patient_id": body.get("id")},
            )
        finally:
            await form.close()

    @api.get("/patients", dependencies=CLINICIAN)
    def list_patients(self) -> dict:
        return {"patients": self.store.list_patients()}

    @api.get("/patients/{patient_id}", response_model=PatientSummary, dependencies=CLINICIAN)
    def get_patient(self, patient_id: str) -> PatientSummary:
        return self.store.get_patient(patient_id)

    # ---------------------------------------------------------------- structures
    @api.post(
        "/patients/{patient_id}/structures",
        status_code=201,
        response_model=StructuresResponse,
        dependencies=CLINICIAN,
    )
    async def create_structures(self, patient_id: str, request: Request) -> StructuresResponse:
        require_json(request.headers.get("content-type"))
        try:
            body = await request.json()
        except Exception:
            raise InputError(
                "expected a JSON body with a 'method' "
                "(auto, grow, interpolate, margin, boolean, ring, polygons, pet_threshold, edit)",
                kind="request",
                field="method",
                status=422,
            ) from None
        user = request_user(request).name
        expected = if_match_version(request.headers.get("if-match"))
        async with self._patient_locks.setdefault(patient_id, asyncio.Lock()):  # one edit at a time
            return await run_in_threadpool(apply_structure_request, self.store, patient_id, body, user, expected)

    @api.get("/patients/{patient_id}/structures/log", dependencies=CLINICIAN)
    def get_structure_log(self, patient_id: str, name: str | None = None) -> dict:
        return structure_log(self.store, patient_id, name)

    @api.get("/patients/{patient_id}/rtstruct", dependencies=CLINICIAN)
    def get_rtstruct(self, patient_id: str, deidentify: bool = False) -> Response:
        """Every structure as an RTSTRUCT file (``?deidentify=true``: PS3.15 Basic Profile)."""
        data = structures_rtstruct(self.store, patient_id)
        if deidentify:
            data = deidentify_file("rtstruct.dcm", data, patient_key(self.store, patient_id))
        return Response(
            content=data,
            media_type="application/dicom",
            headers={"Content-Disposition": 'attachment; filename="rtstruct.dcm"'},
        )

    # ---------------------------------------------------------------- viewer
    @staticmethod
    def _slice_response(answer: SliceAnswer) -> Response:
        """A binary slice (X-Rows / X-Cols / X-Dtype), gzip-encoded where that pays (browsers and
        httpx decompress it themselves)."""
        headers = {"Content-Encoding": "gzip", **answer.headers} if answer.gzip else answer.headers
        return Response(content=answer.body, media_type="application/octet-stream", headers=headers)

    @api.get("/patients/{patient_id}/viewer", response_model=ViewerInfo, dependencies=CLINICIAN)
    def patient_viewer(self, patient_id: str) -> ViewerInfo:
        """The image viewer's description of a patient: primary grid and its planes, image series with
        window presets, structures (index, name, colour), uploaded doses."""
        return self._viewer.patient_info(patient_id)

    @api.get("/patients/{patient_id}/slices/{plane}/{index}", dependencies=CLINICIAN)
    def patient_slice(self, patient_id: str, plane: str, index: str, series: str | None = None) -> Response:
        """One slice of an image series on the primary plane: int16 HU (CT) or float32, gzip."""
        return self._slice_response(self._viewer.image_slice(patient_id, plane, index, series))

    @api.get("/patients/{patient_id}/masks/{plane}/{index}", dependencies=CLINICIAN)
    def patient_masks(self, patient_id: str, plane: str, index: str) -> Response:
        """Every structure's mask on one slice: packed bits [structures, rows, cols], gzip."""
        return self._slice_response(self._viewer.mask_slice(patient_id, plane, index))

    @api.get("/patients/{patient_id}/doses/{n}/{plane}/{index}", dependencies=CLINICIAN)
    def patient_dose_slice(self, patient_id: str, n: str, plane: str, index: str) -> Response:
        """An uploaded dose on one slice of the primary grid: float32 Gy, gzip."""
        return self._slice_response(self._viewer.uploaded_dose_slice(patient_id, n, plane, index))

    @api.get("/jobs/{job_id}/viewer", response_model=ViewerInfo, dependencies=CLINICIAN)
    def job_viewer(self, job_id: str, request: Request) -> ViewerInfo:
        """The patient's viewer description with the job's plan doses (standard first, then each
        released converted plan), the uploaded doses and the order's prescription (409 before export)."""
        info = self._viewer.job_info(job_id)
        note(request, patient_id=info.patient_id)
        return info

    @api.get("/jobs/{job_id}/plans/{machine}/dose/{plane}/{index}", dependencies=CLINICIAN)
    def job_plan_dose_slice(self, job_id: str, machine: str, plane: str, index: str) -> Response:
        """A released plan's dose (its RTDOSE) on one slice of the primary grid: float32 Gy, gzip."""
        return self._slice_response(self._viewer.plan_dose_slice(job_id, machine, plane, index))

    @api.get("/patients/{patient_id}/views/{plane}/{index}", dependencies=CLINICIAN)
    def patient_view(
        self,
        patient_id: str,
        plane: str,
        index: str,
        series: str | None = None,
        dose: list[str] = Query(default=[]),
        also: list[str] = Query(default=[]),
    ) -> Response:
        """One slice change in one answer: the image, every structure's mask and each ``?dose=``
        (``upload:<n>``) of a slice (rayrt.service.viewer.bundle); ``?also=<plane>:<index>``: the
        other slices the same click moves, in the same answer."""
        data = self._viewer.view(patient_id, plane, index, series, dose, also=also)
        return Response(content=data, media_type="application/octet-stream")

    @api.get("/jobs/{job_id}/views/{plane}/{index}", dependencies=CLINICIAN)
    def job_view(
        self,
        job_id: str,
        plane: str,
        index: str,
        series: str | None = None,
        dose: list[str] = Query(default=[]),
        also: list[str] = Query(default=[]),
    ) -> Response:
        """One slice change in one answer with the job's doses (``?dose=plan:<machine>`` or
        ``upload:<n>``; ``?also=<plane>:<index>`` as for a patient's view)."""
        data = self._viewer.view(None, plane, index, series, dose, job_id=job_id, also=also)
        return Response(content=data, media_type="application/octet-stream")

    # ---------------------------------------------------------------- jobs
    @api.post("/jobs", status_code=201, response_model=Job, dependencies=CLINICIAN)
    async def create_job(self, req: JobRequest, request: Request) -> Job:
        async def digest() -> str:
            return hashlib.sha256(req.model_dump_json().encode("utf-8")).hexdigest()

        return await self._once(
            request,
            "POST /jobs",
            digest,
            lambda: self._create_job(req, request),
            lambda body: {"job_id": body.get("id"), "patient_id": body.get("patient_id")},
        )

    async def _create_job(self, req: JobRequest, request: Request) -> Job:
        patient = await run_in_threadpool(self.store.get_patient, req.patient_id)
        note(request, patient_id=patient.id)

        # parsing, machine files: off the event loop that answers status calls
        order, planning = await run_in_threadpool(check_job_request, req, patient.structure_names)
        job = Job(
            patient_id=patient.id,
            order=order,
            machines=list(req.machines),
            priority=req.priority,
            planning=planning,
            created_by=request_user(request).name,
            structure_version=patient.structure_version,
        )
        note(request, job_id=job.id)
        await run_in_threadpool(self.store.create_job, job)
        await self.scheduler.submit.remote(job.id, job.priority, job.created_at.isoformat())
        await self._sync_quietly()  # the queue positions the submit changed
        return job

    @api.get("/jobs", response_model=JobList, dependencies=CLINICIAN)
    def list_jobs(self, limit: int = Query(default=500, ge=1, le=1000), after: str | None = None) -> JobList:
        """Jobs oldest first, ``limit`` at a time: the next page starts ``after`` the last job's id
        (``next_after``; None on the last page)."""
        jobs, unreadable = self.store.scan_jobs()
        start = 0
        if after is not None:
            ids = [j.id for j in jobs]
            if after not in ids:
                raise InputError(f"no job {after!r} to page after", kind="request", field="after", status=422)
            start = ids.index(after) + 1
        page = jobs[start : start + limit]
        more = start + limit < len(jobs)
        return JobList(jobs=page, unreadable=unreadable, next_after=page[-1].id if more and page else None)

    @api.get("/jobs/{job_id}", response_model=Job, dependencies=CLINICIAN)
    async def get_job(self, job_id: str) -> Response:
        """The Job: state, stage, per-stage progress. The hot path of every poller: answered from
        the replica's status cache (the Job JSON as last saved, pulled from the scheduler every
        ``STATUS_REFRESH_S``; no store read, no actor call per request). A job the cache does not
        hold, or any job while the cache is stale (scheduler unreachable), is read from the store."""
        jid = check_id(job_id, "job")
        self._ensure_refresher()
        data = self._jobs.get(jid) if self._cache_fresh() else None
        if data is not None:
            data = await self._revalidate(jid, data)
        if data is None:
            try:
                data = await run_in_threadpool(self.store.read_bytes, f"jobs/{jid}/job.json")
            except FileNotFoundError:
                raise InputError(f"no job with id {job_id!r}", kind="not_found", field="job_id", status=404) from None
            Job.model_validate_json(data)  # a damaged file is a 500, never passed on
            self._jobs.setdefault(jid, data)  # a snapshot that arrived meanwhile is newer: keep it
        return Response(content=data, media_type="application/json")

    @api.post("/jobs/{job_id}/cancel", dependencies=CLINICIAN)
    async def cancel_job(self, job_id: str) -> dict:
        job = await run_in_threadpool(self.store.get_job, job_id)
        cancelled = await self.scheduler.cancel.remote(job.id)
        await self._sync_quietly()
        if not cancelled:
            raise InputError(
                f"job {job_id} is {job.state.value}, not queued: only a queued job can be cancelled",
                kind="conflict",
                field="job_id",
                status=409,
            )
        return {"job_id": job_id, "state": "cancelled"}

    @api.get("/jobs/{job_id}/results", response_model=JobResults, dependencies=CLINICIAN)
    def list_results(self, job_id: str) -> JobResults:
        job = self.store.get_job(job_id)
        return JobResults(job_id=job.id, state=job.state.value, files=self.store.list_results(job_id))

    @api.get("/jobs/{job_id}/results/{path:path}", dependencies=CLINICIAN)
    def get_result(self, job_id: str, path: str, deidentify: bool = False) -> Response:
        """One result file; ``?deidentify=true``: de-identified with the patient's key (DICOM: the
        PS3.15 Basic Profile; JSON: patient ids, names and UIDs; rayrt.service.deidentification)."""
        data = self.store.read_result(job_id, path)
        if deidentify:
            key = patient_key(self.store, self.store.get_job(job_id).patient_id)
            data = deidentify_file(path, data, key)
        media = mimetypes.guess_type(path)[0] or (
            "application/json" if path.endswith(".json") else "application/octet-stream"
        )
        name = path.rsplit("/", 1)[-1]
        return Response(
            content=data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )

    # ---------------------------------------------------------------- planning results
    @api.get("/jobs/{job_id}/events", dependencies=CLINICIAN)
    async def job_events(self, job_id: str, interval_s: float = 0.5) -> StreamingResponse:
        """Server-sent events: one ``job`` event (the Job as JSON) whenever its progress changes,
        until it has finished (last event ``end``). ``rayrt watch`` reads this stream."""
        job = await run_in_threadpool(self.store.get_job, job_id)
        interval_s = min(max(interval_s, 0.1), 10.0)

        self._ensure_refresher()

        async def stream():
            last = None
            while True:
                try:
                    cached = (
                        self._jobs.get(job.id) if self._cache_fresh() else None
                    )  # the status cache, as GET /jobs/{id}
                    j = (
                        Job.model_validate_json(cached)
                        if cached is not None
                        else await run_in_threadpool(self.store.get_job, job_id)
                    )
                except Exception as exc:  # the store hiccupped: tell the client, keep the stream
                    yield f"event: error\ndata: {json.dumps({'message': str(exc)})}\n\n"
                    await asyncio.sleep(interval_s)
                    continue
                text = j.model_dump_json()
                if text != last:
                    last = text
                    yield f"event: job\ndata: {text}\n\n"
                if j.state.finished:
                    yield f"event: end\ndata: {json.dumps({'state': j.state.value})}\n\n"
                    return
                await asyncio.sleep(interval_s)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Job-Id": job.id}
        )

    def _summary(self, job_id: str) -> ExportResult:
        job = self.store.get_job(job_id)
        if not self.store.has_stage_file(job.id, "export", "summary.json"):
            raise InputError(
                f"job {job_id} is {job.state.value} and has no plans yet (export stage not finished)",
                kind="conflict",
                field="job_id",
                status=409,
            )
        return self.store.get_stage_model(job.id, "export", "summary.json", ExportResult)

    @api.get("/jobs/{job_id}/plans", response_model=JobPlans, dependencies=CLINICIAN)
    def job_plans(self, job_id: str) -> JobPlans:
        """Per machine (standard first): plan id, MU, segments, QA verdict, the order's goals and
        the download routes of its RTPLAN / RTDOSE / QA report."""
        summary = self._summary(job_id)
        entries = []
        for m in summary.machines:
            base = f"/jobs/{job_id}/plans/{m.machine}"
            released = m.verdict != NOT_RELEASED  # a plan that failed QA has no RTPLAN / RTDOSE
            kinds = ("rtplan", "rtdose", "rtstruct", "qa", "dvh", "plan") if released else ("qa",)
            entries.append(PlanEntry(**m.model_dump(), downloads={k: f"{base}/{k}" for k in kinds}))
        return JobPlans(
            job_id=job_id, machines=entries, rtstruct=summary.rtstruct, dvh=f"/jobs/{job_id}/results/export/dvh.csv"
        )

    @api.get("/jobs/{job_id}/plans/{machine}", response_model=PlanEntry, dependencies=CLINICIAN)
    def job_plan(self, job_id: str, machine: str) -> PlanEntry:
        for m in self.job_plans(job_id).machines:
            if m.machine == machine:
                return m
        raise InputError(
            f"job {job_id} has no plan for machine {machine!r}", kind="not_found", field="machine", status=404
        )

    @api.get("/jobs/{job_id}/plans/{machine}/{kind}", dependencies=CLINICIAN)
    def job_plan_file(self, job_id: str, machine: str, kind: str, deidentify: bool = False) -> Response:
        """One machine's RTPLAN, RTDOSE, the RTSTRUCT, its QA report (JSON), its DVH rows (CSV) or its plan (JSON)."""
        self.job_plan(job_id, machine)
        safe = safe_name(machine)
        if kind == "dvh":
            text = self.store.read_result(job_id, "export/dvh.csv").decode()
            lines = text.splitlines()
            rows = [lines[0]] + [ln for ln in lines[1:] if ln.split(",", 1)[0] == machine]
            return Response(
                content="\n".join(rows) + "\n",
                media_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="dvh_{safe}.csv"'},
            )
        paths = {
            "rtplan": rtplan_result(machine),
            "rtdose": rtdose_result(machine),
            "rtstruct": "export/RS.dcm",
            "qa": qa_result(machine),
            "plan": "normalize/plan.json" if machine == self._standard_name(job_id) else f"convert/plan_{safe}.json",
        }
        if kind not in paths:
            raise InputError(
                f"unknown download {kind!r}; choose one of {', '.join(sorted([*paths, 'dvh']))}",
                kind="not_found",
                field="kind",
                status=404,
            )
        return self.get_result(job_id, paths[kind], deidentify)

    async def _exported_job(self, job_id: str, request: Request) -> Job:
        """The job, once its export stage has finished (409 before), its patient noted for the audit."""
        await run_in_threadpool(self._summary, job_id)
        job = await run_in_threadpool(self.store.get_job, job_id)
        note(request, patient_id=job.patient_id)
        return job

    @api.get("/jobs/{job_id}/report", dependencies=CLINICIAN)
    async def job_report(self, job_id: str, request: Request) -> Response:
        """The job's plan review as a PDF for the patient record (rayrt.report): patient, prescription,
        release decisions and reviews, plan summary, goals, DVHs, dose planes through the target, QA
        per machine. Rendered in a Ray task (rayrt.service.report_data); 409 before the export stage."""
        job = await self._exported_job(job_id, request)
        pdf = await report_remote(self.store, job.id, self.settings.import_options)
        return Response(
            content=pdf,
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="report_{job.id}.pdf"'},
        )

    @api.get("/jobs/{job_id}/dvh", response_model=DVHCurves, dependencies=CLINICIAN)
    async def job_dvh_curves(self, job_id: str, request: Request) -> Response:
        """Full cumulative DVHs of every structure for every plan with a dose (the report's DVHs: on
        each plan's dose grid, voxel-centre method), on one dose axis; computed in a Ray task; 409
        before the export stage."""
        job = await self._exported_job(job_id, request)
        body = await dvh_curves_remote(self.store, job.id, self.settings.import_options)
        return Response(content=body, media_type="application/json")

    def _standard_name(self, job_id: str) -> str:
        return self._summary(job_id).machines[0].machine

    # ---------------------------------------------------------------- cluster
    @api.get("/cluster", dependencies=ADMIN)
    async def cluster(self) -> dict:
        """Nodes (alive, CPUs, memory), CPUs in use, the controlled computers (heartbeats),
        queued and running jobs and the tasks Ray is running / waiting to schedule."""

        def facts() -> dict:
            nodes = [
                {
                    "node_id": n["NodeID"],
                    "alive": n["Alive"],
                    "address": n.get("NodeManagerAddress"),
                    "cpus": n.get("Resources", {}).get("CPU", 0.0),
                    "memory_gib": n.get("Resources", {}).get("memory", 0.0) / 2**30,
                    "object_store_gib": n.get("Resources", {}).get("object_store_memory", 0.0) / 2**30,
                }
                for n in ray.nodes()
            ]
            total, free = ray.cluster_resources(), ray.available_resources()
            tasks: dict[str, int] = {}
            try:
                summary = summarize_tasks(raise_on_missing_output=False)
                for entry in (summary.get("cluster", {}).get("summary", {}) or {}).values():
                    for state, n in (entry.get("state_counts") or {}).items():
                        tasks[state] = tasks.get(state, 0) + int(n)
            except Exception as exc:  # the state API needs the dashboard agent; report why it is missing
                tasks = {"unavailable": 0, "reason": str(exc)[:200]}
            return {
                "nodes": nodes,
                "cpus_total": total.get("CPU", 0.0),
                "cpus_free": free.get("CPU", 0.0),
                "tasks": tasks,
            }

        info = await run_in_threadpool(facts)
        status: SchedulerStatus = await self.scheduler.get_status.remote()
        beats: dict[str, Heartbeat | None] = await self.scheduler.heartbeats.remote(2.0)
        counts: TaskCounts = await self.scheduler.task_counts.remote()
        if (
            "unavailable" in info["tasks"]
        ):  # no dashboard agent: rayrt's own accounting (the computers report to the scheduler)
            info["tasks"] = {
                "source": "rayrt executor accounting (tasks and conversions submitted / finished per job)",
                "running": counts.running,
                "queued": counts.queued,
                "in_flight": counts.in_flight,
                "dashboard": info["tasks"].get("reason", ""),
            }
        return {
            **info,
            "store": self.store.location,
            "scheduler": status.model_dump(mode="json"),
            "queued": status.queued,
            "running": status.running,
            "task_accounting": counts.model_dump(mode="json"),
            "computers": [
                {"name": n, "alive": b is not None, **(b.model_dump(mode="json") if b else {})}
                for n, b in beats.items()
            ],
        }

    # ---------------------------------------------------------------- treatment machines
    def _registry(self) -> Any:
        """The machine registry actor (MachineQueue per machine), created on first use."""
        if self._reg is None:
            ns = self.settings.ray_namespace
            self._reg = get_or_create_registry(
                name=registry_name(self.settings),
                namespace=ns,
                data_dir=self.settings.data_dir,
                replan_callback=ReplanToScheduler(self.settings.scheduler_name, ns),
                settings=self.settings.machine_queues,
            )
        return self._reg

    @api.get("/machines", dependencies=CLINICIAN)
    async def list_machines(self) -> dict:
        """Every treatment machine: status (available / busy / down, cause, since), bookings,
        pending fractions, estimated wait."""
        snaps = await self._registry().snapshots.remote()
        return {"machines": [s.model_dump(mode="json") for s in snaps]}

    @api.get("/machines/{name}/bookings", dependencies=CLINICIAN)
    async def machine_bookings(self, name: str) -> dict:
        return {
            "machine": name,
            "bookings": [b.model_dump(mode="json") for b in await self._registry().bookings.remote(name)],
        }

    @api.post("/machines/{name}/status", dependencies=PHYSICIST)
    async def set_machine_status(self, name: str, change: MachineStatusRequest, request: Request) -> dict:
        """Change a machine's status; ``down`` moves its pending bookings to the best usable machine
        and re-plans each moved patient (the job's convert -> qa -> export stages run again for it)."""
        by = request_user(request).name
        res = await self._registry().set_status.remote(name, change.state, change.cause, change.reason, by)
        await self._sync_quietly()
        return res.model_dump(mode="json")

    @api.post("/jobs/{job_id}/book", status_code=201, dependencies=PHYSICIST)
    async def book_job(self, job_id: str, req: BookingRequest, request: Request) -> dict:
        """Book the job's converted plan on a machine (default: its first requested machine)."""
        job = await run_in_threadpool(self.store.get_job, job_id)
        note(request, patient_id=job.patient_id)
        machine = req.machine or (job.machines[0] if job.machines else None)
        if machine is None:
            raise InputError("the job names no machine: give 'machine'", kind="request", field="machine", status=422)
        plan = await run_in_threadpool(self.job_plan, job_id, machine)
        if plan.verdict == NOT_RELEASED:
            raise InputError(
                f"the plan for {machine} was not released (QA failed: {'; '.join(plan.failed_checks[:3])}); "
                "it cannot be booked",
                kind="conflict",
                field="machine",
                status=409,
            )
        latest = (await run_in_threadpool(load_reviews, self.store, job_id)).latest().get(machine)
        if latest is not None and latest.decision == ReviewDecision.rejected and latest.plan_id == plan.plan_id:
            raise InputError(
                f"the plan for {machine} was rejected by {latest.by} ({latest.comment}); "
                "it cannot be booked until a review approves it",
                kind="conflict",
                field="machine",
                status=409,
            )
        fractions = req.fractions or (job.order.prescription.fractions if job.order is not None else 1)
        by = request_user(request).name
        b = await self._registry().book.remote(machine, job.id, job.patient_id, fractions, plan.plan_id, by)
        return b.model_dump(mode="json")

    # ---------------------------------------------------------------- reviews
    @api.get("/jobs/{job_id}/reviews", response_model=PlanReviews, dependencies=CLINICIAN)
    def job_reviews(self, job_id: str) -> PlanReviews:
        """Every physicist's decision on the job's plans, oldest first."""
        return load_reviews(self.store, job_id)

    @api.post(
        "/jobs/{job_id}/plans/{machine}/review", status_code=201, response_model=PlanReviews, dependencies=PHYSICIST
    )
    async def review_plan(self, job_id: str, machine: str, req: ReviewRequest, request: Request) -> PlanReviews:
        """Approve or reject one machine's plan (a released one: a plan that failed QA is never
        approved); a rejection needs a comment saying why. Every decision is kept."""
        plan = await run_in_threadpool(self.job_plan, job_id, machine)
        job = await run_in_threadpool(self.store.get_job, job_id)
        note(request, patient_id=job.patient_id)
        if req.decision == ReviewDecision.approved and plan.verdict == NOT_RELEASED:
            raise InputError(
                f"the plan for {machine} was not released (QA failed); it cannot be approved",
                kind="conflict",
                field="decision",
                status=409,
            )
        if req.decision == ReviewDecision.rejected and not req.comment.strip():
            raise InputError("a rejection needs a comment saying why", kind="request", field="comment", status=422)
        review = PlanReview(
            machine=machine,
            plan_id=plan.plan_id,
            decision=req.decision,
            comment=req.comment.strip(),
            by=request_user(request).name,
        )
        async with self._review_locks.setdefault(job_id, asyncio.Lock()):
            return await run_in_threadpool(add_review, self.store, job_id, review)


def build_app(settings: ServiceSettings) -> Any:
    """The Serve application (``serve.run(build_app(settings))``); Serve's own per-replica limit
    above the admission limits, so that the replica answers 429 rather than Serve queueing."""
    return Ingress.options(max_ongoing_requests=AdmissionPolicy.of(settings).serve_max_ongoing).bind(settings)


def app_builder(args: dict) -> Any:
    """Entry for ``serve run rayrt.service.app:app_builder data_dir=...`` and Serve config files."""
    return build_app(load_settings(**{k: v for k, v in (args or {}).items()}))
