"""Plan QA checks: each returns :class:`QACheck` items that a :class:`~rayrt.qa.report.QAReport` collects.

* :func:`gamma_check` -- 3-D gamma of the converted (evaluated) dose against the standard
  (reference) dose; AAPM TG-218 (Miften et al., Med Phys 45, 2018): global 3 %/2 mm, 10 %
  low-dose threshold, tolerance limit >= 95 % passing (below: ``warn``, investigate), action
  limit 90 % (below: ``fail``, do not deliver).
* :func:`dvh_criteria_checks` -- the DVH criteria of a :class:`~rayrt.domain.order.MedicalOrder`
  evaluated on a dose (see the function for how each objective kind is read as a criterion).
* :func:`independent_dose_check` -- the plan's dose recomputed independently (aperture dose on
  a finer grid, :func:`aperture_recompute`) compared with the planned dose by gamma (3 %/3 mm
  global, 10 % cutoff, >= 95 % passing; below 90 %: fail) and by the target mean dose (within
  3 %; 5 %: fail). The recomputation is independent of the optimiser's Dij and grid, not of
  the beam model: the same pencil-beam kernels are used.
* :func:`deliverability_check` -- :func:`rayrt.qa.deliverability.check_plan`.

Statuses: ``pass``; ``warn`` = outside the tolerance but inside the action limit, or a violated
*soft* objective (a person reviews it); ``fail`` = beyond the action limit or a violated hard
constraint. ``QACheck.passed`` is True only for ``pass``.
"""

from __future__ import annotations

from typing import Callable, Literal, Mapping

import numpy as np
from pydantic import BaseModel, Field, model_validator

from rayrt.domain.errors import InputError
from rayrt.domain.goals import ClinicalGoal
from rayrt.domain.machine import MachineModel
from rayrt.domain.order import MedicalOrder, ObjectiveKind, ObjectiveSpec
from rayrt.domain.plan import Plan
from rayrt.dose.aperture import aperture_dose
from rayrt.imaging.volume import Grid, Volume
from rayrt.qa.deliverability import check_plan
from rayrt.qa.dvh import dose_at_volume
from rayrt.qa.gamma import GammaCriteria, GammaResult, gamma_index
from rayrt.qa.goals import evaluate_goal

Status = Literal["pass", "warn", "fail"]

GOAL_TOLERANCE_GY = 1e-4
"""A dose criterion compares a float32 dose with its limit: a plan normalised to D95 = 50 Gy stores
D95 as 49.9999988 Gy (float32 rounding is ~4 uGy at 50 Gy). 0.1 mGy absorbs that and is clinically nil."""

# AAPM TG-218 universal tolerance and action limits for the gamma passing rate (%)
TG218_CRITERIA = GammaCriteria(dose_pct=3.0, dta_mm=2.0, cutoff_pct=10.0, local=False)
TG218_TOLERANCE_PCT = 95.0
TG218_ACTION_PCT = 90.0


class QACheck(BaseModel):
    """One QA check: what was measured, against which limit, and the outcome."""

    name: str = Field(description="e.g. 'gamma 3%/2mm global', 'PTV D95 >= 47.5 Gy', 'deliverability'")
    category: str = Field(default="", description="gamma, dvh, dose_check, deliverability")
    status: Status = "pass"
    passed: bool = Field(default=True, description="status == 'pass'")
    value: float | None = Field(default=None, description="the measured value")
    limit: float | None = Field(default=None, description="the limit the value is compared with")
    unit: str = ""
    detail: str = ""
    blocks_release: bool | None = Field(
        default=None,
        description="a warning's part in a converted plan's release: False = for the physicist's review only (a "
        "clinical goal the standard plan misses too, or lost within tolerance); None = by its category "
        "(rayrt.convert.release.release_blocking)",
    )

    @model_validator(mode="after")
    def _sync(self) -> "QACheck":
        self.passed = self.status == "pass"
        return self


def _rate_status(rate_pct: float, tolerance_pct: float, action_pct: float) -> Status:
    if rate_pct >= tolerance_pct:
        return "pass"
    return "warn" if rate_pct > action_pct else "fail"


# --------------------------------------------------------------------------- gamma
def gamma_check(
    reference: Volume,
    evaluated: Volume,
    criteria: GammaCriteria = TG218_CRITERIA,
    tolerance_pct: float = TG218_TOLERANCE_PCT,
    action_pct: float = TG218_ACTION_PCT,
    name: str | None = None,
    category: str = "gamma",
) -> tuple[QACheck, GammaResult]:
    """Gamma passing rate of ``evaluated`` against ``reference`` with TG-218 limits."""
    res = gamma_index(reference, evaluated, criteria)
    s = res.summary
    status = _rate_status(s.pass_rate_pct, tolerance_pct, action_pct)
    check = QACheck(
        name=name or f"gamma {criteria.label()}",
        category=category,
        status=status,
        value=round(s.pass_rate_pct, 3),
        limit=tolerance_pct,
        unit="%",
        detail=(
            f"{s.n_passed}/{s.n_evaluated} voxels pass; "
            f"mean gamma {s.mean_gamma:.3f}, 95th percentile {s.p95_gamma:.3f}; "
            f"tolerance >= {tolerance_pct:g} %, action <= {action_pct:g} %"
        ),
    )
    return check, res


# --------------------------------------------------------------------------- DVH criteria
def masks_on_grid(masks: Mapping[str, "np.ndarray | Volume"], grid: Grid) -> dict[str, np.ndarray]:
    """Boolean masks on ``grid``: arrays must already match it, Volumes are resampled (nearest)."""
    out: dict[str, np.ndarray] = {}
    for name, m in masks.items():
        if isinstance(m, Volume):
            arr = m.resample(grid, order=0).array if not m.grid.same_geometry(grid) else m.array
        else:
            arr = np.asarray(m)
            if arr.shape != tuple(grid.shape):
                raise InputError(
                    f"mask of '{name}' has shape {arr.shape}, the dose grid {grid.shape}; "
                    "pass it as a Volume to resample",
                    kind="qa",
                )
        out[name] = np.asarray(arr, dtype=bool)
    return out


def _geud(values: np.ndarray, a: float) -> float:
    v = np.maximum(values.astype(np.float64), 1e-9)
    return float(np.mean(v**a) ** (1.0 / a))


def dvh_criteria_checks(
    dose: Volume,
    masks: Mapping[str, "np.ndarray | Volume"],
    order: MedicalOrder,
    *,
    dose_tolerance_pct: float = 0.0,
    coverage_tolerance_pct: float = 2.0,
    reference: Volume | None = None,
) -> list[QACheck]:
    """Check the dose against the order's criteria (doses in Gy, total course).

    How each objective reads as a criterion (voxel-centre DVH, :mod:`rayrt.qa.dvh`):

    * ``min_dose`` -> near-minimum D98 >= dose (ICRU 83; a single cold voxel is not a failure);
    * ``max_dose`` -> near-maximum D2 <= dose;
    * ``min_dvh``  -> D{volume_pct} >= dose;  ``max_dvh`` -> D{volume_pct} <= dose;
    * ``mean_dose`` -> mean <= dose;
    * ``geud`` -> gEUD <= dose (a >= 1, organs) or >= dose (a < 0, targets);
    * ``squared_*`` objectives are optimisation goals, not criteria: not checked;
    * the prescription: the normalisation metric (e.g. D95 of the target) within
      ``coverage_tolerance_pct`` % below ``value_pct`` % of the prescribed dose (warn beyond it,
      fail beyond twice it).

    * each clinical goal (``order.goals``, :mod:`rayrt.qa.goals`): met passes; missed fails when
      the ``reference`` dose (the standard plan's) meets it and this dose misses it by more than
      :data:`GOAL_LOSS_TOLERANCE_PCT` % of the prescription, else warns.

    ``dose_tolerance_pct`` widens every objective's limit by that percentage of its dose level. A
    violated hard constraint fails, a violated soft objective warns. A structure missing from ``masks``
    or empty on the dose grid fails with a message.
    """

    m = masks_on_grid(masks, dose.grid)
    d = np.asarray(dose.array, dtype=np.float64)
    checks: list[QACheck] = []

    def values_of(name: str) -> np.ndarray | None:
        mask = m.get(name)
        if mask is None or not mask.any():
            return None
        return d[mask]

    rx = order.prescription
    norm = rx.normalization
    nstruct = norm.structure or rx.target
    v = values_of(nstruct)
    goal = rx.total_dose_gy * norm.value_pct / 100.0
    if norm.metric != "none":
        label = f"{nstruct} {norm.metric} = {norm.value_pct:g} % of {rx.total_dose_gy:g} Gy"
        if v is None:
            checks.append(
                QACheck(
                    name=label,
                    category="dvh",
                    status="fail",
                    unit="Gy",
                    limit=goal,
                    detail=f"structure '{nstruct}' missing or empty on the dose grid",
                )
            )
        else:
            # the metric is 'D<vol%>' (volume_pct set) or 'mean' (volume_pct None): Normalization validates it
            vol_pct = norm.volume_pct
            val = float(v.mean()) if vol_pct is None else float(dose_at_volume(v, vol_pct))
            dev = (val - goal) / goal * 100.0
            status: Status = (
                "pass" if dev >= -coverage_tolerance_pct else ("warn" if dev >= -2 * coverage_tolerance_pct else "fail")
            )
            checks.append(
                QACheck(
                    name=label,
                    category="dvh",
                    status=status,
                    value=round(val, 4),
                    limit=round(goal, 4),
                    unit="Gy",
                    detail=f"{dev:+.2f} % from the prescription goal (tolerance -{coverage_tolerance_pct:g} %)",
                )
            )

    for obj in order.objectives:
        c = _objective_check(obj, values_of(obj.structure), dose_tolerance_pct, dose_at_volume)
        if c is not None:
            checks.append(c)
    if order.goals:
        ref = None
        if reference is not None:  # on this dose's grid, judged on the same voxels
            ra = np.asarray(reference.resample(dose.grid, order=1, fill=0.0).array, dtype=np.float64)
            ref = {n: ra[k] for n, k in m.items() if k.any()}
        for g in order.goals:
            checks.append(
                _goal_check(
                    g,
                    values_of(g.structure),
                    None if ref is None else ref.get(g.structure),
                    dose.grid.voxel_volume_cc,
                    rx.total_dose_gy,
                )
            )
    return checks


#: a clinical goal the reference (standard) plan meets may be missed by this % of the prescription
#: (percentage points of volume, or 1 % of the structure for a volume in cc) before QA fails the plan
GOAL_LOSS_TOLERANCE_PCT = 1.0


def _goal_check(
    goal: ClinicalGoal,
    v: np.ndarray | None,
    ref: np.ndarray | None,
    voxel_cc: float,
    prescription_gy: float,
) -> QACheck:
    """A clinical goal of the order on the plan's dose: met passes; missed fails when the
    reference plan meets it and this plan misses it by more than :data:`GOAL_LOSS_TOLERANCE_PCT`
    (a conversion lost it), else warns (the reference misses it too, or there is none: the goal
    report of the planning says what limited it)."""
    label = goal.label()
    if v is None:
        return QACheck(
            name=label,
            category="dvh",
            status="fail",
            limit=goal.value,
            unit="Gy" if goal.is_dose else (goal.unit or "%"),
            detail=f"structure '{goal.structure}' missing or empty on the dose grid",
        )
    e = evaluate_goal(goal, v, voxel_cc)
    blocks: bool | None = None
    if e.met:
        status: Status = "pass"
        detail = f"clinical goal (rank {goal.rank}) met, margin {e.margin:+.3g} {e.unit}"
    else:
        r = None if ref is None else evaluate_goal(goal, ref, voxel_cc)
        if goal.is_dose:
            tol = GOAL_LOSS_TOLERANCE_PCT / 100.0 * prescription_gy
        elif goal.unit == "cc":
            tol = GOAL_LOSS_TOLERANCE_PCT / 100.0 * v.size * voxel_cc
        else:
            tol = GOAL_LOSS_TOLERANCE_PCT
        if r is not None and r.met and -e.margin > tol:
            status = "fail"
            detail = (
                f"clinical goal (rank {goal.rank}) lost: the standard plan meets it ({r.value:.4g} {e.unit}), "
                f"this plan misses it by {-e.margin:.3g} {e.unit} (tolerance {tol:.3g})"
            )
        else:
            status = "warn"
            if r is not None:  # the physicist reviews it; the release does not wait on it
                blocks = False
            if r is None:
                why = "see the planning's goal report"
            elif r.met:  # within the tolerance: the physicist reviews it, the release does not wait on it
                why = f"the standard plan meets it ({r.value:.4g} {e.unit}); within tolerance {tol:.3g}: not blocking"
            else:
                why = f"the standard plan misses it too ({r.value:.4g} {e.unit}): not blocking"
            detail = f"clinical goal (rank {goal.rank}) missed by {-e.margin:.3g} {e.unit}; {why}"
    return QACheck(
        name=label,
        category="dvh",
        status=status,
        value=round(e.value, 4),
        limit=goal.value,
        unit=e.unit,
        detail=detail,
        blocks_release=blocks,
    )


def _objective_check(obj: ObjectiveSpec, v: np.ndarray | None, tol_pct: float, dose_at_volume) -> QACheck | None:
    k = obj.kind
    if k in (ObjectiveKind.squared_deviation, ObjectiveKind.squared_overdose, ObjectiveKind.squared_underdose):
        return None
    lower = k in (ObjectiveKind.min_dose, ObjectiveKind.min_dvh) or (k is ObjectiveKind.geud and (obj.a or 0) < 0)
    if k is ObjectiveKind.min_dose:
        metric, what = (lambda x: float(dose_at_volume(x, 98.0))), "D98"
    elif k is ObjectiveKind.max_dose:
        metric, what = (lambda x: float(dose_at_volume(x, 2.0))), "D2"
    elif k in (ObjectiveKind.min_dvh, ObjectiveKind.max_dvh):
        metric, what = (lambda x: float(dose_at_volume(x, obj.volume_pct))), f"D{obj.volume_pct:g}"
    elif k is ObjectiveKind.mean_dose:
        metric, what = (lambda x: float(x.mean())), "Dmean"
    elif k is ObjectiveKind.geud and obj.a is not None:  # ObjectiveSpec requires a for geud
        a = float(obj.a)
        metric, what = (lambda x: _geud(x, a)), f"gEUD(a={a:g})"
    else:  # a kind added later: not a criterion this module knows
        return None
    op = ">=" if lower else "<="
    name = f"{obj.structure} {what} {op} {obj.dose_gy:g} Gy"
    limit = obj.dose_gy * (1 - tol_pct / 100.0) if lower else obj.dose_gy * (1 + tol_pct / 100.0)
    if v is None:
        return QACheck(
            name=name,
            category="dvh",
            status="fail",
            limit=limit,
            unit="Gy",
            detail=f"structure '{obj.structure}' missing or empty on the dose grid",
        )
    val = metric(v)
    ok = val >= limit - GOAL_TOLERANCE_GY if lower else val <= limit + GOAL_TOLERANCE_GY
    status: Status = "pass" if ok else ("fail" if obj.hard else "warn")
    return QACheck(
        name=name,
        category="dvh",
        status=status,
        value=round(val, 4),
        limit=round(limit, 4),
        unit="Gy",
        detail=f"{'hard constraint' if obj.hard else 'objective'} (priority {obj.priority:g}); {len(v)} voxels",
    )


# --------------------------------------------------------------------------- independent dose
DoseRecompute = Callable[[Plan, MachineModel, Grid], Volume]


def aperture_recompute(density: Volume, *, total_course: bool = True, **aperture_kwargs) -> DoseRecompute:
    """An independent-dose engine from :func:`rayrt.dose.aperture.aperture_dose` on ``density``.

    The returned callable sums the aperture dose of every beam on the requested grid. Segment MU
    are per fraction, so the dose is per fraction; with ``total_course`` it is multiplied by
    ``plan.fractions`` (the convention of the orders' total-course doses).
    """

    def recompute(plan: Plan, machine: MachineModel, grid: Grid) -> Volume:
        total = np.zeros(grid.shape, dtype=np.float64)
        for beam in plan.beams:
            total += aperture_dose(density, grid, beam, None, machine, **aperture_kwargs)
        if total_course:
            total *= plan.fractions
        return Volume(total.astype(np.float32), grid, "dose_gy")

    return recompute


def default_recompute(density: Volume | None) -> DoseRecompute | None:
    """The aperture dose engine on ``density`` when both are available, else None."""
    if density is None:
        return None
    return aperture_recompute(density)


def independent_dose_check(
    plan: Plan,
    machine: MachineModel,
    planned: Volume,
    recompute: DoseRecompute,
    *,
    grid: Grid | None = None,
    target_mask: "np.ndarray | Volume | None" = None,
    criteria: GammaCriteria = GammaCriteria(dose_pct=3.0, dta_mm=3.0, cutoff_pct=10.0),
    tolerance_pct: float = 95.0,
    action_pct: float = 90.0,
    mean_tolerance_pct: float = 3.0,
    mean_action_pct: float = 5.0,
    min_spacing_mm: float = 2.0,
) -> tuple[list[QACheck], Volume]:
    """Recompute the plan's dose independently and compare it with the planned dose.

    ``recompute(plan, machine, grid) -> Volume`` (Gy) is called on ``grid`` (default: the
    planned grid at half the voxel size, but no finer than ``min_spacing_mm``). Returns the checks (gamma of the
    recomputed dose against the planned one; target mean dose difference when ``target_mask``
    is given) and the recomputed dose.
    """
    if grid is None:
        sp = np.maximum(planned.grid.spacing / 2.0, min(min_spacing_mm, float(planned.grid.spacing.min())))
        grid = planned.grid.with_spacing((float(sp[0]), float(sp[1]), float(sp[2])))
    indep = recompute(plan, machine, grid)
    if not isinstance(indep, Volume):
        raise InputError("the independent dose engine must return a Volume of dose in Gy", kind="qa")
    gcheck, _ = gamma_check(
        planned,
        indep,
        criteria,
        tolerance_pct,
        action_pct,
        name=f"independent dose gamma {criteria.label()}",
        category="dose_check",
    )
    checks = [gcheck]
    if target_mask is not None:
        tm = masks_on_grid({"target": target_mask}, planned.grid)["target"]
        if tm.any():
            a = float(np.asarray(planned.array, dtype=np.float64)[tm].mean())
            b_on = indep.resample(planned.grid) if not indep.grid.same_geometry(planned.grid) else indep
            b = float(np.asarray(b_on.array, dtype=np.float64)[tm].mean())
            diff = (b - a) / a * 100.0 if a > 0 else float("inf")
            st: Status = (
                "pass" if abs(diff) <= mean_tolerance_pct else ("warn" if abs(diff) <= mean_action_pct else "fail")
            )
            checks.append(
                QACheck(
                    name="independent dose: target mean",
                    category="dose_check",
                    status=st,
                    value=round(diff, 3),
                    limit=mean_tolerance_pct,
                    unit="%",
                    detail=f"planned {a:.3f} Gy, recomputed {b:.3f} Gy (action at {mean_action_pct:g} %)",
                )
            )
    return checks, indep


# --------------------------------------------------------------------------- deliverability
def deliverability_check(plan: Plan, machine: MachineModel) -> QACheck:
    """Every mechanical and MU rule of the machine (:func:`rayrt.qa.deliverability.check_plan`)."""
    rep = check_plan(plan, machine)
    n = len(rep.violations)
    shown = "; ".join(f"{v.rule}: {v.message}" for v in rep.violations[:5])
    return QACheck(
        name=f"deliverability on {machine.name}",
        category="deliverability",
        status="pass" if rep.deliverable else "fail",
        value=float(n),
        limit=0.0,
        unit="violations",
        detail=(
            f"{rep.num_beams} beams, {rep.num_segments} segments, {rep.total_mu:.1f} MU"
            + (f"; {shown}" + (f" (+{n - 5} more)" if n > 5 else "") if n else "")
        ),
    )
