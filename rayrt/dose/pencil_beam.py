"""The three-kernel SVD photon pencil beam (Bortfeld et al., Med Phys 20, 1993) as numpy.

Everything here is in the *isocenter-plane* lateral frame of the beam-limiting device (IEC
61217 X along the leaves' travel, Y across leaf pairs): lateral offsets of a point are projected
onto the isocenter plane (u = x * SAD / s, with s the distance of the point from the source),
exactly as the matRad/pyRadPlan engines do.

Dose of an opening with unit fluence (1 MU through it) at a point:

    D = c_abs * (SAD / s)^2 * sum_i  w_i(d) * C_i(u, v)
    w_i(d) = beta_i/(beta_i - m) * (e^{-m d} - e^{-beta_i d})          (d: radiological depth, mm)
    C_i     = (point_weight_i * delta + tail_i) ** (opening * Gaussian(source_sigma))   (2-D convolution)

``c_abs`` (Gy per MU per unit kernel dose) makes 1 MU give ``calibration_gy_per_mu`` at dmax on the
axis of the calibration field (10 x 10 cm² at SSD 100 cm) in water; see :func:`calibration_factor`.

Public, for the commissioning-curve tools: :func:`pencil_beam_dose` (a bixel or field in water or
along given radiological depths) and :func:`water_dose` (PDDs and profiles of rectangular fields).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import erf

from rayrt.domain.beam_model import BeamModel
from rayrt.domain.machine import MachineModel

#: spacing (mm, isocenter plane) of the convolved-kernel lookup tables and of the kernel sampling
TABLE_SPACING_MM = 0.5


def _beam_key(beam: BeamModel) -> str:
    return hashlib.sha1(beam.model_dump_json().encode()).hexdigest()


_BEAMS: dict[str, BeamModel] = {}


def _remember(beam: BeamModel) -> str:
    key = _beam_key(beam)
    _BEAMS.setdefault(key, beam)
    return key


def kernel_tail(beam: BeamModel, radius_mm: np.ndarray) -> np.ndarray:
    """The three kernel tails (1/mm²) at radii (mm), shape (3, ...): flat inside the first radius, 0 beyond the last."""
    r = np.asarray(radius_mm, dtype=float)
    radii = np.asarray(beam.kernel_radii_mm, dtype=float)
    out = np.stack([np.interp(r, radii, np.asarray(k, dtype=float), right=0.0) for k in beam.kernels_per_mm2])
    return out


def opening_fluence(
    x_mm: np.ndarray, y_mm: np.ndarray, x1: float, x2: float, y1: float, y2: float, sigma_mm: float
) -> np.ndarray:
    """Fluence (0..1) of the rectangle [x1,x2] x [y1,y2] blurred by a Gaussian focal spot of sigma (mm)."""
    x = np.asarray(x_mm, dtype=float)
    y = np.asarray(y_mm, dtype=float)
    if sigma_mm <= 0:
        fx = ((x >= x1) & (x <= x2)).astype(float)
        fy = ((y >= y1) & (y <= y2)).astype(float)
        return fx * fy
    s = np.sqrt(2.0) * sigma_mm
    fx = 0.5 * (erf((x - x1) / s) - erf((x - x2) / s))
    fy = 0.5 * (erf((y - y1) / s) - erf((y - y2) / s))
    return fx * fy


@dataclass(frozen=True)
class KernelTable:
    """Convolved kernels C_i of one rectangular bixel on a regular isocenter-plane grid.

    ``values[iy, ix, i]`` at (u, v) = (x0 + ix * spacing, y0 + iy * spacing), relative to the bixel
    centre; zero outside the table (the lateral cut-off).
    """

    x0_mm: float
    y0_mm: float
    spacing_mm: float
    values: np.ndarray  # (ny, nx, 3) float64


def _convolve_kernels(beam: BeamModel, fluence: np.ndarray, spacing: float) -> np.ndarray:
    """(fluence ** K_i) on the fluence's own centred grid (odd shape), shape (3, ny, nx)."""
    from scipy.signal import (
        fftconvolve,
    )  # imported here: scipy.signal costs ~0.8 s at import, and most callers never convolve

    ny, nx = fluence.shape
    y = (np.arange(ny) - ny // 2) * spacing
    x = (np.arange(nx) - nx // 2) * spacing
    r = np.hypot(x[None, :], y[:, None])
    tails = kernel_tail(beam, r) * spacing * spacing
    out = np.empty((3, ny, nx))
    for i in range(3):
        out[i] = beam.kernel_point_weights[i] * fluence + fftconvolve(fluence, tails[i], mode="same")
    return out


@lru_cache(maxsize=64)
def _bixel_table_cached(key: str, width_mm: float, height_mm: float, cutoff_mm: float, spacing: float) -> KernelTable:
    beam = _BEAMS[key]
    sig = beam.source_sigma_mm
    lx = width_mm / 2 + cutoff_mm
    ly = height_mm / 2 + cutoff_mm
    sx = width_mm / 2 + 5 * sig + 2 * spacing
    sy = height_mm / 2 + 5 * sig + 2 * spacing
    nx_half = int(np.ceil((lx + sx) / spacing))
    ny_half = int(np.ceil((ly + sy) / spacing))
    x = np.arange(-nx_half, nx_half + 1) * spacing
    y = np.arange(-ny_half, ny_half + 1) * spacing
    flu = opening_fluence(x[None, :], y[:, None], -width_mm / 2, width_mm / 2, -height_mm / 2, height_mm / 2, sig)
    conv = _convolve_kernels(beam, flu, spacing)
    kx = int(np.ceil(lx / spacing))
    ky = int(np.ceil(ly / spacing))
    sub = conv[:, ny_half - ky : ny_half + ky + 1, nx_half - kx : nx_half + kx + 1]
    values = np.ascontiguousarray(np.moveaxis(sub, 0, -1))
    values.setflags(write=False)
    return KernelTable(x0_mm=-kx * spacing, y0_mm=-ky * spacing, spacing_mm=spacing, values=values)


def bixel_kernel_table(beam: BeamModel, width_mm: float, height_mm: float, cutoff_mm: float) -> KernelTable:
    """Convolved kernels of a ``width x height`` bixel (mm at isocenter) out to ``cutoff_mm`` beyond its
    edges (cached)."""
    return _bixel_table_cached(
        _remember(beam),
        round(float(width_mm), 6),
        round(float(height_mm), 6),
        round(float(cutoff_mm), 6),
        TABLE_SPACING_MM,
    )


@lru_cache(maxsize=64)
def _calibration_cached(key: str, sad_mm: float) -> float:
    beam = _BEAMS[key]
    a = beam.calibration_field_mm
    ssd = beam.calibration_ssd_mm
    # field defined at the isocenter plane; a field of side a at SSD is a*SAD/SSD at the isocenter plane
    a_iso = a * sad_mm / ssd
    h = TABLE_SPACING_MM
    half = int(np.ceil((a_iso / 2 + 5 * beam.source_sigma_mm + 2) / h))
    x = np.arange(-half, half + 1) * h
    flu = opening_fluence(x[None, :], x[:, None], -a_iso / 2, a_iso / 2, -a_iso / 2, a_iso / 2, beam.source_sigma_mm)
    r = np.hypot(x[None, :], x[:, None])
    flu = flu * beam.primary_fluence_at(r)
    tails = kernel_tail(beam, r) * h * h
    centre = np.array(
        [beam.kernel_point_weights[i] * flu[half, half] + float((flu * tails[i]).sum()) for i in range(3)]
    )
    depths = np.arange(0.0, 60.0, 0.05)
    # the axis point at depth d is at distance ssd + d from the source; at the isocenter plane it is on axis
    d = beam.depth_components(depths)
    dose = (sad_mm / (ssd + depths)) ** 2 * (centre[:, None] * d).sum(axis=0)
    return float(beam.calibration_gy_per_mu / dose.max())


def calibration_factor(machine: MachineModel) -> float:
    """c_abs: Gy per MU per unit kernel dose, so that the calibration field gets ``calibration_gy_per_mu`` at dmax."""
    return _calibration_cached(_remember(machine.beam), float(machine.sad_mm))


def pencil_beam_dose(
    machine: MachineModel,
    rad_depth_mm: np.ndarray,
    source_distance_mm: np.ndarray,
    du_mm: np.ndarray,
    dv_mm: np.ndarray,
    *,
    width_mm: float = 5.0,
    height_mm: float = 5.0,
    cutoff_mm: float = 50.0,
    off_axis_u_mm: float = 0.0,
    off_axis_v_mm: float = 0.0,
) -> np.ndarray:
    """Dose (Gy per MU through the bixel) of one ``width x height`` bixel at arbitrary points.

    ``rad_depth_mm``: radiological (water-equivalent) depth of each point; ``source_distance_mm``:
    its geometric distance from the source along the beam axis (for the inverse-square factor);
    ``du_mm, dv_mm``: its lateral offset from the bixel centre projected onto the isocenter plane.
    ``off_axis_*``: the bixel centre at the isocenter plane (selects the primary-fluence horn).
    This is the same model :func:`rayrt.dose.dij.compute_dij` evaluates (nearest-exact here:
    bilinear table lookup).
    """
    table = bixel_kernel_table(machine.beam, width_mm, height_mm, cutoff_mm)
    c = _interp_table(table, np.asarray(du_mm, dtype=float), np.asarray(dv_mm, dtype=float))
    w = machine.beam.depth_components(rad_depth_mm)
    isq = (machine.sad_mm / np.asarray(source_distance_mm, dtype=float)) ** 2
    prim = machine.beam.primary_fluence_at(np.hypot(off_axis_u_mm, off_axis_v_mm))
    return calibration_factor(machine) * prim * isq * np.einsum("i...,...i->...", w, c)


def _interp_table(table: KernelTable, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a kernel table, shape (..., 3); zero outside."""
    vals = table.values
    ny, nx, _ = vals.shape
    fx = (u - table.x0_mm) / table.spacing_mm
    fy = (v - table.y0_mm) / table.spacing_mm
    inside = (fx >= 0) & (fx <= nx - 1) & (fy >= 0) & (fy <= ny - 1)
    fx = np.clip(fx, 0, nx - 1.000001)
    fy = np.clip(fy, 0, ny - 1.000001)
    ix = np.floor(fx).astype(int)
    iy = np.floor(fy).astype(int)
    tx = (fx - ix)[..., None]
    ty = (fy - iy)[..., None]
    out = (1 - ty) * ((1 - tx) * vals[iy, ix] + tx * vals[iy, ix + 1]) + ty * (
        (1 - tx) * vals[iy + 1, ix] + tx * vals[iy + 1, ix + 1]
    )
    return out * inside[..., None]


def _field_edges_mm(field_mm: tuple[float, float] | float) -> tuple[float, float]:
    """(min, max) edges (mm at the isocenter plane) of a field given as a centred side length or as edges."""
    if isinstance(field_mm, (int, float, np.integer, np.floating)):
        return (-field_mm / 2, field_mm / 2)
    return (field_mm[0], field_mm[1])


def water_dose(
    machine: MachineModel,
    field_x_mm: tuple[float, float] | float,
    field_y_mm: tuple[float, float] | float,
    depths_mm: np.ndarray,
    x_mm: np.ndarray | float = 0.0,
    y_mm: np.ndarray | float = 0.0,
    *,
    ssd_mm: float | None = None,
    mu: float = 1.0,
    spacing_mm: float = 0.5,
    head_scatter: bool = True,
) -> np.ndarray:
    """Dose (Gy) in a water phantom of a rectangular field, analytic model (no voxels).

    ``field_x_mm``/``field_y_mm``: field size at the isocenter plane (a side length, centred) or
    (min, max) edges. The water surface is at ``ssd_mm`` (default SAD: isocenter on the surface).
    Points: depth below the surface (mm) and physical lateral position (mm) at that depth;
    ``depths_mm``, ``x_mm``, ``y_mm`` broadcast together. Includes the primary-fluence horn,
    head scatter (when ``head_scatter``), inverse square and the calibration.
    """
    b = machine.beam
    sad = machine.sad_mm
    ssd = sad if ssd_mm is None else float(ssd_mm)
    fx = _field_edges_mm(field_x_mm)
    fy = _field_edges_mm(field_y_mm)
    d, x, y = np.broadcast_arrays(np.asarray(depths_mm, float), np.asarray(x_mm, float), np.asarray(y_mm, float))
    s = ssd + d
    u = x * sad / s
    v = y * sad / s
    pad = 5 * b.source_sigma_mm + 2.0
    reach = (
        max(np.abs(u).max(initial=0.0), np.abs(v).max(initial=0.0), abs(fx[0]), abs(fx[1]), abs(fy[0]), abs(fy[1]))
        + pad
    )
    reach = min(reach + 60.0, reach + b.kernel_radii_mm[-1])
    n = int(np.ceil(reach / spacing_mm))
    g = np.arange(-n, n + 1) * spacing_mm
    flu = opening_fluence(g[None, :], g[:, None], fx[0], fx[1], fy[0], fy[1], b.source_sigma_mm)
    flu = flu * b.primary_fluence_at(np.hypot(g[None, :], g[:, None]))
    conv = _convolve_kernels(b, flu, spacing_mm)
    from scipy.interpolate import RegularGridInterpolator

    pts = np.stack([v.ravel(), u.ravel()], axis=-1)
    c = np.stack([RegularGridInterpolator((g, g), conv[i], bounds_error=False, fill_value=0.0)(pts) for i in range(3)])
    w = b.depth_components(d.ravel())
    dose = calibration_factor(machine) * (sad / s.ravel()) ** 2 * (w * c).sum(axis=0)
    if head_scatter:
        a, bb = fx[1] - fx[0], fy[1] - fy[0]
        dose = dose * float(b.head_scatter_at(2 * a * bb / (a + bb)))
    return (mu * dose).reshape(d.shape)


def pdd_metrics(depths_mm: np.ndarray, dose: np.ndarray) -> dict[str, float]:
    """dmax (mm), PDD(100 mm), PDD(200 mm) in % of the maximum, from a finely sampled depth dose."""
    depths_mm = np.asarray(depths_mm, float)
    dose = np.asarray(dose, float)
    i = int(np.argmax(dose))
    # parabolic refinement of the maximum
    dmax = depths_mm[i]
    if 0 < i < len(dose) - 1:
        y0, y1, y2 = dose[i - 1], dose[i], dose[i + 1]
        den = y0 - 2 * y1 + y2
        if den != 0:
            dmax = depths_mm[i] + 0.5 * (y0 - y2) / den * (depths_mm[i + 1] - depths_mm[i])
    peak = dose.max()
    return {
        "dmax_mm": float(dmax),
        "pdd10_pct": float(100 * np.interp(100.0, depths_mm, dose) / peak),
        "pdd20_pct": float(100 * np.interp(200.0, depths_mm, dose) / peak),
    }


def penumbra_80_20(x_mm: np.ndarray, profile: np.ndarray) -> float:
    """80 %–20 % penumbra width (mm) of the right-hand edge of a profile normalised to its centre."""
    x = np.asarray(x_mm, float)
    p = np.asarray(profile, float) / np.interp(0.0, x, profile)
    right = x >= 0
    xr, pr = x[right][::-1], p[right][::-1]
    return float(np.interp(0.2, pr, xr) - np.interp(0.8, pr, xr))
