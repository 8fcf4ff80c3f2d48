"""Voxel masks <-> closed planar polygons (DICOM RTSTRUCT contours) in LPS mm.

Method, stated once:

* **Rasterisation** (:func:`rasterize_polygons`) decides voxel membership at voxel *centres*
  with the even-odd rule over *all* polygons assigned to a slice: a hole is simply a second
  polygon inside the first, several islands are several polygons, and a polygon with the
  opposite winding changes nothing. Edges are taken half-open (a centre exactly on a left
  boundary is inside, on a right boundary outside), so two polygons sharing an edge never
  double-count a voxel.
* **Slice assignment**: the contour planes of one call (in index units along the slice
  normal) are grouped into blocks of regular spacing; each contour plane represents the slab
  half-way to its neighbours (half a plane spacing beyond the first and last plane of a
  block). A grid slice whose centre lies in a plane's slab (half-open) takes that plane's
  polygons. Contours on image planes therefore map one-to-one; contours between image planes
  (or on another grid, e.g. a dose grid) map by nearest plane without changing the
  structure's extent along the normal. A gap of more than 1.5 plane spacings between contour
  planes is kept as a gap (no filling between separate parts).
* **Polygon extraction** (:func:`mask_to_polygons`) runs marching squares at level 0.5 on
  each slice (``skimage.measure.find_contours``), so every vertex lies half-way between an
  inside and an outside voxel centre; collinear vertices are dropped. Rasterising the result
  reproduces the mask exactly (up to floating-point rounding of coordinates).
"""

from __future__ import annotations

import numba
import numpy as np

from rayrt.domain.errors import InputError
from rayrt.imaging.volume import Grid

__all__ = ["rasterize_polygons", "mask_to_polygons", "polygon_planes"]


@numba.njit(cache=True)
def _fill_even_odd(vi, vj, starts, counts, pair_poly, pair_k, nk, nj, ni):  # pragma: no cover - numba
    parity = np.zeros((nk, nj, ni + 1), np.uint8)
    touched = np.zeros(nk, np.bool_)
    for q in range(pair_poly.shape[0]):
        p = pair_poly[q]
        k = pair_k[q]
        touched[k] = True
        s = starts[p]
        n = counts[p]
        for e in range(n):
            x0 = vi[s + e]
            y0 = vj[s + e]
            e1 = s + e + 1 if e + 1 < n else s
            x1 = vi[e1]
            y1 = vj[e1]
            if y0 == y1:
                continue
            if y0 < y1:
                ylo = y0
                yhi = y1
            else:
                ylo = y1
                yhi = y0
            j0 = int(np.ceil(ylo))
            j1 = int(np.ceil(yhi))  # rows j with ylo <= j < yhi
            if j0 < 0:
                j0 = 0
            if j1 > nj:
                j1 = nj
            slope = (x1 - x0) / (y1 - y0)
            for j in range(j0, j1):
                x = x0 + (j - y0) * slope
                c = int(np.ceil(x))
                if c < 0:
                    c = 0
                elif c > ni:
                    c = ni
                parity[k, j, c] ^= 1
    out = np.zeros((nk, nj, ni), np.bool_)
    for k in range(nk):
        if not touched[k]:
            continue
        for j in range(nj):
            acc = 0
            for i in range(ni):
                acc ^= parity[k, j, i]
                out[k, j, i] = acc == 1
    return out


def polygon_planes(
    contours: list[np.ndarray], grid: Grid, *, planarity_tol: float = 0.05
) -> tuple[list[np.ndarray], np.ndarray]:
    """Index coordinates of each contour on ``grid``: ([(n, 2) arrays of (i, j)], plane k per contour).

    Raises :class:`InputError` when a contour is not parallel to the grid's slices (spread of its
    points along the slice normal above ``planarity_tol`` slices and above 0.1 mm).
    """
    ij: list[np.ndarray] = []
    ks = np.empty(len(contours), dtype=float)
    tol = max(planarity_tol, 0.1 / float(grid.spacing[2]))  # at least 0.1 mm of jitter is accepted
    for n, pts in enumerate(contours):
        pts = np.asarray(pts, dtype=float).reshape(-1, 3)
        kji = grid.world_to_index(pts)
        k = kji[:, 0]
        if k.size and (k.max() - k.min()) > tol:
            raise InputError(
                f"contour {n} is not parallel to the image slices (spans {k.max() - k.min():.2f} slices along the "
                "slice normal); rayrt needs contours drawn on axial planes of the image series",
                kind="rtstruct",
            )
        ks[n] = float(k.mean()) if k.size else np.nan
        ij.append(np.ascontiguousarray(kji[:, :0:-1]))  # (i, j)
    return ij, ks


_PLANE_TOL = 0.05  # slices: contour planes closer than this (or than 0.05 mm) are the same plane


def _assign_slices(
    ks: np.ndarray, nk: int, plane_spacing: float | None, plane_tol: float = _PLANE_TOL
) -> tuple[np.ndarray, np.ndarray]:
    """(contour index, slice k) pairs: each grid slice takes the contours of the plane whose slab holds it."""
    valid = np.isfinite(ks)
    if not valid.any():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    # contours whose planes differ by less than _PLANE_TOL slices (rounding in the file) share one plane
    kv = ks[valid]
    order_k = np.argsort(kv, kind="stable")
    sorted_k = kv[order_k]
    group = np.concatenate([[0], np.cumsum(np.diff(sorted_k) > plane_tol)])
    planes = np.bincount(group, weights=sorted_k) / np.bincount(group)
    group_of_valid = np.empty(kv.size, np.int64)
    group_of_valid[order_k] = group
    diffs = np.diff(planes)
    if diffs.size:
        h = float(np.median(diffs))
    elif plane_spacing is not None and plane_spacing > 0:
        h = float(plane_spacing)
    else:
        h = 1.0
    h = max(h, 1e-6)
    # split into blocks of contiguous planes (a gap larger than 1.5 plane spacings starts a new block)
    breaks = np.nonzero(diffs > 1.5 * h)[0]
    block_start = np.concatenate([[0], breaks + 1])
    block_end = np.concatenate([breaks, [planes.size - 1]])
    plane_of_slice = np.full(nk, -1, np.int64)
    kk = np.arange(nk, dtype=float)
    for b0, b1 in zip(block_start, block_end):
        p = planes[b0 : b1 + 1]
        bounds = np.concatenate([[p[0] - h / 2], (p[:-1] + p[1:]) / 2, [p[-1] + h / 2]])
        inside = (kk >= bounds[0] - 1e-6) & (kk < bounds[-1] - 1e-6)
        idx = np.searchsorted(bounds, kk[inside] + 1e-6, side="right") - 1
        plane_of_slice[inside] = b0 + np.clip(idx, 0, p.size - 1)
    contour_plane = np.full(ks.size, -1, np.int64)
    contour_plane[valid] = group_of_valid
    # pairs: for each slice with a plane, every contour on that plane
    order = np.argsort(contour_plane, kind="stable")
    cp_sorted = contour_plane[order]
    slices = np.nonzero(plane_of_slice >= 0)[0]
    pair_poly: list[np.ndarray] = []
    pair_k: list[np.ndarray] = []
    for k in slices:
        pl = plane_of_slice[k]
        lo = np.searchsorted(cp_sorted, pl, side="left")
        hi = np.searchsorted(cp_sorted, pl, side="right")
        if hi > lo:
            pair_poly.append(order[lo:hi])
            pair_k.append(np.full(hi - lo, k, np.int64))
    if not pair_poly:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(pair_poly).astype(np.int64), np.concatenate(pair_k)


def rasterize_polygons(contours: list[np.ndarray], grid: Grid, *, plane_spacing_mm: float | None = None) -> np.ndarray:
    """Voxel mask (bool, ``grid.shape``) of closed planar polygons given as (n, 3) LPS mm arrays.

    Even-odd filling at voxel centres over all polygons of a slice (holes and islands need no
    flags); see the module docstring for the slice assignment. The contour-plane spacing is
    the median distance between the contours' planes; ``plane_spacing_mm`` is used only when it
    cannot be inferred (all contours on one plane), default one grid slice.
    """
    nk, nj, ni = grid.shape
    if not contours:
        return np.zeros(grid.shape, dtype=bool)
    ij, ks = polygon_planes(contours, grid)
    spacing = None if plane_spacing_mm is None else plane_spacing_mm / grid.spacing[2]
    pair_poly, pair_k = _assign_slices(ks, nk, spacing, max(_PLANE_TOL, 0.05 / float(grid.spacing[2])))
    if pair_poly.size == 0:
        return np.zeros(grid.shape, dtype=bool)
    counts = np.array([a.shape[0] for a in ij], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    allv = np.concatenate(ij, axis=0) if counts.sum() else np.zeros((0, 2))
    vi = np.ascontiguousarray(allv[:, 0], dtype=np.float64)
    vj = np.ascontiguousarray(allv[:, 1], dtype=np.float64)
    return _fill_even_odd(vi, vj, starts, counts, pair_poly, pair_k, nk, nj, ni)


def _drop_collinear(rc: np.ndarray) -> np.ndarray:
    """Remove vertices of a closed polyline (no repeated end point) where the direction does not change."""
    if rc.shape[0] < 4:
        return rc
    prev = rc - np.roll(rc, 1, axis=0)
    nxt = np.roll(rc, -1, axis=0) - rc
    cross = prev[:, 0] * nxt[:, 1] - prev[:, 1] * nxt[:, 0]
    dot = (prev * nxt).sum(axis=1)
    keep = (np.abs(cross) > 1e-9) | (dot <= 0)
    return rc[keep] if keep.sum() >= 3 else rc


def mask_to_polygons(mask: np.ndarray, grid: Grid) -> list[np.ndarray]:
    """Closed planar polygons (list of (n, 3) LPS mm arrays, first vertex not repeated) of a mask.

    One or more polygons per slice (islands and holes as separate polygons, even-odd
    convention). ``rasterize_polygons(mask_to_polygons(m, g), g)`` reproduces ``m``.
    """
    from skimage.measure import find_contours

    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(grid.shape):
        raise ValueError(f"mask shape {mask.shape} does not match grid shape {grid.shape}")
    out: list[np.ndarray] = []
    slices = np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]
    for k in slices:
        sl = mask[k]
        rows = np.nonzero(sl.any(axis=1))[0]
        cols = np.nonzero(sl.any(axis=0))[0]
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        sub = np.zeros((r1 - r0 + 2, c1 - c0 + 2), dtype=np.uint8)
        sub[1:-1, 1:-1] = sl[r0:r1, c0:c1]
        for rc in find_contours(sub, 0.5):
            if rc.shape[0] < 4:
                continue
            rc = _drop_collinear(rc[:-1])
            kji = np.empty((rc.shape[0], 3))
            kji[:, 0] = k
            kji[:, 1] = rc[:, 0] + (r0 - 1)
            kji[:, 2] = rc[:, 1] + (c0 - 1)
            out.append(grid.index_to_world(kji))
    return out
