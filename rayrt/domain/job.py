"""Jobs: one patient's analysis, or its planning request, moving through the pipeline's stages.

The job is the typed contract between the HTTP ingress, the scheduler, the controlled computers
and the stages: its order (a :class:`~rayrt.domain.order.MedicalOrder`) and its planning request
(a :class:`~rayrt.domain.planning.PlanningRequest`) are validated once, where the job enters,
and travel as models from there on (``job.json`` in the service's store holds them whole).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from rayrt.domain.order import MedicalOrder
from rayrt.domain.planning import PlanningRequest


def _now() -> datetime:
    return datetime.now(timezone.utc)


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in {JobState.succeeded, JobState.failed, JobState.cancelled}


class StageProgress(BaseModel):
    name: str
    state: JobState = JobState.queued
    percent: float = Field(default=0.0, ge=0, le=100)
    tasks_done: int = 0
    tasks_total: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str = ""


class Job(BaseModel):
    """One job. ``planning`` None: only the analysis stages run (structures, DVH of the study's doses)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    patient_id: str
    order: MedicalOrder | None = Field(
        default=None, description="the medical order, checked against the patient's structures on submit"
    )
    machines: list[str] = Field(
        default_factory=list,
        description="requested treatment machines, in order of preference: the planning "
        "request's target machines, and the machines a booking defaults to",
    )
    priority: int = Field(default=0, description="higher runs first")
    created_by: str = Field(default="", description="the user who submitted it (rayrt.service.users)")
    structure_version: int = Field(
        default=0, ge=0, description="the patient's structure-set version the job was submitted with"
    )
    planning: PlanningRequest | None = Field(
        default=None,
        description="what to plan and how (configs/planning.yaml defaults with the "
        "request's options; machines = the job's machines); None = analysis only",
    )
    state: JobState = JobState.queued
    stage: str | None = None
    progress: float = Field(default=0.0, ge=0, le=100)
    stages: list[StageProgress] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    errors: list[str] = Field(default_factory=list)
    worker: str | None = Field(default=None, description="the controlled computer running it")
    queue_position: int | None = Field(
        default=None,
        ge=0,
        description="0-based place in the compute queue while queued (0 = next to start); None once it runs",
    )
