"""Standard segments carried onto a target MLC whose leaves refine the standard's: leaf by leaf.

Where every leaf pair a plan opens is, on the target, a whole number of target pairs (same or
finer leaf boundaries there: the standard's 5 mm leaves on a Millennium 120's centre, an HD120,
an Agility), each target pair takes the leaf positions of the source pair containing it; the
segments are then made deliverable on the target (minimum gap, interdigitation, leaf span). MU
are course MU; positions in mm at the isocentre plane (IEC 61217 beam-limiting-device frame).
"""

from __future__ import annotations

import numpy as np

from rayrt.domain.machine import MachineModel
from rayrt.domain.plan import Plan, Segment
from rayrt.optimize.sequencing import make_deliverable
from rayrt.optimize.sequencing.base import to_segment

__all__ = ["segments_transfer", "transfer_segments"]


def _pair_map(source: MachineModel, target: MachineModel, tol_mm: float = 0.05) -> np.ndarray:
    """For every target leaf pair: the source pair that contains it wholly (-1: none -- it straddles
    a source boundary or lies beyond the source's leaf bank)."""
    sb, tb = source.mlc.boundaries, target.mlc.boundaries
    k = np.searchsorted(sb, tb[:-1] + tol_mm, side="right") - 1
    ok = (k >= 0) & (k < sb.size - 1)
    kk = np.clip(k, 0, sb.size - 2)
    ok &= tb[1:] <= sb[kk + 1] + tol_mm
    return np.where(ok, kk, -1)


def _source_open(s: Segment, source: MachineModel) -> np.ndarray:
    """Open pairs of a source segment: wider than the minimum gap, inside its Y jaws."""
    x1, x2 = np.asarray(s.x1_mm, float), np.asarray(s.x2_mm, float)
    op = x2 - x1 > float(source.mlc.min_gap_mm) + 1e-6
    if s.jaw_y_mm is not None and source.jaw_y is not None:
        b = source.mlc.boundaries
        op &= (b[1:] > s.jaw_y_mm[0] + 1e-6) & (b[:-1] < s.jaw_y_mm[1] - 1e-6)
    if s.jaw_x_mm is not None and source.jaw_x is not None:
        op &= (np.minimum(x2, s.jaw_x_mm[1]) - np.maximum(x1, s.jaw_x_mm[0])) > 1e-6
    return op


def segments_transfer(plan: Plan, source: MachineModel, target: MachineModel) -> bool:
    """Whether every leaf pair the plan opens is, on the target, a whole number of target pairs
    (the target's boundaries refine the source's where the plan opens leaves: same or finer leaves,
    e.g. the standard's 5 mm leaves on a Millennium 120's centre or an HD120): the segments then
    transfer exactly, leaf positions copied, and dose-only recomputation is tried first."""
    pm = _pair_map(source, target)
    covered = np.zeros(source.mlc.num_pairs, dtype=bool)
    covered[pm[pm >= 0]] = True
    sb, tb = source.mlc.boundaries, target.mlc.boundaries
    for b in plan.beams:
        for s in b.segments:
            if s.mu <= 0:
                continue
            op = _source_open(s, source)
            if (op & ~covered).any():
                return False
            # the target's pairs inside each open source pair must fill it (no part of it without a target leaf)
            for p in np.flatnonzero(op):
                t = np.flatnonzero(pm == p)
                if t.size == 0 or abs(tb[t.min()] - sb[p]) > 0.05 or abs(tb[t.max() + 1] - sb[p + 1]) > 0.05:
                    return False
    return True


def transfer_segments(segs: list[Segment], source: MachineModel, target: MachineModel, fx: int) -> list[Segment]:
    """The source's segments on the target's leaves (course MU): each target pair takes the leaf
    positions of the source pair containing it; jaws hug the open pairs and stay within the source
    segment's jaws; then made deliverable on the target (:func:`make_deliverable`), closed pairs
    parked before the leftmost leaf tip of all the beam's source segments (where the source parked
    its closed pairs, outside its beamlet grid: on a machine without X jaws, such as the Agility,
    their minimum gap then stays outside the field)."""
    pm = _pair_map(source, target)
    ok = pm >= 0
    # where the source parked its closed pairs (its sequencer parks them before its beamlet grid) or the field's edge
    lefts = [float(np.min(s.x1_mm)) for s in segs if s.mu > 0]
    park_before = min(lefts) if lefts else None
    out = []
    for s in segs:
        if s.mu <= 0:
            continue
        sx1, sx2 = np.asarray(s.x1_mm, float), np.asarray(s.x2_mm, float)
        if s.jaw_x_mm is not None and source.jaw_x is not None:
            sx1, sx2 = np.maximum(sx1, s.jaw_x_mm[0]), np.minimum(sx2, s.jaw_x_mm[1])
        sop = _source_open(s, source)
        x1 = np.zeros(target.mlc.num_pairs)
        x2 = np.zeros(target.mlc.num_pairs)
        op = np.zeros(target.mlc.num_pairs, dtype=bool)
        x1[ok], x2[ok], op[ok] = sx1[pm[ok]], sx2[pm[ok]], sop[pm[ok]]
        if s.jaw_y_mm is not None and source.jaw_y is not None:
            tb = target.mlc.boundaries
            op &= (tb[1:] > s.jaw_y_mm[0] + 1e-6) & (tb[:-1] < s.jaw_y_mm[1] - 1e-6)
        if not op.any():
            continue
        for a, b_, c in make_deliverable(x1, x2, op, target.mlc, park_before_mm=park_before):
            seg = to_segment(a, b_, c, s.mu * fx, target)
            if seg.jaw_y_mm is not None and s.jaw_y_mm is not None and source.jaw_y is not None:
                lo, hi = max(seg.jaw_y_mm[0], s.jaw_y_mm[0]), min(seg.jaw_y_mm[1], s.jaw_y_mm[1])
                if hi > lo:
                    seg.jaw_y_mm = (lo, hi)
            if seg.jaw_x_mm is not None and s.jaw_x_mm is not None and source.jaw_x is not None:
                lo, hi = max(seg.jaw_x_mm[0], s.jaw_x_mm[0]), min(seg.jaw_x_mm[1], s.jaw_x_mm[1])
                if hi > lo:
                    seg.jaw_x_mm = (lo, hi)
            out.append(seg)
    return out
