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
5. if there are more segments than allowed, retry with fewer levels; at one level keep the
   ``max_segments`` segments with most MU (direct aperture optimisation recovers the dose).

Segment MU here are in the fluence map's units (the optimiser's beamlet weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from pydantic import BaseModel

from rayrt.domain.errors import InputError
from rayrt.domain.machine import MachineModel, MLCModel
from rayrt.domain.plan import Segment
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
    dropped_mu: float = 0.0  # MU of segments dropped to honour max_segments (0 when none)


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
    x1: np.ndarray, x2: np.ndarray, open_: np.ndarray, mlc: MLCModel, park_before_mm: float | None = None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Turn one aperture (leaf tips x1 < x2 on open pairs, all machine pairs) into one or more
    apertures that obey the MLC's rules; their union of open areas equals the input's.

    ``park_before_mm``: closed pairs of an interdigitating MLC are parked with their gap before
    this position (mm, along leaf travel) as well as before the open field (see :func:`_park_closed`)."""
    g = _closed_gap(mlc)
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
        short = w < g
        if short.any():
            c = 0.5 * (s.x1[o] + s.x2[o])
            c = np.clip(c, x1min + 0.5 * g, x2max - 0.5 * g)
            s.x1[o] = np.where(short, c - 0.5 * g, s.x1[o])
            s.x2[o] = np.where(short, c + 0.5 * g, s.x2[o])
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
class Sequencer:
    """A leaf sequencer: an integer-matrix decomposition plus the shared machine handling."""

    name: str
    decompose: Callable[[np.ndarray], list[Aperture]]
    description: str = ""
    level_choices: tuple[int, ...] = field(default=(12, 10, 8, 7, 6, 5, 4, 3, 2, 1))

    def sequence(
        self, fluence_map: np.ndarray, beamlets, machine: MachineModel, max_segments: int | None = None
    ) -> list[Segment]:
        """Segments (MU in fluence units) delivering ``fluence_map`` (beamlet rows x columns)."""
        return self.sequence_with_info(fluence_map, beamlets, machine, max_segments).segments

    def sequence_with_info(
        self,
        fluence_map: np.ndarray,
        beamlets,
        machine: MachineModel,
        max_segments: int | None = None,
        levels: int | None = None,
    ) -> SequencingResult:
        layout: BeamletLayout = layout_from_beamlets(beamlets)
        fmap = np.asarray(fluence_map, dtype=float)
        if fmap.shape != layout.shape:
            raise InputError(
                f"fluence map shape {fmap.shape} does not match the beamlet grid {layout.shape}", kind="input"
            )
        if not np.all(np.isfinite(fmap)) or (fmap < 0).any():
            raise InputError("fluence map must be finite and non-negative", kind="input")
        max_segments = int(max_segments or machine.limits.max_segments_per_beam)
        max_segments = min(max_segments, machine.limits.max_segments_per_beam)
        pf, pair_ids = layout.rows_to_pairs(fmap, machine.mlc)
        fmax = float(pf.max()) if pf.size else 0.0
        if fmax <= 0:
            return SequencingResult(segments=[], levels=0, num_segments=0, total_mu=0.0, sequencer=self.name)
        choices = (levels,) if levels else self.level_choices
        best: tuple[int, list[Segment]] | None = None
        for L in choices:
            unit = fmax / L
            intensity = np.rint(pf / unit).astype(np.int64)
            segs = self._segments(
                intensity,
                unit,
                pair_ids,
                layout.col_edges_mm,
                machine,
                (float(layout.row_edges_mm[0]), float(layout.row_edges_mm[-1])),
            )
            best = (L, segs)
            if len(segs) <= max_segments:
                break
        if best is None:
            raise ValueError(f"sequencer {self.name} has no level choices")
        L, segs = best
        dropped = 0.0
        if len(segs) > max_segments:
            segs = sorted(segs, key=lambda s: -s.mu)
            dropped = float(sum(s.mu for s in segs[max_segments:]))
            segs = segs[:max_segments]
        return SequencingResult(
            segments=segs,
            levels=L,
            num_segments=len(segs),
            total_mu=float(sum(s.mu for s in segs)),
            sequencer=self.name,
            dropped_mu=dropped,
        )

    def _segments(self, intensity, unit, pair_ids, col_edges, machine, y_span_mm=None) -> list[Segment]:
        P = machine.mlc.num_pairs
        out = []
        for k, lo, hi in self.decompose(intensity):
            x1 = np.zeros(P)
            x2 = np.zeros(P)
            op = np.zeros(P, dtype=bool)
            o = hi > lo
            x1[pair_ids] = col_edges[lo]
            x2[pair_ids] = col_edges[hi]
            op[pair_ids] = o
            for a, b, c in make_deliverable(x1, x2, op, machine.mlc, park_before_mm=float(col_edges[0])):
                out.append(to_segment(a, b, c, k * unit, machine, y_span_mm, float(col_edges[0])))
        return out


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
