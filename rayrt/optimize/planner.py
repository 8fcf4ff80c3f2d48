"""The standard-plan pipeline as plain stages: import -> Dij -> FMO -> sequencing -> DAO ->
normalisation -> final dose, each a function of typed inputs (the service runs them as tasks).

Units: beamlet weights and segment weights inside the optimiser are *course* MU (the Dij is Gy
per MU through a bixel, rayrt.dose.dij, and the order's doses are course doses); the Plan carries
MU per fraction = course MU / fractions.

Memory: each stage's peak resident set size is measured with the kernel's high-water mark
(``VmHWM`` in /proc/self/status), reset before the stage by writing 5 to /proc/self/clear_refs
(Linux >= 4.0); where the reset is not permitted the value is the process peak so far
(``memory_method`` in the report says which). tracemalloc would miss numpy/numba/scipy buffers.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

from rayrt.domain.errors import InputError
from rayrt.domain.machine import MachineModel
from rayrt.domain.order import MedicalOrder
from rayrt.domain.plan import Beam, Plan, Segment
from rayrt.imaging.volume import Grid, Volume

__all__ = ["PlanningOptions", "PlanningResult", "StageReport", "plan_standard", "masks_on_grid", "plan_from_apertures", "final_dose", "StageMeter"]


class PlanningOptions(BaseModel):
    dose_grid_mm: float = Field(default=5.0, gt=0)
    bixel_mm: float = Field(default=5.0, gt=0)
    margin_mm: float = Field(default=5.0, ge=0)
    max_segments: int = Field(default=15, ge=1)
    sequencer: str = "sweep"
    fmo_iterations: int = Field(default=400, ge=1)
    dao_rounds: int = Field(default=4, ge=1)
    dao_iterations: int = Field(default=60, ge=1)
    patient_position: str = "HFS"


class StageReport(BaseModel):
    name: str
    seconds: float
    peak_rss_mib: float
    detail: dict = Field(default_factory=dict)


def _vm(key: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class StageMeter:
    """Times stages and records each one's peak RSS (VmHWM reset per stage where permitted)."""

    def __init__(self):
        self.stages: list[StageReport] = []
        self.method = "VmHWM (/proc/self/status), reset per stage via /proc/self/clear_refs"
        self._reset_ok = True

    def _reset(self):
        if not self._reset_ok:
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self._reset_ok = False
            self.method = "VmHWM (/proc/self/status), process peak so far (clear_refs not permitted)"

    @contextmanager
    def stage(self, name: str, **detail):
        self._reset()
        t = time.perf_counter()
        rep = StageReport(name=name, seconds=0.0, peak_rss_mib=0.0, detail=dict(detail))
        yield rep.detail
        rep.seconds = time.perf_counter() - t
        rep.peak_rss_mib = _vm("VmHWM")
        self.stages.append(rep)


@dataclass
class PlanningResult:
    plan: Plan
    dose_gy: np.ndarray  # on dose_grid, shape dose_grid.shape
    dose_grid: Grid
    report: dict
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # on the dose grid


def masks_on_grid(masks: dict[str, np.ndarray], src: Grid, dst: Grid) -> dict[str, np.ndarray]:
    """Resample boolean masks by nearest neighbour at the destination voxel centres."""
    kji = np.stack(np.meshgrid(*(np.arange(n) for n in dst.shape), indexing="ij"), axis=-1).reshape(-1, 3)
    idx = np.rint(src.world_to_index(dst.index_to_world(kji.astype(float)))).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(src.shape)), axis=1)
    out = {}
    for n, m in masks.items():
        v = np.zeros(idx.shape[0], dtype=bool)
        ii = idx[inside]
        v[inside] = np.asarray(m, bool)[ii[:, 0], ii[:, 1], ii[:, 2]]
        out[n] = v.reshape(dst.shape)
    return out


def planning_phantom(study, names) -> tuple[dict[str, np.ndarray], Volume, str | None]:
    """Masks (CT grid) of ``names`` plus the body outline, and the computation phantom built from
    them: relative electron density from the CT's HU, zero outside the external contour.
    Returns ``(masks_ct, density, external_name)``."""
    from rayrt.dose.phantom import computation_phantom

    ext = study.external_name
    need = sorted(set(names) | ({ext} if ext else set()))
    masks_ct = {n: study.mask(n) for n in need}
    density = computation_phantom(study.primary, masks_ct, None, masks_ct.get(ext) if ext else None)
    return masks_ct, density, ext


def plan_from_apertures(
    segments: list[list[Segment]], gantry_deg: list[float], isocenter_mm, machine: MachineModel, order: MedicalOrder, label: str = "rayrt standard plan",
    patient_id: str = "", frame_of_reference_uid: str | None = None,
) -> Plan:
    """A Plan from per-beam segments whose ``mu`` are course MU (divided by the fractions here)."""
    fx = order.prescription.fractions
    beams = []
    for i, (segs, g) in enumerate(zip(segments, gantry_deg)):
        beams.append(Beam(name=f"B{i + 1}", number=i + 1, gantry_deg=float(g), isocenter_mm=tuple(float(v) for v in isocenter_mm),
                          segments=[s.model_copy(update={"mu": s.mu / fx}) for s in segs]))
    return Plan(label=label, machine=machine.name, patient_id=patient_id, frame_of_reference_uid=frame_of_reference_uid, fractions=fx,
                prescription_gy=order.prescription.total_dose_gy, target=order.prescription.target, beams=beams)


def final_dose(plan: Plan, beamlets: list, dij, machine: MachineModel) -> np.ndarray:
    """Course dose (Gy, flat over the dose grid) of the plan's segments through the beams' Dij blocks
    (rayrt.dose.aperture.aperture_fluence: transmission, dosimetric leaf gap, head scatter)."""
    from rayrt.dose.aperture import aperture_fluence

    w = np.concatenate([aperture_fluence(bg, b.segments, machine) for bg, b in zip(beamlets, plan.beams)]) * plan.fractions
    return np.asarray(dij @ w.astype(np.float32), dtype=np.float64)


def _stage_metrics(problem, w: np.ndarray) -> dict:
    """D95 / D10 / max (Gy) per structure on the problem's voxels for beamlet weights ``w`` (before normalisation)."""
    from rayrt.qa.dvh import dose_at_volume

    d = problem.dose(w)
    out = {}
    for n, rows in problem.structure_rows.items():
        v = d[rows]
        if v.size:
            out[n] = {"d95_gy": float(dose_at_volume(v, 95.0)), "d10_gy": float(dose_at_volume(v, 10.0)), "max_gy": float(v.max())}
    return out


def plan_standard(
    study,
    order: MedicalOrder,
    machine: MachineModel,
    gantry_angles: list[float],
    options: PlanningOptions | None = None,
    meter: StageMeter | None = None,
) -> PlanningResult:
    """Whole single-process planning pipeline on one machine (the standard machine by default)."""
    from rayrt.dose.dij import dose_grid_for, plan_dij
    from rayrt.optimize.dao import DAOOptions, optimize_apertures
    from rayrt.optimize.fmo import FluenceOptions, ObjectiveEvaluator, optimize_fluence
    from rayrt.optimize.layout import layout_from_beamlets
    from rayrt.optimize.normalize import normalize_plan
    from rayrt.optimize.problem import build_problem
    from rayrt.optimize.sequencing import get_sequencer
    from rayrt.qa.deliverability import check_plan
    from rayrt.qa.dvh import dose_at_volume, dvh_metrics

    opt = options or PlanningOptions()
    meter = meter or StageMeter()
    seq = get_sequencer(opt.sequencer)
    if not gantry_angles:
        raise InputError("give at least one gantry angle", field="beams")
    with meter.stage("import") as det:
        order.check_structures(study.structure_names)
        ct = study.primary
        masks_ct, density, ext = planning_phantom(study, order.structure_names())
        dose_grid = dose_grid_for(ct.grid, opt.dose_grid_mm)
        masks = masks_on_grid(masks_ct, ct.grid, dose_grid)
        target_ct = masks_ct[order.prescription.target]
        kji = np.argwhere(target_ct).mean(axis=0)
        iso = ct.grid.index_to_world(kji)
        beams = [Beam(name=f"B{i + 1}", number=i + 1, gantry_deg=float(a), isocenter_mm=tuple(map(float, iso))) for i, a in enumerate(gantry_angles)]
        det.update(dose_grid_shape=list(dose_grid.shape), dose_grid_mm=opt.dose_grid_mm, external=ext, isocenter_mm=[float(v) for v in iso])
    with meter.stage("dij") as det:
        dij, grids = plan_dij(density, dose_grid, beams, machine, target_ct, bixel_width_mm=opt.bixel_mm, margin_mm=opt.margin_mm, mask_grid=ct.grid)
        det.update(nnz=int(dij.nnz), bixels=int(dij.shape[1]), voxels=int(dij.shape[0]))
    offs = np.cumsum([0] + [g.num_bixels for g in grids])
    slices = [slice(int(a), int(b)) for a, b in zip(offs[:-1], offs[1:])]
    layouts = [layout_from_beamlets(g) for g in grids]
    with meter.stage("problem") as det:
        problem = build_problem(order, masks, dij, beam_slices=slices, grid_shape=dose_grid.shape, voxel_volume_cc=dose_grid.voxel_volume_cc)
        det.update(rows=problem.dij.num_rows, nnz=problem.dij.nnz, objectives=len(problem.objectives))
    with meter.stage("fmo") as det:
        fr = optimize_fluence(problem, FluenceOptions(max_iterations=opt.fmo_iterations))
        w = fr.w
        det.update(objective=fr.objective, iterations=fr.iterations, evaluations=fr.evaluations, max_violation_gy=fr.max_violation_gy, message=fr.message,
                   metrics=_stage_metrics(problem, w))
    with meter.stage("sequencing", sequencer=seq.name) as det:
        seg_lists, infos = [], []
        for lay, sl in zip(layouts, slices):
            t_b = time.perf_counter()
            r = seq.sequence_with_info(lay.to_map(w[sl]), lay, machine, opt.max_segments)
            seg_lists.append(r.segments)
            infos.append({"seconds": time.perf_counter() - t_b, "segments": r.num_segments, "levels": r.levels, "total_course_mu": r.total_mu, "dropped_course_mu": r.dropped_mu})
        from rayrt.optimize.dao import BeamApertures, aperture_weights

        w_seq = aperture_weights([BeamApertures.from_segments(sg, lay, machine) for sg, lay in zip(seg_lists, layouts)], slices, problem.num_beamlets)
        det.update(metrics=_stage_metrics(problem, w_seq), objective=problem.total_objective(problem.dose(w_seq)))
        det.update(per_beam=infos, segments=int(sum(i["segments"] for i in infos)), total_course_mu=float(sum(i["total_course_mu"] for i in infos)))
    with meter.stage("dao") as det:
        ev = ObjectiveEvaluator(problem)
        if problem.hard:
            ev.rho = fr.al_rho
            ev.lambdas = fr.al_lambdas or ev.lambdas
        fx = order.prescription.fractions
        dres = optimize_apertures(problem, layouts, seg_lists, machine,
                                  DAOOptions(outer_rounds=opt.dao_rounds, iterations_per_round=opt.dao_iterations,
                                             min_mu_weight=machine.limits.min_mu_per_segment * fx), evaluator=ev)
        det.update(objective_start=dres.objective_start, objective=dres.objective, iterations=dres.iterations, dropped_segments=dres.dropped_segments,
                   segments=[len(s) for s in dres.segments], metrics=_stage_metrics(problem, np.asarray(dres.weights)))
    with meter.stage("normalize_dose") as det:
        plan = plan_from_apertures(dres.segments, gantry_angles, iso, machine, order, patient_id=study.patient_id,
                                   frame_of_reference_uid=study.frame_of_reference_uid)
        plan, dose, f, raised = normalize_plan(plan, lambda p: final_dose(p, grids, dij, machine), masks, order,
                                               machine.limits.min_mu_per_segment)
        det.update(factor=f, raised_segments=raised)
    with meter.stage("report") as det:
        dose3 = dose.reshape(dose_grid.shape).astype(np.float32)
        dvh = {}
        for n, m in masks.items():
            met = dvh_metrics(dose3, m, dose_grid.voxel_volume_cc, n).model_dump()
            v = dose3[m]
            met["d10_gy"] = float(dose_at_volume(v, 10.0)) if v.size else float("nan")
            dvh[n] = met
        d_sub = dose[problem.dij.voxel_index]
        deliv = check_plan(plan, machine)
        objectives = problem.objective_values(d_sub)
    report = {
        "machine": machine.name,
        "order": order.name,
        "gantry_deg": list(map(float, gantry_angles)),
        "options": opt.model_dump(),
        "fluence": {"objective": fr.objective, "iterations": fr.iterations, "seconds": fr.seconds, "max_violation_gy": fr.max_violation_gy,
                    "constraint_violations": fr.constraint_violations, "message": fr.message},
        "final_objective": problem.total_objective(d_sub),
        "objectives": objectives,
        "max_constraint_violation_gy": max([o.get("violation_gy", 0.0) for o in objectives], default=0.0),
        "dvh": dvh,
        "num_segments": sum(len(b.segments) for b in plan.beams),
        "total_mu_per_fraction": plan.total_mu,
        "mu_per_beam": [b.mu for b in plan.beams],
        "deliverability": deliv.model_dump(),
        "stages": [s.model_dump() for s in meter.stages],
        "memory_method": meter.method,
    }
    return PlanningResult(plan=plan, dose_gy=dose3, dose_grid=dose_grid, report=report, masks=masks)
