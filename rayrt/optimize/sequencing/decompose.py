"""Decompositions of an integer intensity matrix into weighted apertures (one open interval per row).

An aperture is ``(k, lo[R], hi[R])``: row r is open over columns ``lo[r] <= c < hi[r]`` (closed when
``lo == hi``), delivered with ``k`` intensity units. Sum of k * aperture = the matrix exactly.
All functions are vectorised over rows; loops run over apertures only.
"""

from __future__ import annotations

import numpy as np

Aperture = tuple[int, np.ndarray, np.ndarray]


def sweep(intensity: np.ndarray) -> list[Aperture]:
    """Unidirectional sliding-window step-and-shoot (Bortfeld 1994 / Siochi 1999 "sweep"):
    both leaves of every row move only in +X; per row the left leaf follows the cumulative positive
    increments P(c) and the right leaf the cumulative negative ones N(c). Unit step u opens
    ``{c : N(c) < u <= P(c)}`` -- a single interval because P and N are non-decreasing. The total
    MU is the minimum possible (max over rows of the positive increments); consecutive equal unit
    apertures merge into one segment."""
    intensity = np.asarray(intensity, dtype=np.int64)
    R, C = intensity.shape
    pad = np.concatenate([np.zeros((R, 1), np.int64), intensity, np.zeros((R, 1), np.int64)], axis=1)
    d_intensity = np.diff(pad, axis=1)[:, :C]  # increment entering column c
    P = np.cumsum(np.maximum(d_intensity, 0), axis=1)
    N = np.cumsum(np.maximum(-d_intensity, 0), axis=1)
    T = int(P[:, -1].max()) if intensity.size else 0
    if T == 0:
        return []
    # left leaf at unit u: first c with P(c) >= u ; right leaf: first c with N(c) >= u (exclusive end)
    # change points over u are the values of P and N: unit apertures are constant between them
    cuts = np.unique(np.concatenate([P.ravel(), N.ravel(), [0, T]]))
    cuts = cuts[(cuts >= 0) & (cuts <= T)]
    out: list[Aperture] = []
    for u0, u1 in zip(cuts[:-1], cuts[1:]):
        u = u1  # every unit in (u0, u1] opens the same aperture
        lo = _first_ge(P, u)
        hi = _first_ge(N, u)
        hi = np.maximum(hi, lo)
        out.append((int(u1 - u0), lo, hi))
    return _merge(out)


def _first_ge(M: np.ndarray, u: int) -> np.ndarray:
    """Per row: first column c with M[r, c] >= u (M non-decreasing along columns), or C if none."""
    ok = M >= u
    return np.where(ok.any(axis=1), ok.argmax(axis=1), M.shape[1])


def xia_verhey(intensity: np.ndarray) -> list[Aperture]:
    """Xia & Verhey (Med Phys 25, 1998) reducing-level decomposition: at level Delta (powers of two
    from the largest below the maximum intensity), every bixel with intensity >= Delta is open; a
    row with several runs needs several apertures, so the level yields max-runs apertures (run m of
    each row in the m-th). Subtracting Delta leaves every bixel below Delta; halve Delta and repeat.
    Few segments for smooth maps at the price of more MU than the sweep."""
    intensity = np.asarray(intensity, dtype=np.int64).copy()
    out: list[Aperture] = []
    if intensity.size == 0 or intensity.max() <= 0:
        return out
    delta = 1 << int(np.floor(np.log2(intensity.max())))
    while delta >= 1:
        while True:
            mask = intensity >= delta
            if not mask.any():
                break
            for lo, hi in _runs_apertures(mask):
                out.append((delta, lo, hi))
            intensity[mask] -= delta
        delta >>= 1
    return _merge(out)


def _runs_apertures(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split a boolean matrix into apertures: the m-th run of each row goes to aperture m."""
    R, C = mask.shape
    pad = np.concatenate([np.zeros((R, 1), bool), mask, np.zeros((R, 1), bool)], axis=1).astype(np.int8)
    d = np.diff(pad, axis=1)
    sr, sc = np.nonzero(d == 1)
    er, ec = np.nonzero(d == -1)  # same order (row-major) as starts
    run_no = np.zeros(sr.size, dtype=np.int64)
    if sr.size:
        first = np.r_[True, sr[1:] != sr[:-1]]
        idx = np.arange(sr.size)
        start_of_row = np.maximum.accumulate(np.where(first, idx, 0))
        run_no = idx - start_of_row
    out = []
    for m in range(int(run_no.max()) + 1 if run_no.size else 0):
        sel = run_no == m
        lo = np.zeros(R, np.int64)
        hi = np.zeros(R, np.int64)
        lo[sr[sel]] = sc[sel]
        hi[er[sel]] = ec[sel]
        out.append((lo, hi))
    return out


def _merge(aps: list[Aperture]) -> list[Aperture]:
    """Merge apertures with identical openings (closed rows compare equal whatever lo is)."""
    out: dict[bytes, list] = {}
    order = []
    for k, lo, hi in aps:
        if k <= 0:
            continue
        open_ = hi > lo
        if not open_.any():
            continue
        lo2 = np.where(open_, lo, 0)
        hi2 = np.where(open_, hi, 0)
        key = lo2.tobytes() + hi2.tobytes()
        if key in out:
            out[key][0] += k
        else:
            out[key] = [k, lo2, hi2]
            order.append(key)
    return [(int(out[k][0]), out[k][1], out[k][2]) for k in order]


def reconstruct(aps: list[Aperture], shape: tuple[int, int]) -> np.ndarray:
    """Sum of k * aperture (for checks)."""
    M = np.zeros(shape, dtype=np.int64)
    cols = np.arange(shape[1])[None, :]
    for k, lo, hi in aps:
        M += k * ((cols >= lo[:, None]) & (cols < hi[:, None]))
    return M


DECOMPOSITIONS = {"sweep": sweep, "xia_verhey": xia_verhey}
