"""Semi-automatic delineation on analytic phantoms: growing, interpolation, margins, booleans, rings, PET."""

from __future__ import annotations

import numpy as np
import pytest

from rayrt.contour.morphology import (
    SURFACE_OFFSET,
    Margins,
    _effective_margins,
    _octant_offsets,
    _scatter_dilate,
    contract,
    expand,
    fill_holes_per_slice,
    smooth,
)
from rayrt.contour.semiauto import boolean, interpolate_slices, pet_threshold, region_grow, ring
from rayrt.contour.synthetic import centred_grid, cylinder_mask, dice, ellipsoid_mask
from rayrt.domain.errors import InputError
from rayrt.imaging.volume import Volume


def _sphere_volume_cc(r_mm: float) -> float:
    return 4.0 / 3.0 * np.pi * r_mm**3 / 1000.0


# ------------------------------------------------------------------ region growing
def _blob_ct():
    grid = centred_grid((40, 80, 80), (2.0, 2.0, 2.5))
    truth = ellipsoid_mask(grid, (10.0, -5.0, 0.0), (25.0, 18.0, 30.0))
    rng = np.random.default_rng(1)
    body = cylinder_mask(grid, (0.0, 0.0), (75.0, 75.0))
    hu = np.where(body, 0.0, -1000.0) + np.where(truth, 60.0, 0.0) + rng.normal(0, 5, grid.shape)
    return Volume(hu.astype(np.float32), grid, "HU"), truth, body


def test_grow_from_one_seed_matches_ellipsoid():
    ct, truth, body = _blob_ct()
    grown = region_grow(ct, (10.0, -5.0, 0.0), (40.0, 200.0), body=body)
    assert dice(grown, truth) >= 0.97


def test_grow_with_box_limits_region():
    ct, truth, body = _blob_ct()
    grown = region_grow(
        ct, (10.0, -5.0, 0.0), (40.0, 200.0), box_mm=((-20.0, -30.0, -10.0), (40.0, 20.0, 10.0)), body=body
    )
    z = ct.grid.axis_mm("z")
    assert not grown[np.abs(z) > 10.0 + 1e-6].any()
    assert grown.sum() < truth.sum()


def test_grow_refuses_leak_and_bad_seed():
    ct, truth, body = _blob_ct()
    with pytest.raises(InputError, match="leak|faces"):
        region_grow(ct, (10.0, -5.0, 0.0), (-2000.0, 2000.0), body=body)
    with pytest.raises(InputError, match="outside the image"):
        region_grow(ct, (500.0, 0.0, 0.0), (40.0, 200.0))
    with pytest.raises(InputError, match="outside the window"):
        region_grow(ct, (-60.0, 0.0, 0.0), (40.0, 200.0))
    # body-sized region in a window that excludes the outside air: refused by the fraction rule
    with pytest.raises(InputError, match="% of the External"):
        region_grow(ct, (-60.0, 0.0, 0.0), (-50.0, 300.0), body=body, max_border_faces=6)


# ------------------------------------------------------------------ interpolation
def test_interpolation_from_every_fourth_slice():
    grid = centred_grid((48, 64, 64), (2.0, 2.0, 2.0))
    truth = ellipsoid_mask(grid, (3.0, -4.0, 1.0), (30.0, 22.0, 40.0))
    ks = np.flatnonzero(truth.any(axis=(1, 2)))
    keys = list(range(ks[0], ks[-1] + 1, 4))
    if keys[-1] != ks[-1]:
        keys.append(int(ks[-1]))
    sparse = np.zeros_like(truth)
    sparse[keys] = truth[keys]
    filled = interpolate_slices(sparse, grid)
    assert dice(filled, truth) >= 0.95
    assert dice(sparse, truth) < 0.5  # the test is not trivially satisfied by the key slices
    # only the first..last key range is filled
    assert not filled[: keys[0]].any() and not filled[keys[-1] + 1 :].any()


def test_interpolation_needs_two_slices():
    grid = centred_grid((10, 20, 20), (2.0, 2.0, 2.0))
    m = np.zeros(grid.shape, bool)
    m[5, 5:10, 5:10] = True
    with pytest.raises(InputError, match="at least two slices"):
        interpolate_slices(m, grid)


# ------------------------------------------------------------------ margins
@pytest.mark.parametrize("margin_mm", [5.0, 10.0])
@pytest.mark.parametrize("spacing", [(1.25, 1.25, 1.5), (1.0, 1.0, 2.5), (2.0, 2.0, 3.0)])
def test_isotropic_expansion_of_sphere_matches_analytic_volume(margin_mm, spacing):
    shape = tuple(int(np.ceil(80.0 / s)) for s in spacing[::-1])
    grid = centred_grid(shape, spacing)  # anisotropic voxels
    R = 25.0
    sphere = ellipsoid_mask(grid, (0.0, 0.0, 0.0), (R, R, R))
    grown = expand(sphere, grid, Margins.isotropic(margin_mm))
    vol = grown.sum() * grid.voxel_volume_cc
    assert vol == pytest.approx(_sphere_volume_cc(R + margin_mm), rel=0.03)
    shrunk = contract(grown, grid, Margins.isotropic(margin_mm))
    assert dice(shrunk, sphere) >= 0.97


def test_contraction_of_sphere_matches_analytic_volume():
    grid = centred_grid((48, 64, 64), (1.25, 1.25, 1.5))
    sphere = ellipsoid_mask(grid, (0.0, 0.0, 0.0), (30.0, 30.0, 30.0))
    shrunk = contract(sphere, grid, Margins.isotropic(7.0))
    assert shrunk.sum() * grid.voxel_volume_cc == pytest.approx(_sphere_volume_cc(23.0), rel=0.03)


def _extent(mask, grid):
    """min/max voxel-centre coordinate (mm) of a mask along x, y, z."""
    out = []
    for axis, ax_i in (("x", (0, 1)), ("y", (0, 2)), ("z", (1, 2))):
        c = grid.axis_mm(axis)
        nz = np.flatnonzero(mask.any(axis=ax_i))
        out.append((c[nz[0]], c[nz[-1]]))
    return np.array(out)


def test_anisotropic_per_axis_margin_checked_per_axis():
    grid = centred_grid((40, 60, 60), (1.0, 1.5, 2.5))
    R = 15.0
    sphere = ellipsoid_mask(grid, (0.0, 0.0, 0.0), (R, R, R))
    m = Margins.per_axis(4.0, 9.0, 15.0)
    grown = expand(sphere, grid, m)
    e0, e1 = _extent(sphere, grid), _extent(grown, grid)
    np.testing.assert_allclose(e1[:, 1] - e0[:, 1], [4.0, 9.0, 15.0], atol=max(grid.spacing) / 2 + 1e-6)
    np.testing.assert_allclose(e0[:, 0] - e1[:, 0], [4.0, 9.0, 15.0], atol=max(grid.spacing) / 2 + 1e-6)
    # a single voxel grows into the ellipsoid of the margins (lattice points inside it)
    dot = np.zeros(grid.shape, bool)
    dot[20, 30, 30] = True
    ell = expand(dot, grid, m)
    z, y, x = np.meshgrid(
        grid.axis_mm("z") - grid.axis_mm("z")[20],
        grid.axis_mm("y") - grid.axis_mm("y")[30],
        grid.axis_mm("x") - grid.axis_mm("x")[30],
        indexing="ij",
    )
    f = SURFACE_OFFSET  # margins are measured from the surface, f voxel beyond the outermost centres
    ax, ay, az = 4.0 + f * grid.spacing[0], 9.0 + f * grid.spacing[1], 15.0 + f * grid.spacing[2]
    expected = (x / ax) ** 2 + (y / ay) ** 2 + (z / az) ** 2 <= 1 + 1e-9
    assert np.array_equal(ell, expected)


def test_per_direction_margins_exact_per_direction():
    grid = centred_grid((44, 60, 60), (1.0, 1.5, 2.5))
    sphere = ellipsoid_mask(grid, (0.0, 0.0, 0.0), (12.0, 12.0, 12.0))
    m = Margins(left_mm=3.0, right_mm=8.0, anterior_mm=6.0, posterior_mm=12.0, superior_mm=5.0, inferior_mm=20.0)
    grown = expand(sphere, grid, m)
    e0, e1 = _extent(sphere, grid), _extent(grown, grid)
    tol = max(grid.spacing) / 2 + 1e-6
    # +x = left, +y = posterior, +z = superior
    np.testing.assert_allclose(e1[:, 1] - e0[:, 1], [3.0, 12.0, 5.0], atol=tol)
    np.testing.assert_allclose(e0[:, 0] - e1[:, 0], [8.0, 6.0, 20.0], atol=tol)
    assert grown[sphere].all()
    # symmetric margins through the octant scatter path agree exactly with the EDT path
    sym = Margins.per_axis(4.0, 7.0, 10.0)
    m_arr = np.array([[10.0, 10.0], [7.0, 7.0], [4.0, 4.0]])
    pad = np.pad(sphere, 8)
    from rayrt.contour.synthetic import centred_grid as cg

    g2 = cg(pad.shape, grid.spacing_mm)
    via_edt = expand(pad, g2, sym)
    via_scatter = _scatter_dilate(
        pad, _octant_offsets(g2.spacing[::-1], _effective_margins(m_arr, g2.spacing[::-1], SURFACE_OFFSET))
    )
    assert np.array_equal(via_edt, via_scatter)
    # contraction with per-direction margins is the dual of expansion
    shrunk = contract(grown, grid, m)
    assert dice(shrunk, sphere) >= 0.95


def test_ring_and_booleans():
    grid = centred_grid((40, 64, 64), (2.0, 2.0, 2.0))
    a = ellipsoid_mask(grid, (0.0, 0.0, 0.0), (20.0, 20.0, 20.0))
    b = ellipsoid_mask(grid, (10.0, 0.0, 0.0), (20.0, 20.0, 20.0))
    r = ring(a, grid, 4.0, 12.0)
    expected = _sphere_volume_cc(32.0) - _sphere_volume_cc(24.0)
    assert r.sum() * grid.voxel_volume_cc == pytest.approx(expected, rel=0.04)
    assert not (r & a).any()
    assert np.array_equal(boolean("union", [a, b]), a | b)
    assert np.array_equal(boolean("intersection", [a], [b]), a & b)
    assert np.array_equal(boolean("subtraction", [a], [b]), a & ~b)
    with pytest.raises(InputError):
        ring(a, grid, 10.0, 5.0)


def test_fill_holes_and_smooth():
    grid = centred_grid((10, 40, 40), (2.0, 2.0, 3.0))
    m = cylinder_mask(grid, (0.0, 0.0), (25.0, 25.0))
    holed = m & ~cylinder_mask(grid, (0.0, 0.0), (8.0, 8.0))
    assert np.array_equal(fill_holes_per_slice(holed), m)
    noisy = m.copy()
    noisy[:, 20, 33:36] = True  # a spike
    sm = smooth(noisy, grid, 2.0)
    assert dice(sm, m) > 0.97 and not sm[:, 20, 35].any()


# ------------------------------------------------------------------ PET threshold
def test_pet_threshold_on_ct_grid():
    ct_grid = centred_grid((40, 64, 64), (2.0, 2.0, 2.5))
    pet_grid = centred_grid((25, 32, 32), (4.0, 4.0, 4.0))
    lesion_c, lesion_r = (10.0, -6.0, 4.0), 14.0
    z, y, x = np.meshgrid(pet_grid.axis_mm("z"), pet_grid.axis_mm("y"), pet_grid.axis_mm("x"), indexing="ij")
    rr = np.sqrt((x - lesion_c[0]) ** 2 + (y - lesion_c[1]) ** 2 + (z - lesion_c[2]) ** 2)
    suv = 1.0 + 9.0 * (rr <= lesion_r)  # background 1, lesion 10
    suv[(np.abs(x + 40) < 8) & (np.abs(y) < 8) & (np.abs(z) < 8)] = 12.0  # another hot spot outside the box
    pet = Volume(suv.astype(np.float32), pet_grid, "SUV", {"modality": "PT"})
    box = ((-10.0, -30.0, -20.0), (35.0, 20.0, 30.0))
    mask, thr, suvmax = pet_threshold(pet, ct_grid, box, percent_of_max=50.0)
    assert suvmax == pytest.approx(10.0) and thr == pytest.approx(5.0)
    truth = ellipsoid_mask(ct_grid, lesion_c, (lesion_r, lesion_r, lesion_r))
    assert dice(mask, truth) >= 0.85  # 4 mm PET voxels: the edge is uncertain by about a PET voxel
    abs_mask, thr2, _ = pet_threshold(pet, ct_grid, None, suv=5.0, connected_to_max=False)
    assert abs_mask.sum() > mask.sum()  # the second hot spot is included without a box
    with pytest.raises(InputError, match="above the SUVmax"):
        pet_threshold(pet, ct_grid, box, suv=50.0)
    with pytest.raises(InputError, match="needs a box"):
        pet_threshold(pet, ct_grid, None, percent_of_max=40.0)
