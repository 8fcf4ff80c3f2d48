"""Conversion and QA stages: the standard plan made into a plan for every target machine, and
every plan checked before release.

    convert  standard plan -> plan for each target machine with
             :func:`rayrt.convert.convert.convert_for_machine` (coincidence, recompute mode,
             target beam model, QA-gated release) through the executor: on Ray each machine's
             conversion ActorPool, in one process one machine after the other
    qa       standard plan: independent dose (aperture engine), DVH criteria, deliverability;
             converted plans: the release loop's QA report is reused (gamma vs the standard plan,
             independent check, agreement), not recomputed

This module is the core: no Ray, no HTTP.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rayrt.convert.policy import ConversionOptions, Mode, load_conversion_options
from rayrt.convert.results import AttemptRecord, ConversionResult, ConversionStatus
from rayrt.domain.plan import Plan
from rayrt.domain.planning import PlanningRequest
from rayrt.imaging.arrays import from_npy, npy_bytes, safe_name
from rayrt.imaging.volume import Grid, Volume
from rayrt.machines import get_machine
from rayrt.optimize._threads import set_threads
from rayrt.optimize.standard import PlanGeometry, StandardPlan, dvh_table
from rayrt.pipeline.runner import StageContext
from rayrt.qa.checks import aperture_recompute
from rayrt.qa.report import QAReport, QAResult, qa_plan, render_qa_figure

__all__ = ["convert", "qa", "MachinePlan", "ConvertedPlans", "QAStage", "conversion_options", "machine_plan", "qa_task"]


# ---------------------------------------------------------------------------- conversion
class MachinePlan(BaseModel):
    """One target machine's plan (MU per fraction) and how :func:`rayrt.convert.convert.convert_for_machine` made it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    machine: str
    plan: Plan | None = Field(default=None, description="None when the conversion was not released")
    status: ConversionStatus = Field(default="released", description="released | failed (no plan, no RTPLAN)")
    reasons: list[str] = Field(default_factory=list)
    method: str = Field(description="rayrt.convert:<recompute mode of the released (or last) attempt>")
    mode: Mode | None = Field(default=None, description="recompute mode: reuse | dose_only | mu_refit | fluence | dao")
    coincidence: str | None = Field(
        default=None, description="coincidence verdict: matches | same_leaves | convertible | incompatible"
    )
    attempts: list[AttemptRecord] = Field(
        default_factory=list, description="each attempt: mode, strength, QA verdict, gamma vs standard, seconds"
    )
    qa: QAReport | None = Field(
        default=None, description="QA report of the release loop's last attempt (the qa stage reuses it)"
    )
    seconds: float
    dvh: dict = Field(default_factory=dict)
    dose: Any = Field(default=None, exclude=True, description="course dose (Gy) [k, j, i] on the dose grid, float32")
    qa_png: bytes | None = Field(
        default=None, exclude=True, description="QA figure of the release QA (PlanningRequest.qa_figures)"
    )


def conversion_options(req: PlanningRequest) -> ConversionOptions:
    """:class:`~rayrt.convert.policy.ConversionOptions` of a request: configs/conversion.yaml, then
    the request's segment limits, then ``req.conversion_options``, then the forced
    ``req.conversion_mode`` (None: the policy chooses). The same segment limits bind the standard
    plan and every conversion."""
    over: dict[str, Any] = {"min_segment_area_cm2": req.min_segment_area_cm2, "min_segment_mu": req.min_segment_mu}
    over.update(req.conversion_options)
    if req.conversion_mode is not None:
        over["mode"] = req.conversion_mode
    return load_conversion_options(**over)


def qa_figure_png(result: QAResult) -> bytes:
    """The QA report page of ``result`` (:func:`rayrt.qa.report.render_qa_figure`) as PNG bytes."""
    with tempfile.TemporaryDirectory(prefix="rayrt-qa-") as d:
        return render_qa_figure(result, Path(d) / "qa.png").read_bytes()


def machine_plan(
    r: ConversionResult | BaseException,
    standard: StandardPlan,
    masks: dict[str, np.ndarray],
    figure: bool = False,
    machine: str | None = None,
) -> MachinePlan:
    """A :class:`~rayrt.convert.results.ConversionResult` as the stage's MachinePlan (dose and DVH
    only when released; the release QA report either way). ``r`` may be the exception a
    conversion raised: that machine is then ``failed`` with the error as its reason (the other
    machines and the standard plan go on)."""
    if isinstance(r, BaseException):
        msg = getattr(r, "message", None) or str(r).strip().splitlines()[-1:] or [type(r).__name__]
        msg = msg if isinstance(msg, str) else msg[0]
        return MachinePlan(
            machine=machine or "?",
            status="failed",
            reasons=[f"conversion error: {type(r).__name__}: {msg}"[:500]],
            method="rayrt.convert:error",
            seconds=0.0,
        )
    dose3 = (
        None
        if r.dose_gy is None or not r.released
        else np.asarray(r.dose_gy, np.float32).reshape(standard.dose_grid.shape)
    )
    png = qa_figure_png(r.qa_result) if figure and r.qa_result is not None else None
    return MachinePlan(
        machine=r.machine,
        plan=r.plan if r.released else None,
        status=r.status,
        reasons=list(r.reasons),
        method=f"rayrt.convert:{r.mode}",
        mode=r.mode,
        coincidence=r.coincidence.verdict if r.coincidence is not None else None,
        attempts=list(r.attempts),
        qa=r.qa,
        seconds=float(r.seconds),
        dvh=dvh_table(dose3, masks, standard.dose_grid.voxel_volume_cc, standard.order) if dose3 is not None else {},
        dose=dose3,
        qa_png=png,
    )


class ConvertedPlans(BaseModel):
    """Result of ``convert``: one plan per target machine."""

    plans: list[MachinePlan] = Field(default_factory=list)

    def get(self, machine: str) -> MachinePlan:
        for p in self.plans:
            if p.machine == machine:
                return p
        raise KeyError(machine)

    def files(self) -> dict[str, bytes]:
        out = {}
        for p in self.plans:
            if p.plan is None:
                continue
            out[f"plan_{safe_name(p.machine)}.json"] = p.plan.model_dump_json(indent=1).encode()
            out[f"dose_{safe_name(p.machine)}.npy"] = npy_bytes(np.asarray(p.dose, np.float32))
        return out

    @classmethod
    def from_files(cls, data: dict, read: Callable[[str], bytes]) -> "ConvertedPlans":
        r = cls.model_validate(data)
        for p in r.plans:
            if p.plan is not None:
                p.dose = from_npy(read(f"dose_{safe_name(p.machine)}.npy"))
        return r


def convert(
    standard_plan: StandardPlan, geometry: PlanGeometry, planning: PlanningRequest, ctx: StageContext
) -> ConvertedPlans:
    """Standard plan -> each target machine with :func:`rayrt.convert.convert.convert_for_machine`
    (coincidence, recompute mode by policy or forced, target beam model, QA-gated release), through
    ``ctx.executor.convert_machines``: on Ray each machine's conversion runs on that machine's
    conversion ActorPool; in one process they run here, one after the other."""
    if not planning.machines:
        return ConvertedPlans()
    opts = conversion_options(planning)
    ctx.progress(0, len(planning.machines), "converting on " + ", ".join(planning.machines))
    results = ctx.executor.convert_machines(
        standard_plan, geometry, list(planning.machines), opts, progress=ctx.progress
    )
    masks = geometry.masks()
    plans = [
        machine_plan(r, standard_plan, masks, figure=planning.qa_figures, machine=m)
        for r, m in zip(results, planning.machines)
    ]
    ctx.progress(len(plans), len(plans), "; ".join(f"{p.machine} {p.status}" for p in plans))
    return ConvertedPlans(plans=plans)


# ---------------------------------------------------------------------------- QA
class QAStage(BaseModel):
    """Result of ``qa``: one QA report per plan (standard first, then the target machines)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reports: list[QAReport] = Field(default_factory=list, description="one QA report per machine")
    figures: dict[str, str] = Field(default_factory=dict, description="machine -> PNG file name")
    png: dict[str, bytes] = Field(default_factory=dict, exclude=True)

    def files(self) -> dict[str, bytes]:
        out = {f"qa_{safe_name(r.machine)}.json": r.model_dump_json(indent=1).encode() for r in self.reports}
        out.update({self.figures[m]: b for m, b in self.png.items()})
        return out

    def verdicts(self) -> dict[str, str]:
        return {r.machine: r.verdict for r in self.reports}


def qa_task(item: tuple, density: np.ndarray) -> tuple[Any, bytes | None]:
    """Task: QA of one plan (``item`` = plan, dose, standard plan, masks, density grid, request, threads)."""
    plan, dose3, standard, masks, density_grid, req, threads = item
    set_threads(threads)
    m = get_machine(plan.machine)
    dose = Volume(np.asarray(dose3, np.float32), standard.dose_grid, "dose_gy")
    recompute = None
    if req.qa_independent_dose:
        engine = aperture_recompute(
            Volume(density, density_grid, "relative_electron_density"),
            bixel_width_mm=req.qa_bixel_mm,
            cutoff_mm=req.dij_cutoff_mm,
            threshold=req.dij_threshold,
        )
        qa_grid = (
            standard.dose_grid if req.qa_grid_mm is None else standard.dose_grid.with_spacing((req.qa_grid_mm,) * 3)
        )

        def recompute(p: Plan, mach, grid: Grid) -> Volume:  # on the QA grid, then onto the requested one
            v = engine(p, mach, qa_grid)
            return v if v.grid.same_geometry(grid) else v.resample(grid, order=1, fill=0.0)

    is_standard = plan.id == standard.plan.id
    res = qa_plan(
        plan,
        m,
        dose,
        standard_dose=None
        if is_standard
        else Volume(np.asarray(standard.dose, np.float32), standard.dose_grid, "dose_gy"),
        masks=masks,
        order=standard.order,
        recompute=recompute,
        standard_plan_id=standard.plan.id,
    )
    return res.report, qa_figure_png(res) if req.qa_figures else None


def qa(
    standard_plan: StandardPlan,
    geometry: PlanGeometry,
    planning: PlanningRequest,
    ctx: StageContext,
    converted: ConvertedPlans | None = None,
) -> QAStage:
    """Per plan: independent dose (aperture engine), gamma vs the standard dose (3 %/2 mm), the
    order's DVH criteria and deliverability; verdict pass / review / fail (one task per plan).
    A converted plan's QA was already done by the conversion's release loop
    (rayrt.convert.release: the same checks plus the independent check on a finer grid and the
    agreement with the standard plan): that report is reused, not recomputed; so is the report
    of a conversion that was not released (QA report only)."""
    dens = ctx.share("density", lambda: np.ascontiguousarray(geometry.density, dtype=np.float32))
    masks = geometry.masks()
    threads = ctx.executor.threads_per_task
    conv = converted.plans if converted else []
    todo = [(standard_plan.plan, standard_plan.dose)] + [
        (p.plan, p.dose) for p in conv if p.plan is not None and p.qa is None
    ]
    items = [(p, d, standard_plan, masks, geometry.density_grid, planning, threads) for p, d in todo]
    ctx.progress(
        0, len(items), f"{len(items)} QA task(s); {sum(p.qa is not None for p in conv)} release QA report(s) reused"
    )
    out = ctx.map(qa_task, items, dens)
    ctx.progress(len(items), len(items))
    done = {r.machine: (r, b) for r, b in out}
    reports = [out[0][0]]
    png = {m: b for m, (_, b) in done.items() if b}
    for p in conv:
        if p.qa is not None:
            reports.append(p.qa)
            if p.qa_png:
                png[p.machine] = p.qa_png
        elif p.machine in done:
            reports.append(done[p.machine][0])
    return QAStage(reports=reports, figures={m: f"qa_{safe_name(m)}.png" for m in png}, png=png)
