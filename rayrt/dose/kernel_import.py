"""Offline: derive a compact BeamModel kernel tabulation from a matRad photon machine file.

Used once to write the beam blocks of configs/machines/*.yaml from matRad's generic 6 MV kernel
set (photons_Generic.mat, matRad, DKFZ, BSD-3-Clause). The product never calls this at run time.

matRad stores the three SVD lateral kernels (1/mm²) on 0..179.5 mm in 0.5 mm steps for SSDs
500..1000 mm; matRad convolves them on a 0.5 mm grid, so the value at r = 0 stands for the
energy deposited within the central 0.5 x 0.5 mm² cell. Here that cell becomes an explicit point
weight (K(0) * 0.25 mm²) and the tail r > 0 is resampled on a log-spaced radius grid (the kernels
fall by orders of magnitude in the first millimetres). The kernels of SSD 1000 mm are used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def kernels_from_matrad(path: str | Path, ssd_mm: float = 1000.0, num_radii: int = 40) -> dict:
    """A dict of BeamModel fields (m, betas, point weights, radii, kernels, primary fluence)."""
    import scipy.io as sio

    m = sio.loadmat(str(path), squeeze_me=True, struct_as_record=False)["machine"]
    data = m.data
    pos = np.asarray(data.kernelPos, dtype=float)
    kern = min(data.kernel, key=lambda e: abs(float(e.SSD) - ssd_mm))
    cell = (pos[1] - pos[0]) ** 2
    radii = np.unique(np.round(np.geomspace(pos[1], pos[-1], num_radii), 3))
    point_weights = []
    tails = []
    for f in ("kernel1", "kernel2", "kernel3"):
        k = np.asarray(getattr(kern, f), dtype=float)
        point_weights.append(float(k[0] * cell))
        # average over the annulus each tabulated radius represents, then sample (denoises the tail)
        edges = np.concatenate([[pos[1] * 0.75], np.sqrt(radii[:-1] * radii[1:]), [pos[-1] + 0.25]])
        vals = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (pos >= lo) & (pos <= hi) & (pos > 0)
            w = pos[sel]
            vals.append(float((k[sel] * w).sum() / w.sum()) if sel.any() else float(np.interp(0.5 * (lo + hi), pos, k)))
        tails.append(vals)
    pf = np.asarray(data.primaryFluence, dtype=float)
    return {
        "attenuation_per_mm": float(data.m),
        "betas_per_mm": [float(b) for b in data.betas],
        "kernel_point_weights": point_weights,
        "kernel_radii_mm": [float(r) for r in radii],
        "kernels_per_mm2": tails,
        "primary_fluence_radius_mm": [float(r) for r in pf[:, 0]],
        "primary_fluence": [float(v) for v in pf[:, 1] / pf[0, 1]],
        "source_sigma_mm": float(data.penumbraFWHMatIso) / 2.3548,
    }
