"""Export stage: the plans as DICOM RT and their DVHs and goals, the one writer of a job's files.

    export  RTSTRUCT (once), RTPLAN + RTDOSE per machine (the standard plan first), dvh.csv, and
            summary.json (per machine: MU, segments, QA verdict, the order's goals met or missed)

A converted plan that QA failed, or that its conversion did not release, is never written as
RTPLAN/RTDOSE; the summary says why. This module is the core: no Ray, no HTTP.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pydicom.uid import generate_uid

from rayrt.domain.errors import InputError
from rayrt.domain.order import MedicalOrder
from rayrt.imaging.arrays import safe_name
from rayrt.imaging.export import write_ct_series, write_rtstruct
from rayrt.imaging.rtplan import StructureSetRef, export_plan_dicom
from rayrt.imaging.volume import Volume
from rayrt.machines import get_machine
from rayrt.optimize.standard import PlanGeometry, StandardPlan, dose_key
from rayrt.pipeline.analysis import csv_bytes
from rayrt.pipeline.conversion import ConvertedPlans, QAStage
from rayrt.pipeline.optimization import BeamSetChoice, BeamSetStanding
from rayrt.pipeline.runner import StageContext
from rayrt.qa.checks import GOAL_TOLERANCE_GY
from rayrt.qa.goals import GoalEvaluation, evaluate_goals

__all__ = ["export", "GoalResult", "MachineSummary", "ExportResult", "goals_of", "clinical_goal_results"]


class GoalResult(BaseModel):
    """One goal of the order on one plan: a clinical goal (with its rank) or an expert DVH objective."""

    structure: str
    metric: str
    goal: str
    value_gy: float | None = Field(description="the plan's value when the metric is a dose (Gy)")
    limit_gy: float = Field(description="the goal's value (Gy; % or cc for a V<x>Gy goal)")
    met: bool
    value: float | None = Field(default=None, description="the plan's value in the goal's unit")
    unit: str = "Gy"
    rank: int | None = Field(default=None, description="the clinical goal's priority rank (1 = most important)")
    limited_by: str = Field(default="", description="for a missed goal of automatic planning: what limited it")


class MachineSummary(BaseModel):
    machine: str
    plan_id: str
    total_mu_per_fraction: float
    segments: int
    open_field_mu: float | None = Field(
        default=None,
        description="MU per fraction of the open-field plan of the same beams and prescription (the modulation "
        "measure is total_mu_per_fraction / open_field_mu)",
    )
    verdict: str | None = None
    failed_checks: list[str] = Field(default_factory=list)
    goals: list[GoalResult] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)


#: the summary's verdict of a converted plan that is not released (no RTPLAN / RTDOSE written)
NOT_RELEASED = "not released"


def rtplan_result(machine: str) -> str:
    """Where a released plan's RTPLAN lies among the job's results."""
    return f"export/RP_{safe_name(machine)}.dcm"


def rtdose_result(machine: str) -> str:
    """Where a released plan's RTDOSE (Gy, total course) lies among the job's results."""
    return f"export/RD_{safe_name(machine)}.dcm"


def qa_result(machine: str) -> str:
    """Where the QA stage's report (JSON) of a plan lies among the job's results."""
    return f"qa/qa_{safe_name(machine)}.json"


class ExportResult(BaseModel):
    """Result of ``export``: DICOM RT per machine, DVH CSV, QA JSON and a summary (summary.json)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    machines: list[MachineSummary]
    beam_angle_sets: list[BeamSetStanding] = Field(
        default_factory=list, description="the beam-angle sets the planner chose from (empty: one set was planned)"
    )
    beam_angle_set_chosen: int | None = Field(default=None, description="the set planned (1-based)")
    rtstruct: str | None = None
    dvh_csv: str = "dvh.csv"
    blobs: dict[str, bytes] = Field(default_factory=dict, exclude=True)

    def files(self) -> dict[str, bytes]:
        out = dict(self.blobs)
        out["summary.json"] = self.model_dump_json(indent=1).encode()
        return out

    @classmethod
    def from_files(cls, data: dict, read: Callable[[str], bytes]) -> "ExportResult":
        return cls.model_validate(data)  # the DICOM files stay in the store; nothing later needs them in memory


def clinical_goal_results(evaluations: list[GoalEvaluation], limits: dict[str, str]) -> list[GoalResult]:
    """The order's clinical goals judged on a plan (:func:`rayrt.qa.goals.evaluate_goals`)."""
    out = []
    for e in evaluations:
        unit = e.unit
        out.append(
            GoalResult(
                structure=e.structure,
                metric=e.metric,
                goal=e.label,
                value_gy=e.value if unit == "Gy" else None,
                limit_gy=e.goal,
                met=e.met,
                value=e.value,
                unit=unit,
                rank=e.rank,
                limited_by="" if e.met else limits.get(e.label, ""),
            )
        )
    return out


def goals_of(order: MedicalOrder, dvh: dict[str, dict]) -> list[GoalResult]:
    """The order's DVH objectives as pass/fail goals on a plan's DVH (min_dvh: D_v >= dose;
    max_dvh: D_v <= dose; max_dose: D2 <= dose; min_dose: D98 >= dose; mean_dose: mean <= dose)."""
    out = []
    for o in order.objectives:
        kind = getattr(o.kind, "value", str(o.kind))
        met = dvh.get(o.structure)
        if met is None:
            continue
        if kind in ("min_dvh", "max_dvh") and o.volume_pct is not None:
            metric, key, lower = f"D{o.volume_pct:g}", dose_key(o.volume_pct), kind == "min_dvh"
        elif kind == "max_dose":
            metric, key, lower = "D2", "d2_gy", False
        elif kind == "min_dose":
            metric, key, lower = "D98", "d98_gy", True
        elif kind == "mean_dose":
            metric, key, lower = "mean", "mean_gy", False
        else:
            continue
        v = met.get(key)
        if v is None:
            continue
        ok = v >= o.dose_gy - GOAL_TOLERANCE_GY if lower else v <= o.dose_gy + GOAL_TOLERANCE_GY
        out.append(
            GoalResult(
                structure=o.structure,
                metric=metric,
                goal=f"{metric} {'>=' if lower else '<='} {o.dose_gy:g} Gy",
                value_gy=float(v),
                limit_gy=o.dose_gy,
                met=bool(ok),
            )
        )
    return out


def _dvh_rows(label: str, dvh: dict[str, dict]) -> list[list]:
    keys = ["volume_cc", "min_gy", "mean_gy", "max_gy", "d2_gy", "d5_gy", "d10_gy", "d50_gy", "d95_gy", "d98_gy"]
    return [[label, n, *(f"{met.get(k, float('nan')):.4f}" for k in keys)] for n, met in dvh.items()]


def export(
    study: Any,
    standard_plan: StandardPlan,
    geometry: PlanGeometry,
    ctx: StageContext,
    converted: ConvertedPlans | None = None,
    qa: QAStage | None = None,
    beam_set: BeamSetChoice | None = None,
) -> ExportResult:
    """RTSTRUCT (once), RTPLAN + RTDOSE per machine (standard included), dvh.csv, summary.json
    (per plan: MU, segments, QA verdict and the order's goals met or missed; the beam-angle sets
    chosen from, if several)."""
    order = standard_plan.order
    verdicts = {r.machine: r for r in (qa.reports if qa else [])}

    def plan_goals(dose3: Any, dvh: dict[str, dict], standard: bool) -> list[GoalResult]:
        if not order.goals:
            return goals_of(order, dvh)
        if standard and standard_plan.goals:
            return clinical_goal_results(standard_plan.goals, standard_plan.goal_limits)
        evals = evaluate_goals(order.goals, np.asarray(dose3), geometry.dose_masks, geometry.dose_grid.voxel_volume_cc)
        return clinical_goal_results(evals, {})

    def _qa_failed(machine: str) -> bool:
        rep = verdicts.get(machine)
        return rep is not None and rep.verdict == "fail"

    # a converted plan that failed QA is never released: no RTPLAN / RTDOSE, the summary says why
    plans = [(standard_plan.plan, standard_plan.dose, standard_plan.dvh)] + [
        (p.plan, p.dose, p.dvh)
        for p in (converted.plans if converted else [])
        if p.plan is not None and not _qa_failed(p.machine)
    ]
    blobs: dict[str, bytes] = {}
    summaries = []
    rows: list[list] = []
    with tempfile.TemporaryDirectory(prefix="rayrt-export-") as tmp:
        d = Path(tmp)
        rs = d / "RS.dcm"
        study_uid = getattr(study, "study_instance_uid", None) or generate_uid()
        for_uid = getattr(study, "frame_of_reference_uid", None)
        reference = study.primary
        if not reference.meta.get(
            "sop_instance_uids"
        ):  # a phantom or non-DICOM image: write the CT series the RT objects reference
            reference = Volume(reference.array, reference.grid, reference.quantity or "HU", {})
            for f in write_ct_series(
                reference,
                d / "CT",
                patient_id=getattr(study, "patient_id", None) or "anonymous",
                patient_name=getattr(study, "patient_name", None) or "",
                study_uid=study_uid,
                frame_of_reference_uid=for_uid,
            ):
                blobs[f.name] = f.read_bytes()  # CT_0001.dcm ...
        try:
            write_rtstruct(
                study.structures,
                reference,
                rs,
                patient_id=getattr(study, "patient_id", None),
                patient_name=getattr(study, "patient_name", None),
                label="rayrt",
            )
            ssref = StructureSetRef.from_file(rs)
            blobs["RS.dcm"] = rs.read_bytes()
        except InputError:  # no structure can be written (e.g. none drawn): plans without a structure-set reference
            ssref = None
        for n, (plan, dose3, dvh) in enumerate(plans):
            m = get_machine(plan.machine)
            p = plan.model_copy(
                update={
                    "frame_of_reference_uid": ssref.frame_of_reference_uid
                    if ssref
                    else (plan.frame_of_reference_uid or for_uid)
                }
            )
            written = export_plan_dicom(
                p,
                m,
                d,
                dose=Volume(np.asarray(dose3, np.float32), standard_plan.dose_grid, "dose_gy"),
                rtstruct=rs if ssref else None,
                patient_id=getattr(study, "patient_id", None) or None,
                patient_name=getattr(study, "patient_name", "") or "",
                study_uid=None if ssref else study_uid,
            )
            rp, rd = written["rtplan"], written["rtdose"]
            blobs[rp.name] = rp.read_bytes()
            blobs[rd.name] = rd.read_bytes()
            rows += _dvh_rows(m.name, dvh)
            rep = verdicts.get(m.name)
            summaries.append(
                MachineSummary(
                    machine=m.name,
                    plan_id=plan.id,
                    total_mu_per_fraction=plan.total_mu,
                    segments=sum(len(b.segments) for b in plan.beams),
                    open_field_mu=standard_plan.open_field_mu or None,
                    verdict=rep.verdict if rep else None,
                    failed_checks=[f"{c.name}: {c.status}" for c in rep.failed()] if rep else [],
                    goals=plan_goals(dose3, dvh, n == 0),
                    files=[rp.name, rd.name],
                )
            )
            ctx.progress(n + 1, len(plans))
    for mp in converted.plans if converted else []:  # mp: MachinePlan (p above is a Plan)
        if mp.plan is None:  # not released: no plan, no RTPLAN; the summary says why
            summaries.append(
                MachineSummary(
                    machine=mp.machine,
                    plan_id="",
                    total_mu_per_fraction=0.0,
                    segments=0,
                    verdict=NOT_RELEASED,
                    failed_checks=list(mp.reasons),
                )
            )
        elif _qa_failed(mp.machine):
            rep = verdicts[mp.machine]
            summaries.append(
                MachineSummary(
                    machine=mp.machine,
                    plan_id=mp.plan.id,
                    total_mu_per_fraction=mp.plan.total_mu,
                    segments=sum(len(b.segments) for b in mp.plan.beams),
                    verdict=NOT_RELEASED,
                    failed_checks=[f"QA {rep.verdict}"] + [f"{c.name}: {c.status}" for c in rep.failed()],
                    goals=plan_goals(mp.dose, mp.dvh, False),
                )
            )
    rank = {
        name: i
        for i, name in enumerate(
            [standard_plan.plan.machine] + [p.machine for p in (converted.plans if converted else [])]
        )
    }
    summaries.sort(key=lambda m: rank.get(m.machine, len(rank)))  # standard first, then the requested machines in order
    blobs["dvh.csv"] = csv_bytes(
        [
            "machine",
            "structure",
            "volume_cc",
            "min_gy",
            "mean_gy",
            "max_gy",
            "d2_gy",
            "d5_gy",
            "d10_gy",
            "d50_gy",
            "d95_gy",
            "d98_gy",
        ],
        rows,
    )
    return ExportResult(
        machines=summaries,
        beam_angle_sets=beam_set.sets if beam_set else [],
        beam_angle_set_chosen=beam_set.chosen + 1 if beam_set else None,
        rtstruct="RS.dcm" if "RS.dcm" in blobs else None,
        blobs=blobs,
    )
