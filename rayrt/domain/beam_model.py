"""Beam model of a photon machine: the parameters of the three-kernel SVD pencil beam.

Physics (Bortfeld, Schlegel, Rhein, Med Phys 20, 1993; the matRad/pyRadPlan "SVD pencil beam"):
the dose deposited by a pencil beam of unit fluence at radiological depth ``d`` (mm water
equivalent) and lateral offset ``r`` (mm, projected onto the isocenter plane) is

    D(d, r) = (SAD / s)^2 * sum_i  beta_i / (beta_i - m) * (exp(-m d) - exp(-beta_i d)) * K_i(r)

with ``s`` the distance from the source (inverse square), ``m`` the effective linear attenuation
coefficient of the primary photons (1/mm), ``beta_i`` the build-up constants (1/mm) of the three
singular components and ``K_i`` their lateral kernels (1/mm², radially symmetric). Each kernel
is stored as a *point weight* (a delta at r = 0: the part of the energy deposited within the
0.5 mm of the pencil axis) plus a *tail* tabulated at ``kernel_radii_mm`` (1/mm²).

A finite opening (bixel, aperture) is the convolution of the kernels with the fluence: the
geometric opening blurred by the focal spot (a Gaussian of ``source_sigma_mm`` at the isocenter
plane) and weighted by the off-axis primary fluence (horn of a flattened beam, cone of an FFF
beam). Head (collimator) scatter is a field-size factor ``Sc`` normalised to 1 at the reference
field; phantom scatter is in the kernels.

Dose calibration: 1 MU delivers ``calibration_gy_per_mu`` (0.01 Gy) at the depth of maximum
dose on the central axis of a ``calibration_field_mm`` square field (10 x 10 cm²) at SSD
``calibration_ssd_mm`` (100 cm) in water. rayrt.dose.pencil_beam derives the absolute
normalisation from these kernels, so any kernel set is calibrated consistently.

The default kernel data in configs/machines are derived from matRad's generic 6 MV photon
kernels (photons_Generic.mat, matRad, DKFZ, BSD-3-Clause), resampled and retuned per machine.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class BeamModel(BaseModel):
    """Pencil-beam parameters of one photon beam (one energy of one machine)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["svd_pencil_beam"] = "svd_pencil_beam"
    attribution: str = Field(default="", description="where the kernel data come from (licence, reference)")
    attenuation_per_mm: float = Field(gt=0, lt=0.1, description="m: effective primary attenuation coefficient (1/mm)")
    betas_per_mm: tuple[float, float, float] = Field(
        description="build-up constants beta_1..3 of the three kernels (1/mm)"
    )
    kernel_point_weights: tuple[float, float, float] = Field(
        description="weight of each kernel concentrated on the pencil axis (dimensionless, a delta at r = 0)"
    )
    kernel_radii_mm: list[float] = Field(
        description="radii (mm, > 0, increasing, at the isocenter plane) of the kernel tails"
    )
    kernels_per_mm2: tuple[list[float], list[float], list[float]] = Field(
        description="the three kernel tails K_i(r) in 1/mm², one value per kernel radius"
    )
    primary_fluence_radius_mm: list[float] = Field(
        description="off-axis radii (mm at the isocenter plane) of the relative primary fluence; first is 0"
    )
    primary_fluence: list[float] = Field(
        description="relative primary fluence (1 on the axis): horn of flattened, cone of FFF beams"
    )
    source_sigma_mm: float = Field(
        ge=0, le=10, description="focal-spot (penumbra) Gaussian sigma at the isocenter plane (mm)"
    )
    head_scatter_field_mm: list[float] = Field(
        description="equivalent-square field sizes (mm at isocenter) of the head-scatter table"
    )
    head_scatter: list[float] = Field(description="collimator (head) scatter factor Sc, 1 at the calibration field")
    calibration_gy_per_mu: float = Field(default=0.01, gt=0, description="Gy per MU at dmax, reference field and SSD")
    calibration_field_mm: float = Field(
        default=100.0, gt=0, description="side of the square calibration field (mm at SSD)"
    )
    calibration_ssd_mm: float = Field(
        default=1000.0, gt=0, description="source-surface distance of the calibration (mm)"
    )

    @model_validator(mode="after")
    def _check(self) -> "BeamModel":
        r = np.asarray(self.kernel_radii_mm, dtype=float)
        if r.size < 4 or np.any(r <= 0) or np.any(np.diff(r) <= 0):
            raise ValueError("kernel_radii_mm needs >= 4 positive, strictly increasing radii")
        for i, k in enumerate(self.kernels_per_mm2):
            if len(k) != r.size:
                raise ValueError(f"kernels_per_mm2[{i}] has {len(k)} values, kernel_radii_mm has {r.size}")
        if any(b <= 0 or abs(b - self.attenuation_per_mm) < 1e-6 for b in self.betas_per_mm):
            raise ValueError("betas_per_mm must be positive and differ from attenuation_per_mm")
        pr = np.asarray(self.primary_fluence_radius_mm, dtype=float)
        if pr.size < 2 or pr[0] != 0 or np.any(np.diff(pr) <= 0):
            raise ValueError("primary_fluence_radius_mm must start at 0 and increase strictly")
        if len(self.primary_fluence) != pr.size or any(v <= 0 for v in self.primary_fluence):
            raise ValueError("primary_fluence needs one positive value per radius")
        hs = np.asarray(self.head_scatter_field_mm, dtype=float)
        if hs.size < 1 or np.any(np.diff(hs) <= 0) or len(self.head_scatter) != hs.size:
            raise ValueError("head_scatter_field_mm must increase and match head_scatter in length")
        if any(v <= 0 for v in self.head_scatter):
            raise ValueError("head_scatter factors must be positive")
        return self

    # ------------------------------------------------------------------ helpers (numpy)
    def depth_components(self, rad_depth_mm: np.ndarray) -> np.ndarray:
        """beta_i/(beta_i-m) (e^{-m d} - e^{-beta_i d}) for the three kernels, shape (3, ...)."""
        d = np.maximum(np.asarray(rad_depth_mm, dtype=float), 0.0)
        m = self.attenuation_per_mm
        return np.stack([b / (b - m) * (np.exp(-m * d) - np.exp(-b * d)) for b in self.betas_per_mm])

    def primary_fluence_at(self, radius_mm: np.ndarray) -> np.ndarray:
        """Relative primary fluence at off-axis radius (mm at the isocenter plane); constant beyond the table."""
        return np.interp(np.abs(radius_mm), self.primary_fluence_radius_mm, self.primary_fluence)

    def head_scatter_at(self, equivalent_square_mm: float | np.ndarray) -> np.ndarray | np.float64:
        """Head-scatter factor Sc for an equivalent-square field (mm at isocenter), clamped to the table
        (a scalar for a scalar field size, else an array of its shape)."""
        return np.interp(equivalent_square_mm, self.head_scatter_field_mm, self.head_scatter)
