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
