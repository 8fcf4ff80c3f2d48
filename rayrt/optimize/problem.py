"""The optimisation problem: the medical order translated into objectives on a row-subset Dij.

``build_problem(order, masks, dij)`` keeps only the Dij rows (voxels) that carry an objective or
the normalisation, once, as float32 CSR (:class:`rayrt.optimize.sparse.SubsetDij`), and turns each
:class:`rayrt.domain.order.ObjectiveSpec` into a registered :class:`rayrt.optimize.objectives.Objective`
whose ``voxels`` index that subset.

Overlaps: a voxel in several structures is kept in the terms of its highest-priority structure
only (the matRad / pyRadPlan convention): targets first (the prescription target, then other
structures with target-like objectives), then organs from the smallest to the largest (the
external contour last). Hard constraints always see every voxel of their structure.
Linear voxel indices are C-order indices of the dose-grid array ``[k, j, i]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from rayrt.domain.errors import InputError
from rayrt.domain.order import MedicalOrder, ObjectiveKind, ObjectiveSpec
from rayrt.optimize.goal_terms import AutoPlan
from rayrt.optimize.mu_bound import NormalisedMU
from rayrt.optimize.objectives import Objective, make_objective
from rayrt.optimize.regularize import FluenceRegularizer
from rayrt.optimize.sparse import SubsetDij

__all__ = ["OptimizationProblem", "build_problem", "target_like", "target_dose_level", "organ_aims"]

_TARGET_KINDS = {
    ObjectiveKind.min_dose,
    ObjectiveKind.min_dvh,
    ObjectiveKind.squared_underdose,
    ObjectiveKind.squared_deviation,
}


def target_dose_level(order: MedicalOrder, target: str) -> float:
    """The dose level (Gy) the order gives a target: the prescription dose for the prescription
    target, else the highest dose of its minimum-dose-type and deviation objectives."""
    if target == order.prescription.target:
        return order.prescription.total_dose_gy
    if target in order.dose_levels:
        return order.dose_levels[target]
    levels = [o.dose_gy for o in order.objectives if o.structure == target and o.kind in _TARGET_KINDS and not o.hard]
    return max(levels, default=0.0)


def target_like(order: MedicalOrder) -> list[str]:
    """Structures treated as targets: the prescription target, the order's other dose levels
    (highest first), then any structure with under-dose-type objectives or coverage goals."""
    out = list(order.target_levels())
    for name in [o.structure for o in order.objectives if o.kind in _TARGET_KINDS] + [
        g.structure for g in order.goals if g.op == ">=" and g.is_dose
    ]:
        if name not in out:
            out.append(name)
    return out


#: the normalisation target's terms whose aim follows the normalisation (:meth:`OptimizationProblem.set_target_aims`)
_NORMALISATION_AIM_KINDS = frozenset({"squared_deviation", "min_dvh", "squared_underdose", "min_dose"})

#: organ terms that bound the dose from above: aimed below the clinical goal (:func:`organ_aims`)
_UPPER_KINDS = frozenset(
    {
        ObjectiveKind.max_dvh,
        ObjectiveKind.max_dose,
        ObjectiveKind.squared_overdose,
        ObjectiveKind.mean_dose,
        ObjectiveKind.geud,
    }
)
#: kinds that state a clinical goal of an organ (a dose-volume limit a plan meets or misses)
_GOAL_KINDS = frozenset({ObjectiveKind.max_dvh, ObjectiveKind.max_dose, ObjectiveKind.mean_dose})


def organ_aims(specs: list[ObjectiveSpec], order: MedicalOrder, margin_pct: float) -> list[ObjectiveSpec]:
    """The order's objectives with every soft upper-bound term of an organ aimed ``margin_pct`` %
    of the prescription below its clinical dose (never below 0 Gy).

    An optimiser that aims exactly at a goal meets it only half of the time: sequencing, direct
    aperture optimisation and the final normalisation each move the dose by a few per cent. A
    clinic's planner therefore sets the internal objectives below the goals. The rule applies to
    the max-DVH, max-dose, squared-over-dose, mean-dose and gEUD (a >= 1) terms of every
    structure that is not a target and has at least one clinical goal (max DVH, max dose or mean
    dose) in the order; targets, hard constraints and structures without a goal (e.g. a body
    fall-off term) keep their doses. The clinical doses stay the goals that QA and the export judge."""
    if margin_pct <= 0:
        return list(specs)
    rx = order.prescription.total_dose_gy
    targets = set(target_like(order))
    with_goal = {s.structure for s in specs if s.kind in _GOAL_KINDS and not s.hard}
    out = []
    for s in specs:
        sparing = s.kind in _UPPER_KINDS and not (s.kind is ObjectiveKind.geud and (s.a or 0.0) < 1.0)
        if sparing and not s.hard and s.structure not in targets and s.structure in with_goal:
            s = s.model_copy(update={"dose_gy": max(0.0, s.dose_gy - margin_pct / 100.0 * rx)})
        out.append(s)
    return out


@dataclass
class OptimizationProblem:
    """Objectives on a row-subset Dij; beamlet columns grouped per beam by ``beam_slices``."""

    dij: SubsetDij
    objectives: list[Objective]
    structure_rows: dict[str, np.ndarray]  # every subset row of each structure (no overlap removal)
    prescription_gy: float
    target: str
    normalization_metric: str = "D95"
    normalization_structure: str | None = None
    normalization_value_pct: float = 100.0
    beam_slices: list[slice] = field(default_factory=list)
    grid_shape: tuple[int, int, int] | None = None
    voxel_volume_cc: float | None = None
    regularizer: FluenceRegularizer | None = None  # fluence smoothing and weight bound (treatable plans)
    goal_plan: AutoPlan | None = None  # automatic planning: the objectives of each clinical goal
    mu_bound: NormalisedMU | None = None  # the plan's MU bound after normalisation (DAO and the MU refit hold it)

    @property
    def num_beamlets(self) -> int:
        return self.dij.num_beamlets

    @property
    def soft(self) -> list[Objective]:
        return [o for o in self.objectives if not o.hard]

    @property
    def hard(self) -> list[Objective]:
        return [o for o in self.objectives if o.hard]

    def dose(self, w: np.ndarray) -> np.ndarray:
        """Dose (Gy) on every subset row for beamlet weights ``w``."""
        return self.dij.dose(w).astype(np.float64)

    def objective_values(self, d_subset: np.ndarray) -> list[dict]:
        """Per-term value, weight and (for constraints) violation in Gy, for a dose on the subset rows."""
        out = []
        for o in self.objectives:
            dv = d_subset[o.voxels]
            row = {
                "structure": o.structure,
                "kind": o.kind,
                "dose_gy": o.dose_gy,
                "weight": o.weight,
                "hard": o.hard,
                "value": o.value(dv),
            }
            if o.volume_pct is not None:
                row["volume_pct"] = o.volume_pct
            if o.hard:
                row["violation_gy"] = o.max_violation_gy(dv)
            out.append(row)
        return out

    def set_target_aims(self, factor: float) -> None:
        """Aim the normalisation target's soft lower and deviation terms (squared deviation, min
        DVH, squared under-dose, min dose) at ``factor`` x their order dose (``goal_gy``).

        Normalisation-aware optimisation: the final plan is scaled so that the normalisation
        metric (e.g. PTV D95) equals the prescription; a fluence whose target dose sits a few per
        cent low is scaled up by that much, and every organ dose with it. Aiming the target terms
        at the level the normalisation will bring (``factor`` = what it would apply to the current
        dose) makes the organ objectives act on the dose scale the normalised plan will have.
        Idempotent: the aim is always ``factor`` x the order's dose, never compounded."""
        tgt = self.normalization_structure or self.target
        for o in self.objectives:
            if not o.hard and o.structure == tgt and o.kind in _NORMALISATION_AIM_KINDS:
                o.dose_gy = (o.dose_gy if o.goal_gy is None else o.goal_gy) * float(factor)

    def total_objective(self, d_subset: np.ndarray, include_hard: bool = False) -> float:
        """Weighted sum of the soft terms (and of the hard ones as penalties when asked)."""
        return float(sum(o.weight * o.value(d_subset[o.voxels]) for o in self.objectives if include_hard or not o.hard))


def _as_indices(mask, n_vox: int, name: str) -> np.ndarray:
    a = np.asarray(mask)
    if a.dtype == bool:
        if a.size != n_vox:
            raise InputError(
                f"mask of '{name}' has {a.size} voxels but the Dij has {n_vox} rows (dose-grid voxels)", kind="input"
            )
        return np.flatnonzero(a.ravel())
    return np.unique(a.astype(np.int64).ravel())


def build_problem(
    order: MedicalOrder,
    masks: dict[str, np.ndarray],
    dij: sp.spmatrix,
    *,
    beam_slices: list[slice] | None = None,
    reference_dose_gy: np.ndarray | None = None,
    overlap_priority: list[str] | None = None,
    grid_shape: tuple[int, int, int] | None = None,
    voxel_volume_cc: float | None = None,
    default_target_objective: bool = True,
    organ_aim_margin_pct: float = 0.0,
) -> OptimizationProblem:
    """Translate a medical order into an :class:`OptimizationProblem`.

    ``masks``: structure name -> boolean mask on the dose grid (any shape with the Dij's row count)
    or linear voxel indices. ``dij``: voxels x beamlets (Gy per unit weight), scipy sparse.
    ``reference_dose_gy``: the reference dose on the dose grid (flattened or not) used by
    ``dose_mimicking`` terms (their ``dose_gy`` is the tolerance of that region, Gy).
    When the prescription target has no objective, a squared deviation to the prescription dose is added.
    ``organ_aim_margin_pct``: organ terms aimed that % of the prescription below their goals
    (:func:`organ_aims`); each objective keeps its order dose as ``goal_gy``.
    """
    if isinstance(dij, SubsetDij):
        raise InputError("build_problem needs the full Dij (scipy sparse, one row per dose-grid voxel)", kind="input")
    n_vox = dij.shape[0]
    order.check_structures(masks.keys())
    names = sorted(order.structure_names())
    idx = {n: _as_indices(masks[n], n_vox, n) for n in names}
    for n in names:
        if idx[n].size == 0:
            raise InputError(
                f"structure '{n}' has no voxel on the dose grid; use a finer --dose-grid-mm or check the contour",
                kind="input",
                field=n,
            )
    specs: list[ObjectiveSpec] = list(order.objectives)
    rx = order.prescription.total_dose_gy
    tgt = order.prescription.target
    if default_target_objective and not any(s.structure == tgt and not s.hard for s in specs):
        specs.append(ObjectiveSpec(structure=tgt, kind=ObjectiveKind.squared_deviation, dose_gy=rx, priority=1.0))
    aims = organ_aims(specs, order, organ_aim_margin_pct)

    # overlap priority: targets first, the highest dose level first (a voxel in two targets belongs
    # to the higher level), then organs from small to large
    if overlap_priority is None:
        tl = sorted((t for t in target_like(order) if t in idx), key=lambda t: -target_dose_level(order, t))
        rest = sorted((n for n in names if n not in tl), key=lambda n: idx[n].size)
        overlap_priority = tl + rest
    exclusive: dict[str, np.ndarray] = {}
    taken = np.zeros(0, dtype=np.int64)
    for n in overlap_priority:
        if n in idx:
            exclusive[n] = np.setdiff1d(idx[n], taken, assume_unique=True)
            taken = np.union1d(taken, idx[n])
    for n in names:
        exclusive.setdefault(n, idx[n])

    all_rows = np.unique(np.concatenate([idx[n] for n in names]))
    sub = SubsetDij(dij, all_rows)
    pos = {n: np.searchsorted(all_rows, idx[n]) for n in names}
    pos_ex = {n: np.searchsorted(all_rows, exclusive[n]) for n in names}
    ref_sub = None
    if reference_dose_gy is not None:
        ref = np.asarray(reference_dose_gy, dtype=np.float64).ravel()
        if ref.size != n_vox:
            raise InputError(
                f"reference dose has {ref.size} voxels, the Dij {n_vox}", kind="input", field="reference_dose"
            )
        ref_sub = ref[all_rows]

    objectives = []
    for goal, s in zip(specs, aims):
        rows = pos[s.structure] if s.hard else pos_ex[s.structure]
        if rows.size == 0:
            continue
        kw = {}
        if s.kind is ObjectiveKind.dose_mimicking:
            if ref_sub is None:
                raise InputError(
                    f"objective dose_mimicking on '{s.structure}' needs a reference dose; pass reference_dose_gy",
                    kind="order",
                    field="objectives.kind",
                )
            kw["reference_gy"] = ref_sub[rows]
            kw["tolerance_gy"] = s.dose_gy
        objectives.append(
            make_objective(
                s.kind,
                s.structure,
                rows,
                s.dose_gy,
                weight=s.priority,
                hard=s.hard,
                volume_pct=s.volume_pct,
                a=s.a,
                goal_gy=goal.dose_gy,
                **kw,
            )
        )
    norm = order.prescription.normalization
    return OptimizationProblem(
        dij=sub,
        objectives=objectives,
        structure_rows=pos,
        prescription_gy=rx,
        target=tgt,
        normalization_metric=norm.metric,
        normalization_structure=norm.structure or tgt,
        normalization_value_pct=norm.value_pct,
        beam_slices=beam_slices or [slice(0, dij.shape[1])],
        grid_shape=grid_shape,
        voxel_volume_cc=voxel_volume_cc,
    )


def problem_from_voxel_groups(
    dij: sp.spmatrix,
    terms: list[dict],
    *,
    target: str,
    prescription_gy: float,
    beam_slices: list[slice] | None = None,
) -> OptimizationProblem:
    """A problem from explicit voxel sets (e.g. another planning system's objective groups, for a
    like-for-like comparison). Each term: ``structure``, ``kind``, ``dose_gy``, ``weight``,
    ``voxels`` (linear dose-grid indices, overlaps already resolved), optional ``volume_pct``, ``a``, ``hard``."""
    all_rows = np.unique(np.concatenate([np.asarray(t["voxels"], dtype=np.int64) for t in terms]))
    sub = SubsetDij(dij, all_rows)
    objectives: list[Objective] = []
    rows: dict[str, np.ndarray] = {}
    for t in terms:
        pos = np.searchsorted(all_rows, np.unique(np.asarray(t["voxels"], dtype=np.int64)))
        rows[t["structure"]] = np.union1d(rows.get(t["structure"], np.zeros(0, np.int64)), pos)
        objectives.append(
            make_objective(
                t["kind"],
                t["structure"],
                pos,
                t["dose_gy"],
                weight=t.get("weight", 1.0),
                hard=t.get("hard", False),
                volume_pct=t.get("volume_pct"),
                a=t.get("a"),
            )
        )
    if target not in rows:
        raise InputError(f"target '{target}' has no objective group", kind="input")
    return OptimizationProblem(
        dij=sub,
        objectives=objectives,
        structure_rows=rows,
        prescription_gy=prescription_gy,
        target=target,
        normalization_structure=target,
        beam_slices=beam_slices or [slice(0, dij.shape[1])],
    )
