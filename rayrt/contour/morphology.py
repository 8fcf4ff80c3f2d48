"""Binary morphology on voxel masks with sizes in millimetres.

Masks are boolean arrays indexed ``[k, j, i]`` on a :class:`~rayrt.imaging.volume.Grid` whose
spacing is ``(i, j, k)`` = (column, row, slice) in mm. Every size here is in mm and is turned into
voxels with the grid spacing, so that an operation means the same physical thing on anisotropic
grids (e.g. 1 x 1 x 3 mm).

Margins are exact in the voxel-centre sense: a voxel centre ``p`` belongs to the expansion of
``A`` by the structuring set ``S`` when ``p = q + d`` for a voxel centre ``q`` in ``A`` and an
offset ``d`` in ``S``.

* Isotropic or per-axis symmetric margins (ellipsoid ``S`` with semi-axes ``a = (a_x, a_y, a_z)``)
  use the Euclidean distance transform in the scaled space ``x / a``: ``p`` is in the expansion iff
  the scaled distance to ``A`` is <= 1 (``scipy.ndimage.distance_transform_edt`` with
  ``sampling = spacing / a``).
* Per-direction margins (left != right, ...) use a structuring set made of eight ellipsoid octants
  (the octant towards +x uses the +x margin, ...): the dilation is scattered from the boundary
  voxels of ``A`` (numba), which is exact because the octant set is monotone: with a 6-connected
  boundary ``dA``, ``A (+) S = A U (dA (+) S)``.

Contraction is the dual: ``A (-) S = complement((complement A) (+) (-S))``. The image edge is not a
structure edge: for contraction the mask is extended by edge replication, so a body cut by the
scan limits does not lose its end slices.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage as ndi

from rayrt.domain.errors import InputError
from rayrt.imaging.volume import Grid

_FACE_2D = np.zeros((3, 3, 3), dtype=bool)
_FACE_2D[1] = ndi.generate_binary_structure(2, 1)


def connectivity_structure(connectivity: int = 1) -> np.ndarray:
    """3-D neighbourhood: 1 = 6 faces, 2 = 18 (+edges), 3 = 26 (+corners)."""
    return ndi.generate_binary_structure(3, connectivity)


def bbox(mask: np.ndarray, pad: tuple[int, int, int] = (0, 0, 0)) -> tuple[slice, slice, slice] | None:
    """Slices (k, j, i) of the bounding box of ``mask`` grown by ``pad`` voxels (clipped); None if empty."""
    if not mask.any():
        return None
    out = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(mask.any(axis=other))
        lo = max(0, int(nz[0]) - pad[ax])
        hi = min(mask.shape[ax], int(nz[-1]) + 1 + pad[ax])
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


def disk_2d(radius_mm: float, spacing_ji_mm: tuple[float, float]) -> np.ndarray:
    """In-plane elliptical disk (shape (1, h, w)) of a physical radius on a (row, column) spacing."""
    sj, si = spacing_ji_mm
    rj, ri = int(np.floor(radius_mm / sj)), int(np.floor(radius_mm / si))
    jj, ii = np.mgrid[-rj : rj + 1, -ri : ri + 1]
    disk = (jj * sj) ** 2 + (ii * si) ** 2 <= radius_mm**2 + 1e-9
    return disk[None]


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every axial slice (2-D, 4-connected background).

    A background region of a slice is a hole when it does not reach the slice border. One
    ``ndimage.label`` call labels every slice at once (the structuring element has no link between
    slices), so there is no Python loop over slices.
    """
    box = bbox(mask)
    if box is None:
        return mask.copy()
    crop = mask[box]
    padded = np.pad(crop, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    lab, n = ndi.label(~padded, structure=_FACE_2D)
    outside = np.zeros(n + 1, dtype=bool)
    frame = np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()])
    outside[np.unique(frame)] = True
    outside[0] = True
    holes = ~outside[lab[:, 1:-1, 1:-1]]
    out = mask.copy()
    out[box] |= holes
    return out


def fill_holes_3d(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed cavities in 3-D (6-connected background)."""
    box = bbox(mask, (1, 1, 1))
    if box is None:
        return mask.copy()
    out = mask.copy()
    out[box] = ndi.binary_fill_holes(mask[box])
    return out


def component_sizes(mask: np.ndarray, connectivity: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, voxel counts per label with [0] = 0, number of labels)."""
    lab, n = ndi.label(mask, structure=connectivity_structure(connectivity))
    counts = np.bincount(lab.ravel(), minlength=n + 1)
    counts[0] = 0
    return lab, counts, n


def largest_component(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """The largest connected component of a mask (empty in, empty out)."""
    box = bbox(mask)
    if box is None:
        return mask.copy()
    lab, counts, n = component_sizes(mask[box], connectivity)
    out = np.zeros_like(mask, dtype=bool)
    out[box] = lab == int(np.argmax(counts))
    return out


def remove_small_components(mask: np.ndarray, min_voxels: int, connectivity: int = 1) -> np.ndarray:
    """Drop connected components with fewer than ``min_voxels`` voxels."""
    box = bbox(mask)
    if box is None or min_voxels <= 1:
        return mask.copy()
    lab, counts, n = component_sizes(mask[box], connectivity)
    keep = counts >= min_voxels
    keep[0] = False
    out = np.zeros_like(mask, dtype=bool)
    out[box] = keep[lab]
    return out


def smooth(mask: np.ndarray, grid: Grid, sigma_mm: float) -> np.ndarray:
    """Smooth a mask outline: Gaussian filter (sigma in mm per axis) of the indicator, threshold 0.5.

    Keeps the volume of smooth convex shapes to within a few percent while removing staircase
    edges, spikes thinner than about ``sigma`` and pinholes.
    """
    if sigma_mm <= 0:
        return mask.copy()
    sig = sigma_mm / grid.spacing[::-1]  # (k, j, i) voxels
    pad = tuple(int(np.ceil(3 * s)) + 1 for s in sig)
    box = bbox(mask, pad)  # type: ignore[arg-type]
    if box is None:
        return mask.copy()
    out = np.zeros_like(mask, dtype=bool)
    out[box] = ndi.gaussian_filter(mask[box].astype(np.float32), sigma=sig, mode="nearest") >= 0.5
    return out


# ---------------------------------------------------------------------------------- margins
class Margins(BaseModel):
    """A margin in mm per patient direction (LPS: left = +x, posterior = +y, superior = +z).

    All values are >= 0; whether the margin expands or contracts is said by the operation.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    left_mm: float = Field(0.0, ge=0, le=200)
    right_mm: float = Field(0.0, ge=0, le=200)
    anterior_mm: float = Field(0.0, ge=0, le=200)
    posterior_mm: float = Field(0.0, ge=0, le=200)
    superior_mm: float = Field(0.0, ge=0, le=200)
    inferior_mm: float = Field(0.0, ge=0, le=200)

    @classmethod
    def isotropic(cls, mm: float) -> "Margins":
        return cls(left_mm=mm, right_mm=mm, anterior_mm=mm, posterior_mm=mm, superior_mm=mm, inferior_mm=mm)

    @classmethod
    def per_axis(cls, x_mm: float, y_mm: float, z_mm: float) -> "Margins":
        return cls(left_mm=x_mm, right_mm=x_mm, anterior_mm=y_mm, posterior_mm=y_mm, superior_mm=z_mm, inferior_mm=z_mm)

    def lps_plus_minus(self) -> np.ndarray:
        """(3, 2) array: rows x, y, z; columns margin towards +axis, towards -axis (mm)."""
        return np.array(
            [
                [self.left_mm, self.right_mm],
                [self.posterior_mm, self.anterior_mm],
                [self.superior_mm, self.inferior_mm],
            ]
        )

    @property
    def is_zero(self) -> bool:
        return not np.any(self.lps_plus_minus() > 0)


def _array_axis_margins(grid: Grid, margins: Margins) -> np.ndarray:
    """(3, 2) margins in array axis order (k, j, i): [towards +index, towards -index] in mm."""
    d = grid.direction_matrix
    pm = margins.lps_plus_minus()
    out = np.zeros((3, 2))
    for c in range(3):  # c: array axis i, j, k (columns of direction)
        col = d[:, c]
        lps = int(np.argmax(np.abs(col)))
        if abs(col[lps]) < 0.999:
            if not np.allclose(pm[:, 0], pm[0, 0]) or not np.allclose(pm, pm[0, 0]):
                raise InputError(
                    "direction-dependent margins need an axis-aligned image grid (oblique grid found); use an isotropic margin or resample the image",
                    kind="contour",
                )
            out[2 - c] = pm[0, 0]
            continue
        plus, minus = pm[lps]
        out[2 - c] = (plus, minus) if col[lps] > 0 else (minus, plus)
    return out


def _scaled_sampling(spacing_kji: np.ndarray, semi_axes_kji: np.ndarray) -> np.ndarray:
    big = 1e6  # an axis with zero margin: any step along it is "infinitely" far
    return np.where(semi_axes_kji > 0, spacing_kji / np.where(semi_axes_kji > 0, semi_axes_kji, 1.0), big)


def _octant_offsets(spacing_kji: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Integer offsets (n, 3) of the eight-octant ellipsoid; m is (3, 2) [+, -] semi-axes in mm."""
    ranges = []
    for ax in range(3):
        npos = int(np.floor(m[ax, 0] / spacing_kji[ax] + 1e-9))
        nneg = int(np.floor(m[ax, 1] / spacing_kji[ax] + 1e-9))
        ranges.append(np.arange(-nneg, npos + 1))
    dk, dj, di = np.meshgrid(*ranges, indexing="ij")
    offs = np.stack([dk.ravel(), dj.ravel(), di.ravel()], axis=1)
    r2 = np.zeros(len(offs))
    for ax in range(3):
        d = offs[:, ax] * spacing_kji[ax]
        a = np.where(d >= 0, m[ax, 0], m[ax, 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where(d == 0, 0.0, (d / np.where(a > 0, a, 1.0)) ** 2)
        term = np.where((a <= 0) & (d != 0), np.inf, term)
        r2 += term
    return offs[r2 <= 1.0 + 1e-9].astype(np.int64)


def _scatter_dilate(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from rayrt.contour._kernels import scatter_offsets

    interior = ndi.binary_erosion(mask, structure=connectivity_structure(1), border_value=0)
    boundary = np.argwhere(mask & ~interior).astype(np.int64)
    out = mask.copy()
    if len(boundary):
        scatter_offsets(out, boundary, offsets)
    return out


def expand(mask: np.ndarray, grid: Grid, margins: Margins) -> np.ndarray:
    """Expansion (Minkowski sum) of a mask by a margin in mm; see the module docstring."""
    if mask.shape != tuple(grid.shape):
        raise InputError(f"mask shape {mask.shape} does not match the image grid {grid.shape}", kind="contour")
    if margins.is_zero or not mask.any():
        return mask.copy()
    sp = grid.spacing[::-1]
    m = _array_axis_margins(grid, margins)
    pad = tuple(int(np.ceil(max(m[a]) / sp[a])) + 1 for a in range(3))
    box = bbox(mask, pad)  # type: ignore[arg-type]
    crop = mask[box]
    if np.allclose(m[:, 0], m[:, 1]):
        sampling = _scaled_sampling(sp, m[:, 0])
        dist = ndi.distance_transform_edt(~crop, sampling=sampling)
        grown = dist <= 1.0 + 1e-9
    else:
        grown = _scatter_dilate(crop, _octant_offsets(sp, m))
    out = np.zeros_like(mask, dtype=bool)
    out[box] = grown
    return out


def contract(mask: np.ndarray, grid: Grid, margins: Margins) -> np.ndarray:
    """Contraction (Minkowski difference) of a mask by a margin in mm; image edges are not edges."""
    if mask.shape != tuple(grid.shape):
        raise InputError(f"mask shape {mask.shape} does not match the image grid {grid.shape}", kind="contour")
    if margins.is_zero or not mask.any():
        return mask.copy()
    sp = grid.spacing[::-1]
    m = _array_axis_margins(grid, margins)
    box = bbox(mask, (1, 1, 1))
    crop = mask[box]
    pad = [(int(np.ceil(max(m[a]) / sp[a])) + 1,) * 2 for a in range(3)]
    # replicate the edge only where the mask reaches the image border; elsewhere pad with outside
    ext = np.pad(crop, pad, mode="edge")
    for a in range(3):
        at_lo = box[a].start == 0
        at_hi = box[a].stop == mask.shape[a]
        n = pad[a][0]
        idx_lo = [slice(None)] * 3
        idx_hi = [slice(None)] * 3
        idx_lo[a] = slice(0, n)
        idx_hi[a] = slice(ext.shape[a] - n, ext.shape[a])
        if not at_lo:
            ext[tuple(idx_lo)] = False
        if not at_hi:
            ext[tuple(idx_hi)] = False
    if np.allclose(m[:, 0], m[:, 1]):
        sampling = _scaled_sampling(sp, m[:, 0])
        dist = ndi.distance_transform_edt(ext, sampling=sampling)
        kept = dist > 1.0 + 1e-9
    else:
        # (complement) dilated by the reflected set: swap + and - margins
        kept = ~_scatter_dilate(~ext, _octant_offsets(sp, m[:, ::-1]))
    inner = tuple(slice(p[0], p[0] + s) for p, s in zip(pad, crop.shape))
    out = np.zeros_like(mask, dtype=bool)
    out[box] = kept[inner] & crop
    return out


def apply_margin(mask: np.ndarray, grid: Grid, margins: Margins, contract_: bool = False) -> np.ndarray:
    """Expand (default) or contract a mask by ``margins``."""
    return contract(mask, grid, margins) if contract_ else expand(mask, grid, margins)
