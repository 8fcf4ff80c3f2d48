"""Jobs: one planning request moving through stages."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from enum import Enum

from pydantic import BaseModel, Field


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
    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    patient_id: str
    order: dict | None = Field(default=None, description="the MedicalOrder as JSON (validated on submit)")
    machines: list[str] = Field(default_factory=list, description="requested target machines")
    priority: int = Field(default=0, description="higher runs first")
    options: dict | None = Field(default=None, description="planning settings (rayrt.stages.PlanningRequest fields, without machines); None = no plan, only the analysis stages")
    state: JobState = JobState.queued
    stage: str | None = None
    progress: float = Field(default=0.0, ge=0, le=100)
    stages: list[StageProgress] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    errors: list[str] = Field(default_factory=list)
    worker: str | None = Field(default=None, description="the controlled computer running it")
    queue_position: int | None = Field(default=None, ge=0, description="0-based place in the compute queue while queued (0 = next to start); None once it runs")
