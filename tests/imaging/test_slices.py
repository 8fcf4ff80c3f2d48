"""Display planes (rayrt.imaging.slices): orientation of axial / coronal / sagittal pictures,
resampling another volume onto them (exact for linear fields), masks, geometry helpers."""

from __future__ import annotations

import numpy as np
import pytest

from rayrt.domain.errors import InputError
from rayrt.imaging.slices import (
    PLANES,
    mask_on_plane,
    plane_axes,
    plane_extent_mm,
    plane_image,
    plane_index_range,
    plane_pixel_mm,
    plane_pixel_to_index,
    plane_position_mm,
    plane_shape,
    resample_on_plane,
    slice_through,
)
from rayrt.imaging.volume import Grid, Volume

CT = Grid(shape=(7, 9, 11), spacing_mm=(1.5, 2.0, 3.0), origin_mm=(-7.5, -8.0, -9.0))


def _world_picture(grid: Grid, plane: str, index: int) -> np.ndarray:
    """LPS (x, y, z) of every picture pixel, from plane_pixel_to_index (affine in row and column)."""
    rows, cols = plane_shape(grid, plane)
    p00, p10, p01 = (np.array(plane_pixel_to_index(grid, plane, index, r, c)) for r, c in ((0, 0), (1, 0), (0, 1)))
    r = np.arange(rows)[:, None, None]
    c = np.arange(cols)[None, :, None]
    return grid.index_to_world(p00 + r * (p10 - p00) + c * (p01 - p00))


def _coords(grid: Grid) -> Volume:
    """A volume whose value encodes the voxel index: 10000 k + 100 j + i."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    return Volume((10000 * k + 100 * j + i).astype(np.int32), grid, "index")


def test_shapes_spacing_and_ranges() -> None:
    assert plane_shape(CT, "axial") == (9, 11)
    assert plane_shape(CT, "coronal") == (7, 11)
    assert plane_shape(CT, "sagittal") == (7, 9)
    assert plane_pixel_mm(CT, "axial") == (2.0, 1.5)
    assert plane_pixel_mm(CT, "coronal") == (3.0, 1.5)
    assert plane_pixel_mm(CT, "sagittal") == (3.0, 2.0)
    assert plane_index_range(CT, "axial") == range(7)
    assert plane_index_range(CT, "coronal") == range(9)
    assert plane_index_range(CT, "sagittal") == range(11)
    assert plane_axes(CT, "axial").names == ("k", "j", "i")


def test_head_first_supine_orientation() -> None:
    """Identity direction: axial = array[k] as stored (anterior row 0, patient right col 0);
    coronal / sagittal upside down (superior at the top)."""
    v = _coords(CT)
    assert np.array_equal(plane_image(v, "axial", 3), v.array[3])
    assert np.array_equal(plane_image(v, "coronal", 4), v.array[::-1, 4, :])
    assert np.array_equal(plane_image(v, "sagittal", 5), v.array[::-1, :, 5])
    for plane in PLANES:
        w = _world_picture(CT, plane, 2)
        rows_axis, cols_axis = {"axial": (1, 0), "coronal": (2, 0), "sagittal": (2, 1)}[plane]
        d_row = np.diff(w[:, 0, rows_axis])
        d_col = np.diff(w[0, :, cols_axis])
        if plane == "axial":
            assert np.all(d_row > 0), "axial rows go anterior -> posterior (+y)"
        else:
            assert np.all(d_row < 0), f"{plane}: superior at the top (z falls down the rows)"
        assert np.all(d_col > 0), f"{plane}: columns go towards +x (patient left) or +y (posterior)"


@pytest.mark.parametrize("signs", [(-1, 1, 1), (1, -1, 1), (1, 1, -1), (-1, -1, -1)])
def test_flipped_grids_show_the_same_picture(signs) -> None:
    """A volume stored with reversed axes (feet-first, prone ...) is displayed exactly like the same
    anatomy stored head-first-supine: same pictures pixel for pixel."""

    def f(xyz: np.ndarray) -> np.ndarray:
        return xyz[..., 0] * 1.0 + xyz[..., 1] * 100.0 + xyz[..., 2] * 10000.0

    ref = Volume(f(CT.voxel_centers_mm()), CT)
    lo, hi = CT.bounds_mm()
    origin = np.where(np.array(signs) > 0, lo + CT.spacing / 2, hi - CT.spacing / 2)
    flipped = Grid(shape=CT.shape, spacing_mm=CT.spacing_mm, origin_mm=tuple(origin), direction=tuple(np.diag(signs)))
    vol = Volume(f(flipped.voxel_centers_mm()), flipped)
    for plane in PLANES:
        for idx in plane_index_range(CT, plane):
            pos = plane_position_mm(CT, plane, idx)
            j = slice_through(flipped, plane, _point_on(plane, pos))
            assert np.allclose(plane_image(vol, plane, j), plane_image(ref, plane, idx)), (plane, idx)


def _point_on(plane: str, pos: float) -> tuple[float, float, float]:
    return {"axial": (0.0, 0.0, pos), "coronal": (0.0, pos, 0.0), "sagittal": (pos, 0.0, 0.0)}[plane]


def test_oblique_or_permuted_grids_are_refused() -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    oblique = Grid(
        shape=(3, 4, 5), spacing_mm=(1, 1, 1), origin_mm=(0, 0, 0), direction=((c, -s, 0), (s, c, 0), (0, 0, 1))
    )
    permuted = Grid(
        shape=(3, 4, 5), spacing_mm=(1, 1, 1), origin_mm=(0, 0, 0), direction=((0, 1, 0), (1, 0, 0), (0, 0, 1))
    )
    for g in (oblique, permuted):
        with pytest.raises(InputError) as err:
            plane_image(Volume(np.zeros(g.shape), g), "axial", 0)
        assert err.value.status == 422 and err.value.field == "direction"


def test_bad_plane_and_index() -> None:
    v = _coords(CT)
    with pytest.raises(InputError) as err:
        plane_image(v, "oblique", 0)  # type: ignore[arg-type]
    assert err.value.field == "plane" and err.value.status == 422
    for bad in (-1, 7, True):
        with pytest.raises(InputError) as err:
            plane_image(v, "axial", bad)
        assert err.value.field == "index"
    with pytest.raises(InputError):
        resample_on_plane(v, CT, "coronal", 9)


def test_linear_dose_on_a_finer_ct_is_exact() -> None:
    """A dose linear in x (and in y, z) on a coarse grid, read on a finer CT's planes: the exact
    values at every CT pixel inside the dose grid's voxel centres, ``fill`` outside."""
    ct = Grid(shape=(21, 40, 50), spacing_mm=(1.0, 1.0, 2.0), origin_mm=(-24.5, -19.5, -20.0))
    dose_grid = Grid(shape=(9, 9, 11), spacing_mm=(4.0, 4.0, 4.0), origin_mm=(-20.0, -16.0, -16.0))

    def f(xyz: np.ndarray) -> np.ndarray:
        return 10.0 + 0.5 * xyz[..., 0] + 0.25 * xyz[..., 1] - 0.125 * xyz[..., 2]

    dose = Volume(f(dose_grid.voxel_centers_mm()).astype(np.float32), dose_grid, "dose_gy")
    lo = dose_grid.origin
    hi = dose_grid.origin + dose_grid.spacing * (np.array(dose_grid.size_ijk) - 1)
    for plane in PLANES:
        for idx in plane_index_range(ct, plane):
            got = resample_on_plane(dose, ct, plane, idx, fill=-1.0)
            assert got.dtype == np.float32 and got.shape == plane_shape(ct, plane)
            xyz = _world_picture(ct, plane, idx)
            inside = np.all((xyz >= lo - 1e-9) & (xyz <= hi + 1e-9), axis=-1)
            assert np.allclose(got[inside], f(xyz[inside]), atol=1e-4), (plane, idx)
            assert np.all(got[~inside] == -1.0)
    # the x-only field of the issue: a profile along the axial columns
    dose_x = Volume((2.0 * dose_grid.voxel_centers_mm()[..., 0]).astype(np.float32), dose_grid, "dose_gy")
    row = resample_on_plane(dose_x, ct, "axial", 10)[20]
    x = ct.axis_mm("x")
    ok = (x >= -20.0) & (x <= 20.0)
    assert np.allclose(row[ok], 2.0 * x[ok], atol=1e-4) and np.all(row[~ok] == 0.0)


def test_same_grid_resampling_is_the_plane_image() -> None:
    v = _coords(CT)
    for plane in PLANES:
        assert np.array_equal(resample_on_plane(v, CT, plane, 2), plane_image(v, plane, 2).astype(np.float32))


def test_oblique_source_volume_is_interpolated() -> None:
    """A rotated source grid (an oblique MR, say) takes the general path: still exact for a linear field."""
    ct = Grid(shape=(5, 30, 30), spacing_mm=(1.0, 1.0, 2.0), origin_mm=(-14.5, -14.5, -4.0))
    c, s = np.cos(0.4), np.sin(0.4)
    src_grid = Grid(
        shape=(12, 40, 40),
        spacing_mm=(1.2, 1.2, 1.5),
        origin_mm=(-20.0, -10.0, -8.0),
        direction=((c, -s, 0), (s, c, 0), (0, 0, 1)),
    )

    def f(xyz: np.ndarray) -> np.ndarray:
        return 3.0 * xyz[..., 0] - 2.0 * xyz[..., 1] + xyz[..., 2]

    src = Volume(f(src_grid.voxel_centers_mm()), src_grid, "MR")
    for plane in PLANES:
        idx = plane_index_range(ct, plane)[len(plane_index_range(ct, plane)) // 2]
        got = resample_on_plane(src, ct, plane, idx, fill=np.nan)
        xyz = _world_picture(ct, plane, idx)
        kji = src_grid.world_to_index(xyz)
        inside = np.all((kji >= -1e-9) & (kji <= np.array(src_grid.shape) - 1 + 1e-9), axis=-1)
        assert inside.any() and (~inside).any()
        assert np.allclose(got[inside], f(xyz[inside]), atol=1e-3)
        assert np.all(np.isnan(got[~inside]))


def test_masks_cut_like_images() -> None:
    m = np.zeros(CT.shape, dtype=bool)
    m[2:5, 1:3, 6:10] = True
    for plane in PLANES:
        for idx in plane_index_range(CT, plane):
            got = mask_on_plane(m, plane, idx)
            assert got.dtype == bool
            assert np.array_equal(got, plane_image(Volume(m, CT), plane, idx))
    assert mask_on_plane(m, "axial", 3).sum() == 8 and mask_on_plane(m, "axial", 0).sum() == 0


def test_extent_and_positions() -> None:
    left, right, bottom, top = plane_extent_mm(CT, "axial")
    assert (left, right) == (-8.25, 8.25) and (top, bottom) == (-9.0, 9.0)
    left, right, bottom, top = plane_extent_mm(CT, "coronal")
    assert top > bottom and top == pytest.approx(-9.0 + 6 * 3.0 + 1.5)
    assert plane_position_mm(CT, "axial", 2) == pytest.approx(-9.0 + 6.0)
    assert plane_position_mm(CT, "sagittal", 1) == pytest.approx(-7.5 + 1.5)
    assert slice_through(CT, "coronal", (0.0, 0.1, 0.0)) == 4
    assert slice_through(CT, "axial", (0.0, 0.0, 1e6)) == 6
