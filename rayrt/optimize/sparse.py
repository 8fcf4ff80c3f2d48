"""Row-subset dose-influence matrix (Dij) in float32 CSR with numba-parallel products.

Dose (Gy) in voxel ``i`` = sum_j D[i, j] * w[j] with ``w`` the beamlet weights (fluence, MU-like).
Only the voxels that carry objectives are kept (rows of the full Dij selected once). Products:

* ``dose(w, rows)`` = D[rows] @ w          -- parallel over rows (no write conflicts);
* ``grad(g, rows)`` = D[rows].T @ g        -- parallel over row chunks, one accumulation buffer
  per thread, summed at the end (the transpose is never stored).

``rows=None`` means all rows. Products over fewer than ``PARALLEL_MIN_NNZ`` non-zeros (env
``RAYRT_PARALLEL_MIN_NNZ``, default 2 M, counted exactly over the rows asked for; per matrix
``SubsetDij.parallel_min_nnz``) run on one thread: measured on the shared 2-core development
machine under load (load average 6), a 2.9 M-nnz row product took 42 ms on two numba threads and
32 ms on one, since a parallel region waits for its slowest (descheduled) thread (that
measurement had spinning OpenMP workers; see
:mod:`rayrt.optimize._threads`). Both kernels skip zero entries of ``g``, so a gradient that is
zero on most voxels (one-sided objectives) costs only its non-zero rows.

Storage: values float32; beamlet (column) indices uint16 when there are at most 65535 beamlets
(else int32). The CSR dot product is *not* compiled with fastmath: LLVM's vectorised gather was
measured 2x slower on this machine (AMD EPYC, AVX-512) than four scalar accumulators (2.1 against
0.7-1.0 ns per non-zero).

Hybrid storage (:meth:`SubsetDij.enable_dense`): the rows whose fill (non-zeros / beamlets) is at
least ``DENSE_MIN_FILL`` (env ``RAYRT_DENSE_MIN_FILL``, default 0.3) -- the voxels in and around
the targets, hit by most beamlets of every beam -- can also be stored as a dense float32 block
(at most ``DENSE_MAX_MIB`` MiB, env ``RAYRT_DENSE_MAX_MIB``, default 512; the fullest rows first).
A product then runs a contiguous SIMD dot / axpy on those rows instead of the CSR gather /
scatter (setup A: 15,208 dense rows, 95 MB, built in ~0.1 s; a forward product over the 9,253
rows near the target took 4.2-4.7 ms of CPU against 5.5 ms for the tuned CSR kernel and 15.5 ms
for the previous one). The CSR copy is kept for every row.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import scipy.sparse as sp

__all__ = ["SubsetDij"]


@numba.njit(cache=True, fastmath=True)
def _csr_rmatvec_rows_serial(indptr, indices, data, rows, g, ncols):
    b = np.zeros(ncols, dtype=np.float32)
    for t in range(rows.size):
        gv = g[t]
        if gv != 0.0:
            r = rows[t]
            for k in range(indptr[r], indptr[r + 1]):
                b[indices[k]] += data[k] * gv
    return b.astype(np.float64)


@numba.njit(cache=True, fastmath=True)
def _dense_dot(row, w):
    """Contiguous float32 dot product (fastmath: vectorised reduction)."""
    acc = np.float32(0.0)
    for j in range(w.size):
        acc += row[j] * w[j]
    return acc


@numba.njit(cache=True)
def _csr_dot(indices, data, lo, hi, w):
    """Gather dot product of one CSR row with four independent accumulators. Not fastmath: the
    vectorised gather LLVM emits with it measured 2x slower (2.1 against 1.0 ns per non-zero)."""
    a0 = np.float32(0.0)
    a1 = np.float32(0.0)
    a2 = np.float32(0.0)
    a3 = np.float32(0.0)
    k = lo
    while k + 4 <= hi:
        a0 += data[k] * w[indices[k]]
        a1 += data[k + 1] * w[indices[k + 1]]
        a2 += data[k + 2] * w[indices[k + 2]]
        a3 += data[k + 3] * w[indices[k + 3]]
        k += 4
    while k < hi:
        a0 += data[k] * w[indices[k]]
        k += 1
    return (a0 + a1) + (a2 + a3)


@numba.njit(cache=True)
def _row_dot(indptr, indices, data, dpos, dense, r, w):
    """D[r] . w: a contiguous dot on the dense copy of the row when there is one, else the CSR gather."""
    p = dpos[r]
    if p >= 0:
        return _dense_dot(dense[p], w)
    return _csr_dot(indices, data, indptr[r], indptr[r + 1], w)


@numba.njit(cache=True)
def _row_axpy(indptr, indices, data, dpos, dense, r, gv, b):
    """b += gv * D[r] (dense copy or CSR scatter)."""
    p = dpos[r]
    if p >= 0:
        row = dense[p]
        for j in range(b.size):
            b[j] += gv * row[j]
    else:
        for k in range(indptr[r], indptr[r + 1]):
            b[indices[k]] += data[k] * gv


@numba.njit(parallel=True, cache=True)
def _hyb_matvec_rows(indptr, indices, data, dpos, dense, rows, w, out):
    for t in numba.prange(rows.size):
        out[t] = _row_dot(indptr, indices, data, dpos, dense, rows[t], w)


@numba.njit(cache=True)
def _hyb_matvec_rows_serial(indptr, indices, data, dpos, dense, rows, w, out):
    for t in range(rows.size):
        out[t] = _row_dot(indptr, indices, data, dpos, dense, rows[t], w)


@numba.njit(parallel=True, cache=True)
def _hyb_rmatvec_rows(indptr, indices, data, dpos, dense, rows, g, ncols, nchunks):
    buf = np.zeros((nchunks, ncols), dtype=np.float32)
    n = rows.size
    for c in numba.prange(nchunks):
        lo = (n * c) // nchunks
        hi = (n * (c + 1)) // nchunks
        b = buf[c]
        for t in range(lo, hi):
            gv = g[t]
            if gv != 0.0:
                _row_axpy(indptr, indices, data, dpos, dense, rows[t], gv, b)
    out = np.zeros(ncols, dtype=np.float64)
    for c in range(nchunks):
        for j in range(ncols):
            out[j] += buf[c, j]
    return out


@numba.njit(cache=True)
def _hyb_rmatvec_rows_serial(indptr, indices, data, dpos, dense, rows, g, ncols):
    b = np.zeros(ncols, dtype=np.float32)
    for t in range(rows.size):
        gv = g[t]
        if gv != 0.0:
            _row_axpy(indptr, indices, data, dpos, dense, rows[t], gv, b)
    return b.astype(np.float64)


@numba.njit(parallel=True, cache=True)
def _densify_rows(indptr, indices, data, rows, ncols):
    out = np.zeros((rows.size, ncols), dtype=np.float32)
    for t in numba.prange(rows.size):
        r = rows[t]
        for k in range(indptr[r], indptr[r + 1]):
            out[t, indices[k]] = data[k]
    return out


@numba.njit(cache=True)
def _csc_rows_to_csr(indptr, indices, data, rmap, nrows):
    """CSR (float32, int32 columns) of the rows ``rmap >= 0`` of a CSC matrix, in one counting pass
    and one filling pass (columns come out sorted within each row)."""
    ncols = indptr.size - 1
    counts = np.zeros(nrows + 1, dtype=np.int64)
    for k in range(indptr[ncols]):
        r = rmap[indices[k]]
        if r >= 0:
            counts[r + 1] += 1
    out_ptr = np.cumsum(counts)
    fill = out_ptr[:-1].copy()
    out_idx = np.empty(out_ptr[nrows], dtype=np.int32)
    out_val = np.empty(out_ptr[nrows], dtype=np.float32)
    for j in range(ncols):
        for k in range(indptr[j], indptr[j + 1]):
            r = rmap[indices[k]]
            if r >= 0:
                p = fill[r]
                out_idx[p] = j
                out_val[p] = data[k]
                fill[r] = p + 1
    return out_ptr, out_idx, out_val


@numba.njit(parallel=True, cache=True)
def _group_rowsums(indptr, indices, data, rows, gsize, ngroups):
    """R[t, g] = sum of row rows[t] over the columns j with j // gsize == g (float32)."""
    R = np.zeros((rows.size, ngroups), dtype=np.float32)
    for t in numba.prange(rows.size):
        r = rows[t]
        for k in range(indptr[r], indptr[r + 1]):
            R[t, indices[k] // gsize] += data[k]
    return R


#: below this many non-zeros a product runs on one thread (thread start-up and, on a loaded
#: machine, waiting for a descheduled worker cost more than the work)
PARALLEL_MIN_NNZ = int(os.environ.get("RAYRT_PARALLEL_MIN_NNZ", "2000000"))
#: rows with at least this fraction of non-zero beamlets get a dense copy (enable_dense)
DENSE_MIN_FILL = float(os.environ.get("RAYRT_DENSE_MIN_FILL", "0.3"))
#: memory cap of the dense copy (MiB)
DENSE_MAX_MIB = float(os.environ.get("RAYRT_DENSE_MAX_MIB", "512"))


@numba.njit(cache=True)
def _rows_nnz(indptr, rows):
    n = 0
    for t in range(rows.size):
        n += indptr[rows[t] + 1] - indptr[rows[t]]
    return n


@numba.njit(parallel=True, cache=True)
def _csr_rowsums(indptr, data, out):
    for r in numba.prange(out.size):
        acc = 0.0
        for k in range(indptr[r], indptr[r + 1]):
            acc += data[k]
        out[r] = acc


class SubsetDij:
    """The rows of a Dij (voxels x beamlets, Gy per unit weight) that carry objectives, float32 CSR.

    ``voxel_index[t]`` is the row of the full Dij (linear voxel index on the dose grid) of subset row ``t``.
    """

    def __init__(self, dij: sp.spmatrix, voxel_index: np.ndarray | None = None):
        if voxel_index is None:
            voxel_index = np.arange(dij.shape[0], dtype=np.int64)
            m = dij.tocsr()
        else:
            voxel_index = np.asarray(voxel_index, dtype=np.int64)
            if sp.isspmatrix_csc(dij) or getattr(dij, "format", "") == "csc":
                # select rows without converting the whole (large) matrix to CSR first
                rmap = np.full(dij.shape[0], -1, dtype=np.int64)
                rmap[voxel_index] = np.arange(voxel_index.size)
                ip, ix, dv = _csc_rows_to_csr(
                    np.asarray(dij.indptr, np.int64), dij.indices, dij.data, rmap, voxel_index.size
                )
                m = sp.csr_matrix((dv, ix, ip), shape=(voxel_index.size, dij.shape[1]))
                del rmap
            else:
                m = dij.tocsr()[voxel_index]
        m = sp.csr_matrix(m, dtype=np.float32)
        if not m.has_canonical_format:
            m.sum_duplicates()
        self.indptr = m.indptr.astype(np.int64)
        # beamlet (column) indices in 16 bits when they fit: a quarter less memory traffic per non-zero
        self.indices = m.indices.astype(np.uint16 if m.shape[1] <= 65535 else np.int32)
        self.data = m.data.astype(np.float32)
        self.shape = m.shape
        self.voxel_index = voxel_index
        self.nchunks = max(1, numba.get_num_threads()) * 4
        #: products over fewer non-zeros than this run the serial kernels (default PARALLEL_MIN_NNZ)
        self.parallel_min_nnz = PARALLEL_MIN_NNZ
        self._rowsum: np.ndarray | None = None
        self._no_dense()

    def _no_dense(self) -> None:
        self._dpos = np.full(self.shape[0], -1, dtype=np.int64)  # row -> row of the dense copy (-1: CSR only)
        self._dense = np.zeros((0, self.shape[1]), dtype=np.float32)
        self.dense_rows = 0

    def __getstate__(self) -> dict:
        """Pickle (e.g. Ray's object store) without the dense copy: it is a cache that
        :meth:`enable_dense` rebuilds from the CSR rows in the receiving process."""
        state = dict(self.__dict__)
        state.pop("_dense_done", None)
        state["_dpos"] = np.full(self.shape[0], -1, dtype=np.int64)
        state["_dense"] = np.zeros((0, self.shape[1]), dtype=np.float32)
        state["dense_rows"] = 0
        return state

    def enable_dense(self, min_fill: float | None = None, max_mib: float | None = None) -> int:
        """Keep a dense float32 copy of the rows with at least ``min_fill`` non-zero beamlets (the
        fullest first, at most ``max_mib`` MiB) so products on them run as contiguous SIMD loops.
        Idempotent (the first call decides); returns the number of dense rows."""
        if self.dense_rows or getattr(self, "_dense_done", False):
            return self.dense_rows
        self._dense_done = True
        min_fill = DENSE_MIN_FILL if min_fill is None else float(min_fill)
        max_mib = DENSE_MAX_MIB if max_mib is None else float(max_mib)
        ncols = self.shape[1]
        if ncols == 0 or min_fill > 1.0:
            return 0
        rn = np.diff(self.indptr)
        sel = np.flatnonzero(rn >= max(min_fill, 0.0) * ncols)
        cap = int(max_mib * 2**20 // (4 * ncols))
        if sel.size > cap:
            sel = np.sort(sel[np.argsort(-rn[sel], kind="stable")[:cap]])
        if sel.size == 0:
            return 0
        self._dense = _densify_rows(self.indptr, self.indices, self.data, sel.astype(np.int64), ncols)
        dpos = np.full(self.shape[0], -1, dtype=np.int64)  # a new array: a shared copy's may be read-only
        dpos[sel] = np.arange(sel.size, dtype=np.int64)
        self._dpos = dpos
        self.dense_rows = int(sel.size)
        return self.dense_rows

    @property
    def num_rows(self) -> int:
        return self.shape[0]

    @property
    def num_beamlets(self) -> int:
        return self.shape[1]

    @property
    def nnz(self) -> int:
        return int(self.data.size)

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.data.nbytes + self._dense.nbytes + self._dpos.nbytes

    def _rows_nnz(self, rows: np.ndarray) -> int:
        """Non-zeros in the given rows (exact: the hot rows near the targets hold several times the mean)."""
        return int(_rows_nnz(self.indptr, rows))

    def rowsums(self) -> np.ndarray:
        """Sum over beamlets of each row (Gy per unit of every weight), for one-sided bound screening."""
        if self._rowsum is None:
            out = np.empty(self.shape[0], dtype=np.float64)
            _csr_rowsums(self.indptr, self.data, out)
            self._rowsum = out
        return self._rowsum

    def dose(self, w: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """D[rows] @ w in Gy (float32)."""
        w32 = np.ascontiguousarray(w, dtype=np.float32)
        if rows is None:
            rows = np.arange(self.shape[0], dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        out = np.empty(rows.size, dtype=np.float32)
        args = (self.indptr, self.indices, self.data, self._dpos, self._dense, rows, w32, out)
        if self._rows_nnz(rows) < self.parallel_min_nnz:
            _hyb_matvec_rows_serial(*args)
        else:
            _hyb_matvec_rows(*args)
        return out

    def grad(self, g: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """D[rows].T @ g (float64 result, float32 accumulation)."""
        if rows is None:
            rows = np.arange(self.shape[0], dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        g32 = np.ascontiguousarray(g, dtype=np.float32)
        args = (self.indptr, self.indices, self.data, self._dpos, self._dense, rows, g32, self.shape[1])
        if self._rows_nnz(rows) < self.parallel_min_nnz:
            return _hyb_rmatvec_rows_serial(*args)
        return _hyb_rmatvec_rows(*args, self.nchunks)

    def column_subset(self, cols: np.ndarray) -> "SubsetDij":
        """The same rows restricted to some beamlets (e.g. one beam's), keeping voxel_index."""
        m = self.to_scipy()[:, np.asarray(cols)]
        out = SubsetDij.__new__(SubsetDij)
        m = sp.csr_matrix(m)
        out.indptr, out.indices, out.data = (
            m.indptr.astype(np.int64),
            m.indices.astype(self.indices.dtype),
            m.data.astype(np.float32),
        )
        out.shape, out.voxel_index, out.nchunks, out._rowsum = m.shape, self.voxel_index, self.nchunks, None
        out.parallel_min_nnz = self.parallel_min_nnz
        out._no_dense()
        return out

    def group_rowsums(self, rows: np.ndarray, gsize: int) -> np.ndarray:
        """(len(rows), ceil(ncols / gsize)) float32: each row's sum over consecutive column groups."""
        ng = int(np.ceil(self.shape[1] / gsize))
        return _group_rowsums(
            self.indptr, self.indices, self.data, np.ascontiguousarray(rows, dtype=np.int64), int(gsize), ng
        )

    def to_scipy(self) -> sp.csr_matrix:
        return sp.csr_matrix((self.data, self.indices.astype(np.int32), self.indptr), shape=self.shape)
