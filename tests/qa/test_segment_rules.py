"""QA deliverability flags untreatable segments: open area below the machine's minimum, MU below
its minimum, an opening narrower than its minimum width; a treatable segment passes."""

import numpy as np

from rayrt.domain.plan import Beam, Plan, Segment
from rayrt.machines import get_machine
from rayrt.qa.checks import deliverability_check
from rayrt.qa.deliverability import check_plan

M120 = get_machine("truebeam_m120")  # 2 cm², 5 mm, 0.5 MU


def _segment(half_width_mm: float, y_mm: float, mu: float = 5.0) -> Segment:
    """Pairs within |y| <= y_mm open over [-half, +half] mm; closed pairs parked under the X1 jaw."""
    b = M120.mlc.boundaries
    P = M120.mlc.num_pairs
    x1, x2 = np.full(P, -60.0), np.full(P, -59.5)
    sel = (b[:-1] >= -y_mm - 1e-6) & (b[1:] <= y_mm + 1e-6)
    x1[sel], x2[sel] = -half_width_mm, half_width_mm
    return Segment(
        x1_mm=list(x1),
        x2_mm=list(x2),
        jaw_x_mm=(-half_width_mm, half_width_mm),
        jaw_y_mm=(-y_mm, y_mm),
        mu=mu,
    )


def _plan(segs):
    return Plan(machine=M120.name, beams=[Beam(isocenter_mm=(0, 0, 0), segments=segs)])


def test_treatable_segment_passes():
    rep = check_plan(_plan([_segment(15.0, 10.0)]), M120)  # 3 cm x 2 cm = 6 cm²
    assert rep.deliverable, [v.message for v in rep.violations]


def test_small_segment_is_flagged():
    rep = check_plan(_plan([_segment(15.0, 10.0), _segment(5.0, 5.0)]), M120)  # 1 cm x 1 cm = 1 cm²
    assert not rep.deliverable
    bad = [v for v in rep.violations if v.rule == "segment_area"]
    assert len(bad) == 1 and bad[0].segment == 1 and "1.00 cm²" in bad[0].message
    qa = deliverability_check(_plan([_segment(5.0, 5.0)]), M120)
    assert qa.status == "fail"


def test_low_mu_and_narrow_opening_are_flagged():
    low = _segment(15.0, 10.0, mu=0.2)
    narrow = _segment(15.0, 10.0)
    x1, x2 = np.asarray(narrow.x1_mm), np.asarray(narrow.x2_mm)
    p = int(np.flatnonzero(x2 - x1 > 10)[0])
    x1[p], x2[p] = 0.0, 2.0  # a 2 mm opening on an open pair
    narrow = narrow.model_copy(update={"x1_mm": list(x1), "x2_mm": list(x2)})
    rules = check_plan(_plan([low, narrow]), M120).rules_violated()
    assert {"mu", "segment_width"} <= rules
