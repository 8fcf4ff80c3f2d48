"""Pydantic models of the service boundary: HTTP bodies, store manifests, and what the actors
(scheduler, controlled computers, conversion pools) answer each other and the ingress.

No Ray or HTTP imports here: the store, the CLI, the actors and the ingress all share these models.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, computed_field

from rayrt.domain.job import Job
from rayrt.domain.patient import Patient
from rayrt.imaging.volume import Grid
from rayrt.pipeline.export import MachineSummary


class DoseInfo(BaseModel):
    """A dose distribution that came with the patient's study (RTDOSE)."""

    index: int
    grid: Grid
    max_dose_gy: float = Field(ge=0)
    description: str = ""


class PatientSummary(Patient):
    """What ``POST /patients`` and ``GET /patients/{id}`` answer: the stored patient.

    Extends :class:`~rayrt.domain.patient.Patient` (id, DICOM ids, series, structures with
    volumes in cm³) with the primary series, the doses found and import warnings.
    """

    primary_series_uid: str | None = None
    doses: list[DoseInfo] = Field(default_factory=list)
    plan_files: list[str] = Field(default_factory=list, description="stored RTPLAN files, relative to the patient")
    warnings: list[str] = Field(default_factory=list)
    structure_version: int = Field(
        default=0,
        ge=0,
        description="how many delineation operations the structures have been through: send it as "
        "If-Match with an edit (POST /patients/{id}/structures) to have a stale edit refused (409)",
    )


class JobRequest(BaseModel):
    """Body of ``POST /jobs``."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(min_length=1)
    order: dict | None = Field(
        default=None, description="the MedicalOrder as JSON; validated against the patient's structures"
    )
    priority: int = Field(default=0, description="higher runs first; equal priorities run oldest first")
    machines: list[str] = Field(
        default_factory=list, description="requested treatment machines, in order of preference"
    )
    options: dict | None = Field(
        default=None,
        description="plan for 'machines' with these settings (rayrt.domain.planning.PlanningRequest "
        "fields: num_beams, dose_grid_mm ...; {} = the configs/planning.yaml defaults); "
        "None = analysis only. Checked on submit; the job stores the whole request",
    )


class ResultFile(BaseModel):
    """One file a job wrote to the store; ``path`` is relative to the job's ``stages`` folder."""

    stage: str
    path: str
    size_bytes: int = Field(ge=0)
    url: str = Field(default="", description="download route relative to the server root")


class JobResults(BaseModel):
    job_id: str
    state: str
    files: list[ResultFile] = Field(default_factory=list)


class UnreadableJob(BaseModel):
    """A job record the store could not read (damaged, unreadable, or from an incompatible rayrt)."""

    job_id: str
    reason: str
    quarantined_to: str | None = Field(default=None, description="where the record was moved, if it was")


class JobList(BaseModel):
    jobs: list[Job] = Field(default_factory=list)
    unreadable: list[UnreadableJob] = Field(
        default_factory=list, description="job records that could not be read: never blocking the others"
    )
    next_after: str | None = Field(default=None, description="the cursor of the next page (?after=), None on the last")


class PlanEntry(MachineSummary):
    """One machine's plan in ``GET /jobs/{id}/plans``: the export summary plus its download routes."""

    downloads: dict[str, str] = Field(
        default_factory=dict, description="kind (rtplan, rtdose, rtstruct, qa, dvh, plan) -> route"
    )


class JobPlans(BaseModel):
    """``GET /jobs/{id}/plans``: per machine (standard first) its plan, MU, QA verdict and goals."""

    job_id: str
    machines: list[PlanEntry]
    rtstruct: str | None = None
    dvh: str = Field(description="route of the DVH table of every plan (CSV)")


class Heartbeat(BaseModel):
    """A controlled computer's answer to a heartbeat: where it runs and what it is doing."""

    name: str
    host: str
    node_id: str
    pid: int
    job: str | None = Field(default=None, description="the job running on it")
    stage: str | None = Field(default=None, description="that job's running stage")
    progress: float | None = Field(default=None, description="that job's progress (percent)")
    jobs_done: int = Field(ge=0)
    uptime_s: float = Field(ge=0)


class QueuedJob(BaseModel):
    position: int = Field(ge=0, description="0-based place in the compute queue (0 = next to start)")
    job_id: str
    priority: int
    created_at: datetime


class RunningJob(BaseModel):
    job_id: str
    worker: str = Field(description="the controlled computer running it")
    stage: str | None = None
    tasks_done: int = 0
    tasks_total: int = 0


class QueueStatus(BaseModel):
    """``GET /queue``: the queued jobs in run order (priority, then age), the running ones and the free CPUs."""

    queued: list[QueuedJob]
    running: list[RunningJob]
    free_cpus: float
    job_cpus: float = Field(description="free CPUs a job needs to be admitted (settings.job_cpus)")


class SchedulerStatus(BaseModel):
    """The scheduler's queue and computers (``GET /health``)."""

    queued: list[str] = Field(description="job ids in run order")
    running: dict[str, str] = Field(description="job id -> computer")
    computers: list[str]
    idle: list[str]
    heartbeats: dict[str, Heartbeat | None] = Field(description="computer -> its last heartbeat (None: none yet)")
    lost: dict[str, str] = Field(description="computer -> why it was killed and replaced")


class JobSnapshots(BaseModel):
    """The job snapshots (Job JSON as last saved) changed after a version: the ingress' status cache feed."""

    incarnation: str = Field(description="the scheduler actor's incarnation; versions restart with it")
    version: int
    jobs: dict[str, tuple[int, bytes]] = Field(description="job id -> (version, Job JSON)")


class PoolStats(BaseModel):
    """One machine's conversion actor pool."""

    machine: str
    size: int
    max_size: int
    queued: int = Field(description="conversions submitted and not finished")
    submitted: int
    grown: int = Field(description="actors added on demand")


class JobTasks(BaseModel):
    """Ray tasks (and conversions) one running job's executor submitted and saw finish."""

    computer: str
    submitted: int = Field(ge=0)
    finished: int = Field(ge=0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def in_flight(self) -> int:
        return self.submitted - self.finished


class TaskCounts(BaseModel):
    """rayrt's own task accounting (no Ray dashboard needed), for ``GET /cluster``."""

    in_flight: int
    running: int = Field(description="in flight, up to the CPUs in use")
    queued: int = Field(description="in flight beyond the CPUs in use")
    submitted: int
    finished_in_running_jobs: int
    finished_in_ended_jobs: int
    per_job: dict[str, JobTasks]
    conversion_pools: list[PoolStats]
