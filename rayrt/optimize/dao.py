"""Direct aperture optimisation (DAO): segment MU and leaf positions optimised on the dose.

Aperture model (per beam, at the isocenter plane): segment s with leaf tips x1[s, p] < x2[s, p]
and weight m_s (fluence units = beamlet-weight units) gives beamlet (row r, column c) the fluence

    F[r, c] = sum_s m_s * Sc_s * fy[s, r] * sum_p Y[p, r] * ((1 - T) * O[s, p, c] + T * J[s, p, c])

with Y[p, r] the fraction of beamlet row r covered by leaf pair p, O the fraction of column c
inside the opening [x1, x2] (piecewise linear in the tips: partial bixel coverage) and the X
jaws, T the MLC transmission (squared for a dual-layer MLC: outside the aperture both layers
block), J the part of the bixel inside the X jaws and fy[s, r] the part of row r inside the
segment's Y jaws (a dual-layer MLC's proximal layer acts as such a Y limit) -- per row, so a jaw
may end part-way across a wide leaf pair when the rows end there (held fixed within an inner
solve). Which pairs belong to an aperture is tracked explicitly (:func:`open_pairs`): a pair
exactly at the minimum gap inside the jaws is a real opening (MLCi2: 5 mm gap = one bixel).
Dose = Dij_beam @ F (the row-subset Dij of :mod:`rayrt.optimize.problem`). The gradient with
respect to m and to each leaf tip is analytic (chain rule through O).

Machine rules are kept *exactly* feasible with box bounds for L-BFGS-B: every pairwise linear rule
(x1[p] + g <= x2[p]; no interdigitation x1[p] + g <= x2[p +- 1]) is split at the midpoint of its
current slack into two bounds, the leaf span into a window of max_leaf_span_mm centred on the
bank, plus the leaf range / over-travel; the boxes are recomputed every outer round so leaves can
travel further. Segment count never grows.

Segment limits (the effective :class:`~rayrt.domain.segments.SegmentLimits` of the plan):

* minimum MU (``min_mu_weight``, course MU-weights = MU per fraction x fractions): segments below
  half of it are dropped, the others held at >= it by a final MU-only solve;
* minimum width (``min_width_mm``): the leaf boxes keep every open pair at least this wide
  (closed pairs keep the MLC's minimum gap);
* minimum area (``min_area_cm2``): after every outer round, a segment whose open area (leaf
  opening x leaf width over the open pairs, inside its jaws) the leaf optimisation has shrunk
  below the minimum is *removed*, and the weights of the others are re-optimised by the next
  round (after the last round: by the final MU-only solve). Removal rather than re-opening: a
  re-opened aperture would deliver fluence where the optimiser had just taken it away, whereas the
  remaining segments' weights absorb a small segment's contribution at the cost of one solve.
  Only when every segment of a beam is below the minimum is the largest one re-opened to it
  (every open pair widened equally), so no beam is left empty.

Total MU (``mu_bound``, :mod:`rayrt.optimize.mu_bound`): the normalised MU ``f x sum m`` is
steered under the bound by its penalty, with the normalisation factor ``f`` *frozen* within each
solve at its exact value for the apertures the solve starts from (refreshed between rounds): a
factor differentiated inside the solve would let the optimiser lower its MU measure by heating the
target's normalisation metric. The penalty is stiffened after every round while the bound is exceeded,
up to ``MU_BOUND_EXTRA_ROUNDS`` leaf rounds are added for it, and the final MU-only solve is
repeated with stiffer penalties while it still is. The plan's exact
MU refit on the normalised dose enforces the bound (:func:`rayrt.optimize.mu_refit.refit_segment_mu`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
from pydantic import BaseModel, Field
from scipy.optimize import minimize

from rayrt.domain.machine import MachineModel
from rayrt.domain.plan import Segment
from rayrt.domain.segments import open_pair_mask, segment_open_area_cm2
from rayrt.optimize._threads import single_blas_thread
from rayrt.optimize.fmo import ObjectiveEvaluator
from rayrt.optimize.layout import BeamletLayout, layout_from_beamlets
from rayrt.optimize.mu_bound import MU_BOUND_EXTRA_ROUNDS, NormalisedMU
from rayrt.optimize.problem import OptimizationProblem
from rayrt.optimize.sequencing.base import _grow_to_area, _limits, jaws_for, to_segment

__all__ = ["DAOOptions", "DAOResult", "optimize_apertures", "BeamApertures", "aperture_weights", "open_pairs"]


class DAOOptions(BaseModel):
    outer_rounds: int = Field(default=4, ge=1)
    iterations_per_round: int = Field(default=60, ge=1)
    min_mu_weight: float = Field(
        default=0.0, ge=0, description="minimum segment weight (fluence units) = min MU/segment x fractions"
    )
    min_area_cm2: float = Field(
        default=0.0, ge=0, description="minimum open area of a segment at the isocenter plane (cm²); 0: none"
    )
    min_width_mm: float = Field(
        default=0.0, ge=0, description="narrowest opening of an open leaf pair (mm at the isocenter); 0: min gap only"
    )
    optimize_leaves: bool = True


class DAOResult(BaseModel):
    model_config = {"arbitrary_types_allowed": True}

    segments: list[list[Segment]] = Field(description="per beam; mu in fluence units")
    weights: list[float] | None = Field(
        default=None, exclude=True, description="beamlet-equivalent fluence of the apertures"
    )
    objective_start: float
    objective: float
    iterations: int
    seconds: float
    dropped_segments: int
    small_area_segments: int = Field(
        default=0, description="of dropped_segments: removed because their open area fell below min_area_cm2"
    )


@dataclass
class BeamApertures:
    """Vectorised segments of one beam restricted to the leaf pairs that cover its beamlet rows."""

    layout: BeamletLayout
    pairs: np.ndarray  # machine pair ids covering beamlet rows
    Y: np.ndarray  # (Pa, R)
    x1: np.ndarray  # (S, P) all machine pairs
    x2: np.ndarray
    m: np.ndarray  # (S,)
    transmission: float
    half_dlg_mm: float = 0.0  # half the dosimetric leaf gap: each tip's effective extra opening
    sc: np.ndarray | None = None  # head-scatter factor per segment (held fixed within an inner solve)
    open_: np.ndarray | None = None  # (S, P) bool: pairs that belong to the aperture (the jaws hug these)

    @classmethod
    def from_segments(cls, segments: list[Segment], layout: BeamletLayout, machine: MachineModel) -> "BeamApertures":
        Yall = layout.pair_row_weights(machine.mlc)
        pairs = np.flatnonzero(Yall.sum(axis=1) > 1e-9)
        x1 = np.array([s.x1_mm for s in segments], dtype=float).reshape(len(segments), machine.mlc.num_pairs)
        x2 = np.array([s.x2_mm for s in segments], dtype=float).reshape(len(segments), machine.mlc.num_pairs)
        m = np.array([s.mu for s in segments], dtype=float)
        # dual-layer MLC: outside the aperture both layers block (proximal_layer keeps its openings to the distal hull)
        t = float(machine.mlc.transmission) ** (2 if machine.mlc.dual_layer else 1)
        return cls(
            layout,
            pairs,
            Yall[pairs],
            x1,
            x2,
            m,
            t,
            0.5 * float(machine.mlc.leaf_end_transmission_mm),
            np.ones(len(segments)),
            open_pairs(segments, machine).reshape(len(segments), machine.mlc.num_pairs),
        )

    def open_mask(self) -> np.ndarray:
        """``open_``, the (S, P) pairs that belong to each aperture (set by :meth:`from_segments`)."""
        if self.open_ is None:
            raise ValueError("BeamApertures.open_ is not set; build the apertures with BeamApertures.from_segments")
        return self.open_

    def update_head_scatter(self, machine: MachineModel) -> None:
        """Sc of each segment's equivalent square (rayrt.dose.aperture), 1 when the machine has no beam model."""
        self.sc = np.ones(self.m.size)
        hs = getattr(getattr(machine, "beam", None), "head_scatter_at", None)
        if hs is None:
            return
        from rayrt.dose.aperture import segment_equivalent_square_mm

        for s in range(self.m.size):  # loop over segments of one beam
            seg = Segment(x1_mm=self.x1[s].tolist(), x2_mm=self.x2[s].tolist(), mu=0.0)
            self.sc[s] = float(hs(segment_equivalent_square_mm(seg, machine)))

    def _jaws(self, S: int):
        """(X-jaw lower, upper (S, 1, 1) mm; Y-jaw coverage of each beamlet row (S, R)) of the last jaw
        update (open when none)."""
        jx = getattr(self, "_jx", None)
        if jx is None or jx.shape[0] != S:
            return np.full((S, 1, 1), -np.inf), np.full((S, 1, 1), np.inf), np.ones((S, self.Y.shape[1]))
        return jx[:, 0, None, None], jx[:, 1, None, None], self._fyr

    def _open_frac(self, x1, x2):
        """Open fraction of each bixel column per segment and pair: the leaf opening (widened by the
        dosimetric leaf gap) clipped by the X jaws (the Y jaws act per beamlet row, see :meth:`fluence`)."""
        e = self.layout.col_edges_mm
        w = np.diff(e)
        jlo, jhi, _ = self._jaws(x1.shape[0])
        a = np.maximum(np.maximum(x1[..., None] - self.half_dlg_mm, e[:-1]), jlo)
        b = np.minimum(np.minimum(x2[..., None] + self.half_dlg_mm, e[1:]), jhi)
        ov = b - a
        act = ov > 0
        return np.where(act, ov, 0.0) / w, act, a, b

    def _jaw_frac(self, x1, x2, machine_jaws):
        """J[s, p, c]: bixel part inside the segment's X jaws (pairs of the beam's rows); stores the
        Y-jaw coverage of every beamlet row (S, R) for :meth:`fluence`."""
        S = x1.shape[0]
        e = self.layout.col_edges_mm
        w = np.diff(e)
        re = self.layout.row_edges_mm
        J = np.zeros((S, self.pairs.size, e.size - 1))
        jxs, fyr = [], []
        for s in range(S):  # loop over segments of one beam (<= max segments)
            jx, jy, _ = machine_jaws(s)
            fx = np.clip(np.minimum(jx[1], e[1:]) - np.maximum(jx[0], e[:-1]), 0, None) / w
            J[s] = fx[None, :]
            jxs.append(jx)
            fyr.append(np.clip(np.minimum(jy[1], re[1:]) - np.maximum(jy[0], re[:-1]), 0, None) / np.diff(re))
        self._jx = np.asarray(jxs, dtype=float).reshape(S, 2)
        self._fyr = np.asarray(fyr, dtype=float).reshape(S, re.size - 1)
        return J

    def fluence(self, J: np.ndarray | None = None) -> np.ndarray:
        """F (R, C) in fluence units."""
        open_frac, _, _, _ = self._open_frac(self.x1[:, self.pairs], self.x2[:, self.pairs])
        T = self.transmission
        A = (1 - T) * open_frac + (T * J if J is not None else 0.0)
        _, _, fyr = self._jaws(self.m.size)
        return np.einsum("s,spc,pr,sr->rc", self.m * self.sc, A, self.Y, fyr, optimize=True)


def open_pairs(segments: list[Segment], machine: MachineModel) -> np.ndarray:
    """(S, P) bool: the leaf pairs each segment opens (:func:`rayrt.domain.segments.open_pair_mask`).

    A pair wider than the minimum gap is open. A pair exactly at the minimum gap is open when it
    lies inside the segment's jaws (Y and X, when the machine has them): on an MLC whose minimum gap
    equals the bixel width (MLCi2: 5 mm) a one-bixel strip is a real opening, while closed pairs are
    parked with the same gap under a jaw (sequencing.base._park_closed). Without jaws only the width
    decides."""
    out = np.zeros((len(segments), machine.mlc.num_pairs), dtype=bool)
    for i, s in enumerate(segments):  # loop over segments of one beam
        out[i] = open_pair_mask(np.asarray(s.x1_mm, float), np.asarray(s.x2_mm, float), machine, s.jaw_x_mm, s.jaw_y_mm)
    return out


def aperture_gradient(ba: "BeamApertures", G: np.ndarray, J: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chain rule from the gradient G (R, C) with respect to the beam's bixel fluence to the segment
    weights (S,) and the tips x1, x2 (S, Pa) of the active pairs (jaw fractions J held fixed)."""
    T = ba.transmission
    jlo, jhi, fyr = ba._jaws(ba.m.size)
    GP = np.einsum(
        "pr,sr,rc->spc", ba.Y, fyr, G, optimize=True
    )  # (S, Pa, C): row gradient seen by each pair, Y jaws applied
    open_frac, act, _, _ = ba._open_frac(ba.x1[:, ba.pairs], ba.x2[:, ba.pairs])
    A = (1 - T) * open_frac + T * J
    gm = np.einsum("spc,spc->s", A, GP) * ba.sc
    wcol = ba.layout.col_widths_mm
    x1 = ba.x1[:, ba.pairs][..., None]
    x2 = ba.x2[:, ba.pairs][..., None]
    e = ba.layout.col_edges_mm
    h = ba.half_dlg_mm
    d1 = -(act & (x1 - h > e[:-1]) & (x1 - h > jlo)).astype(float) / wcol
    d2 = (act & (x2 + h < e[1:]) & (x2 + h < jhi)).astype(float) / wcol
    coef = (1 - T) * (ba.m * ba.sc)[:, None, None] * GP
    return gm, (coef * d1).sum(-1), (coef * d2).sum(-1)


def aperture_weights(beams: list[BeamApertures], slices: list[slice], n: int, Js=None) -> np.ndarray:
    """Beamlet-equivalent weights (all beams) of the apertures."""
    w = np.zeros(n)
    for b, (ba, sl) in enumerate(zip(beams, slices)):
        F = ba.fluence(None if Js is None else Js[b])
        ok = ba.layout.beamlet_index >= 0
        w[sl.start + ba.layout.beamlet_index[ok]] = F[ok]
    return w


def _boxes(ba: BeamApertures, machine: MachineModel, min_width_mm: float = 0.0):
    """Lower/upper bounds for x1 and x2 of the active pairs of every segment of one beam; the pairs
    of an aperture keep at least ``min_width_mm`` open (closed pairs the minimum gap)."""
    mlc = machine.mlc
    g = float(mlc.min_gap_mm)
    x1min, x1max, x2min, x2max = _limits(mlc)
    x1, x2 = ba.x1, ba.x2
    S, P = x1.shape
    lo1 = np.full((S, P), x1min)
    hi1 = np.full((S, P), x1max)
    lo2 = np.full((S, P), x2min)
    hi2 = np.full((S, P), x2max)
    e = ba.layout.col_edges_mm
    lo1 = np.maximum(lo1, np.minimum(e[0] - g, x1))
    hi2 = np.minimum(hi2, np.maximum(e[-1] + g, x2))
    act = np.zeros(P, bool)
    act[ba.pairs] = True

    def split(a_pos, b_pos, a_is_active, b_is_active, gap=g):
        # constraint a + gap <= b; returns (upper bound for a, lower bound for b)
        mid = 0.5 * (a_pos + b_pos)
        ua = np.where(b_is_active, mid - 0.5 * gap, b_pos - gap)
        lb = np.where(a_is_active, mid + 0.5 * gap, a_pos + gap)
        return ua, lb

    own: float | np.ndarray = g
    if min_width_mm > g and ba.open_ is not None:
        own = np.where(ba.open_, float(min_width_mm), g)
    ua, lb = split(x1, x2, act[None, :], act[None, :], own)
    hi1 = np.minimum(hi1, ua)
    lo2 = np.maximum(lo2, lb)
    if not mlc.interdigitation and P > 1:
        # x1[p] + g <= x2[p+1]  and  x1[p+1] + g <= x2[p]
        ua, lb = split(x1[:, :-1], x2[:, 1:], act[None, :-1], act[None, 1:])
        hi1[:, :-1] = np.minimum(hi1[:, :-1], ua)
        lo2[:, 1:] = np.maximum(lo2[:, 1:], lb)
        ua, lb = split(x1[:, 1:], x2[:, :-1], act[None, 1:], act[None, :-1])
        hi1[:, 1:] = np.minimum(hi1[:, 1:], ua)
        lo2[:, :-1] = np.maximum(lo2[:, :-1], lb)
    span = mlc.max_leaf_span_mm
    for x, lo, hi in ((x1, lo1, hi1), (x2, lo2, hi2)):
        c = 0.5 * (x.max(axis=1) + x.min(axis=1))[:, None]
        np.maximum(lo, c - 0.5 * span, out=lo)
        np.minimum(hi, c + 0.5 * span, out=hi)
    # never exclude the current (feasible) position
    lo1, hi1 = np.minimum(lo1, x1), np.maximum(hi1, x1)
    lo2, hi2 = np.minimum(lo2, x2), np.maximum(hi2, x2)
    return lo1, hi1, lo2, hi2


def _optimize_apertures(
    problem: OptimizationProblem,
    beamlets: list,
    segments: list[list[Segment]],
    machine: MachineModel,
    options: DAOOptions | None = None,
    evaluator: ObjectiveEvaluator | None = None,
    mu_bound: NormalisedMU | None = None,
) -> DAOResult:
    """Optimise segment weights and leaf positions of sequenced segments (weights in fluence units)."""
    opt = options or DAOOptions()
    if mu_bound is not None:  # the stiffness steps below belong to this solve
        mu_bound = replace(mu_bound, bound=replace(mu_bound.bound))
    t0 = time.perf_counter()
    layouts = [layout_from_beamlets(b) for b in beamlets]
    slices = problem.beam_slices
    n = problem.num_beamlets
    ev = evaluator or ObjectiveEvaluator(problem)
    if problem.hard and ev.rho <= 0:
        ev.rho = (
            max(
                ev.soft_value(
                    aperture_weights(
                        [BeamApertures.from_segments(s_, l_, machine) for s_, l_ in zip(segments, layouts)], slices, n
                    )
                ),
                1e-6,
            )
            / max(0.01 * problem.prescription_gy, 1e-3) ** 2
        )
    beams = [BeamApertures.from_segments(segs, lay, machine) for segs, lay in zip(segments, layouts)]
    bnd = machine.mlc.boundaries
    g = float(machine.mlc.min_gap_mm)

    def y_span(ba):
        return float(ba.layout.row_edges_mm[0]), float(ba.layout.row_edges_mm[-1])

    def jaws_of(ba):
        def f(s):
            # pairs of the aperture: those it opened, and any a leaf move has widened beyond the gap
            ba.open_[s] |= ba.x2[s] - ba.x1[s] > g + 1e-6
            open_ = ba.open_[s]
            if not open_.any():
                return (0.0, 0.0), (0.0, 0.0), bnd
            jx, jy = jaws_for(ba.x1[s], ba.x2[s], open_, machine, y_span(ba))
            jx = jx or (-1e9, 1e9)
            if jy is None and machine.mlc.dual_layer:
                # the proximal layer closes the field beyond the open distal pairs and the rows' extent
                # (sequencing.base.proximal_layer): a Y limit on the beamlet rows like a Y jaw's
                op = np.flatnonzero(open_)
                lo, hi = max(float(bnd[op.min()]), y_span(ba)[0]), min(float(bnd[op.max() + 1]), y_span(ba)[1])
                jy = (lo, hi) if hi > lo else (float(bnd[op.min()]), float(bnd[op.max() + 1]))
            jy = jy or (bnd[0], bnd[-1])
            return jx, jy, bnd

        return f

    def current_J():
        for ba in beams:
            ba.update_head_scatter(machine)
        return [ba._jaw_frac(ba.x1[:, ba.pairs], ba.x2[:, ba.pairs], jaws_of(ba)) for ba in beams]

    Js = current_J()
    f_start = float(problem.total_objective(problem.dose(aperture_weights(beams, slices, n, Js))))
    m_scale = max(float(np.mean(np.concatenate([ba.m for ba in beams]))) if beams else 1.0, 1e-9)
    x_scale = float(np.median(np.concatenate([lay.col_widths_mm for lay in layouts]))) if layouts else 1.0
    iters = 0

    def pack(leaves: bool):
        parts = []
        for ba in beams:
            parts.append(ba.m / m_scale)
            if leaves:
                parts.append(ba.x1[:, ba.pairs].ravel() / x_scale)
                parts.append(ba.x2[:, ba.pairs].ravel() / x_scale)
        return np.concatenate(parts)

    def unpack(z, leaves: bool):
        i = 0
        for ba in beams:
            S, Pa = ba.m.size, ba.pairs.size
            ba.m = z[i : i + S] * m_scale
            i += S
            if leaves:
                ba.x1[:, ba.pairs] = z[i : i + S * Pa].reshape(S, Pa) * x_scale
                i += S * Pa
                ba.x2[:, ba.pairs] = z[i : i + S * Pa].reshape(S, Pa) * x_scale
                i += S * Pa

    def fun(z, leaves):
        unpack(z, leaves)
        w = aperture_weights(beams, slices, n, Js)
        f, gw = ev(w)
        dm = 0.0  # d(MU penalty)/d(each segment weight)
        if mu_bound is not None:  # the normalisation factor frozen for this solve (see the module docstring)
            pen, dn = mu_bound.bound.penalty(norm_scale[0] * float(sum(ba.m.sum() for ba in beams)))
            f += pen
            dm = dn * norm_scale[0]
        grads = []
        for b, (ba, sl) in enumerate(zip(beams, slices)):
            G = np.zeros(ba.layout.shape)
            ok = ba.layout.beamlet_index >= 0
            G[ok] = gw[sl.start + ba.layout.beamlet_index[ok]]
            gm, g1, g2 = aperture_gradient(ba, G, Js[b])
            grads.append((gm + dm) * m_scale)
            if leaves:
                grads.append(g1.ravel() * x_scale)
                grads.append(g2.ravel() * x_scale)
        return f, np.concatenate(grads)

    def bounds(leaves: bool, mu_lo=None):
        bl = []
        for k, ba in enumerate(beams):
            lo_m = np.zeros(ba.m.size) if mu_lo is None else mu_lo[k]
            bl += list(zip(lo_m / m_scale, [None] * ba.m.size))
            if leaves:
                lo1, hi1, lo2, hi2 = _boxes(ba, machine, opt.min_width_mm)
                p = ba.pairs
                bl += list(zip(lo1[:, p].ravel() / x_scale, hi1[:, p].ravel() / x_scale))
                bl += list(zip(lo2[:, p].ravel() / x_scale, hi2[:, p].ravel() / x_scale))
        return bl

    def segment_of(ba: BeamApertures, s: int) -> Segment | None:
        open_ = ba.open_mask()[s] | (ba.x2[s] - ba.x1[s] > g + 1e-6)
        if not open_.any():
            return None
        return to_segment(
            ba.x1[s], ba.x2[s], open_, float(ba.m[s]), machine, y_span(ba), float(ba.layout.col_edges_mm[0])
        )

    def areas(ba: BeamApertures) -> np.ndarray:
        out = np.zeros(ba.m.size)
        for s in range(ba.m.size):  # loop over segments of one beam
            seg = segment_of(ba, s)
            out[s] = 0.0 if seg is None else segment_open_area_cm2(seg, machine)
        return out

    def enforce_min_area() -> int:
        """Remove segments below the minimum area (the largest of an all-small beam is re-opened)."""
        if opt.min_area_cm2 <= 0:
            return 0
        removed = 0
        for ba in beams:
            if ba.m.size == 0:
                continue
            a = areas(ba)
            small = a < opt.min_area_cm2 - 1e-9
            if not small.any():
                continue
            if small.all():
                k = int(np.argmax(a))
                op = ba.open_mask()[k] | (ba.x2[k] - ba.x1[k] > g + 1e-6)
                if not op.any():
                    op = np.zeros_like(op)
                    op[ba.pairs] = True
                    ba.x1[k, ba.pairs] = ba.layout.col_edges_mm[0]
                    ba.x2[k, ba.pairs] = ba.layout.col_edges_mm[0] + g
                _grow_to_area(ba.x1[k], ba.x2[k], op, machine.mlc, 100.0 * opt.min_area_cm2 * 1.02)
                ba.open_mask()[k] = op
                small[k] = False
            keep = ~small
            removed += int(small.sum())
            ba.x1, ba.x2, ba.m, ba.open_ = ba.x1[keep], ba.x2[keep], ba.m[keep], ba.open_mask()[keep]
        return removed

    norm_scale = [1.0]

    def over_bound() -> bool:
        """Whether the apertures' normalised MU exceeds the bound; refreshes the frozen normalisation factor."""
        if mu_bound is None:
            return False
        d = problem.dij.dose(aperture_weights(beams, slices, n, Js), mu_bound.rows)
        total = float(sum(ba.m.sum() for ba in beams))
        norm_scale[0] = mu_bound.value(total, d) / max(total, 1e-12)
        return mu_bound.bound.excess(norm_scale[0] * total) > 0

    def solve(leaves: bool, maxiter: int, ftol: float, mu_lo=None) -> int:
        """One L-BFGS-B solve from the current apertures (the MU bound's normalisation factor frozen at
        their value); returns the iterations."""
        over_bound()
        res = minimize(
            fun,
            pack(leaves),
            args=(leaves,),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds(leaves, mu_lo),
            options={"maxiter": maxiter, "maxcor": 20, "ftol": ftol},
        )
        unpack(res.x, leaves)
        return int(res.nit)

    small_removed = 0
    last_removed = 0
    rounds = opt.outer_rounds if opt.optimize_leaves else 1
    done = extra = 0
    while True:
        leaves = opt.optimize_leaves
        iters += solve(leaves, opt.iterations_per_round, 1e-9)
        # minimum area: the next round (or the final MU solve) re-optimises the others' weights
        last_removed = enforce_min_area()
        small_removed += last_removed
        Js = current_J()
        if problem.hard and ev.rho > 0:
            # augmented Lagrangian: update the multipliers of the hard constraints on the aperture dose
            worst = ev.update_multipliers(aperture_weights(beams, slices, n, Js))
            if worst > 0.05:
                ev.rho *= 2.0
        done += 1
        over = mu_bound is not None and over_bound()
        if mu_bound is not None and over:
            mu_bound.bound.stiffer()
        if done < rounds:
            continue
        if over and leaves and extra < MU_BOUND_EXTRA_ROUNDS:  # the apertures reshaped for the MU bound
            extra += 1
            continue
        break
    # minimum width: pairs the last round opened narrower than it are widened about their centre
    # (moving x1 down and x2 up never breaks a pairwise leaf rule); the MU solve below follows
    widened = 0
    if opt.min_width_mm > g and opt.optimize_leaves:
        x1min, x1max, x2min, x2max = _limits(machine.mlc)
        wmin = float(opt.min_width_mm)
        for ba in beams:
            w = ba.x2 - ba.x1
            narrow = (ba.open_mask() | (w > g + 1e-6)) & (w < wmin - 1e-6)
            if narrow.any():
                c = np.clip(0.5 * (ba.x1 + ba.x2), x1min + 0.5 * wmin, x2max - 0.5 * wmin)
                ba.x1 = np.where(narrow, np.minimum(ba.x1, c - 0.5 * wmin), ba.x1)
                ba.x2 = np.where(narrow, np.maximum(ba.x2, c + 0.5 * wmin), ba.x2)
                ba.open_mask()[narrow] = True
                widened += int(narrow.sum())

    def mu_solve() -> int:
        """Segment weights only (leaves fixed), each held at >= the minimum MU; returns the iterations."""
        lo = [np.full(ba.m.size, opt.min_mu_weight) for ba in beams]
        for ba, min_weight in zip(beams, lo):
            ba.m = np.maximum(ba.m, min_weight)
        return solve(False, 100, 1e-10, lo)

    # minimum MU: drop segments far below it, hold the others at >= min
    dropped = small_removed
    if opt.min_mu_weight > 0 or last_removed > 0 or widened > 0:
        for _ in range(3):
            changed = False
            for ba in beams:
                keep = ba.m >= 0.5 * opt.min_mu_weight
                if not keep.all() and keep.any():
                    dropped += int((~keep).sum())
                    ba.x1, ba.x2, ba.m, ba.open_ = ba.x1[keep], ba.x2[keep], ba.m[keep], ba.open_mask()[keep]
                    changed = True
            Js = current_J()
            iters += mu_solve()
            if not changed:
                break
    while mu_bound is not None and over_bound() and mu_bound.bound.stiffer():
        Js = current_J()
        iters += mu_solve()
    Js = current_J()
    w = aperture_weights(beams, slices, n, Js)
    f_end = float(problem.total_objective(problem.dose(w)))
    out_segments = []
    for ba in beams:
        segs = []
        for s in range(ba.m.size):
            seg = segment_of(ba, s)
            if seg is None or ba.m[s] <= 0:
                continue
            segs.append(seg)
        out_segments.append(segs)
    return DAOResult(
        segments=out_segments,
        weights=w.tolist(),
        objective_start=f_start,
        objective=f_end,
        iterations=iters,
        seconds=time.perf_counter() - t0,
        dropped_segments=dropped,
        small_area_segments=small_removed,
    )


def optimize_apertures(
    problem: OptimizationProblem,
    beamlets: list,
    segments: list[list[Segment]],
    machine: MachineModel,
    options: DAOOptions | None = None,
    evaluator: ObjectiveEvaluator | None = None,
    mu_bound: NormalisedMU | None = None,
) -> DAOResult:
    """Optimise segment weights and leaf positions of sequenced segments (weights in fluence units),
    their total weight steered under ``mu_bound`` when given."""
    with single_blas_thread():
        return _optimize_apertures(problem, beamlets, segments, machine, options, evaluator, mu_bound)
