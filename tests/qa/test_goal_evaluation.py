"""Clinical goals judged on a dose: metric values on hand-computable doses, met and margin."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rayrt.domain.goals import ClinicalGoal
from rayrt.qa.dvh import dose_at_volume
from rayrt.qa.goals import evaluate_goal, evaluate_goals, goal_value

DOSES = np.arange(1.0, 101.0)  # 100 voxels at 1, 2, ..., 100 Gy
VOXEL_CC = 0.05  # 100 voxels -> 5 cc


def _goal(metric: str, op: str = "<=", value: float = 0.0, **kw) -> ClinicalGoal:
    return ClinicalGoal(structure="S", metric=metric, op=op, value=value, **kw)


def test_mean_max_min():
    rng = np.random.default_rng(3)
    shuffled = rng.permutation(DOSES).reshape(4, 5, 5)  # shape and order do not matter
    assert goal_value(_goal("mean"), shuffled, VOXEL_CC) == 50.5
    assert goal_value(_goal("Dmean"), shuffled, VOXEL_CC) == 50.5
    assert goal_value(_goal("max"), shuffled, VOXEL_CC) == 100.0
    assert goal_value(_goal("Dmax"), shuffled, VOXEL_CC) == 100.0
    assert goal_value(_goal("min"), shuffled, VOXEL_CC) == 1.0


def test_dose_at_volume_pct_by_mid_rank_interpolation():
    # hottest 50 % of 1..100: mid-rank position 0.5 * 100 - 0.5 = 49.5 -> between 51 and 50 Gy
    assert goal_value(_goal("D50"), DOSES, VOXEL_CC) == pytest.approx(50.5, abs=1e-12)
    assert goal_value(_goal("D50"), DOSES, VOXEL_CC) == pytest.approx(dose_at_volume(DOSES, 50.0), abs=1e-12)
    # D95: position 94.5 -> 0.5 * 6 + 0.5 * 5
    assert goal_value(_goal("D95"), DOSES, VOXEL_CC) == pytest.approx(5.5, abs=1e-12)
    # D2: position 1.5 -> between 99 and 98
    assert goal_value(_goal("D2"), DOSES, VOXEL_CC) == pytest.approx(98.5, abs=1e-12)
    # the extremes are the maximum and the minimum
    assert goal_value(_goal("D0"), DOSES, VOXEL_CC) == 100.0
    assert goal_value(_goal("D100"), DOSES, VOXEL_CC) == 1.0
    for x in (1.0, 33.3, 77.7, 99.0):
        assert goal_value(_goal(f"D{x}"), DOSES, VOXEL_CC) == pytest.approx(dose_at_volume(DOSES, x), abs=1e-12)


def test_dose_at_volume_cc_via_volume_fraction():
    # 5 cc in all: D1cc is D20, D2.5cc is D50, D0.5cc is D10
    for cc, pct in ((1.0, 20.0), (2.5, 50.0), (0.5, 10.0), (4.75, 95.0)):
        got = goal_value(_goal(f"D{cc}cc"), DOSES, VOXEL_CC)
        assert got == pytest.approx(dose_at_volume(DOSES, pct), abs=1e-12)
    assert goal_value(_goal("D1cc"), DOSES, VOXEL_CC) == pytest.approx(80.5, abs=1e-12)


def test_dose_at_volume_cc_small_and_large_volumes():
    # less than half a voxel (0.025 cc) -> the maximum
    assert goal_value(_goal("D0.01cc"), DOSES, VOXEL_CC) == 100.0
    assert goal_value(_goal("D0.025cc"), DOSES, VOXEL_CC) == 100.0
    # more than the structure's volume -> the minimum (capped at 100 %)
    assert goal_value(_goal("D5cc"), DOSES, VOXEL_CC) == 1.0
    assert goal_value(_goal("D50cc"), DOSES, VOXEL_CC) == 1.0


def test_volume_at_dose_in_percent_and_cc():
    # 81 voxels (20..100 Gy) of 100 receive >= 20 Gy
    assert goal_value(_goal("V20Gy"), DOSES, VOXEL_CC) == pytest.approx(81.0, abs=1e-12)
    assert goal_value(_goal("V20Gy", unit="%"), DOSES, VOXEL_CC) == pytest.approx(81.0, abs=1e-12)
    assert goal_value(_goal("V20Gy", unit="cc"), DOSES, VOXEL_CC) == pytest.approx(81 * VOXEL_CC, abs=1e-12)
    # just above a voxel's dose: that voxel no longer counts
    assert goal_value(_goal("V20.5Gy"), DOSES, VOXEL_CC) == pytest.approx(80.0, abs=1e-12)
    assert goal_value(_goal("V0Gy"), DOSES, VOXEL_CC) == 100.0
    assert goal_value(_goal("V101Gy"), DOSES, VOXEL_CC) == 0.0
    assert goal_value(_goal("V101Gy", unit="cc"), DOSES, VOXEL_CC) == 0.0


@pytest.mark.parametrize(
    ("metric", "op", "goal", "met", "margin"),
    [
        ("mean", "<=", 60.0, True, 9.5),
        ("mean", "<=", 40.0, False, -10.5),
        ("mean", ">=", 40.0, True, 10.5),
        ("mean", ">=", 60.0, False, -9.5),
        ("max", "<=", 90.0, False, -10.0),
        ("min", ">=", 0.5, True, 0.5),
        ("D50", ">=", 50.0, True, 0.5),
        ("V20Gy", "<=", 80.0, False, -1.0),
        ("V20Gy", ">=", 80.0, True, 1.0),
    ],
)
def test_evaluate_goal_met_and_margin_sign(metric, op, goal, met, margin):
    ev = evaluate_goal(_goal(metric, op, goal), DOSES, VOXEL_CC)
    assert ev.met is met
    assert ev.margin == pytest.approx(margin, abs=1e-12)
    assert (ev.margin > 0) is met


@pytest.mark.parametrize(("metric", "op"), [("mean", "<="), ("mean", ">="), ("max", "<="), ("V20Gy", "<=")])
def test_exact_boundary_counts_as_met(metric, op):
    value = goal_value(_goal(metric), DOSES, VOXEL_CC)
    ev = evaluate_goal(_goal(metric, op, value), DOSES, VOXEL_CC)
    assert ev.met is True
    assert ev.margin == 0.0


def test_evaluation_fields():
    g = ClinicalGoal(structure="Cord", metric="D0.1cc", op="<=", value=45, rank=1)
    dose = np.full(40, 44.0)
    ev = evaluate_goal(g, dose, 0.01)
    assert (ev.structure, ev.metric, ev.op, ev.goal, ev.rank) == ("Cord", "D0.1cc", "<=", 45.0, 1)
    assert ev.value == 44.0 and ev.met and ev.margin == pytest.approx(1.0)
    assert ev.label == "Cord D0.1cc <= 45 Gy"


@pytest.mark.parametrize(("metric", "op"), [("mean", "<="), ("D95", ">="), ("V20Gy", "<="), ("D0.1cc", "<=")])
def test_empty_structure_is_nan_and_not_met(metric, op):
    g = _goal(metric, op, 0.0)
    assert math.isnan(goal_value(g, np.zeros(0), VOXEL_CC))
    ev = evaluate_goal(g, np.zeros(0), VOXEL_CC)
    assert math.isnan(ev.value) and math.isnan(ev.margin)
    assert ev.met is False


def test_evaluate_goals_uses_each_structures_mask():
    dose = np.arange(1.0, 101.0).reshape(4, 5, 5)
    a = np.zeros(dose.shape, bool)
    a.ravel()[:50] = True  # 1..50 Gy
    b = ~a  # 51..100 Gy
    goals = [
        ClinicalGoal(structure="A", metric="max", op="<=", value=50),
        ClinicalGoal(structure="B", metric="min", op=">=", value=52),
        ClinicalGoal(structure="B", metric="V75Gy", op="<=", value=13, unit="cc"),
    ]
    evs = evaluate_goals(goals, dose, {"A": a, "B": b}, 0.5)
    assert [e.value for e in evs] == [50.0, 51.0, pytest.approx(26 * 0.5)]
    assert [e.met for e in evs] == [True, False, True]
    assert [e.margin for e in evs] == [0.0, -1.0, pytest.approx(0.0)]


def test_qa_fails_a_plan_that_loses_a_goal_the_standard_plan_meets():
    """QA judges an order's clinical goals: met passes; missed by a converted plan while the
    standard plan meets it fails beyond 1 % of Rx (warns within); missed by both warns."""
    from rayrt.convert.release import release_blocking
    from rayrt.domain.order import parse_order
    from rayrt.imaging.volume import Grid, Volume
    from rayrt.qa.checks import dvh_criteria_checks

    grid = Grid(shape=(4, 5, 5), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0.0, 0.0, 0.0))
    ptv = np.zeros(grid.shape, bool)
    ptv[1:3] = True
    cord = np.zeros(grid.shape, bool)
    cord[3] = True
    order = parse_order(
        {
            "name": "qa goals",
            "prescription": {"target": "PTV", "total_dose_gy": 60.0, "fractions": 30},
            "goals": [
                {"structure": "PTV", "metric": "D99", "op": ">=", "value": 57.0, "rank": 2},
                {"structure": "Cord", "metric": "max", "op": "<=", "value": 10.0, "rank": 1},
            ],
        }
    )

    def dose(ptv_gy: float, cord_gy: float) -> Volume:
        a = np.zeros(grid.shape, np.float32)
        a[ptv] = ptv_gy
        a[cord] = cord_gy
        return Volume(a, grid, "dose_gy")

    masks = {"PTV": ptv, "Cord": cord}

    def status(plan: Volume, reference: Volume | None) -> dict[str, str]:
        checks = dvh_criteria_checks(plan, masks, order, reference=reference)
        return {c.name: c.status for c in checks if "clinical goal" in c.detail}

    standard = dose(60.0, 12.0)  # meets the PTV goal, misses the cord goal
    assert status(standard, None) == {"PTV D99 >= 57 Gy": "pass", "Cord max <= 10 Gy": "warn"}
    # converted: PTV 56.0 Gy loses the goal by 1 Gy > 0.6 Gy (1 % of 60): fail; cord missed by both: warn
    assert status(dose(56.0, 12.5), standard) == {"PTV D99 >= 57 Gy": "fail", "Cord max <= 10 Gy": "warn"}
    # within the tolerance: warn, which the release of a conversion does not wait on; a loss beyond it blocks
    assert status(dose(56.5, 12.5), standard)["PTV D99 >= 57 Gy"] == "warn"

    def blocking(plan: Volume) -> list[str]:  # the goals' blocking reasons (the order's own D95 criterion aside)
        reasons = release_blocking(dvh_criteria_checks(plan, masks, order, reference=standard))
        return [r for r in reasons if r.startswith(("PTV D99", "Cord"))]

    assert blocking(dose(56.5, 12.5)) == []
    # the release reads the check's typed role, not its wording
    within = {c.name: c for c in dvh_criteria_checks(dose(56.5, 12.5), masks, order, reference=standard)}
    assert within["PTV D99 >= 57 Gy"].blocks_release is False and within["Cord max <= 10 Gy"].blocks_release is False
    alone = {c.name: c for c in dvh_criteria_checks(standard, masks, order)}
    assert alone["Cord max <= 10 Gy"].blocks_release is None  # no standard plan to compare with: by category
    assert [r.split(":")[1].split()[0] for r in blocking(dose(56.0, 12.5))] == ["fail"]
    assert status(dose(58.0, 9.0), standard) == {"PTV D99 >= 57 Gy": "pass", "Cord max <= 10 Gy": "pass"}
