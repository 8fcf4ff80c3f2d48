"""Goal guards: DVH terms that keep the clinical goals a reference plan meets while another
optimisation (a conversion's re-optimisation, the standard plan's MU refit) moves the plan.

Doses are course doses in Gy on an optimisation problem's voxel rows; volumes in % of the
structure (a ``D<x>cc`` goal's volume converted with the voxel volume in cc)."""

from __future__ import annotations

import numpy as np

from rayrt.domain.goals import GoalKind
from rayrt.domain.order import MedicalOrder
from rayrt.optimize.objectives import Objective, make_objective
from rayrt.qa.goals import dose_volume_pct, evaluate_goal

__all__ = ["goal_guard_objectives"]


def goal_guard_objectives(
    order: MedicalOrder,
    structure_rows: dict[str, np.ndarray],
    reference_dose_rows_gy: np.ndarray,
    voxel_cc: float,
    margin_gy: float | None,
    weight: float,
    boost: dict[str, float] | None = None,
) -> list[Objective]:
    """DVH terms that keep the clinical goals of the order the reference plan meets: one per
    ``D<x>`` / ``D<x>cc`` goal, at the goal's own volume, aiming at the reference plan's value but
    never further from the goal than ``margin_gy`` (``>=``: ``min(reference, goal + margin)``,
    ``<=``: ``max(reference, goal - margin)``). ``reference_dose_rows_gy`` is the reference plan's
    course dose on the problem's voxel rows, ``structure_rows`` the rows of each structure.

    A conversion's general DVH levels mimic the standard plan within a tolerance either way, which
    crosses a goal the standard plan meets by less (a PTV D99 0.1 Gy above its goal came out 0.8 Gy
    below it on a converted plan, which QA then refuses: :func:`rayrt.qa.checks.dvh_criteria_checks`).
    A goal the reference plan misses gets no guard; ``max``, ``min``, ``mean`` and ``V<x>Gy`` goals
    are left to the caller's other terms. Weights ``weight`` x the structure's ``boost``."""
    if margin_gy is None or weight <= 0:
        return []
    boost = boost or {}
    out: list[Objective] = []
    for g in order.goals:
        if g.kind not in (GoalKind.dose_at_volume_pct, GoalKind.dose_at_volume_cc):
            continue
        rows = structure_rows.get(g.structure)
        if rows is None or rows.size == 0:
            continue
        e = evaluate_goal(g, reference_dose_rows_gy[rows], voxel_cc)
        if not e.met:
            continue
        pct = dose_volume_pct(g, rows.size, voxel_cc)
        if g.op == ">=":
            kind, aim = "min_dvh", min(e.value, g.value + margin_gy)
        else:
            kind, aim = "max_dvh", max(e.value, g.value - margin_gy)
        out.append(
            make_objective(
                kind,
                f"{g.structure} (goal {g.metric})",
                rows,
                aim,
                weight=weight * boost.get(g.structure, 1.0),
                volume_pct=pct,
            )
        )
    return out
