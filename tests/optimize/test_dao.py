"""Direct aperture optimisation: analytic aperture gradients, and DAO on sequenced segments keeps
the plan deliverable, honours the minimum MU and segment count, and recovers the fluence quality."""

import numpy as np
import pytest

from rayrt.domain.plan import Beam, Plan
from rayrt.optimize.dao import BeamApertures, DAOOptions, aperture_gradient, aperture_weights, optimize_apertures
from rayrt.optimize.fmo import FluenceOptions, optimize_fluence
from rayrt.optimize.problem import build_problem
from rayrt.optimize.sequencing import get_sequencer
from rayrt.optimize.synthetic import c_shape_case, synthetic_machine, tg119_like_order
from rayrt.qa.deliverability import check_plan


@pytest.fixture(scope="module")
def setup():
    case = c_shape_case(gantry_deg=(0, 72, 144, 216, 288), n_slices=5)
    p = build_problem(tg119_like_order(core_gy=10), case.masks, case.dij, beam_slices=case.beam_slices)
    fr = optimize_fluence(p, FluenceOptions(max_iterations=200))
    return case, p, fr


def test_aperture_gradient_matches_finite_differences(setup):
    case, p, fr = setup
    m = synthetic_machine(5.0, 60, interdigitation=True)
    m.mlc.leaf_end_transmission_mm = 1.0
    lay = case.layouts[0]
    segs = get_sequencer("sweep").sequence(lay.to_map(fr.w[case.beam_slices[0]]), lay, m, 10)
    ba = BeamApertures.from_segments(segs, lay, m)
    ba.sc = np.linspace(0.95, 1.05, ba.m.size)
    rng = np.random.default_rng(0)
    # move tips off bixel edges (the model is piecewise linear there)
    ba.x1[:, ba.pairs] += rng.uniform(0.3, 1.2, ba.x1[:, ba.pairs].shape)
    ba.x2[:, ba.pairs] -= rng.uniform(0.3, 1.2, ba.x2[:, ba.pairs].shape)
    J = np.full((ba.m.size, ba.pairs.size, lay.shape[1]), 0.7)
    G = rng.normal(size=lay.shape)

    def f():
        return float(np.sum(G * ba.fluence(J)))

    gm, g1, g2 = aperture_gradient(ba, G, J)
    h = 1e-4
    for s in range(min(3, ba.m.size)):
        m0 = ba.m[s]
        ba.m[s] = m0 + h
        fp = f()
        ba.m[s] = m0 - h
        fm = f()
        ba.m[s] = m0
        assert gm[s] == pytest.approx((fp - fm) / (2 * h), rel=1e-6, abs=1e-9)
        open_pairs = np.flatnonzero(ba.x2[s, ba.pairs] - ba.x1[s, ba.pairs] > 2)[:4]
        for k in open_pairs:
            pidx = ba.pairs[k]
            for arr, g in ((ba.x1, g1), (ba.x2, g2)):
                x0 = arr[s, pidx]
                arr[s, pidx] = x0 + h
                fp = f()
                arr[s, pidx] = x0 - h
                fm = f()
                arr[s, pidx] = x0
                assert g[s, k] == pytest.approx((fp - fm) / (2 * h), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("interdigitation", [True, False])
def test_dao_improves_sequenced_plan_and_stays_deliverable(setup, interdigitation):
    case, p, fr = setup
    m = synthetic_machine(5.0, 60, interdigitation=interdigitation, min_gap_mm=1.0)
    segs = [
        get_sequencer("sweep").sequence(lay.to_map(fr.w[sl]), lay, m, 8)
        for lay, sl in zip(case.layouts, case.beam_slices)
    ]
    start = [len(s) for s in segs]
    min_w = 20.0
    res = optimize_apertures(
        p, case.layouts, segs, m, DAOOptions(outer_rounds=2, iterations_per_round=40, min_mu_weight=min_w)
    )
    assert res.objective < res.objective_start
    assert res.objective < 3.0 * fr.objective  # close to the fluence optimum despite 8 segments per beam
    assert all(len(a) <= b for a, b in zip(res.segments, start))
    for beam_segs in res.segments:
        for s in beam_segs:
            assert s.mu >= min_w - 1e-6
    plan = Plan(
        machine=m.name,
        beams=[
            Beam(isocenter_mm=(0, 0, 0), segments=[s.model_copy(update={"mu": s.mu / 20}) for s in bs])
            for bs in res.segments
        ],
    )
    rep = check_plan(plan, m)
    assert rep.deliverable, [v.message for v in rep.violations]
    # the returned weights are the apertures' fluence (here recomputed without the leaf transmission)
    bas = [BeamApertures.from_segments(s, lay, m) for s, lay in zip(res.segments, case.layouts)]
    w_open = aperture_weights(bas, case.beam_slices, p.num_beamlets)
    assert np.corrcoef(res.weights, w_open)[0, 1] > 0.95


def test_open_pairs_keeps_one_bixel_strips_at_the_minimum_gap():
    """MLCi2-like (5 mm minimum gap = the bixel width): a 5 mm strip inside the jaws is an opening,
    a pair at the gap outside the jaws (parked) is closed; DAO keeps the strip segment."""
    from rayrt.domain.plan import Segment
    from rayrt.optimize.dao import open_pairs

    m = synthetic_machine(10.0, 8, interdigitation=False, min_gap_mm=5.0)
    x1 = [-2.5, -2.5, 10.0, 10.0, 10.0, -2.5, -2.5, -2.5]
    x2 = [2.5, 2.5, 15.0, 15.0, 20.0, 2.5, 2.5, 2.5]
    seg = Segment(x1_mm=x1, x2_mm=x2, jaw_x_mm=(10.0, 20.0), jaw_y_mm=(-20.0, 10.0), mu=5.0)
    op = open_pairs([seg], m)[0]
    assert op.tolist() == [False, False, True, True, True, False, False, False]


def test_dao_keeps_segment_area_width_and_mu(setup):
    """DAO with segment limits: every returned segment has at least the minimum area and MU, no
    open pair narrower than the minimum width, and segments never multiply."""
    from rayrt.domain.segments import SegmentLimits, narrow_open_pairs, segment_open_area_cm2

    case, p, fr = setup
    m = synthetic_machine(5.0, 60, interdigitation=True, min_gap_mm=0.5)
    lim = SegmentLimits(min_area_cm2=3.0, min_width_mm=6.0, max_segments=8)
    segs = [
        get_sequencer("sweep").sequence(lay.to_map(fr.w[sl]), lay, m, 8, limits=lim)
        for lay, sl in zip(case.layouts, case.beam_slices)
    ]
    min_w = 20.0
    res = optimize_apertures(
        p,
        case.layouts,
        segs,
        m,
        DAOOptions(
            outer_rounds=2,
            iterations_per_round=30,
            min_mu_weight=min_w,
            min_area_cm2=lim.min_area_cm2,
            min_width_mm=lim.min_width_mm,
        ),
    )
    assert res.objective < res.objective_start
    assert all(len(a) <= len(b) for a, b in zip(res.segments, segs))
    for beam_segs in res.segments:
        assert beam_segs
        for s in beam_segs:
            assert s.mu >= min_w - 1e-6
            assert segment_open_area_cm2(s, m) >= lim.min_area_cm2 - 1e-6
            assert not narrow_open_pairs(s, m, lim.min_width_mm).any()


def test_dao_removes_a_segment_below_the_minimum_area(setup):
    """A segment under the minimum area is removed and the others' weights re-optimised (its dose
    re-distributed): the count drops by one, the objective does not end above its start."""
    from rayrt.domain.segments import segment_open_area_cm2
    from rayrt.optimize.sequencing.base import to_segment

    case, p, fr = setup
    m = synthetic_machine(5.0, 60, interdigitation=True, min_gap_mm=0.5)
    lays = case.layouts
    segs = [get_sequencer("sweep").sequence(lay.to_map(fr.w[sl]), lay, m, 6) for lay, sl in zip(lays, case.beam_slices)]
    # a 1 cm x 1 cm segment added to beam 0 inside its beamlet grid
    lay = lays[0]
    P = m.mlc.num_pairs
    b = m.mlc.boundaries
    x1, x2 = np.full(P, -100.0), np.full(P, -99.5)
    yc = 0.5 * (lay.row_edges_mm[0] + lay.row_edges_mm[-1])
    sel = (b[:-1] >= yc - 5.0 - 1e-6) & (b[1:] <= yc + 5.0 + 1e-6)
    xc = float(lay.col_edges_mm[lay.col_edges_mm.size // 2])
    x1[sel], x2[sel] = xc - 5.0, xc + 5.0
    tiny = to_segment(x1, x2, sel, 30.0, m)
    assert segment_open_area_cm2(tiny, m) == pytest.approx(1.0)
    segs[0] = segs[0] + [tiny]
    n_in = sum(len(s) for s in segs)
    res = optimize_apertures(
        p, lays, segs, m, DAOOptions(outer_rounds=1, iterations_per_round=20, min_area_cm2=2.0, optimize_leaves=False)
    )
    assert res.small_area_segments >= 1
    assert sum(len(s) for s in res.segments) <= n_in - 1
    assert all(segment_open_area_cm2(s, m) >= 2.0 - 1e-6 for bs in res.segments for s in bs)
    assert res.objective <= res.objective_start * 1.05
