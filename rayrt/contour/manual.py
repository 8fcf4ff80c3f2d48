"""Manual delineation: polygons drawn by a person (LPS mm), checked, then rasterised.

Each polygon is a closed planar contour on an axial image slice (first point not repeated). A
polygon is refused when it has fewer than 3 distinct points, non-finite coordinates, is not on
one image plane, lies entirely outside the image, encloses no area, or crosses itself (any two
non-adjacent edges intersect; checked per polygon with an O(n^2) segment test with bounding-box
rejection, compiled with numba). Rasterisation is :func:`rayrt.imaging.polygons.rasterize_polygons`
(even-odd at voxel centres: holes are polygons inside polygons).
"""

from __future__ import annotations

import numpy as np

from rayrt.contour._kernels import segments_intersect_any
from rayrt.domain.errors import InputError
from rayrt.imaging.polygons import rasterize_polygons
from rayrt.imaging.volume import Grid


def _dedupe(xy: np.ndarray, tol: float) -> np.ndarray:
    """Drop consecutive duplicate points and a repeated closing point."""
    keep = np.ones(len(xy), dtype=bool)
    keep[1:] = np.hypot(*(np.diff(xy, axis=0).T)) > tol
    xy = xy[keep]
    if len(xy) > 1 and np.hypot(*(xy[0] - xy[-1])) <= tol:
        xy = xy[:-1]
    return xy


def polygon_self_intersects(xy: np.ndarray, tol_mm: float = 1e-6) -> int:
    """Index of an edge of a closed polygon (n, 2) that crosses another edge, or -1 if simple."""
    xy = _dedupe(np.ascontiguousarray(xy, dtype=np.float64), tol_mm)
    if len(xy) < 4:
        return -1
    return int(segments_intersect_any(xy, tol_mm))


def validate_polygons(contours: list[np.ndarray], grid: Grid, what: str = "polygon") -> list[np.ndarray]:
    """Check manual polygons (list of (n, 3) LPS mm) against the image grid; returns float arrays.

    Raises :class:`InputError` naming the first bad polygon and what to fix.
    """
    if not contours:
        raise InputError(
            f"no {what}s given; send at least one closed polygon of (x, y, z) points in mm",
            kind="contour",
            field="contours",
        )
    lo, hi = grid.bounds_mm()
    out = []
    for n, c in enumerate(contours):
        pts = np.asarray(c, dtype=float)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise InputError(
                f"{what} {n}: expected a list of (x, y, z) points, got shape {pts.shape}",
                kind="contour",
                field="contours",
            )
        if not np.all(np.isfinite(pts)):
            raise InputError(f"{what} {n}: coordinates must be finite numbers (mm)", kind="contour", field="contours")
        kji = grid.world_to_index(pts)
        if kji[:, 0].max() - kji[:, 0].min() > 0.05:
            raise InputError(
                f"{what} {n} is not on one axial slice "
                f"(its points span {np.ptp(kji[:, 0]) * grid.spacing[2]:.2f} mm along z); "
                "draw each polygon on one image plane",
                kind="contour",
                field="contours",
            )
        k = float(kji[:, 0].mean())
        if k < -0.5 or k > grid.shape[0] - 0.5:
            raise InputError(
                f"{what} {n} lies at z = {pts[:, 2].mean():.2f} mm, "
                f"outside the image's slices ({lo[2]:.1f}..{hi[2]:.1f} mm)",
                kind="contour",
                field="contours",
            )
        if abs(k - round(k)) > 0.25:
            raise InputError(
                f"{what} {n} at z = {pts[:, 2].mean():.2f} mm is between image slices; draw it on an image plane "
                f"(nearest slice z = {float(grid.index_to_world(np.array([round(k), 0, 0]))[2]):.2f} mm)",
                kind="contour",
                field="contours",
            )
        ij = kji[:, :0:-1] * grid.spacing[:2]  # (i, j) in mm within the plane
        xy = _dedupe(ij, 1e-6)
        if len(xy) < 3:
            raise InputError(f"{what} {n} has fewer than 3 distinct points", kind="contour", field="contours")
        bad = polygon_self_intersects(xy)
        if bad >= 0:
            raise InputError(
                f"{what} {n} crosses itself (edge {bad} intersects a non-adjacent edge); "
                "redraw it as a simple closed outline (use separate polygons for separate pieces and for holes)",
                kind="contour",
                field="contours",
            )
        area = 0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1)))
        if area < 1e-6:
            raise InputError(
                f"{what} {n} encloses no area (its points are collinear)", kind="contour", field="contours"
            )
        if (
            np.all(pts[:, 0] < lo[0])
            or np.all(pts[:, 0] > hi[0])
            or np.all(pts[:, 1] < lo[1])
            or np.all(pts[:, 1] > hi[1])
        ):
            raise InputError(f"{what} {n} lies entirely outside the image", kind="contour", field="contours")
        out.append(pts)
    return out


def rasterize(contours: list[np.ndarray], grid: Grid) -> np.ndarray:
    """Validated polygons -> bool mask on ``grid`` (each polygon on the slice it is drawn on)."""
    pts = validate_polygons(contours, grid)
    # A drawn polygon belongs to its own slice only (a person draws slice by slice; the slices in
    # between are empty until interpolated), so each drawn plane is rasterised on a one-slice grid.
    ks = np.array([int(round(float(grid.world_to_index(c)[:, 0].mean()))) for c in pts])
    out = np.zeros(grid.shape, dtype=bool)
    for k in np.unique(ks):
        origin = grid.index_to_world(np.array([float(k), 0.0, 0.0]))
        plane = Grid(
            shape=(1, grid.shape[1], grid.shape[2]),
            spacing_mm=grid.spacing_mm,
            origin_mm=tuple(origin),
            direction=grid.direction,
        )
        out[k] = rasterize_polygons([pts[n] for n in np.flatnonzero(ks == k)], plane, plane_spacing_mm=grid.spacing[2])[
            0
        ]
    return out


def polygon_slices(contours: list[np.ndarray], grid: Grid) -> list[int]:
    """Slice index of each polygon."""
    return sorted({int(round(float(grid.world_to_index(np.asarray(c, dtype=float))[:, 0].mean()))) for c in contours})


def replace_slices(
    mask: np.ndarray, contours: list[np.ndarray], grid: Grid, z_mm: list[float] | None = None
) -> np.ndarray:
    """A copy of ``mask`` whose slices carrying ``contours`` (and the slices at ``z_mm``) are redrawn from them.

    Slices named in ``z_mm`` with no polygon are cleared (deleting a slice's contours).
    """
    out = mask.copy()
    ks: set[int] = set()
    if contours:
        drawn = rasterize(contours, grid)
        ks.update(polygon_slices(contours, grid))
    else:
        drawn = np.zeros_like(mask, dtype=bool)
    for z in z_mm or []:
        k = float(grid.world_to_index(np.array([grid.origin[0], grid.origin[1], z]))[0])
        kr = int(round(k))
        if kr < 0 or kr >= grid.shape[0] or abs(k - kr) > 0.25:
            raise InputError(f"z = {z:.2f} mm is not on an image slice", kind="contour", field="z_mm")
        ks.add(kr)
    if not ks:
        raise InputError("replace_slice needs polygons or slice positions (z_mm)", kind="contour")
    idx = sorted(ks)
    out[idx] = drawn[idx]
    return out
