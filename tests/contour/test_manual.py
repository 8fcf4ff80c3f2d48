"""Manual delineation: polygon checks, rasterisation round trip, slice edits."""

from __future__ import annotations

import numpy as np
import pytest

from rayrt.contour.automatic import auto_contour
from rayrt.contour.manual import polygon_self_intersects, rasterize, replace_slices, validate_polygons
from rayrt.contour.synthetic import centred_grid, dice, ellipsoid_mask, thorax_phantom
from rayrt.domain.errors import InputError
from rayrt.imaging.polygons import mask_to_polygons


def _square(z, x0=-20.0, y0=-20.0, size=40.0):
    return np.array([[x0, y0, z], [x0 + size, y0, z], [x0 + size, y0 + size, z], [x0, y0 + size, z]])


def test_self_intersection_detection():
    assert polygon_self_intersects(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)) == -1
    assert polygon_self_intersects(np.array([[0, 0], [1, 1], [1, 0], [0, 1]], float)) >= 0  # bow tie
    star = np.array([[np.cos(a), np.sin(a)] for a in np.linspace(0, 4 * np.pi, 5, endpoint=False)])  # pentagram
    assert polygon_self_intersects(star) >= 0
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    blob = np.c_[np.cos(t) * (1 + 0.3 * np.cos(5 * t)), np.sin(t) * (1 + 0.3 * np.cos(5 * t))]
    assert polygon_self_intersects(blob) == -1
    # a closing point equal to the first one and repeated points are not crossings
    assert polygon_self_intersects(np.array([[0, 0], [1, 0], [1, 0], [1, 1], [0, 1], [0, 0]], float)) == -1


def test_polygon_validation_errors():
    grid = centred_grid((10, 40, 40), (2.0, 2.0, 3.0))
    z0 = float(grid.axis_mm("z")[4])
    bow = np.array([[-10, -10, z0], [10, 10, z0], [10, -10, z0], [-10, 10, z0]], float)
    with pytest.raises(InputError, match="crosses itself"):
        validate_polygons([bow], grid)
    tilted = _square(z0)
    tilted[2, 2] += 3.0
    with pytest.raises(InputError, match="not on one axial slice"):
        validate_polygons([tilted], grid)
    with pytest.raises(InputError, match="between image slices"):
        validate_polygons([_square(z0 + 1.5)], grid)
    with pytest.raises(InputError, match="outside the image's slices"):
        validate_polygons([_square(z0 + 300.0)], grid)
    with pytest.raises(InputError, match="fewer than 3"):
        validate_polygons([np.array([[0, 0, z0], [1, 0, z0], [1, 0, z0]], float)], grid)
    with pytest.raises(InputError, match="no area"):
        validate_polygons([np.array([[0, 0, z0], [1, 0, z0], [2, 0, z0]], float)], grid)
    with pytest.raises(InputError, match="entirely outside"):
        validate_polygons([_square(z0, x0=500.0)], grid)


def test_rasterize_with_hole_and_replace_slice():
    grid = centred_grid((10, 40, 40), (2.0, 2.0, 3.0))
    z0 = float(grid.axis_mm("z")[4])
    outer, hole = _square(z0, -21, -21, 42), _square(z0, -9, -9, 18)
    m = rasterize([outer, hole], grid)
    assert m[4].sum() == 21 * 21 - 9 * 9 and m.sum() == m[4].sum()
    z1 = float(grid.axis_mm("z")[6])
    m2 = replace_slices(m, [_square(z1, -11, -11, 22)], grid)
    assert m2[6].sum() == 11 * 11 and np.array_equal(m2[4], m[4])
    m3 = replace_slices(m2, [], grid, z_mm=[z0])
    assert not m3[4].any() and m3[6].any()


def test_mask_polygons_mask_round_trip_per_structure():
    ct, truth = thorax_phantom((24, 128, 128), (4.0, 4.0, 5.0))
    grid = ct.grid
    structures = {name: m for name, _, _, m in auto_contour(ct, "CT")}
    structures["Sphere"] = ellipsoid_mask(grid, (12.0, -7.0, 3.0), (25.0, 25.0, 25.0))
    for name, mask in structures.items():
        polys = mask_to_polygons(mask, grid)
        back = rasterize(polys, grid)  # includes the self-intersection and planarity checks
        assert dice(back, mask) >= 0.99, name
