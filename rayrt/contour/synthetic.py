"""Analytic phantoms with known truth, for tests, benchmarks and demos of the delineation tools.

Shapes are defined in LPS mm; a voxel belongs to a shape when its centre is inside. The thorax
phantom has a body (elliptic cylinder, soft tissue 0..40 HU), two lungs (ellipsoids, -820 HU, with
soft-tissue vessels that belong to the lung), a vertebral body (cortical shell +900 HU around
+150 HU marrow) and a sternum (+600 HU), an oesophageal air cavity (-1000 HU), a couch top 15 mm
below the back (carbon-fibre shells +400 HU around a -800 HU foam core) and two thin
immobilisation plates (3 mm, +200 HU) joining body and couch. ``couch_gap_mm`` < 0 presses the
couch shell into the patient's back (direct contact over a width of several cm).
"""

from __future__ import annotations

import numpy as np

from rayrt.imaging.volume import Grid, Volume


def centred_grid(shape_kji: tuple[int, int, int], spacing_ijk_mm: tuple[float, float, float]) -> Grid:
    """An axis-aligned grid whose centre is the LPS origin (0, 0, 0)."""
    nk, nj, ni = shape_kji
    sp = np.asarray(spacing_ijk_mm, dtype=float)
    origin = -sp * (np.array([ni, nj, nk]) - 1) / 2.0
    return Grid(shape=shape_kji, spacing_mm=tuple(sp), origin_mm=tuple(origin))


def _axes(grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable voxel-centre coordinates z (nk,1,1), y (1,nj,1), x (1,1,ni) in mm (float32)."""
    x = grid.axis_mm("x").astype(np.float32)[None, None, :]
    y = grid.axis_mm("y").astype(np.float32)[None, :, None]
    z = grid.axis_mm("z").astype(np.float32)[:, None, None]
    return z, y, x


def ellipsoid_mask(
    grid: Grid, centre_mm: tuple[float, float, float], semi_axes_mm: tuple[float, float, float]
) -> np.ndarray:
    """Voxels whose centre lies in the axis-aligned ellipsoid (centre and semi-axes in x, y, z mm)."""
    z, y, x = _axes(grid)
    cx, cy, cz = centre_mm
    ax, ay, az = semi_axes_mm
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1.0


def cylinder_mask(
    grid: Grid,
    centre_xy_mm: tuple[float, float],
    semi_axes_xy_mm: tuple[float, float],
    z_range_mm: tuple[float, float] | None = None,
) -> np.ndarray:
    """Elliptic cylinder along z (LPS), optionally limited to z_range."""
    z, y, x = _axes(grid)
    cx, cy = centre_xy_mm
    ax, ay = semi_axes_xy_mm
    inplane = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0
    zr = np.ones_like(z, dtype=bool) if z_range_mm is None else (z >= z_range_mm[0]) & (z <= z_range_mm[1])
    return np.broadcast_to(inplane, grid.shape) & np.broadcast_to(zr, grid.shape)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice similarity coefficient 2|A n B| / (|A| + |B|) (1.0 for two empty masks)."""
    sa, sb = int(a.sum()), int(b.sum())
    if sa + sb == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / (sa + sb)


def thorax_phantom(
    shape_kji: tuple[int, int, int] = (40, 128, 128),
    spacing_ijk_mm: tuple[float, float, float] = (4.0, 4.0, 5.0),
    noise_hu: float = 15.0,
    seed: int = 0,
    couch_gap_mm: float = 15.0,
) -> tuple[Volume, dict[str, np.ndarray]]:
    """A CT thorax with couch; returns (CT volume in HU, int16) and the truth masks by TG-263 name.

    Truth keys: ``External`` (body, couch and plates excluded), ``Lung_L`` (+x), ``Lung_R``,
    ``Bones``, ``Cavity_Air``, ``Couch``. The in-plane field of view should be at least 500 mm.
    """
    grid = centred_grid(shape_kji, spacing_ijk_mm)
    z, y, x = _axes(grid)
    nk = grid.shape[0]
    half_z = grid.spacing[2] * nk / 2.0

    body2d = ((x / 170.0) ** 2 + ((y + 20.0) / 110.0) ** 2 <= 1.0)[0]  # (nj, ni)
    r_spine = np.hypot(x, y - 60.0)[0]
    spine_shell = (r_spine <= 15.0) & (r_spine > 11.0)
    spine_all = r_spine <= 15.0
    sternum = ((np.abs(x) <= 15.0) & (np.abs(y + 112.0) <= 5.0))[0]
    cy = 90.0 + couch_gap_mm  # the back of the body is at y = 90 mm
    couch_top = ((np.abs(x) <= 230.0) & (y >= cy) & (y <= cy + 20.0))[0] & ~body2d
    couch_shell = couch_top & (((y >= cy) & (y < cy + 3.0)) | ((y > cy + 17.0) & (y <= cy + 20.0)))[0]
    plates2d = ((np.abs(np.abs(x) - 100.0) <= 1.5) & (y >= 40.0) & (y < cy))[0] & ~body2d

    hu2d = np.full(body2d.shape, -1000.0, dtype=np.float32)
    hu2d[couch_top] = -800.0
    hu2d[couch_shell] = 400.0
    hu2d[body2d] = 20.0
    hu2d[spine_all] = 150.0
    hu2d[spine_shell] = 900.0
    hu2d[sternum] = 600.0
    hu = np.broadcast_to(hu2d, grid.shape).copy()

    zc = np.abs(z[:, 0, 0]) <= 0.25 * half_z
    hu[np.ix_(zc, np.ones(grid.shape[1], bool), np.ones(grid.shape[2], bool))] = np.where(plates2d, 200.0, hu2d)[None]

    lung_axes = (55.0, 70.0, 0.8 * half_z)
    lung_l = ellipsoid_mask(grid, (75.0, -25.0, 0.0), lung_axes)
    lung_r = ellipsoid_mask(grid, (-75.0, -25.0, 0.0), lung_axes)
    hu[lung_l | lung_r] = -820.0
    for sx in (75.0, -75.0):
        for cy, cz in ((-40.0, 0.2 * half_z), (-10.0, -0.3 * half_z)):
            hu[ellipsoid_mask(grid, (sx, cy, cz), (8.0, 8.0, 8.0))] = 40.0
    cavity = cylinder_mask(grid, (0.0, 20.0), (8.0, 8.0), (-0.5 * half_z, 0.5 * half_z))
    hu[cavity] = -1000.0

    if noise_hu > 0:
        rng = np.random.default_rng(seed)
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    ct = Volume(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), grid, "HU", {"modality": "CT"})

    body = np.broadcast_to(body2d, grid.shape).copy()
    bones = np.broadcast_to(spine_all | sternum, grid.shape).copy()
    truth = {
        "External": body,
        "Lung_L": lung_l,
        "Lung_R": lung_r,
        "Bones": bones,
        "Cavity_Air": cavity & body,
        "Couch": np.broadcast_to(couch_top, grid.shape).copy(),
    }
    return ct, truth
