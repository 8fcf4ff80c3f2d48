"""Exact segment-MU refit: the leaves of every segment fixed, the segments' MU re-optimised on
their exact doses and on the dose the plan will have after prescription normalisation.

Units: MU are course MU (the optimiser's); the segment-dose matrix is Gy per course MU on the
problem's voxel rows; doses are course doses in Gy. Objectives are the optimiser's terms
(:class:`rayrt.optimize.objectives.Objective`, weighted squared Gy).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from rayrt.convert.fluence import segments_fluence_on_bixels
from rayrt.convert.results import MuRefitDetail
from rayrt.domain.machine import MachineModel
from rayrt.domain.order import MedicalOrder
from rayrt.domain.plan import Segment
from rayrt.dose.geometry import BeamletGrid
from rayrt.optimize._threads import single_blas_thread
from rayrt.optimize.objectives import Objective
from rayrt.optimize.problem import OptimizationProblem

__all__ = ["segment_dose_matrix", "metric_weights", "normalised_objective", "refit_segment_mu"]


def segment_dose_matrix(
    dij: sp.spmatrix,
    grids: list[BeamletGrid],
    slices: list[slice],
    machine: MachineModel,
    segs_course: list[list[Segment]],
    rows: np.ndarray,
) -> np.ndarray:
    """Dose (Gy per course MU) of every segment on the voxel rows ``rows`` (dose-grid voxel indices):
    column s = Dij_beam @ exact fluence of segment s at 1 MU (:func:`segments_fluence_on_bixels`:
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
        f = np.stack(
            [segments_fluence_on_bixels([s.model_copy(update={"mu": 1.0})], machine, g) for s in segs], axis=1
        ).astype(np.float32)
        a[:, k : k + len(segs)] = np.asarray(csc[:, sl] @ f)[rows]
        k += len(segs)
    return a


def metric_weights(d: np.ndarray, volume_pct: float | None) -> tuple[float, np.ndarray, np.ndarray]:
    """The normalisation metric of doses ``d`` (Gy) and its gradient as (value, voxel positions,
    weights): ``Dx`` by the mid-rank interpolation of :func:`rayrt.qa.dvh.dose_at_volume` (two
    voxels), or the mean (``volume_pct`` None)."""
    n = d.size
    if volume_pct is None:
        return float(d.mean()), np.arange(n), np.full(n, 1.0 / n)
    order = np.argsort(-d, kind="stable")
    p = volume_pct / 100.0 * n + 0.5 - 1.0  # 0-based fractional rank of the Dx point
    if p <= 0:
        return float(d[order[0]]), order[:1], np.ones(1)
    if p >= n - 1:
        return float(d[order[-1]]), order[-1:], np.ones(1)
    r0 = int(np.floor(p))
    f = p - r0
    idx = order[[r0, r0 + 1]]
    wts = np.array([1.0 - f, f])
    return float(wts @ d[idx]), idx, wts


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
) -> tuple[np.ndarray, MuRefitDetail]:
    """Segment MU (course) re-optimised with the leaves fixed, on the *normalised* exact dose.

    ``a`` (problem rows x segments, Gy per MU) from :func:`segment_dose_matrix`. The objective is
    the sum of ``objectives`` (default: the problem's; conversions pass the mimicking terms only;
    hard terms as a stiff penalty, 10x the largest soft weight), evaluated on the dose the plan
    will have after prescription normalisation, d(m) = s(m) A m with
    s = Rx x value_pct / metric(A m) (:func:`rayrt.optimize.normalize.normalization_factor`), so the
    optimiser cannot trade target coverage that normalisation later buys back with organ dose.
    Exact gradient: grad = s A^T g - (s / metric) (g . A m) grad(metric). L-BFGS-B, MU >= ``min_mu``.
    Returns (normalised MU, details)."""
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

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        f, grad = normalised_objective(z * scale_m, a32, terms, rx if use_norm else None, nrows, vol)
        return f, grad * scale_m

    z0 = np.maximum(np.asarray(mu0, float), min_mu) / scale_m
    t = time.perf_counter()
    with single_blas_thread():
        f0 = fun(z0)[0]
        res = minimize(
            fun,
            z0,
            jac=True,
            method="L-BFGS-B",
            bounds=[(min_mu / scale_m, None)] * z0.size,
            options={"maxiter": int(iterations), "maxcor": 20, "ftol": 1e-10},
        )
    m = res.x * scale_m
    if use_norm:  # return the normalised MU (the caller's normalisation then moves them by round-off only)
        mv = metric_weights((a32 @ m.astype(np.float32))[nrows].astype(np.float64), vol)[0]
        m = m * rx / max(mv, 1e-9)
    return m, MuRefitDetail(
        objective_start=float(f0),
        objective=float(res.fun),
        iterations=int(res.nit),
        segments=int(m.size),
        seconds=round(time.perf_counter() - t, 3),
    )
