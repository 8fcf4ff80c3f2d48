"""The deliverability checker finds every kind of violation, and passes a clean plan."""

import numpy as np
import pytest

from rayrt.domain.machine import AngleRange
from rayrt.domain.plan import Beam, Plan, Segment
from rayrt.optimize.synthetic import synthetic_machine
from rayrt.qa.deliverability import check_plan


def _machine():
    m = synthetic_machine(5.0, 10, interdigitation=False, min_gap_mm=1.0, span_mm=100.0)
    lim = m.limits.model_copy(
        update={"gantry": AngleRange(min_deg=0, max_deg=180), "max_segments_per_beam": 3, "max_mu_per_beam": 100.0}
    )
    mlc = m.mlc.model_copy(update={"max_overtravel_mm": 50.0, "min_position_mm": -150.0, "max_position_mm": 150.0})
    return m.model_copy(update={"limits": lim, "mlc": mlc})


def _good_segment(mu=10.0):
    x1 = np.full(10, -10.0)
    x2 = np.full(10, 10.0)
    x1[[0, 1, 8, 9]] = -0.5
    x2[[0, 1, 8, 9]] = 0.5
    return Segment(x1_mm=list(x1), x2_mm=list(x2), jaw_x_mm=(-10.0, 10.0), jaw_y_mm=(-15.0, 15.0), mu=mu)


def _plan(segs, gantry=0.0, machine="synthetic-5mm-noid"):
    return Plan(machine=machine, beams=[Beam(gantry_deg=gantry, isocenter_mm=(0, 0, 0), segments=segs)])


def test_clean_plan_passes():
    m = _machine()
    rep = check_plan(_plan([_good_segment()]), m)
    assert rep.deliverable, rep.violations
    assert rep.num_segments == 1 and rep.total_mu == 10.0


def _mutate(**kw):
    s = _good_segment()
    x1, x2 = list(s.x1_mm), list(s.x2_mm)
    for k, v in kw.items():
        side, p = k.split("_")
        (x1 if side == "x1" else x2)[int(p)] = v
    return s.model_copy(update={"x1_mm": x1, "x2_mm": x2})


@pytest.mark.parametrize(
    "segments,gantry,rule",
    [
        ([_mutate(x1_4=-160.0)], 0.0, "leaf_range"),
        ([_mutate(x1_4=60.0, x2_4=70.0, x1_3=55.0, x2_3=65.0, x1_5=55.0, x2_5=65.0)], 0.0, "overtravel"),
        ([_mutate(x1_4=0.0, x2_4=0.5)], 0.0, "min_gap"),
        ([_mutate(x1_4=-30.0, x2_4=-20.0)], 0.0, "interdigitation"),
        ([_mutate(x1_4=-105.0, x2_4=20.0, x1_3=-105.0, x1_5=-105.0)], 0.0, "leaf_span"),
        ([_good_segment().model_copy(update={"jaw_x_mm": (-250.0, 10.0)})], 0.0, "jaw_range"),
        ([_good_segment().model_copy(update={"jaw_y_mm": (15.0, -15.0)})], 0.0, "jaw_range"),
        ([_good_segment().model_copy(update={"jaw_x_mm": None})], 0.0, "jaw_presence"),
        ([_good_segment(mu=0.2)], 0.0, "mu"),
        ([_good_segment(mu=60.0), _good_segment(mu=60.0)], 0.0, "mu"),
        ([_good_segment()] * 4, 0.0, "segments"),
        ([], 0.0, "segments"),
        ([_good_segment()], 270.0, "angles"),
        ([_good_segment().model_copy(update={"x1_mm": [0.0] * 9, "x2_mm": [1.0] * 9})], 0.0, "leaf_count"),
    ],
)
def test_each_violation_is_found(segments, gantry, rule):
    m = _machine()
    rep = check_plan(_plan(segments, gantry), m)
    assert not rep.deliverable
    assert rule in rep.rules_violated(), [v.message for v in rep.violations]


def test_wrong_machine_name():
    rep = check_plan(_plan([_good_segment()], machine="other"), _machine())
    assert rep.rules_violated() == {"machine"}
