"""Mask <-> polygon conversion: even-odd rasterisation, slice assignment, exact round trips."""

from __future__ import annotations

import numpy as np
import pytest

from rayrt.domain.errors import InputError
from rayrt.imaging.polygons import mask_to_polygons, rasterize_polygons
from rayrt.imaging.volume import Grid


def _grid(shape=(5, 40, 40), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=None) -> Grid:
    kw = {} if direction is None else {"direction": direction}
    return Grid(shape=shape, spacing_mm=spacing, origin_mm=origin, **kw)


def _square(x0, y0, x1, y1, z):
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=float)


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_square_counts_voxel_centres_inside():
    g = _grid()
    # edges between voxel centres: x in [4.5, 14.5] holds centres 5..14 (10), y in [2.5, 7.5] holds 3..7 (5)
    m = rasterize_polygons([_square(4.5, 2.5, 14.5, 7.5, 4.0)], g)
    assert m.sum() == 50
    assert m[2].sum() == 50  # z = 4 mm is slice 2
    assert m[2, 3:8, 5:15].all()


def test_hole_and_two_islands_even_odd():
    g = _grid()
    outer = _square(2.5, 2.5, 20.5, 20.5, 0.0)  # 18 x 18
    hole = _square(6.5, 6.5, 10.5, 10.5, 0.0)[::-1]  # 4 x 4, opposite winding
    island = _square(25.5, 25.5, 30.5, 28.5, 0.0)  # 5 x 3
    m = rasterize_polygons([outer, hole, island], g)
    assert m[0].sum() == 18 * 18 - 16 + 15
    assert not m[0, 8, 8] and m[0, 4, 4] and m[0, 27, 27]
    # same winding for the hole makes no difference with even-odd filling
    m2 = rasterize_polygons([outer, hole[::-1], island], g)
    assert np.array_equal(m, m2)


def test_contours_with_jittered_z_on_one_slice_are_one_plane():
    g = _grid(shape=(6, 30, 30), spacing=(1.0, 1.0, 2.0))
    polys = [_square(2.5, 2.5, 6.5, 6.5, 4.0), _square(10.5, 10.5, 12.5, 12.5, 4.003)]  # rounding in the file
    polys += [_square(2.5, 2.5, 6.5, 6.5, z) for z in (2.0, 6.0)]
    m = rasterize_polygons(polys, g)
    assert m[2].sum() == 16 + 4 and m[1].sum() == 16 and m[3].sum() == 16 and m.sum() == 52


def test_contours_between_image_planes_keep_extent():
    g = _grid(shape=(10, 20, 20), spacing=(1.0, 1.0, 2.0))
    # contour planes at z = 3, 5, 7 mm (between image planes at 2, 4, 6, 8 mm) represent the slab [2, 8)
    polys = [_square(2.5, 2.5, 6.5, 6.5, z) for z in (3.0, 5.0, 7.0)]
    m = rasterize_polygons(polys, g)
    assert [int(k) for k in np.nonzero(m.any(axis=(1, 2)))[0]] == [1, 2, 3]
    assert m.sum() == 3 * 16


def test_contours_on_a_coarser_or_finer_grid_use_nearest_plane():
    fine = _grid(shape=(20, 20, 20), spacing=(1.0, 1.0, 1.0))
    polys = [_square(2.5, 2.5, 6.5, 6.5, z) for z in (4.0, 7.0, 10.0)]  # 3 mm spacing: slab [2.5, 11.5)
    m = rasterize_polygons(polys, fine)
    assert [int(k) for k in np.nonzero(m.any(axis=(1, 2)))[0]] == list(range(3, 12))
    # a gap between two blocks of contours is not bridged
    polys2 = polys + [_square(2.5, 2.5, 6.5, 6.5, 19.0)]
    m2 = rasterize_polygons(polys2, fine)
    assert not m2[15].any() and m2[19].any()


def test_contours_on_every_other_slice_fill_the_slices_between():
    g = _grid(shape=(10, 20, 20), spacing=(1.0, 1.0, 2.0))
    polys = [_square(2.5, 2.5, 6.5, 6.5, z) for z in (4.0, 8.0, 12.0)]  # every second image plane
    m = rasterize_polygons(polys, g, plane_spacing_mm=2.0)  # the fallback does not override inferred spacing
    assert [int(k) for k in np.nonzero(m.any(axis=(1, 2)))[0]] == [1, 2, 3, 4, 5, 6]
    single = rasterize_polygons(polys[:1], g, plane_spacing_mm=6.0)  # one plane: slab of the given thickness
    assert [int(k) for k in np.nonzero(single.any(axis=(1, 2)))[0]] == [1, 2, 3]


def test_non_planar_contour_is_refused():
    g = _grid()
    bad = np.array([[0, 0, 0], [10, 0, 4], [10, 10, 0]], dtype=float)
    with pytest.raises(InputError, match="not parallel"):
        rasterize_polygons([bad], g)


def test_empty_and_outside():
    g = _grid()
    assert not rasterize_polygons([], g).any()
    assert not rasterize_polygons([_square(100, 100, 120, 120, 0.0)], g).any()
    # partly outside: clipped, no error
    m = rasterize_polygons([_square(-10.5, -10.5, 3.5, 3.5, 0.0)], g)
    assert m[0].sum() == 16


def _random_mask(shape, seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(1.0, 3.0, 3.0))
    m = noise > 0.05
    m[:, :2] = False  # leave a border somewhere, touch the border elsewhere
    return m


@pytest.mark.parametrize("direction", [None, ((0.0, 1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0))])
def test_round_trip_random_masks_with_holes_and_islands(direction):
    g = _grid(shape=(6, 50, 45), spacing=(0.977, 1.23, 2.5), origin=(-30.1, 12.7, -40.0), direction=direction)
    m = _random_mask(g.shape, 3)
    polys = mask_to_polygons(m, g)
    # several polygons per slice and some holes are present
    ks = np.round(g.world_to_index(np.array([p[0] for p in polys]))[:, 0]).astype(int)
    assert np.bincount(ks).max() > 3
    back = rasterize_polygons(polys, g)
    assert dice(back, m) >= 0.99
    assert np.array_equal(back, m)
    for p in polys:
        assert p.shape[1] == 3 and p.shape[0] >= 3
        assert not np.allclose(p[0], p[-1])  # closed polygon, first vertex not repeated


def test_single_voxels_and_diagonal_neighbours():
    g = _grid(shape=(1, 8, 8))
    m = np.zeros(g.shape, bool)
    m[0, 2, 2] = m[0, 3, 3] = m[0, 5, 1] = True
    assert np.array_equal(rasterize_polygons(mask_to_polygons(m, g), g), m)


def test_large_mask_round_trip():
    g = _grid(shape=(40, 256, 256), spacing=(1.0, 1.0, 2.0), origin=(-128, -128, -40))
    c = g.voxel_centers_mm()
    r = np.hypot(c[..., 0], c[..., 1])
    m = (r < 90) & (r > 30) | (np.hypot(c[..., 0] - 105, c[..., 1]) < 10)
    back = rasterize_polygons(mask_to_polygons(m, g), g)
    assert np.array_equal(back, m)
