"""Clinical goals in the medical order: metric parsing, goal validation, SIB dose levels."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from rayrt.domain import InputError, MedicalOrder
from rayrt.domain.goals import ClinicalGoal, GoalKind, parse_metric
from rayrt.domain.order import parse_order

ORDER = {
    "prescription": {"target": "PTV70", "total_dose_gy": 70, "fractions": 35},
    "dose_levels": {"PTV56": 56, "PTV63": 63},
    "goals": [
        {"structure": "SpinalCord", "metric": "D0.1cc", "op": "<=", "value": 45, "rank": 1},
        {"structure": "PTV70", "metric": "D99", "op": ">=", "value": 66.5, "rank": 2},
        {"structure": "Lung", "metric": "V20Gy", "op": "<=", "value": 30, "rank": 3},
    ],
}


def _order(**changes) -> dict:
    data = copy.deepcopy(ORDER)
    data.update(changes)
    return data


# ---------------------------------------------------------------------------- parse_metric
@pytest.mark.parametrize(
    ("metric", "kind", "x"),
    [
        ("D95", GoalKind.dose_at_volume_pct, 95.0),
        ("D95%", GoalKind.dose_at_volume_pct, 95.0),
        ("D0", GoalKind.dose_at_volume_pct, 0.0),
        ("D100", GoalKind.dose_at_volume_pct, 100.0),
        ("D99.5", GoalKind.dose_at_volume_pct, 99.5),
        (" D2 ", GoalKind.dose_at_volume_pct, 2.0),
        ("D0.1cc", GoalKind.dose_at_volume_cc, 0.1),
        ("D0.03cc", GoalKind.dose_at_volume_cc, 0.03),
        ("D2cc", GoalKind.dose_at_volume_cc, 2.0),
        ("D150cc", GoalKind.dose_at_volume_cc, 150.0),  # cc above 100 is a volume, not a percentage
        ("V20Gy", GoalKind.volume_at_dose, 20.0),
        ("V0Gy", GoalKind.volume_at_dose, 0.0),
        ("V12.5Gy", GoalKind.volume_at_dose, 12.5),
        ("V150Gy", GoalKind.volume_at_dose, 150.0),
        ("max", GoalKind.max, None),
        ("Max", GoalKind.max, None),
        ("Dmax", GoalKind.max, None),
        ("DMAX", GoalKind.max, None),
        ("dmax", GoalKind.max, None),
        ("min", GoalKind.min, None),
        ("Dmin", GoalKind.min, None),
        ("MIN", GoalKind.min, None),
        ("mean", GoalKind.mean, None),
        ("dmean", GoalKind.mean, None),
        ("Dmean", GoalKind.mean, None),
        ("MEAN", GoalKind.mean, None),
    ],
)
def test_parse_metric_every_form(metric, kind, x):
    got_kind, got_x = parse_metric(metric)
    assert got_kind is kind
    if x is None:
        assert got_x is None
    else:
        assert got_x == pytest.approx(x, abs=0, rel=1e-15)


@pytest.mark.parametrize(
    "metric",
    ["", "D", "D-5", "D100.5", "D101", "D95cm", "V20", "V20cGy", "V-1Gy", "Vmax", "median", "DD95", "95", "D 95"],
)
def test_parse_metric_invalid_raises_value_error(metric):
    with pytest.raises(ValueError):
        parse_metric(metric)


def test_parse_metric_over_100_percent_message():
    with pytest.raises(ValueError, match="above 100 %"):
        parse_metric("D100.5")
    with pytest.raises(ValueError, match="unknown goal metric 'V20'"):
        parse_metric("V20")


# ---------------------------------------------------------------------------- ClinicalGoal
def test_goal_properties():
    g = ClinicalGoal(structure="Lung", metric="V20Gy", op="<=", value=30)
    assert g.kind is GoalKind.volume_at_dose and g.parameter == 20.0
    assert not g.is_dose and not g.is_lower_bound
    assert g.rank == 2  # default rank
    c = ClinicalGoal(structure="PTV", metric="D98", op=">=", value=66.5, rank=1)
    assert c.kind is GoalKind.dose_at_volume_pct and c.parameter == 98.0
    assert c.is_dose and c.is_lower_bound
    m = ClinicalGoal(structure="Parotid", metric="dmean", op="<=", value=26)
    assert m.kind is GoalKind.mean and m.parameter is None and m.is_dose


def test_goal_label():
    assert ClinicalGoal(structure="SpinalCord", metric="D0.1cc", op="<=", value=45).label() == (
        "SpinalCord D0.1cc <= 45 Gy"
    )
    assert ClinicalGoal(structure="PTV", metric="D99", op=">=", value=66.5).label() == "PTV D99 >= 66.5 Gy"
    assert ClinicalGoal(structure="Lung", metric="V20Gy", op="<=", value=30).label() == "Lung V20Gy <= 30 %"
    assert ClinicalGoal(structure="Lung", metric="V20Gy", op="<=", value=30, unit="%").label() == ("Lung V20Gy <= 30 %")
    assert ClinicalGoal(structure="Liver", metric="V21Gy", op="<=", value=700, unit="cc").label() == (
        "Liver V21Gy <= 700 cc"
    )


@pytest.mark.parametrize("metric", ["D95", "D0.1cc", "max", "min", "mean", "Dmax"])
@pytest.mark.parametrize("unit", ["%", "cc"])
def test_unit_only_for_volume_metrics(metric, unit):
    with pytest.raises(ValidationError, match="'unit' applies to V<x>Gy metrics only"):
        ClinicalGoal(structure="X", metric=metric, op="<=", value=10, unit=unit)


def test_volume_goal_above_100_percent_refused_but_cc_allowed():
    with pytest.raises(ValidationError, match="a volume above 100 %"):
        ClinicalGoal(structure="Lung", metric="V20Gy", op="<=", value=100.5)
    with pytest.raises(ValidationError, match="a volume above 100 %"):
        ClinicalGoal(structure="Lung", metric="V20Gy", op="<=", value=101, unit="%")
    assert ClinicalGoal(structure="Lung", metric="V20Gy", op="<=", value=100).value == 100
    assert ClinicalGoal(structure="Liver", metric="V20Gy", op="<=", value=700, unit="cc").unit == "cc"
    # a dose goal above 100 Gy is fine (a dose, not a volume)
    assert ClinicalGoal(structure="PTV", metric="max", op="<=", value=110).value == 110


@pytest.mark.parametrize(
    "changes",
    [
        {"op": "<"},
        {"op": "=="},
        {"value": -1},
        {"rank": 0},
        {"rank": 11},
        {"structure": ""},
        {"unit": "ml"},
        {"colour": "red"},  # extra fields are refused
    ],
)
def test_goal_field_validation(changes):
    data = {"structure": "Lung", "metric": "V20Gy", "op": "<=", "value": 30, **changes}
    with pytest.raises(ValidationError):
        ClinicalGoal(**data)


@pytest.mark.parametrize("rank", [1, 10])
def test_goal_rank_bounds_inclusive(rank):
    assert ClinicalGoal(structure="X", metric="max", op="<=", value=1, rank=rank).rank == rank


# ---------------------------------------------------------------------------- through parse_order
@pytest.mark.parametrize(
    ("index", "bad", "text"),
    [
        (0, {"metric": "D95cm"}, "unknown goal metric"),
        (1, {"metric": "D120"}, "above 100 %"),
        (2, {"metric": "V20"}, "unknown goal metric"),
        (2, {"value": 130}, "above 100 %"),
        (1, {"unit": "cc"}, "'unit' applies to V<x>Gy metrics only"),
    ],
)
def test_parse_order_bad_goal_names_field(index, bad, text):
    data = _order()
    data["goals"][index].update(bad)
    with pytest.raises(InputError) as e:
        parse_order(data, "in test.yaml")
    assert e.value.field == f"goals.{index}"
    assert f"field 'goals.{index}'" in e.value.message
    assert text in e.value.message
    assert e.value.kind == "order" and e.value.status == 422


def test_parse_order_bad_goal_op_names_subfield():
    data = _order()
    data["goals"][1]["op"] = ">"
    with pytest.raises(InputError) as e:
        parse_order(data)
    assert e.value.field == "goals.1.op"


def test_parse_order_with_goals_and_levels():
    order = parse_order(_order())
    assert [g.kind for g in order.goals] == [
        GoalKind.dose_at_volume_cc,
        GoalKind.dose_at_volume_pct,
        GoalKind.volume_at_dose,
    ]
    assert order.goals[0].rank == 1 and order.goals[0].parameter == pytest.approx(0.1)
    assert order.dose_levels == {"PTV56": 56.0, "PTV63": 63.0}


# ---------------------------------------------------------------------------- dose levels
def test_target_levels_highest_first():
    order = parse_order(_order())
    levels = order.target_levels()
    assert list(levels) == ["PTV70", "PTV63", "PTV56"]
    assert levels == {"PTV70": 70.0, "PTV63": 63.0, "PTV56": 56.0}


def test_target_levels_without_dose_levels_is_the_prescription():
    order = parse_order(_order(dose_levels={}))
    assert order.target_levels() == {"PTV70": 70.0}


def test_prescription_target_at_its_own_level_accepted():
    order = parse_order(_order(dose_levels={"PTV70": 70, "PTV56": 56}))
    assert list(order.target_levels().items()) == [("PTV70", 70.0), ("PTV56", 56.0)]


def test_level_at_the_prescription_accepted():
    order = parse_order(_order(dose_levels={"PTV_boost2": 70.0}))
    assert order.target_levels()["PTV_boost2"] == 70.0


@pytest.mark.parametrize(
    ("levels", "text"),
    [
        ({"PTV56": 56, "PTV80": 80}, "PTV80 at 80 Gy is above the prescription (70 Gy to PTV70)"),
        ({"PTV56": 70.01}, "above the prescription"),
        ({"PTV70": 66}, "the prescription target PTV70 is at 66 Gy but prescribed 70 Gy"),
        ({"PTV56": 0}, "must be > 0 Gy"),
        ({"PTV56": -5}, "must be > 0 Gy"),
    ],
)
def test_bad_dose_levels_refused_with_field(levels, text):
    with pytest.raises(InputError) as e:
        parse_order(_order(dose_levels=levels))
    assert e.value.field == "dose_levels"
    assert text in e.value.message


def test_structure_names_include_goals_and_levels():
    order = parse_order(_order())
    assert order.structure_names() == {"PTV70", "PTV63", "PTV56", "SpinalCord", "Lung"}


def test_check_structures_names_missing_goal_structure():
    order = MedicalOrder.model_validate(_order())
    order.check_structures(["PTV70", "PTV63", "PTV56", "SpinalCord", "Lung", "BODY"])
    with pytest.raises(InputError) as e:
        order.check_structures(["PTV70", "PTV63", "PTV56", "Lung", "BODY"])
    assert "'SpinalCord'" in e.value.message
    assert "'Lung'" not in e.value.message.split(";")[0]
    goal = next(n for n, g in enumerate(order.goals) if g.structure == "SpinalCord")
    assert e.value.field == f"goals.{goal}.structure"  # where the unknown name stands, for a form to point at


def test_check_structures_names_missing_level_target():
    order = MedicalOrder.model_validate(_order())
    with pytest.raises(InputError, match=r"unknown structure\(s\) 'PTV63'; "):
        order.check_structures(["PTV70", "PTV56", "SpinalCord", "Lung"])


def test_the_schema_carries_the_worked_head_and_neck_example():
    """`rayrt schema order` shows a worked head-and-neck goal order, and it is a valid order."""
    from rayrt.domain.order import HEAD_AND_NECK_EXAMPLE, MedicalOrder

    schema = MedicalOrder.model_json_schema()
    assert schema["examples"] == [HEAD_AND_NECK_EXAMPLE]
    order = parse_order(HEAD_AND_NECK_EXAMPLE)
    assert list(order.target_levels()) == ["PTV70", "PTV63", "PTV56"]
    assert {g.rank for g in order.goals} == {1, 2, 3, 4} and not order.objectives
