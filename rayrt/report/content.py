"""The typed input of a plan report: what a job planned, verified and decided, for one PDF.

A :class:`ReportInput` holds, for one job, the patient (primary CT in HU and the structure masks
on its grid), the medical order (prescription, goals), per plan (the standard plan first, then the
treatment machines in the order requested) the export summary
(:class:`rayrt.pipeline.export.MachineSummary`: MU per fraction, segments, QA verdict, goals met
or missed), the QA report (:class:`rayrt.qa.report.QAReport`) and the exported dose (Gy, total
course, on the dose grid of the RTDOSE), the physicists' reviews and the generation time.

:func:`read_plans` gathers the per-plan part from a job's result files by their stored names
(``qa/qa_<machine>.json``, ``export/RD_<machine>.dcm``) through a reader callable, so the same
code serves a job in the service's store and a ``rayrt plan --out`` folder. No HTTP, no Ray.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rayrt.domain.order import MedicalOrder
from rayrt.domain.patient import Structure, StructureKind
from rayrt.domain.review import PlanReviews
from rayrt.imaging.dicom_io import read_rtdose_bytes
from rayrt.imaging.volume import Volume
from rayrt.pipeline.export import NOT_RELEASED, ExportResult, MachineSummary, qa_result, rtdose_result
from rayrt.qa.report import QAReport

__all__ = ["PlanData", "StructureData", "ReportInput", "read_plans"]

ResultReader = Callable[[str], "bytes | None"]
"""``rel`` (a result file under the job's stage folders, e.g. ``qa/qa_standard.json``) -> its bytes,
None when absent."""


class PlanData(BaseModel):
    """One plan of the job: its export summary, its QA report and its exported dose."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    summary: MachineSummary
    qa: QAReport | None = Field(default=None, description="the QA stage's report (None: QA did not run on it)")
    dose: Volume | None = Field(
        default=None, description="the RTDOSE in Gy (total course) on its own grid; None: not released, no RTDOSE"
    )

    @property
    def machine(self) -> str:
        return self.summary.machine

    @property
    def released(self) -> bool:
        return self.summary.verdict != NOT_RELEASED


class StructureData(BaseModel):
    """A structure and its voxel mask (bool ``[k, j, i]``) on the primary CT grid."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    structure: Structure
    mask: np.ndarray

    @field_validator("mask")
    @classmethod
    def _bool_3d(cls, v: np.ndarray) -> np.ndarray:
        a = np.asarray(v)
        if a.ndim != 3:
            raise ValueError(f"a structure mask is 3-D [k, j, i], got shape {a.shape}")
        return a.astype(bool, copy=False)

    @property
    def name(self) -> str:
        return self.structure.name


class ReportInput(BaseModel):
    """Everything one job's report shows (see the module docstring)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    job_id: str
    patient_id: str
    patient_name: str = ""
    submitted_by: str = Field(default="", description="the user who submitted the job")
    order: MedicalOrder | None = None
    plans: list[PlanData] = Field(min_length=1, description="the standard plan first, then each treatment machine")
    ct: Volume = Field(description="the primary image (CT in HU) the structures are drawn on")
    structures: list[StructureData] = Field(default_factory=list)
    reviews: PlanReviews
    generated_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    notes: list[str] = Field(default_factory=list, description="caveats printed on the cover")

    @model_validator(mode="after")
    def _masks_on_the_ct(self) -> "ReportInput":
        for s in self.structures:
            if s.mask.shape != tuple(self.ct.grid.shape):
                raise ValueError(f"mask of {s.name!r} has shape {s.mask.shape}, the CT {self.ct.grid.shape}")
        return self

    @property
    def standard(self) -> PlanData:
        return self.plans[0]

    @property
    def prescription_gy(self) -> float | None:
        """The prescribed total dose (Gy), the 100 % of the isodose lines; None without an order."""
        return self.order.prescription.total_dose_gy if self.order else None

    def target(self) -> StructureData | None:
        """The primary target: the prescription's target, else the first non-empty target-kind structure."""
        named = self.order.prescription.target if self.order else None
        drawn = [s for s in self.structures if s.mask.any()]
        for s in drawn:
            if s.name == named:
                return s
        return next((s for s in drawn if s.structure.kind == StructureKind.target), None)


def read_plans(summary: ExportResult, read: ResultReader) -> list[PlanData]:
    """Per plan of the export summary (its order: the standard plan first) the QA report and,
    for a released plan, the RTDOSE, read through ``read`` (a missing file: None)."""
    out = []
    for m in summary.machines:
        qa_bytes = read(qa_result(m.machine))
        qa = QAReport.model_validate_json(qa_bytes) if qa_bytes is not None else None
        dose = None
        if m.verdict != NOT_RELEASED:
            rd = read(rtdose_result(m.machine))
            dose = read_rtdose_bytes(rd) if rd is not None else None
        out.append(PlanData(summary=m, qa=qa, dose=dose))
    return out
