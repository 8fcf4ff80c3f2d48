"""Dose-influence matrix (Dij) of a beam's bixels: sparse, float32, voxels x bixels.

Units: ``Dij[v, b]`` is the dose in Gy to dose voxel ``v`` per unit weight of bixel ``b``, where
weight 1 means 1 MU delivered through the bixel-sized opening (machine calibration: 1 MU gives
``beam.calibration_gy_per_mu`` = 0.01 Gy at dmax of a 10 x 10 cm² field at SSD 100 cm, see
rayrt.dose.pencil_beam). So ``Dij @ w`` with ``w`` from :func:`rayrt.dose.aperture.aperture_fluence`
(MU-weighted open fraction per bixel) is the dose of step-and-shoot segments in Gy, and a fully
open 10 x 10 cm² field of 1 MU made of bixels gives about 0.01 Gy at dmax.

Algorithm per beam (all hot loops in numba, rayrt.dose._numba):

1. Project every dose-voxel centre onto the isocenter plane (u, v) and score it when the density
   at its centre is > ``min_density`` (i.e. inside the external) and it lies within the lateral
   envelope of the requested bixels.
2. Radiological depth of every scored voxel by exact voxel traversal (Siddon) of the ray from the
   source to the voxel centre through the density volume (its own grid; the dose grid is
   independent), then the three depth terms ``c_abs (SAD/s)^2 w_i(d)``.
3. Per bixel (parallel over bixels): for each dose-grid row the voxels within the bixel's
   rectangle dilated by ``cutoff_mm`` form one contiguous index interval (a straight line
   projects to a straight line), so each column is produced already sorted by voxel index; the
   convolved kernels C_i of the bixel's size (rayrt.dose.pencil_beam.bixel_kernel_table) are
   looked up bilinearly. Entries below ``threshold`` x the bixel's maximum dose in water are
   dropped. Two passes (count, fill) build the CSC arrays in place.

Every value depends only on its voxel and bixel, so any split into beamlet ranges concatenates to
exactly (bitwise) the single-call matrix.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from rayrt.domain.errors import InputError
from rayrt.domain.machine import MachineModel
from rayrt.domain.plan import Beam
from rayrt.dose import _numba as nb
from rayrt.dose.geometry import BeamGeometry, BeamletGrid, beamlet_grid
from rayrt.dose.pencil_beam import bixel_kernel_table, calibration_factor
from rayrt.imaging.volume import Grid, Volume

#: default lateral cut-off: kernel contributions further than this from a bixel's edge (mm at the isocenter plane) are ignored
DEFAULT_CUTOFF_MM = 50.0
#: default relative dose threshold: entries below this fraction of the bixel's maximum dose in water are dropped
DEFAULT_THRESHOLD = 1e-4
#: voxels whose density is at or below this are not scored (outside the external: density 0)
DEFAULT_MIN_DENSITY = 1e-4


def dose_grid_for(ct_grid: Grid, spacing_mm: float | tuple[float, float, float]) -> Grid:
    """An axis-aligned dose grid covering the CT's extent with the given voxel size (mm)."""
    sp_ = (float(spacing_mm),) * 3 if np.isscalar(spacing_mm) else tuple(float(s) for s in spacing_mm)
    if any(s <= 0 for s in sp_):
        raise InputError(f"dose grid spacing must be > 0 mm, got {spacing_mm}", field="dose_grid_mm")
    return ct_grid.with_spacing(sp_)


def _ct_transform(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(origin, inverse axes): continuous (i,j,k) = inv @ (p - origin)."""
    axes = grid.direction_matrix * grid.spacing[None, :]
    return grid.origin.astype(float), np.ascontiguousarray(np.linalg.inv(axes))


def _axes(grid: Grid) -> np.ndarray:
    return np.ascontiguousarray(grid.direction_matrix * grid.spacing[None, :])


def _bixel_arrays(beamlets: BeamletGrid, machine: MachineModel, start: int, stop: int, cutoff_mm: float, threshold: float):
    """Per-bixel parameters and the packed kernel tables for bixels [start, stop)."""
    beam = machine.beam
    u = beamlets.u_mm[start:stop].astype(float)
    v = beamlets.v_mm[start:stop].astype(float)
    hw = 0.5 * beamlets.bixel_width_mm
    h = beamlets.height_mm[start:stop].astype(float)
    sizes = sorted(set(np.round(beamlets.height_mm, 6).tolist()))  # all sizes of the beam: table ids stable across chunks
    tabs = [bixel_kernel_table(beam, beamlets.bixel_width_mm, hh, cutoff_mm) for hh in sizes]
    ny = max(t.values.shape[0] for t in tabs)
    nx = max(t.values.shape[1] for t in tabs)
    packed = np.zeros((len(tabs), ny, nx, 3))
    for i, t in enumerate(tabs):
        packed[i, : t.values.shape[0], : t.values.shape[1]] = t.values
    tx0 = np.array([t.x0_mm for t in tabs])
    ty0 = np.array([t.y0_mm for t in tabs])
    tnx = np.array([t.values.shape[1] for t in tabs], dtype=np.int64)
    tny = np.array([t.values.shape[0] for t in tabs], dtype=np.int64)
    tid = np.searchsorted(np.asarray(sizes), np.round(h, 6)).astype(np.int64)
    prim = beam.primary_fluence_at(np.hypot(u, v))
    # bixel maximum dose in water (SSD = SAD, on its axis) per unit kernel scale: threshold reference
    depths = np.arange(0.0, 60.0, 0.5)
    wd = beam.depth_components(depths)
    calib = calibration_factor(machine)
    ref = np.array([calib * float(((machine.sad_mm / (machine.sad_mm + depths)) ** 2 * (t.values[t.values.shape[0] // 2, t.values.shape[1] // 2][:, None] * wd).sum(0)).max()) for t in tabs])
    thr = threshold * prim * ref[tid]
    return dict(bu=u, bv=v, bhw=hw + np.zeros_like(u), bhh=0.5 * h, cutoff=float(cutoff_mm), btab=tid, bscale=prim, bthr=thr,
                tables=packed, tx0=tx0, ty0=ty0, tnx=tnx, tny=tny, inv_h=1.0 / tabs[0].spacing_mm)


def compute_dij(
    density: Volume,
    dose_grid: Grid,
    beamlets: BeamletGrid,
    machine: MachineModel,
    start: int = 0,
    stop: int | None = None,
    *,
    cutoff_mm: float = DEFAULT_CUTOFF_MM,
    threshold: float = DEFAULT_THRESHOLD,
    min_density: float = DEFAULT_MIN_DENSITY,
) -> sp.csc_matrix:
    """Dij (Gy per bixel weight, float32 CSC, shape (dose_grid.num_voxels, stop - start)) of bixels [start, stop).

    Pure function of its inputs: chunks over beamlet ranges reassemble (``scipy.sparse.hstack``)
    to exactly the single-call matrix. Row index = C-order flat index of the dose grid [k, j, i].
    ``density`` is relative electron density on any grid (see rayrt.dose.phantom).
    """
    n_all = beamlets.num_bixels
    stop = n_all if stop is None else int(stop)
    start = int(start)
    if not (0 <= start <= stop <= n_all):
        raise InputError(f"beamlet range [{start}, {stop}) is outside 0..{n_all}", field="beamlets")
    if cutoff_mm <= 0 or not (0 <= threshold < 1):
        raise InputError(f"cutoff_mm must be > 0 and 0 <= threshold < 1 (got {cutoff_mm}, {threshold})", field="cutoff_mm")
    if beamlets.machine_name != machine.name:
        raise InputError(f"beamlets were made for machine {beamlets.machine_name!r}, not {machine.name!r}", field="machine")
    nvox = dose_grid.num_voxels
    if stop == start:
        return sp.csc_matrix((nvox, 0), dtype=np.float32)
    rho = np.ascontiguousarray(density.array, dtype=np.float32)
    geo = beamlets.geometry(machine)
    b = _bixel_arrays(beamlets, machine, start, stop, cutoff_mm, threshold)

    shape = np.array(dose_grid.shape, dtype=np.int64)
    origin = dose_grid.origin.astype(float)
    axes = _axes(dose_grid)
    ct_origin, ct_inv = _ct_transform(density.grid)
    rot = np.ascontiguousarray(geo.rotation)
    iso = geo.isocenter_mm.astype(float)
    sad = float(machine.sad_mm)

    u = np.empty(nvox)
    v = np.empty(nvox)
    scored = np.empty(nvox, dtype=np.bool_)
    nb.project_dose_voxels(shape, origin, axes, rot, iso, sad, rho, ct_origin, ct_inv, float(min_density), u, v, scored)
    # lateral envelope of the requested bixels
    ulo = float((b["bu"] - b["bhw"]).min()) - cutoff_mm
    uhi = float((b["bu"] + b["bhw"]).max()) + cutoff_mm
    vlo = float((b["bv"] - b["bhh"]).min()) - cutoff_mm
    vhi = float((b["bv"] + b["bhh"]).max()) + cutoff_mm
    scored &= (u >= ulo) & (u <= uhi) & (v >= vlo) & (v <= vhi)
    idx = np.flatnonzero(scored)
    w = np.empty((nvox, 3))
    depth = np.empty(nvox)
    beam = machine.beam
    nb.voxel_depth_terms(idx, shape, origin, axes, rot, iso, sad, rho, ct_origin, ct_inv, float(beam.attenuation_per_mm),
                         np.asarray(beam.betas_per_mm, float), float(calibration_factor(machine)), w, depth)
    del depth
    nk, nj, ni = dose_grid.shape
    first, last, box = nb.row_ranges(scored, u, v, nk * nj, ni)
    # BLD-frame coordinates of voxel (k, j, i): B0 + i Bi + j Bj + k Bk
    row_b0 = rot @ (origin - iso)
    row_bi, row_bj, row_bk = (rot @ axes[:, c] for c in range(3))
    common = (b["bu"], b["bv"], b["bhw"], b["bhh"], b["cutoff"], b["btab"], b["bscale"], b["bthr"], b["tables"], b["tx0"], b["ty0"], b["tnx"], b["tny"],
              b["inv_h"], shape, row_b0, row_bj, row_bk, row_bi, sad, first, last, box, u, v, w, scored)
    bound = nb.bound_columns(*common)
    ptr_bound = np.zeros(bound.size + 1, dtype=np.int64)
    np.cumsum(bound, out=ptr_bound[1:])
    idx_dtype = np.int32 if max(int(ptr_bound[-1]), nvox) < 2**31 - 1 else np.int64
    out_idx = np.empty(int(ptr_bound[-1]), dtype=idx_dtype)
    out_val = np.empty(int(ptr_bound[-1]), dtype=np.float32)
    counts = nb.fill_columns(ptr_bound, out_idx, out_val, *common)
    del u, v, w, scored
    indptr = nb.compact_columns(ptr_bound, counts, out_idx, out_val)
    nnz = int(indptr[-1])
    out_idx.resize(nnz, refcheck=False)  # shrinks in place: no second copy of the matrix
    out_val.resize(nnz, refcheck=False)
    m = sp.csc_matrix((out_val, out_idx, indptr.astype(idx_dtype)), shape=(nvox, stop - start), copy=False)
    m.has_sorted_indices = True
    return m


def plan_dij(
    density: Volume,
    dose_grid: Grid,
    beams: list[Beam],
    machine: MachineModel,
    target_mask: np.ndarray,
    *,
    bixel_width_mm: float = 5.0,
    margin_mm: float = 5.0,
    cutoff_mm: float = DEFAULT_CUTOFF_MM,
    threshold: float = DEFAULT_THRESHOLD,
    mask_grid: Grid | None = None,
    patient_position: str = "HFS",
) -> tuple[sp.csc_matrix, list[BeamletGrid]]:
    """Dij of all beams side by side (columns: beam 0's bixels, then beam 1's...) and their beamlet grids.

    ``target_mask`` lives on ``mask_grid`` (default: the density grid).
    """
    if not beams:
        raise InputError("a plan needs at least one beam", field="beams")
    g = mask_grid if mask_grid is not None else density.grid
    grids = [beamlet_grid(b, machine, target_mask, g, bixel_width_mm=bixel_width_mm, margin_mm=margin_mm, patient_position=patient_position) for b in beams]
    acc = _ColumnAccumulator(dose_grid.num_voxels)
    for bg in grids:
        acc.append(compute_dij(density, dose_grid, bg, machine, cutoff_mm=cutoff_mm, threshold=threshold))
    return acc.matrix(), grids


class _ColumnAccumulator:
    """Appends CSC column blocks into growing arrays (resized in place), so a plan's Dij never exists twice in memory."""

    def __init__(self, nrows: int):
        self.nrows = nrows
        self.data = np.empty(0, dtype=np.float32)
        self.indices = np.empty(0, dtype=np.int64 if nrows >= 2**31 - 1 else np.int32)
        self.indptr = [np.zeros(1, dtype=np.int64)]
        self.nnz = 0
        self.ncols = 0

    def append(self, m: sp.csc_matrix) -> None:
        k = int(m.indptr[-1])
        if self.nnz + k >= 2**31 - 1 and self.indices.dtype != np.int64:
            self.indices = self.indices.astype(np.int64)
        self.data.resize(self.nnz + k, refcheck=False)
        self.indices.resize(self.nnz + k, refcheck=False)
        self.data[self.nnz :] = m.data
        self.indices[self.nnz :] = m.indices
        self.indptr.append(m.indptr[1:].astype(np.int64) + self.nnz)
        self.nnz += k
        self.ncols += m.shape[1]

    def matrix(self) -> sp.csc_matrix:
        idx_dtype = self.indices.dtype
        indptr = np.concatenate(self.indptr).astype(idx_dtype)
        out = sp.csc_matrix((self.data, self.indices, indptr), shape=(self.nrows, self.ncols), copy=False)
        out.has_sorted_indices = True
        return out


def chunk_ranges(num_bixels: int, chunk_size: int) -> list[tuple[int, int]]:
    """Beamlet ranges [(start, stop), ...] of at most ``chunk_size`` bixels, for fanning ``compute_dij`` out.

    Each chunk recomputes the radiological depth of the voxels within its own lateral envelope,
    so chunks of a few hundred bixels per beam keep that overhead small.
    """
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}", field="chunk_size")
    return [(a, min(a + chunk_size, num_bixels)) for a in range(0, num_bixels, chunk_size)]


def hstack_exact(mats: list[sp.csc_matrix]) -> sp.csc_matrix:
    """Concatenate CSC column blocks (e.g. chunks of ``compute_dij``) without re-sorting or converting values (bitwise)."""
    if not mats:
        raise InputError("nothing to concatenate", field="mats")
    acc = _ColumnAccumulator(mats[0].shape[0])
    for m in mats:
        if m.shape[0] != acc.nrows:
            raise InputError(f"column blocks have different numbers of rows: {m.shape[0]} vs {acc.nrows}", field="mats")
        acc.append(m.tocsc())
    return acc.matrix()


__all__ = ["compute_dij", "plan_dij", "dose_grid_for", "hstack_exact", "chunk_ranges", "DEFAULT_CUTOFF_MM", "DEFAULT_THRESHOLD", "BeamGeometry"]
