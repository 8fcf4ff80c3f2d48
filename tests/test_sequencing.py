"""Leaf sequencing: exact decompositions, leaf-pair resampling, and deliverable segments on every
shipped machine (configs/machines/*.yaml) and on a synthetic no-interdigitation MLC."""

from pathlib import Path

import numpy as np
import pytest

from rayrt.domain.errors import InputError
from rayrt.domain.plan import Beam, Plan
from rayrt.optimize.dao import BeamApertures
from rayrt.optimize.layout import BeamletLayout
from rayrt.optimize.sequencing import get_sequencer, list_sequencers, make_deliverable
from rayrt.optimize.sequencing.decompose import reconstruct, sweep, xia_verhey
from rayrt.optimize.synthetic import synthetic_machine
from rayrt.qa.deliverability import check_plan

MACHINE_FILES = sorted((Path(__file__).resolve().parents[1] / "configs" / "machines").glob("*.yaml"))


def _machines():
    from rayrt.domain.machine import load_machine

    out = [load_machine(p) for p in MACHINE_FILES]
    out.append(synthetic_machine(10.0, 40, interdigitation=False, min_gap_mm=2.0, name="synthetic-mlci2-like"))
    out.append(synthetic_machine(2.5, 64, interdigitation=False, min_gap_mm=0.5, span_mm=60.0, name="synthetic-narrow-span"))
    return out


def test_shipped_machines_exist():
    assert MACHINE_FILES, "configs/machines/*.yaml should ship machine models"


@pytest.mark.parametrize("fn", [sweep, xia_verhey])
def test_decompositions_are_exact(fn):
    rng = np.random.default_rng(3)
    for _ in range(30):
        I = rng.integers(0, 7, (6, 11))
        I[rng.random(I.shape) < 0.25] = 0
        aps = fn(I)
        assert np.array_equal(reconstruct(aps, I.shape), I)
        for k, lo, hi in aps:
            assert k > 0 and np.all(hi >= lo)


def test_sweep_uses_minimum_mu():
    I = np.array([[1, 3, 2, 4, 0], [2, 2, 0, 1, 1]])
    total = sum(k for k, _, _ in sweep(I))
    pos = np.maximum(np.diff(np.concatenate([np.zeros((2, 1), int), I], axis=1), axis=1), 0).sum(axis=1)
    assert total == pos.max()  # = 5: the unidirectional minimum


def _fluence_case(row_mm=5.0, rows=16, cols=22):
    R, C = rows, cols
    lay = BeamletLayout(np.arange(-R / 2, R / 2 + 1) * row_mm, np.arange(-C / 2, C / 2 + 1) * 5.0, np.arange(R * C).reshape(R, C))
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
    for s in res.segments:  # course MU here; give each segment at least the machine minimum for the check
        s.mu = max(s.mu, machine.limits.min_mu_per_segment)
    plan = Plan(machine=machine.name, beams=[Beam(isocenter_mm=(0, 0, 0), segments=res.segments)])
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
    (a, b, o), = make_deliverable(x1, x2, op, m.mlc)
    seg = to_segment(a, b, o, 1.0, m)
    closed = ~o
    np.testing.assert_allclose(b[closed] - a[closed], m.mlc.min_gap_mm)
    assert np.all(b[closed] + hd <= seg.jaw_x_mm[0] + 1e-9)
    (a2, b2, o2), = make_deliverable(x1, x2, op, m.mlc, park_before_mm=-40.0)
    assert np.all(b2[~o2] + hd <= -40.0 + 1e-9)
    # jawless machine: the gap is outside the open field as well
    mj = synthetic_machine(5.0, 8, interdigitation=True, min_gap_mm=1.0, jaws=False)
    (a3, b3, o3), = make_deliverable(x1, x2, op, mj.mlc)
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
