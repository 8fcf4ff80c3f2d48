"""Dose of MLC/jaw apertures (step-and-shoot segments) through the bixel Dij.

Approach (the same for plan dose and for direct aperture optimisation): a segment becomes an
*effective fluence per bixel* — the bixel-averaged transmission of the collimation, times the
segment's MU and its head-scatter factor — and the dose is ``Dij_beam @ fluence``:

    T(x, y) = T_mlc(x; pair) * T_jawX(x) * T_jawY(y)
    T_mlc   = 1 between the leaf tips of the bixel row's leaf pair (widened by the dosimetric
              leaf gap ``mlc.leaf_end_transmission_mm`` / 2 at each rounded tip, open pairs only),
              ``mlc.transmission`` (inter-/intra-leaf) elsewhere
    T_jaw*  = 1 inside the jaws, ``jaw.transmission`` outside (machines without jaws: 1)
    fluence_b = sum_s  mu_s * Sc(eq. square of segment s) * mean of T over bixel b

The mean over the bixel rectangle is exact for these piecewise-constant functions (overlap
lengths), so partial leaf coverage of a bixel column and partial jaw coverage of a leaf row are
handled exactly. A fully open bixel gets fluence ``mu * Sc``; since a Dij column is the dose of
1 MU through the bixel opening, ``Dij @ aperture_fluence(...)`` is the aperture's dose in Gy.
:func:`aperture_dose` does exactly that on an internal bixel grid covering the field.

Approximations: dual-layer MLCs (Halcyon) are modelled by their distal layer (the bixel rows are
the 5 mm effective rows; each row follows its distal leaf pair); transmission outside the
beamlet grid (beyond the jaws' field in :func:`aperture_dose`) is ignored.
"""

from __future__ import annotations

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
        raise InputError(f"segment has {len(seg.x1_mm)} leaf pairs, machine {machine.name}'s MLC has {n}", field="segments")


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
    """Per-bixel geometry of one segment on a beamlet grid, shared by the transmission and its
    gradient: bixel column edges ``c0..c1`` and row edges ``r0..r1`` (mm), the leaf tips of each
    bixel's leaf pair widened by half the dosimetric leaf gap (``o0``, ``o1``), which pairs are
    open, the X jaw opening ``j0..j1`` (infinite without X jaws) and the Y-jaw factor ``ty``."""

    def __init__(self, beamlets: BeamletGrid, segment: Segment, machine: MachineModel):
        _check_segment(segment, machine)
        pair = row_leaf_pair(machine)[beamlets.rows]
        self.w = beamlets.bixel_width_mm
        self.c0 = beamlets.cols * self.w
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


def segment_transmission(beamlets: BeamletGrid, segment: Segment, machine: MachineModel) -> np.ndarray:
    """Mean collimator transmission T over each bixel of the grid for one segment (0..1, no MU, no Sc)."""
    g = _SegmentGeometry(beamlets, segment, machine)
    o0 = np.where(g.is_open, g.o0, 0.0)
    o1 = np.where(g.is_open, g.o1, 0.0)
    t_m, t_jx, w = g.t_m, g.t_jx, g.w
    A = _overlap(g.c0, g.c1, np.maximum(o0, g.j0), np.minimum(o1, g.j1)) * g.is_open
    B = _overlap(g.c0, g.c1, g.j0, g.j1)
    C = _overlap(g.c0, g.c1, o0, o1) * g.is_open
    tx = (A + t_m * (B - A) + t_jx * (C - A) + t_m * t_jx * (w - B - C + A)) / w
    return tx * g.ty


def segment_transmission_gradient(beamlets: BeamletGrid, segment: Segment, machine: MachineModel) -> tuple[np.ndarray, np.ndarray]:
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


def segment_fluence(beamlets: BeamletGrid, segment: Segment, machine: MachineModel) -> np.ndarray:
    """Effective fluence per bixel of one segment per MU: transmission x head-scatter factor Sc."""
    sc = float(machine.beam.head_scatter_at(segment_equivalent_square_mm(segment, machine)))
    return segment_transmission(beamlets, segment, machine) * sc


def aperture_fluence(beamlets: BeamletGrid, segments: list[Segment], machine: MachineModel) -> np.ndarray:
    """MU-weighted effective fluence per bixel of step-and-shoot segments: ``dose = Dij_beam @ this``."""
    out = np.zeros(beamlets.num_bixels)
    for s in segments:
        if s.mu > 0:
            out += s.mu * segment_fluence(beamlets, s, machine)
    return out


def field_extent_mm(segments: list[Segment], machine: MachineModel, pad_mm: float = 10.0) -> tuple[tuple[float, float], tuple[float, float]]:
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
        xs0.append(xa); xs1.append(xb); ys0.append(ya); ys1.append(yb)
    if not xs0:
        raise InputError("no segment has an open leaf pair: nothing to compute", field="segments")
    return (min(xs0) - pad_mm, max(xs1) + pad_mm), (min(ys0) - pad_mm, max(ys1) + pad_mm)


def aperture_dose(
    density: Volume,
    dose_grid: Grid,
    beam: Beam,
    segments: list[Segment] | None,
    machine: MachineModel,
    *,
    bixel_width_mm: float = 2.5,
    pad_mm: float = 10.0,
    **dij_kwargs,
) -> np.ndarray:
    """Dose (Gy, array shaped like ``dose_grid``) of a beam's segments (default ``beam.segments``).

    Builds a bixel grid (rows = leaf pairs, columns ``bixel_width_mm``) over the union of the
    openings plus ``pad_mm``, computes its Dij and applies :func:`aperture_fluence`.
    """
    from rayrt.dose.dij import compute_dij

    segs = beam.segments if segments is None else segments
    (xa, xb), (ya, yb) = field_extent_mm(segs, machine, pad_mm)
    grid = beamlet_grid_for_field(beam, machine, (xa, xb), (ya, yb), bixel_width_mm)
    dij = compute_dij(density, dose_grid, grid, machine, **dij_kwargs)
    flu = aperture_fluence(grid, segs, machine)
    return (dij @ flu.astype(np.float64)).reshape(dose_grid.shape)
