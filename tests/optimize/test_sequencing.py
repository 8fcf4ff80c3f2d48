"""Leaf sequencing: exact decompositions, leaf-pair resampling, and deliverable segments on every
shipped machine (configs/machines/*.yaml) and on a synthetic no-interdigitation MLC."""

import numpy as np
import pytest
from helpers.paths import REPO

from rayrt.domain.errors import InputError
from rayrt.domain.plan import Beam, Plan
from rayrt.optimize.dao import BeamApertures
from rayrt.optimize.layout import BeamletLayout
from rayrt.optimize.sequencing import get_sequencer, list_sequencers, make_deliverable
from rayrt.optimize.sequencing.decompose import reconstruct, sweep, xia_verhey
from rayrt.optimize.synthetic import synthetic_machine
from rayrt.qa.deliverability import check_plan

MACHINE_FILES = sorted((REPO / "configs" / "machines").glob("*.yaml"))


def _machines():
    from rayrt.machines import load_machine

    out = [load_machine(p) for p in MACHINE_FILES]
    out.append(synthetic_machine(10.0, 40, interdigitation=False, min_gap_mm=2.0, name="synthetic-mlci2-like"))
    out.append(
        synthetic_machine(2.5, 64, interdigitation=False, min_gap_mm=0.5, span_mm=60.0, name="synthetic-narrow-span")
    )
    return out


def test_shipped_machines_exist():
    assert MACHINE_FILES, "configs/machines/*.yaml should ship machine models"


@pytest.mark.parametrize("fn", [sweep, xia_verhey])
def test_decompositions_are_exact(fn):
    rng = np.random.default_rng(3)
    for _ in range(30):
        intensity = rng.integers(0, 7, (6, 11))
        intensity[rng.random(intensity.shape) < 0.25] = 0
        aps = fn(intensity)
        assert np.array_equal(reconstruct(aps, intensity.shape), intensity)
        for k, lo, hi in aps:
            assert k > 0 and np.all(hi >= lo)


def test_sweep_uses_minimum_mu():
    intensity = np.array([[1, 3, 2, 4, 0], [2, 2, 0, 1, 1]])
    total = sum(k for k, _, _ in sweep(intensity))
    pos = np.maximum(np.diff(np.concatenate([np.zeros((2, 1), int), intensity], axis=1), axis=1), 0).sum(axis=1)
    assert total == pos.max()  # = 5: the unidirectional minimum


def _fluence_case(row_mm=5.0, rows=16, cols=22):
    R, C = rows, cols
    lay = BeamletLayout(
        np.arange(-R / 2, R / 2 + 1) * row_mm, np.arange(-C / 2, C / 2 + 1) * 5.0, np.arange(R * C).reshape(R, C)
    )
    yy, xx = np.mgrid[0:R, 0:C]
    r2 = (yy - R / 2 + 0.5) ** 2 + (xx - C / 2 + 0.5) ** 2
    f = 10 * np.exp(-r2 / 40.0)
    f[r2 < 8] *= 0.25  # a cold core: rows with two separate open runs
    f[:, :2] = 0.0
    return lay, f


@pytest.mark.parametrize("machine", _machines(), ids=lambda m: m.name)
@pytest.mark.parametrize("name", ["sweep", "xia_verhey"])
def test_sequencing_is_deliverable_on_every_machine(machine, name):
    lay, f = _fluence_case()
    max_seg = min(15, machine.limits.max_segments_per_beam)
    res = get_sequencer(name).sequence_with_info(f, lay, machine, max_seg)
    assert 1 <= res.num_segments <= max_seg
    assert res.total_mu == pytest.approx(sum(s.mu for s in res.segments))
    # course MU here; give each segment at least the machine minimum for the check (copies: the
    # fluence check below uses the sequenced MU)
    segs = [s.model_copy(update={"mu": max(s.mu, machine.limits.min_mu_per_segment)}) for s in res.segments]
    plan = Plan(machine=machine.name, beams=[Beam(isocenter_mm=(0, 0, 0), segments=segs)])
    rep = check_plan(plan, machine)
    assert rep.deliverable, [v.message for v in rep.violations]
    # the segments reproduce the fluence (leaf-pair resampled) within the quantisation error
    ba = BeamApertures.from_segments(res.segments, lay, machine)
    ba.transmission, ba.half_dlg_mm = 0.0, 0.0
    pf, ids = lay.rows_to_pairs(f, machine.mlc)
    got = lay.rows_to_pairs(ba.fluence(), machine.mlc)[0]
    # (closed pairs inside the field keep the minimum gap open and leak: only judged where it is small)
    if res.dropped_mu == 0 and machine.mlc.min_gap_mm <= 1.0:
        unit = f.max() / res.levels
        assert np.abs(got - pf).max() <= 0.5 * unit + 0.35 * f.max()  # quantisation + min-gap / partial-bixel effects
        assert np.corrcoef(got.ravel(), pf.ravel())[0, 1] > 0.9


def test_rows_resampled_onto_wider_leaves():
    m = synthetic_machine(10.0, 40, interdigitation=True)
    lay = BeamletLayout(np.arange(-2, 3) * 5.0, np.arange(0, 4) * 5.0, np.arange(12).reshape(4, 3))
    f = np.array([[2.0, 0, 0], [4.0, 0, 0], [0, 6.0, 0], [0, 2.0, 0]])
    pf, ids = lay.rows_to_pairs(f, m.mlc)
    assert list(ids) == [19, 20]  # the two 10 mm pairs covering -10..10 mm
    np.testing.assert_allclose(pf, [[3.0, 0, 0], [0, 4.0, 0]])


def test_interdigitation_splits_conflicting_rows():
    m = synthetic_machine(5.0, 8, interdigitation=False, min_gap_mm=1.0)
    x1 = np.zeros(8)
    x2 = np.zeros(8)
    op = np.zeros(8, bool)
    x1[3], x2[3], op[3] = -30.0, -10.0, True  # pair 3 open on the left
    x1[4], x2[4], op[4] = 10.0, 30.0, True  # pair 4 open on the right: interdigitation needed
    parts = make_deliverable(x1, x2, op, m.mlc)
    assert len(parts) == 2
    opened = sorted(int(np.flatnonzero(p[2])[0]) for p in parts)
    assert opened == [3, 4]
    for a, b, o in parts:
        assert np.all(np.minimum(b[1:] - a[:-1], b[:-1] - a[1:]) >= m.mlc.min_gap_mm - 1e-9)
        assert np.all(b - a >= m.mlc.min_gap_mm - 1e-9)
    # the same aperture is one segment where interdigitation is allowed
    m2 = synthetic_machine(5.0, 8, interdigitation=True)
    assert len(make_deliverable(x1, x2, op, m2.mlc)) == 1


def test_closed_pairs_parked_outside_the_field():
    """Interdigitating MLC: a closed pair between open pairs parks with its minimum gap (and the
    rounded-tip leakage) wholly before the open field, i.e. under the X jaw that hugs the open
    leaves, or before ``park_before_mm`` (the beamlet grid's first edge on a jawless machine)."""
    from rayrt.optimize.sequencing.base import to_segment

    m = synthetic_machine(5.0, 8, interdigitation=True, min_gap_mm=1.0)
    hd = 0.5 * m.mlc.leaf_end_transmission_mm
    x1 = np.zeros(8)
    x2 = np.zeros(8)
    op = np.zeros(8, bool)
    x1[[2, 5]], x2[[2, 5]], op[[2, 5]] = [-20.0, -10.0], [10.0, 30.0], True  # pairs 3, 4 closed inside the field
    ((a, b, o),) = make_deliverable(x1, x2, op, m.mlc)
    seg = to_segment(a, b, o, 1.0, m)
    closed = ~o
    np.testing.assert_allclose(b[closed] - a[closed], m.mlc.min_gap_mm)
    assert np.all(b[closed] + hd <= seg.jaw_x_mm[0] + 1e-9)
    ((a2, b2, o2),) = make_deliverable(x1, x2, op, m.mlc, park_before_mm=-40.0)
    assert np.all(b2[~o2] + hd <= -40.0 + 1e-9)
    # jawless machine: the gap is outside the open field as well
    mj = synthetic_machine(5.0, 8, interdigitation=True, min_gap_mm=1.0, jaws=False)
    ((a3, b3, o3),) = make_deliverable(x1, x2, op, mj.mlc)
    assert np.all(b3[~o3] + hd <= a3[o3].min() + 1e-9)
    seg.mu = max(seg.mu, m.limits.min_mu_per_segment)
    rep = check_plan(Plan(machine=m.name, beams=[Beam(isocenter_mm=(0, 0, 0), segments=[seg])]), m)
    assert rep.deliverable, [v.message for v in rep.violations]


def test_registry():
    assert {"sweep", "xia_verhey"} <= set(list_sequencers())
    with pytest.raises(InputError):
        get_sequencer("nope")
    m = synthetic_machine()
    lay, f = _fluence_case()
    with pytest.raises(InputError):
        get_sequencer("sweep").sequence(-f, lay, m, 10)
    assert get_sequencer("sweep").sequence(np.zeros_like(f), lay, m, 10) == []


def test_no_interdigitation_splits_at_interior_closed_runs():
    """Without interdigitation a closed pair between open pairs must keep its minimum gap inside
    the open neighbours' overlap, i.e. inside the field: the aperture is split into runs of
    consecutive open pairs, whose closed pairs then lie beyond the run, under the Y jaws."""
    from rayrt.optimize.sequencing.base import to_segment

    m = synthetic_machine(10.0, 10, interdigitation=False, min_gap_mm=5.0)
    x1, x2, op = np.zeros(10), np.zeros(10), np.zeros(10, bool)
    x1[[2, 3, 6]], x2[[2, 3, 6]], op[[2, 3, 6]] = -20.0, 10.0, True  # pairs 4, 5 closed between open pairs
    parts = make_deliverable(x1, x2, op, m.mlc)
    assert sorted(np.flatnonzero(p[2]).tolist() for p in parts) == [[2, 3], [6]]
    b = m.mlc.boundaries
    for a, z, o in parts:
        seg = to_segment(a, z, o, 1.0, m)
        run = np.flatnonzero(o)
        assert np.all(np.diff(run) == 1)  # one run of consecutive open pairs
        inside = (b[1:] > seg.jaw_y_mm[0] + 1e-9) & (b[:-1] < seg.jaw_y_mm[1] - 1e-9)
        assert not (inside & ~o).any()  # no closed pair (with its 5 mm gap) inside the Y jaws
        assert np.all(np.minimum(z[1:] - a[:-1], z[:-1] - a[1:]) >= m.mlc.min_gap_mm - 1e-9)


def test_y_span_trims_the_y_jaw_inside_a_wide_leaf_pair():
    from rayrt.optimize.sequencing.base import jaws_for

    m = synthetic_machine(10.0, 10, interdigitation=False, min_gap_mm=5.0)
    x1, x2, op = np.zeros(10), np.full(10, 5.0), np.zeros(10, bool)
    x1[3:7], x2[3:7], op[3:7] = -20.0, 10.0, True  # pairs 3..6: y -20..20
    assert jaws_for(x1, x2, op, m)[1] == (-20.0, 20.0)
    assert jaws_for(x1, x2, op, m, (-15.0, 35.0))[1] == (-15.0, 20.0)


def test_dual_layer_proximal_layer_cuts_the_field_end_at_half_a_leaf():
    """Halcyon: the proximal layer (offset 5 mm) closes beyond the rows' extent, so a distal pair
    straddling the field end is cut at 5 mm; inside, the distal opening is the effective one."""
    from rayrt.machines import get_machine
    from rayrt.optimize.sequencing.base import proximal_layer, to_segment

    hal = get_machine("halcyon")
    b, pb = hal.mlc.boundaries, hal.mlc.proximal_boundaries
    assert pb.size == b.size + 1 and np.allclose(pb[:-1] + 5.0, b)
    P = hal.mlc.num_pairs
    x1, x2, op = np.full(P, -2.0), np.full(P, -1.5), np.zeros(P, bool)
    sel = (b[:-1] >= -40.0) & (b[1:] <= 40.0)  # distal pairs -40..40
    x1[sel], x2[sel], op[sel] = -20.0, 30.0, True
    px1, px2 = proximal_layer(x1, x2, op, hal.mlc, (-35.0, 35.0), park_before_mm=-40.0)
    popen = px2 - px1 > hal.mlc.min_gap_mm + 1e-9
    assert np.allclose(pb[:-1][popen].min(), -35.0) and np.allclose(pb[1:][popen].max(), 35.0)
    assert np.allclose(px1[popen], -20.0) and np.allclose(px2[popen], 30.0)
    assert np.all(px2[~popen] <= -40.0)  # closed proximal pairs parked before the field
    seg = to_segment(x1, x2, op, 5.0, hal, (-35.0, 35.0), -40.0)
    assert seg.jaw_y_mm is None and len(seg.x1_proximal_mm) == pb.size - 1
    assert check_plan(Plan(machine=hal.name, beams=[Beam(isocenter_mm=(0, 0, 0), segments=[seg])]), hal).deliverable
    bad = seg.model_copy(update={"x2_proximal_mm": list(np.asarray(seg.x1_proximal_mm) + 0.1)})
    assert (
        "min_gap"
        in check_plan(
            Plan(machine=hal.name, beams=[Beam(isocenter_mm=(0, 0, 0), segments=[bad])]), hal
        ).rules_violated()
    )
