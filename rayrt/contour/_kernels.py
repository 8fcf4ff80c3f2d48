"""numba kernels of the delineation tools (compiled on first use, cached on disk)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, parallel=True)
def scatter_offsets(out: np.ndarray, points: np.ndarray, offsets: np.ndarray) -> None:
    """Set ``out[p + d] = True`` for every point p (n, 3) and offset d (m, 3) that lands in the array."""
    nk, nj, ni = out.shape
    for a in numba.prange(points.shape[0]):
        k0, j0, i0 = points[a, 0], points[a, 1], points[a, 2]
        for b in range(offsets.shape[0]):
            k = k0 + offsets[b, 0]
            j = j0 + offsets[b, 1]
            i = i0 + offsets[b, 2]
            if 0 <= k < nk and 0 <= j < nj and 0 <= i < ni:
                out[k, j, i] = True


@numba.njit(cache=True)
def segments_intersect_any(xy: np.ndarray, tol: float) -> int:
    """Index of the first edge of a closed polygon (n, 2) that properly crosses a non-adjacent edge, or -1.

    Edges e_a = (p_a, p_{a+1}) with the polygon closed (p_n = p_0). Two edges that share a vertex
    are adjacent and not tested. Crossings and touching (collinear overlap) within ``tol`` mm count.
    """
    n = xy.shape[0]
    for a in range(n):
        ax0, ay0 = xy[a, 0], xy[a, 1]
        ax1, ay1 = xy[(a + 1) % n, 0], xy[(a + 1) % n, 1]
        minax, maxax = min(ax0, ax1), max(ax0, ax1)
        minay, maxay = min(ay0, ay1), max(ay0, ay1)
        for b in range(a + 2, n):
            if a == 0 and b == n - 1:
                continue  # the closing edge shares p_0 with edge 0
            bx0, by0 = xy[b, 0], xy[b, 1]
            bx1, by1 = xy[(b + 1) % n, 0], xy[(b + 1) % n, 1]
            if max(bx0, bx1) < minax - tol or min(bx0, bx1) > maxax + tol:
                continue
            if max(by0, by1) < minay - tol or min(by0, by1) > maxay + tol:
                continue
            d1 = (bx1 - bx0) * (ay0 - by0) - (by1 - by0) * (ax0 - bx0)
            d2 = (bx1 - bx0) * (ay1 - by0) - (by1 - by0) * (ax1 - bx0)
            d3 = (ax1 - ax0) * (by0 - ay0) - (ay1 - ay0) * (bx0 - ax0)
            d4 = (ax1 - ax0) * (by1 - ay0) - (ay1 - ay0) * (bx1 - ax0)
            if ((d1 > 0 and d2 < 0) or (d1 < 0 and d2 > 0)) and ((d3 > 0 and d4 < 0) or (d3 < 0 and d4 > 0)):
                return a
            # collinear touching/overlap
            la = np.hypot(ax1 - ax0, ay1 - ay0)
            lb = np.hypot(bx1 - bx0, by1 - by0)
            if (abs(d1) <= tol * lb and abs(d2) <= tol * lb) or (abs(d3) <= tol * la and abs(d4) <= tol * la):
                # collinear: test overlap of projections
                if la > 0:
                    ux, uy = (ax1 - ax0) / la, (ay1 - ay0) / la
                    s0 = (bx0 - ax0) * ux + (by0 - ay0) * uy
                    s1 = (bx1 - ax0) * ux + (by1 - ay0) * uy
                    if max(s0, s1) >= -tol and min(s0, s1) <= la + tol:
                        return a
    return -1


@numba.njit(cache=True, parallel=True)
def _runs(mask: np.ndarray, left: np.ndarray, right: np.ndarray, border: bool) -> None:
    """Per row: number of consecutive True voxels ending at i (left) / starting at i (right)."""
    nk, nj, ni = mask.shape
    edge = ni + 1 if border else 0  # outside counts as True (runs continue) or False
    for k in numba.prange(nk):
        for j in range(nj):
            run = edge
            for i in range(ni):
                run = run + 1 if mask[k, j, i] else 0
                left[k, j, i] = run
            run = edge
            for i in range(ni - 1, -1, -1):
                run = run + 1 if mask[k, j, i] else 0
                right[k, j, i] = run


@numba.njit(cache=True, parallel=True)
def erode_rows(mask: np.ndarray, half_widths: np.ndarray, border: bool) -> np.ndarray:
    """In-plane erosion of every slice by a symmetric structuring element given row by row.

    ``half_widths[d]`` is the half-width (voxels along i) of the element's row at offset
    ``d - r`` along j (r = len // 2); -1 for an empty row. Voxels outside the image count as
    ``border``. Cost O(N x rows) with an early exit, from per-row run lengths.
    """
    nk, nj, ni = mask.shape
    left = np.empty((nk, nj, ni), dtype=np.int32)
    right = np.empty((nk, nj, ni), dtype=np.int32)
    _runs(mask, left, right, border)
    r = half_widths.shape[0] // 2
    out = np.zeros((nk, nj, ni), dtype=np.bool_)
    for k in numba.prange(nk):
        for j in range(nj):
            for i in range(ni):
                if not mask[k, j, i]:
                    continue
                ok = True
                for d in range(half_widths.shape[0]):
                    w = half_widths[d]
                    if w < 0:
                        continue
                    jj = j + d - r
                    if jj < 0 or jj >= nj:
                        if not border:
                            ok = False
                            break
                        continue
                    if left[k, jj, i] <= w or right[k, jj, i] <= w:
                        ok = False
                        break
                out[k, j, i] = ok
    return out
