"""Dose mimicking of a conversion: the standard plan's DVH, capped below the order's goals."""

from __future__ import annotations


def test_dvh_mimicking_is_capped_below_the_orders_goals():
    """A converted plan mimics the standard plan's DVH, but never aims a DVH point above the
    order's soft max-DVH goal minus the margin (so it keeps the margin the standard plan had)."""
    from rayrt.convert.convert import max_dvh_caps
    from rayrt.imaging.phantoms import tg119_order

    caps = max_dvh_caps(tg119_order(), 1.0)
    assert caps == {("PTV", 10.0): 54.0, ("Core", 10.0): 24.0}
    assert max_dvh_caps(tg119_order(), None) == {}
