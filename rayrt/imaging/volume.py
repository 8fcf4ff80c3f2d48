"""Volumes: a numpy array on an explicit grid in DICOM patient coordinates (LPS, mm).

Conventions (the same as SimpleITK, stated once here and used everywhere):

* ``Volume.array`` is indexed ``[k, j, i]`` = ``[slice, row, column]``; ``shape = (nk, nj, ni)``.
* ``Grid.spacing_mm``, ``Grid.origin_mm`` and the columns of ``Grid.direction`` are in
  ``(i, j, k)`` order = (column, row, slice) = x-like, y-like, z-like.
* ``origin_mm`` is the LPS position (mm) of the *centre* of voxel ``[0, 0, 0]``.
* ``direction[:, 0]`` is the unit LPS vector along increasing column index (DICOM
  ImageOrientationPatient[0:3]), ``direction[:, 1]`` along increasing row index
  (ImageOrientationPatient[3:6]), ``direction[:, 2]`` along increasing slice index (the slice
  normal, oriented the way slice positions increase).

The LPS position of voxel centre ``(k, j, i)`` is
``origin_mm + direction @ (spacing_mm * [i, j, k])``.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Vec3 = tuple[float, float, float]

_IDENTITY: tuple[Vec3, Vec3, Vec3] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def as_vec3(values: npt.ArrayLike) -> Vec3:
    """Three floats from a sequence or array of exactly three numbers (an LPS position or a
    spacing in mm, a direction cosine vector): the typed form of ``tuple(float(v) for v in values)``."""
    a = np.asarray(values, dtype=float).ravel()
    if a.size != 3:
        raise ValueError(f"expected 3 values (x, y, z), got {a.size}")
    return float(a[0]), float(a[1]), float(a[2])


def as_mat3(rows: npt.ArrayLike) -> tuple[Vec3, Vec3, Vec3]:
    """A 3x3 matrix (e.g. ``Grid.direction``) as three row tuples of floats."""
    a = np.asarray(rows, dtype=float)
    if a.shape != (3, 3):
        raise ValueError(f"expected a 3x3 matrix, got shape {a.shape}")
    return as_vec3(a[0]), as_vec3(a[1]), as_vec3(a[2])


class Grid(BaseModel):
    """A regular 3-D voxel grid in DICOM patient coordinates (LPS, mm)."""

    model_config = ConfigDict(frozen=True)

    shape: tuple[int, int, int] = Field(description="array shape (nk, nj, ni) = (slices, rows, columns)")
    spacing_mm: Vec3 = Field(description="voxel size along (i, j, k) = (column, row, slice) in mm")
    origin_mm: Vec3 = Field(description="LPS position (mm) of the centre of voxel [0, 0, 0]")
    direction: Annotated[
        tuple[Vec3, Vec3, Vec3],
        Field(description="3x3 row-major matrix; column c is the LPS unit vector of array axis (i, j, k)[c]"),
    ] = _IDENTITY

    @field_validator("shape")
    @classmethod
    def _positive_shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(n <= 0 for n in v):
            raise ValueError(f"every grid dimension must be >= 1, got {v}")
        return v

    @field_validator("spacing_mm")
    @classmethod
    def _positive_spacing(cls, v: Vec3) -> Vec3:
        if any(not np.isfinite(s) or s <= 0 for s in v):
            raise ValueError(f"voxel spacing must be positive and finite (mm), got {v}")
        return v

    @model_validator(mode="after")
    def _orthonormal(self) -> "Grid":
        d = self.direction_matrix
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise ValueError("grid direction cosines must be orthonormal")
        return self

    # ------------------------------------------------------------------ derived quantities
    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float)

    @property
    def spacing(self) -> np.ndarray:
        """Spacing (mm) as an array in (i, j, k) order."""
        return np.asarray(self.spacing_mm, dtype=float)

    @property
    def origin(self) -> np.ndarray:
        return np.asarray(self.origin_mm, dtype=float)

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along (i, j, k)."""
        nk, nj, ni = self.shape
        return ni, nj, nk

    @property
    def num_voxels(self) -> int:
        nk, nj, ni = self.shape
        return nk * nj * ni

    @property
    def voxel_volume_cc(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def is_axis_aligned(self) -> bool:
        """True when the grid axes are the LPS axes (identity direction)."""
        return bool(np.allclose(self.direction_matrix, np.eye(3), atol=1e-6))

    def axis_mm(self, axis: str) -> np.ndarray:
        """Voxel-centre coordinates (mm) along one axis of an axis-aligned grid: 'x', 'y' or 'z'.

        'x' runs along the columns (i), 'y' along the rows (j), 'z' along the slices (k).
        """
        if not self.is_axis_aligned:
            raise ValueError("axis_mm needs an axis-aligned grid; resample the volume first")
        c = "xyz".index(axis)
        n = self.size_ijk[c]
        return self.origin[c] + self.spacing[c] * np.arange(n)

    def index_to_world(self, kji: np.ndarray) -> np.ndarray:
        """LPS positions (mm, shape (..., 3) as x, y, z) of (possibly fractional) indices (..., 3) as (k, j, i)."""
        kji = np.asarray(kji, dtype=float)
        ijk = kji[..., ::-1]
        return self.origin + (ijk * self.spacing) @ self.direction_matrix.T

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Fractional (k, j, i) indices of LPS points (..., 3) in mm."""
        xyz = np.asarray(xyz, dtype=float)
        ijk = ((xyz - self.origin) @ self.direction_matrix) / self.spacing
        return ijk[..., ::-1]

    def voxel_centers_mm(self) -> np.ndarray:
        """All voxel centres as an (nk, nj, ni, 3) array of LPS x, y, z in mm."""
        k, j, i = np.meshgrid(*(np.arange(n) for n in self.shape), indexing="ij")
        return self.index_to_world(np.stack([k, j, i], axis=-1))

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS bounding box (min, max) of the voxel *edges*."""
        corners = np.array(
            [
                [k, j, i]
                for k in (-0.5, self.shape[0] - 0.5)
                for j in (-0.5, self.shape[1] - 0.5)
                for i in (-0.5, self.shape[2] - 0.5)
            ]
        )
        w = self.index_to_world(corners)
        return w.min(axis=0), w.max(axis=0)

    def with_spacing(self, spacing_mm: Vec3) -> "Grid":
        """An axis-aligned grid covering the same extent with another voxel size (dose grids)."""
        lo, hi = self.bounds_mm()
        sp = np.asarray(spacing_mm, dtype=float)
        n = np.maximum(1, np.floor((hi - lo) / sp + 1e-6)).astype(int)
        centre = (lo + hi) / 2.0
        origin = centre - sp * (n - 1) / 2.0
        return Grid(shape=(int(n[2]), int(n[1]), int(n[0])), spacing_mm=tuple(sp), origin_mm=tuple(origin))

    def same_geometry(self, other: "Grid", tol_mm: float = 1e-3) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol_mm)
            and np.allclose(self.origin, other.origin, atol=tol_mm)
            and np.allclose(self.direction_matrix, other.direction_matrix, atol=1e-5)
        )


class Volume:
    """A 3-D array (``[k, j, i]``) on a :class:`Grid`, with a physical quantity and unit.

    ``quantity`` names what the values are, e.g. ``"HU"``, ``"relative_electron_density"``,
    ``"dose_gy"``, ``"SUV"``, ``"mask"``.
    """

    __slots__ = ("array", "grid", "quantity", "meta")

    def __init__(self, array: np.ndarray, grid: Grid, quantity: str = "", meta: dict | None = None):
        array = np.asarray(array)
        if array.shape != tuple(grid.shape):
            raise ValueError(f"array shape {array.shape} does not match grid shape {grid.shape}")
        self.array = array
        self.grid = grid
        self.quantity = quantity
        self.meta = dict(meta or {})

    def __repr__(self) -> str:
        return (
            f"Volume({self.quantity or 'values'}, shape={self.grid.shape}, "
            f"spacing_mm={self.grid.spacing_mm}, dtype={self.array.dtype})"
        )

    def with_array(self, array: np.ndarray, quantity: str | None = None) -> "Volume":
        return Volume(array, self.grid, self.quantity if quantity is None else quantity, self.meta)

    def sample(self, xyz_mm: np.ndarray, order: int = 1, fill: float = 0.0) -> np.ndarray:
        """Values at LPS points (..., 3) by trilinear (order=1) or nearest (order=0) interpolation."""
        from scipy.ndimage import map_coordinates

        kji = self.grid.world_to_index(xyz_mm)
        flat = kji.reshape(-1, 3).T
        out = map_coordinates(self.array.astype(float, copy=False), flat, order=order, mode="constant", cval=fill)
        return out.reshape(kji.shape[:-1])

    def resample(self, grid: Grid, order: int = 1, fill: float = 0.0) -> "Volume":
        """This volume on another grid (trilinear by default; order=0 for labels and masks)."""
        if self.grid.same_geometry(grid):
            return Volume(self.array, grid, self.quantity, self.meta)
        values = self.sample(grid.voxel_centers_mm(), order=order, fill=fill)
        return Volume(values.astype(self.array.dtype if order == 0 else np.float32), grid, self.quantity, self.meta)
