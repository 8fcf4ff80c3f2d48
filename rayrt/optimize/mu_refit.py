"""Exact segment-MU refit: the leaves of every segment fixed, the segments' MU re-optimised on
their exact doses and on the dose the plan will have after prescription normalisation.

Units: MU are course MU (the optimiser's); the segment-dose matrix is Gy per course MU on the
problem's voxel rows; doses are course doses in Gy. Objectives are the optimiser's terms
(:class:`rayrt.optimize.objectives.Objective`, weighted squared Gy).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field
from scipy.optimize import minimize

from rayrt.domain.machine import MachineModel
from rayrt.domain.order import MedicalOrder
from rayrt.domain.plan import Segment
from rayrt.dose.aperture import aperture_fluence
from rayrt.dose.geometry import BeamletGrid
from rayrt.optimize._threads import single_blas_thread
from rayrt.optimize.mu_bound import NormalisedMU
from rayrt.optimize.normalize import metric_weights
from rayrt.optimize.objectives import Objective
from rayrt.optimize.problem import OptimizationProblem

__all__ = [
    "MuRefitDetail",
    "segment_dose_matrix",
    "problem_segment_doses",
    "normalised_objective",
    "refit_segment_mu",
    "refit_dropping_small",
    "beam_of_segments",
    "with_refitted_mu",
]


class MuRefitDetail(BaseModel):
    """The exact segment-MU refit (:func:`refit_segment_mu`): leaves fixed, MU
    re-optimised on the prescription-normalised dose."""

    objective_start: float = Field(description="objective at the starting MU")
    objective: float = Field(description="objective at the refitted MU")
    iterations: int = Field(description="L-BFGS-B iterations (both passes when segments were dropped)")
    segments: int = Field(description="segments refitted in the last pass")
    seconds: float = Field(description="optimiser time of the last pass")
    dropped_segments: int = Field(default=0, description="segments whose MU fell below half the machine's minimum")
    total_seconds: float | None = Field(default=None, description="segment doses plus every pass")
    transferred_excess_gy: float | None = Field(
        default=None, description="mu_refit mode: worst excess (Gy) over the release's agreement limits, transferred MU"
    )
    refitted_excess_gy: float | None = Field(default=None, description="the same with the refitted MU")
    kept: str | None = Field(
        default=None, description="set when the refit was discarded (the transferred MU agreed better)"
    )


_MIN_MU_STEPS = 8
"""Raise-and-renormalise steps of the refit's normalised MU (see :func:`refit_segment_mu`)."""


def _unit_fluences(g: BeamletGrid, segs: list[Segment], machine: MachineModel) -> np.ndarray:
    """(bixels, segments) float32: each segment's exact fluence at 1 MU (rayrt.dose.aperture.aperture_fluence)."""
    return np.stack([aperture_fluence(g, [s.model_copy(update={"mu": 1.0})], machine) for s in segs], axis=1).astype(
        np.float32
    )


def beam_of_segments(segs_course: list[list[Segment]]) -> np.ndarray:
    """The beam index of every segment, in the flat order of ``segs_course`` (per beam)."""
    return np.repeat(np.arange(len(segs_course)), [len(segs) for segs in segs_course])


def with_refitted_mu(segs_course: list[list[Segment]], mu: np.ndarray, keep: np.ndarray) -> list[list[Segment]]:
    """The segments per beam with the refitted ``mu`` (flat order), those not kept left out."""
    out, k = [], 0
    for segs in segs_course:
        out.append([s.model_copy(update={"mu": float(mu[k + i])}) for i, s in enumerate(segs) if keep[k + i]])
        k += len(segs)
    return out


def segment_dose_matrix(
    dij: sp.spmatrix,
    grids: list[BeamletGrid],
    slices: list[slice],
    machine: MachineModel,
    segs_course: list[list[Segment]],
    rows: np.ndarray,
) -> np.ndarray:
    """Dose (Gy per course MU) of every segment on the voxel rows ``rows`` (dose-grid voxel indices):
    column s = Dij_beam @ exact fluence of segment s at 1 MU (:func:`rayrt.dose.aperture.aperture_fluence`:
    transmission, jaws, head scatter), beam by beam (``grids[b]`` and Dij columns ``slices[b]``
    belong to beam b; each segment's fluence lives on its own beam's bixels only).
    Shape (rows, segments), float32."""
    n = sum(len(s) for s in segs_course)
    a = np.zeros((rows.size, n), dtype=np.float32)
    csc = dij if sp.isspmatrix_csc(dij) or isinstance(dij, sp.csc_array) else sp.csc_matrix(dij)
    k = 0
    for segs, g, sl in zip(segs_course, grids, slices):  # loop over beams and their segments (tens)
        if not segs:
            continue
        a[:, k : k + len(segs)] = np.asarray(csc[:, sl] @ _unit_fluences(g, segs, machine))[rows]
        k += len(segs)
    return a


def problem_segment_doses(
    problem: OptimizationProblem, grids: list[BeamletGrid], machine: MachineModel, segs_course: list[list[Segment]]
) -> np.ndarray:
    """Dose (Gy per course MU) of every segment on every row of ``problem`` (its row-subset Dij;
    beam b's beamlets are ``problem.beam_slices[b]`` on ``grids[b]``), from the segment's exact
    fluence (:func:`rayrt.dose.aperture.aperture_fluence`). Shape (rows, segments), float32."""
    n = sum(len(s) for s in segs_course)
    a = np.zeros((problem.dij.num_rows, n), dtype=np.float32)
    k = 0
    w = np.zeros(problem.num_beamlets)
    for segs, g, sl in zip(segs_course, grids, problem.beam_slices):  # loop over beams and their segments (tens)
        if not segs:
            continue
        for f in _unit_fluences(g, segs, machine).T:
            w[:] = 0.0
            w[sl] = f
            a[:, k] = problem.dij.dose(w)
            k += 1
    return a


def normalised_objective(
    m: np.ndarray,
    a32: np.ndarray,
    terms: list[tuple[Objective, float]],
    rx_gy: float | None,
    norm_rows: np.ndarray | None,
    volume_pct: float | None,
) -> tuple[float, np.ndarray]:
    """Value and exact gradient (w.r.t. the segment MU ``m``) of the weighted objective terms
    ``[(Objective, weight)]`` on the prescription-normalised dose d = s A m, s = rx / metric(A m)
    (metric: ``Dx`` with ``volume_pct``, else the mean, over ``norm_rows``; ``rx_gy`` or
    ``norm_rows`` None: s = 1):
    grad = s A^T g - (s / metric) (g . A m) grad(metric), g = dF/dd."""
    raw = (a32 @ np.asarray(m, np.float32)).astype(np.float64)
    s, mv = 1.0, 1.0
    if rx_gy is not None and norm_rows is not None:
        mv, idx, wts = metric_weights(raw[norm_rows], volume_pct)
        mv = max(mv, 1e-9)
        s = rx_gy / mv
    d = s * raw
    f = 0.0
    g = np.zeros_like(d)
    for o, wt in terms:  # loop over the objective terms (tens)
        v, gr = o.value_and_grad(d[o.voxels])
        f += wt * v
        g[o.voxels] += wt * gr
    grad = s * (a32.T @ g.astype(np.float32)).astype(np.float64)
    if rx_gy is not None and norm_rows is not None:
        grad -= (s / mv) * float(g @ raw) * (a32[norm_rows[idx]].T.astype(np.float64) @ wts)
    return f, grad


def refit_segment_mu(
    problem: OptimizationProblem,
    a: np.ndarray,
    mu0: np.ndarray,
    order: MedicalOrder,
    min_mu: float,
    iterations: int,
    objectives: list[Objective] | None = None,
    mu_bound: NormalisedMU | None = None,
) -> tuple[np.ndarray, MuRefitDetail]:
    """Segment MU (course) re-optimised with the leaves fixed, on the *normalised* exact dose.

    ``a`` (problem rows x segments, Gy per MU) from :func:`segment_dose_matrix`. The objective is
    the sum of ``objectives`` (default: the problem's; conversions pass the mimicking terms only;
    hard terms as a stiff penalty, 10x the largest soft weight), evaluated on the dose the plan
    will have after prescription normalisation, d(m) = s(m) A m with
    s = Rx x value_pct / metric(A m) (:func:`rayrt.optimize.normalize.normalization_factor`), so the
    optimiser cannot trade target coverage that normalisation later buys back with organ dose.
    Exact gradient: grad = s A^T g - (s / metric) (g . A m) grad(metric). L-BFGS-B, MU >= ``min_mu``.
    With ``mu_bound`` the normalised total MU ``s x sum m`` is held under it
    (:mod:`rayrt.optimize.mu_bound`: the penalty, stiffened and solved again while the bound is
    exceeded; when no stiffness reaches it, the solve with the least normalised MU, never more than
    the start's). Returns (normalised MU, details)."""
    norm = order.prescription.normalization
    rx = order.prescription.total_dose_gy * norm.value_pct / 100.0
    nrows = problem.structure_rows.get(norm.structure or order.prescription.target)
    use_norm = norm.metric != "none" and nrows is not None and nrows.size > 0
    vol = norm.volume_pct
    objs = list(problem.objectives if objectives is None else objectives)
    wmax = max((o.weight for o in objs if not o.hard), default=1.0)
    # hard terms: a stiff penalty
    terms = [(o, o.weight) for o in objs if not o.hard] + [(o, 10.0 * wmax) for o in objs if o.hard]
    # float32 products on one BLAS thread: ~10x faster than float64 on the pool
    a32 = np.ascontiguousarray(a, dtype=np.float32)
    scale_m = max(float(np.mean(mu0)), 1e-9)

    bound = None if mu_bound is None or not use_norm else replace(mu_bound, bound=replace(mu_bound.bound))
    ratio = [1.0]  # the bound's mean / metric, refreshed before every solve

    def target_dose(z: np.ndarray) -> np.ndarray:
        assert bound is not None
        return (a32[bound.rows] @ (z * scale_m).astype(np.float32)).astype(np.float64)

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        m = z * scale_m
        f, grad = normalised_objective(m, a32, terms, rx if use_norm else None, nrows, vol)
        if bound is not None:
            p, dm, gd = bound.penalty(float(m.sum()), target_dose(z), ratio[0])
            if p > 0:
                f += p
                grad = grad + dm + a32[bound.rows].T.astype(np.float64) @ gd
        return f, grad * scale_m

    z0 = np.maximum(np.asarray(mu0, float), min_mu) / scale_m
    t = time.perf_counter()
    nit = 0
    with single_blas_thread():
        f0 = fun(z0)[0]
        # with a bound: the first solve within it, else the one (or the start) with the least normalised MU
        best: tuple[float, np.ndarray] | None = None
        if bound is not None:
            best = (bound.value(float(z0.sum() * scale_m), target_dose(z0)), z0)
        while True:
            if bound is not None:
                ratio[0] = bound.mean_ratio(target_dose(z0))
            res = minimize(
                fun,
                z0,
                jac=True,
                method="L-BFGS-B",
                bounds=[(min_mu / scale_m, None)] * z0.size,
                options={"maxiter": int(iterations), "maxcor": 20, "ftol": 1e-10},
            )
            nit += int(res.nit)
            z0 = res.x
            if bound is None or best is None:
                break
            n_now = bound.value(float(z0.sum() * scale_m), target_dose(z0))
            if bound.bound.excess(n_now) <= 0:
                best = (n_now, z0)
                break
            if n_now < best[0]:
                best = (n_now, z0)
            if not bound.bound.stiffer():
                break
    m = (res.x if best is None else best[1]) * scale_m
    if use_norm:
        # the normalised MU (the caller's normalisation then moves them by round-off only); the minimum
        # bound held the un-normalised MU, so a segment a scale below 1 takes under it is raised and the
        # plan normalised again (a fixed point within a few steps: the raised segments are few and small)
        for _ in range(_MIN_MU_STEPS):
            mv = metric_weights((a32 @ m.astype(np.float32))[nrows].astype(np.float64), vol)[0]
            m = m * rx / max(mv, 1e-9)
            low = m < min_mu * (1.0 - 1e-9)
            if not low.any():
                break
            m[low] = min_mu
    return m, MuRefitDetail(
        objective_start=float(f0),
        objective=float(res.fun),
        iterations=nit,
        segments=int(m.size),
        seconds=round(time.perf_counter() - t, 3),
    )


def refit_dropping_small(
    problem: OptimizationProblem,
    a: np.ndarray,
    mu0: np.ndarray,
    order: MedicalOrder,
    min_mu: float,
    iterations: int,
    objectives: list[Objective] | None = None,
    mu_bound: NormalisedMU | None = None,
    beam_of: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, MuRefitDetail]:
    """:func:`refit_segment_mu` in two passes, like DAO's minimum MU: first with MU >= 0; segments that
    end below half of ``min_mu`` (course MU) are dropped, then the survivors are refitted with
    MU >= ``min_mu``. ``beam_of[s]`` (the beam of segment s; None: one beam) keeps each beam's
    largest segment when all of its segments fall below: no beam is left empty. Returns (normalised
    MU, 0 for a dropped segment; the kept mask; details)."""
    mu, det = refit_segment_mu(problem, a, mu0, order, 0.0, iterations, objectives=objectives, mu_bound=mu_bound)
    keep = mu >= 0.5 * min_mu
    groups = np.zeros(mu.size, dtype=np.int64) if beam_of is None else np.asarray(beam_of)
    for b in np.unique(groups):  # loop over beams
        mine = np.flatnonzero(groups == b)
        if not keep[mine].any():
            keep[mine[np.argmax(mu[mine])]] = True
    if (min_mu > 0 and (mu[keep] < min_mu).any()) or not keep.all():
        mu2, det2 = refit_segment_mu(
            problem,
            a[:, keep],
            np.maximum(mu[keep], min_mu),
            order,
            min_mu,
            iterations,
            objectives=objectives,
            mu_bound=mu_bound,
        )
        mu = np.zeros_like(mu)
        mu[keep] = mu2
        det = det2.model_copy(
            update={
                "objective_start": det.objective_start,
                "iterations": det.iterations + det2.iterations,
                "dropped_segments": int((~keep).sum()),
            }
        )
    return mu, keep, det
