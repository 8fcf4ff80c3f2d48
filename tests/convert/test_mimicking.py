"""Dose mimicking of a conversion: the standard plan's DVH, capped below the order's goals where
the standard plan meets them."""

from __future__ import annotations

import pytest

from rayrt.convert.convert import max_dvh_goals, mimic_dvh_level
from rayrt.imaging.phantoms import tg119_order


def test_the_orders_max_dvh_goals():
    assert max_dvh_goals(tg119_order()) == {("PTV", 10.0): 55.0, ("Core", 10.0): 25.0}


def test_dvh_mimicking_keeps_the_standard_plans_margin():
    # the standard plan meets the goal: the copy never aims above goal - margin (even below the standard's own D_v)
    assert mimic_dvh_level(54.54, 0.3, 55.0, 1.0) == pytest.approx(54.0)
    assert mimic_dvh_level(20.0, 0.3, 25.0, 1.0) == pytest.approx(20.3)  # far below: the standard's D_v + tolerance
    # the standard plan misses the goal: mimicked as it is (pushing the copy past it would only cost agreement)
    assert mimic_dvh_level(57.0, 0.3, 55.0, 1.0) == pytest.approx(57.3)
    # no goal there, or no margin asked: the standard's D_v + tolerance
    assert mimic_dvh_level(54.54, 0.3, None, 1.0) == pytest.approx(54.84)
    assert mimic_dvh_level(54.54, 0.3, 55.0, None) == pytest.approx(54.84)


def test_the_orders_underdose_aims_are_capped_at_what_the_standard_plan_achieved():
    """A conversion never aims a target's coverage past the standard plan's where the standard misses
    the order's goal (pt_201: PTV63 D95 52 Gy in the standard plan, the order's D99 >= 59.9 Gy; the
    release wants D95 within 1 Gy of the standard's, so those aims only pulled the copy away)."""
    import numpy as np

    from rayrt.convert.convert import order_within_standard
    from rayrt.domain.order import MedicalOrder, ObjectiveKind, ObjectiveSpec, Prescription
    from rayrt.qa.dvh import dose_at_volume

    low = np.zeros((4, 5, 5), bool)
    low[0:2] = True
    high = np.zeros_like(low)
    high[2:4] = True
    dose = np.where(low, np.linspace(40.0, 58.0, low.size).reshape(low.shape), 70.0)
    order = MedicalOrder(
        prescription=Prescription(target="High", total_dose_gy=70.0),
        dose_levels={"Low": 56.0},
        objectives=[
            ObjectiveSpec(structure="Low", kind=ObjectiveKind.min_dvh, dose_gy=53.2, volume_pct=99.0, priority=100),
            ObjectiveSpec(structure="Low", kind=ObjectiveKind.squared_underdose, dose_gy=56.0, priority=100),
            ObjectiveSpec(structure="Low", kind=ObjectiveKind.min_dose, dose_gy=50.0, priority=10),
            ObjectiveSpec(structure="Low", kind=ObjectiveKind.min_dose, dose_gy=45.0, hard=True),
            ObjectiveSpec(structure="High", kind=ObjectiveKind.squared_underdose, dose_gy=70.0, priority=100),
            ObjectiveSpec(structure="High", kind=ObjectiveKind.min_dvh, dose_gy=66.5, volume_pct=99.0, priority=100),
            ObjectiveSpec(structure="High", kind=ObjectiveKind.squared_overdose, dose_gy=72.0, priority=30),
        ],
    )
    masks = {"Low": low, "High": high}
    got = order_within_standard(order, dose, masks).objectives
    v = dose[low]
    assert got[0].dose_gy == pytest.approx(float(dose_at_volume(v, 99.0)))  # D99 of the standard
    assert got[1].dose_gy == pytest.approx(float(dose_at_volume(v, 95.0)))  # its D95
    assert got[2].dose_gy == pytest.approx(float(v.min()))  # its minimum
    assert got[3] == order.objectives[3]  # hard terms are kept
    assert got[4:] == order.objectives[4:]  # met aims (and other kinds) unchanged, none raised
    # an order the standard plan meets everywhere comes back as it is
    met = order.model_copy(update={"objectives": order.objectives[4:]})
    assert order_within_standard(met, dose, masks) is met


def test_goal_guards_keep_the_goals_the_standard_plan_meets():
    """A conversion keeps each D<x> / D<x>cc goal the standard plan meets with a DVH term at the
    goal's volume aimed at the standard's value, never further from the goal than the margin; goals
    the standard plan misses, and mean / V<x>Gy goals, get none."""
    import numpy as np

    from rayrt.domain.order import parse_order
    from rayrt.optimize.goal_guards import goal_guard_objectives

    order = parse_order(
        {
            "name": "guards",
            "prescription": {"target": "PTV", "total_dose_gy": 60.0, "fractions": 30},
            "goals": [
                {"structure": "PTV", "metric": "D99", "op": ">=", "value": 57.0},  # met by 0.3 Gy
                {"structure": "PTV", "metric": "D50", "op": ">=", "value": 55.0},  # met by 5 Gy
                {"structure": "Cord", "metric": "D1cc", "op": "<=", "value": 45.0, "rank": 1},  # met by 15 Gy
                {"structure": "Cord", "metric": "mean", "op": "<=", "value": 10.0},  # a mean: none
                {"structure": "Gland", "metric": "D50", "op": "<=", "value": 20.0},  # missed: none
            ],
        }
    )
    ptv = np.arange(0, 100)
    cord = np.arange(100, 140)
    gland = np.arange(140, 160)
    dose = np.zeros(160)
    dose[ptv] = np.linspace(57.3, 63.0, 100)  # D99 ~ 57.35, D50 ~ 60.2
    dose[cord] = 30.0
    dose[gland] = 25.0
    rows = {"PTV": ptv, "Cord": cord, "Gland": gland}
    guards = goal_guard_objectives(order, rows, dose, 0.1, 1.0, 300.0, {"Cord": 2.0})
    by = {o.structure: o for o in guards}
    assert [(o.structure, o.kind, o.volume_pct) for o in guards] == [
        ("PTV (goal D99)", "min_dvh", 99.0),
        ("PTV (goal D50)", "min_dvh", 50.0),
        ("Cord (goal D1cc)", "max_dvh", 25.0),  # 1 cc of a 4 cc cord
    ]
    g99 = by["PTV (goal D99)"]
    assert 57.0 < g99.dose_gy < 57.5  # the standard's D99, inside goal + margin
    assert by["PTV (goal D50)"].dose_gy == 56.0  # goal + margin, not the standard's 60 Gy
    assert by["Cord (goal D1cc)"].dose_gy == 44.0 and by["Cord (goal D1cc)"].weight == 600.0  # goal - margin, boosted
    assert goal_guard_objectives(order, rows, dose, 0.1, None, 300.0) == []


def test_conversions_obey_the_standard_plans_segment_limit():
    """A conversion sequences at most the planning's max_segments (12) per beam on an interdigitating
    MLC, like the standard plan; 30 on an MLC without interdigitation; never above the machine's limit."""
    from rayrt.convert.convert import conversion_segment_limits
    from rayrt.convert.policy import ConversionOptions
    from rayrt.domain.planning import PlanningRequest, planning_defaults
    from rayrt.machines import get_machine

    def per_beam(name: str, opts: ConversionOptions) -> int | None:
        return conversion_segment_limits(get_machine(name), opts).max_segments

    opts = ConversionOptions()
    assert PlanningRequest.model_validate(planning_defaults()).max_segments == 12
    assert per_beam("truebeam_m120", opts) == 12
    assert per_beam("versahd_agility", opts) == 12
    assert not get_machine("synergy_mlci2").mlc.interdigitation
    assert per_beam("synergy_mlci2", opts) == 30
    assert per_beam("truebeam_m120", ConversionOptions(max_segments=60)) == 50
