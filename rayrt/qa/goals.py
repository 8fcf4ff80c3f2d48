"""Clinical goals judged on a dose: the value of each goal's metric and whether it is met.

The metric conventions are those of :mod:`rayrt.qa.dvh` (voxel-centre DVH, equal volume per
voxel): ``D<x>`` is the dose of the hottest x % by mid-rank interpolation, ``D<x>cc`` the same at
the volume fraction x cc / structure volume (the maximum when x cc is less than half a voxel),
``V<x>Gy`` the share of voxels at or above x Gy (in % or cc).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from rayrt.domain.goals import ClinicalGoal, GoalKind
from rayrt.qa.dvh import dose_at_volume

__all__ = ["GoalEvaluation", "dose_volume_pct", "goal_value", "evaluate_goal", "evaluate_goals"]


class GoalEvaluation(BaseModel):
    """One clinical goal on one dose."""

    structure: str
    metric: str
    op: str
    goal: float = Field(description="the goal's value (Gy, or % / cc for V<x>Gy)")
    unit: str = Field(default="Gy", description="unit of goal, value and margin: Gy, % or cc")
    rank: int
    value: float = Field(description="the plan's value of the metric (same unit as the goal)")
    met: bool
    margin: float = Field(description="how far inside the goal (>0) or outside it (<0), in the goal's unit")
    label: str


def dose_volume_pct(goal: ClinicalGoal, n_voxels: int, voxel_cc: float) -> float:
    """The volume (% of a structure of ``n_voxels`` voxels of ``voxel_cc`` cm³) at which a ``D<x>``
    or ``D<x>cc`` goal reads its dose: x itself, or x cc as a share of the structure (at most 100 %)."""
    x = float(goal.parameter or 0.0)
    if goal.kind is GoalKind.dose_at_volume_cc:
        return min(100.0, x / (n_voxels * voxel_cc) * 100.0)
    return x


def goal_value(goal: ClinicalGoal, dose_gy: np.ndarray, voxel_cc: float) -> float:
    """The goal's metric on the doses (Gy) of a structure's voxels, each ``voxel_cc`` cm³."""
    v = np.asarray(dose_gy, dtype=np.float64).ravel()
    if v.size == 0:
        return float("nan")
    kind, x = goal.kind, goal.parameter
    if kind is GoalKind.mean:
        return float(v.mean())
    if kind is GoalKind.max:
        return float(v.max())
    if kind is GoalKind.min:
        return float(v.min())
    if kind is GoalKind.dose_at_volume_pct:
        return float(dose_at_volume(v, float(x or 0.0)))
    if kind is GoalKind.dose_at_volume_cc:
        return float(dose_at_volume(v, dose_volume_pct(goal, v.size, voxel_cc)))
    share = float(np.count_nonzero(v >= float(x or 0.0))) / v.size
    return share * v.size * voxel_cc if goal.unit == "cc" else 100.0 * share


def evaluate_goal(goal: ClinicalGoal, dose_gy: np.ndarray, voxel_cc: float) -> GoalEvaluation:
    """Value, met and margin of one goal on a structure's voxel doses."""
    val = goal_value(goal, dose_gy, voxel_cc)
    margin = (val - goal.value) if goal.op == ">=" else (goal.value - val)
    met = bool(np.isfinite(val) and margin >= -1e-9)
    return GoalEvaluation(
        structure=goal.structure,
        metric=goal.metric,
        op=goal.op,
        goal=goal.value,
        unit="Gy" if goal.is_dose else (goal.unit or "%"),
        rank=goal.rank,
        value=float(val),
        met=met,
        margin=float(margin),
        label=goal.label(),
    )


def evaluate_goals(
    goals: list[ClinicalGoal], dose_gy: np.ndarray, masks: dict[str, np.ndarray], voxel_cc: float
) -> list[GoalEvaluation]:
    """Every goal on a dose array and boolean masks of the same grid."""
    d = np.asarray(dose_gy).ravel()
    return [evaluate_goal(g, d[np.asarray(masks[g.structure]).ravel()], voxel_cc) for g in goals]
