"""Dual-layer MLC (Halcyon) and trimmed field ends (Y jaws part-way across a leaf pair, MLCi2):
one exact aperture fluence (rayrt.dose.aperture) for plan dose, QA recompute, imported RTPLANs and
conversion, and an RTPLAN that carries both MLC layers (MLCX1 distal, MLCX2 proximal)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from rayrt.domain.plan import Beam, Plan, Segment
from rayrt.dose.aperture import aperture_beamlet_grid, aperture_dose, aperture_fluence, segment_equivalent_square_mm
from rayrt.dose.geometry import BeamletGrid, beamlet_grid_for_field
from rayrt.imaging.rtplan import read_rtplan, write_rtplan
from rayrt.imaging.volume import Grid, Volume
from rayrt.machines import get_machine
from rayrt.optimize.sequencing.base import to_segment

STEP = 0.05  # mm: brute-force sampling step; every edge below is a multiple of it, so the block means are exact
BEAM = Beam(isocenter_mm=(0.0, 100.0, 0.0))


def _q(v) -> np.ndarray:
    return np.round(np.round(np.asarray(v, float) / STEP) * STEP, 2)  # also the RTPLAN's 0.01 mm precision


def halcyon_segment(rng, mu=7.0) -> Segment:
    """Distal pairs -40..40 open, the proximal layer (sequencing.base.proximal_layer) closing the
    field ends at -35 / +35 mm (half a leaf inside the distal pairs), tips quantised to STEP."""
    m = get_machine("halcyon")
    b = m.mlc.boundaries
    op = (b[:-1] >= -40) & (b[1:] <= 40)
    x1 = np.where(op, _q(rng.uniform(-30, -10, op.size)), -0.25)
    x2 = np.where(op, _q(rng.uniform(5, 25, op.size)), 0.25)
    seg = to_segment(x1, x2, op, mu, m, y_span_mm=(-35.0, 35.0))
    px1 = _q(seg.x1_proximal_mm)
    px1[15] = px1[15] + 4.0  # one proximal leaf pulled in: it limits the opening of the two distal pairs under it
    seg.x1_proximal_mm, seg.x2_proximal_mm = px1.tolist(), _q(seg.x2_proximal_mm).tolist()
    seg.x1_mm, seg.x2_mm = _q(seg.x1_mm).tolist(), _q(seg.x2_mm).tolist()
    return seg


def mlci2_segment(rng, mu=5.0) -> Segment:
    m = get_machine("synergy_mlci2")
    b = m.mlc.boundaries
    op = (b[:-1] >= -40) & (b[1:] <= 40)
    x1 = np.where(op, _q(rng.uniform(-30, -10, op.size)), -2.5)
    x2 = np.where(op, _q(rng.uniform(5, 25, op.size)), 2.5)
    return Segment(x1_mm=x1.tolist(), x2_mm=x2.tolist(), jaw_x_mm=(-27.5, 22.5), jaw_y_mm=(-35.0, 32.55), mu=mu)


def brute_force_transmission(seg: Segment, machine, grid: BeamletGrid) -> np.ndarray:
    """Mean of T(x, y) = T_distal T_proximal T_jawX T_jawY over each bixel, sampled every STEP mm
    (independent of rayrt.dose.aperture: point lookups of the leaf covering each sample)."""
    w = grid.bixel_width_mm
    e = np.asarray(grid.row_edges_mm, float)
    xs = np.arange(grid.cols.min() * w, (grid.cols.max() + 1) * w - 1e-9, STEP) + STEP / 2
    ys = np.arange(e[0], e[-1] - 1e-9, STEP) + STEP / 2
    t, hd = machine.mlc.transmission, 0.5 * machine.mlc.leaf_end_transmission_mm

    def layer(bounds, x1, x2):
        i = np.clip(np.searchsorted(bounds, ys) - 1, 0, bounds.size - 2)
        a, z = np.asarray(x1)[i][:, None], np.asarray(x2)[i][:, None]
        inside = (a < z) & (xs[None, :] >= a - hd) & (xs[None, :] <= z + hd)
        return np.where(inside, 1.0, t)

    T = layer(machine.mlc.boundaries, seg.x1_mm, seg.x2_mm)
    if seg.x1_proximal_mm is not None:
        T = T * layer(machine.mlc.proximal_boundaries, seg.x1_proximal_mm, seg.x2_proximal_mm)
    if machine.jaw_x is not None and seg.jaw_x_mm is not None:
        T = T * np.where((xs >= seg.jaw_x_mm[0]) & (xs <= seg.jaw_x_mm[1]), 1.0, machine.jaw_x.transmission)[None, :]
    if machine.jaw_y is not None and seg.jaw_y_mm is not None:
        T = T * np.where((ys >= seg.jaw_y_mm[0]) & (ys <= seg.jaw_y_mm[1]), 1.0, machine.jaw_y.transmission)[:, None]
    out = np.empty(grid.num_bixels)
    for k, (r, c) in enumerate(zip(grid.rows, grid.cols)):
        iy = (ys > e[r]) & (ys < e[r + 1])
        ix = (xs > c * w) & (xs < (c + 1) * w)
        out[k] = T[np.ix_(iy, ix)].mean()
    return out


def _grids(machine, rng):
    """The machine's own rows (aperture_dose) and random sub-rows on STEP multiples (conversion's trimmed rows)."""
    g = beamlet_grid_for_field(BEAM, machine, (-35.0, 30.0), (-50.0, 50.0), 2.5)
    fine = np.unique(np.concatenate([[-50.0, 50.0], _q(rng.uniform(-50, 50, 14)), [-35.0, 35.0]]))
    cols = np.arange(-14, 12)
    g2 = BeamletGrid(
        BEAM, machine.name, 2.5, fine, np.repeat(np.arange(fine.size - 1), cols.size), np.tile(cols, fine.size - 1)
    )
    return [g, g2]


@pytest.mark.parametrize("name,make", [("halcyon", halcyon_segment), ("synergy_mlci2", mlci2_segment)])
def test_aperture_fluence_is_exact_on_any_rows(name, make):
    """Both Halcyon layers / Y jaws trimming 10 mm pairs: the bixel fluence equals the brute-force
    mean transmission x MU x Sc, on leaf rows and on sub-rows; conversion uses the same function."""
    from rayrt.convert.fluence import segments_fluence_on_bixels

    m = get_machine(name)
    rng = np.random.default_rng(7)
    seg = make(rng)
    sc = float(m.beam.head_scatter_at(segment_equivalent_square_mm(seg, m)))
    for g in _grids(m, rng):
        f = aperture_fluence(g, [seg], m)
        ref = seg.mu * sc * brute_force_transmission(seg, m, g)
        np.testing.assert_allclose(f, ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(segments_fluence_on_bixels([seg], m, g), f, rtol=0, atol=0)


def test_halcyon_open_only_where_both_layers_are_open():
    m = get_machine("halcyon")
    t = m.mlc.transmission
    seg = halcyon_segment(np.random.default_rng(1), mu=1.0)
    sc = float(m.beam.head_scatter_at(segment_equivalent_square_mm(seg, m)))
    # 5 mm rows -50..50, columns -10..-5: inside every opening, away from the parked closed pairs (gap at 0) and leaves
    g = beamlet_grid_for_field(BEAM, m, (-10.0, -5.0), (-50.0, 50.0), 2.5)
    f = aperture_fluence(g, [seg], m).reshape(-1, 2) / sc
    rows = {float(y): r for r, y in enumerate(g.row_edges_mm[g.rows[::2]])}
    assert np.allclose(f[rows[-30.0]], 1.0) and np.allclose(f[rows[30.0]], 1.0)  # both layers open
    # distal pair open, proximal closed: one layer
    assert np.allclose(f[rows[-40.0]], t) and np.allclose(f[rows[35.0]], t)
    assert np.allclose(f[rows[-50.0]], t * t) and np.allclose(f[rows[45.0]], t * t)  # both closed
    # without the proximal layer the distal field ends at -40 / +40 (what a distal-only RTPLAN delivered)
    distal_only = seg.model_copy(update={"x1_proximal_mm": None, "x2_proximal_mm": None})
    sc0 = float(m.beam.head_scatter_at(segment_equivalent_square_mm(distal_only, m)))
    f0 = aperture_fluence(g, [distal_only], m).reshape(-1, 2) / sc0
    assert np.allclose(f0[rows[-40.0]], 1.0) and np.allclose(f0[rows[35.0]], 1.0)


def test_aperture_grid_splits_rows_only_where_the_field_ends_inside_one():
    rng = np.random.default_rng(3)
    hal, mlci2, std = get_machine("halcyon"), get_machine("synergy_mlci2"), get_machine("standard")
    seg = mlci2_segment(rng)
    g = aperture_beamlet_grid(BEAM, [seg], mlci2)
    assert -35.0 in g.row_edges_mm and 32.55 in np.round(g.row_edges_mm, 6)  # the trimmed ends are row edges
    assert np.all(np.diff(g.row_edges_mm) > 0)
    on_pairs = seg.model_copy(update={"jaw_y_mm": (-40.0, 40.0)})  # jaws on leaf boundaries: the plain leaf-pair grid
    g0 = aperture_beamlet_grid(BEAM, [on_pairs], mlci2)
    g1 = beamlet_grid_for_field(BEAM, mlci2, (-37.5, 32.5), (-50.0, 50.0), 2.5)
    assert np.array_equal(g0.row_edges_mm, g1.row_edges_mm) and np.array_equal(g0.rows, g1.rows)
    assert np.array_equal(g0.cols, g1.cols)
    hs = halcyon_segment(rng)  # the proximal boundaries lie on the Halcyon's 5 mm rows: nothing to split
    gh = aperture_beamlet_grid(BEAM, [hs], hal)
    assert np.array_equal(gh.row_edges_mm, beamlet_grid_for_field(BEAM, hal, (0, 1), (0, 1)).row_edges_mm)
    s = Segment(
        x1_mm=[-20.0] * std.mlc.num_pairs,
        x2_mm=[20.0] * std.mlc.num_pairs,
        jaw_x_mm=(-20.0, 20.0),
        jaw_y_mm=(-20.0, 20.0),
        mu=1,
    )
    assert np.array_equal(
        aperture_beamlet_grid(BEAM, [s], std).row_edges_mm,
        beamlet_grid_for_field(BEAM, std, (0, 1), (0, 1)).row_edges_mm,
    )


def _half_max_edges(profile: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    half = 0.5 * profile.max()
    above = np.flatnonzero(profile >= half)
    i0, i1 = above[0], above[-1]
    lo = np.interp(half, [profile[i0 - 1], profile[i0]], [z[i0 - 1], z[i0]])
    hi = np.interp(half, [profile[i1 + 1], profile[i1]], [z[i1 + 1], z[i1]])
    return float(lo), float(hi)


@pytest.mark.parametrize("name", ["halcyon", "synergy_mlci2"])
def test_aperture_dose_field_ends_follow_the_proximal_layer_and_jaws(name):
    """aperture_dose (planner final dose, QA recompute, imported RTPLANs): the 50 % dose points along
    the leaf-stack direction sit at the proximal layer's / Y jaws' field ends, not at the 10 mm pairs."""
    m = get_machine(name)
    n = 60
    g = Grid(shape=(n, n, n), spacing_mm=(5.0,) * 3, origin_mm=(-147.5, 2.5, -147.5))
    water = Volume(np.ones(g.shape, np.float32), g, "relative_electron_density")
    b = m.mlc.boundaries
    op = (b[:-1] >= -40) & (b[1:] <= 40)
    x1, x2 = np.where(op, -20.0, -0.25), np.where(op, 20.0, 0.25)
    if m.mlc.dual_layer:
        seg = to_segment(x1, x2, op, 10.0, m, y_span_mm=(-35.0, 35.0))
        distal_only = seg.model_copy(update={"x1_proximal_mm": None, "x2_proximal_mm": None})
    else:
        seg = Segment(x1_mm=x1.tolist(), x2_mm=x2.tolist(), jaw_x_mm=(-20.0, 20.0), jaw_y_mm=(-35.0, 35.0), mu=10.0)
        distal_only = seg.model_copy(update={"jaw_y_mm": (-40.0, 40.0)})
    # along z (IEC Y at gantry 0) at depth 100 mm
    line = Grid(shape=(81, 1, 1), spacing_mm=(5.0, 5.0, 1.25), origin_mm=(0.0, 100.0, -50.0))
    z = -50.0 + 1.25 * np.arange(81)
    lo, hi = _half_max_edges(aperture_dose(water, line, BEAM, [seg], m).ravel(), z)
    # leaf-pair rows averaged over the pair would be ~0.8 mm off (MLCi2)
    assert abs(lo + 35.0) < 0.5 and abs(hi - 35.0) < 0.5, (lo, hi)
    lo0, hi0 = _half_max_edges(aperture_dose(water, line, BEAM, [distal_only], m).ravel(), z)
    assert abs(lo0 + 40.0) < 0.5 and abs(hi0 - 40.0) < 0.5, (lo0, hi0)


def halcyon_plan() -> Plan:
    rng = np.random.default_rng(11)
    m = get_machine("halcyon")
    segs = [halcyon_segment(rng, mu=float(mu)) for mu in (12.5, 4.25)]
    segs.append(Segment(x1_mm=segs[0].x1_mm, x2_mm=segs[0].x2_mm, mu=3.0))  # distal layer only: proximal parked open
    return Plan(
        machine=m.name,
        label="dual",
        patient_id="P1",
        fractions=5,
        prescription_gy=10.0,
        target="PTV",
        beams=[
            Beam(name="G0", number=1, isocenter_mm=(0.0, 100.0, 0.0), segments=segs),
            Beam(name="G90", number=2, gantry_deg=90.0, isocenter_mm=(0.0, 100.0, 0.0), segments=segs[:1]),
        ],
    )


def test_rtplan_carries_both_layers_and_round_trips_exactly(tmp_path):
    m = get_machine("halcyon")
    plan = halcyon_plan()
    path = write_rtplan(plan, m, tmp_path / "rp.dcm")
    ds = pydicom.dcmread(path)
    devs = {d.RTBeamLimitingDeviceType: d for d in ds.BeamSequence[0].BeamLimitingDeviceSequence}
    assert list(devs) == ["MLCX1", "MLCX2"]
    assert int(devs["MLCX1"].NumberOfLeafJawPairs) == 28
    assert [float(v) for v in devs["MLCX1"].LeafPositionBoundaries][::28] == [-140.0, 140.0]
    assert int(devs["MLCX2"].NumberOfLeafJawPairs) == 29
    assert [float(v) for v in devs["MLCX2"].LeafPositionBoundaries][::29] == [-145.0, 145.0]
    for cp in ds.BeamSequence[0].ControlPointSequence:  # both layers in every control point
        assert [p.RTBeamLimitingDeviceType for p in cp.BeamLimitingDevicePositionSequence] == ["MLCX1", "MLCX2"]
    cp0 = ds.BeamSequence[0].ControlPointSequence[0]
    pos = {
        p.RTBeamLimitingDeviceType: [float(v) for v in p.LeafJawPositions]
        for p in cp0.BeamLimitingDevicePositionSequence
    }
    s0 = plan.beams[0].segments[0]
    assert pos["MLCX2"] == s0.x1_proximal_mm + s0.x2_proximal_mm and pos["MLCX1"] == s0.x1_mm + s0.x2_mm
    imp = read_rtplan(path, [get_machine(n) for n in ("standard", "synergy_mlci2", "halcyon")])
    assert imp.machine.name == m.name
    for b0, b1 in zip(plan.beams, imp.plan.beams):
        for a, c in zip(b0.segments, b1.segments):
            assert (c.x1_mm, c.x2_mm) == (a.x1_mm, a.x2_mm)
            assert (c.x1_proximal_mm, c.x2_proximal_mm) == (a.x1_proximal_mm, a.x2_proximal_mm)
            assert c.mu == pytest.approx(a.mu, abs=1e-4)
        g = aperture_beamlet_grid(b0, b0.segments, m)
        np.testing.assert_allclose(aperture_fluence(g, b1.segments, m), aperture_fluence(g, b0.segments, m), rtol=1e-5)
    # the parked-open proximal layer reads back as "not used"
    assert imp.plan.beams[0].segments[2].x1_proximal_mm is None
    # a single-layer (distal only) RTPLAN of the same machine still imports as before
    ds1 = pydicom.dcmread(path)
    for beam in ds1.BeamSequence:
        beam.BeamLimitingDeviceSequence = [
            d for d in beam.BeamLimitingDeviceSequence if d.RTBeamLimitingDeviceType == "MLCX1"
        ]
        beam.BeamLimitingDeviceSequence[0].RTBeamLimitingDeviceType = "MLCX"
        for cp in beam.ControlPointSequence:
            cp.BeamLimitingDevicePositionSequence = [
                p for p in cp.BeamLimitingDevicePositionSequence if p.RTBeamLimitingDeviceType == "MLCX1"
            ]
            cp.BeamLimitingDevicePositionSequence[0].RTBeamLimitingDeviceType = "MLCX"
    seg1 = read_rtplan(ds1, [m]).plan.beams[0].segments[0]
    assert seg1.x1_mm == s0.x1_mm and seg1.x1_proximal_mm is None


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed (apt-get install -y dicom3tools)")
def test_dual_layer_rtplan_with_its_structure_set_passes_dciodvfy(tmp_path):
    """The RTPLAN the export stage writes (rayrt.imaging.rtplan.build_rtplan with the structure set it
    references, saved by rayrt.imaging.export.save_dataset) carries both layers; dciodvfy -new finds
    no error in it but the unknown dual-layer device types MLCX1/MLCX2 (see tests/helpers/dicom.py)."""
    from helpers.dicom import dciodvfy_errors

    from rayrt.domain.patient import Structure, StructureKind
    from rayrt.imaging.export import save_dataset, write_ct_series, write_rtstruct
    from rayrt.imaging.rtplan import StructureSetRef, build_rtplan
    from rayrt.imaging.study import StructureMask

    grid = Grid(shape=(6, 24, 24), spacing_mm=(5.0, 5.0, 5.0), origin_mm=(-57.5, 42.5, -12.5))
    ct = Volume(np.zeros(grid.shape), grid, "HU")
    write_ct_series(ct, tmp_path / "ct", patient_id="P1", patient_name="Dual^Layer")
    body = np.ones(grid.shape, bool)
    body[:, :2] = body[:, -2:] = False
    rs = write_rtstruct(
        [StructureMask(Structure(name="BODY", kind=StructureKind.external), body)], ct, tmp_path / "rs.dcm"
    )
    ssref = StructureSetRef.from_file(rs)
    plan = halcyon_plan()
    plan.frame_of_reference_uid = ssref.frame_of_reference_uid
    ds_plan = build_rtplan(plan, get_machine("halcyon"), structure_set=ssref, patient_id="P1")
    path = save_dataset(ds_plan, tmp_path / "RP_halcyon.dcm")
    ds = pydicom.dcmread(path)
    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == ssref.sop_instance_uid
    assert [d.RTBeamLimitingDeviceType for d in ds.BeamSequence[0].BeamLimitingDeviceSequence] == ["MLCX1", "MLCX2"]
    assert dciodvfy_errors(path, allow_dual_layer_types=True) == []
    raw = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=120)
    assert "MLCX2" in raw.stdout + raw.stderr  # the validator sees both layers (and flags only their type names)
