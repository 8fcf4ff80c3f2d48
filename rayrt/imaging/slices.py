"""2-D planes through volumes for display: axial, coronal and sagittal slices of an image grid,
other volumes (a dose on its own coarser grid, an MR or PET series) resampled onto those slices,
and structure masks cut the same way.

Conventions (on top of :mod:`rayrt.imaging.volume`: arrays ``[k, j, i]``, LPS mm):

* A plane is named by the array axis it cuts: ``axial`` = ``array[k]`` (the ``k`` slice),
  ``coronal`` = ``array[:, j, :]``, ``sagittal`` = ``array[:, :, i]``. ``index`` is always an index
  of the *display grid's own array* along that axis (``k``, ``j`` or ``i``).
* The display grid must be axis-aligned: each array axis along one LPS axis in order (``i`` along
  x, ``j`` along y, ``k`` along z), each possibly reversed (a direction matrix ``diag(±1, ±1, ±1)``).
  Any other grid (oblique or permuted) is refused with :class:`~rayrt.domain.errors.InputError`
  (422): resample it onto an axis-aligned grid first. Volumes *sampled onto* a plane
  (:func:`resample_on_plane`) may have any orientation.
* A returned picture is ``[row, col]`` with row 0 at the **top** of the displayed image and col 0
  at its **left**, in the radiological convention:

  ======== ============================ ====================================
  plane    rows (top -> bottom)         columns (left -> right)
  ======== ============================ ====================================
  axial    anterior -> posterior (+y)   patient right -> patient left (+x)
  coronal  superior -> inferior (-z)    patient right -> patient left (+x)
  sagittal superior -> inferior (-z)    anterior -> posterior (+y)
  ======== ============================ ====================================

  For a head-first-supine CT (identity direction) the axial picture is ``array[k]`` unchanged and
  the coronal / sagittal pictures are ``array[:, j, :]`` / ``array[:, :, i]`` upside down (``k``
  grows towards superior).

This module is the core: numpy and scipy only, no HTTP, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from rayrt.domain.errors import InputError
from rayrt.imaging.volume import Grid, Volume

__all__ = [
    "PLANES",
    "Plane",
    "PlaneAxes",
    "check_plane",
    "mask_on_plane",
    "plane_axes",
    "plane_extent_mm",
    "plane_image",
    "plane_index_range",
    "plane_pixel_mm",
    "plane_pixel_to_index",
    "plane_position_mm",
    "plane_shape",
    "resample_on_plane",
    "slice_through",
]

Plane = Literal["axial", "coronal", "sagittal"]
PLANES: tuple[Plane, ...] = get_args(Plane)

#: the array axis (0 = k, 1 = j, 2 = i) each plane cuts, and its picture's (row, col) array axes
_NORMAL: dict[str, int] = {"axial": 0, "coronal": 1, "sagittal": 2}
_ROWCOL: dict[str, tuple[int, int]] = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}
#: the LPS axis (0 = x, 1 = y, 2 = z) that array axis (k, j, i)[a] runs along on an accepted grid
_LPS_OF_AXIS = (2, 1, 0)
#: +1: the picture's rows / cols run along the LPS axis's positive direction; -1: against it
_WANT: dict[str, tuple[int, int]] = {"axial": (1, 1), "coronal": (-1, 1), "sagittal": (-1, 1)}
_AXIS_NAMES = ("k", "j", "i")
#: a fractional source index this close to an integer is taken as that integer (a plane on a grid
#: node at the very edge of a volume is inside it, not lost to rounding)
_SNAP = 1e-6


@dataclass(frozen=True)
class PlaneAxes:
    """How a plane's picture maps onto the display grid's array (see the module doc).

    ``normal``, ``row_axis`` and ``col_axis`` are array axes (0 = k, 1 = j, 2 = i); picture row
    ``r`` is array index ``n_row - 1 - r`` along ``row_axis`` when ``row_flip`` (else ``r``), and
    likewise for columns.
    """

    plane: Plane
    normal: int
    row_axis: int
    col_axis: int
    row_flip: bool
    col_flip: bool

    @property
    def names(self) -> tuple[str, str, str]:
        """The (normal, row, col) array axes as letters, e.g. ``("k", "j", "i")`` for axial."""
        return _AXIS_NAMES[self.normal], _AXIS_NAMES[self.row_axis], _AXIS_NAMES[self.col_axis]


def check_plane(plane: str) -> Plane:
    """``plane`` if it is one of :data:`PLANES`, else InputError 422 naming the field ``plane``."""
    if plane not in _NORMAL:
        raise InputError(
            f"unknown plane {plane!r}; choose one of {', '.join(PLANES)}", kind="request", field="plane", status=422
        )
    return plane  # type: ignore[return-value]


def _axis_signs(grid: Grid) -> tuple[int, int, int]:
    """Sign (+1 / -1) of the LPS axis each array axis (k, j, i) runs along; InputError 422 unless the
    grid's direction matrix is diagonal with entries ±1 (axis-aligned, not permuted, not oblique)."""
    d = grid.direction_matrix
    diag = np.diag(d)
    if not (np.allclose(np.abs(diag), 1.0, atol=1e-4) and np.allclose(d - np.diag(diag), 0.0, atol=1e-4)):
        raise InputError(
            "the image grid is not axis-aligned (its direction cosines are oblique or its axes permuted): "
            "axial / coronal / sagittal views need rows and columns along the patient axes; resample the "
            "image onto an axis-aligned grid first",
            kind="geometry",
            field="direction",
            status=422,
        )
    si, sj, sk = (1 if v > 0 else -1 for v in diag)  # direction columns are (i, j, k)
    return sk, sj, si


def plane_axes(grid: Grid, plane: Plane) -> PlaneAxes:
    """The array axes and flips of ``plane``'s picture on ``grid`` (InputError 422 for an oblique grid)."""
    check_plane(plane)
    signs = _axis_signs(grid)
    ra, ca = _ROWCOL[plane]
    want_r, want_c = _WANT[plane]
    return PlaneAxes(
        plane=plane,
        normal=_NORMAL[plane],
        row_axis=ra,
        col_axis=ca,
        row_flip=signs[ra] != want_r,
        col_flip=signs[ca] != want_c,
    )


def plane_shape(grid: Grid, plane: Plane) -> tuple[int, int]:
    """(rows, cols) of ``plane``'s picture: axial (nj, ni), coronal (nk, ni), sagittal (nk, nj)."""
    check_plane(plane)
    ra, ca = _ROWCOL[plane]
    return int(grid.shape[ra]), int(grid.shape[ca])


def plane_index_range(grid: Grid, plane: Plane) -> range:
    """The valid slice indices of ``plane``: ``range(nk)`` axial, ``range(nj)`` coronal, ``range(ni)`` sagittal."""
    check_plane(plane)
    return range(int(grid.shape[_NORMAL[plane]]))


def plane_pixel_mm(grid: Grid, plane: Plane) -> tuple[float, float]:
    """(row_mm, col_mm): the picture's pixel height and width in mm (axial (dy, dx), coronal
    (dz, dx), sagittal (dz, dy)); draw with this aspect ratio."""
    check_plane(plane)
    sp_kji = grid.spacing[::-1]
    ra, ca = _ROWCOL[plane]
    return float(sp_kji[ra]), float(sp_kji[ca])


def _check_index(grid: Grid, plane: Plane, index: int) -> int:
    n = int(grid.shape[_NORMAL[plane]])
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < n:
        raise InputError(
            f"{plane} slice index {index!r} is out of range: 0 to {n - 1}", kind="request", field="index", status=422
        )
    return int(index)


def _orient(a2d: np.ndarray, ax: PlaneAxes) -> np.ndarray:
    return a2d[:: -1 if ax.row_flip else 1, :: -1 if ax.col_flip else 1]


def plane_image(volume: Volume, plane: Plane, index: int) -> np.ndarray:
    """The ``index``-th ``plane`` slice of ``volume`` on its own grid, oriented for display (row 0 =
    top: anterior for axial, superior for coronal / sagittal; col 0 = patient right, or anterior
    for sagittal). Values and dtype are the volume's (e.g. HU, Gy). A view of the volume's array:
    copy it before changing it."""
    ax = plane_axes(volume.grid, plane)
    index = _check_index(volume.grid, plane, index)
    cut: list[slice | int] = [slice(None)] * 3
    cut[ax.normal] = index
    return _orient(volume.array[tuple(cut)], ax)


def mask_on_plane(mask: np.ndarray, plane: Plane, index: int, grid: Grid | None = None) -> np.ndarray:
    """A bool mask ``[k, j, i]`` (on the display grid) cut like :func:`plane_image`. ``grid`` gives
    the orientation; without it the grid is taken as head-first-supine (identity direction)."""
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"a mask is a 3-D [k, j, i] array, got shape {m.shape}")
    g = grid if grid is not None else Grid(shape=m.shape, spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0))
    if tuple(g.shape) != m.shape:
        raise ValueError(f"mask shape {m.shape} does not match the grid {g.shape}")
    return plane_image(Volume(m, g), plane, index).astype(bool, copy=False)


def plane_pixel_to_index(grid: Grid, plane: Plane, index: int, row: float, col: float) -> tuple[float, float, float]:
    """The (k, j, i) array index of picture pixel (row, col) of slice ``index`` (fractional in, fractional out)."""
    ax = plane_axes(grid, plane)
    out = [0.0, 0.0, 0.0]
    out[ax.normal] = float(index)
    nr, nc = grid.shape[ax.row_axis], grid.shape[ax.col_axis]
    out[ax.row_axis] = (nr - 1 - row) if ax.row_flip else float(row)
    out[ax.col_axis] = (nc - 1 - col) if ax.col_flip else float(col)
    return out[0], out[1], out[2]


def plane_position_mm(grid: Grid, plane: Plane, index: int) -> float:
    """The LPS coordinate (mm) of slice ``index``: z for axial, y for coronal, x for sagittal."""
    ax = plane_axes(grid, plane)
    kji = np.zeros(3)
    kji[ax.normal] = index
    return float(grid.index_to_world(kji)[_LPS_OF_AXIS[ax.normal]])


def slice_through(grid: Grid, plane: Plane, xyz_mm: tuple[float, float, float] | np.ndarray) -> int:
    """The index of the ``plane`` slice nearest to the LPS point ``xyz_mm`` (clipped to the grid)."""
    ax = plane_axes(grid, plane)
    kji = grid.world_to_index(np.asarray(xyz_mm, dtype=float))
    n = int(grid.shape[ax.normal])
    return int(np.clip(np.rint(kji[ax.normal]), 0, n - 1))


def plane_extent_mm(grid: Grid, plane: Plane) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) edges of the picture in LPS mm along its column and row axes (the
    ``extent`` of matplotlib's ``imshow`` with ``origin='upper'``): e.g. axial (x of the left edge,
    x of the right edge, y of the bottom edge, y of the top edge)."""
    ax = plane_axes(grid, plane)
    lo, hi = grid.bounds_mm()
    c_lps, r_lps = _LPS_OF_AXIS[ax.col_axis], _LPS_OF_AXIS[ax.row_axis]
    want_r, want_c = _WANT[plane]
    left, right = (lo[c_lps], hi[c_lps]) if want_c > 0 else (hi[c_lps], lo[c_lps])
    top, bottom = (lo[r_lps], hi[r_lps]) if want_r > 0 else (hi[r_lps], lo[r_lps])
    return float(left), float(right), float(bottom), float(top)


# ---------------------------------------------------------------------------- resampling onto a plane
def _plane_affine(grid: Grid, ax: PlaneAxes, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base, d_row, d_col): the display grid's (k, j, i) index of picture pixel (r, c) is
    ``base + r * d_row + c * d_col``."""
    base, dr, dc = np.zeros(3), np.zeros(3), np.zeros(3)
    base[ax.normal] = index
    nr, nc = grid.shape[ax.row_axis], grid.shape[ax.col_axis]
    base[ax.row_axis] = nr - 1 if ax.row_flip else 0
    dr[ax.row_axis] = -1.0 if ax.row_flip else 1.0
    base[ax.col_axis] = nc - 1 if ax.col_flip else 0
    dc[ax.col_axis] = -1.0 if ax.col_flip else 1.0
    return base, dr, dc


def _snap(x: np.ndarray) -> np.ndarray:
    r = np.rint(x)
    return np.where(np.abs(x - r) < _SNAP, r, x)


def _lerp_axis(a: np.ndarray, x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of ``a`` along ``axis`` at fractional indices ``x`` (1-D): the values and
    a bool of which ``x`` lie inside ``[0, n - 1]``."""
    n = a.shape[axis]
    x = _snap(np.asarray(x, dtype=float))
    inside = (x >= 0) & (x <= n - 1)
    if n == 1:
        return np.repeat(np.take(a, [0], axis=axis), x.size, axis=axis), inside & (x == 0)
    i0 = np.clip(np.floor(x), 0, n - 2).astype(np.intp)
    w = np.clip(x - i0, 0.0, 1.0)
    shape = [1] * a.ndim
    shape[axis] = x.size
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (1.0 - w) + np.take(a, i0 + 1, axis=axis) * w, inside


def _separable(
    src: np.ndarray, s0: np.ndarray, sr: np.ndarray, sc: np.ndarray, rows: int, cols: int, fill: float
) -> np.ndarray | None:
    """The axis-aligned case: rows run along one source axis, columns along another, the third
    constant. Trilinear interpolation as three 1-D linear ones (exact, O(rows x cols)). None when
    the geometry is not of this kind."""
    nz_r, nz_c = np.flatnonzero(np.abs(sr) > 1e-9), np.flatnonzero(np.abs(sc) > 1e-9)
    if nz_r.size != 1 or nz_c.size != 1 or nz_r[0] == nz_c[0]:
        return None
    ar, ac = int(nz_r[0]), int(nz_c[0])
    an = 3 - ar - ac
    # the constant axis first: at most two source slices
    slab, ok_n = _lerp_axis(src, np.array([s0[an]]), an)
    plane = np.squeeze(slab, axis=an).astype(np.float64, copy=False)  # remaining axes in source order
    r_ax, c_ax = (0, 1) if ar < ac else (1, 0)
    xr = s0[ar] + sr[ar] * np.arange(rows)
    xc = s0[ac] + sc[ac] * np.arange(cols)
    plane, ok_r = _lerp_axis(plane, xr, r_ax)
    plane, ok_c = _lerp_axis(plane, xc, c_ax)
    out = plane if r_ax == 0 else plane.T
    out = np.where(ok_r[:, None] & ok_c[None, :] & bool(ok_n[0]), out, fill)
    return out.astype(np.float32)


def resample_on_plane(volume: Volume, grid: Grid, plane: Plane, index: int, fill: float = 0.0) -> np.ndarray:
    """``volume`` (e.g. a dose on its own coarser grid, or an MR / PET series) trilinearly
    interpolated at the pixel centres of slice ``index`` of ``plane`` on the display ``grid``,
    oriented like :func:`plane_image` of that grid: float32 ``[rows, cols]`` in the volume's
    units (Gy, HU ...). Points outside ``volume``'s voxel centres get ``fill``. ``volume``'s grid
    may have any orientation; ``grid`` must be axis-aligned."""
    ax = plane_axes(grid, plane)
    index = _check_index(grid, plane, index)
    rows, cols = plane_shape(grid, plane)
    if volume.grid.same_geometry(grid):
        return np.ascontiguousarray(plane_image(volume, plane, index), dtype=np.float32)
    base, dr, dc = _plane_affine(grid, ax, index)
    w0 = grid.index_to_world(base)
    s0 = volume.grid.world_to_index(w0)  # source (k, j, i) of pixel (0, 0)
    sr = volume.grid.world_to_index(grid.index_to_world(base + dr)) - s0  # per picture row
    sc = volume.grid.world_to_index(grid.index_to_world(base + dc)) - s0  # per picture column
    src = volume.array
    fast = _separable(src, s0, sr, sc, rows, cols, fill)
    if fast is not None:
        return fast
    from scipy.ndimage import map_coordinates

    r = np.arange(rows, dtype=float)[:, None, None]
    c = np.arange(cols, dtype=float)[None, :, None]
    kji = _snap(s0 + r * sr + c * sc)  # (rows, cols, 3)
    lo = np.floor(kji.reshape(-1, 3).min(axis=0)).astype(int)
    hi = np.ceil(kji.reshape(-1, 3).max(axis=0)).astype(int)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(src.shape) - 1)
    if np.any(hi < lo):
        return np.full((rows, cols), fill, dtype=np.float32)
    crop = src[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]  # only the voxels the plane passes
    coords = (kji - lo).reshape(-1, 3).T
    out = map_coordinates(np.asarray(crop, dtype=np.float64), coords, order=1, mode="constant", cval=fill)
    return out.reshape(rows, cols).astype(np.float32)
