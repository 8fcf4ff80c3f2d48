"""Leaf sequencing onto any MLCModel: fluence map -> deliverable step-and-shoot segments.

Steps (the same for every sequencer; only the integer-matrix decomposition differs):

1. resample the beamlet rows onto the machine's leaf pairs (overlap-weighted mean,
   :meth:`BeamletLayout.rows_to_pairs`);
2. quantise to ``levels`` intensity levels (unit = max / levels);
3. decompose the integer matrix into apertures (one open interval per leaf pair);
4. make each aperture deliverable on the machine (:func:`make_deliverable`): minimum gap, closed
   pairs parked where they collide with nothing and their minimum gap is shielded (interdigitating
   MLCs: before the open field and the beamlet grid, i.e. under the X jaw or outside the target's
   projection on a jawless machine), no interdigitation where the MLC forbids it
   (apertures split into runs of consecutive, overlapping open pairs: a closed pair between open
   pairs would have to keep its minimum gap inside the field), maximum leaf span per bank, leaf range and
   over-travel, jaws on the open area within their limits and the beamlet rows' extent (a Y jaw
   may trim a wide end leaf pair part-way); on a dual-layer MLC the proximal layer
   (:func:`proximal_layer`) closes beyond that extent, at its half-leaf offset;
5. segment limits (:class:`~rayrt.domain.segments.SegmentLimits`): segments below the minimum
   open area are removed, a level with more than ``max_segments`` keeps those with most MU x area,
   and the weights of the kept segments are refitted (non-negative least squares, minimum weight)
   to the fluence map, so the removed segments' fluence is re-distributed, not lost; every level is
   tried and the one reproducing the fluence best is emitted (:class:`Sequencer`; direct aperture
   optimisation then recovers the dose).

Segment MU here are in the fluence map's units (the optimiser's beamlet weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from pydantic import BaseModel, Field

from rayrt.domain.errors import InputError
from rayrt.domain.machine import MachineModel, MLCModel
from rayrt.domain.plan import Segment
from rayrt.domain.segments import SegmentLimits, segment_limits, segment_open_area_cm2
from rayrt.optimize.layout import BeamletLayout, layout_from_beamlets
from rayrt.optimize.sequencing.decompose import DECOMPOSITIONS, Aperture

__all__ = [
    "Sequencer",
    "SequencingResult",
    "get_sequencer",
    "list_sequencers",
    "register_sequencer",
    "make_deliverable",
    "jaws_for",
    "proximal_layer",
    "to_segment",
]

_TOL = 1e-6


class SequencingResult(BaseModel):
    """Segments of one beam and how they were obtained."""

    segments: list[Segment]
    levels: int
    num_segments: int
    total_mu: float
    sequencer: str
    dropped_mu: float = 0.0  # decomposition MU of segments removed (min area / max segments / min MU), re-distributed
    fluence_error: float = Field(
        default=0.0, description="relative cell-area-weighted L2 error of the segments' fluence vs the fluence map"
    )
    fluence_ratio: float = Field(
        default=1.0, description="delivered / requested fluence integral (leaf-pair resampled map, MU x area)"
    )
    removed_small: int = Field(default=0, description="segments removed for an open area below the minimum")
    reopened: bool = Field(
        default=False, description="the whole field was below the minimum area: one segment opened to it"
    )


# ----------------------------------------------------------------------------- machine rules
@dataclass
class _Seg:
    x1: np.ndarray
    x2: np.ndarray
    open_: np.ndarray


def _closed_gap(mlc: MLCModel) -> float:
    return float(mlc.min_gap_mm)


def _limits(mlc: MLCModel) -> tuple[float, float, float, float]:
    """(x1 min, x1 max, x2 min, x2 max) from the leaf range and over-travel."""
    return (
        mlc.min_position_mm,
        min(mlc.max_position_mm, mlc.max_overtravel_mm),
        max(mlc.min_position_mm, -mlc.max_overtravel_mm),
        mlc.max_position_mm,
    )


def _conflicts(s: _Seg, g: float) -> list[tuple[int, int]]:
    """Consecutive open pairs (a < b) that cannot both stay open without interdigitation: opposing
    leaves of adjacent pairs must keep ``g`` (x2[q] - x1[p] >= g), and a closed run between them is
    parked at one x* in [max(x1a, x1b), min(x2a, x2b) - g]."""
    op = np.flatnonzero(s.open_)
    if op.size < 2:
        return []
    a, b = op[:-1], op[1:]
    lo = np.maximum(s.x1[a], s.x1[b])
    hi = np.minimum(s.x2[a], s.x2[b]) - g
    bad = lo > hi + _TOL
    return list(zip(a[bad].tolist(), b[bad].tolist()))


def _park_closed(s: _Seg, mlc: MLCModel, g: float, park_before_mm: float | None = None) -> None:
    """Put closed pairs (gap g) where they collide with no neighbour and their gap is shielded.

    The closed pair's minimum gap g (plus the rounded-tip leakage, ``leaf_end_transmission_mm``)
    transmits like an open strip, so it must not sit inside the field:

    * MLCs that allow interdigitation: every closed pair is parked with its gap wholly *before*
      the open field along leaf travel (x* + g + dlg/2 <= min x1 of the open pairs, and before
      ``park_before_mm`` -- the sequencer passes the beamlet grid's first edge, i.e. outside the
      target's projection plus margin): under the X jaw, which hugs the open leaves, or, on a
      jawless machine, outside the target's projection. The bank's maximum leaf span and the leaf
      range are honoured (the gap moves back towards the field only as far as they require).
    * no interdigitation: a closed run between open pairs must sit inside the overlap of its open
      neighbours (x* in [max x1, min x2 - g]); runs beyond the outermost open pair lie under the
      Y jaw (which hugs the open pairs) and follow their single neighbour.
    """
    n = s.open_.size
    op = np.flatnonzero(s.open_)
    if op.size == 0:
        return
    x1min, x1max, x2min, x2max = _limits(mlc)
    if mlc.interdigitation:
        closed = ~s.open_
        if not closed.any():
            return
        hd = 0.5 * float(mlc.leaf_end_transmission_mm)
        edge = float(s.x1[op].min())
        if park_before_mm is not None:
            edge = min(edge, float(park_before_mm))
        x = edge - g - hd - 1.0  # 1 mm clear of the field edge / X jaw
        span = float(mlc.max_leaf_span_mm)
        x = max(x, float(s.x1[op].max()) - span, float(s.x2[op].max()) - span - g)
        x = float(np.clip(x, max(x1min, x2min - g), min(x1max, x2max - g)))
        s.x1[closed] = x
        s.x2[closed] = x + g
        return
    # for every pair: the nearest open pair at or above / below it
    idx = np.arange(n)
    prev_open = np.where(s.open_, idx, -1)
    prev_open = np.maximum.accumulate(prev_open)
    next_open = np.where(s.open_, idx, n)
    next_open = np.minimum.accumulate(next_open[::-1])[::-1]
    closed = ~s.open_
    a = prev_open[closed]
    b = next_open[closed]
    has_a, has_b = a >= 0, b < n
    aa, bb = np.where(has_a, a, np.where(has_b, b, 0)), np.where(has_b, b, np.where(has_a, a, 0))
    lo = np.maximum(s.x1[aa], s.x1[bb])
    hi = np.minimum(s.x2[aa], s.x2[bb]) - g
    xs = np.where(hi >= lo, 0.5 * (lo + hi), 0.5 * (s.x1[aa] + s.x2[aa]) - 0.5 * g)
    xs = np.clip(xs, max(x1min, x2min - g), min(x1max, x2max - g))
    s.x1[closed] = xs
    s.x2[closed] = xs + g


def _split_runs(s: _Seg, conflicts: list[tuple[int, int]]) -> list[_Seg] | None:
    """No interdigitation: split an aperture into runs of consecutive open pairs, cut at every
    interior closed run and between every conflicting pair (None when it is already one run free
    of conflicts).

    A closed pair between two open pairs of such an MLC cannot leave the field: its leaves must
    overlap its open neighbours' openings (x* in [max x1, min x2 - g]), so its minimum gap g -- a
    full 5 mm strip on the MLCi2 -- would transmit inside the X jaws with the segment's MU. Runs
    have closed pairs only beyond their ends, where the Y jaws (hugging the run) cover them."""
    op = np.flatnonzero(s.open_)
    if op.size == 0:
        return None
    bad = {a for a, _ in conflicts}
    cut = (np.diff(op) > 1) | np.isin(op[:-1], list(bad))
    if not cut.any():
        return None
    run = np.concatenate([[0], np.cumsum(cut)])
    out = []
    for r in range(int(run[-1]) + 1):
        o = np.zeros_like(s.open_)
        o[op[run == r]] = True
        out.append(_Seg(s.x1.copy(), s.x2.copy(), o))
    return out


def _split_span(s: _Seg, span: float) -> list[_Seg] | None:
    op = np.flatnonzero(s.open_)
    for x in (s.x1, s.x2):
        v = x[op]
        if v.max() - v.min() > span + _TOL:
            thr = 0.5 * (v.max() + v.min())
            out = []
            for sel in (v < thr, v >= thr):
                o = np.zeros_like(s.open_)
                o[op[sel]] = True
                out.append(_Seg(s.x1.copy(), s.x2.copy(), o))
            return out
    return None


def make_deliverable(
    x1: np.ndarray,
    x2: np.ndarray,
    open_: np.ndarray,
    mlc: MLCModel,
    park_before_mm: float | None = None,
    min_width_mm: float = 0.0,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Turn one aperture (leaf tips x1 < x2 on open pairs, all machine pairs) into one or more
    apertures that obey the MLC's rules; their union of open areas equals the input's (up to the
    widening of narrow open pairs).

    ``park_before_mm``: closed pairs of an interdigitating MLC are parked with their gap before
    this position (mm, along leaf travel) as well as before the open field (see :func:`_park_closed`).
    ``min_width_mm``: open pairs narrower than this (and than the minimum gap) are widened about
    their centre to it (the narrowest opening a segment may have, :class:`~rayrt.domain.segments.SegmentLimits`);
    widening never breaks the pairwise leaf rules (it only moves x1 down and x2 up)."""
    g = _closed_gap(mlc)
    gw = max(g, float(min_width_mm))
    x1min, x1max, x2min, x2max = _limits(mlc)
    queue = [_Seg(np.asarray(x1, float).copy(), np.asarray(x2, float).copy(), np.asarray(open_, bool).copy())]
    out = []
    guard = 0
    while queue:
        guard += 1
        if guard > 10 * mlc.num_pairs + 100:
            raise RuntimeError("make_deliverable did not converge")
        s = queue.pop()
        if not s.open_.any():
            continue
        o = s.open_
        # leaf range and over-travel, then the minimum gap on open pairs (widened about the centre)
        s.x1[o] = np.clip(s.x1[o], x1min, x1max)
        s.x2[o] = np.clip(s.x2[o], x2min, x2max)
        w = s.x2[o] - s.x1[o]
        short = w < gw
        if short.any():
            c = 0.5 * (s.x1[o] + s.x2[o])
            c = np.clip(c, x1min + 0.5 * gw, x2max - 0.5 * gw)
            s.x1[o] = np.where(short, np.minimum(s.x1[o], c - 0.5 * gw), s.x1[o])
            s.x2[o] = np.where(short, np.maximum(s.x2[o], c + 0.5 * gw), s.x2[o])
        s.open_ = o & (s.x2 - s.x1 > _TOL)
        if not s.open_.any():
            continue
        if not mlc.interdigitation:
            parts = _split_runs(s, _conflicts(s, g))
            if parts:
                queue.extend(parts)
                continue
        parts = _split_span(s, mlc.max_leaf_span_mm)
        if parts:
            queue.extend(parts)
            continue
        _park_closed(s, mlc, g, park_before_mm)
        out.append((s.x1, s.x2, s.open_))
    return out


def _within_span(lo: float, hi: float, span_mm: tuple[float, float] | None) -> tuple[float, float]:
    """[lo, hi] clipped to ``span_mm`` (the beamlet rows' Y extent) when they overlap, else unchanged."""
    if span_mm is not None and min(hi, span_mm[1]) > max(lo, span_mm[0]):
        return max(lo, float(span_mm[0])), min(hi, float(span_mm[1]))
    return lo, hi


def jaws_for(
    x1: np.ndarray,
    x2: np.ndarray,
    open_: np.ndarray,
    machine: MachineModel,
    y_span_mm: tuple[float, float] | None = None,
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """Jaw positions (mm) hugging the open area, within the jaws' range and the maximum field size.

    ``y_span_mm``: the Y jaws stay within it (the beamlet rows' extent): a Y jaw may then end
    part-way across a wide leaf pair and trim the field end below the leaf width."""
    b = machine.mlc.boundaries
    op = np.flatnonzero(open_)
    jx = jy = None
    lim = machine.limits
    if machine.jaw_x is not None:
        lo = max(float(x1[op].min()), machine.jaw_x.min_mm)
        hi = min(float(x2[op].max()), machine.jaw_x.max_mm)
        if hi - lo > lim.max_field_x_mm:
            c = 0.5 * (lo + hi)
            lo, hi = c - 0.5 * lim.max_field_x_mm, c + 0.5 * lim.max_field_x_mm
        jx = (lo, hi)
    if machine.jaw_y is not None:
        lo = max(float(b[op.min()]), machine.jaw_y.min_mm)
        hi = min(float(b[op.max() + 1]), machine.jaw_y.max_mm)
        lo, hi = _within_span(lo, hi, y_span_mm)
        if hi - lo > lim.max_field_y_mm:
            c = 0.5 * (lo + hi)
            lo, hi = c - 0.5 * lim.max_field_y_mm, c + 0.5 * lim.max_field_y_mm
        jy = (lo, hi)
    return jx, jy


def proximal_layer(
    x1: np.ndarray,
    x2: np.ndarray,
    open_: np.ndarray,
    mlc: MLCModel,
    y_span_mm: tuple[float, float] | None = None,
    park_before_mm: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Proximal-layer leaf tips (mm) of a dual-layer MLC for one distal aperture: the proximal layer
    shapes the field ends along Y at the half-leaf offset.

    The aperture spans Y = [first open distal pair, last open distal pair] clipped to ``y_span_mm``
    (the beamlet rows' extent: the standard plan's field ends, 5 mm resolution). A proximal pair
    overlapping that span opens over the hull of the open distal pairs it overlaps, so inside the
    span the effective opening (the intersection of both layers) is the distal one; the other
    proximal pairs close with the minimum gap parked before the field (as closed distal pairs of an
    interdigitating MLC are), so a distal pair that straddles the span's end is cut there."""
    b = mlc.boundaries
    pb = mlc.proximal_boundaries
    if pb is None:
        raise ValueError(f"MLC {mlc.name} has no proximal layer (not dual-layer)")
    g = float(mlc.min_gap_mm)
    op = np.flatnonzero(open_)
    Q = pb.size - 1
    px1 = np.zeros(Q)
    px2 = np.zeros(Q)
    x1min, x1max, x2min, x2max = _limits(mlc)
    edge = float(x1[op].min()) if op.size else 0.0
    if park_before_mm is not None:
        edge = min(edge, float(park_before_mm))
    park = edge - g - 0.5 * float(mlc.leaf_end_transmission_mm) - 1.0
    park = float(np.clip(park, max(x1min, x2min - g), min(x1max, x2max - g)))
    px1[:] = park
    px2[:] = park + g
    if op.size == 0:
        return px1, px2
    lo, hi = float(b[op.min()]), float(b[op.max() + 1])
    lo, hi = _within_span(lo, hi, y_span_mm)
    # (Q, P) overlap of proximal pair q with open distal pair p, inside the span
    ya = np.maximum(np.maximum(pb[:-1, None], b[None, :-1]), lo)
    yb = np.minimum(np.minimum(pb[1:, None], b[None, 1:]), hi)
    ovl = (yb - ya > 1e-6) & open_[None, :]
    has = ovl.any(axis=1)
    if has.any():
        px1[has] = np.where(ovl[has], x1[None, :], np.inf).min(axis=1)
        px2[has] = np.where(ovl[has], x2[None, :], -np.inf).max(axis=1)
    return px1, px2


def to_segment(
    x1: np.ndarray,
    x2: np.ndarray,
    open_: np.ndarray,
    mu: float,
    machine: MachineModel,
    y_span_mm: tuple[float, float] | None = None,
    park_before_mm: float | None = None,
) -> Segment:
    jx, jy = jaws_for(x1, x2, open_, machine, y_span_mm)
    seg = Segment(x1_mm=[float(v) for v in x1], x2_mm=[float(v) for v in x2], jaw_x_mm=jx, jaw_y_mm=jy, mu=float(mu))
    if machine.mlc.dual_layer:
        px1, px2 = proximal_layer(x1, x2, open_, machine.mlc, y_span_mm, park_before_mm)
        seg.x1_proximal_mm, seg.x2_proximal_mm = [float(v) for v in px1], [float(v) for v in px2]
    return seg


# ----------------------------------------------------------------------------- sequencer
@dataclass
class _Candidate:
    """One deliverable segment of a level's decomposition and what the weight refit needs."""

    segment: Segment
    mu: float  # decomposition weight (fluence units)
    area_cm2: float
    cover: np.ndarray  # (Pa, C) open fraction of each (leaf pair of the beam, bixel column)
    reopened: bool = False  # a decomposition segment below the minimum area, opened to it


@dataclass
class _LevelResult:
    level: int
    cands: list[_Candidate]
    weights: np.ndarray
    dropped_mu: float
    error: float
    fluence_ratio: float
    removed_small: int


def _refit(A: np.ndarray, b: np.ndarray, min_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Segment weights m >= 0 minimising ||A m - b||² (cell-area weighted rows), then -- with a
    minimum weight -- segments below half of it dropped and the rest refitted with m >= it.
    Returns (weights, keep mask); dropped segments have weight 0."""
    from scipy.optimize import lsq_linear, nnls

    S = A.shape[1]
    keep = np.ones(S, bool)
    if S == 0:
        return np.zeros(0), keep
    m, _ = nnls(A, b, maxiter=50 * S + 100)
    keep = m > 1e-12 * max(float(m.max()), 1e-30)
    if min_weight > 0:
        keep &= m >= 0.5 * min_weight
        if not keep.any():  # nothing reaches half the minimum: keep the strongest at the minimum
            keep[int(np.argmax(m))] = True
        res = lsq_linear(A[:, keep], b, bounds=(min_weight, np.inf), method="bvls", max_iter=200)
        m = np.zeros(S)
        m[keep] = np.maximum(res.x, min_weight)
    m[~keep] = 0.0
    return m, keep


def _grow_to_area(x1: np.ndarray, x2: np.ndarray, open_: np.ndarray, mlc: MLCModel, area_mm2: float) -> None:
    """Widen every open pair by the same amount on both sides (in place) until the leaf-opening x
    leaf-width area reaches ``area_mm2`` (the re-opening of a field smaller than the minimum area)."""
    x1min, x1max, x2min, x2max = _limits(mlc)
    h = mlc.leaf_widths_mm
    for _ in range(4):  # the leaf range may clip the first widening
        a = float(((x2 - x1) * h)[open_].sum())
        if a >= area_mm2 - 1e-6:
            return
        d = (area_mm2 - a) / (2.0 * float(h[open_].sum()))
        x1[open_] = np.clip(x1[open_] - d, x1min, x1max)
        x2[open_] = np.clip(x2[open_] + d, x2min, x2max)


def _grow_on_grid(
    x1: np.ndarray,
    x2: np.ndarray,
    open_: np.ndarray,
    pf: np.ndarray,
    pair_ids: np.ndarray,
    e: np.ndarray,
    mlc: MLCModel,
    area_mm2: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Grow an aperture on the (leaf pair x bixel column) grid until its area reaches ``area_mm2``:
    each step adds the neighbouring strip -- one column on the left or right of every open pair,
    or the next leaf pair above or below with the end pair's interval -- whose mean fluence
    ``pf`` is highest, so a small segment merges into the fluence most like its own. The grown
    aperture is one interval per pair and adds pairs only at its ends (no new interdigitation
    conflict). None when the grid is exhausted first."""
    rows = np.flatnonzero(open_[pair_ids])
    if rows.size == 0:
        return None
    C = e.size - 1
    lo = np.zeros(pair_ids.size, np.int64)
    hi = np.zeros(pair_ids.size, np.int64)
    lo[rows] = np.clip(np.searchsorted(e, x1[pair_ids][rows] + 1e-6, side="right") - 1, 0, C - 1)
    hi[rows] = np.clip(np.searchsorted(e, x2[pair_ids][rows] - 1e-6, side="left"), lo[rows] + 1, C)
    op = np.zeros(pair_ids.size, bool)
    op[rows] = True
    h = mlc.leaf_widths_mm[pair_ids]
    w = np.diff(e)
    cols = np.arange(C)

    def area() -> float:
        return float(sum(h[r] * (e[hi[r]] - e[lo[r]]) for r in np.flatnonzero(op)))

    for _ in range(4 * (C + pair_ids.size)):
        if area() >= area_mm2:
            break
        r_open = np.flatnonzero(op)
        options: list[tuple[float, str]] = []
        left = lo[r_open] > 0
        if left.all():
            options.append((float(np.mean(pf[r_open, lo[r_open] - 1])), "left"))
        right = hi[r_open] < C
        if right.all():
            options.append((float(np.mean(pf[r_open, hi[r_open]])), "right"))
        top, bot = int(r_open.max()), int(r_open.min())
        if top + 1 < pair_ids.size and pair_ids[top + 1] == pair_ids[top] + 1:
            sel = (cols >= lo[top]) & (cols < hi[top])
            options.append((float(np.mean(pf[top + 1, sel])), "up"))
        if bot - 1 >= 0 and pair_ids[bot - 1] == pair_ids[bot] - 1:
            sel = (cols >= lo[bot]) & (cols < hi[bot])
            options.append((float(np.mean(pf[bot - 1, sel])), "down"))
        if not options:
            return None
        _, move = max(options, key=lambda o: o[0])
        if move == "left":
            lo[r_open] -= 1
        elif move == "right":
            hi[r_open] += 1
        elif move == "up":
            op[top + 1], lo[top + 1], hi[top + 1] = True, lo[top], hi[top]
        else:
            op[bot - 1], lo[bot - 1], hi[bot - 1] = True, lo[bot], hi[bot]
    if area() < area_mm2:
        return None
    del w
    a, z, c = x1.copy(), x2.copy(), open_.copy()
    r = np.flatnonzero(op)
    a[pair_ids[r]] = np.minimum(e[lo[r]], np.where(open_[pair_ids[r]], x1[pair_ids[r]], np.inf))
    z[pair_ids[r]] = np.maximum(e[hi[r]], np.where(open_[pair_ids[r]], x2[pair_ids[r]], -np.inf))
    c[pair_ids[r]] = True
    return a, z, c


@dataclass
class Sequencer:
    """A leaf sequencer: an integer-matrix decomposition plus the shared machine handling.

    Segment limits (:class:`~rayrt.domain.segments.SegmentLimits`, effective = the stricter of the
    machine's and the planning request's) hold for every emitted segment:

    * **minimum area** -- segments whose open area (leaf opening x leaf width over the open pairs,
      inside the jaws, at the isocenter plane) is below ``min_area_cm2`` are removed; their fluence
      is re-distributed over the kept segments by a non-negative, cell-area-weighted least-squares
      refit of all segment weights to the (leaf-pair resampled) fluence map. A fluence map whose
      whole field is smaller than the minimum gets one segment opened to the minimum area;
    * **minimum width** -- open pairs are widened about their centre to ``min_width_mm``
      (:func:`make_deliverable`);
    * **maximum segments** -- quantisation levels are tried from the finest down to the first
      whose segments fit the count; a finer level with too many segments keeps those with the
      largest MU x area and refits their weights. Of the levels tried, the one whose refitted
      segments reproduce the fluence best (relative L2 error) is emitted;
    * **minimum MU** (``min_weight``, fluence units = MU per fraction x fractions; 0: none) -- the
      refit drops segments below half of it and holds the others at >= it.

    ``dropped_mu`` reports the decomposition MU of the removed segments (re-distributed, not lost);
    ``fluence_ratio`` the delivered / requested fluence integral (MU·cm²).
    """

    name: str
    decompose: Callable[[np.ndarray], list[Aperture]]
    description: str = ""
    level_choices: tuple[int, ...] = field(default=(12, 10, 8, 7, 6, 5, 4, 3, 2, 1))

    def sequence(
        self,
        fluence_map: np.ndarray,
        beamlets,
        machine: MachineModel,
        max_segments: int | None = None,
        *,
        limits: SegmentLimits | None = None,
        min_weight: float = 0.0,
    ) -> list[Segment]:
        """Segments (MU in fluence units) delivering ``fluence_map`` (beamlet rows x columns)."""
        return self.sequence_with_info(
            fluence_map, beamlets, machine, max_segments, limits=limits, min_weight=min_weight
        ).segments

    def sequence_with_info(
        self,
        fluence_map: np.ndarray,
        beamlets,
        machine: MachineModel,
        max_segments: int | None = None,
        levels: int | None = None,
        *,
        limits: SegmentLimits | None = None,
        min_weight: float = 0.0,
    ) -> SequencingResult:
        """Segments of one beam and how they were obtained.

        ``max_segments``: per beam (capped by ``limits.max_segments`` and the machine's limit);
        ``limits``: the effective segment limits (None: the machine's own,
        :func:`~rayrt.domain.segments.segment_limits`); ``min_weight``: minimum segment weight in
        the fluence map's units (0: none; DAO enforces the MU minimum in any case)."""
        layout: BeamletLayout = layout_from_beamlets(beamlets)
        fmap = np.asarray(fluence_map, dtype=float)
        if fmap.shape != layout.shape:
            raise InputError(
                f"fluence map shape {fmap.shape} does not match the beamlet grid {layout.shape}", kind="input"
            )
        if not np.all(np.isfinite(fmap)) or (fmap < 0).any():
            raise InputError("fluence map must be finite and non-negative", kind="input")
        lim = limits or segment_limits(machine)
        caps = [machine.limits.max_segments_per_beam, int(max_segments or machine.limits.max_segments_per_beam)]
        if lim.max_segments is not None:
            caps.append(int(lim.max_segments))
        max_segments = min(caps)
        pf, pair_ids = layout.rows_to_pairs(fmap, machine.mlc)
        fmax = float(pf.max()) if pf.size else 0.0
        if fmax <= 0:
            return SequencingResult(segments=[], levels=0, num_segments=0, total_mu=0.0, sequencer=self.name)
        y_span = (float(layout.row_edges_mm[0]), float(layout.row_edges_mm[-1]))
        e = np.asarray(layout.col_edges_mm, dtype=float)
        cell = np.sqrt(machine.mlc.leaf_widths_mm[pair_ids][:, None] * np.diff(e)[None, :])  # sqrt(mm²)
        b = (pf * cell).ravel()
        total = float(np.sum(pf * cell**2))  # fluence integral (fluence units x mm²)
        best: _LevelResult | None = None
        for L in (levels,) if levels else self.level_choices:
            unit = fmax / L
            intensity = np.rint(pf / unit).astype(np.int64)
            cands, small, lost = self._candidates(intensity, unit, pair_ids, e, machine, y_span, lim, pf)
            if not cands:
                continue
            A = np.stack([(c.cover * cell).ravel() for c in cands], axis=1)
            mu = np.array([c.mu for c in cands])
            # weights of the kept segments refitted to the (unquantised) map: the fluence of removed
            # segments and the quantisation error are re-distributed over them
            w, keep = _refit(A, b, 0.0)
            fits = int(keep.sum()) <= max_segments
            if not fits:
                # the segments contributing most fluence (weight x area) after a free refit
                score = np.where(keep, w * np.array([c.area_cm2 for c in cands]), -1.0)
                keep = np.zeros(len(cands), bool)
                keep[np.argsort(-score, kind="stable")[:max_segments]] = True
            idx = np.flatnonzero(keep)
            w2, keep2 = _refit(A[:, idx], b, float(min_weight))
            weights = np.zeros(len(cands))
            weights[idx[keep2]] = w2[keep2]
            dropped = lost + float(mu[weights <= 0].sum())
            fit = A @ weights
            err = float(np.linalg.norm(fit - b) / max(float(np.linalg.norm(b)), 1e-30))
            ratio = float(np.sum(fit * cell.ravel()) / max(total, 1e-30))
            cur = _LevelResult(L, cands, weights, dropped, err, ratio, small)
            if fits:
                # the finest level within the segment count (as many segments as allowed: DAO's freedom),
                # unless a finer level cut to the count reproduced the map better (coarser levels rarely do:
                # the search stops here)
                if best is None or cur.error <= best.error + 1e-9:
                    best = cur
                break
            if best is None or cur.error < best.error - 1e-9:
                best = cur
        if best is None:
            return self._reopened(pf, pair_ids, e, machine, y_span, lim, cell, b, total, float(min_weight))
        segs = []
        for c, w_ in zip(best.cands, best.weights):
            if w_ > 0:
                segs.append(c.segment.model_copy(update={"mu": float(w_)}))
        return SequencingResult(
            segments=segs,
            levels=best.level,
            num_segments=len(segs),
            total_mu=float(sum(s.mu for s in segs)),
            sequencer=self.name,
            dropped_mu=best.dropped_mu,
            fluence_error=round(best.error, 6),
            fluence_ratio=round(best.fluence_ratio, 6),
            removed_small=best.removed_small,
        )

    def _candidates(
        self, intensity, unit, pair_ids, col_edges, machine, y_span_mm, lim, pf=None
    ) -> tuple[list[_Candidate], int, float]:
        """Deliverable segments of one level's decomposition; a segment below the minimum area is
        replaced by itself opened to the minimum (every open pair widened equally, :func:`_grow_to_area`).
        Returns (candidates, number of segments below the minimum area, MU of those that could
        not be re-opened)."""
        P = machine.mlc.num_pairs
        e = col_edges
        wcol = np.diff(e)
        out = []
        small = 0
        lost = 0.0
        for k, lo, hi in self.decompose(intensity):
            x1 = np.zeros(P)
            x2 = np.zeros(P)
            op = np.zeros(P, dtype=bool)
            o = hi > lo
            x1[pair_ids] = e[lo]
            x2[pair_ids] = e[hi]
            op[pair_ids] = o
            for a, z, c in make_deliverable(
                x1, x2, op, machine.mlc, park_before_mm=float(e[0]), min_width_mm=lim.min_width_mm
            ):
                seg = to_segment(a, z, c, k * unit, machine, y_span_mm, float(e[0]))
                cand = self._candidate(seg, a, z, c, float(k * unit), pair_ids, e, wcol, machine)
                if cand.area_cm2 >= lim.min_area_cm2 - 1e-9:
                    out.append(cand)
                    continue
                small += 1
                grown = self._grown(a, z, c, float(k * unit), machine, y_span_mm, lim, pair_ids, e, wcol, pf)
                if grown:
                    out.extend(grown)
                else:
                    lost += float(k * unit)
        return out, small, lost

    def _grown(self, a, z, c, mu, machine, y_span_mm, lim, pair_ids, e, wcol, pf=None) -> list[_Candidate]:
        """Segment (a, z, c) opened to the minimum area; [] when the MLC cannot (leaf range).

        First grown over the beamlet grid towards the most similar fluence (:func:`_grow_on_grid`:
        one bixel column or one leaf pair at a time, where the fluence map is highest), else
        every open pair widened equally."""
        if pf is not None:
            g = _grow_on_grid(a, z, c, pf, pair_ids, e, machine.mlc, 100.0 * lim.min_area_cm2 * 1.02)
            if g is not None:
                a2, z2, c2 = g
                park = float(e[0])
                out = []
                for a3, z3, c3 in make_deliverable(
                    a2, z2, c2, machine.mlc, park_before_mm=park, min_width_mm=lim.min_width_mm
                ):
                    seg = to_segment(a3, z3, c3, mu, machine, y_span_mm, park)
                    cand = self._candidate(seg, a3, z3, c3, mu, pair_ids, e, wcol, machine)
                    cand.reopened = True
                    if cand.area_cm2 >= lim.min_area_cm2 - 1e-9:
                        out.append(cand)
                if out:
                    return out
        a, z = a.copy(), z.copy()
        target = 100.0 * lim.min_area_cm2
        for factor in (1.02, 1.2, 1.5):  # the jaws (Y trim of wide end pairs) may cut the widened field
            _grow_to_area(a, z, c, machine.mlc, target * factor)
            park = float(min(e[0], a[c].min()))
            out = []
            for a2, z2, c2 in make_deliverable(
                a, z, c, machine.mlc, park_before_mm=park, min_width_mm=lim.min_width_mm
            ):
                seg = to_segment(a2, z2, c2, mu, machine, y_span_mm, park)
                cand = self._candidate(seg, a2, z2, c2, mu, pair_ids, e, wcol, machine)
                cand.reopened = True
                if cand.area_cm2 >= lim.min_area_cm2 - 1e-9:
                    out.append(cand)
            if out:
                return out
        return []

    @staticmethod
    def _candidate(seg, a, z, c, mu, pair_ids, e, wcol, machine) -> _Candidate:
        ov = np.clip(np.minimum(z[pair_ids, None], e[None, 1:]) - np.maximum(a[pair_ids, None], e[None, :-1]), 0, None)
        if seg.jaw_x_mm is not None:
            jx = seg.jaw_x_mm
            ov = np.minimum(ov, np.clip(np.minimum(jx[1], e[None, 1:]) - np.maximum(jx[0], e[None, :-1]), 0, None))
        cover = ov / wcol[None, :] * c[pair_ids, None]
        if seg.jaw_y_mm is not None:  # a Y jaw may end part-way across a wide end pair
            b = machine.mlc.boundaries
            lo, hi = b[pair_ids], b[pair_ids + 1]
            cover = (
                cover
                * (np.clip(np.minimum(hi, seg.jaw_y_mm[1]) - np.maximum(lo, seg.jaw_y_mm[0]), 0, None) / (hi - lo))[
                    :, None
                ]
            )
        return _Candidate(seg, mu, segment_open_area_cm2(seg, machine), cover)

    def _reopened(self, pf, pair_ids, e, machine, y_span, lim, cell, b, total, min_weight) -> SequencingResult:
        """Every segment of every level is below the minimum area: one segment over the whole field
        (bixels above half the maximum, else every non-zero bixel), opened to the minimum area."""
        P = machine.mlc.num_pairs
        wcol = np.diff(e)
        mask = pf >= 0.5 * float(pf.max())
        cols = np.arange(pf.shape[1])
        x1 = np.zeros(P)
        x2 = np.zeros(P)
        op = np.zeros(P, dtype=bool)
        has = mask.any(axis=1)
        lo = np.where(has, np.where(mask, cols[None, :], pf.shape[1]).min(axis=1), 0)
        hi = np.where(has, np.where(mask, cols[None, :] + 1, 0).max(axis=1), 0)
        x1[pair_ids], x2[pair_ids], op[pair_ids] = e[lo], e[hi], has
        _grow_to_area(x1, x2, op, machine.mlc, 100.0 * lim.min_area_cm2 * 1.02)
        cands = []
        for a, z, c in make_deliverable(
            x1, x2, op, machine.mlc, park_before_mm=float(min(e[0], x1[op].min())), min_width_mm=lim.min_width_mm
        ):
            seg = to_segment(a, z, c, 0.0, machine, None, float(min(e[0], a[c].min())))
            cand = self._candidate(seg, a, z, c, 0.0, pair_ids, e, wcol, machine)
            if cand.area_cm2 >= lim.min_area_cm2 - 1e-9:
                cands.append(cand)
        if not cands:
            return SequencingResult(segments=[], levels=0, num_segments=0, total_mu=0.0, sequencer=self.name)
        A = np.stack([(c.cover * cell).ravel() for c in cands], axis=1)
        w, _ = _refit(A, b, min_weight)
        if not (w > 0).any():
            # the refit found no use for the opened field: deliver the fluence integral through it
            w = np.zeros(len(cands))
            w[0] = max(total / max(float(np.sum(cands[0].cover * cell**2)), 1e-30), min_weight)
        segs = [c.segment.model_copy(update={"mu": float(x)}) for c, x in zip(cands, w) if x > 0]
        fit = A @ w
        return SequencingResult(
            segments=segs,
            levels=1,
            num_segments=len(segs),
            total_mu=float(sum(s.mu for s in segs)),
            sequencer=self.name,
            fluence_error=round(float(np.linalg.norm(fit - b) / max(float(np.linalg.norm(b)), 1e-30)), 6),
            fluence_ratio=round(float(np.sum(fit * cell.ravel()) / max(total, 1e-30)), 6),
            reopened=True,
        )


_REGISTRY: dict[str, Sequencer] = {}


def register_sequencer(seq: Sequencer) -> None:
    _REGISTRY[seq.name] = seq


def get_sequencer(name: str) -> Sequencer:
    if name not in _REGISTRY:
        raise InputError(
            f"unknown sequencer '{name}'; available: {', '.join(sorted(_REGISTRY))}", kind="input", field="sequencer"
        )
    return _REGISTRY[name]


def list_sequencers() -> list[str]:
    return sorted(_REGISTRY)


register_sequencer(
    Sequencer("sweep", DECOMPOSITIONS["sweep"], "unidirectional sliding-window step-and-shoot (minimum MU)")
)
register_sequencer(Sequencer("xia_verhey", DECOMPOSITIONS["xia_verhey"], "Xia-Verhey reducing levels (few segments)"))
