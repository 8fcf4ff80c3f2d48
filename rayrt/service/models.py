"""Pydantic models of the service boundary (HTTP bodies, store manifests).

No Ray or HTTP imports here: the store, the CLI and the ingress all share these models.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from rayrt.domain.job import Job
from rayrt.domain.patient import Patient
from rayrt.imaging.volume import Grid


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


class JobRequest(BaseModel):
    """Body of ``POST /jobs``."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(min_length=1)
    order: dict | None = Field(default=None, description="the MedicalOrder as JSON; validated against the patient's structures")
    priority: int = Field(default=0, description="higher runs first; equal priorities run oldest first")
    machines: list[str] = Field(default_factory=list, description="requested treatment machines, in order of preference")
    options: dict | None = Field(default=None, description="plan for 'machines' with these settings (rayrt.stages.PlanningRequest fields: num_beams, dose_grid_mm ...; {} = defaults); None = analysis only")


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


class JobList(BaseModel):
    jobs: list[Job] = Field(default_factory=list)
