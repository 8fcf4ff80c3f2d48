"""Fast 3-D gamma index (Low, Harms, Mutic, Purdy, Med Phys 25, 656, 1998).

For each *reference* voxel centre r_r whose dose is at least the low-dose cutoff, the gamma
index is

    Γ(r_r) = min over r_e of sqrt( |r_e - r_r|² / DTA²  +  (D_e(r_e) - D_r(r_r))² / ΔD² )

where D_e is the *evaluated* dose interpolated trilinearly at arbitrary points (the two doses may
lie on different grids: the evaluated dose is sampled in its own grid, any orientation), DTA is
the distance-to-agreement criterion in mm and ΔD the dose criterion in Gy:

* global: ΔD = dose_pct/100 × D_norm, D_norm = the maximum reference dose unless given;
* local:  ΔD = dose_pct/100 × D_r(r_r).

The low-dose cutoff excludes reference voxels with D_r < cutoff_pct/100 × D_norm (TG-218: 10 %).

Search: the candidate points r_e are a cubic lattice of step DTA / ``interp_fraction`` inside a
sphere of radius ``max_gamma`` × DTA around r_r, precomputed once as offsets sorted by distance.
Because the dose term is never negative, the search of one voxel stops at the first offset whose
distance term alone, |Δr|²/DTA², is not below the best Γ² found so far: the result is then
exact for the lattice. Voxels whose Γ exceeds ``max_gamma`` report the smallest value found
inside the sphere (an upper bound of Γ, never below ``max_gamma``); they fail either way.
Candidate points outside the evaluated grid are skipped. A grid with one slice (or row /
column) is treated as 2-D along that axis: only offsets in its plane are used.

The kernel is compiled with numba (parallel over reference voxels). When every reference voxel
centre has the same fractional index in the evaluated grid (same grid, a sub-grid, or the same
spacing shifted by a constant), the interpolation cells and weights of the offsets are
precomputed once (the fast path); otherwise each candidate point is located in the evaluated
grid. Everything is in mm and Gy
(any dose unit works as long as both doses share it).
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rayrt.domain.errors import InputError
from rayrt.imaging.volume import Grid, Volume


class GammaCriteria(BaseModel):
    """Gamma criteria: dose difference, distance to agreement, cutoff and search settings."""

    model_config = ConfigDict(extra="forbid")

    dose_pct: float = Field(
        default=3.0, gt=0, description="dose-difference criterion in % (of D_norm global, of the local dose local)"
    )
    dta_mm: float = Field(default=2.0, gt=0, description="distance-to-agreement criterion in mm")
    cutoff_pct: float = Field(
        default=10.0, ge=0, lt=100, description="reference voxels below this % of D_norm are not evaluated"
    )
    local: bool = Field(default=False, description="local (True) or global (False) dose difference")
    normalization_gy: float | None = Field(
        default=None, gt=0, description="global D_norm; default: maximum reference dose"
    )
    interp_fraction: int = Field(default=10, ge=1, le=50, description="search lattice step = dta_mm / interp_fraction")
    max_gamma: float = Field(default=3.0, gt=0, le=10, description="search radius = max_gamma * dta_mm")

    def label(self) -> str:
        return (
            f"{self.dose_pct:g}%/{self.dta_mm:g}mm {'local' if self.local else 'global'}, cutoff {self.cutoff_pct:g}%"
        )


class GammaSummary(BaseModel):
    """Statistics of a gamma evaluation over the evaluated (above-cutoff) reference voxels."""

    criteria: GammaCriteria
    pass_rate_pct: float = Field(description="percentage of evaluated voxels with gamma <= 1")
    mean_gamma: float
    p95_gamma: float = Field(description="95th percentile of gamma")
    max_gamma: float
    n_evaluated: int = Field(description="reference voxels at or above the cutoff")
    n_passed: int
    normalization_gy: float = Field(description="the global D_norm used for the cutoff (and ΔD when global)")
    seconds: float = Field(default=0.0, description="wall time of the evaluation")


class GammaResult:
    """A gamma map on the reference grid (NaN where not evaluated) and its summary."""

    __slots__ = ("gamma", "grid", "summary")

    def __init__(self, gamma: np.ndarray, grid: Grid, summary: GammaSummary):
        self.gamma = gamma
        self.grid = grid
        self.summary = summary

    @property
    def volume(self) -> Volume:
        return Volume(self.gamma, self.grid, "gamma")

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"GammaResult({s.criteria.label()}: pass {s.pass_rate_pct:.2f} %, mean {s.mean_gamma:.3f}, "
            f"p95 {s.p95_gamma:.3f}, n={s.n_evaluated})"
        )


# --------------------------------------------------------------------------- search offsets
_OFFSET_CACHE: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}


def search_offsets(interp_fraction: int, max_gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Lattice offsets in units of DTA, sorted by distance, within a sphere of radius max_gamma.

    Returns ``(offsets (m, 3) as x, y, z in DTA units, distance² in DTA² units (m,))``. The first
    offset is the origin.
    """
    key = (int(interp_fraction), float(max_gamma))
    if key not in _OFFSET_CACHE:
        n = int(math.ceil(max_gamma * interp_fraction))
        r = np.arange(-n, n + 1, dtype=np.float64) / interp_fraction
        x, y, z = np.meshgrid(r, r, r, indexing="ij")
        d2 = x * x + y * y + z * z
        keep = d2 <= max_gamma * max_gamma + 1e-12
        pts = np.stack([x[keep], y[keep], z[keep]], axis=1)
        d2 = d2[keep]
        order = np.argsort(d2, kind="stable")
        _OFFSET_CACHE[key] = (np.ascontiguousarray(pts[order]), np.ascontiguousarray(d2[order]))
    return _OFFSET_CACHE[key]


# --------------------------------------------------------------------------- numba kernel
_KERNEL = None


def _get_kernel():
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    from numba import njit, prange

    @njit(parallel=True, cache=True, fastmath=True, nogil=True)
    def kernel(base, ref_dose, inv_dd, ev, off, off_d2, out):  # pragma: no cover - compiled
        nk, nj, ni = ev.shape
        m = off.shape[0]
        n = base.shape[0]
        eps = 1e-6
        for p in prange(n):
            bk = base[p, 0]
            bj = base[p, 1]
            bi = base[p, 2]
            dr = ref_dose[p]
            w = inv_dd[p]
            best = np.inf
            for o in range(m):
                d2 = off_d2[o]
                if d2 >= best:
                    break
                k = bk + off[o, 0]
                j = bj + off[o, 1]
                i = bi + off[o, 2]
                if k < -eps or j < -eps or i < -eps or k > nk - 1 + eps or j > nj - 1 + eps or i > ni - 1 + eps:
                    continue
                # trilinear interpolation; an axis of size 1 is a 2-D plane
                if nk > 1:
                    k0 = min(max(int(math.floor(k)), 0), nk - 2)
                    fk = min(max(k - k0, 0.0), 1.0)
                else:
                    k0 = 0
                    fk = 0.0
                if nj > 1:
                    j0 = min(max(int(math.floor(j)), 0), nj - 2)
                    fj = min(max(j - j0, 0.0), 1.0)
                else:
                    j0 = 0
                    fj = 0.0
                if ni > 1:
                    i0 = min(max(int(math.floor(i)), 0), ni - 2)
                    fi = min(max(i - i0, 0.0), 1.0)
                else:
                    i0 = 0
                    fi = 0.0
                k1 = k0 + 1 if nk > 1 else 0
                j1 = j0 + 1 if nj > 1 else 0
                i1 = i0 + 1 if ni > 1 else 0
                c00 = ev[k0, j0, i0] * (1.0 - fi) + ev[k0, j0, i1] * fi
                c01 = ev[k0, j1, i0] * (1.0 - fi) + ev[k0, j1, i1] * fi
                c10 = ev[k1, j0, i0] * (1.0 - fi) + ev[k1, j0, i1] * fi
                c11 = ev[k1, j1, i0] * (1.0 - fi) + ev[k1, j1, i1] * fi
                c0 = c00 * (1.0 - fj) + c01 * fj
                c1 = c10 * (1.0 - fj) + c11 * fj
                val = c0 * (1.0 - fk) + c1 * fk
                dd = (val - dr) * w
                g2 = dd * dd + d2
                if g2 < best:
                    best = g2
            out[p] = math.sqrt(best)

    @njit(parallel=True, cache=True, fastmath=True, nogil=True)
    def kernel_aligned(base, ref_dose, inv_dd, ev, cell0, cell1, frac, off_d2, out):  # pragma: no cover - compiled
        # reference voxel centres on evaluated grid nodes: the interpolation cell and weights of
        # each offset are the same for every voxel (precomputed), only the base index moves
        nk, nj, ni = ev.shape
        m = off_d2.shape[0]
        n = base.shape[0]
        for p in prange(n):
            bk = base[p, 0]
            bj = base[p, 1]
            bi = base[p, 2]
            dr = ref_dose[p]
            w = inv_dd[p]
            best = np.inf
            for o in range(m):
                d2 = off_d2[o]
                if d2 >= best:
                    break
                k0 = bk + cell0[o, 0]
                j0 = bj + cell0[o, 1]
                i0 = bi + cell0[o, 2]
                k1 = bk + cell1[o, 0]
                j1 = bj + cell1[o, 1]
                i1 = bi + cell1[o, 2]
                if k0 < 0 or j0 < 0 or i0 < 0 or k1 >= nk or j1 >= nj or i1 >= ni:
                    continue
                fk = frac[o, 0]
                fj = frac[o, 1]
                fi = frac[o, 2]
                c00 = ev[k0, j0, i0] + (ev[k0, j0, i1] - ev[k0, j0, i0]) * fi
                c01 = ev[k0, j1, i0] + (ev[k0, j1, i1] - ev[k0, j1, i0]) * fi
                c10 = ev[k1, j0, i0] + (ev[k1, j0, i1] - ev[k1, j0, i0]) * fi
                c11 = ev[k1, j1, i0] + (ev[k1, j1, i1] - ev[k1, j1, i0]) * fi
                c0 = c00 + (c01 - c00) * fj
                c1 = c10 + (c11 - c10) * fj
                dd = (c0 + (c1 - c0) * fk - dr) * w
                g2 = dd * dd + d2
                if g2 < best:
                    best = g2
            out[p] = math.sqrt(best)

    _KERNEL = (kernel, kernel_aligned)
    return _KERNEL


_KERNEL_LOCK = threading.Lock()


def _cell_tables(off_kji: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolation cell corners (int) and weights of offsets from a grid node (index units)."""
    cell0 = np.floor(off_kji + 1e-9)
    frac = np.clip(off_kji - cell0, 0.0, 1.0)
    frac[frac < 1e-9] = 0.0
    cell1 = cell0 + (frac > 0)
    return cell0.astype(np.int64), cell1.astype(np.int64), np.ascontiguousarray(frac)


def _run_kernel(general, aligned, base, ref_vals, inv_dd, ev_d, off_kji, d2, out) -> None:
    """Gamma of every reference voxel.

    The fractional part of a voxel's evaluated-grid index decides the interpolation cells and
    weights of all its search offsets. When all voxels share it (same grid, a sub-grid, or a grid
    of the same spacing shifted by any constant) one precomputed table serves every voxel;
    otherwise each candidate point is located on the fly (general kernel). (Grouping voxels of
    commensurate grids by their few fractional parts was measured slower: many small parallel
    launches.)
    """
    fl = np.floor(base + 1e-7)
    fr = np.round(base - fl, 6)
    fr[fr >= 1.0] = 0.0
    if np.all(np.abs(fr - fr[0]) < 1e-6):
        c0, c1, fw = _cell_tables(off_kji + fr[0])
        aligned(fl.astype(np.int64), ref_vals, inv_dd, ev_d, c0, c1, fw, d2, out)
    else:
        general(base, ref_vals, inv_dd, ev_d, off_kji, d2, out)


# --------------------------------------------------------------------------- public API
def _as_volume(dose: Volume | tuple[np.ndarray, Grid], what: str) -> Volume:
    if isinstance(dose, Volume):
        return dose
    if isinstance(dose, tuple) and len(dose) == 2:
        return Volume(np.asarray(dose[0]), dose[1], "dose_gy")
    raise InputError(f"{what} dose must be a Volume or (array, Grid), got {type(dose).__name__}", kind="gamma")


def gamma_index(
    reference: Volume | tuple[np.ndarray, Grid],
    evaluated: Volume | tuple[np.ndarray, Grid],
    criteria: GammaCriteria | None = None,
    **overrides,
) -> GammaResult:
    """3-D gamma of ``evaluated`` against ``reference`` (doses in the same unit, grids in LPS mm).

    ``criteria`` defaults to TG-218 global 3 %/2 mm, 10 % cutoff; keyword ``overrides`` (e.g.
    ``dose_pct=2, dta_mm=2, local=True``) replace single fields. Returns the gamma map on the
    reference grid (float32, NaN where not evaluated) and a :class:`GammaSummary`.
    """
    t0 = time.perf_counter()
    crit = criteria or GammaCriteria()
    if overrides:
        crit = GammaCriteria.model_validate({**crit.model_dump(), **overrides})
    ref = _as_volume(reference, "reference")
    ev = _as_volume(evaluated, "evaluated")
    ref_d = np.asarray(ref.array, dtype=np.float64)
    ev_d = np.ascontiguousarray(ev.array, dtype=np.float64)
    if not np.all(np.isfinite(ref_d)) or not np.all(np.isfinite(ev_d)):
        raise InputError("dose arrays contain NaN or infinite values; fix the dose files", kind="gamma")

    norm = float(crit.normalization_gy) if crit.normalization_gy else float(ref_d.max())
    gamma = np.full(ref_d.shape, np.nan, dtype=np.float32)
    if norm <= 0:
        raise InputError("the reference dose is zero everywhere; nothing to compare", kind="gamma")
    cutoff = crit.cutoff_pct / 100.0 * norm
    sel = ref_d >= cutoff
    if crit.local:
        sel &= ref_d > 0
    idx = np.nonzero(sel)
    n = int(idx[0].size)
    if n == 0:
        raise InputError(f"no reference voxel is at or above the {crit.cutoff_pct:g} % cutoff", kind="gamma")

    # reference voxel centres -> fractional (k, j, i) indices of the evaluated grid
    kji_ref = np.stack(idx, axis=1).astype(np.float64)
    xyz = ref.grid.index_to_world(kji_ref)
    base = np.ascontiguousarray(ev.grid.world_to_index(xyz))
    del xyz, kji_ref

    off_dta, d2 = search_offsets(crit.interp_fraction, crit.max_gamma)
    off_mm = off_dta * crit.dta_mm
    off_ijk = (off_mm @ ev.grid.direction_matrix) / ev.grid.spacing
    off_kji = np.ascontiguousarray(off_ijk[:, ::-1])

    ref_vals = np.ascontiguousarray(ref_d[idx])
    if crit.local:
        inv_dd = 1.0 / (crit.dose_pct / 100.0 * ref_vals)
    else:
        inv_dd = np.full(n, 1.0 / (crit.dose_pct / 100.0 * norm))
    out = np.empty(n, dtype=np.float64)
    general, aligned = _get_kernel()
    # numba's default (workqueue) threading layer must not be entered from two threads at once
    with _KERNEL_LOCK:
        _run_kernel(general, aligned, base, ref_vals, inv_dd, ev_d, off_kji, d2, out)
    gamma[idx] = out.astype(np.float32)

    passed = int(np.count_nonzero(out <= 1.0))
    summary = GammaSummary(
        criteria=crit,
        pass_rate_pct=100.0 * passed / n,
        mean_gamma=float(out.mean()),
        p95_gamma=float(np.percentile(out, 95)),
        max_gamma=float(out.max()),
        n_evaluated=n,
        n_passed=passed,
        normalization_gy=norm,
        seconds=time.perf_counter() - t0,
    )
    return GammaResult(gamma, ref.grid, summary)


# --------------------------------------------------------------------------- dose files
def _grid_sidecar(npy: Path) -> Path | None:
    """The grid JSON of a .npy dose: ``<name>.grid.json``, ``<name>_grid.json`` (dose.npy + dose_grid.json)."""
    stem = npy.with_suffix("")
    for cand in (Path(f"{stem}.grid.json"), Path(f"{stem}_grid.json"), npy.parent / "grid.json"):
        if cand.is_file():
            return cand
    return None


def load_dose(path: str | Path) -> Volume:
    """Read a dose for gamma / QA: a DICOM RTDOSE file, or a ``.npy`` array with its grid sidecar.

    ``.npy`` doses are indexed [k, j, i] in Gy; their grid (a :class:`Grid` as JSON) is read
    from ``<name>.grid.json`` or ``<name>_grid.json`` beside them (``dose.npy`` +
    ``dose_grid.json`` as written by ``rayrt plan``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dose file not found: {path}", kind="dose", field=str(path), status=404)
    if path.suffix.lower() == ".npy":
        side = _grid_sidecar(path)
        if side is None:
            raise InputError(
                f"no grid for {path.name}: write the dose grid as {path.with_suffix('').name}.grid.json "
                f"(rayrt.imaging.volume.Grid as JSON) beside it",
                kind="dose",
                field=str(path),
            )
        try:
            grid = Grid.model_validate_json(side.read_text(encoding="utf-8"))
        except Exception as exc:  # pydantic ValidationError or JSON error
            raise InputError(
                f"invalid grid file {side.name}: {exc}".splitlines()[0], kind="dose", field=str(side)
            ) from None
        arr = np.load(path, allow_pickle=False)
        if arr.shape != tuple(grid.shape):
            raise InputError(
                f"{path.name} has shape {arr.shape} but {side.name} says {grid.shape}", kind="dose", field=str(path)
            )
        return Volume(arr.astype(np.float32, copy=False), grid, "dose_gy")
    return read_rtdose_volume(path)


def read_rtdose_volume(path: str | Path) -> Volume:
    """Dose in Gy on its grid from a DICOM RTDOSE file (the imaging package's reader)."""
    from rayrt.imaging.dicom_io import read_rtdose

    return read_rtdose(path)


def save_dose_npy(volume: Volume, path: str | Path) -> Path:
    """Write a dose as ``<name>.npy`` + ``<name>.grid.json`` (the format :func:`load_dose` reads)."""
    path = Path(path)
    np.save(path, np.asarray(volume.array, dtype=np.float32))
    Path(f"{path.with_suffix('')}.grid.json").write_text(volume.grid.model_dump_json(), encoding="utf-8")
    return path


def summary_json(summary: GammaSummary) -> str:
    return json.dumps(summary.model_dump(mode="json"), indent=2)
