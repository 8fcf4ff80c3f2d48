"""What a conversion reports: each attempt (:class:`AttemptRecord`) and the outcome for one target
machine (:class:`ConversionResult`), as pydantic models.

Doses are course doses in Gy on the standard plan's dose grid (arrays ``[k, j, i]``); plan MU
are per fraction; optimiser objectives are dimensionless (weighted squared Gy). Arrays travel as
excluded fields (``dose_gy``, ``qa_result``): they are pickled with the model (Ray, processes)
but never serialised to JSON.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rayrt.convert.policy import CoincidenceReport, Mode
from rayrt.domain.plan import Plan
from rayrt.imaging.volume import Grid
from rayrt.optimize.mu_refit import MuRefitDetail
from rayrt.qa.report import QAReport, Verdict

__all__ = [
    "StructureDose",
    "MuRefitDetail",
    "FluenceDetail",
    "ApertureDetail",
    "AttemptDetail",
    "AttemptRecord",
    "ConversionStatus",
    "ConversionResult",
]

ConversionStatus = Literal["released", "failed"]


class StructureDose(BaseModel):
    """Course dose (Gy) of one structure's voxels on the dose grid: D95, D10 (dose to 95 % / 10 %
    of the volume, :func:`rayrt.qa.dvh.dose_at_volume`), mean and maximum."""

    d95_gy: float
    d10_gy: float
    mean_gy: float
    max_gy: float


class FluenceDetail(BaseModel):
    """Fluence-map optimisation of one attempt (:func:`rayrt.optimize.fmo.optimize_fluence`)."""

    objective: float
    iterations: int
    seconds: float
    terms: int = Field(description="objective terms: the order's plus the mimicking terms")


class ApertureDetail(BaseModel):
    """Direct aperture optimisation of one attempt (:func:`rayrt.optimize.dao.optimize_apertures`)."""

    leaves: bool = Field(description="leaf positions optimised (dao mode) or segment weights only")
    objective_start: float
    objective: float
    iterations: int
    dropped_segments: int
    seconds: float


class AttemptDetail(BaseModel):
    """How an attempt's candidate plan was made; a field is None where the mode has no such step."""

    output_ratio: float | None = Field(
        default=None, description="reuse: target / source dose per MU (MU divided by it)"
    )
    setup_seconds: float | None = Field(default=None, description="target beamlets and Dij")
    bixels: int | None = Field(default=None, description="beamlets of the target machine (all beams)")
    dij_nnz: int | None = Field(default=None, description="non-zeros of the target Dij")
    standard_fluence_outside_grid: float | None = Field(
        default=None, description="share of the standard plan's fluence outside the target's beamlet grid"
    )
    segments_from: str | None = Field(default=None, description="dose_only / mu_refit: where the segments came from")
    normalization_factor: float | None = Field(
        default=None, description="MU scale of the final prescription normalisation"
    )
    raised_segments: int | None = Field(default=None, description="segments raised to the machine's minimum MU")
    fmo: FluenceDetail | None = None
    aperture_opt: ApertureDetail | None = None
    mu_refit: MuRefitDetail | None = None
    optimise_seconds: float | None = Field(
        default=None, description="fluence / dao: optimisation, sequencing and refit"
    )
    agreement_refits: int | None = Field(
        default=None,
        description="further exact segment-MU refits towards the release's DVH agreement (boosted DVH terms)",
    )
    dvh_boost: dict[str, float] = Field(
        default_factory=dict,
        description="structures whose DVH-mimicking weights this attempt multiplied (their agreement with the "
        "standard plan came near or past the release limit in an earlier attempt) -> factor",
    )


class AttemptRecord(BaseModel):
    """One conversion attempt and its QA outcome."""

    attempt: int = Field(ge=1)
    mode: Mode
    strength: float = Field(description="mimicking strength (multiplies the mimicking weights)")
    released: bool
    verdict: Verdict = Field(description="QA verdict: pass, review or fail")
    reasons: list[str] = Field(default_factory=list, description="what blocked the release")
    gamma_vs_standard_pct: float | None = Field(default=None, description="gamma pass rate against the standard dose")
    total_mu_per_fraction: float = 0.0
    num_segments: int = 0
    dvh: dict[str, StructureDose] = Field(default_factory=dict, description="per structure, of the candidate's dose")
    detail: AttemptDetail = Field(default_factory=AttemptDetail)
    seconds: float = 0.0


class ConversionResult(BaseModel):
    """The outcome of converting the standard plan for one target machine.

    ``plan`` and ``dose_gy`` are set only when released; a failed conversion keeps its last
    candidate as ``candidate_plan`` for review (never delivered). ``qa`` is the release QA report
    of the last attempt, ``qa_result`` the same with the arrays its figure shows
    (:class:`rayrt.qa.report.QAResult`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    machine: str
    status: ConversionStatus
    mode: Mode | None = Field(description="recompute mode of the released (or last) attempt")
    plan: Plan | None = None
    candidate_plan: Plan | None = None
    dose_grid: Grid
    coincidence: CoincidenceReport | None = None
    attempts: list[AttemptRecord] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    qa: QAReport | None = None
    seconds: float = 0.0
    dose_gy: Any = Field(
        default=None, exclude=True, description="course dose (Gy) [k, j, i] on dose_grid, float32; released only"
    )
    qa_result: Any = Field(
        default=None, exclude=True, description="rayrt.qa.report.QAResult of the last attempt (figure arrays)"
    )

    @property
    def released(self) -> bool:
        return self.status == "released" and self.plan is not None
