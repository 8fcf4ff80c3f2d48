"""The standard machine is no looser than the strictest shipped machine: a plan optimised on it is
treatable on every machine it may be converted to (segment MU, MU per beam, segments per beam,
segment area and width, the span of one leaf bank's tips). Adding a machine with a stricter limit
fails here until the standard machine (and its twin) follow."""

import pytest
from helpers.paths import REPO

from rayrt.machines import load_machine

MACHINE_FILES = sorted((REPO / "configs" / "machines").glob("*.yaml"))
MACHINES = [load_machine(p) for p in MACHINE_FILES]
STANDARDS = [m for m in MACHINES if m.name in ("standard", "standard_twin") or m.standard]
REAL = [m for m in MACHINES if m not in STANDARDS]

# limit -> True when a larger value is stricter
RULES = {
    "min_mu_per_segment": True,
    "min_segment_area_cm2": True,
    "min_segment_width_mm": True,
    "max_mu_per_beam": False,
    "max_segments_per_beam": False,
}
# MLC rule -> True when a larger value is stricter (interdigitation and the minimum gap differ by
# design: a conversion to an MLC without interdigitation re-sequences with more segments)
MLC_RULES = {
    "max_leaf_span_mm": False,
}


def test_there_are_standard_and_real_machines():
    assert {m.name for m in STANDARDS} >= {"standard", "standard_twin"}
    assert len(REAL) >= 5


def looser_limits(std, machines) -> list[str]:
    """Every limit in which ``std`` is looser than one of ``machines``."""
    out = []
    for part, prefix, rules in (("limits", "", RULES), ("mlc", "mlc.", MLC_RULES)):
        for limit, larger_is_stricter in rules.items():
            mine = getattr(getattr(std, part), limit)
            for m in machines:
                other = getattr(getattr(m, part), limit)
                if (mine < other) if larger_is_stricter else (mine > other):
                    out.append(f"{std.name}.{prefix}{limit} = {mine} is looser than {m.name}'s {other}")
    return out


@pytest.mark.parametrize("std", STANDARDS, ids=lambda m: m.name)
def test_standard_no_looser_than_any_shipped_machine(std):
    bad = looser_limits(std, REAL)
    assert not bad, "; ".join(bad) + f": tighten configs/machines/{std.name}.yaml"


def test_a_stricter_new_machine_is_caught():
    std = next(m for m in STANDARDS if m.name == "standard")
    stricter = REAL[0].model_copy(deep=True)
    stricter.limits.min_segment_area_cm2 = std.limits.min_segment_area_cm2 + 1.0
    stricter.limits.max_segments_per_beam = std.limits.max_segments_per_beam - 1
    stricter.mlc.max_leaf_span_mm = std.mlc.max_leaf_span_mm - 10.0
    bad = looser_limits(std, [stricter])
    assert len(bad) == 3 and "min_segment_area_cm2" in " ".join(bad) and "mlc.max_leaf_span_mm" in bad[2]


@pytest.mark.parametrize("m", REAL, ids=lambda m: m.name)
def test_real_machines_carry_segment_limits(m):
    """Every real machine states a minimum segment area (a few cm²) and a minimum opening about a
    leaf width; MLCs whose minimum gap is a real strip (MLCi2) at least that gap."""
    assert 0.5 <= m.limits.min_segment_area_cm2 <= 10.0
    assert 1.0 <= m.limits.min_segment_width_mm <= 10.0
    assert m.limits.min_segment_width_mm >= m.mlc.min_gap_mm


def test_standard_twin_has_the_standard_limits():
    by = {m.name: m for m in MACHINES}
    assert by["standard"].limits == by["standard_twin"].limits
