"""Planning stages, optimisation to the standard plan, on the vendor-neutral standard machine.

    problem    the order's objectives on the Dij rows that matter (in memory; rebuilt on resume)
    fmo        fluence-map optimisation (L-BFGS-B, augmented Lagrangian for hard constraints)
    sequence   leaf sequencing of the optimal fluence onto the standard MLC
    dao        direct aperture optimisation of those segments (weights and leaf tips)
    normalize  the standard plan: MU per fraction normalised to the prescription, its course dose
               (Gy) through the Dij with the aperture fluence (transmission, leaf gap, head scatter)

Weights inside the optimiser are course MU-weights; the plan carries MU per fraction
(:mod:`rayrt.optimize.standard`). This module is the core: no Ray, no HTTP.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, Field

from rayrt.domain.machine import MachineModel
from rayrt.domain.order import MedicalOrder
from rayrt.domain.plan import Segment
from rayrt.domain.planning import PlanningRequest
from rayrt.domain.segments import SegmentLimits, segment_limits
from rayrt.dose.aperture import aperture_fluence
from rayrt.machines import get_machine
from rayrt.optimize._threads import set_threads
from rayrt.optimize.autoplan import (
    air_limits,
    autoplan_fluence,
    build_goal_problem,
    goal_standing,
    is_goal_order,
    limiting_factors,
    reweight_lost_goals,
)
from rayrt.optimize.candidates import SolveMap, solve_candidate
from rayrt.optimize.dao import DAOOptions, DAOResult, optimize_apertures
from rayrt.optimize.fmo import FluenceOptions, FluenceResult, ObjectiveEvaluator, initial_weights, optimize_fluence
from rayrt.optimize.goal_guards import goal_guard_objectives
from rayrt.optimize.goal_terms import GoalPlanReport
from rayrt.optimize.layout import layout_from_beamlets
from rayrt.optimize.mu_bound import normalised_mu_bound
from rayrt.optimize.mu_refit import (
    MuRefitDetail,
    beam_of_segments,
    problem_segment_doses,
    refit_dropping_small,
    with_refitted_mu,
)
from rayrt.optimize.normalize import normalization_factor, normalize_plan
from rayrt.optimize.problem import OptimizationProblem, build_problem
from rayrt.optimize.regularize import FluenceRegularizer, neighbour_differences, sweep_mu_operator
from rayrt.optimize.sequencing import get_sequencer
from rayrt.optimize.standard import (
    PlanGeometry,
    StandardPlan,
    dvh_table,
    final_dose,
    plan_from_apertures,
    weight_metrics,
)
from rayrt.pipeline.planning import BeamletSet, DijResult, narrow_beams
from rayrt.pipeline.runner import Artefacts, StageContext
from rayrt.qa.goals import evaluate_goals

__all__ = [
    "problem",
    "beam_set",
    "choose_beams",
    "BeamSetChoice",
    "BeamSetStanding",
    "fmo",
    "sequence",
    "dao",
    "normalize",
    "FluenceStage",
    "SequencedPlan",
    "ApertureStage",
]


def problem(
    order: MedicalOrder, geometry: PlanGeometry, beamlet_set: BeamletSet, dij: DijResult, planning: PlanningRequest
) -> OptimizationProblem:
    """The optimisation problem on the Dij rows that matter (in memory; rebuilt on resume).

    An order with clinical goals and no objectives is planned from its goals
    (:func:`rayrt.optimize.autoplan.build_goal_problem`: helper structures, objectives set below
    the goals); an expert objective list is taken as written, organ terms aimed
    ``planning.organ_aim_margin_pct`` % of the prescription below their goals. Both carry the
    fluence regulariser (smoothing, weight bound) of ``planning``."""
    masks = {n: geometry.dose_masks[n] for n in order.structure_names()}
    grid = geometry.dose_grid
    if is_goal_order(order):
        sx, sy, sz = grid.spacing
        external = geometry.dose_masks.get(geometry.external) if geometry.external else None
        prob, _ = build_goal_problem(
            order,
            masks,
            dij.matrix,
            spacing_zyx_mm=(sz, sy, sx),
            voxel_volume_cc=grid.voxel_volume_cc,
            external=external,
            options=planning.autoplan,
            organ_aim_margin_pct=planning.organ_aim_margin_pct,
            beam_slices=beamlet_set.slices(),
        )
    else:
        prob = build_problem(
            order,
            masks,
            dij.matrix,
            beam_slices=beamlet_set.slices(),
            grid_shape=grid.shape,
            voxel_volume_cc=grid.voxel_volume_cc,
            organ_aim_margin_pct=planning.organ_aim_margin_pct,
        )
    layouts = [layout_from_beamlets(bg) for bg in beamlet_set.grids()]
    w_open = initial_weights(prob)
    prob.regularizer = FluenceRegularizer(
        differences=neighbour_differences(layouts, beamlet_set.slices(), prob.num_beamlets),
        open_weight=float(w_open.mean()) if w_open.size else 1.0,
        prescription_gy=order.prescription.total_dose_gy,
        smooth_weight=planning.fluence_smoothing,
        max_factor=planning.max_beamlet_weight,
        sweep=sweep_mu_operator(layouts, beamlet_set.slices(), prob.num_beamlets),
        mu_cap=planning.fluence_mu_cap,
        mu_weight=planning.fluence_mu_weight,
    )
    prob.mu_bound = normalised_mu_bound(
        prob.structure_rows, order, planning.max_mu_factor, len(layouts) * prob.regularizer.open_weight
    )
    # the dense copy of the fullest rows now, not at the first fluence solve: its products sum in
    # another order than the CSR rows', so every stage after this one (DAO of a resumed job, of a
    # chosen beam-angle set) computes on the same kernels as in an uninterrupted run
    prob.dij.enable_dense()
    return prob


class FluenceStage(BaseModel):
    """Result of ``fmo``: optimal beamlet weights (course MU-weights) and the optimiser's record."""

    weights: list[float]
    target_aim_factor: float = Field(
        default=1.0, description="the prescription target's aims relative to the order (normalisation-aware passes)"
    )
    objective: float
    iterations: int
    evaluations: int
    seconds: float
    converged: bool
    message: str
    max_violation_gy: float = 0.0
    al_rho: float = 0.0
    al_lambdas: list[list[float]] | None = Field(
        default=None, description="augmented-Lagrangian multipliers per objective (DAO continues from them)"
    )
    metrics: dict = Field(default_factory=dict, description="D95/D10/max (Gy) per structure before normalisation")
    objective_settings: list[tuple[float, float]] | None = Field(
        default=None,
        description="automatic planning: each objective's (aim Gy, weight) at the chosen round (DAO continues there)",
    )
    goal_report: GoalPlanReport | None = Field(default=None, description="automatic planning's rounds and terms")
    open_field_weight: float = Field(default=0.0, description="the open-field beamlet weight (course MU-weight)")


#: L-BFGS-B iterations of each pass of the standard plan's MU refit (a few seconds at most: the
#: refit works on the segments' dose matrix)
MU_REFIT_ITERATIONS = 300

#: the MU refit's goal guards (rayrt.optimize.goal_guards): aimed no further than this from each goal (Gy) ...
GOAL_GUARD_MARGIN_GY = 1.0
#: ... with this multiple of the largest soft objective weight
GOAL_GUARD_WEIGHT = 10.0

#: DAO passes after the first when the apertures lost goals the fluence met (automatic planning)
_DAO_REPAIRS = 2

#: the largest factor the normalisation-aware passes raise the target's aims by
MAX_TARGET_AIM_FACTOR = 1.25


def fmo(
    problem: OptimizationProblem,
    order: MedicalOrder,
    planning: PlanningRequest,
    ctx: StageContext,
    beam_set: BeamSetChoice | None = None,
) -> FluenceStage:
    """Fluence-map optimisation (L-BFGS-B, augmented Lagrangian for hard constraints), normalisation
    aware: ``planning.fmo_normalization_passes`` passes share the iterations; after each but the
    last the prescription target's aims are set to the factor the final normalisation would apply
    to the current dose (:meth:`~rayrt.optimize.problem.OptimizationProblem.set_target_aims`,
    between 1 and 1.25) and the next pass starts from the weights scaled by it. When the
    ``beam_set`` stage chose among several angle sets, its chosen set's fluence is this stage's
    result (the same problem, already optimised there)."""
    if beam_set is not None:
        chosen = beam_set.sets[beam_set.chosen]
        ctx.progress(1, 1, f"the fluence of beam-angle set {beam_set.chosen + 1} ({chosen.goals_met} goals met)")
        return beam_set.fluence
    if problem.goal_plan is not None:
        # the rounds' candidate solves: one task each, the problem (Dij, rows, regulariser) shared once
        shared = ctx.executor.put(problem)
        return _fluence(
            problem,
            order,
            planning,
            ctx.progress,
            lambda items: ctx.executor.map(solve_candidate, items, shared),
            ctx.executor.threads_per_task,
        )
    return _fluence(problem, order, planning, ctx.progress)


def _fluence(
    problem: OptimizationProblem,
    order: MedicalOrder,
    planning: PlanningRequest,
    progress: Callable[[int, int, str], None] | None = None,
    solve: SolveMap | None = None,
    threads: int = 0,
) -> FluenceStage:
    """The fluence stage's optimisation (:func:`fmo`), its candidate solves through ``solve``
    (default: one after the other here)."""

    def report(done: int, total: int, message: str = "") -> None:
        if progress is not None:
            progress(done, total, message)

    if problem.goal_plan is not None:
        fr, factor, goal_report = autoplan_fluence(
            problem, problem.goal_plan, order, planning.autoplan, report, solve=solve, threads=threads
        )
        return _fluence_stage(problem, fr, factor, goal_report)
    passes = planning.fmo_normalization_passes
    per_pass = [
        planning.fmo_iterations // passes + (1 if i < planning.fmo_iterations % passes else 0) for i in range(passes)
    ]
    nstruct = order.prescription.normalization.structure or order.prescription.target
    factor = 1.0
    w0 = None
    iterations = evaluations = 0
    seconds = 0.0
    for n, iters in enumerate(per_pass):
        fr = optimize_fluence(problem, FluenceOptions(max_iterations=max(1, iters)), w0=w0)
        iterations, evaluations, seconds = (
            iterations + fr.iterations,
            evaluations + fr.evaluations,
            seconds + fr.seconds,
        )
        if n == passes - 1:
            break
        gap = normalization_factor(problem.dose(fr.w)[problem.structure_rows[nstruct]], order)
        step = float(np.clip(gap, 1.0, MAX_TARGET_AIM_FACTOR / factor))
        factor *= step
        problem.set_target_aims(factor)
        w0 = fr.w * step
        report(n + 1, passes, f"target aims x{factor:.3f} (normalisation)")
    report(passes, passes, f"objective {fr.objective:.4g} after {iterations} iterations")
    fr.iterations, fr.evaluations, fr.seconds = iterations, evaluations, seconds
    return _fluence_stage(problem, fr, factor, None)


def _fluence_stage(
    problem: OptimizationProblem, fr: FluenceResult, factor: float, report: GoalPlanReport | None
) -> FluenceStage:
    reg = problem.regularizer
    return FluenceStage(
        weights=list(map(float, fr.w)),
        target_aim_factor=factor,
        objective=fr.objective,
        iterations=fr.iterations,
        evaluations=fr.evaluations,
        seconds=fr.seconds,
        converged=fr.converged,
        message=fr.message,
        max_violation_gy=fr.max_violation_gy,
        al_rho=fr.al_rho,
        al_lambdas=[np.asarray(v, dtype=float).tolist() for v in fr.al_lambdas] if fr.al_lambdas else None,
        metrics=weight_metrics(problem, fr.w),
        objective_settings=[(o.dose_gy, o.weight) for o in problem.objectives] if report is not None else None,
        goal_report=report,
        open_field_weight=reg.open_weight if reg is not None else 0.0,
    )


# ---------------------------------------------------------------------------- beam-angle sets
class BeamSetStanding(BaseModel):
    """How one beam-angle set's fluence meets the order (before sequencing; normalised as the plan will be)."""

    gantry_deg: list[float]
    goals: int = Field(description="clinical goals of the order")
    goals_met: int
    met_per_rank: dict[int, int] = Field(default_factory=dict, description="goals met per priority rank")
    shortfall: float = Field(default=0.0, description="total relative shortfall of the missed goals")
    objective: float
    seconds: float


class BeamSetChoice(BaseModel):
    """Result of ``beam_set``: every candidate set's standing, the one kept (0-based) and its fluence."""

    sets: list[BeamSetStanding]
    chosen: int
    fluence: FluenceStage

    @property
    def gantry_deg(self) -> list[float]:
        return self.sets[self.chosen].gantry_deg


def beam_set_task(
    item: tuple[list[float], MedicalOrder, PlanningRequest, int],
    geometry: PlanGeometry,
    beamlet_set: BeamletSet,
    dij: DijResult,
) -> tuple[tuple, FluenceStage, BeamSetStanding]:
    """Task: one beam-angle set planned to its fluence: its beams' columns of the Dij, the
    order's problem on them (:func:`problem`) and the fluence stage's optimisation with its
    candidates solved one after the other. Returns the comparison key (goals met per rank, then
    minus the shortfall; an expert objective list: minus its objective), the fluence and the
    standing. ``item`` = (gantry angles, order, planning request, numba threads)."""
    angles, order, planning, threads = item
    set_threads(threads)
    g, b, d = narrow_beams(geometry, beamlet_set, dij, angles)
    prob = problem(order, g, b, d, planning)
    fl = _fluence(prob, order, planning)  # candidates one after the other inside this task
    w = np.asarray(fl.weights)
    if prob.goal_plan is not None:
        st = goal_standing(prob, prob.goal_plan, order, w)
        met = {i + 1: n for i, n in enumerate(st.key[0])}
        key: tuple = (st.key[0], st.key[1])  # the objectives' weights differ per set: not compared
        goals, shortfall = len(st.evals), abs(float(st.key[1]))
    else:
        met, key, goals, shortfall = {}, ((), -fl.objective), 0, 0.0
    standing = BeamSetStanding(
        gantry_deg=list(angles),
        goals=goals,
        goals_met=sum(met.values()),
        met_per_rank=met,
        shortfall=shortfall,
        objective=fl.objective,
        seconds=fl.seconds,
    )
    return key, fl, standing


def beam_set(
    order: MedicalOrder,
    geometry: PlanGeometry,
    beamlet_set: BeamletSet,
    dij: DijResult,
    planning: PlanningRequest,
    ctx: StageContext,
) -> BeamSetChoice:
    """Choose among the request's beam-angle sets (:meth:`~rayrt.domain.planning.PlanningRequest.angle_sets`):
    each set's fluence optimised from the Dij already computed for every candidate beam (one task
    per set; geometry, bixels and Dij put once), the set whose normalised fluence dose meets the
    order's goals best kept: most goals met rank by rank, then the smaller total shortfall of the
    missed ones (an expert objective list: the lower objective); on a tie the earlier set, so an
    alternative replaces the request's own beams only when it meets the goals better. The stages
    after it plan the chosen beams only (:func:`choose_beams`)."""
    sets = planning.angle_sets()
    shared = [ctx.executor.put(geometry), ctx.executor.put(beamlet_set), ctx.executor.put(dij)]
    threads = ctx.executor.threads_per_task
    results = ctx.map(beam_set_task, [(s, order, planning, threads) for s in sets], *shared)
    chosen = max(range(len(results)), key=lambda i: (results[i][0], -i))
    st = results[chosen][2]
    ctx.progress(len(sets), len(sets), f"set {chosen + 1} of {len(sets)}: {st.goals_met}/{st.goals} goals met")
    return BeamSetChoice(sets=[r[2] for r in results], chosen=chosen, fluence=results[chosen][1])


def choose_beams(artefacts: Artefacts, choice: BeamSetChoice) -> None:
    """The ``beam_set`` stage's update: geometry, bixels and Dij narrowed to the chosen set's beams."""
    artefacts["geometry"], artefacts["beamlet_set"], artefacts["dij"] = narrow_beams(
        artefacts["geometry"], artefacts["beamlet_set"], artefacts["dij"], choice.gantry_deg
    )


class SequencedPlan(BaseModel):
    """Segments per beam (MU = course fluence units) from a leaf sequencer."""

    machine: str
    sequencer: str
    segments: list[list[Segment]]
    per_beam: list[dict] = Field(default_factory=list)
    metrics: dict = Field(default_factory=dict)


def _planning_limits(machine: MachineModel, req: PlanningRequest) -> SegmentLimits:
    """The effective segment limits of the standard plan: the stricter of the machine's and the planning request's."""
    return segment_limits(
        machine, min_area_cm2=req.min_segment_area_cm2, min_mu=req.min_segment_mu, max_segments=req.max_segments
    )


def _sequence(w: np.ndarray, beamlet_set: BeamletSet, machine: MachineModel, req: PlanningRequest) -> SequencedPlan:
    """Leaf sequencing under the effective segment limits (minimum area and width, maximum
    segments; the minimum MU is DAO's: the sequencer's weights are not final)."""
    seq = get_sequencer(req.sequencer)
    limits = _planning_limits(machine, req)
    segs, info = [], []
    for bg, sl in zip(beamlet_set.grids(), beamlet_set.slices()):
        lay = layout_from_beamlets(bg)
        r = seq.sequence_with_info(lay.to_map(w[sl]), lay, machine, limits.max_segments, limits=limits)
        segs.append(r.segments)
        info.append(
            {
                "segments": r.num_segments,
                "levels": r.levels,
                "total_course_mu": r.total_mu,
                "dropped_course_mu": r.dropped_mu,
                "removed_small_segments": r.removed_small,
                "fluence_error": r.fluence_error,
                "fluence_ratio": r.fluence_ratio,
            }
        )
    return SequencedPlan(machine=machine.name, sequencer=seq.name, segments=segs, per_beam=info)


def sequence(
    fluence: FluenceStage, beamlet_set: BeamletSet, geometry: PlanGeometry, planning: PlanningRequest, ctx: StageContext
) -> SequencedPlan:
    """Leaf sequencing of the optimal fluence onto the standard machine's MLC."""
    out = _sequence(np.asarray(fluence.weights), beamlet_set, get_machine(geometry.standard_machine), planning)
    ctx.progress(1, 1, f"{sum(len(s) for s in out.segments)} segments")
    return out


class ApertureStage(BaseModel):
    """Result of ``dao``: optimised segments per beam (MU = course fluence units)."""

    machine: str
    segments: list[list[Segment]]
    objective_start: float
    objective: float
    iterations: int
    seconds: float
    dropped_segments: int
    mu_refit: MuRefitDetail | None = Field(
        default=None, description="the exact MU refit that brought the plan's MU under planning.max_mu_factor"
    )
    mu_ratio: float = Field(default=0.0, description="normalised MU over the open-field MU (exact segment doses)")
    metrics: dict = Field(default_factory=dict)


def _evaluator(problem: OptimizationProblem, fluence: FluenceStage) -> ObjectiveEvaluator:
    ev = ObjectiveEvaluator(problem)
    if problem.hard:
        ev.rho = fluence.al_rho
        if fluence.al_lambdas:
            ev.lambdas = [np.asarray(v, dtype=float) for v in fluence.al_lambdas]
    return ev


def _dao(
    problem: OptimizationProblem,
    beamlet_set: BeamletSet,
    segments: list[list[Segment]],
    machine: MachineModel,
    req: PlanningRequest,
    fluence: FluenceStage,
    order: MedicalOrder,
) -> DAOResult:
    layouts = [layout_from_beamlets(bg) for bg in beamlet_set.grids()]
    limits = _planning_limits(machine, req)
    opts = DAOOptions(
        outer_rounds=req.dao_rounds,
        iterations_per_round=req.dao_iterations,
        min_mu_weight=limits.min_weight(order.prescription.fractions),
        min_area_cm2=limits.min_area_cm2,
        min_width_mm=limits.min_width_mm,
    )
    return optimize_apertures(
        problem,
        layouts,
        segments,
        machine,
        opts,
        evaluator=_evaluator(problem, fluence),
        mu_bound=problem.mu_bound,
    )


def _bound_mu(
    problem: OptimizationProblem,
    order: MedicalOrder,
    beamlet_set: BeamletSet,
    segments: list[list[Segment]],
    machine: MachineModel,
    req: PlanningRequest,
    fluence: FluenceStage,
) -> tuple[list[list[Segment]], MuRefitDetail | None, float]:
    """The apertures' MU under ``req.max_mu_factor`` x the open-field MU, judged on the exact segment
    doses after prescription normalisation: when DAO's penalty (on its aperture model) left the plan
    above it, the segment MU are refitted on the normalised dose with the bound enforced
    (:func:`rayrt.optimize.mu_refit.refit_segment_mu`; leaves fixed, each segment >= the minimum
    MU). Returns (segments, the refit or None, normalised MU / open-field MU)."""
    flat = [s for segs in segments for s in segs]
    open_course = len(segments) * fluence.open_field_weight
    bound = problem.mu_bound
    if not flat or open_course <= 0:
        return segments, None, 0.0
    grids = beamlet_set.grids()
    mu = np.array([s.mu for s in flat])
    nrows = problem.structure_rows.get(order.prescription.normalization.structure or order.prescription.target)
    f = 1.0
    if nrows is not None:  # the exact normalisation of the apertures' dose (one Dij product)
        w = np.concatenate([aperture_fluence(bg, segs, machine) for bg, segs in zip(grids, segments)])
        f = normalization_factor(problem.dij.dose(w, nrows).astype(np.float64), order)
    start = float(f * mu.sum() / open_course)
    if bound is None or bound.bound.excess(f * mu.sum()) <= 0:
        return segments, None, start
    a = problem_segment_doses(problem, grids, machine, segments)
    limits = _planning_limits(machine, req)
    aims = [o.dose_gy for o in problem.objectives]
    problem.set_target_aims(1.0)  # the refit's objective sees the normalised dose: the target at the prescription
    # the clinical goals the apertures meet are guarded (they must not be lost for the MU bound)
    wmax = max((o.weight for o in problem.objectives if not o.hard), default=1.0)
    guards = goal_guard_objectives(
        order,
        problem.structure_rows,
        f * (a @ mu.astype(np.float32)).astype(np.float64),
        float(problem.voxel_volume_cc or 0.0),
        GOAL_GUARD_MARGIN_GY,
        GOAL_GUARD_WEIGHT * wmax,
    )
    try:
        mu, keep, detail = refit_dropping_small(
            problem,
            a,
            mu,
            order,
            limits.min_weight(order.prescription.fractions),
            MU_REFIT_ITERATIONS,
            objectives=problem.objectives + guards,
            mu_bound=bound,
            beam_of=beam_of_segments(segments),
        )
    finally:
        for o, aim in zip(problem.objectives, aims):
            o.dose_gy = aim
    if mu.sum() / open_course >= start:  # the refit found no fewer MU: the apertures as DAO left them
        return segments, None, start
    return with_refitted_mu(segments, mu, keep), detail, float(mu.sum() / open_course)


def dao(
    problem: OptimizationProblem,
    order: MedicalOrder,
    beamlet_set: BeamletSet,
    sequenced: SequencedPlan,
    fluence: FluenceStage,
    planning: PlanningRequest,
    ctx: StageContext,
) -> ApertureStage:
    """Direct aperture optimisation of the sequenced segments (weights and leaf tips), on the
    fluence stage's target aims (also when the problem was rebuilt on resume)."""
    if fluence.objective_settings is not None and len(fluence.objective_settings) == len(problem.objectives):
        for o, (dose_gy, weight) in zip(problem.objectives, fluence.objective_settings):
            o.dose_gy, o.weight = dose_gy, weight
    problem.set_target_aims(fluence.target_aim_factor)
    m = get_machine(sequenced.machine)
    r = _dao(problem, beamlet_set, sequenced.segments, m, planning, fluence, order)
    plan = problem.goal_plan
    if plan is not None:  # goals the fluence met and the apertures lost: re-weighted, DAO again (twice at most)
        grids = beamlet_set.grids()

        def delivered(segments: list[list[Segment]]) -> np.ndarray:
            """Beamlet weights of the apertures as the plan's dose sees them (transmission, leaf gap, head scatter)."""
            return np.concatenate([aperture_fluence(bg, segs, m) for bg, segs in zip(grids, segments)])

        before = goal_standing(problem, plan, order, np.asarray(fluence.weights))
        now = goal_standing(problem, plan, order, delivered(r.segments))
        for _ in range(_DAO_REPAIRS):
            lost = reweight_lost_goals(problem, plan, before, now, planning.autoplan)
            if not lost:
                break
            ctx.progress(0, 1, f"apertures lost {', '.join(lost)}: re-weighted")
            again = _dao(problem, beamlet_set, r.segments, m, planning, fluence, order)
            standing = goal_standing(problem, plan, order, delivered(again.segments))
            if standing.key <= now.key:
                break
            again.iterations += r.iterations
            again.seconds += r.seconds
            again.objective_start = r.objective_start
            r, now = again, standing
    segments, refit, ratio = _bound_mu(problem, order, beamlet_set, r.segments, m, planning, fluence)
    ctx.progress(1, 1, f"objective {r.objective_start:.4g} -> {r.objective:.4g}, {ratio:.2f} x open-field MU")
    return ApertureStage(
        machine=m.name,
        segments=segments,
        mu_refit=refit,
        mu_ratio=ratio,
        objective_start=r.objective_start,
        objective=r.objective,
        iterations=r.iterations,
        seconds=r.seconds,
        dropped_segments=r.dropped_segments,
        metrics=weight_metrics(problem, np.asarray(r.weights)),
    )


def normalize(
    apertures: ApertureStage,
    fluence: FluenceStage,
    geometry: PlanGeometry,
    beamlet_set: BeamletSet,
    dij: DijResult,
    order: MedicalOrder,
    planning: PlanningRequest,
    study: Any,
    ctx: StageContext,
) -> StandardPlan:
    """Standard plan: MU per fraction normalised to the prescription, final dose through the Dij
    (aperture fluence with transmission, leaf gap and head scatter), the order's clinical goals
    judged on it (and, from automatic planning, what limited each missed goal)."""
    m = get_machine(apertures.machine)
    grids = beamlet_set.grids()
    plan = plan_from_apertures(
        apertures.segments,
        [b.gantry_deg for b in geometry.beams],
        geometry.isocenter_mm,
        m,
        order,
        patient_id=getattr(study, "patient_id", ""),
        frame_of_reference_uid=getattr(study, "frame_of_reference_uid", None),
    )
    plan, dose, f, raised = normalize_plan(
        plan,
        lambda p: final_dose(p, grids, dij.matrix, m),
        geometry.dose_masks,
        order,
        max(m.limits.min_mu_per_segment, planning.min_segment_mu),
    )
    dose3 = dose.reshape(geometry.dose_grid.shape).astype(np.float32)
    vcc = geometry.dose_grid.voxel_volume_cc
    goals = evaluate_goals(order.goals, dose3, geometry.dose_masks, vcc)
    report = fluence.goal_report
    limits = limiting_factors(report.terms, goals, report.conflicts) if report is not None else {}
    if order.goals and not all(g.met for g in goals):
        rho = geometry.density_volume().resample(geometry.dose_grid, order=1, fill=0.0).array
        air: dict[str, tuple[int, int]] = {}
        for g in order.goals:
            mask = np.asarray(geometry.dose_masks[g.structure], bool)
            air[g.structure] = (int(np.count_nonzero(mask & (rho < 0.05))), int(mask.sum()))
        for label, why in air_limits(order, goals, air, vcc).items():
            limits[label] = why if not limits.get(label) else f"{why}; {limits[label]}"
        if apertures.mu_refit is not None:  # the MU bound was binding: the refit traded dose for it
            bound = f"the MU limit ({planning.max_mu_factor:g}x the open-field MU) was binding"
            for e in goals:
                if not e.met:
                    limits[e.label] = bound if not limits.get(e.label) else f"{limits[e.label]}; {bound}"
    ctx.progress(1, 1, f"{plan.total_mu:.1f} MU/fraction")
    return StandardPlan(
        plan=plan,
        order=order,
        dose_grid=geometry.dose_grid,
        normalization_factor=f,
        raised_segments=raised,
        dvh=dvh_table(dose3, geometry.dose_masks, vcc, order),
        goals=goals,
        goal_limits=limits,
        goal_report=report,
        open_field_mu=len(geometry.beams) * fluence.open_field_weight / order.prescription.fractions,
        dose=dose3,
    )
