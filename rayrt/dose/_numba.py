"""numba kernels of the dose engine: exact voxel traversal and pencil-beam evaluation.

All loops run per element with scalar IEEE arithmetic (no fastmath), so a voxel's or a bixel's
result never depends on which other voxels or bixels are computed in the same call: chunked
Dij computations reproduce a single call bit for bit.
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
        s[c] = ct_axes_inv[c, 0] * (source_mm[0] - ct_origin[0]) + ct_axes_inv[c, 1] * (source_mm[1] - ct_origin[1]) + ct_axes_inv[c, 2] * (source_mm[2] - ct_origin[2])
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


@njit(cache=True, parallel=True)
def project_dose_voxels(shape, origin, axes, rot, iso, sad, rho, ct_origin, ct_axes_inv, min_density, u_out, v_out, mask_out):
    """Isocenter-plane projection (u, v) of every dose voxel and whether it is scored.

    ``axes`` (3x3): column c = LPS step of one voxel along (i, j, k)[c] (direction x spacing).
    A voxel is scored when the density at its centre (nearest CT voxel) exceeds ``min_density``
    and it lies in front of the source.
    """
    nk, nj, ni = shape[0], shape[1], shape[2]
    cnk, cnj, cni = rho.shape
    for k in prange(nk):
        for j in range(nj):
            for i in range(ni):
                idx = (k * nj + j) * ni + i
                px = origin[0] + axes[0, 0] * i + axes[0, 1] * j + axes[0, 2] * k
                py = origin[1] + axes[1, 0] * i + axes[1, 1] * j + axes[1, 2] * k
                pz = origin[2] + axes[2, 0] * i + axes[2, 1] * j + axes[2, 2] * k
                ox = px - iso[0]
                oy = py - iso[1]
                oz = pz - iso[2]
                bx = rot[0, 0] * ox + rot[0, 1] * oy + rot[0, 2] * oz
                by = rot[1, 0] * ox + rot[1, 1] * oy + rot[1, 2] * oz
                bz = rot[2, 0] * ox + rot[2, 1] * oy + rot[2, 2] * oz
                s = sad - bz
                if s <= 1.0:
                    u_out[idx] = 1e30
                    v_out[idx] = 1e30
                    mask_out[idx] = False
                    continue
                u_out[idx] = bx * sad / s
                v_out[idx] = by * sad / s
                x = px - ct_origin[0]
                y = py - ct_origin[1]
                z = pz - ct_origin[2]
                ci = int(math.floor(ct_axes_inv[0, 0] * x + ct_axes_inv[0, 1] * y + ct_axes_inv[0, 2] * z + 0.5))
                cj = int(math.floor(ct_axes_inv[1, 0] * x + ct_axes_inv[1, 1] * y + ct_axes_inv[1, 2] * z + 0.5))
                ck = int(math.floor(ct_axes_inv[2, 0] * x + ct_axes_inv[2, 1] * y + ct_axes_inv[2, 2] * z + 0.5))
                if ci < 0 or cj < 0 or ck < 0 or ci >= cni or cj >= cnj or ck >= cnk:
                    mask_out[idx] = False
                else:
                    mask_out[idx] = rho[ck, cj, ci] > min_density


@njit(cache=True, parallel=True)
def voxel_depth_terms(idx, shape, origin, axes, rot, iso, sad, rho, ct_origin, ct_axes_inv, m, betas, calib, w_out, depth_out):
    """Per scored voxel: radiological depth and the three depth terms calib (SAD/s)^2 w_i(d).

    ``idx``: flat C-order dose-grid indices; ``w_out`` (N, 3) and ``depth_out`` (N,) are full-grid.
    """
    nk, nj, ni = shape[0], shape[1], shape[2]
    # source in LPS: iso + rot^T (0, 0, sad)
    srcx = iso[0] + rot[2, 0] * sad
    srcy = iso[1] + rot[2, 1] * sad
    srcz = iso[2] + rot[2, 2] * sad
    x = srcx - ct_origin[0]
    y = srcy - ct_origin[1]
    z = srcz - ct_origin[2]
    s0 = ct_axes_inv[0, 0] * x + ct_axes_inv[0, 1] * y + ct_axes_inv[0, 2] * z
    s1 = ct_axes_inv[1, 0] * x + ct_axes_inv[1, 1] * y + ct_axes_inv[1, 2] * z
    s2 = ct_axes_inv[2, 0] * x + ct_axes_inv[2, 1] * y + ct_axes_inv[2, 2] * z
    for p in prange(idx.shape[0]):
        f = idx[p]
        i = f % ni
        j = (f // ni) % nj
        k = f // (ni * nj)
        px = origin[0] + axes[0, 0] * i + axes[0, 1] * j + axes[0, 2] * k
        py = origin[1] + axes[1, 0] * i + axes[1, 1] * j + axes[1, 2] * k
        pz = origin[2] + axes[2, 0] * i + axes[2, 1] * j + axes[2, 2] * k
        bz = rot[2, 0] * (px - iso[0]) + rot[2, 1] * (py - iso[1]) + rot[2, 2] * (pz - iso[2])
        s = sad - bz
        x = px - ct_origin[0]
        y = py - ct_origin[1]
        z = pz - ct_origin[2]
        ti = ct_axes_inv[0, 0] * x + ct_axes_inv[0, 1] * y + ct_axes_inv[0, 2] * z
        tj = ct_axes_inv[1, 0] * x + ct_axes_inv[1, 1] * y + ct_axes_inv[1, 2] * z
        tk = ct_axes_inv[2, 0] * x + ct_axes_inv[2, 1] * y + ct_axes_inv[2, 2] * z
        dx = px - srcx
        dy = py - srcy
        dz = pz - srcz
        d = _siddon(rho, s0, s1, s2, ti, tj, tk, math.sqrt(dx * dx + dy * dy + dz * dz))
        depth_out[f] = d
        isq = (sad / s) * (sad / s)
        em = math.exp(-m * d)
        for c in range(3):
            b = betas[c]
            w_out[f, c] = calib * isq * (b / (b - m)) * (em - math.exp(-b * d))


@njit(cache=True, inline="always")
def _row_interval(a0, a1, c0, c1, lo_val, hi_val, sad, ilo, ihi):
    """Restrict [ilo, ihi] to i with lo_val <= sad*(a0+a1 i)/(c0+c1 i) <= hi_val (denominator > 0)."""
    # f(i) = sad*(a0 + a1 i) - val*(c0 + c1 i)
    for side in range(2):
        val = lo_val if side == 0 else hi_val
        al = sad * a0 - val * c0
        be = sad * a1 - val * c1
        # side 0: need f >= 0 ; side 1: need f <= 0
        if side == 1:
            al = -al
            be = -be
        # al + be i >= 0
        if be > 0.0:
            t = min(max(-al / be, -1e9), 1e9)
            cand = int(math.floor(t)) - 1
            if cand > ilo:
                ilo = cand
        elif be < 0.0:
            t = min(max(-al / be, -1e9), 1e9)
            cand = int(math.ceil(t)) + 1
            if cand < ihi:
                ihi = cand
        else:
            if al < -1e-9 * (abs(sad * a0) + abs(val * c0) + 1.0):
                return 1, 0
    return ilo, ihi


@njit(cache=True, inline="always")
def _lookup(tables, t, x0, y0, inv_h, nx, ny, du, dv):
    fx = (du - x0) * inv_h
    fy = (dv - y0) * inv_h
    if fx < 0.0 or fy < 0.0 or fx > nx - 1 or fy > ny - 1:
        return 0.0, 0.0, 0.0
    ix = int(fx)
    iy = int(fy)
    if ix >= nx - 1:
        ix = nx - 2
    if iy >= ny - 1:
        iy = ny - 2
    tx = fx - ix
    ty = fy - iy
    w00 = (1.0 - tx) * (1.0 - ty)
    w01 = tx * (1.0 - ty)
    w10 = (1.0 - tx) * ty
    w11 = tx * ty
    c0 = w00 * tables[t, iy, ix, 0] + w01 * tables[t, iy, ix + 1, 0] + w10 * tables[t, iy + 1, ix, 0] + w11 * tables[t, iy + 1, ix + 1, 0]
    c1 = w00 * tables[t, iy, ix, 1] + w01 * tables[t, iy, ix + 1, 1] + w10 * tables[t, iy + 1, ix, 1] + w11 * tables[t, iy + 1, ix + 1, 1]
    c2 = w00 * tables[t, iy, ix, 2] + w01 * tables[t, iy, ix + 1, 2] + w10 * tables[t, iy + 1, ix, 2] + w11 * tables[t, iy + 1, ix + 1, 2]
    return c0, c1, c2


@njit(cache=True)
def _bixel_column(
    b, mode, out_idx, out_val, pos,
    bu, bv, bhw, bhh, cutoff, btab, bscale, bthr,
    tables, tx0, ty0, tnx, tny, inv_h,
    shape, row_b0, row_bj, row_bk, row_bi, sad,
    row_first, row_last, row_box, u, v, w, scored,
):
    """One bixel's column. mode 0: upper bound of its entry count (no kernel evaluation);
    mode 1: evaluate and write entries (ascending voxel index) from ``pos``; returns the count.

    A voxel is a candidate when its isocenter-plane projection lies within ``cutoff`` of the
    bixel rectangle (a rounded rectangle); each grid row meets the bounding square in one
    contiguous index interval.
    """
    nk, nj, ni = shape[0], shape[1], shape[2]
    t = btab[b]
    ub = bu[b]
    vb = bv[b]
    hw = bhw[b]
    hh = bhh[b]
    hu = hw + cutoff
    hv = hh + cutoff
    c2 = cutoff * cutoff
    sc = bscale[b]
    thr = bthr[b]
    x0 = tx0[t]
    y0 = ty0[t]
    nx = tnx[t]
    ny = tny[t]
    ulo = ub - hu
    uhi = ub + hu
    vlo = vb - hv
    vhi = vb + hv
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
            # row geometry: b(i) = B0 + j Bj + k Bk + i Bi ; u = sad*bx/(sad-bz)
            ax0 = row_b0[0] + j * row_bj[0] + k * row_bk[0]
            ay0 = row_b0[1] + j * row_bj[1] + k * row_bk[1]
            az0 = row_b0[2] + j * row_bj[2] + k * row_bk[2]
            c0 = sad - az0
            c1 = -row_bi[2]
            ilo, ihi = _row_interval(ax0, row_bi[0], c0, c1, ulo, uhi, sad, ilo, ihi)
            if ilo > ihi:
                continue
            ilo, ihi = _row_interval(ay0, row_bi[1], c0, c1, vlo, vhi, sad, ilo, ihi)
            if ilo < row_first[r]:
                ilo = row_first[r]
            if ihi > row_last[r]:
                ihi = row_last[r]
            if ilo > ihi:
                continue
            if mode == 0:
                count += ihi - ilo + 1
                continue
            base = r * ni
            for i in range(ilo, ihi + 1):
                f = base + i
                if not scored[f]:
                    continue
                du = u[f] - ub
                dv = v[f] - vb
                ex = abs(du) - hw
                ey = abs(dv) - hh
                if ex > cutoff or ey > cutoff:
                    continue
                if ex < 0.0:
                    ex = 0.0
                if ey < 0.0:
                    ey = 0.0
                if ex * ex + ey * ey > c2:
                    continue
                k0, k1, k2 = _lookup(tables, t, x0, y0, inv_h, nx, ny, du, dv)
                val = sc * (w[f, 0] * k0 + w[f, 1] * k1 + w[f, 2] * k2)
                if val > thr and val > 0.0:
                    out_idx[pos + count] = f
                    out_val[pos + count] = val
                    count += 1
    return count


@njit(cache=True, parallel=True)
def bound_columns(
    bu, bv, bhw, bhh, cutoff, btab, bscale, bthr,
    tables, tx0, ty0, tnx, tny, inv_h,
    shape, row_b0, row_bj, row_bk, row_bi, sad,
    row_first, row_last, row_box, u, v, w, scored,
):
    """Upper bound of each bixel's number of entries (candidate voxels, no kernel evaluation)."""
    n = bu.shape[0]
    counts = np.zeros(n, dtype=np.int64)
    dummy_i = np.zeros(1, dtype=np.int32)
    dummy_v = np.zeros(1, dtype=np.float32)
    for b in prange(n):
        counts[b] = _bixel_column(
            b, 0, dummy_i, dummy_v, 0, bu, bv, bhw, bhh, cutoff, btab, bscale, bthr, tables, tx0, ty0, tnx, tny, inv_h,
            shape, row_b0, row_bj, row_bk, row_bi, sad, row_first, row_last, row_box, u, v, w, scored,
        )
    return counts


@njit(cache=True, parallel=True)
def fill_columns(
    indptr, out_idx, out_val,
    bu, bv, bhw, bhh, cutoff, btab, bscale, bthr,
    tables, tx0, ty0, tnx, tny, inv_h,
    shape, row_b0, row_bj, row_bk, row_bi, sad,
    row_first, row_last, row_box, u, v, w, scored,
):
    """Evaluate each bixel's entries into its slot starting at ``indptr[b]``; returns the counts."""
    n = bu.shape[0]
    counts = np.zeros(n, dtype=np.int64)
    for b in prange(n):
        counts[b] = _bixel_column(
            b, 1, out_idx, out_val, indptr[b], bu, bv, bhw, bhh, cutoff, btab, bscale, bthr, tables, tx0, ty0, tnx, tny, inv_h,
            shape, row_b0, row_bj, row_bk, row_bi, sad, row_first, row_last, row_box, u, v, w, scored,
        )
    return counts


@njit(cache=True)
def compact_columns(indptr_bound, counts, out_idx, out_val):
    """Move each column's entries down to close the gaps; returns the final indptr."""
    n = counts.shape[0]
    indptr = np.zeros(n + 1, dtype=np.int64)
    pos = 0
    for b in range(n):
        src = indptr_bound[b]
        c = counts[b]
        if src != pos:
            for q in range(c):
                out_idx[pos + q] = out_idx[src + q]
                out_val[pos + q] = out_val[src + q]
        pos += c
        indptr[b + 1] = pos
    return indptr


@njit(cache=True)
def row_ranges(scored, u, v, nrows, ni):
    """Per grid row: first and last scored column index (-1, -2 when none) and the (u, v) box of its scored voxels."""
    first = np.full(nrows, -1, dtype=np.int64)
    last = np.full(nrows, -2, dtype=np.int64)
    box = np.empty((nrows, 4))
    for r in range(nrows):
        base = r * ni
        umin = 1e300
        umax = -1e300
        vmin = 1e300
        vmax = -1e300
        for i in range(ni):
            f = base + i
            if scored[f]:
                if first[r] < 0:
                    first[r] = i
                last[r] = i
                if u[f] < umin:
                    umin = u[f]
                if u[f] > umax:
                    umax = u[f]
                if v[f] < vmin:
                    vmin = v[f]
                if v[f] > vmax:
                    vmax = v[f]
        box[r, 0] = umin
        box[r, 1] = umax
        box[r, 2] = vmin
        box[r, 3] = vmax
    return first, last, box
