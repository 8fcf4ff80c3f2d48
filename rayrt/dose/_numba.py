"""numba kernels of the dose engine: exact voxel traversal and pencil-beam evaluation.

All loops run per element with scalar IEEE arithmetic (no fastmath), so a voxel's or a bixel's
result never depends on which other voxels or bixels are computed in the same call: chunked
Dij computations reproduce a single call bit for bit.

Data layout of the Dij kernels (rayrt.dose.dij): per dose voxel one float32 record
``W[f] = (w0, w1, w2, 0)`` of depth terms (all 0 when the voxel is not scored), per dose-grid row
(k, j) its first/last scored column and the (u, v) box of its scored voxels; a voxel's
isocenter-plane position (u, v) is recomputed from the row's straight-line geometry where it is
needed (cheaper than loading it), and the convolved kernels are float32 tables
``tables[t, iy, ix, 0:3]`` (4 channels, 16-byte records) interpolated bilinearly.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _siddon(rho, sx, sy, sz, tx, ty, tz, length_mm):
    """Radiological path length (mm water equivalent) from S to T through ``rho`` (index space).

    S and T are continuous (i, j, k) CT indices (voxel centres at integers, voxel (i) spans
    [i-0.5, i+0.5]); ``length_mm`` is the physical distance |T - S|. Exact traversal
    (Siddon 1985 / Amanatides-Woo): sum over crossed voxels of density x intersection length.
    """
    nk, nj, ni = rho.shape
    d0 = tx - sx
    d1 = ty - sy
    d2 = tz - sz
    a_in = 0.0
    a_out = 1.0
    # axis i
    if d0 != 0.0:
        a1 = (-0.5 - sx) / d0
        a2 = (ni - 0.5 - sx) / d0
        a_in = max(a_in, min(a1, a2))
        a_out = min(a_out, max(a1, a2))
    elif sx < -0.5 or sx > ni - 0.5:
        return 0.0
    if d1 != 0.0:
        a1 = (-0.5 - sy) / d1
        a2 = (nj - 0.5 - sy) / d1
        a_in = max(a_in, min(a1, a2))
        a_out = min(a_out, max(a1, a2))
    elif sy < -0.5 or sy > nj - 0.5:
        return 0.0
    if d2 != 0.0:
        a1 = (-0.5 - sz) / d2
        a2 = (nk - 0.5 - sz) / d2
        a_in = max(a_in, min(a1, a2))
        a_out = min(a_out, max(a1, a2))
    elif sz < -0.5 or sz > nk - 0.5:
        return 0.0
    if a_in >= a_out:
        return 0.0
    am = 0.5 * (a_in + min(a_out, a_in + 1e-9))
    i = int(math.floor(sx + am * d0 + 0.5))
    j = int(math.floor(sy + am * d1 + 0.5))
    k = int(math.floor(sz + am * d2 + 0.5))
    i = min(max(i, 0), ni - 1)
    j = min(max(j, 0), nj - 1)
    k = min(max(k, 0), nk - 1)
    inf = 1e300
    si = 1 if d0 > 0 else -1
    sj = 1 if d1 > 0 else -1
    sk = 1 if d2 > 0 else -1
    ni_a = (i + 0.5 * si - sx) / d0 if d0 != 0.0 else inf
    nj_a = (j + 0.5 * sj - sy) / d1 if d1 != 0.0 else inf
    nk_a = (k + 0.5 * sk - sz) / d2 if d2 != 0.0 else inf
    di_a = 1.0 / abs(d0) if d0 != 0.0 else inf
    dj_a = 1.0 / abs(d1) if d1 != 0.0 else inf
    dk_a = 1.0 / abs(d2) if d2 != 0.0 else inf
    a = a_in
    acc = 0.0
    while True:
        if ni_a <= nj_a and ni_a <= nk_a:
            an = ni_a
            ax = 0
        elif nj_a <= nk_a:
            an = nj_a
            ax = 1
        else:
            an = nk_a
            ax = 2
        if an >= a_out:
            acc += rho[k, j, i] * (a_out - a)
            break
        if an > a:
            acc += rho[k, j, i] * (an - a)
            a = an
        if ax == 0:
            i += si
            ni_a += di_a
            if i < 0 or i >= ni:
                break
        elif ax == 1:
            j += sj
            nj_a += dj_a
            if j < 0 or j >= nj:
                break
        else:
            k += sk
            nk_a += dk_a
            if k < 0 or k >= nk:
                break
    return acc * length_mm


@njit(cache=True, parallel=True)
def radiological_depths(rho, ct_origin, ct_axes_inv, source_mm, points_mm):
    """Radiological depth (mm) from the source to each LPS point (n, 3) through the CT density.

    ``ct_axes_inv`` (3x3) maps an LPS offset from ``ct_origin`` to continuous (i, j, k) indices.
    """
    n = points_mm.shape[0]
    out = np.empty(n)
    s = np.empty(3)
    for c in range(3):
        s[c] = (
            ct_axes_inv[c, 0] * (source_mm[0] - ct_origin[0])
            + ct_axes_inv[c, 1] * (source_mm[1] - ct_origin[1])
            + ct_axes_inv[c, 2] * (source_mm[2] - ct_origin[2])
        )
    for p in prange(n):
        x = points_mm[p, 0] - ct_origin[0]
        y = points_mm[p, 1] - ct_origin[1]
        z = points_mm[p, 2] - ct_origin[2]
        ti = ct_axes_inv[0, 0] * x + ct_axes_inv[0, 1] * y + ct_axes_inv[0, 2] * z
        tj = ct_axes_inv[1, 0] * x + ct_axes_inv[1, 1] * y + ct_axes_inv[1, 2] * z
        tk = ct_axes_inv[2, 0] * x + ct_axes_inv[2, 1] * y + ct_axes_inv[2, 2] * z
        dx = points_mm[p, 0] - source_mm[0]
        dy = points_mm[p, 1] - source_mm[1]
        dz = points_mm[p, 2] - source_mm[2]
        out[p] = _siddon(rho, s[0], s[1], s[2], ti, tj, tk, math.sqrt(dx * dx + dy * dy + dz * dz))
    return out


#: a point within this many CT voxels of a voxel face counts as lying on it (see :func:`_inside_at`)
_FACE_TOL = 1e-6


@njit(cache=True, inline="always")
def _touching(t, n):
    """Indices [lo, hi] of the CT voxels along one axis (n of them, voxel c spans [c - 0.5, c + 0.5])
    whose closed extent contains the continuous index ``t``: one voxel, or two when ``t`` lies on the
    face between them (within ``_FACE_TOL``); clipped to the volume (lo > hi when outside it)."""
    lo = int(math.ceil(t - 0.5 - _FACE_TOL))
    hi = int(math.floor(t + 0.5 + _FACE_TOL))
    if lo < 0:
        lo = 0
    if hi > n - 1:
        hi = n - 1
    return lo, hi


@njit(cache=True, inline="always")
def _inside_at(rho, ti, tj, tk, min_density):
    """Whether the point at continuous CT index (ti, tj, tk) is inside the patient: some CT voxel
    whose closed extent contains it has density > ``min_density``.

    Usually that is the one nearest voxel. A point on a face, edge or corner between voxels touches
    2, 4 or 8 of them (every centre of OpenKBP pt_203's 5 mm dose grid from ``dose_grid_for`` lies
    on a face between its 2.5 mm CT slices, so does TG-119's on pyRadPlan's grid), and on the external contour
    some of them are tissue and some air (density 0): the point is on the patient's surface and is
    scored, whichever side the air is on (a tie broken towards one side would drop every dose voxel
    on the surfaces facing that side; structure masks resampled to the dose grid count it inside).
    """
    cnk, cnj, cni = rho.shape
    i0, i1 = _touching(ti, cni)
    j0, j1 = _touching(tj, cnj)
    k0, k1 = _touching(tk, cnk)
    for ck in range(k0, k1 + 1):
        for cj in range(j0, j1 + 1):
            for ci in range(i0, i1 + 1):
                if rho[ck, cj, ci] > min_density:
                    return True
    return False


#: the rows of the dose grid are processed in this many blocks of consecutive rows (handed to the
#: threads one at a time under numba.set_parallel_chunksize(1): balanced for body-shaped work)
_BLOCKS = 256


@njit(cache=True, inline="always")
def _voxel_bld(i, j, k, origin, axes, rot, iso):
    """LPS position (px, py, pz) of dose voxel (i, j, k) and its BLD-frame coordinates (bx, by, bz)."""
    px = origin[0] + axes[0, 0] * i + axes[0, 1] * j + axes[0, 2] * k
    py = origin[1] + axes[1, 0] * i + axes[1, 1] * j + axes[1, 2] * k
    pz = origin[2] + axes[2, 0] * i + axes[2, 1] * j + axes[2, 2] * k
    ox = px - iso[0]
    oy = py - iso[1]
    oz = pz - iso[2]
    bx = rot[0, 0] * ox + rot[0, 1] * oy + rot[0, 2] * oz
    by = rot[1, 0] * ox + rot[1, 1] * oy + rot[1, 2] * oz
    bz = rot[2, 0] * ox + rot[2, 1] * oy + rot[2, 2] * oz
    return px, py, pz, bx, by, bz


@njit(cache=True, parallel=True)
def voxel_terms(
    shape,
    origin,
    axes,
    rot,
    iso,
    sad,
    rho,
    ct_origin,
    ct_axes_inv,
    min_density,
    env,
    m,
    betas,
    calib,
    W,
    first,
    last,
    box,
    with_terms,
):
    """One pass over the dose grid: which voxels are scored, their depth terms, and per-row ranges.

    A voxel is scored when it lies in front of the source, its isocenter-plane projection (u, v)
    is inside ``env`` = (u_lo, u_hi, v_lo, v_hi) (the lateral reach of the requested bixels) and
    its centre is inside the patient (:func:`_inside_at`: the nearest CT voxel, or any of the CT
    voxels whose face, edge or corner the centre lies on, has density > ``min_density``). For a scored voxel
    ``W[f, 0:3] = calib (SAD/s)^2 w_i(d)`` with d its radiological depth (exact traversal of the
    ray from the source to its centre) and w_i the SVD depth components; ``W[f] = 0`` otherwise.
    Per grid row r = k*nj + j: ``first[r]``/``last[r]`` (scored column range, -1/-2 when none)
    and ``box[r]`` = (u_min, u_max, v_min, v_max) of its scored voxels. ``with_terms`` False: only
    the row ranges (no radiological depths; ``W`` is not touched), for sizing the output.
    """
    nk, nj, ni = shape[0], shape[1], shape[2]
    srcx = iso[0] + rot[2, 0] * sad
    srcy = iso[1] + rot[2, 1] * sad
    srcz = iso[2] + rot[2, 2] * sad
    x = srcx - ct_origin[0]
    y = srcy - ct_origin[1]
    z = srcz - ct_origin[2]
    s0 = ct_axes_inv[0, 0] * x + ct_axes_inv[0, 1] * y + ct_axes_inv[0, 2] * z
    s1 = ct_axes_inv[1, 0] * x + ct_axes_inv[1, 1] * y + ct_axes_inv[1, 2] * z
    s2 = ct_axes_inv[2, 0] * x + ct_axes_inv[2, 1] * y + ct_axes_inv[2, 2] * z
    b0 = betas[0]
    b1 = betas[1]
    b2 = betas[2]
    f0 = b0 / (b0 - m)
    f1 = b1 / (b1 - m)
    f2 = b2 / (b2 - m)
    nrows = nk * nj
    per = (nrows + _BLOCKS - 1) // _BLOCKS
    for blk in prange(_BLOCKS):
        for r in range(blk * per, min(nrows, (blk + 1) * per)):
            k = r // nj
            j = r - k * nj
            fr = -1
            la = -2
            umin = 1e300
            umax = -1e300
            vmin = 1e300
            vmax = -1e300
            for i in range(ni):
                f = r * ni + i
                px, py, pz, bx, by, bz = _voxel_bld(i, j, k, origin, axes, rot, iso)
                if with_terms:
                    W[f, 0] = 0.0
                    W[f, 1] = 0.0
                    W[f, 2] = 0.0
                    W[f, 3] = 0.0
                s = sad - bz
                if s <= 1.0:
                    continue
                u = bx * sad / s
                v = by * sad / s
                if u < env[0] or u > env[1] or v < env[2] or v > env[3]:
                    continue
                xx = px - ct_origin[0]
                yy = py - ct_origin[1]
                zz = pz - ct_origin[2]
                ti = ct_axes_inv[0, 0] * xx + ct_axes_inv[0, 1] * yy + ct_axes_inv[0, 2] * zz
                tj = ct_axes_inv[1, 0] * xx + ct_axes_inv[1, 1] * yy + ct_axes_inv[1, 2] * zz
                tk = ct_axes_inv[2, 0] * xx + ct_axes_inv[2, 1] * yy + ct_axes_inv[2, 2] * zz
                if not _inside_at(rho, ti, tj, tk, min_density):
                    continue
                if with_terms:
                    dx = px - srcx
                    dy = py - srcy
                    dz = pz - srcz
                    d = _siddon(rho, s0, s1, s2, ti, tj, tk, math.sqrt(dx * dx + dy * dy + dz * dz))
                    isq = calib * (sad / s) * (sad / s)
                    em = math.exp(-m * d)
                    W[f, 0] = isq * f0 * (em - math.exp(-b0 * d))
                    W[f, 1] = isq * f1 * (em - math.exp(-b1 * d))
                    W[f, 2] = isq * f2 * (em - math.exp(-b2 * d))
                if fr < 0:
                    fr = i
                la = i
                umin = min(umin, u)
                umax = max(umax, u)
                vmin = min(vmin, v)
                vmax = max(vmax, v)
            first[r] = fr
            last[r] = la
            box[r, 0] = umin
            box[r, 1] = umax
            box[r, 2] = vmin
            box[r, 3] = vmax


@njit(cache=True, inline="always")
def _disc_interval(p0, p1, q0, q1, c0, c1, cc, ilo, ihi):
    """Restrict [ilo, ihi] to the i with (p0 + p1 i)^2 + (q0 + q1 i)^2 <= cc (c0 + c1 i)^2 (rounded outwards).

    That is the set of voxels of one grid row whose isocenter-plane projection lies within the
    cut-off disc (radius^2 = cc) of a bixel centre: u - u_b = (p0 + p1 i) / (c0 + c1 i) etc.
    """
    a = p1 * p1 + q1 * q1 - cc * c1 * c1
    b = 2.0 * (p0 * p1 + q0 * q1 - cc * c0 * c1)
    c = p0 * p0 + q0 * q0 - cc * c0 * c0
    if a > 0.0:
        disc = b * b - 4.0 * a * c
        if disc < 0.0:
            return 1, 0
        sq = math.sqrt(disc)
        r1 = (-b - sq) / (2.0 * a)
        r2 = (-b + sq) / (2.0 * a)
        if r1 > ihi + 1.0 or r2 < ilo - 1.0:
            return 1, 0
        lo = int(math.floor(r1))
        hi = int(math.ceil(r2))
        if lo > ilo:
            ilo = lo
        if hi < ihi:
            ihi = hi
    return ilo, ihi


@njit(cache=True)
def _bixel_bound(
    b,
    bu,
    bv,
    bhw,
    bhh,
    cutoff,
    shape,
    row_b0,
    row_bj,
    row_bk,
    row_bi,
    sad,
    row_first,
    row_last,
    row_box,
):
    """Number of candidate voxels of bixel ``b`` (no kernel evaluation): an upper bound of its
    entries, used to size the output before :func:`_group_columns` fills it.

    A voxel is a candidate when its isocenter-plane projection lies within ``cutoff`` of the bixel
    rectangle (a rounded rectangle). In each grid row the voxels within the circumscribed disc
    (radius cutoff + half-diagonal, around the bixel centre) form one contiguous index interval,
    found exactly from a quadratic (a straight row projects to a straight line); the fill applies
    the same intervals and then the rounded-rectangle test per voxel.
    """
    nk, nj = shape[0], shape[1]
    ub = bu[b]
    vb = bv[b]
    hw = bhw[b]
    hh = bhh[b]
    rad = cutoff + math.sqrt(hw * hw + hh * hh)
    cc = rad * rad
    ulo = ub - hw - cutoff
    uhi = ub + hw + cutoff
    vlo = vb - hh - cutoff
    vhi = vb + hh + cutoff
    bi0 = row_bi[0]
    bi1 = row_bi[1]
    c1 = -row_bi[2]
    count = 0
    for k in range(nk):
        for j in range(nj):
            r = k * nj + j
            ilo = row_first[r]
            if ilo < 0:
                continue
            if row_box[r, 0] > uhi or row_box[r, 1] < ulo or row_box[r, 2] > vhi or row_box[r, 3] < vlo:
                continue
            ihi = row_last[r]
            # row geometry: BLD coordinates b(i) = A + i Bi, u = sad * bx / (sad - bz)
            ax0 = row_b0[0] + j * row_bj[0] + k * row_bk[0]
            ay0 = row_b0[1] + j * row_bj[1] + k * row_bk[1]
            az0 = row_b0[2] + j * row_bj[2] + k * row_bk[2]
            c0 = sad - az0
            ilo, ihi = _disc_interval(
                sad * ax0 - ub * c0, sad * bi0 - ub * c1, sad * ay0 - vb * c0, sad * bi1 - vb * c1, c0, c1, cc, ilo, ihi
            )
            if ilo <= ihi:
                count += ihi - ilo + 1
    return count


@njit(cache=True, parallel=True)
def bound_columns(
    bu,
    bv,
    bhw,
    bhh,
    cutoff,
    btab,
    bscale,
    bthr,
    tables,
    tx0,
    ty0,
    tnx,
    tny,
    inv_h,
    shape,
    row_b0,
    row_bj,
    row_bk,
    row_bi,
    sad,
    row_first,
    row_last,
    row_box,
    W,
):
    """Upper bound of each bixel's number of entries (candidate voxels, no kernel evaluation).
    Takes the fill's argument list (one ``common`` tuple in rayrt.dose.dij) and uses its geometry part."""
    n = bu.shape[0]
    counts = np.zeros(n, dtype=np.int64)
    for b in prange(n):
        counts[b] = _bixel_bound(
            b, bu, bv, bhw, bhh, cutoff, shape, row_b0, row_bj, row_bk, row_bi, sad, row_first, row_last, row_box
        )
    return counts


@njit(cache=True, inline="always")
def _table_cell(d, t0, inv_h, tmax, n):
    """Cell and fraction of offset ``d`` (mm) along one axis of a kernel table that starts at ``t0``
    (mm) with ``n`` samples every 1 / ``inv_h`` mm (``tmax`` = n - 1): (i, t) with the value
    interpolated between samples i and i + 1 by weight t; i = -1 outside the table."""
    f = (d - t0) * inv_h
    if f < 0.0 or f > tmax:
        return -1, 0.0
    i = int(f)
    if i >= n - 1:
        i = n - 2
    return i, f - i


@njit(cache=True)
def _group_columns(
    g0,
    g1,
    indptr,
    out_idx,
    out_val,
    counts,
    bu,
    bv,
    bhw,
    bhh,
    cutoff,
    btab,
    bscale,
    bthr,
    tables,
    tx0,
    ty0,
    tnx,
    tny,
    inv_h,
    shape,
    row_b0,
    row_bj,
    row_bk,
    row_bi,
    sad,
    row_first,
    row_last,
    row_box,
    W,
):
    """Entries of bixels g0..g1-1, which share their row centre, height and kernel table (a piece
    of one bixel row), evaluated voxel by voxel: a voxel's position, depth terms and row-direction
    interpolation are computed once for all bixels of the piece. Each bixel's entries are written
    in ascending voxel order from ``indptr[b]``; ``counts[b]`` receives their number.

    Every entry is computed by exactly the same arithmetic as a bixel alone would use, so the
    result does not depend on how bixels are grouped (chunked Dij stays bitwise identical).
    """
    nk, nj, ni = shape[0], shape[1], shape[2]
    n = g1 - g0
    t = btab[g0]
    vb = bv[g0]
    hh = bhh[g0]
    tab = tables[t]
    x0 = tx0[t]
    y0 = ty0[t]
    nx = tnx[t]
    ny = tny[t]
    xmax = nx - 1.0
    ymax = ny - 1.0
    c2 = cutoff * cutoff
    cur = np.empty(n, dtype=np.int64)
    lo = np.empty(n, dtype=np.int64)
    hi = np.empty(n, dtype=np.int64)
    ulo = 1e300
    uhi = -1e300
    for q in range(n):
        b = g0 + q
        cur[q] = indptr[b]
        ulo = min(ulo, bu[b] - bhw[b] - cutoff)
        uhi = max(uhi, bu[b] + bhw[b] + cutoff)
    vlo = vb - hh - cutoff
    vhi = vb + hh + cutoff
    bi0 = row_bi[0]
    bi1 = row_bi[1]
    c1 = -row_bi[2]
    for k in range(nk):
        for j in range(nj):
            r = k * nj + j
            if row_first[r] < 0:
                continue
            if row_box[r, 0] > uhi or row_box[r, 1] < ulo or row_box[r, 2] > vhi or row_box[r, 3] < vlo:
                continue
            ax0 = row_b0[0] + j * row_bj[0] + k * row_bk[0]
            ay0 = row_b0[1] + j * row_bj[1] + k * row_bk[1]
            az0 = row_b0[2] + j * row_bj[2] + k * row_bk[2]
            c0 = sad - az0
            lo_all = ni
            hi_all = -1
            for q in range(n):
                b = g0 + q
                ub = bu[b]
                hw = bhw[b]
                # exactly the intervals of _bixel_bound, so that no bixel writes beyond its bound
                if row_box[r, 0] > ub + hw + cutoff or row_box[r, 1] < ub - hw - cutoff:
                    lo[q] = 1
                    hi[q] = 0
                    continue
                rad = cutoff + math.sqrt(hw * hw + hh * hh)
                i_lo, i_hi = _disc_interval(
                    sad * ax0 - ub * c0,
                    sad * bi0 - ub * c1,
                    sad * ay0 - vb * c0,
                    sad * bi1 - vb * c1,
                    c0,
                    c1,
                    rad * rad,
                    row_first[r],
                    row_last[r],
                )
                lo[q] = i_lo
                hi[q] = i_hi
                if i_lo <= i_hi:
                    lo_all = min(lo_all, i_lo)
                    hi_all = max(hi_all, i_hi)
            if lo_all > hi_all:
                continue
            base = r * ni
            for i in range(lo_all, hi_all + 1):
                f = base + i
                w0 = W[f, 0]
                if w0 == 0.0:
                    continue
                g = sad / (c0 + c1 * i)
                pu = (ax0 + bi0 * i) * g
                dv = (ay0 + bi1 * i) * g - vb
                ey = abs(dv) - hh
                if ey > cutoff:
                    continue
                if ey < 0.0:
                    ey = 0.0
                iy, ty = _table_cell(dv, y0, inv_h, ymax, ny)
                if iy < 0:
                    continue
                w1 = W[f, 1]
                w2 = W[f, 2]
                for q in range(n):
                    if i < lo[q] or i > hi[q]:
                        continue
                    b = g0 + q
                    du = pu - bu[b]
                    ex = abs(du) - bhw[b]
                    if ex > cutoff:
                        continue
                    if ex < 0.0:
                        ex = 0.0
                    if ex * ex + ey * ey > c2:
                        continue
                    ix, tx = _table_cell(du, x0, inv_h, xmax, nx)
                    if ix < 0:
                        continue
                    w00 = (1.0 - tx) * (1.0 - ty)
                    w01 = tx * (1.0 - ty)
                    w10 = (1.0 - tx) * ty
                    w11 = tx * ty
                    k0 = (
                        w00 * tab[iy, ix, 0]
                        + w01 * tab[iy, ix + 1, 0]
                        + w10 * tab[iy + 1, ix, 0]
                        + w11 * tab[iy + 1, ix + 1, 0]
                    )
                    k1 = (
                        w00 * tab[iy, ix, 1]
                        + w01 * tab[iy, ix + 1, 1]
                        + w10 * tab[iy + 1, ix, 1]
                        + w11 * tab[iy + 1, ix + 1, 1]
                    )
                    k2 = (
                        w00 * tab[iy, ix, 2]
                        + w01 * tab[iy, ix + 1, 2]
                        + w10 * tab[iy + 1, ix, 2]
                        + w11 * tab[iy + 1, ix + 1, 2]
                    )
                    val = bscale[b] * (w0 * k0 + w1 * k1 + w2 * k2)
                    if val > bthr[b] and val > 0.0:
                        c = cur[q]
                        out_idx[c] = f
                        out_val[c] = val
                        cur[q] = c + 1
    for q in range(n):
        counts[g0 + q] = cur[q] - indptr[g0 + q]


@njit(cache=True, parallel=True)
def fill_columns(
    indptr,
    groups,
    out_idx,
    out_val,
    bu,
    bv,
    bhw,
    bhh,
    cutoff,
    btab,
    bscale,
    bthr,
    tables,
    tx0,
    ty0,
    tnx,
    tny,
    inv_h,
    shape,
    row_b0,
    row_bj,
    row_bk,
    row_bi,
    sad,
    row_first,
    row_last,
    row_box,
    W,
):
    """Evaluate every bixel's entries into its slot starting at ``indptr[b]``; returns the counts.

    ``groups[g] .. groups[g+1]`` are bixels sharing row centre, height and table (see
    :func:`_group_columns`). Call it under ``numba.set_parallel_chunksize(1)`` (rayrt.dose.dij does)
    so that groups are handed to the threads one at a time: balanced, and both cores stay busy
    when one of them is slowed down by other work on the machine.
    """
    n = bu.shape[0]
    counts = np.zeros(n, dtype=np.int64)
    ng = groups.shape[0] - 1
    for g in prange(ng):
        _group_columns(
            groups[g],
            groups[g + 1],
            indptr,
            out_idx,
            out_val,
            counts,
            bu,
            bv,
            bhw,
            bhh,
            cutoff,
            btab,
            bscale,
            bthr,
            tables,
            tx0,
            ty0,
            tnx,
            tny,
            inv_h,
            shape,
            row_b0,
            row_bj,
            row_bk,
            row_bi,
            sad,
            row_first,
            row_last,
            row_box,
            W,
        )
    return counts


@njit(cache=True)
def compact_columns(indptr_bound, counts, out_idx, out_val):
    """Move each column's entries down to close the gaps left by the bound; returns the final indptr
    relative to ``indptr_bound[0]`` (the columns start at that absolute position and stay there)."""
    n = counts.shape[0]
    indptr = np.zeros(n + 1, dtype=np.int64)
    base = indptr_bound[0]
    pos = base
    for b in range(n):
        src = indptr_bound[b]
        c = counts[b]
        if src != pos:
            for q in range(c):
                out_idx[pos + q] = out_idx[src + q]
                out_val[pos + q] = out_val[src + q]
        pos += c
        indptr[b + 1] = pos - base
    return indptr
