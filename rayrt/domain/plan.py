"""Deliverable plans: beams, step-and-shoot segments (control-point pairs), MU.

Leaf positions are leaf-tip positions at the isocenter plane in mm along the IEC 61217 X axis of
the beam-limiting device. ``x1_mm[p]`` is the tip of the minus-side leaf of pair ``p`` (DICOM
LeafJawPositions first N values) and ``x2_mm[p]`` the plus-side leaf; a pair is open where
``x1_mm[p] < x2_mm[p]``. Pairs are numbered along +Y as the machine's leaf boundaries.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from pydantic import BaseModel, Field, model_validator


class Segment(BaseModel):
    """One static aperture delivered with ``mu`` monitor units."""

    x1_mm: list[float] = Field(description="minus-side leaf tips per pair (mm)")
    x2_mm: list[float] = Field(description="plus-side leaf tips per pair (mm)")
    jaw_x_mm: tuple[float, float] | None = Field(
        default=None, description="(X1, X2) jaw positions, None when the machine has no X jaws"
    )
    jaw_y_mm: tuple[float, float] | None = Field(
        default=None, description="(Y1, Y2) jaw positions, None when the machine has no Y jaws"
    )
    mu: float = Field(ge=0, description="monitor units of this segment")
    x1_proximal_mm: list[float] | None = Field(
        default=None,
        description="dual-layer MLCs: proximal-layer minus-side tips per pair (mm); "
        "None: the proximal layer is not used (x1_mm/x2_mm are the distal layer)",
    )
    x2_proximal_mm: list[float] | None = Field(
        default=None, description="dual-layer MLCs: proximal-layer plus-side tips per pair (mm)"
    )

    @model_validator(mode="after")
    def _pairs(self) -> "Segment":
        if len(self.x1_mm) != len(self.x2_mm):
            raise ValueError("x1_mm and x2_mm must have one entry per leaf pair")
        x1p, x2p = self.x1_proximal_mm, self.x2_proximal_mm
        if (x1p is None) != (x2p is None) or (x1p is not None and x2p is not None and len(x1p) != len(x2p)):
            raise ValueError("x1_proximal_mm and x2_proximal_mm must both be given, one entry per proximal leaf pair")
        return self


class Beam(BaseModel):
    """A static-gantry beam in IEC 61217 angles with its step-and-shoot segments."""

    name: str = ""
    number: int = 1
    gantry_deg: float = 0.0
    collimator_deg: float = 0.0
    couch_deg: float = 0.0
    isocenter_mm: tuple[float, float, float] = Field(description="isocenter in DICOM patient coordinates (LPS, mm)")
    segments: list[Segment] = Field(default_factory=list)

    @property
    def mu(self) -> float:
        return float(sum(s.mu for s in self.segments))


class Plan(BaseModel):
    """A plan for one machine."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    label: str = "rayrt"
    machine: str = Field(description="MachineModel.name the plan is built for")
    patient_id: str = ""
    frame_of_reference_uid: str | None = None
    fractions: int = Field(default=1, ge=1)
    prescription_gy: float | None = Field(default=None, description="total prescribed dose in Gy")
    target: str | None = None
    beams: list[Beam] = Field(default_factory=list)
    source_plan_id: str | None = Field(default=None, description="the plan this one was converted from")
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    notes: list[str] = Field(default_factory=list)

    @property
    def total_mu(self) -> float:
        return float(sum(b.mu for b in self.beams))
