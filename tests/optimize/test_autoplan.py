"""Automatic planning from clinical goals (rayrt.optimize.autoplan) through the planning recipe:
a simultaneous integrated boost planned from its goals alone reaches every dose level, the
goals are judged and reported rank by rank (with what limited a missed one), treatable limits
hold, and contradictory or incomplete goals are refused before any planning work."""

from __future__ import annotations

import numpy as np
import pytest

from rayrt.domain.errors import InputError
from rayrt.domain.order import parse_order
from rayrt.domain.planning import planning_request
from rayrt.imaging.tg119_cases import tg119_case
from rayrt.optimize.autoplan import goal_conflicts, goal_objectives, is_goal_order
from rayrt.pipeline import run_recipe

SPACING_MM = 5.0


@pytest.fixture(scope="module")
def multitarget(fast_planning):
    """TG-119 multitarget (50 / 25 / 12.5 Gy, goals only), 5 beams, 5 mm grid, 3 rounds."""
    study, order = tg119_case("multitarget", SPACING_MM)
    planning = planning_request({**fast_planning, "autoplan": {"rounds": 3, "iterations_per_round": 30}}, [])
    res = run_recipe(study, order, planning, until="normalize")
    return order, res


def test_a_goal_order_is_planned_from_its_goals(multitarget):
    order, res = multitarget
    assert is_goal_order(order) and not order.objectives
    report = res["fluence"].goal_report
    assert report is not None and len(report.rounds) == 3
    assert 1 <= report.chosen_round <= 3
    # every goal has its terms, each on a named region
    assert [t["goal"] for t in report.terms] == [g.label() for g in order.goals]
    assert all(t["aims_gy"] and t["region"] for t in report.terms)


def test_every_dose_level_receives_its_dose(multitarget):
    """Beamlets cover every target and each target is driven to its own level (50, 25, 12.5 Gy):
    D98 at least 70 % of the level (with the tests' 5 beams and 5 segments per beam; the benchmark's
    full settings meet every goal), median at most 120 % of it (the lower levels rise towards the
    central target across their shared face, far below the 50 Gy a single-level plan gives them)."""
    order, res = multitarget
    std, geo = res["standard_plan"], res["geometry"]
    dose = np.asarray(std.dose)
    for target, level in order.target_levels().items():
        values = dose[geo.dose_masks[target]]
        assert np.percentile(values, 2) >= 0.7 * level, target
        assert np.median(values) <= 1.2 * level, target


def test_goals_judged_and_reported(multitarget):
    order, res = multitarget
    std = res["standard_plan"]
    assert [g.label for g in std.goals] == [g.label() for g in order.goals]
    assert [g.rank for g in std.goals] == [g.rank for g in order.goals]
    # the prescription target's coverage goal holds after the normalisation (central D99 = 50 Gy)
    central = next(g for g in std.goals if g.structure == "CentralTarget" and g.op == ">=")
    assert central.met and central.value == pytest.approx(50.0, abs=0.05)
    for g in std.goals:
        if not g.met:
            assert std.goal_limits.get(g.label), f"no reason given for the missed {g.label}"


def test_treatable_limits_hold(multitarget, fast_planning):
    std = multitarget[1]["standard_plan"]
    segs = [len(b.segments) for b in std.plan.beams]
    assert max(segs) <= fast_planning["max_segments"]
    assert min(s.mu for b in std.plan.beams for s in b.segments) >= 2.0 - 1e-6  # MU per fraction
    assert std.open_field_mu > 0 and std.modulation > 1.0


def _masks(shape=(10, 10, 10)):
    ptv = np.zeros(shape, bool)
    ptv[3:7, 3:7, 3:7] = True
    cord = np.zeros(shape, bool)
    cord[5:9, 5:9, 5:9] = True  # overlaps the PTV by 2 x 2 x 2 voxels
    return {"PTV": ptv, "Cord": cord}


def _goal_order(cord_rank: int, ptv_rank: int = 2, cord_max: float = 40.0) -> object:
    return parse_order(
        {
            "prescription": {"target": "PTV", "total_dose_gy": 60.0, "fractions": 30},
            "goals": [
                {"structure": "PTV", "metric": "D95", "op": ">=", "value": 57.0, "rank": ptv_rank},
                {"structure": "Cord", "metric": "max", "op": "<=", "value": cord_max, "rank": cord_rank},
            ],
        }
    )


def test_contradictory_goals_of_equal_rank_are_refused():
    with pytest.raises(InputError) as e:
        goal_conflicts(_goal_order(cord_rank=2), _masks(), 0.125, {"PTV"})
    assert e.value.field == "goals" and e.value.status == 422
    assert "contradict" in str(e.value) and "Cord" in str(e.value)


def test_contradictory_goals_of_different_rank_are_reported():
    found = goal_conflicts(_goal_order(cord_rank=1), _masks(), 0.125, {"PTV"})
    assert len(found) == 1 and "PTV D95 >= 57 Gy cannot be met" in found[0]
    # no contradiction when the organ's limit is above the target's minimum
    assert goal_conflicts(_goal_order(cord_rank=2, cord_max=70.0), _masks(), 0.125, {"PTV"}) == []


def test_coverage_goal_without_a_dose_level_is_refused(fast_planning):
    study, _ = tg119_case("cshape", 8.0)
    order = parse_order(
        {
            "prescription": {"target": "PTV", "total_dose_gy": 50.0, "fractions": 25},
            "goals": [{"structure": "Core", "metric": "D95", "op": ">=", "value": 20.0}],
        }
    )
    with pytest.raises(InputError) as e:
        run_recipe(study, order, planning_request(fast_planning, []), until="normalize")
    assert e.value.field == "goals" and "dose_levels" in str(e.value)


def test_goal_on_a_missing_structure_is_refused(fast_planning):
    study, _ = tg119_case("cshape", 8.0)
    order = parse_order(
        {
            "prescription": {"target": "PTV", "total_dose_gy": 50.0, "fractions": 25},
            "goals": [{"structure": "Parotid", "metric": "mean", "op": "<=", "value": 26.0}],
        }
    )
    with pytest.raises(InputError) as e:
        run_recipe(study, order, planning_request(fast_planning, []), until="normalize")
    assert "Parotid" in str(e.value)


def test_goal_objectives_keep_every_level():
    """What a conversion optimises for a goal order: each level's under/over-dose terms and one term per goal."""
    order = parse_order(
        {
            "prescription": {"target": "PTV70", "total_dose_gy": 70.0, "fractions": 35},
            "dose_levels": {"PTV56": 56.0},
            "goals": [
                {"structure": "PTV56", "metric": "D99", "op": ">=", "value": 53.2},
                {"structure": "Cord", "metric": "D0.1cc", "op": "<=", "value": 45.0, "rank": 1},
                {"structure": "Parotid", "metric": "mean", "op": "<=", "value": 26.0, "rank": 3},
            ],
        }
    )
    specs = goal_objectives(order, planning_request({}, []).autoplan)
    kinds = [(s.structure, s.kind.value, s.dose_gy) for s in specs]
    assert ("PTV70", "squared_underdose", 70.0) in kinds and ("PTV56", "squared_underdose", 56.0) in kinds
    assert ("PTV56", "min_dvh", 53.2) in kinds and ("Cord", "max_dose", 45.0) in kinds
    assert ("Parotid", "mean_dose", 26.0) in kinds
