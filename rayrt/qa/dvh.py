"""Dose-volume histograms and dose-volume metrics.

Method (reported with every :class:`DVHMetrics` in ``method``):

* A structure is the set of voxels whose *centre* lies inside it (see
  :mod:`rayrt.imaging.polygons`); each voxel carries its centre dose and an equal share of
  volume. With ``subvoxel`` > 1 (:func:`structure_dvh_metrics`), each dose voxel is split into
  ``s x s x s`` sub-voxels, the structure is rasterised at the sub-voxel centres and the dose
  is interpolated trilinearly there, which matters for structures of a few cc.
* Cumulative DVH: ``V(d)`` = percentage of the structure volume receiving a dose ``>= d``.
* ``Dx`` (:func:`dose_at_volume`) = the minimum dose received by the hottest ``x`` % of the
  volume. Sorted descending, the voxel of rank ``r`` (1-based) of ``N`` represents the volume
  fraction ``[(r-1)/N, r/N]`` and its dose is placed at the middle, ``(r - 0.5)/N``; ``Dx``
  interpolates linearly between those points and is clamped to the max / min voxel dose
  outside them. For a dose that is linear across each voxel this gives the exact continuous
  ``Dx``. ``D0`` = max, ``D100`` = min.
* ``Vx`` (:func:`volume_at_dose`) = percentage of voxels with dose ``>= x`` Gy (no interpolation).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from rayrt.imaging.polygons import polygon_planes, rasterize_polygons
from rayrt.imaging.volume import Grid

__all__ = [
    "DVHMetrics",
    "METHOD_VOXEL_CENTRE",
    "dvh_metrics",
    "cumulative_dvh",
    "dose_at_volume",
    "volume_at_dose",
    "structure_dvh_metrics",
]

METHOD_VOXEL_CENTRE = (
    "voxel-centre: voxels whose centre is inside the structure, centre dose, equal volume per voxel; "
    "Dx by mid-rank linear interpolation"
)


class DVHMetrics(BaseModel):
    """Dose-volume metrics of one structure (doses in Gy, volume in cm³)."""

    name: str
    volume_cc: float = Field(ge=0)
    num_voxels: int = Field(default=0, ge=0, description="number of (sub-)voxels sampled")
    min_gy: float
    mean_gy: float
    max_gy: float
    d2_gy: float
    d5_gy: float
    d50_gy: float
    d95_gy: float
    d98_gy: float
    method: str = METHOD_VOXEL_CENTRE


def _sorted_desc(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return -np.sort(-v)


def _dx_from_sorted_desc(desc: np.ndarray, volume_pct: np.ndarray) -> np.ndarray:
    n = desc.size
    if n == 0:
        return np.full(np.shape(volume_pct), np.nan)
    # rank position (0-based, fractional) whose mid-point volume is x %: (r + 0.5)/n = x/100
    pos = np.asarray(volume_pct, dtype=float) / 100.0 * n - 0.5
    pos = np.clip(pos, 0.0, n - 1.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = pos - lo
    return desc[lo] * (1.0 - w) + desc[hi] * w


def dose_at_volume(dose_gy_values: np.ndarray, volume_pct: float | np.ndarray) -> float | np.ndarray:
    """``Dx`` in Gy: the minimum dose received by the hottest ``volume_pct`` % (see module docstring).

    ``dose_gy_values`` are the doses of the structure's voxels (any shape, equal voxel volumes).
    A scalar ``volume_pct`` uses ``np.partition`` (O(N)); an array sorts once.
    """
    v = np.asarray(dose_gy_values, dtype=np.float64).ravel()
    n = v.size
    if n == 0:
        return float("nan") if np.ndim(volume_pct) == 0 else np.full(np.shape(volume_pct), np.nan)
    if np.ndim(volume_pct) == 0:
        pos = float(np.clip(float(volume_pct) / 100.0 * n - 0.5, 0.0, n - 1.0))
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        w = pos - lo
        # descending rank r corresponds to ascending index n-1-r
        a_lo, a_hi = n - 1 - lo, n - 1 - hi
        part = np.partition(v, sorted({a_lo, a_hi}))
        return float(part[a_lo] * (1.0 - w) + part[a_hi] * w)
    return _dx_from_sorted_desc(_sorted_desc(v), np.asarray(volume_pct, dtype=float))


def volume_at_dose(dose_gy_values: np.ndarray, dose_gy: float | np.ndarray) -> float | np.ndarray:
    """``Vx`` in percent: the share of the structure volume receiving at least ``dose_gy`` Gy."""
    v = np.asarray(dose_gy_values, dtype=np.float64).ravel()
    if v.size == 0:
        return float("nan") if np.ndim(dose_gy) == 0 else np.full(np.shape(dose_gy), np.nan)
    if np.ndim(dose_gy) == 0:
        return float(np.count_nonzero(v >= float(dose_gy)) * 100.0 / v.size)
    asc = np.sort(v)
    idx = np.searchsorted(asc, np.asarray(dose_gy, dtype=float), side="left")
    return (v.size - idx) * 100.0 / v.size


def cumulative_dvh(
    dose_gy: np.ndarray, mask: np.ndarray, bins_gy: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative DVH of the voxels in ``mask``: (dose axis in Gy, percent of volume with dose >= axis).

    Default axis: 0 to the maximum dose in 0.01 Gy steps (at most 2001 points).
    """
    values = np.asarray(dose_gy)[np.asarray(mask, dtype=bool)] if mask is not None else np.asarray(dose_gy).ravel()
    values = values.astype(np.float64, copy=False)
    if bins_gy is None:
        dmax = float(values.max()) if values.size else 0.0
        n = int(min(2001, max(2, np.ceil(dmax / 0.01) + 2)))
        bins_gy = np.linspace(0.0, max(dmax, 1e-6) * (1.0 + 1e-9), n)
    axis = np.asarray(bins_gy, dtype=np.float64)
    if values.size == 0:
        return axis, np.zeros_like(axis)
    return axis, np.asarray(volume_at_dose(values, axis), dtype=np.float64)


def _dx_partition(values: np.ndarray, volume_pct: np.ndarray) -> np.ndarray:
    """Dx for a few percentages with one multi-kth ``np.partition`` (O(N)), same definition as a full sort."""
    n = values.size
    pos = np.clip(np.asarray(volume_pct, dtype=float) / 100.0 * n - 0.5, 0.0, n - 1.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = pos - lo
    # descending rank r <-> ascending index n - 1 - r
    kth = np.unique(np.concatenate([n - 1 - lo, n - 1 - hi, [0, n - 1]]))
    part = np.partition(values, kth)
    return part[n - 1 - lo] * (1.0 - w) + part[n - 1 - hi] * w


def _metrics_from_values(values: np.ndarray, voxel_volume_cc: float, name: str, method: str) -> DVHMetrics:
    n = values.size
    if n == 0:
        nan = float("nan")
        return DVHMetrics(
            name=name,
            volume_cc=0.0,
            num_voxels=0,
            min_gy=nan,
            mean_gy=nan,
            max_gy=nan,
            d2_gy=nan,
            d5_gy=nan,
            d50_gy=nan,
            d95_gy=nan,
            d98_gy=nan,
            method=method,
        )
    values = np.asarray(values, dtype=np.float64).ravel()
    d2, d5, d50, d95, d98 = _dx_partition(values, np.array([2.0, 5.0, 50.0, 95.0, 98.0]))
    return DVHMetrics(
        name=name,
        volume_cc=float(n * voxel_volume_cc),
        num_voxels=int(n),
        min_gy=float(values.min()),
        mean_gy=float(values.mean(dtype=np.float64)),
        max_gy=float(values.max()),
        d2_gy=float(d2),
        d5_gy=float(d5),
        d50_gy=float(d50),
        d95_gy=float(d95),
        d98_gy=float(d98),
        method=method,
    )


def dvh_metrics(dose_gy: np.ndarray, mask: np.ndarray, voxel_volume_cc: float, name: str) -> DVHMetrics:
    """Volume, min, mean, max, D2, D5, D50, D95, D98 of the voxels in ``mask`` (voxel-centre method).

    An empty mask gives ``volume_cc = 0`` and NaN doses.
    """
    dose = np.asarray(dose_gy)
    m = np.asarray(mask, dtype=bool)
    if dose.shape != m.shape:
        raise ValueError(f"dose shape {dose.shape} and mask shape {m.shape} differ")
    return _metrics_from_values(dose[m].astype(np.float64, copy=False), voxel_volume_cc, name, METHOD_VOXEL_CENTRE)


def structure_dvh_metrics(
    dose,
    contours: list[np.ndarray],
    name: str,
    *,
    subvoxel: int = 1,
    small_cc: float | None = None,
    plane_spacing_mm: float | None = None,
) -> DVHMetrics:
    """Metrics of a structure given as polygons (LPS mm) on a dose :class:`~rayrt.imaging.volume.Volume`.

    ``subvoxel=1``: the polygons are rasterised directly onto the dose grid (voxel centres).
    ``subvoxel=s > 1``: every dose voxel in the structure's bounding box is split into
    ``s x s x s`` sub-voxels; the structure is rasterised at the sub-voxel centres (contour
    planes assigned to sub-slices by nearest plane, so the structure's extent along the slice
    normal is resolved to ``dz/s`` too) and the dose is interpolated trilinearly there. With
    ``small_cc`` set, sub-voxels are used only for structures whose voxel-centre volume is below
    ``small_cc`` (bigger ones gain little and cost ``s**3`` more samples).
    """
    from scipy.ndimage import map_coordinates

    grid = dose.grid
    if contours:
        ij, ks = polygon_planes(contours, grid)
        kf = ks[np.isfinite(ks)]
        single_plane = kf.size > 0 and float(kf.max() - kf.min()) < 0.05
        if plane_spacing_mm is None and single_plane:
            plane_spacing_mm = float(grid.spacing[2])
    mask = rasterize_polygons(contours, grid, plane_spacing_mm=plane_spacing_mm)
    base = dvh_metrics(dose.array, mask, grid.voxel_volume_cc, name)
    s = int(subvoxel)
    if s <= 1 or (small_cc is not None and base.volume_cc >= small_cc) or not contours:
        return base
    # bounding box of the polygons in dose-grid indices, one voxel of margin
    allij = np.concatenate(ij, axis=0)
    shape = np.array(grid.shape)
    lo = np.floor(np.array([np.nanmin(ks), allij[:, 1].min(), allij[:, 0].min()]) - 1).astype(int)
    hi = np.ceil(np.array([np.nanmax(ks), allij[:, 1].max(), allij[:, 0].max()]) + 1).astype(int)
    lo = np.clip(lo, 0, shape - 1)
    hi = np.clip(hi, 0, shape - 1)
    if np.any(hi < lo):
        return base
    n = (hi - lo + 1) * s
    first = lo - 0.5 + 0.5 / s  # fractional (k, j, i) of the first sub-voxel centre
    origin = grid.index_to_world(first.astype(float))
    sp = grid.spacing / s
    fine = Grid(
        shape=(int(n[0]), int(n[1]), int(n[2])),
        spacing_mm=(float(sp[0]), float(sp[1]), float(sp[2])),
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=grid.direction,
    )
    fmask = rasterize_polygons(contours, fine, plane_spacing_mm=plane_spacing_mm)
    kji = np.argwhere(fmask).astype(float)
    if kji.shape[0] == 0:
        return base
    # fine index -> dose-grid index; clamp to the voxel-centre hull (edge sub-voxels take the edge dose)
    coarse = first + kji / s
    coarse = np.clip(coarse, 0.0, shape - 1.0)
    values = map_coordinates(np.asarray(dose.array, dtype=np.float64), coarse.T, order=1, mode="nearest")
    method = (
        f"sub-voxel: {s}x{s}x{s} sub-voxels per dose voxel, structure at sub-voxel centres, trilinear dose; "
        "Dx by mid-rank linear interpolation"
    )
    return _metrics_from_values(values, fine.voxel_volume_cc, name, method)
