"""The report's DVH pages: cumulative DVHs of every structure, each converted plan overlaid on the
standard plan, and their dose-volume metrics.

DVHs are computed on each plan's own dose grid (the exported RTDOSE, Gy, total course) with
:func:`rayrt.qa.dvh.cumulative_dvh` and :func:`rayrt.qa.dvh.dvh_metrics` (voxel-centre method:
a voxel belongs to a structure when its centre does); the structure masks, drawn on the CT grid,
are sampled at the dose voxel centres (nearest, :func:`rayrt.qa.checks.masks_on_grid`).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from rayrt.imaging.volume import Grid, Volume
from rayrt.qa.checks import masks_on_grid
from rayrt.qa.dvh import METHOD_VOXEL_CENTRE, DVHMetrics, cumulative_dvh, dvh_metrics
from rayrt.report.content import PlanData, ReportInput
from rayrt.report.layout import Column, Flow, structure_colours
from rayrt.report.pages import num

__all__ = ["PlanDVH", "plan_dvhs", "dvh_pages", "StructureCurve", "PlanCurves", "DVHCurves", "dvh_curves"]

#: points of a DVH curve (0 to 1.02 x the highest dose of the plans drawn together)
DVH_POINTS = 500


class PlanDVH:
    """One plan's per-structure dose values on its dose grid (Gy) and their metrics."""

    def __init__(self, plan: PlanData, values: dict[str, np.ndarray], voxel_cc: float) -> None:
        self.plan = plan
        self.values = values
        self.metrics: dict[str, DVHMetrics] = {
            n: dvh_metrics(v, np.ones(v.shape, bool), voxel_cc, n) for n, v in values.items()
        }

    @property
    def max_gy(self) -> float:
        return max((float(v.max()) for v in self.values.values() if v.size), default=0.0)


def plan_dvhs(data: ReportInput) -> dict[str, PlanDVH]:
    """machine -> its :class:`PlanDVH`, for every plan with a dose (the masks resampled once per dose grid)."""
    masks = {s.name: Volume(s.mask, data.ct.grid, "mask") for s in data.structures}
    on_grid: dict[Grid, dict[str, np.ndarray]] = {}
    out = {}
    for p in data.plans:
        if p.dose is None:
            continue
        g = p.dose.grid
        if g not in on_grid:
            on_grid[g] = {n: m for n, m in masks_on_grid(masks, g).items() if m.any()}
        dose = np.asarray(p.dose.array, dtype=np.float64)
        out[p.machine] = PlanDVH(p, {n: dose[m] for n, m in on_grid[g].items()}, g.voxel_volume_cc)
    return out


class StructureCurve(BaseModel):
    """One structure's cumulative DVH on one plan: percent of its volume (inside the dose grid)
    receiving at least each dose of the common axis."""

    name: str
    volume_cc: float = Field(description="the structure's volume inside the plan's dose grid (cm³)")
    volume_pct: list[float] = Field(description="per point of DVHCurves.dose_gy, % of the volume with dose >= it")


class PlanCurves(BaseModel):
    machine: str
    plan_id: str
    structures: list[StructureCurve]


class DVHCurves(BaseModel):
    """``GET /jobs/{id}/dvh``: full cumulative DVHs of every plan with a dose, on one dose axis."""

    job_id: str
    dose_gy: list[float] = Field(description="the common dose axis (Gy, total course), 0 to 1.02 x the highest dose")
    plans: list[PlanCurves]
    method: str = METHOD_VOXEL_CENTRE


def dvh_curves(data: ReportInput, points: int = 201) -> DVHCurves:
    """Every plan's cumulative DVHs (the report's, :func:`plan_dvhs`) on one axis of ``points`` doses."""
    dvhs = plan_dvhs(data)
    top = max((d.max_gy for d in dvhs.values()), default=0.0)
    axis = np.linspace(0.0, max(top, 1e-6) * 1.02, points)
    plans = []
    for machine, d in dvhs.items():
        curves = []
        for name, v in d.values.items():
            _, y = cumulative_dvh(v, np.ones(v.shape, bool), axis)
            curves.append(
                StructureCurve(name=name, volume_cc=d.metrics[name].volume_cc, volume_pct=np.round(y, 3).tolist())
            )
        plans.append(PlanCurves(machine=machine, plan_id=d.plan.summary.plan_id, structures=curves))
    return DVHCurves(job_id=data.job_id, dose_gy=np.round(axis, 4).tolist(), plans=plans)


def _plot(ax, dvhs: list[tuple[PlanDVH, str]], colours: dict, prescription_gy: float | None) -> None:
    top = max(d.max_gy for d, _ in dvhs)
    axis = np.linspace(0.0, max(top, 1e-6) * 1.02, DVH_POINTS)
    for d, style in dvhs:
        for name, v in d.values.items():
            x, y = cumulative_dvh(v, np.ones(v.shape, bool), axis)
            ax.plot(x, y, ls=style, lw=1.3, color=colours.get(name, "black"), label=name if d is dvhs[0][0] else None)
    if prescription_gy:
        ax.axvline(prescription_gy, color="#888888", lw=0.8, ls=":")
    ax.set_xlim(0, axis[-1])
    ax.set_ylim(0, 102)
    ax.set_xlabel("dose (Gy, total course)", fontsize=8)
    ax.set_ylabel("volume (%)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if any(d.values for d, _ in dvhs):
        ax.legend(fontsize=6.5, ncol=4, loc="upper right", frameon=True)
    else:
        ax.text(0.5, 0.5, "no structure inside the dose grid", ha="center", va="center", transform=ax.transAxes)


def _metrics_table(flow: Flow, dvhs: list[tuple[PlanDVH, str]]) -> None:
    names = list(dict.fromkeys(n for d, _ in dvhs for n in d.values))
    rows = []
    for n in names:
        for d, _ in dvhs:
            m = d.metrics.get(n)
            if m is None:
                continue
            rows.append(
                [
                    n,
                    d.plan.machine,
                    num(m.volume_cc, 1),
                    *(num(v) for v in (m.d98_gy, m.d95_gy, m.d50_gy, m.d2_gy, m.mean_gy, m.max_gy)),
                ]
            )
    cols = [Column("structure", 1.3), Column("plan", 1.25), Column("volume (cc)", 0.72, "right")]
    cols += [Column(c, 0.63, "right") for c in ("D98 (Gy)", "D95 (Gy)", "D50 (Gy)", "D2 (Gy)", "mean (Gy)", "max (Gy)")]
    flow.table(cols, rows, size_pt=7)


def dvh_pages(flow: Flow, data: ReportInput) -> None:
    """One page per converted plan with a dose: its DVHs (solid) over the standard plan's (dashed),
    and the metrics of both; the standard plan alone when no converted plan has a dose."""
    dvhs = plan_dvhs(data)
    colours = structure_colours([s.structure for s in data.structures])
    std = dvhs.get(data.standard.machine)
    others = [dvhs[p.machine] for p in data.plans[1:] if p.machine in dvhs]
    groups: list[list[tuple[PlanDVH, str]]] = [[(o, "-")] + ([(std, "--")] if std else []) for o in others]
    if not groups and std:
        groups = [[(std, "-")]]
    if not groups:
        flow.page_break()
        flow.title("Dose-volume histograms", size_pt=14)
        flow.para("No plan of this job has an exported dose: no DVH to show.")
        return
    for group in groups:
        flow.page_break()
        head = group[0][0].plan.machine
        title = f"DVH: {head}" + (f" (solid) vs {group[1][0].plan.machine} (dashed)" if len(group) > 1 else "")
        flow.title(title, size_pt=13)
        _plot(flow.axes(4.6), group, colours, data.prescription_gy)
        flow.para(
            "Cumulative DVHs on each plan's dose grid; dotted line: the prescription. "
            + METHOD_VOXEL_CENTRE.capitalize()
            + ".",
            size_pt=7,
            colour="#555555",
        )
        flow.space(0.1)
        _metrics_table(flow, group)
    missing = [p.machine for p in data.plans if p.machine not in dvhs]
    if missing:
        flow.para(f"No dose exported for: {', '.join(missing)} (not released).", size_pt=7.5)
