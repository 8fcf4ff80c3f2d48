"""Ready-made medical orders for reference cases (used by tests, benchmarks and demos).

``tg119_goal_order`` states the AAPM TG-119 C-shape goals the way a planner would: the PTV
coverage and hot-spot goals as *hard* DVH constraints (with a small margin for sequencing and
DAO), the core pushed as low as the constraints allow by an over-dose objective at a low level,
and the external contour kept below 60 % of the prescription. Normalisation: PTV D95 = 50 Gy.
"""

from __future__ import annotations

from rayrt.domain.order import MedicalOrder, Normalization, ObjectiveKind, ObjectiveSpec, Prescription

__all__ = ["tg119_goal_order"]


def tg119_goal_order(
    target: str = "PTV",
    core: str = "Core",
    body: str = "BODY",
    core_push_gy: float = 10.0,
    core_weight: float = 100.0,
    target_weight: float = 1000.0,
    target_d10_max_gy: float = 54.0,
) -> MedicalOrder:
    """TG-119 C-shape: PTV D95 >= 50 Gy, PTV D10 <= 55 Gy (hard), core as low as possible (goal D10 <= 10 Gy)."""
    return MedicalOrder(
        name="TG-119 C-shape goals (hard PTV constraints)",
        prescription=Prescription(
            target=target,
            total_dose_gy=50.0,
            fractions=25,
            normalization=Normalization(metric="D95", structure=target, value_pct=100.0),
        ),
        objectives=[
            ObjectiveSpec(structure=target, kind=ObjectiveKind.squared_deviation, dose_gy=50.0, priority=target_weight),
            ObjectiveSpec(structure=target, kind=ObjectiveKind.squared_overdose, dose_gy=53.0, priority=target_weight),
            ObjectiveSpec(structure=target, kind=ObjectiveKind.min_dvh, dose_gy=50.5, volume_pct=95.0, hard=True),
            ObjectiveSpec(
                structure=target, kind=ObjectiveKind.max_dvh, dose_gy=target_d10_max_gy, volume_pct=10.0, hard=True
            ),
            ObjectiveSpec(
                structure=core, kind=ObjectiveKind.squared_overdose, dose_gy=core_push_gy, priority=core_weight
            ),
            ObjectiveSpec(
                structure=core, kind=ObjectiveKind.max_dvh, dose_gy=10.0, volume_pct=10.0, priority=core_weight
            ),
            ObjectiveSpec(structure=body, kind=ObjectiveKind.squared_overdose, dose_gy=30.0, priority=100.0),
        ],
        notes="TG-119 C-shape: easy goals PTV D95 >= 50, D10 <= 55, core D10 <= 25 Gy; hard goal core D10 <= 10 Gy.",
    )


def tg119_hard_goal_order(target: str = "PTV", core: str = "Core", body: str = "BODY") -> MedicalOrder:
    """TG-119 C-shape aiming at the *hard* goal (core D10 <= 10 Gy): the core pushed towards 0 Gy
    with a high weight, the PTV D10 constraint at 54.7 Gy (goal 55). Measured on TG119.mat, 9 beams,
    5 mm dose grid, standard machine, <= 15 segments per beam, 600 FMO iterations, 8 DAO rounds:
    PTV D95 50.00 (normalised), D10 53.95, core D10 9.94 Gy, deliverable."""
    o = tg119_goal_order(target, core, body, core_push_gy=0.0, core_weight=1000.0, target_d10_max_gy=54.7)
    return o.model_copy(update={"name": "TG-119 C-shape hard goal"})
