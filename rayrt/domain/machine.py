"""Treatment machines as data: MachineModel = BeamModel + MLCModel + jaws + limits.

Geometry is given at the isocenter plane (SAD), in mm, in the IEC 61217 beam-limiting-device
frame: leaves of an ``MLCX`` travel along X; leaf pairs are stacked along Y; the leaf-pair
boundaries are the N+1 Y positions (mm, increasing) of DICOM ``LeafPositionBoundaries``.
Jaw/leaf positions follow DICOM order: the X1 / "minus" side first, then the X2 / "plus" side.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rayrt.domain.beam_model import BeamModel


class AngleRange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_deg: float
    max_deg: float

    def contains(self, angle_deg: float, tol: float = 1e-6) -> bool:
        """Whether an IEC 61217 angle is reachable; ranges may wrap through 0/360."""
        a = angle_deg % 360.0
        lo, hi = self.min_deg, self.max_deg
        if hi - lo >= 360.0 - tol:
            return True
        lo_n, hi_n = lo % 360.0, hi % 360.0
        if lo_n <= hi_n:
            return lo_n - tol <= a <= hi_n + tol
        return a >= lo_n - tol or a <= hi_n + tol

    def nearest_reachable(self, angle_deg: float, max_shift_deg: float = 1.0, step_deg: float = 0.1) -> float | None:
        """``angle_deg`` if reachable, else the nearest reachable angle within ``max_shift_deg``
        in ``step_deg`` steps (e.g. gantry 180 -> 180.1 on a Varian whose range runs 180.1 through
        0 to 179.9), else None."""
        if self.contains(angle_deg):
            return angle_deg
        for k in range(1, int(round(max_shift_deg / step_deg)) + 1):
            for a in (angle_deg + step_deg * k, angle_deg - step_deg * k):
                a = round(a % 360.0, 6)
                if self.contains(a):
                    return a
        return None


class JawModel(BaseModel):
    """One pair of jaws (X or Y). Positions at the isocenter in mm; jaw 1 is the minus side."""

    model_config = ConfigDict(extra="forbid")

    min_mm: float = Field(description="most negative position either jaw can reach")
    max_mm: float = Field(description="most positive position either jaw can reach")
    transmission: float = Field(default=0.001, ge=0, le=1)
    dicom_type: str = Field(default="ASYMX", description="ASYMX, ASYMY, X or Y")

    @model_validator(mode="after")
    def _order(self) -> "JawModel":
        if self.min_mm >= self.max_mm:
            raise ValueError("jaw min_mm must be below max_mm")
        return self


class MLCModel(BaseModel):
    """A multi-leaf collimator: leaf-pair geometry and mechanical rules."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="e.g. 'Millennium 120', 'HD120', 'Agility', 'MLCi2'")
    leaf_boundaries_mm: list[float] = Field(
        description="N+1 leaf-pair boundaries along Y at the isocenter (mm), increasing"
    )
    interdigitation: bool = Field(description="whether opposing leaves of adjacent pairs may cross")
    min_gap_mm: float = Field(default=0.5, ge=0, description="minimum gap between the two leaves of a pair (mm)")
    max_leaf_span_mm: float = Field(
        default=150.0, gt=0, description="maximum distance between leaf tips of one bank (mm)"
    )
    max_overtravel_mm: float = Field(
        default=200.0, ge=0, description="how far a leaf tip may cross the central axis (mm)"
    )
    min_position_mm: float = Field(default=-200.0, description="most negative leaf tip position (mm)")
    max_position_mm: float = Field(default=200.0, description="most positive leaf tip position (mm)")
    leaf_speed_mm_s: float = Field(default=25.0, gt=0)
    transmission: float = Field(
        default=0.015, ge=0, le=1, description="average leaf transmission (inter- and intra-leaf)"
    )
    leaf_end_transmission_mm: float = Field(
        default=0.0, ge=0, description="dosimetric leaf gap: extra effective opening at the rounded leaf ends (mm)"
    )
    dual_layer: bool = Field(default=False, description="two stacked banks (Halcyon-like); effective leaf width halves")
    proximal_leaf_boundaries_mm: list[float] | None = Field(
        default=None,
        description="dual-layer MLCs: the proximal layer's leaf-pair boundaries along Y at the isocenter "
        "(mm, increasing); default: the distal boundaries offset by half a leaf, one pair more "
        "(Halcyon: 29 x 10 mm offset 5 mm)",
    )
    dicom_type: str = Field(default="MLCX")

    @field_validator("leaf_boundaries_mm")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if len(v) < 2:
            raise ValueError("an MLC needs at least one leaf pair (two boundaries)")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("leaf_boundaries_mm must be strictly increasing")
        return v

    @property
    def num_pairs(self) -> int:
        return len(self.leaf_boundaries_mm) - 1

    @property
    def proximal_boundaries(self) -> np.ndarray | None:
        """Proximal-layer boundaries of a dual-layer MLC (None for a single layer)."""
        if not self.dual_layer:
            return None
        if self.proximal_leaf_boundaries_mm is not None:
            return np.asarray(self.proximal_leaf_boundaries_mm, dtype=float)
        b = self.boundaries
        w = np.diff(b)
        return np.concatenate([[b[0] - 0.5 * w[0]], 0.5 * (b[:-1] + b[1:]), [b[-1] + 0.5 * w[-1]]])

    @property
    def boundaries(self) -> np.ndarray:
        return np.asarray(self.leaf_boundaries_mm, dtype=float)

    @property
    def leaf_widths_mm(self) -> np.ndarray:
        return np.diff(self.boundaries)

    @property
    def leaf_centers_mm(self) -> np.ndarray:
        b = self.boundaries
        return 0.5 * (b[:-1] + b[1:])


class MachineLimits(BaseModel):
    """Mechanical and delivery limits of a machine (MU per fraction, mm and cm² at the isocenter plane)."""

    model_config = ConfigDict(extra="forbid")

    gantry: AngleRange = Field(default_factory=lambda: AngleRange(min_deg=0, max_deg=360))
    collimator: AngleRange = Field(default_factory=lambda: AngleRange(min_deg=0, max_deg=360))
    couch: AngleRange = Field(default_factory=lambda: AngleRange(min_deg=0, max_deg=360))
    min_mu_per_segment: float = Field(default=0.5, ge=0)
    max_mu_per_beam: float = Field(default=2000.0, gt=0)
    max_segments_per_beam: int = Field(default=50, ge=1)
    max_field_x_mm: float = Field(default=400.0, gt=0, description="maximum field size along X at the isocenter")
    max_field_y_mm: float = Field(default=400.0, gt=0, description="maximum field size along Y at the isocenter")
    dose_rate_mu_min: float = Field(default=600.0, gt=0)
    min_segment_area_cm2: float = Field(
        default=0.0,
        ge=0,
        description="smallest open area of a step-and-shoot segment at the isocenter plane (cm², leaf opening x "
        "leaf width over the open pairs, inside the jaws): below a few cm² output factor, leaf-end and "
        "source-occlusion uncertainties make the dose unreliable (0: no limit)",
    )
    min_segment_width_mm: float = Field(
        default=0.0,
        ge=0,
        description="narrowest leaf opening (mm at the isocenter) for a leaf pair to count as open in a segment: "
        "open pairs are kept at least this wide (0: only the MLC's min_gap_mm)",
    )


class MachineModel(BaseModel):
    """A treatment machine described entirely as data (one YAML file in configs/machines)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="treatment machine name (DICOM TreatmentMachineName)")
    vendor: str = ""
    model: str = ""
    description: str = ""
    radiation_type: str = "PHOTON"
    nominal_energy_mv: float = Field(gt=0)
    fff: bool = Field(default=False, description="flattening-filter-free beam")
    sad_mm: float = Field(default=1000.0, gt=0, description="source-axis distance")
    beam: BeamModel
    mlc: MLCModel
    jaw_x: JawModel | None = Field(default=None, description="X jaws (None for Elekta Agility / jawless machines)")
    jaw_y: JawModel | None = Field(default=None, description="Y jaws (None for jawless machines)")
    limits: MachineLimits = Field(default_factory=MachineLimits)
    standard: bool = Field(default=False, description="the vendor-neutral standard machine")
