"""Automatic planning from clinical goals: goals in, an optimisation with no per-case tuning out.

The user writes clinical goals with priority ranks (:mod:`rayrt.domain.goals`) and the targets'
dose levels; this module turns them into objectives on helper structures
(:mod:`rayrt.optimize.helper_structures`) and solves them in rounds of iterative re-weighting
with a lexicographic safeguard (PLANNING.md, "Published ways to plan automatically"):

**Objectives built from the order** (doses in Gy; ``m`` = ``organ_aim_margin_pct`` % of Rx):

* each target at level L: squared under-dose below L and squared over-dose above
  ``target_hot_pct`` % of L on its optimisation region (SIB gap and skin crop removed);
  each coverage goal (``D<x> >= v``, ``min >= v``) a min-DVH / min-dose term at v + 2 % of L; each
  target hot-spot goal (``D<x> <= v``) a max-DVH term at v - 2 % of L;
* each organ goal on the organ minus the grown targets where it overlaps one (the voxels inside
  receive the target's dose whatever the plan does, and the report says so): ``max`` /
  ``D<x>cc <= u`` a squared over-dose above u - m (and, where the organ lies inside targets of a
  lower level, a squared over-dose there above u - 1 % of Rx: those hot spots are the targets');
  ``mean <= g`` a mean-dose term whose aim accounts for the voxels inside
  (``(g n - sum of their expected dose) / n_region``, never below half the goal); ``D<x> <= u``
  and ``V<y>Gy <= v`` max-DVH terms whose volume is corrected the same way, each with a convex
  companion (squared over-dose of the region above u: DVH terms alone have little gradient once the
  hottest voxels are exempt). A goal the overlap alone makes unreachable is reported as such and
  keeps a tenth of its weight. An organ goal of rank r starts at ``organ_weight * 2^(2 - r)``; the
  organ goals of rank up to ``hard_ranks`` (not unreachable) are also hard constraints
  ``hard_margin_pct`` % of Rx inside the goal (augmented Lagrangian, :mod:`rayrt.optimize.fmo`):
  the wish list's constraints, which the targets' terms cannot trade away;
* the normal-tissue fall-off over the external contour outside the targets.

**Rounds.** Each round is a warm-started fluence optimisation, then every goal is judged on the
dose scaled by the normalisation factor (what the normalised plan will receive), met only with a
margin of ``robust_pct`` % of Rx (what sequencing and DAO typically take back):

* an unmet goal's weights grow by ``weight_step`` (at most ``max_weight_factor`` x their start);
* a met organ goal's aim is lowered to its achieved value minus ``push_pct`` % of Rx: each organ
  is pushed as low as it goes;
* if a goal that was met is now missed, every change made in the previous round to goals of a
  lower rank is undone and those goals are frozen (a higher rank is never paid for by a lower one);
  while any goal of rank r is missed, the goals ranked below r are neither re-weighted nor pushed
  (they wait at their starting aims and weights);
* the prescription target's aims follow the normalisation (as in the expert path).

**Candidates.** Every round after the first proposes one re-weighting per
``candidate_steps`` entry s (pushes of s x ``push_pct``, weight steps of ``weight_step`` ^ s),
solves them independently (:mod:`rayrt.optimize.candidates`: one Ray task each in the service)
and goes on from the one with the best record.

The round with the best lexicographic record (most goals met at rank 1, then rank 2, ...; then the
smallest total shortfall; then the largest smallest margin) is kept. The report lists each goal's
region, aim, weight and, for a missed goal, what limited it.

**After the apertures.** Leaf sequencing and DAO can lose a goal the fluence met (the plan's dose
sees transmission, leaf gap and head scatter): the DAO stage (:mod:`rayrt.pipeline.optimization`)
judges the goals on the delivered aperture fluence, re-weights the lost ones
(:func:`reweight_lost_goals`) and runs DAO again from its segments, at most twice, keeping a pass
only when it meets the goals better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from rayrt.domain.errors import InputError
from rayrt.domain.goals import ClinicalGoal, GoalKind
from rayrt.domain.order import MedicalOrder, ObjectiveKind, ObjectiveSpec
from rayrt.domain.planning import AutoPlanOptions
from rayrt.optimize.candidates import CandidateSolve, SolveMap, solve_in_order
from rayrt.optimize.fmo import FluenceResult
from rayrt.optimize.goal_terms import AutoPlan, AutoPlanRound, GoalPlanReport, GoalTerm
from rayrt.optimize.helper_structures import HelperStructures, build_helpers
from rayrt.optimize.normalize import normalization_factor
from rayrt.optimize.objectives import Objective, make_objective
from rayrt.optimize.problem import OptimizationProblem
from rayrt.optimize.sparse import SubsetDij
from rayrt.qa.dvh import dose_at_volume
from rayrt.qa.goals import GoalEvaluation, evaluate_goal

__all__ = [
    "GoalTerm",
    "AutoPlan",
    "AutoPlanRound",
    "GoalPlanReport",
    "build_goal_problem",
    "autoplan_fluence",
    "goal_conflicts",
    "is_goal_order",
    "limiting_factors",
    "goal_objectives",
    "air_limits",
    "Standing",
    "goal_standing",
    "reweight_lost_goals",
]

#: the largest factor the normalisation-aware re-aiming raises the target's aims by
_MAX_AIM_FACTOR = 1.25

#: share of its weight an organ goal keeps when the overlap with the targets makes it unreachable
_UNREACHABLE_WEIGHT = 0.1


def is_goal_order(order: MedicalOrder) -> bool:
    """True when the order is planned from its goals (goals and no expert objectives)."""
    return bool(order.goals) and not order.objectives


# ----------------------------------------------------------------------------- conflicts
def _is_max_type(g: ClinicalGoal) -> bool:
    return g.op == "<=" and g.kind in (GoalKind.max, GoalKind.dose_at_volume_cc, GoalKind.dose_at_volume_pct)


def goal_conflicts(order: MedicalOrder, masks: dict[str, np.ndarray], voxel_cc: float, targets: set[str]) -> list[str]:
    """Pairs of goals the geometry makes contradictory: a target's minimum (``D<x> >= v`` or
    ``min >= v``) above an organ's maximum (``max``/``D<x>cc``/``D<x> <= u``, u < v) where the organ
    overlaps the target by more than the volume either goal lets go. Goals of equal rank raise an
    :class:`InputError` (422, field ``goals``): no plan can honour both and neither outranks the
    other. Otherwise the lower-ranked goal is reported as unreachable."""
    out: list[str] = []
    for t in order.goals:
        if t.structure not in targets or t.op != ">=" or t.kind not in (GoalKind.dose_at_volume_pct, GoalKind.min):
            continue
        tm = np.asarray(masks[t.structure], bool)
        spare_t = (100.0 - (t.parameter or 100.0)) / 100.0 * tm.sum() if t.kind is GoalKind.dose_at_volume_pct else 0
        for o in order.goals:
            if o.structure in targets or not _is_max_type(o) or o.value >= t.value:
                continue
            om = np.asarray(masks[o.structure], bool)
            overlap = int(np.count_nonzero(tm & om))
            if o.kind is GoalKind.dose_at_volume_cc:
                spare_o = (o.parameter or 0.0) / voxel_cc
            elif o.kind is GoalKind.dose_at_volume_pct:
                spare_o = (o.parameter or 0.0) / 100.0 * om.sum()
            else:
                spare_o = 0.0
            if overlap <= max(spare_t, spare_o):
                continue
            msg = (
                f"{t.label()} (rank {t.rank}) and {o.label()} (rank {o.rank}) contradict: "
                f"{overlap * voxel_cc:.1f} cc of {o.structure} lie inside {t.structure}"
            )
            if t.rank == o.rank:
                raise InputError(
                    f"contradictory goals: {msg}; give one of them a higher rank (1 = most important) "
                    "or change a value",
                    kind="order",
                    field="goals",
                    status=422,
                )
            lower = t if t.rank > o.rank else o
            out.append(f"{msg}; the lower-ranked {lower.label()} cannot be met")
    return out


# ----------------------------------------------------------------------------- problem
@dataclass
class _Spec:
    structure: str
    kind: str
    mask: np.ndarray
    dose_gy: float
    weight: float
    volume_pct: float | None = None
    reference: np.ndarray | None = None  # per-voxel limit over the grid (falloff)
    goal_gy: float | None = None
    hard: bool = False


def _target_goal_specs(g: ClinicalGoal, region: np.ndarray, level: float, opts: AutoPlanOptions) -> _Spec | None:
    """The term of a goal on a target (coverage or hot spot)."""
    nudge = 0.02 * level
    if g.op == ">=":
        w = opts.coverage_weight
        if g.kind is GoalKind.dose_at_volume_pct:
            return _Spec(g.structure, "min_dvh", region, g.value + nudge, w, g.parameter, goal_gy=g.value + nudge)
        if g.kind in (GoalKind.min, GoalKind.dose_at_volume_cc):
            return _Spec(g.structure, "min_dose", region, g.value + nudge, w, goal_gy=g.value + nudge)
        if g.kind is GoalKind.mean:
            return _Spec(g.structure, "squared_underdose", region, g.value + nudge, w, goal_gy=g.value + nudge)
        return None
    w = opts.hot_weight
    if g.kind is GoalKind.dose_at_volume_pct:
        return _Spec(g.structure, "max_dvh", region, max(g.value - nudge, 0.0), w, g.parameter, goal_gy=g.value)
    if g.kind in (GoalKind.max, GoalKind.dose_at_volume_cc):
        return _Spec(g.structure, "max_dose", region, max(g.value - nudge, 0.0), w, goal_gy=g.value)
    if g.kind is GoalKind.mean:
        return _Spec(g.structure, "mean_dose", region, max(g.value - nudge, 0.0), w, goal_gy=g.value)
    return None


def _organ_goal_spec(
    g: ClinicalGoal,
    mask: np.ndarray,
    helpers: HelperStructures,
    margin_gy: float,
    voxel_cc: float,
    opts: AutoPlanOptions,
) -> tuple[_Spec | None, str, str]:
    """(term, region in words, why unreachable or '') of a goal on an organ."""
    organ = np.asarray(mask, bool)
    region = helpers.organ_region(g.structure, organ)
    inside = organ & ~region
    n, n_in, n_r = int(organ.sum()), int(inside.sum()), int(region.sum())
    where = f"{g.structure} minus the targets + gap ({n_in * voxel_cc:.1f} of {n * voxel_cc:.1f} cc removed)"
    if n_in == 0:
        where = g.structure
    w = opts.organ_weight
    # expected dose of the voxels inside the grown targets: their target's level, else the fall-off limit
    expected = np.where(helpers.level_map_gy > 0, helpers.level_map_gy, helpers.falloff_limit_gy)[inside]
    if g.op == ">=":  # a minimum on a non-target structure: push it up on the whole structure
        kind = "squared_underdose" if g.kind is GoalKind.mean else "min_dose"
        return _Spec(g.structure, kind, organ, g.value + margin_gy, w, goal_gy=g.value), g.structure, ""
    if n_r == 0:
        why = f"{g.structure} lies entirely within the targets (+ gap)"
        return _Spec(g.structure, "mean_dose", organ, 0.0, w, goal_gy=g.value), g.structure, why
    if g.kind is GoalKind.mean:
        aim = (g.value * n - float(expected.sum())) / n_r
        floor = 0.5 * g.value  # never asked below half the goal: a mean term far below reach outweighs the targets
        if aim <= 0:  # unreachable: the rest of the organ kept low, without outweighing the targets
            why = (
                f"{n_in * voxel_cc:.1f} cc of {g.structure} near the targets alone bring its mean above {g.value:g} Gy"
            )
            spec = _Spec(g.structure, "mean_dose", region, floor, w * _UNREACHABLE_WEIGHT, goal_gy=g.value)
            return spec, where, why
        return _Spec(g.structure, "mean_dose", region, max(aim - margin_gy, floor), w, goal_gy=g.value), where, ""
    if g.kind in (GoalKind.max, GoalKind.dose_at_volume_cc):
        why = ""
        if n_in and float(expected.max()) > g.value:
            why = f"{g.structure} reaches into a target above {g.value:g} Gy"
        return _Spec(g.structure, "max_dose", region, max(g.value - margin_gy, 0.0), w, goal_gy=g.value), where, why
    # D<x> <= u or V<y>Gy <= v: at most x % of the organ above u
    if g.kind is GoalKind.dose_at_volume_pct:
        u, x_pct = g.value, float(g.parameter or 0.0)
    else:
        u = float(g.parameter or 0.0)
        x_pct = g.value if g.unit != "cc" else g.value / (n * voxel_cc) * 100.0
    hot_in = int(np.count_nonzero(expected > u))
    x_r = (x_pct / 100.0 * n - hot_in) / n_r * 100.0
    if x_r <= 0:
        why = f"{hot_in * voxel_cc:.1f} cc of {g.structure} inside the targets already exceed {u:g} Gy"
        return _Spec(g.structure, "max_dose", region, u, w * _UNREACHABLE_WEIGHT, goal_gy=u), where, why
    return _Spec(g.structure, "max_dvh", region, max(u - margin_gy, 0.0), w, min(x_r, 100.0), goal_gy=u), where, ""


def build_goal_problem(
    order: MedicalOrder,
    masks: dict[str, np.ndarray],
    dij: sp.spmatrix,
    *,
    spacing_zyx_mm: tuple[float, float, float],
    voxel_volume_cc: float,
    external: np.ndarray | None,
    options: AutoPlanOptions,
    organ_aim_margin_pct: float,
    beam_slices: list[slice] | None = None,
) -> tuple[OptimizationProblem, AutoPlan]:
    """The optimisation problem of a goal order (see the module docstring) on the Dij rows it needs."""
    order.check_structures(masks.keys())
    levels = order.target_levels()
    targets = set(levels)
    for g in order.goals:
        if g.op == ">=" and g.is_dose and g.structure not in targets and g.kind is not GoalKind.mean:
            raise InputError(
                f"goal {g.label()}: a coverage goal on a structure without a dose level; add "
                f"'{g.structure}' to the order's dose_levels (Gy) or make it a target",
                kind="order",
                field="goals",
                status=422,
            )
    shape = np.asarray(masks[order.prescription.target]).shape
    for name in order.structure_names():
        if not np.asarray(masks[name]).any():
            raise InputError(
                f"structure '{name}' has no voxel on the dose grid; use a finer dose_grid_mm or check the contour",
                kind="input",
                field=name,
            )
    conflicts = goal_conflicts(order, masks, voxel_volume_cc, targets)
    helpers = build_helpers(
        levels,
        masks,
        spacing_zyx_mm,
        external,
        sib_gap_mm=options.sib_gap_mm,
        organ_gap_mm=options.organ_gap_mm,
        skin_crop_mm=options.skin_crop_mm,
        falloff_end_frac=options.falloff_end_pct / 100.0,
        falloff_length_mm=options.falloff_length_mm,
    )
    rx = order.prescription.total_dose_gy
    margin_gy = organ_aim_margin_pct / 100.0 * rx
    specs: list[_Spec] = []
    owners: list[int | None] = []  # goal index of each spec (None: a target's level term or the fall-off)
    regions: dict[int, str] = {}
    unreachable: dict[int, str] = {}
    for t, level in helpers.levels.items():
        reg = helpers.optimise[t]
        specs.append(_Spec(t, "squared_underdose", reg, level, options.coverage_weight, goal_gy=level))
        owners.append(None)
        if options.hot_weight > 0:
            hot = level * options.target_hot_pct / 100.0
            specs.append(_Spec(t, "squared_overdose", reg, hot, options.hot_weight, goal_gy=hot))
            owners.append(None)
    for i, g in enumerate(order.goals):
        if g.structure in targets:
            reg = helpers.coverage[g.structure] if g.op == ">=" else helpers.exclusive[g.structure]
            spec = _target_goal_specs(g, reg, helpers.levels[g.structure], options)
            regions[i] = f"{g.structure} minus higher-level targets + gap" if g.op == ">=" else g.structure
        else:
            spec, regions[i], why = _organ_goal_spec(
                g, masks[g.structure], helpers, margin_gy, voxel_volume_cc, options
            )
            if why:
                unreachable[i] = why
        if spec is not None and spec.mask.any():
            spec.weight *= 2.0 ** (2 - g.rank)  # rank 1 starts at twice the weight of rank 2, rank 3 at half
            specs.append(spec)
            owners.append(i)
            if spec.kind == "max_dvh":  # a convex companion: no voxel of the region above the goal
                specs.append(
                    _Spec(spec.structure, "squared_overdose", spec.mask, spec.goal_gy or spec.dose_gy, spec.weight)
                )
                owners.append(i)
            inside = np.asarray(masks[g.structure], bool) & (helpers.level_map_gy > 0)
            if (
                g.structure not in targets
                and g.op == "<="
                and g.kind in (GoalKind.max, GoalKind.dose_at_volume_cc)
                and inside.any()
                and float(helpers.level_map_gy[inside].max()) < g.value
            ):  # the organ's part inside targets below its limit: its hot spots are the targets' to avoid
                specs.append(_Spec(g.structure, "max_dose", inside, g.value - 0.01 * rx, spec.weight, goal_gy=g.value))
                owners.append(i)
            if (
                g.rank <= options.hard_ranks
                and g.structure not in targets
                and g.op == "<="
                and i not in unreachable
                and spec.kind in ("max_dose", "max_dvh", "mean_dose")
            ):  # the highest ranks are constraints, a little inside the goal
                limit = (spec.goal_gy if spec.goal_gy is not None else g.value) - options.hard_margin_pct / 100.0 * rx
                specs.append(
                    _Spec(spec.structure, spec.kind, spec.mask, max(limit, 0.0), 1.0, spec.volume_pct, hard=True)
                )
                owners.append(i)
    if options.falloff_weight > 0 and helpers.falloff_region.any():
        specs.append(
            _Spec(
                "normal-tissue fall-off",
                "falloff",
                helpers.falloff_region,
                0.0,
                options.falloff_weight,
                reference=helpers.falloff_limit_gy,
            )
        )
        owners.append(None)

    eval_names = sorted(
        {g.structure for g in order.goals}
        | targets
        | {order.prescription.normalization.structure or order.prescription.target}
    )
    idx_eval = {n: np.flatnonzero(np.asarray(masks[n], bool).ravel()) for n in eval_names}
    idx_spec = [np.flatnonzero(s.mask.ravel()) for s in specs]
    all_rows = np.unique(np.concatenate([*idx_eval.values(), *idx_spec]))
    if all_rows.size and all_rows[-1] >= dij.shape[0]:
        raise InputError(f"masks have more voxels than the Dij's {dij.shape[0]} rows", kind="input")
    sub = SubsetDij(dij, all_rows)
    objectives: list[Objective] = []
    obj_of_spec: list[int] = []
    for s, ix in zip(specs, idx_spec):
        ref = None if s.reference is None else np.asarray(s.reference, dtype=np.float64).ravel()[ix]
        objectives.append(
            make_objective(
                s.kind,
                s.structure,
                np.searchsorted(all_rows, ix),
                s.dose_gy,
                weight=s.weight,
                volume_pct=s.volume_pct,
                reference_gy=ref,
                goal_gy=s.goal_gy,
                hard=s.hard,
            )
        )
        obj_of_spec.append(len(objectives) - 1)
    terms = []
    for i, g in enumerate(order.goals):
        objs = [obj_of_spec[k] for k, o in enumerate(owners) if o == i]
        role = ("coverage" if g.op == ">=" else "target_hot") if g.structure in targets else "organ"
        terms.append(
            GoalTerm(
                goal=g,
                role=role,
                objectives=objs,
                region=regions.get(i, g.structure),
                start_weights=[objectives[k].weight for k in objs],
                start_aims=[objectives[k].dose_gy for k in objs],
                unreachable=unreachable.get(i, ""),
            )
        )
    norm = order.prescription.normalization
    problem = OptimizationProblem(
        dij=sub,
        objectives=objectives,
        structure_rows={n: np.searchsorted(all_rows, ix) for n, ix in idx_eval.items()},
        prescription_gy=rx,
        target=order.prescription.target,
        normalization_metric=norm.metric,
        normalization_structure=norm.structure or order.prescription.target,
        normalization_value_pct=norm.value_pct,
        beam_slices=beam_slices or [slice(0, dij.shape[1])],
        grid_shape=shape,
        voxel_volume_cc=voxel_volume_cc,
    )
    notes = list(helpers.notes)
    if len(levels) > 1:
        notes.append(
            "targets at several dose levels: a voxel in two targets belongs to the higher level; lower levels are "
            f"optimised {options.sib_gap_mm:g} mm away from higher ones and judged on their whole volume"
        )
    notes.append(
        f"organ goals act on each organ minus the targets grown by {options.organ_gap_mm:g} mm; targets are "
        f"optimised {options.skin_crop_mm:g} mm inside the external contour; goals are judged on whole structures"
    )
    problem.goal_plan = AutoPlan(terms=terms, voxel_cc=voxel_volume_cc, conflicts=conflicts, notes=notes)
    return problem, problem.goal_plan


# ----------------------------------------------------------------------------- rounds
def _judge(problem: OptimizationProblem, plan: AutoPlan, d: np.ndarray, robust_pct: float) -> list[GoalEvaluation]:
    """Every goal on the fluence dose, met only with a margin that survives leaf sequencing, DAO
    and the normalisation: ``robust_pct`` % of the prescription for a dose goal, that many
    percentage points for a volume goal."""
    out = []
    for t in plan.terms:
        e = evaluate_goal(t.goal, d[problem.structure_rows[t.goal.structure]], plan.voxel_cc)
        need = robust_pct / 100.0 * (problem.prescription_gy if t.goal.is_dose else 100.0)
        if t.goal.is_dose is False and t.goal.unit == "cc":
            need = 0.0
        out.append(e.model_copy(update={"met": e.met and e.margin >= need}))
    return out


def _record(evals: list[GoalEvaluation]) -> tuple[tuple[int, ...], float, float]:
    """Lexicographic key (goals met at rank 1, 2, ...), the total relative shortfall of the missed
    goals and the smallest relative margin of the met ones (the plan's robustness to sequencing)."""
    top = max((e.rank for e in evals), default=1)
    met = tuple(sum(1 for e in evals if e.rank == r and e.met) for r in range(1, top + 1))
    shortfall = sum(-e.margin / max(abs(e.goal), 1.0) for e in evals if not e.met)
    slack = min((e.margin / max(abs(e.goal), 1.0) for e in evals if e.met), default=0.0)
    return met, shortfall, slack


def _term_metric(o: Objective, d: np.ndarray) -> float | None:
    """The value an organ term's aim is compared with: max, mean or D_V of its voxels (Gy)."""
    v = d[o.voxels]
    if v.size == 0:
        return None
    if o.kind == "max_dose":
        return float(v.max())
    if o.kind == "mean_dose":
        return float(v.mean())
    if o.kind == "max_dvh" and o.volume_pct is not None:
        return float(dose_at_volume(v, o.volume_pct))
    return None


def _adapt(
    problem: OptimizationProblem,
    plan: AutoPlan,
    evals: list[GoalEvaluation],
    previous: list[GoalEvaluation] | None,
    d: np.ndarray,
    opts: AutoPlanOptions,
    step: float = 1.0,
) -> None:
    """One round's changes (``step``: the candidate's scale of the push and of the weight step).
    When a goal that was met is now missed, the previous round's pushes are undone and every
    goal's push is halved (twice: pushing stops), and the weight increases of goals ranked below
    the lost one are undone and frozen. While a goal of rank r is missed, goals ranked below r
    stay at their starting aims and weights. Then the unmet goals are re-weighted and the met
    organ goals pushed lower."""
    if previous is not None:
        lost = [e for e, p in zip(evals, previous) if p.met and not e.met]
        if lost:
            worst = min(lost, key=lambda e: e.rank)
            for t in plan.terms:
                if not t.last_change:
                    continue
                if t.pushed or (t.goal.rank > worst.rank and not t.frozen):
                    for k, dose_gy, weight in t.last_change:
                        problem.objectives[k].dose_gy, problem.objectives[k].weight = dose_gy, weight
                if t.pushed:
                    t.push_scale *= 0.5
                elif t.goal.rank > worst.rank:
                    t.frozen, t.frozen_by = True, worst.label
    unmet_ranks = [e.rank for e in evals if not e.met]
    first_unmet = min(unmet_ranks) if unmet_ranks else None
    for t, e in zip(plan.terms, evals):
        t.last_change = [(k, problem.objectives[k].dose_gy, problem.objectives[k].weight) for k in t.objectives]
        t.pushed = False
        if first_unmet is not None and t.goal.rank > first_unmet:
            # a higher rank is still missed: this goal waits at its starting aims and weights
            for k, aim, w0 in zip(t.objectives, t.start_aims, t.start_weights):
                problem.objectives[k].dose_gy, problem.objectives[k].weight = aim, w0
            continue
        if t.frozen:
            t.last_change = []
            continue
        if not e.met:
            for k, w0 in zip(t.objectives, t.start_weights):
                o = problem.objectives[k]
                o.weight = min(o.weight * opts.weight_step**step, w0 * opts.max_weight_factor)
        elif t.role == "organ" and t.push_scale > 0.3:
            push = t.push_scale * step * opts.push_pct / 100.0 * problem.prescription_gy
            for k in t.objectives:
                o = problem.objectives[k]
                m = None if o.hard else _term_metric(o, d)
                if m is not None and push > 0:
                    o.dose_gy = max(0.0, min(o.dose_gy, m - push))
                    t.pushed = True


@dataclass
class Standing:
    """How a dose meets the goals: the lexicographic key (goals met per rank, minus the total
    relative shortfall, the smallest relative margin), each goal's evaluation, the dose (Gy, on the
    problem's rows, before normalisation) and the normalisation factor the evaluations include."""

    key: tuple
    evals: list[GoalEvaluation]
    dose: np.ndarray
    factor: float


def goal_standing(
    problem: OptimizationProblem, plan: AutoPlan, order: MedicalOrder, w: np.ndarray, robust_pct: float = 0.0
) -> Standing:
    """The goals judged on the dose of beamlet weights ``w`` scaled as the normalisation will scale it."""
    nstruct = problem.normalization_structure or problem.target
    d = problem.dose(np.asarray(w, dtype=np.float64))
    f = normalization_factor(d[problem.structure_rows[nstruct]], order)
    evals = _judge(problem, plan, d * f, robust_pct)
    met, shortfall, slack = _record(evals)
    return Standing((met, -round(shortfall, 4), slack), evals, d, f)


def reweight_lost_goals(
    problem: OptimizationProblem, plan: AutoPlan, before: Standing, after: Standing, opts: AutoPlanOptions
) -> list[str]:
    """The goals ``before`` met and ``after`` misses (e.g. lost by leaf sequencing and DAO): their
    objectives' weights grow by ``weight_step`` squared (at most ``max_weight_factor`` x their
    start). Returns their labels."""
    lost = []
    for t, b, a in zip(plan.terms, before.evals, after.evals):
        if b.met and not a.met:
            lost.append(t.goal.label())
            for k, w0 in zip(t.objectives, t.start_weights):
                o = problem.objectives[k]
                o.weight = min(o.weight * opts.weight_step**2, w0 * opts.max_weight_factor)
    return lost


def _term_states(plan: AutoPlan) -> list[tuple]:
    """What the rounds changed in each goal term (restored with :func:`_set_term_states`)."""
    return [(t.frozen, t.pushed, t.push_scale, t.frozen_by, list(t.last_change)) for t in plan.terms]


def _set_term_states(plan: AutoPlan, states: list[tuple]) -> None:
    for t, (frozen, pushed, push_scale, frozen_by, last_change) in zip(plan.terms, states):
        t.frozen, t.pushed, t.push_scale, t.frozen_by, t.last_change = (
            frozen,
            pushed,
            push_scale,
            frozen_by,
            last_change,
        )


def _settings(problem: OptimizationProblem) -> tuple[tuple[float, float], ...]:
    return tuple((o.dose_gy, o.weight) for o in problem.objectives)


def _set_settings(problem: OptimizationProblem, settings: tuple[tuple[float, float], ...]) -> None:
    for o, (dose_gy, weight) in zip(problem.objectives, settings):
        o.dose_gy, o.weight = dose_gy, weight


def autoplan_fluence(
    problem: OptimizationProblem,
    plan: AutoPlan,
    order: MedicalOrder,
    opts: AutoPlanOptions,
    progress=None,
    solve: SolveMap | None = None,
    threads: int = 0,
) -> tuple[FluenceResult, float, GoalPlanReport]:
    """The rounds (module docstring). The first round solves the problem as built; every later
    round proposes one candidate re-weighting per ``opts.candidate_steps`` from the round kept
    before it, solves them all through ``solve`` (:mod:`rayrt.optimize.candidates`: one after the
    other here by default, one Ray task each in the service, ``threads`` numba threads each) and
    goes on from the candidate with the best lexicographic record. Returns the chosen round's
    fluence result, the target aim factor it ran with, and the report. The problem is left with the
    chosen round's aims and weights."""
    solve = solve or solve_in_order(problem)
    factor = 1.0
    w0: np.ndarray | None = None
    previous: list[GoalEvaluation] | None = None
    report = GoalPlanReport(conflicts=list(plan.conflicts), notes=list(plan.notes))
    best: tuple | None = None
    proposals: list[tuple[tuple[tuple[float, float], ...], list[tuple]]] = [(_settings(problem), _term_states(plan))]
    for r in range(opts.rounds):
        results = solve([CandidateSolve(p[0], w0, opts.iterations_per_round, threads) for p in proposals])
        judged = [
            (goal_standing(problem, plan, order, fr.w, opts.robust_pct), settings, terms, fr)
            for (settings, terms), fr in zip(proposals, results)
        ]
        pick = max(range(len(judged)), key=lambda i: judged[i][0].key)
        standing, settings, terms, fr = judged[pick]
        key, evals, d, f = standing.key, standing.evals, standing.dose, standing.factor
        _set_settings(problem, settings)
        _set_term_states(plan, terms)
        report.rounds.append(
            AutoPlanRound(
                round=r + 1,
                met_per_rank={i + 1: n for i, n in enumerate(key[0])},
                goals_met=sum(key[0]),
                shortfall=-key[1],
                normalization_factor=f,
                objective=fr.objective,
                candidate=pick + 1,
                candidates_met=[sum(j[0].key[0]) for j in judged],
            )
        )
        if best is None or key > best[0]:
            best = (key, fr, factor, settings, r + 1)
        if progress is not None:
            progress(r + 1, opts.rounds, f"round {r + 1}: {sum(key[0])}/{len(evals)} goals met")
        if r == opts.rounds - 1:
            break
        step = float(np.clip(f, 1.0, _MAX_AIM_FACTOR / factor))
        factor *= step
        w0 = fr.w * step
        start_settings, start_terms = settings, _term_states(plan)
        proposals = []
        for s in opts.candidate_steps:
            _set_settings(problem, start_settings)
            _set_term_states(plan, [(a, b, c, e, list(g)) for a, b, c, e, g in start_terms])
            _adapt(problem, plan, evals, previous, d, opts, step=s)
            problem.set_target_aims(factor)
            proposals.append((_settings(problem), _term_states(plan)))
        previous = evals
    assert best is not None
    _, fr, factor, settings, chosen = best
    _set_settings(problem, settings)
    report.chosen_round = chosen
    report.terms = [
        {
            "goal": t.goal.label(),
            "rank": t.goal.rank,
            "role": t.role,
            "region": t.region,
            "aims_gy": [round(problem.objectives[k].dose_gy, 3) for k in t.objectives],
            "weights": [round(problem.objectives[k].weight, 3) for k in t.objectives],
            "frozen_by": t.frozen_by,
            "unreachable": t.unreachable,
        }
        for t in plan.terms
    ]
    return fr, factor, report


def goal_objectives(order: MedicalOrder, options: AutoPlanOptions) -> list[ObjectiveSpec]:
    """The goals of an order as a plain objective list on whole structures (no helper structures):
    each target's level terms (squared under-dose at its level, squared over-dose above
    ``target_hot_pct`` %), then one term per goal at its value (min/max DVH, min/max dose, mean).
    What a plan conversion (:mod:`rayrt.convert`) optimises beside its mimicking terms, so that a
    converted plan keeps every dose level of a goal order."""
    out: list[ObjectiveSpec] = []
    for t, level in order.target_levels().items():
        out.append(
            ObjectiveSpec(
                structure=t, kind=ObjectiveKind.squared_underdose, dose_gy=level, priority=options.coverage_weight
            )
        )
        out.append(
            ObjectiveSpec(
                structure=t,
                kind=ObjectiveKind.squared_overdose,
                dose_gy=level * options.target_hot_pct / 100.0,
                priority=max(options.hot_weight, 1e-6),
            )
        )
    for g in order.goals:
        w = (options.coverage_weight if g.op == ">=" else options.organ_weight) * 2.0 ** (2 - g.rank)
        lower = g.op == ">="
        if g.kind is GoalKind.dose_at_volume_pct:
            kind = ObjectiveKind.min_dvh if lower else ObjectiveKind.max_dvh
            out.append(
                ObjectiveSpec(structure=g.structure, kind=kind, dose_gy=g.value, volume_pct=g.parameter, priority=w)
            )
        elif g.kind in (GoalKind.max, GoalKind.min, GoalKind.dose_at_volume_cc):
            kind = ObjectiveKind.min_dose if lower else ObjectiveKind.max_dose
            out.append(ObjectiveSpec(structure=g.structure, kind=kind, dose_gy=g.value, priority=w))
        elif g.kind is GoalKind.mean and not lower:
            out.append(ObjectiveSpec(structure=g.structure, kind=ObjectiveKind.mean_dose, dose_gy=g.value, priority=w))
    return out


def limiting_factors(plan_terms: list[dict], evals: list[GoalEvaluation], conflicts: list[str]) -> dict[str, str]:
    """For each missed goal (by label), what limited it, in words: a contradiction with another
    goal, an overlap that makes it unreachable, a higher-ranked goal it was traded against, or the
    goals of equal or higher rank at their limits."""
    out: dict[str, str] = {}
    tight = [e for e in evals if e.met and abs(e.margin) <= 0.03 * max(abs(e.goal), 1.0)]
    for t, e in zip(plan_terms, evals):
        if e.met:
            continue
        reasons = [c for c in conflicts if e.label in c]
        if t.get("unreachable"):
            reasons.append(t["unreachable"])
        if t.get("frozen_by"):
            reasons.append(f"lowering it further lost the higher-ranked {t['frozen_by']}")
        if not reasons:
            held = [x.label for x in tight if x.rank <= e.rank and x.label != e.label]
            held += [x.label for x in evals if not x.met and x.rank < e.rank]
            reasons.append(
                "traded against " + ", ".join(held) if held else "the fluence could not reach it within the rounds"
            )
        out[e.label] = "; ".join(reasons)
    return out


def air_limits(
    order: MedicalOrder, evals: list[GoalEvaluation], air: dict[str, tuple[int, int]], voxel_cc: float
) -> dict[str, str]:
    """Missed coverage goals explained by target voxels outside the patient's tissue: ``air`` maps
    a structure to (its dose-grid voxels whose relative electron density is below 0.05, all its
    voxels); those voxels receive no dose from the pencil-beam engine. A ``D<x> >= v`` goal lets
    (100 - x) % go."""
    out: dict[str, str] = {}
    for g, e in zip(order.goals, evals):
        n_air, n_all = air.get(g.structure, (0, 0))
        if e.met or g.op != ">=" or not n_air:
            continue
        spare = (100.0 - (g.parameter or 100.0)) if g.kind is GoalKind.dose_at_volume_pct else 0.0
        share = n_air / max(n_all, 1) * 100.0
        if share > spare:
            out[e.label] = (
                f"{n_air * voxel_cc:.1f} cc ({share:.1f} %) of {g.structure} lie in air (relative electron density "
                f"< 0.05) on the dose grid and receive no dose; the goal lets {spare:g} % go"
            )
    return out
