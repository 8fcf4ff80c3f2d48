"""Row-subset dose-influence matrix (Dij) in float32 CSR with numba-parallel products.

Dose (Gy) in voxel ``i`` = sum_j D[i, j] * w[j] with ``w`` the beamlet weights (fluence, MU-like).
Only the voxels that carry objectives are kept (rows of the full Dij selected once). Products:

* ``dose(w, rows)`` = D[rows] @ w          -- parallel over rows (no write conflicts);
* ``grad(g, rows)`` = D[rows].T @ g        -- parallel over row chunks, one accumulation buffer
  per thread, summed at the end (the transpose is never stored).

``rows=None`` means all rows. Products over fewer than ``PARALLEL_MIN_NNZ`` non-zeros (env
``RAYRT_PARALLEL_MIN_NNZ``, default 2 M) run on one thread: measured on the shared 2-core
development machine under load (load average 6), a 2.9 M-nnz row product took 42 ms on two numba
threads and 32 ms on one, since a parallel region waits for its slowest (descheduled) thread. Both kernels skip zero entries of ``g``, so a gradient that is zero on
most voxels (one-sided objectives) costs only its non-zero rows.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import scipy.sparse as sp

__all__ = ["SubsetDij"]


@numba.njit(parallel=True, cache=True, fastmath=True)
def _csr_matvec_rows(indptr, indices, data, rows, w, out):
    for t in numba.prange(rows.size):
        r = rows[t]
        acc = np.float32(0.0)
        for k in range(indptr[r], indptr[r + 1]):
            acc += data[k] * w[indices[k]]
        out[t] = acc


@numba.njit(parallel=True, cache=True, fastmath=True)
def _csr_matvec_all(indptr, indices, data, w, out):
    for r in numba.prange(out.size):
        acc = np.float32(0.0)
        for k in range(indptr[r], indptr[r + 1]):
            acc += data[k] * w[indices[k]]
        out[r] = acc


@numba.njit(parallel=True, cache=True, fastmath=True)
def _csr_rmatvec_rows(indptr, indices, data, rows, g, ncols, nchunks):
    buf = np.zeros((nchunks, ncols), dtype=np.float32)
    n = rows.size
    for c in numba.prange(nchunks):
        lo = (n * c) // nchunks
        hi = (n * (c + 1)) // nchunks
        b = buf[c]
        for t in range(lo, hi):
            gv = g[t]
            if gv != 0.0:
                r = rows[t]
                for k in range(indptr[r], indptr[r + 1]):
                    b[indices[k]] += data[k] * gv
    out = np.zeros(ncols, dtype=np.float64)
    for c in range(nchunks):
        for j in range(ncols):
            out[j] += buf[c, j]
    return out


@numba.njit(cache=True, fastmath=True)
def _csr_matvec_rows_serial(indptr, indices, data, rows, w, out):
    for t in range(rows.size):
        r = rows[t]
        acc = np.float32(0.0)
        for k in range(indptr[r], indptr[r + 1]):
            acc += data[k] * w[indices[k]]
        out[t] = acc


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
                ip, ix, dv = _csc_rows_to_csr(np.asarray(dij.indptr, np.int64), dij.indices, dij.data, rmap, voxel_index.size)
                m = sp.csr_matrix((dv, ix, ip), shape=(voxel_index.size, dij.shape[1]))
                del rmap
            else:
                m = dij.tocsr()[voxel_index]
        m = sp.csr_matrix(m, dtype=np.float32)
        if not m.has_canonical_format:
            m.sum_duplicates()
        self.indptr = m.indptr.astype(np.int64)
        self.indices = m.indices.astype(np.int32)
        self.data = m.data.astype(np.float32)
        self.shape = m.shape
        self.voxel_index = voxel_index
        self.nchunks = max(1, numba.get_num_threads()) * 4
        self._rowsum = None

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
        return self.indptr.nbytes + self.indices.nbytes + self.data.nbytes

    def _rows_nnz(self, rows: np.ndarray) -> int:
        """Non-zeros in the given rows (estimated from the mean row length for long row lists)."""
        if rows.size > 4096:
            return int(rows.size * (self.nnz / max(self.shape[0], 1)))
        return int((self.indptr[rows + 1] - self.indptr[rows]).sum())

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
        if rows is None and self.nnz < PARALLEL_MIN_NNZ:
            rows = np.arange(self.shape[0], dtype=np.int64)
        if rows is not None and self._rows_nnz(rows) < PARALLEL_MIN_NNZ:
            rows = np.ascontiguousarray(rows, dtype=np.int64)
            out = np.empty(rows.size, dtype=np.float32)
            _csr_matvec_rows_serial(self.indptr, self.indices, self.data, rows, w32, out)
            return out
        if rows is None:
            out = np.empty(self.shape[0], dtype=np.float32)
            _csr_matvec_all(self.indptr, self.indices, self.data, w32, out)
        else:
            rows = np.ascontiguousarray(rows, dtype=np.int64)
            out = np.empty(rows.size, dtype=np.float32)
            _csr_matvec_rows(self.indptr, self.indices, self.data, rows, w32, out)
        return out

    def grad(self, g: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """D[rows].T @ g (float64 result, float32 accumulation)."""
        if rows is None:
            rows = np.arange(self.shape[0], dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        g32 = np.ascontiguousarray(g, dtype=np.float32)
        if self._rows_nnz(rows) < PARALLEL_MIN_NNZ:
            return _csr_rmatvec_rows_serial(self.indptr, self.indices, self.data, rows, g32, self.shape[1])
        return _csr_rmatvec_rows(self.indptr, self.indices, self.data, rows, g32, self.shape[1], self.nchunks)

    def column_subset(self, cols: np.ndarray) -> "SubsetDij":
        """The same rows restricted to some beamlets (e.g. one beam's), keeping voxel_index."""
        m = sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)[:, np.asarray(cols)]
        out = SubsetDij.__new__(SubsetDij)
        m = sp.csr_matrix(m)
        out.indptr, out.indices, out.data = m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data.astype(np.float32)
        out.shape, out.voxel_index, out.nchunks, out._rowsum = m.shape, self.voxel_index, self.nchunks, None
        return out

    def group_rowsums(self, rows: np.ndarray, gsize: int) -> np.ndarray:
        """(len(rows), ceil(ncols / gsize)) float32: each row's sum over consecutive column groups."""
        ng = int(np.ceil(self.shape[1] / gsize))
        return _group_rowsums(self.indptr, self.indices, self.data, np.ascontiguousarray(rows, dtype=np.int64), int(gsize), ng)

    def to_scipy(self) -> sp.csr_matrix:
        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)
