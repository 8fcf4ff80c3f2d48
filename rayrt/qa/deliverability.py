"""Deliverability of a step-and-shoot plan on a machine: every mechanical and MU rule checked.

``check_plan(plan, machine)`` lists each violation (never stops at the first):

* ``leaf_count``     -- segments must give one x1/x2 per leaf pair of the MLC;
* ``leaf_range``     -- leaf tips within [min_position_mm, max_position_mm];
* ``overtravel``     -- an x1 tip may not cross the central axis by more than max_overtravel_mm
  (x1 <= +overtravel), nor an x2 tip (x2 >= -overtravel);
* ``min_gap``        -- x2[p] - x1[p] >= min_gap_mm for every pair (open or closed);
* ``interdigitation``-- on MLCs without interdigitation, opposing leaves of adjacent pairs keep the
  minimum gap too: x2[q] - x1[p] >= min_gap_mm for |p - q| = 1;
* ``leaf_span``      -- per bank, max - min tip position <= max_leaf_span_mm;
  (dual-layer MLCs: the proximal layer's tips, when a segment gives them, obey the same leaf rules)
* ``jaw_presence``   -- jaw positions given exactly for the jaws the machine has;
* ``jaw_range``      -- jaws within their limits, jaw 1 <= jaw 2, field size <= max_field_{x,y}_mm;
* ``mu``             -- each segment >= min_mu_per_segment, each beam <= max_mu_per_beam, > 0;
* ``segment_area``   -- each segment's open area at the isocenter plane (leaf opening x leaf width
  over the open pairs, inside the jaws; :func:`rayrt.domain.segments.segment_open_area_cm2`)
  >= min_segment_area_cm2;
* ``segment_width``  -- no pair opened beyond the minimum gap but narrower than min_segment_width_mm;
* ``angles``         -- gantry, collimator, couch within the machine's ranges;
* ``segments``       -- 1 <= segments per beam <= max_segments_per_beam;
* ``machine``        -- the plan names this machine.

Positions in mm at the isocenter, MU per fraction, areas in cm². A tolerance of 1e-3 mm / 1e-6 MU /
1e-4 cm² absorbs floating-point round-off.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from rayrt.domain.machine import MachineModel
from rayrt.domain.plan import Plan
from rayrt.domain.segments import narrow_open_pairs, segment_open_area_cm2

__all__ = ["Violation", "DeliverabilityReport", "check_plan"]

TOL_MM = 1e-3
TOL_MU = 1e-6
TOL_CM2 = 1e-4


class Violation(BaseModel):
    rule: str
    beam: int | None = Field(default=None, description="beam index in plan.beams")
    segment: int | None = None
    leaf_pair: int | None = None
    message: str


class DeliverabilityReport(BaseModel):
    machine: str
    deliverable: bool
    num_beams: int
    num_segments: int
    total_mu: float
    violations: list[Violation] = Field(default_factory=list)

    def rules_violated(self) -> set[str]:
        return {v.rule for v in self.violations}


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _proximal_violations(s, mlc, bi: int, si: int) -> list[Violation]:
    """The proximal layer of a dual-layer MLC: pair count, leaf range, over-travel, minimum gap, span."""
    pb = mlc.proximal_boundaries
    if pb is None:
        return [
            Violation(
                rule="leaf_count",
                beam=bi,
                segment=si,
                message=f"proximal-layer leaves given but MLC {mlc.name} has one layer",
            )
        ]
    px1, px2 = np.asarray(s.x1_proximal_mm, float), np.asarray(s.x2_proximal_mm, float)
    if px1.size != pb.size - 1:
        return [
            Violation(
                rule="leaf_count",
                beam=bi,
                segment=si,
                message=f"{px1.size} proximal leaf pairs given, MLC {mlc.name} has {pb.size - 1}",
            )
        ]
    out = []
    bad = (
        (px1 < mlc.min_position_mm - TOL_MM)
        | (px2 > mlc.max_position_mm + TOL_MM)
        | (px1 > mlc.max_position_mm + TOL_MM)
        | (px2 < mlc.min_position_mm - TOL_MM)
    )
    if bad.any():
        out.append(
            Violation(
                rule="leaf_range",
                beam=bi,
                segment=si,
                leaf_pair=_first(bad),
                message=f"{int(bad.sum())} proximal leaf pair(s) "
                f"outside [{mlc.min_position_mm}, {mlc.max_position_mm}] mm",
            )
        )
    bad = (px1 > mlc.max_overtravel_mm + TOL_MM) | (px2 < -mlc.max_overtravel_mm - TOL_MM)
    if bad.any():
        out.append(
            Violation(
                rule="overtravel",
                beam=bi,
                segment=si,
                leaf_pair=_first(bad),
                message=f"{int(bad.sum())} proximal leaf tip(s) cross the axis by more than {mlc.max_overtravel_mm} mm",
            )
        )
    bad = px2 - px1 < mlc.min_gap_mm - TOL_MM
    if bad.any():
        out.append(
            Violation(
                rule="min_gap",
                beam=bi,
                segment=si,
                leaf_pair=_first(bad),
                message=f"{int(bad.sum())} proximal pair(s) with gap below {mlc.min_gap_mm} mm",
            )
        )
    for bank, x in (("proximal X1", px1), ("proximal X2", px2)):
        span = float(x.max() - x.min())
        if span > mlc.max_leaf_span_mm + TOL_MM:
            out.append(
                Violation(
                    rule="leaf_span",
                    beam=bi,
                    segment=si,
                    message=f"bank {bank} spans {span:.1f} mm > max_leaf_span_mm {mlc.max_leaf_span_mm}",
                )
            )
    return out


def check_plan(plan: Plan, machine: MachineModel) -> DeliverabilityReport:
    """Check every beam and segment of ``plan`` against ``machine``'s limits."""
    v: list[Violation] = []
    mlc, lim = machine.mlc, machine.limits
    P = mlc.num_pairs
    if plan.machine != machine.name:
        v.append(
            Violation(rule="machine", message=f"plan is for machine '{plan.machine}', checked against '{machine.name}'")
        )
    nseg_total = 0
    for bi, beam in enumerate(plan.beams):
        for ax, rng in (("gantry", lim.gantry), ("collimator", lim.collimator), ("couch", lim.couch)):
            ang = getattr(beam, f"{ax}_deg")
            if not rng.contains(ang):
                v.append(
                    Violation(
                        rule="angles", beam=bi, message=f"{ax} angle {ang} deg outside [{rng.min_deg}, {rng.max_deg}]"
                    )
                )
        n = len(beam.segments)
        nseg_total += n
        if n == 0 or n > lim.max_segments_per_beam:
            v.append(
                Violation(rule="segments", beam=bi, message=f"{n} segments; allowed 1..{lim.max_segments_per_beam}")
            )
        if beam.mu > lim.max_mu_per_beam + TOL_MU:
            v.append(
                Violation(rule="mu", beam=bi, message=f"beam MU {beam.mu:.2f} > max_mu_per_beam {lim.max_mu_per_beam}")
            )
        for si, s in enumerate(beam.segments):
            if s.mu < lim.min_mu_per_segment - TOL_MU or s.mu <= 0:
                v.append(
                    Violation(
                        rule="mu",
                        beam=bi,
                        segment=si,
                        message=f"segment MU {s.mu:.4f} < min_mu_per_segment {lim.min_mu_per_segment}",
                    )
                )
            x1, x2 = np.asarray(s.x1_mm, float), np.asarray(s.x2_mm, float)
            if x1.size != P:
                v.append(
                    Violation(
                        rule="leaf_count",
                        beam=bi,
                        segment=si,
                        message=f"{x1.size} leaf pairs given, MLC {mlc.name} has {P}",
                    )
                )
                continue
            if lim.min_segment_area_cm2 > 0:
                area = segment_open_area_cm2(s, machine)
                if area < lim.min_segment_area_cm2 - TOL_CM2:
                    v.append(
                        Violation(
                            rule="segment_area",
                            beam=bi,
                            segment=si,
                            message=f"segment open area {area:.2f} cm² < min_segment_area_cm2 "
                            f"{lim.min_segment_area_cm2}",
                        )
                    )
            if lim.min_segment_width_mm > mlc.min_gap_mm:
                bad = narrow_open_pairs(s, machine, lim.min_segment_width_mm, TOL_MM)
                if bad.any():
                    p = _first(bad)
                    v.append(
                        Violation(
                            rule="segment_width",
                            beam=bi,
                            segment=si,
                            leaf_pair=p,
                            message=f"{int(bad.sum())} open pair(s) narrower than min_segment_width_mm "
                            f"{lim.min_segment_width_mm}, e.g. pair {p}: {x2[p] - x1[p]:.2f} mm",
                        )
                    )
            bad = (
                (x1 < mlc.min_position_mm - TOL_MM)
                | (x2 > mlc.max_position_mm + TOL_MM)
                | (x1 > mlc.max_position_mm + TOL_MM)
                | (x2 < mlc.min_position_mm - TOL_MM)
            )
            if bad.any():
                p = _first(bad)
                v.append(
                    Violation(
                        rule="leaf_range",
                        beam=bi,
                        segment=si,
                        leaf_pair=p,
                        message=f"{int(bad.sum())} leaf pair(s) "
                        f"outside [{mlc.min_position_mm}, {mlc.max_position_mm}] mm, "
                        f"e.g. pair {p}: ({x1[p]:.2f}, {x2[p]:.2f})",
                    )
                )
            bad = (x1 > mlc.max_overtravel_mm + TOL_MM) | (x2 < -mlc.max_overtravel_mm - TOL_MM)
            if bad.any():
                p = _first(bad)
                v.append(
                    Violation(
                        rule="overtravel",
                        beam=bi,
                        segment=si,
                        leaf_pair=p,
                        message=f"{int(bad.sum())} leaf tip(s) cross the axis by more than {mlc.max_overtravel_mm} mm, "
                        f"e.g. pair {p}: ({x1[p]:.2f}, {x2[p]:.2f})",
                    )
                )
            bad = x2 - x1 < mlc.min_gap_mm - TOL_MM
            if bad.any():
                p = _first(bad)
                v.append(
                    Violation(
                        rule="min_gap",
                        beam=bi,
                        segment=si,
                        leaf_pair=p,
                        message=f"{int(bad.sum())} pair(s) with gap below {mlc.min_gap_mm} mm, "
                        f"e.g. pair {p}: gap {x2[p] - x1[p]:.3f} mm",
                    )
                )
            if not mlc.interdigitation and P > 1:
                bad = np.minimum(x2[1:] - x1[:-1], x2[:-1] - x1[1:]) < mlc.min_gap_mm - TOL_MM
                if bad.any():
                    p = _first(bad)
                    v.append(
                        Violation(
                            rule="interdigitation",
                            beam=bi,
                            segment=si,
                            leaf_pair=p,
                            message=f"{int(bad.sum())} adjacent pair(s) interdigitate on {mlc.name} "
                            f"(no interdigitation), e.g. pairs {p},{p + 1}: ({x1[p]:.2f}, {x2[p]:.2f}) "
                            f"vs ({x1[p + 1]:.2f}, {x2[p + 1]:.2f})",
                        )
                    )
            for bank, x in (("X1", x1), ("X2", x2)):
                span = float(x.max() - x.min())
                if span > mlc.max_leaf_span_mm + TOL_MM:
                    v.append(
                        Violation(
                            rule="leaf_span",
                            beam=bi,
                            segment=si,
                            message=f"bank {bank} spans {span:.1f} mm > max_leaf_span_mm {mlc.max_leaf_span_mm}",
                        )
                    )
            if getattr(s, "x1_proximal_mm", None) is not None:
                v.extend(_proximal_violations(s, mlc, bi, si))
            for name, jaw, pos, fmax in (
                ("X", machine.jaw_x, s.jaw_x_mm, lim.max_field_x_mm),
                ("Y", machine.jaw_y, s.jaw_y_mm, lim.max_field_y_mm),
            ):
                if (jaw is None) != (pos is None):
                    v.append(
                        Violation(
                            rule="jaw_presence",
                            beam=bi,
                            segment=si,
                            message=f"{name} jaws {'given' if pos is not None else 'missing'} "
                            f"but the machine has {'no' if jaw is None else ''} {name} jaws",
                        )
                    )
                    continue
                if jaw is None or pos is None:  # both absent (the check above caught one absent)
                    continue
                j1, j2 = pos
                if j1 > j2 + TOL_MM or j1 < jaw.min_mm - TOL_MM or j2 > jaw.max_mm + TOL_MM:
                    v.append(
                        Violation(
                            rule="jaw_range",
                            beam=bi,
                            segment=si,
                            message=f"{name} jaws ({j1:.1f}, {j2:.1f}) outside [{jaw.min_mm}, {jaw.max_mm}] or crossed",
                        )
                    )
                if j2 - j1 > fmax + TOL_MM:
                    v.append(
                        Violation(
                            rule="jaw_range",
                            beam=bi,
                            segment=si,
                            message=f"{name} field {j2 - j1:.1f} mm > max {fmax} mm",
                        )
                    )
    return DeliverabilityReport(
        machine=machine.name,
        deliverable=not v,
        num_beams=len(plan.beams),
        num_segments=nseg_total,
        total_mu=plan.total_mu,
        violations=v,
    )
