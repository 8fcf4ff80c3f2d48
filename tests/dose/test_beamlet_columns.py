"""Bixel column alignment of BeamletGrid (``column_offset_mm``): isocenter-centred columns, their use by
the aperture fluence, the layout/sequencer and the stage store, and the "volume" margin rule."""

import json

import numpy as np
import pytest
from helpers.dose import leaf_gradient_vs_finite_differences
from pydantic import ValidationError

from rayrt.domain.errors import InputError
from rayrt.domain.plan import Beam, Segment
from rayrt.dose.aperture import (
    aperture_dose,
    aperture_fluence,
    segment_equivalent_square_mm,
    segment_transmission,
)
from rayrt.dose.dij import compute_dij
from rayrt.dose.geometry import (
    BeamletGrid,
    beamlet_grid,
    beamlet_grid_for_field,
    column_alignment_of,
    column_offset_for,
)
from rayrt.imaging.volume import Grid, Volume
from rayrt.machines import get_machine
from rayrt.optimize.layout import layout_from_beamlets
from rayrt.optimize.sequencing import get_sequencer

W = 5.0
ISO_OFF = column_offset_for("isocenter", W)  # -2.5 mm
BEAM = Beam(gantry_deg=0, isocenter_mm=(0.0, 100.0, 0.0))
DOSE_GRID = Grid(shape=(5, 9, 13), spacing_mm=(10.0, 20.0, 10.0), origin_mm=(-60.0, 20.0, -40.0))


def water(spacing=5.0):
    n = int(300 / spacing)
    g = Grid(
        shape=(n, n, n), spacing_mm=(spacing,) * 3, origin_mm=(-150 + spacing / 2, spacing / 2, -150 + spacing / 2)
    )
    return Volume(np.ones(g.shape, np.float32), g, "relative_electron_density")


def rect_segment(machine, x, y, mu=1.0):
    c = machine.mlc.leaf_centers_mm
    inside = (c > y[0]) & (c < y[1])
    return Segment(
        x1_mm=np.where(inside, x[0], 0.0).tolist(),
        x2_mm=np.where(inside, x[1], 0.0).tolist(),
        mu=mu,
        jaw_x_mm=tuple(x) if machine.jaw_x else None,
        jaw_y_mm=tuple(y) if machine.jaw_y else None,
    )


def box_target():
    """A box target symmetric about the isocenter (0, 0, 0): voxel centres at +-2, +-6, ... mm."""
    g = Grid(shape=(20, 20, 20), spacing_mm=(4.0, 4.0, 4.0), origin_mm=(-38.0, -38.0, -38.0))
    kji = np.indices(g.shape).reshape(3, -1).T
    xyz = g.index_to_world(kji.astype(float))
    m = (np.abs(xyz[:, 0]) <= 14.5) & (np.abs(xyz[:, 1]) <= 10.5) & (np.abs(xyz[:, 2]) <= 10.5)
    return g, m.reshape(g.shape)


def test_alignment_names_and_errors():
    assert column_offset_for("edge", W) == 0.0 and column_offset_for("isocenter", W) == -2.5
    assert column_alignment_of(0.0, W) == "edge" and column_alignment_of(-2.5, W) == "isocenter"
    assert column_alignment_of(2.5, W) == "isocenter" and column_alignment_of(1.0, W) == "custom"
    with pytest.raises(InputError):
        column_offset_for("middle", W)
    g, m = box_target()
    with pytest.raises(InputError):
        beamlet_grid(Beam(gantry_deg=0, isocenter_mm=(0, 0, 0)), get_machine("standard"), m, g, margin_mode="sphere")
    with pytest.raises(InputError):
        beamlet_grid_for_field(BEAM, get_machine("standard"), (-10, 10), (-10, 10), W, column_offset_mm=float("nan"))


def test_default_grid_unchanged():
    m = get_machine("standard")
    bg = beamlet_grid_for_field(BEAM, m, (-12, 23), (-10, 10), W)
    assert bg.column_offset_mm == 0.0 and bg.column_alignment == "edge"
    assert np.array_equal(bg.u_mm, (bg.cols + 0.5) * W)
    assert np.array_equal(bg.u_lo_mm, bg.cols * W) and np.array_equal(bg.u_hi_mm, (bg.cols + 1) * W)
    assert bg.cols.min() == -3 and bg.cols.max() == 4  # [-15, 25]: the columns touching [-12, 23]
    assert np.array_equal(layout_from_beamlets(bg).col_edges_mm, np.arange(-3, 6) * W)
    g, t = box_target()
    b0 = Beam(gantry_deg=30, isocenter_mm=(0, 0, 0))
    a = beamlet_grid(b0, m, t, g)
    b = beamlet_grid(b0, m, t, g, column_offset_mm=0.0, margin_mode="projection")
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols) and np.array_equal(a.u_mm, b.u_mm)


@pytest.mark.parametrize("mode", ["projection", "volume"])
@pytest.mark.parametrize("gantry", [0.0, 90.0])
def test_isocenter_grid_is_centred_and_symmetric(mode, gantry):
    m = get_machine("standard")
    g, t = box_target()
    beam = Beam(gantry_deg=gantry, isocenter_mm=(0.0, 0.0, 0.0))
    bg = beamlet_grid(beam, m, t, g, bixel_width_mm=W, margin_mm=5.0, column_offset_mm=ISO_OFF, margin_mode=mode)
    assert bg.column_alignment == "isocenter"
    # bixel centres at c * w, edges at (c -+ 1/2) * w
    assert np.allclose(bg.u_mm / W, np.rint(bg.u_mm / W), atol=1e-12)
    assert np.allclose(bg.u_hi_mm - bg.u_lo_mm, W) and np.allclose(bg.u_mm, 0.5 * (bg.u_lo_mm + bg.u_hi_mm))
    assert np.any(np.isclose(bg.u_mm, 0.0))
    # the target is symmetric in u about the central axis: so is the set of bixels (row by row)
    pts = {(int(r), round(float(u), 6)) for r, u in zip(bg.rows, bg.u_mm)}
    assert pts == {(r, round(-u, 6) + 0.0) for r, u in pts}
    assert np.unique(bg.cols).size % 2 == 1
    edge = beamlet_grid(beam, m, t, g, bixel_width_mm=W, margin_mm=5.0, margin_mode=mode)
    assert np.unique(edge.cols).size % 2 == 0  # edge-aligned columns cannot be centred on the axis


def test_volume_margin_rule_by_hand():
    """3-D box margin of ceil(5 / 4) = 2 voxels: target |x| <= 14 -> dilated voxel centres |x| <= 22 mm,
    projected at most 22 * 1000 / 990 = 22.2 mm -> bixels centred at 0, +-5, ..., +-20 (9 columns);
    |z| <= 10 + 8 = 18 mm -> leaf pairs [-20, -15] ... [15, 20] (8 rows)."""
    m = get_machine("standard")
    g, t = box_target()
    bg = beamlet_grid(
        Beam(gantry_deg=0, isocenter_mm=(0, 0, 0)),
        m,
        t,
        g,
        bixel_width_mm=W,
        margin_mm=5.0,
        column_offset_mm=ISO_OFF,
        margin_mode="volume",
    )
    assert np.array_equal(np.unique(bg.u_mm), np.arange(-20.0, 20.1, 5.0))
    v = np.unique(bg.v_mm)
    assert v.size == 8 and np.isclose(v.min(), -17.5) and np.isclose(v.max(), 17.5)
    assert bg.num_bixels == 9 * 8


def test_column_limits_respect_the_offset():
    m = get_machine("standard")  # leaves and X jaws within +-200 mm
    bg = beamlet_grid_for_field(BEAM, m, (-300, 300), (-10, 10), W, column_offset_mm=ISO_OFF)
    assert bg.u_lo_mm.min() >= -200.0 and bg.u_hi_mm.max() <= 200.0
    assert np.isclose(bg.u_lo_mm.min(), -197.5) and np.isclose(bg.u_hi_mm.max(), 197.5)
    assert np.array_equal(bg.column_of(bg.u_mm), bg.cols)


def test_partial_coverage_on_the_offset_grid_is_exact():
    m = get_machine("standard")  # transmission 1 %, dosimetric leaf gap 1 mm
    bg = beamlet_grid_for_field(BEAM, m, (-7.5, 12.5), (-10, 10), W, column_offset_mm=ISO_OFF)
    assert np.allclose(np.unique(bg.u_lo_mm), [-7.5, -2.5, 2.5, 7.5])
    seg = rect_segment(m, (-7.5, 2.5), (-10.0, 10.0))
    seg = seg.model_copy(update={"jaw_x_mm": None, "jaw_y_mm": None})
    t = segment_transmission(bg, seg, m).reshape(4, 4)
    tm = m.mlc.transmission
    assert np.allclose(t[:, 0], 1.0) and np.allclose(t[:, 1], 1.0)
    assert np.allclose(t[:, 2], 0.1 + 0.9 * tm)  # [2.5, 7.5]: open to 2.5 + 0.5 (half DLG)
    assert np.allclose(t[:, 3], tm)


def test_leaf_gradient_on_the_offset_grid_matches_finite_differences():
    """Direct aperture optimisation's dT/dx on an isocenter-centred grid: the widened tips at -8.5 and
    3.7 mm act on the columns [-12.5, -7.5] and [2.5, 7.5] (not [-10, -5] / [0, 5] of an edge grid)."""
    m = get_machine("standard")
    bg = beamlet_grid_for_field(BEAM, m, (-20, 20), (-10, 10), W, column_offset_mm=ISO_OFF)
    seg = rect_segment(m, (-8.0, 3.2), (-10.0, 10.0)).model_copy(update={"jaw_x_mm": (-30.0, 17.0)})
    g1, g2 = leaf_gradient_vs_finite_differences(bg, seg, m)
    # x2 + half DLG = 3.7 mm: only the column [2.5, 7.5] moves; x1 - 0.5 = -8.5 mm: only [-12.5, -7.5]
    assert set(np.round(bg.u_mm[np.abs(g2) > 0], 6)) == {5.0}
    assert set(np.round(bg.u_mm[np.abs(g1) > 0], 6)) == {-10.0}


def test_open_aperture_equals_sum_of_beamlets_on_the_offset_grid():
    m = get_machine("standard")
    rho = water()
    seg = rect_segment(m, (-52.5, 52.5), (-50.0, 50.0))
    ap = aperture_dose(rho, DOSE_GRID, BEAM, [seg], m, bixel_width_mm=W, column_offset_mm=ISO_OFF)
    bg = beamlet_grid_for_field(BEAM, m, (-52.5, 52.5), (-50, 50), W, column_offset_mm=ISO_OFF)
    assert np.unique(bg.cols).size == 21 and np.isclose(bg.u_lo_mm.min(), -52.5)
    beamlets = np.asarray(compute_dij(rho, DOSE_GRID, bg, m).sum(axis=1)).ravel().reshape(DOSE_GRID.shape)
    inside = beamlets > 0.5 * beamlets.max()
    assert inside.sum() > 50
    sc = float(m.beam.head_scatter_at(segment_equivalent_square_mm(seg, m)))
    rel = np.abs(ap[inside] / sc - beamlets[inside]) / beamlets[inside]
    assert rel.max() < 0.01
    # the same aperture on the edge-aligned grid (edges at multiples of 5 mm, the field edges half-way
    # across a bixel) agrees away from the penumbra, where the partial bixel blurs the edge by w/4
    ap_edge = aperture_dose(rho, DOSE_GRID, BEAM, [seg], m, bixel_width_mm=W)
    flat = beamlets > 0.8 * beamlets.max()
    assert flat.sum() > 20
    assert np.abs(ap[flat] - ap_edge[flat]).max() / ap[flat].max() < 0.01


def test_sequencing_on_the_offset_grid():
    m = get_machine("standard")  # 5 mm leaves = the bixel rows
    bg = beamlet_grid_for_field(BEAM, m, (-22.5, 22.5), (-20, 20), W, column_offset_mm=ISO_OFF)
    lay = layout_from_beamlets(bg)
    assert np.allclose(lay.col_edges_mm, np.arange(-22.5, 22.6, 5.0))
    assert np.allclose(lay.col_edges_mm, bg.column_edges_mm)
    R, C = lay.shape
    rr, cc = np.indices((R, C))
    fmap = np.clip(4 - np.abs(cc - C // 2) - (rr % 2), 0, None).astype(float)  # integer levels: exact at 4 levels
    segs = get_sequencer("sweep").sequence_with_info(fmap, bg, m, levels=4).segments
    assert segs
    edges = lay.col_edges_mm
    pairs = np.flatnonzero((m.mlc.leaf_centers_mm > -20) & (m.mlc.leaf_centers_mm < 20))
    for s in segs:
        x1, x2 = np.asarray(s.x1_mm)[pairs], np.asarray(s.x2_mm)[pairs]
        op = (x2 > x1) & (x2 > edges[0] + 1e-9)  # open over the grid (closed pairs are parked before it)
        assert op.any()
        for x in np.concatenate([x1[op], x2[op]]):
            assert np.min(np.abs(edges - x)) < 1e-9, f"leaf tip {x} mm is not on a column edge of the grid"
    # delivered fluence (transmission x MU, no DLG widening) reproduces the map, plus leakage where closed
    m0 = m.model_copy(
        update={"mlc": m.mlc.model_copy(update={"leaf_end_transmission_mm": 0.0}), "jaw_x": None, "jaw_y": None}
    )
    total_mu = sum(s.mu for s in segs)
    delivered = sum(s.mu * segment_transmission(bg, s, m0) for s in segs)
    w = lay.from_map(fmap)
    tm = m.mlc.transmission
    assert np.allclose(delivered, w + tm * (total_mu - w), atol=1e-9)
    # and its dose (with the real DLG and head scatter) reproduces the fluence's dose
    rho = water()
    dij = compute_dij(rho, DOSE_GRID, bg, m)
    d_flu = dij @ w
    d_ap = dij @ (aperture_fluence(bg, segs, m) / float(m.beam.head_scatter_at(40.0)))
    hi = d_flu > 0.5 * d_flu.max()
    assert hi.sum() > 10
    assert np.abs(d_ap[hi] - d_flu[hi]).max() / d_flu.max() < 0.06


def test_offset_survives_the_stage_store_round_trip():
    from rayrt import pipeline
    from rayrt.domain.planning import PlanningRequest
    from rayrt.pipeline import restore_output
    from rayrt.pipeline.planning import BeamletSet, BeamletSpec, beamlet_task

    m = get_machine("standard")
    bg = beamlet_grid_for_field(BEAM, m, (-12.5, 12.5), (-10, 10), W, column_offset_mm=ISO_OFF)
    (st,) = pipeline.recipe(["beamlets"])
    files = pipeline.write_result_files(BeamletSet(beams=[BeamletSpec.of(bg)]))
    assert json.loads(files["result.json"])["beams"][0]["column_offset_mm"] == ISO_OFF
    back = restore_output(st, lambda name: files[name]).grids()[0]
    assert isinstance(back, BeamletGrid) and back.column_offset_mm == ISO_OFF
    assert np.array_equal(back.u_mm, bg.u_mm) and np.array_equal(back.cols, bg.cols)
    assert back.subset(0, 3).column_offset_mm == ISO_OFF
    # a stored grid without the field (written before it existed) reads as edge-aligned
    old = json.loads(files["result.json"])
    del old["beams"][0]["column_offset_mm"]
    assert BeamletSet.model_validate(old).grids()[0].column_offset_mm == 0.0
    # the planning request chooses the alignment, validated
    assert PlanningRequest().bixel_columns == "edge"
    assert PlanningRequest(bixel_columns="isocenter").bixel_columns == "isocenter"
    with pytest.raises(ValidationError):
        PlanningRequest(bixel_columns="middle")
    g, t = box_target()
    spec = beamlet_task((Beam(gantry_deg=0, isocenter_mm=(0, 0, 0)), m.name, g, W, 5.0, "isocenter"), t)
    assert spec.column_offset_mm == ISO_OFF and np.allclose(
        np.asarray(spec.grid().u_mm) / W, np.rint(np.asarray(spec.grid().u_mm) / W)
    )
    assert beamlet_task((Beam(gantry_deg=0, isocenter_mm=(0, 0, 0)), m.name, g, W, 5.0), t).column_offset_mm == 0.0
