"""IEC 61217 -> DICOM LPS beam geometry, beamlet grids on leaf-pair rows, radiological depth, phantom."""

import numpy as np
import pytest

from rayrt.domain.errors import InputError
from rayrt.domain.plan import Beam
from rayrt.dose import _numba as nb
from rayrt.dose.geometry import BeamGeometry, beamlet_grid, beamlet_grid_for_field
from rayrt.dose.phantom import (
    DEFAULT_HU_DENSITY,
    bulk_density_phantom,
    computation_phantom,
    density_from_hu,
    load_hu_calibration,
)
from rayrt.imaging.volume import Grid, Volume
from rayrt.machines import get_machine


def geo(g, c=0.0, t=0.0, iso=(0.0, 0.0, 0.0)):
    return BeamGeometry.from_angles(iso, g, c, t, 1000.0)


def test_gantry_angles_hfs():
    assert np.allclose(geo(0).direction, [0, 1, 0])  # anterior -> posterior
    assert np.allclose(geo(0).source_mm, [0, -1000, 0])
    assert np.allclose(geo(90).source_mm, [1000, 0, 0])  # from the patient's left
    assert np.allclose(geo(90).direction, [-1, 0, 0])
    assert np.allclose(geo(180).direction, [0, -1, 0])  # posterior beam
    assert np.allclose(geo(270).source_mm, [-1000, 0, 0])  # from the patient's right
    iso = (10.0, -20.0, 30.0)
    assert np.allclose(geo(45, iso=iso).source_mm - iso, 1000 * np.array([np.sin(np.pi / 4), -np.cos(np.pi / 4), 0]))


def test_collimator_and_couch():
    r = geo(0).rotation
    assert np.allclose(r[0], [1, 0, 0]) and np.allclose(r[1], [0, 0, 1])  # leaves travel along x, pairs stacked along z
    r90 = geo(0, c=90).rotation
    assert np.allclose(r90[0], [0, 0, 1])  # collimator 90: leaves travel along the patient axis
    assert np.allclose(geo(0, t=90).direction, [0, 1, 0])  # couch rotation does not tilt a vertical beam
    assert np.allclose(geo(90, t=90).source_mm, [0, 0, -1000])  # couch 90 + gantry 90: beam from the feet (HFS)
    for g, c, t in [(33, 71, 12), (250, 300, 350)]:
        R = geo(g, c, t).rotation
        assert np.allclose(R @ R.T, np.eye(3)) and np.linalg.det(R) == pytest.approx(1)
    with pytest.raises(InputError):
        BeamGeometry.from_angles((0, 0, 0), 0, patient_position="SITTING")


def test_projection_onto_isocenter_plane():
    g = geo(0)
    u, v, s = g.project(np.array([[10.0, -100.0, 20.0], [10.0, 100.0, 20.0]]))
    # a point 100 mm towards the source projects outwards by 1000/900, one beyond the isocenter inwards
    assert np.allclose(u, [10 * 1000 / 900, 10 * 1000 / 1100]) and np.allclose(v, [20 * 1000 / 900, 20 * 1000 / 1100])
    assert np.allclose(s, [900, 1100])
    p = g.point_at_iso_plane(np.array([5.0]), np.array([7.0]))
    assert np.allclose(p, [[5, 0, 7]])


def _box_target(grid, lo, hi):
    xyz = grid.voxel_centers_mm()
    return np.all((xyz >= lo) & (xyz <= hi), axis=-1)


def test_beamlet_rows_are_leaf_pairs_and_cover_target():
    g = Grid(shape=(40, 40, 40), spacing_mm=(2.5, 2.5, 2.5), origin_mm=(-48.75, -48.75, -48.75))
    tgt = _box_target(g, (-20, -20, -12), (20, 20, 12))
    for name, heights in [
        ("truebeam_m120", {5.0}),
        ("truebeam_hd120", {2.5}),
        ("synergy_mlci2", {10.0}),
        ("halcyon", {5.0}),
    ]:
        m = get_machine(name)
        bg = beamlet_grid(Beam(gantry_deg=0, isocenter_mm=(0, 0, 0)), m, tgt, g, bixel_width_mm=5.0, margin_mm=5.0)
        assert set(np.round(bg.height_mm, 6)) == heights
        edges = m.mlc.boundaries
        if not m.mlc.dual_layer:
            assert np.all(np.isin(np.round(bg.v_mm - bg.height_mm / 2, 6), np.round(edges, 6)))
        # the projection (|x| <= 20 at depth up to 20 mm -> <= 20*1000/980) plus 5 mm margin is covered,
        # nothing far beyond
        assert bg.u_mm.min() - 2.5 <= -25 and bg.u_mm.max() + 2.5 >= 25
        assert bg.u_mm.min() - 2.5 >= -37.5 and bg.u_mm.max() + 2.5 <= 37.5
        assert (bg.v_mm - bg.height_mm / 2).min() <= -17 and (bg.v_mm + bg.height_mm / 2).max() >= 17
        order = np.lexsort((bg.cols, bg.rows))
        assert np.array_equal(order, np.arange(bg.num_bixels))  # sorted by row, then column


def test_beamlet_grid_refuses_unreachable_angles_and_empty_targets():
    g = Grid(shape=(10, 10, 10), spacing_mm=(5, 5, 5), origin_mm=(-22.5, -22.5, -22.5))
    tgt = _box_target(g, (-5, -5, -5), (5, 5, 5))
    with pytest.raises(InputError, match="couch"):
        beamlet_grid(Beam(gantry_deg=0, couch_deg=30, isocenter_mm=(0, 0, 0)), get_machine("halcyon"), tgt, g)
    with pytest.raises(InputError, match="empty"):
        beamlet_grid(Beam(gantry_deg=0, isocenter_mm=(0, 0, 0)), get_machine("standard"), np.zeros(g.shape, bool), g)
    bg = beamlet_grid_for_field(
        Beam(gantry_deg=0, isocenter_mm=(0, 0, 0)), get_machine("standard"), (-50, 50), (-50, 50), 5.0
    )
    assert bg.num_bixels == 400


def _siddon(rho, grid, src, pts):
    axes = grid.direction_matrix * grid.spacing[None, :]
    return nb.radiological_depths(
        rho.astype(np.float32), grid.origin, np.linalg.inv(axes), np.asarray(src, float), np.asarray(pts, float)
    )


def test_siddon_exact_path_lengths():
    g = Grid(shape=(30, 40, 50), spacing_mm=(2.0, 3.0, 4.0), origin_mm=(-49.0, -58.5, -58.0))
    rho = np.ones(g.shape)
    lo, hi = g.bounds_mm()
    src = np.array([30.0, -1000.0, 7.0])
    pts = np.array([[0.0, 0.0, 0.0], [20.0, 30.0, -40.0], [-45.0, 50.0, 10.0]])
    d = _siddon(rho, g, src, pts)
    for p, dd in zip(pts, d):
        # length inside the box = from entry through y = lo[1] to the point
        t = (lo[1] - src[1]) / (p[1] - src[1])
        entry = src + t * (p - src)
        assert dd == pytest.approx(np.linalg.norm(p - entry), rel=1e-9)
    # a lung slab (0.25) of known thickness shortens the radiological path by 0.75 x its chord
    rho2 = rho.copy()
    y = g.axis_mm("y")
    slab = (y > -30) & (y < 0)
    rho2[:, slab, :] = 0.25
    d2 = _siddon(rho2, g, src, pts[:1])
    thick = (y[slab].max() + 1.5) - (y[slab].min() - 1.5)
    chord = thick * np.linalg.norm(pts[0] - src) / (pts[0][1] - src[1])
    assert d[0] - d2[0] == pytest.approx(0.75 * chord, rel=1e-9)


def test_hu_density_and_overrides(tmp_path):
    g = Grid(shape=(2, 2, 2), spacing_mm=(1, 1, 1), origin_mm=(0, 0, 0))
    hu = Volume(np.array([-1000, -800, 0, 40, 1000, 3071, -1024, 500], np.float32).reshape(2, 2, 2), g, "HU")
    rho = density_from_hu(hu, DEFAULT_HU_DENSITY).array.ravel()
    assert np.allclose(rho[:7], [0.001, 0.19, 1.0, 1.04, 1.52, 2.6, 0.0], atol=1e-6)
    assert load_hu_calibration().points == DEFAULT_HU_DENSITY.points  # configs/hu_density.yaml is the default curve
    ext = np.ones(g.shape, bool)
    ext[0, 0, 0] = False
    couch = np.zeros(g.shape, bool)
    couch[1, 1, 1] = True
    ph = computation_phantom(
        hu, {"couch": couch}, {"couch": 0.5}, external_mask=ext, calibration=DEFAULT_HU_DENSITY
    ).array
    assert ph[0, 0, 0] == 0 and ph[1, 1, 1] == pytest.approx(0.5) and ph[0, 0, 1] == pytest.approx(0.19)
    with pytest.raises(InputError, match="liver"):
        computation_phantom(hu, {"couch": couch}, {"liver": 1.05})
    with pytest.raises(InputError, match="bulk density"):
        computation_phantom(hu, {"couch": couch}, {"couch": "unobtainium"})
    (tmp_path / "bad.yaml").write_text("points: [[0, 1.0], [-10, 0.9]]\n")
    with pytest.raises(InputError, match="HU"):
        load_hu_calibration(tmp_path / "bad.yaml")
    # MR-only: bulk densities from masks, no CT
    mr = bulk_density_phantom(g, {"BODY": ext, "bone": couch}, {"bone": "bone"}, external="BODY").array
    assert mr[0, 0, 0] == 0 and mr[1, 1, 1] == pytest.approx(1.6) and mr[0, 1, 0] == pytest.approx(1.0)
