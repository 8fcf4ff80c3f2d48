"""Step-and-shoot segment limits and segment geometry shared by sequencing, DAO, conversion and QA.

A segment is treatable only when it is large enough to be dosimetrically reliable (output factor,
leaf-end and source-occlusion effects grow quickly below a few cm²), carries enough MU for the
linac's dose monitor to be linear, and a beam has few enough of them to be delivered in
reasonable time. :class:`SegmentLimits` holds those limits; the *effective* limits of a plan are
the stricter of the machine's (:class:`~rayrt.domain.machine.MachineLimits`) and the planning
policy's (:class:`~rayrt.domain.planning.PlanningRequest`).

Geometry at the isocenter plane (SAD), mm; areas in cm² (1 cm² = 100 mm²); MU per fraction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rayrt.domain.machine import MachineModel

if TYPE_CHECKING:
    from rayrt.domain.plan import Segment

__all__ = ["SegmentLimits", "segment_limits", "open_pair_mask", "segment_open_area_cm2", "narrow_open_pairs"]

_TOL_MM = 1e-6


class SegmentLimits(BaseModel):
    """The limits every emitted segment of one beam obeys (0 / None = no limit)."""

    model_config = ConfigDict(extra="forbid")

    min_area_cm2: float = Field(
        default=0.0, ge=0, description="smallest open area of a segment at the isocenter plane (cm²)"
    )
    min_width_mm: float = Field(
        default=0.0, ge=0, description="narrowest leaf opening of an open pair at the isocenter plane (mm)"
    )
    min_mu: float = Field(default=0.0, ge=0, description="smallest MU of a segment, MU per fraction")
    max_segments: int | None = Field(default=None, ge=1, description="most segments per beam (None: no limit)")

    def min_weight(self, fractions: int) -> float:
        """Minimum segment weight in the optimiser's course MU-weights (= MU per fraction x fractions)."""
        return float(self.min_mu) * max(int(fractions), 1)


def segment_limits(
    machine: MachineModel,
    *,
    min_area_cm2: float | None = None,
    min_mu: float | None = None,
    max_segments: int | None = None,
    min_width_mm: float | None = None,
) -> SegmentLimits:
    """The effective limits on ``machine``: each the stricter of the machine's limit and the
    planning policy's value (None: the machine's alone). Strict = larger minimum area / width /
    MU, fewer segments."""
    lim = machine.limits
    n = lim.max_segments_per_beam if max_segments is None else min(int(max_segments), lim.max_segments_per_beam)
    return SegmentLimits(
        min_area_cm2=max(float(lim.min_segment_area_cm2), float(min_area_cm2 or 0.0)),
        min_width_mm=max(float(lim.min_segment_width_mm), float(min_width_mm or 0.0)),
        min_mu=max(float(lim.min_mu_per_segment), float(min_mu or 0.0)),
        max_segments=int(n),
    )


def open_pair_mask(
    x1: np.ndarray,
    x2: np.ndarray,
    machine: MachineModel,
    jaw_x_mm: Sequence[float] | None = None,
    jaw_y_mm: Sequence[float] | None = None,
) -> np.ndarray:
    """(P,) bool: the leaf pairs a segment opens.

    A pair wider than the MLC's minimum gap is open. A pair exactly at the minimum gap is open when
    it lies inside the segment's jaws (Y and X, when the machine has them): on an MLC whose minimum
    gap equals the bixel width (MLCi2: 5 mm) a one-bixel strip is a real opening, while closed
    pairs are parked with the same gap under a jaw. Without jaws only the width decides."""
    g = float(machine.mlc.min_gap_mm)
    b = machine.mlc.boundaries
    x1 = np.asarray(x1, float)
    x2 = np.asarray(x2, float)
    wide = x2 - x1 > g + _TOL_MM
    at_gap = (x2 - x1 > _TOL_MM) & ~wide
    inside = np.ones_like(wide)
    if machine.jaw_y is not None and jaw_y_mm is not None:
        inside &= np.minimum(b[1:], jaw_y_mm[1]) - np.maximum(b[:-1], jaw_y_mm[0]) > _TOL_MM
    elif machine.jaw_y is None:
        inside[:] = False
    if machine.jaw_x is not None and jaw_x_mm is not None:
        inside &= np.minimum(x2, jaw_x_mm[1]) - np.maximum(x1, jaw_x_mm[0]) > _TOL_MM
    return wide | (at_gap & inside)


def _pair_area_mm2(
    x1: np.ndarray,
    x2: np.ndarray,
    open_: np.ndarray,
    machine: MachineModel,
    jaw_x_mm: Sequence[float] | None,
    jaw_y_mm: Sequence[float] | None,
    px1: np.ndarray | None = None,
    px2: np.ndarray | None = None,
) -> np.ndarray:
    """(P,) open area of each pair (mm²): leaf opening x pair width, clipped by the jaws and, on a
    dual-layer MLC, intersected with the proximal layer's open pairs."""
    b = machine.mlc.boundaries
    lo, hi = np.asarray(x1, float), np.asarray(x2, float)
    if jaw_x_mm is not None:
        lo, hi = np.maximum(lo, jaw_x_mm[0]), np.minimum(hi, jaw_x_mm[1])
    ylo, yhi = b[:-1], b[1:]
    if jaw_y_mm is not None:
        ylo, yhi = np.maximum(ylo, jaw_y_mm[0]), np.minimum(yhi, jaw_y_mm[1])
    pb = machine.mlc.proximal_boundaries
    if pb is not None and px1 is not None and px2 is not None:
        # effective opening = distal ∩ proximal: sum over the proximal pairs' Y overlap
        qa, qb = np.asarray(px1, float), np.asarray(px2, float)
        qopen = qb - qa > float(machine.mlc.min_gap_mm) + _TOL_MM
        oy = np.clip(np.minimum(yhi[:, None], pb[None, 1:]) - np.maximum(ylo[:, None], pb[None, :-1]), 0, None)
        ox = np.clip(np.minimum(hi[:, None], qb[None, :]) - np.maximum(lo[:, None], qa[None, :]), 0, None)
        area = (oy * ox * qopen[None, :]).sum(axis=1)
    else:
        area = np.clip(hi - lo, 0, None) * np.clip(yhi - ylo, 0, None)
    return np.where(open_, area, 0.0)


def segment_open_area_cm2(segment: "Segment", machine: MachineModel) -> float:
    """Open area of a segment at the isocenter plane (cm²): leaf opening x leaf width over the open
    pairs (:func:`open_pair_mask`), clipped by the segment's jaws; on a dual-layer MLC the
    intersection with the proximal layer's opening. Transmission and the rounded leaf ends are
    not counted (geometric area, as treatment-planning systems apply their minimum-area rule)."""
    x1, x2 = np.asarray(segment.x1_mm, float), np.asarray(segment.x2_mm, float)
    op = open_pair_mask(x1, x2, machine, segment.jaw_x_mm, segment.jaw_y_mm)
    px1 = None if segment.x1_proximal_mm is None else np.asarray(segment.x1_proximal_mm, float)
    px2 = None if segment.x2_proximal_mm is None else np.asarray(segment.x2_proximal_mm, float)
    return float(_pair_area_mm2(x1, x2, op, machine, segment.jaw_x_mm, segment.jaw_y_mm, px1, px2).sum()) / 100.0


def narrow_open_pairs(
    segment: "Segment", machine: MachineModel, min_width_mm: float, tol_mm: float = 1e-3
) -> np.ndarray:
    """(P,) bool: pairs opened wider than the MLC's minimum gap but narrower than ``min_width_mm``
    (mm). Pairs at the minimum gap are closed pairs (parked, or on an MLC whose minimum gap is a
    real strip, MLCi2, already as wide as that gap) and are not judged here."""
    x1, x2 = np.asarray(segment.x1_mm, float), np.asarray(segment.x2_mm, float)
    w = x2 - x1
    return (w > float(machine.mlc.min_gap_mm) + tol_mm) & (w < float(min_width_mm) - tol_mm)
