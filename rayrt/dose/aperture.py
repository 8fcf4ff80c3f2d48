"""Dose of MLC/jaw apertures (step-and-shoot segments) through the bixel Dij.

Approach (the same for plan dose, QA recompute, imported RTPLANs and conversion): a segment becomes
an *effective fluence per bixel* -- the bixel-averaged transmission of the collimation, times the
segment's MU and its head-scatter factor -- and the dose is ``Dij_beam @ fluence``:

    T(x, y) = T_distal(x; pair at y) * T_proximal(x; pair at y) * T_jawX(x) * T_jawY(y)
    T_layer = 1 between the leaf tips of the pair covering y (widened by the dosimetric leaf gap
              ``mlc.leaf_end_transmission_mm`` / 2 at each rounded tip, open pairs only),
              ``mlc.transmission`` (inter-/intra-leaf) elsewhere
    T_proximal = 1 unless the segment positions the proximal layer of a dual-layer MLC
              (``Segment.x1_proximal_mm``/``x2_proximal_mm``, Halcyon): a point is open only where
              both layers (and the jaws) are open; behind one layer the transmission is t, behind
              both t**2 (``mlc.transmission`` is the per-layer value of the machine YAML)
    T_jaw*  = 1 inside the jaws, ``jaw.transmission`` outside (machines without jaws: 1)
    fluence_b = sum_s  mu_s * Sc(eq. square of segment s) * mean of T over bixel b

The mean over the bixel rectangle is exact for these piecewise-constant functions: along Y the
bixel row is cut into the elementary intervals between any leaf boundary of either layer (and the
Y jaws), along X the mean of a product of "1 inside [a, b], t outside" factors is a sum of overlap
lengths of intersections (:func:`_mean_product`). So bixel rows may be finer than the leaves, end
part-way across a leaf pair (Y jaws trimming a wide leaf, MLCi2) or straddle the proximal layer's
half-leaf offset; rows equal to the leaf pairs give the classic per-row result. A fully open
bixel gets fluence ``mu * Sc``; since a Dij column is the dose of 1 MU through the bixel opening,
``Dij @ aperture_fluence(...)`` is the aperture's dose in Gy. :func:`aperture_dose` does exactly
that on a bixel grid covering the field (:func:`aperture_beamlet_grid`: the machine's rows, split
where a Y jaw or the proximal layer ends part-way across a row).

Approximations: transmission outside the beamlet grid (beyond the field + pad in
:func:`aperture_dose`) and outside both leaf banks is ignored; :func:`segment_transmission_gradient`
(direct aperture optimisation) differentiates the distal layer on leaf-pair rows only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rayrt.domain.errors import InputError
from rayrt.domain.machine import MachineModel
from rayrt.domain.plan import Beam, Segment
from rayrt.dose.geometry import BeamletGrid, beamlet_grid_for_field, row_leaf_pair
from rayrt.imaging.volume import Grid, Volume


def _overlap(a0: np.ndarray, a1: np.ndarray, b0, b1) -> np.ndarray:
    return np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0.0, None)


def _check_segment(seg: Segment, machine: MachineModel) -> None:
    n = machine.mlc.num_pairs
    if len(seg.x1_mm) != n:
        raise InputError(
            f"segment has {len(seg.x1_mm)} leaf pairs, machine {machine.name}'s MLC has {n}", field="segments"
        )
    prox = _proximal_layer(seg, machine)
    if prox is not None and len(prox.x1_mm) != prox.boundaries_mm.size - 1:
        raise InputError(
            f"segment has {len(prox.x1_mm)} proximal leaf pairs, "
            f"machine {machine.name}'s proximal layer has {prox.boundaries_mm.size - 1}",
            field="segments",
        )


def segment_equivalent_square_mm(seg: Segment, machine: MachineModel) -> float:
    """Equivalent square (mm, 2XY/(X+Y)) of the segment's collimated field, for the head-scatter factor."""
    _check_segment(seg, machine)
    x1 = np.asarray(seg.x1_mm, float)
    x2 = np.asarray(seg.x2_mm, float)
    open_ = x2 > x1
    if not open_.any():
        return 0.0
    b = machine.mlc.boundaries
    xa, xb = x1[open_].min(), x2[open_].max()
    ya, yb = b[:-1][open_].min(), b[1:][open_].max()
    if machine.jaw_x is not None and seg.jaw_x_mm is not None:
        xa, xb = max(xa, seg.jaw_x_mm[0]), min(xb, seg.jaw_x_mm[1])
    if machine.jaw_y is not None and seg.jaw_y_mm is not None:
        ya, yb = max(ya, seg.jaw_y_mm[0]), min(yb, seg.jaw_y_mm[1])
    X, Y = max(xb - xa, 0.0), max(yb - ya, 0.0)
    return 0.0 if X + Y <= 0 else 2 * X * Y / (X + Y)


class _SegmentGeometry:
    """Per-bixel geometry of one segment on a beamlet grid (leaf-pair rows), for the transmission
    gradient: bixel column edges ``c0..c1`` and row edges ``r0..r1`` (mm), the leaf tips of each
    bixel's leaf pair widened by half the dosimetric leaf gap (``o0``, ``o1``), which pairs are
    open, the X jaw opening ``j0..j1`` (infinite without X jaws) and the Y-jaw factor ``ty``."""

    def __init__(self, beamlets: BeamletGrid, segment: Segment, machine: MachineModel):
        _check_segment(segment, machine)
        pair = row_leaf_pair(machine)[beamlets.rows]
        self.w = beamlets.bixel_width_mm
        self.c0 = beamlets.u_lo_mm  # the grid's own column edges (any column offset)
        self.c1 = self.c0 + self.w
        x1 = np.asarray(segment.x1_mm, float)[pair]
        x2 = np.asarray(segment.x2_mm, float)[pair]
        self.is_open = x2 > x1
        half_dlg = 0.5 * machine.mlc.leaf_end_transmission_mm
        self.o0, self.o1 = x1 - half_dlg, x2 + half_dlg
        self.t_m = machine.mlc.transmission
        if machine.jaw_x is not None and segment.jaw_x_mm is not None:
            self.j0, self.j1 = float(segment.jaw_x_mm[0]), float(segment.jaw_x_mm[1])
            self.t_jx = machine.jaw_x.transmission
        else:
            self.j0, self.j1, self.t_jx = -np.inf, np.inf, 1.0
        if machine.jaw_y is not None and segment.jaw_y_mm is not None:
            e = beamlets.row_edges_mm
            r0, r1 = e[beamlets.rows], e[beamlets.rows + 1]
            f = _overlap(r0, r1, float(segment.jaw_y_mm[0]), float(segment.jaw_y_mm[1])) / (r1 - r0)
            self.ty = f + machine.jaw_y.transmission * (1.0 - f)
        else:
            self.ty = 1.0


class _ProximalLayer(NamedTuple):
    """The proximal layer a segment positions: the machine's proximal leaf boundaries (mm) and the
    segment's proximal-layer tips per pair (mm)."""

    boundaries_mm: np.ndarray
    x1_mm: list[float]
    x2_mm: list[float]


def _proximal_layer(seg: Segment, machine: MachineModel) -> _ProximalLayer | None:
    """The proximal layer when the segment positions one on a dual-layer MLC, else None (one layer)."""
    pb = machine.mlc.proximal_boundaries  # None exactly when the MLC is single-layer
    if pb is None or seg.x1_proximal_mm is None or seg.x2_proximal_mm is None:
        return None
    return _ProximalLayer(pb, seg.x1_proximal_mm, seg.x2_proximal_mm)


class _RowPieces:
    """Elementary Y intervals of the collimation over a bixel grid's rows, cached per grid.

    ``single``: the leaf pairs (rows beyond every pair get no fluence). ``dual``: the intervals
    between any distal or proximal boundary of a dual-layer MLC, each with its distal pair ``d``
    and proximal pair ``q`` (-1: beyond that layer's bank, i.e. behind a closed leaf). Stored
    sparsely as one entry per (bixel, interval overlapping its row): bixel ``j``, interval ``k``,
    the interval's ends ``e0``/``e1`` and the row's ``r0``/``r1`` (mm), the overlap ``ov`` (mm),
    so a segment costs O(bixels x intervals per row), as the per-row formula did."""

    def __init__(self, beamlets: BeamletGrid, machine: MachineModel):
        rows = np.asarray(beamlets.rows)
        self.n = rows.size
        self.w = float(beamlets.bixel_width_mm)
        self.c0 = np.asarray(beamlets.u_lo_mm, float)  # the grid's own column edges (any column offset)
        e = np.asarray(beamlets.row_edges_mm, float)
        self.rows_u, self.inv = np.unique(rows, return_inverse=True)
        self.r0u, self.r1u = e[self.rows_u], e[self.rows_u + 1]
        self.machine = machine
        self._cache: dict[str, dict] = {}

    def _entries(self, e0: np.ndarray, e1: np.ndarray, **idx: np.ndarray) -> dict:
        ov = _overlap(e0[:, None], e1[:, None], self.r0u[None, :], self.r1u[None, :])  # (K, R) mm
        rr, kk = np.nonzero(ov.T > 0)  # sorted by row
        cnt = np.bincount(rr, minlength=self.rows_u.size)
        start = np.cumsum(cnt) - cnt
        c = cnt[self.inv]
        j = np.repeat(np.arange(self.n), c)
        pos = start[self.inv][j] + np.arange(j.size) - np.repeat(np.cumsum(c) - c, c)
        k, r = kk[pos], rr[pos]
        out = {"j": j, "e0": e0[k], "e1": e1[k], "r0": self.r0u[r], "r1": self.r1u[r], "ov": ov[k, r], "c0": self.c0[j]}
        out.update({name: v[k] for name, v in idx.items()})
        return out

    def single(self) -> dict:
        if "single" not in self._cache:
            b = self.machine.mlc.boundaries
            self._cache["single"] = self._entries(b[:-1], b[1:], d=np.arange(b.size - 1))
        return self._cache["single"]

    def dual(self) -> dict:
        if "dual" not in self._cache:
            b, pb = self.machine.mlc.boundaries, self.machine.mlc.proximal_boundaries
            if pb is None:
                raise ValueError(f"machine {self.machine.name}'s MLC has no proximal layer")
            E = np.unique(np.concatenate([b, pb]))
            mid = 0.5 * (E[:-1] + E[1:])
            d = np.searchsorted(b, mid) - 1
            d = np.where((d >= 0) & (d < b.size - 1), d, -1)
            q = np.searchsorted(pb, mid) - 1
            q = np.where((q >= 0) & (q < pb.size - 1), q, -1)
            self._cache["dual"] = self._entries(E[:-1], E[1:], d=d, q=q)
        return self._cache["dual"]


def _layer_interval(x1_mm, x2_mm, idx: np.ndarray, half_dlg: float) -> tuple[np.ndarray, np.ndarray]:
    """Open X interval [a, z] (mm, widened by half the dosimetric leaf gap at each tip) of the leaf
    pair ``idx`` of each entry; closed pairs and ``idx`` -1 give an empty one."""
    x1 = np.asarray(x1_mm, float)
    x2 = np.asarray(x2_mm, float)
    ok = idx >= 0
    i = np.where(ok, idx, 0)
    op = ok & (x2[i] > x1[i])
    return np.where(op, x1[i] - half_dlg, 0.0), np.where(op, x2[i] + half_dlg, 0.0)


def _mean_product(c0: np.ndarray, c1: np.ndarray, w: float, factors: list[tuple]) -> np.ndarray:
    """Mean over each bixel column [c0, c1] (width w) of prod_k T_k(x), T_k = 1 on [a_k, z_k] and
    t_k elsewhere: sum over subsets S of the factors of prod_{k in S} (1 - t_k) prod_{k not in S} t_k
    x overlap(intersection of the [a_k, z_k] in S, column) / w -- exact for piecewise-constant T."""
    n = len(factors)
    out = np.zeros(np.broadcast(c0, c1).shape)
    for mask in range(1 << n):
        coef = 1.0
        lo, hi = c0, c1
        for k, (a, z, t) in enumerate(factors):
            if mask >> k & 1:
                coef *= 1.0 - t
                lo, hi = np.maximum(lo, a), np.minimum(hi, z)
            else:
                coef *= t
        if coef != 0.0:
            out = out + coef * np.clip(hi - lo, 0.0, None)
    return out / w


def _transmission(pieces: _RowPieces, segment: Segment, machine: MachineModel) -> np.ndarray:
    """Mean transmission T per bixel of one segment (see the module docstring)."""
    hd = 0.5 * machine.mlc.leaf_end_transmission_mm
    t = machine.mlc.transmission
    prox = _proximal_layer(segment, machine)
    factors: list[tuple[np.ndarray | float, np.ndarray | float, float]]
    if prox is not None:
        en = pieces.dual()
        factors = [
            (*_layer_interval(segment.x1_mm, segment.x2_mm, en["d"], hd), t),
            (*_layer_interval(prox.x1_mm, prox.x2_mm, en["q"], hd), t),
        ]
    else:
        en = pieces.single()
        factors = [(*_layer_interval(segment.x1_mm, segment.x2_mm, en["d"], hd), t)]
    if machine.jaw_x is not None and segment.jaw_x_mm is not None:
        factors.append((float(segment.jaw_x_mm[0]), float(segment.jaw_x_mm[1]), machine.jaw_x.transmission))
    h = en["r1"] - en["r0"]
    if machine.jaw_y is not None and segment.jaw_y_mm is not None:
        lo, hi = np.maximum(en["e0"], float(segment.jaw_y_mm[0])), np.minimum(en["e1"], float(segment.jaw_y_mm[1]))
        inside = np.where(hi > lo, _overlap(lo, hi, en["r0"], en["r1"]), 0.0)
        fy = (inside + machine.jaw_y.transmission * (en["ov"] - inside)) / h
    else:
        fy = en["ov"] / h
    tx = _mean_product(en["c0"], en["c0"] + pieces.w, pieces.w, factors)
    return np.bincount(en["j"], weights=fy * tx, minlength=pieces.n)


def segment_transmission(beamlets: BeamletGrid, segment: Segment, machine: MachineModel) -> np.ndarray:
    """Mean collimator transmission T over each bixel of the grid for one segment (0..1, no MU, no Sc).

    Exact on any bixel rows (leaf pairs, half pairs of a dual-layer MLC, sub-rows ending at a Y
    jaw); with both layers of a dual-layer MLC when the segment positions the proximal one."""
    _check_segment(segment, machine)
    return _transmission(_RowPieces(beamlets, machine), segment, machine)


def segment_transmission_gradient(
    beamlets: BeamletGrid, segment: Segment, machine: MachineModel
) -> tuple[np.ndarray, np.ndarray]:
    """d T / d x1 and d T / d x2 per bixel (1/mm): how each bixel's transmission changes with its row's leaf tips.

    For direct aperture optimisation: the gradient of ``Dij @ (mu * Sc * T)`` with respect to
    leaf ``x2_mm[p]`` is ``mu * Sc * Dij[:, rows of p] @ dT_dx2`` (Sc held fixed). Zero for closed
    pairs and where the tip lies outside the bixel column or behind a jaw.
    """
    g = _SegmentGeometry(beamlets, segment, machine)
    o0, o1, c0, c1, j0, j1 = g.o0, g.o1, g.c0, g.c1, g.j0, g.j1
    t_m, t_jx = g.t_m, g.t_jx
    in1 = g.is_open & (o1 > c0) & (o1 < c1)
    in0 = g.is_open & (o0 > c0) & (o0 < c1)
    # dA (open and inside the jaws) and dC (open) with respect to each tip
    dA1 = in1 & (o1 < j1) & (o1 > j0)
    dA0 = in0 & (o0 > j0) & (o0 < j1)
    k_a = 1.0 - t_m - t_jx + t_m * t_jx
    k_c = t_jx - t_m * t_jx
    d_x2 = (k_a * dA1 + k_c * in1) / g.w * g.ty
    d_x1 = -(k_a * dA0 + k_c * in0) / g.w * g.ty
    return d_x1, d_x2


def segment_head_scatter(segment: Segment, machine: MachineModel) -> float:
    """Head-scatter factor Sc of a segment: the machine's Sc table at the segment's equivalent square."""
    return float(machine.beam.head_scatter_at(segment_equivalent_square_mm(segment, machine)))


def segment_fluence(beamlets: BeamletGrid, segment: Segment, machine: MachineModel) -> np.ndarray:
    """Effective fluence per bixel of one segment per MU: transmission x head-scatter factor Sc."""
    return segment_transmission(beamlets, segment, machine) * segment_head_scatter(segment, machine)


def aperture_fluence(beamlets: BeamletGrid, segments: list[Segment], machine: MachineModel) -> np.ndarray:
    """MU-weighted effective fluence per bixel of step-and-shoot segments: ``dose = Dij_beam @ this``.

    The one fluence of rayrt's segment doses (planner final dose, QA recompute, imported RTPLANs,
    conversion): exact on any bixel rows, with Y jaws trimming leaf pairs part-way and both layers
    of a dual-layer MLC (see the module docstring)."""
    pieces = _RowPieces(beamlets, machine)
    out = np.zeros(pieces.n)
    for s in segments:
        if s.mu > 0:
            _check_segment(s, machine)
            out += s.mu * segment_head_scatter(s, machine) * _transmission(pieces, s, machine)
    return out


def field_extent_mm(
    segments: list[Segment], machine: MachineModel, pad_mm: float = 10.0
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Isocenter-plane rectangle (x, y) covering all segments' openings (jaws when present) plus a pad."""
    xs0, xs1, ys0, ys1 = [], [], [], []
    b = machine.mlc.boundaries
    for s in segments:
        _check_segment(s, machine)
        x1, x2 = np.asarray(s.x1_mm, float), np.asarray(s.x2_mm, float)
        op = x2 > x1
        if not op.any():
            continue
        xa, xb, ya, yb = x1[op].min(), x2[op].max(), b[:-1][op].min(), b[1:][op].max()
        if machine.jaw_x is not None and s.jaw_x_mm is not None:
            xa, xb = max(xa, s.jaw_x_mm[0]), min(xb, s.jaw_x_mm[1])
        if machine.jaw_y is not None and s.jaw_y_mm is not None:
            ya, yb = max(ya, s.jaw_y_mm[0]), min(yb, s.jaw_y_mm[1])
        xs0.append(xa)
        xs1.append(xb)
        ys0.append(ya)
        ys1.append(yb)
    if not xs0:
        raise InputError("no segment has an open leaf pair: nothing to compute", field="segments")
    return (min(xs0) - pad_mm, max(xs1) + pad_mm), (min(ys0) - pad_mm, max(ys1) + pad_mm)


def aperture_beamlet_grid(
    beam: Beam,
    segments: list[Segment],
    machine: MachineModel,
    *,
    bixel_width_mm: float = 2.5,
    pad_mm: float = 10.0,
    column_offset_mm: float = 0.0,
) -> BeamletGrid:
    """Bixel grid for the dose of ``segments``: columns ``bixel_width_mm`` (offset by
    ``column_offset_mm``, :class:`rayrt.dose.geometry.BeamletGrid`) and the machine's rows
    (leaf pairs; half pairs of a dual-layer MLC) over the openings plus ``pad_mm``
    (:func:`field_extent_mm`), each row split where a segment's Y jaw or its proximal-layer leaf
    boundary falls strictly inside it, so every bixel row is uniformly open or closed along Y
    (trimmed field ends keep their resolution in the dose). Without such cuts: exactly
    :func:`rayrt.dose.geometry.beamlet_grid_for_field`."""
    (xa, xb), (ya, yb) = field_extent_mm(segments, machine, pad_mm)
    bg = beamlet_grid_for_field(beam, machine, (xa, xb), (ya, yb), bixel_width_mm, column_offset_mm=column_offset_mm)
    e = np.asarray(bg.row_edges_mm, float)
    r0, r1 = int(np.min(bg.rows)), int(np.max(bg.rows)) + 1
    cut_list: list[float] = []
    for s in segments:
        if machine.jaw_y is not None and s.jaw_y_mm is not None:
            cut_list.extend(float(v) for v in s.jaw_y_mm)
        prox = _proximal_layer(s, machine)
        if prox is not None:
            cut_list.extend(prox.boundaries_mm.tolist())
    cuts = np.asarray(cut_list, float)
    cuts = cuts[(cuts > e[r0] + 1e-6) & (cuts < e[r1] - 1e-6)]
    if cuts.size == 0 or np.min(np.abs(cuts[:, None] - e[None, r0 : r1 + 1]), axis=1).max() <= 1e-6:
        return bg
    edges = np.unique(np.round(np.concatenate([e[r0 : r1 + 1], cuts]), 6))
    cols = np.unique(np.asarray(bg.cols))
    R = edges.size - 1
    rows = np.repeat(np.arange(R, dtype=np.int64), cols.size)
    cc = np.tile(cols, R).astype(np.int64)
    meta = dict(bg.meta)
    meta["subrows"] = "split at Y-jaw / proximal-layer edges"
    return BeamletGrid(
        beam, bg.machine_name, bg.bixel_width_mm, edges, rows, cc, bg.patient_position, meta, bg.column_offset_mm
    )


def aperture_dose(
    density: Volume,
    dose_grid: Grid,
    beam: Beam,
    segments: list[Segment] | None,
    machine: MachineModel,
    *,
    bixel_width_mm: float = 2.5,
    pad_mm: float = 10.0,
    column_offset_mm: float = 0.0,
    **dij_kwargs,
) -> np.ndarray:
    """Dose (Gy, array shaped like ``dose_grid``) of a beam's segments (default ``beam.segments``).

    Builds a bixel grid (:func:`aperture_beamlet_grid`: rows = the machine's rows, split at Y-jaw
    and proximal-layer edges inside a row; columns ``bixel_width_mm``) over the union of the
    openings plus ``pad_mm`` (columns offset by ``column_offset_mm``), computes its Dij and applies
    :func:`aperture_fluence`. A beam with no segment carrying MU (e.g. every segment removed by DAO)
    delivers no dose: zeros. MU through a fully closed MLC is refused (InputError), not silently
    reduced to leakage.
    """
    from rayrt.dose.dij import compute_dij

    segs = beam.segments if segments is None else segments
    if not any(s.mu > 0 for s in segs):
        return np.zeros(dose_grid.shape)
    grid = aperture_beamlet_grid(
        beam, segs, machine, bixel_width_mm=bixel_width_mm, pad_mm=pad_mm, column_offset_mm=column_offset_mm
    )
    dij = compute_dij(density, dose_grid, grid, machine, **dij_kwargs)
    flu = aperture_fluence(grid, segs, machine)
    return (dij @ flu.astype(np.float64)).reshape(dose_grid.shape)
