"""Fluence-map optimisation (FMO): non-negative beamlet weights minimising the weighted objectives,
hard constraints honoured by an augmented Lagrangian (penalty continuation) with a final
feasibility check.

Inner solver: scipy L-BFGS-B (100 correction pairs by default) with bounds w >= 0 on the
row-subset float32 Dij with numba-parallel products (:mod:`rayrt.optimize.sparse`; the fullest
rows get a dense copy at the start of ``optimize_fluence``). Start: uniform weights scaled so the
mean target dose is the prescription.

Exact one-sided screening: an over-dose-type term (squared over-dose / max dose above D Gy) on a
large structure (the external contour) contributes only voxels with d > D. The beamlets are split
into G groups of consecutive Dij columns and R[i, g] = sum_{j in g} D_ij is precomputed. After a
full dose evaluation at weights w0, for any w
    d_i(w) <= d_i(w0) + sum_g R[i, g] * max_{j in g} (w_j - w0_j)_+ ,
so each evaluation computes exact doses only for the voxels whose bound reaches D (plus every
voxel of the other terms; a cheaper bound rowsum_i * max_g dg_g rules most voxels out first).
w0 is refreshed (one full product) once the non-zeros that the growing candidate sets cost
beyond those of the first evaluation after the last refresh add up to one full product (ski
rental), or when the candidates exceed a fraction of the structure. Under-dose terms use the
mirror bound. The value and the gradient stay exact (the large external-contour term costs only
its hot rim); tests compare against unscreened evaluation.

Augmented Lagrangian: for residuals r(d) <= 0 (Gy) of the hard terms with multipliers lambda,
    L(w) = F(w) + sum_c (1/n_c) * (rho/2) * sum_i max(0, r_i + lambda_i / rho)^2,
lambda_i <- max(0, lambda_i + rho r_i) after each inner solve; rho grows 4x while the worst
violation does not drop below ``constraint_tol_gy``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numba
import numpy as np
from pydantic import BaseModel, Field
from scipy.optimize import minimize

from rayrt.optimize._threads import single_blas_thread
from rayrt.optimize.problem import OptimizationProblem

__all__ = ["FluenceResult", "FluenceOptions", "ObjectiveEvaluator", "optimize_fluence", "initial_weights"]


@numba.njit(cache=True, fastmath=True)
def _screen_candidates(d_ref, rowsum, R, dg, level, sign):
    """Positions i with d_ref[i] + R[i] . dg > level (sign > 0) or d_ref[i] - R[i] . dg < level
    (sign < 0), dg >= 0 the per-group largest weight increase (decrease). A cheaper bound
    rowsum[i] * max(dg) >= R[i] . dg rules most voxels out before the group sum is formed.
    (fastmath: a vectorised group sum; its float32 rounding, ~1e-6 relative, is far inside the
    1e-4 * D margin of the level the caller passes.)"""
    n = d_ref.size
    ng = dg.size
    mx = np.float32(0.0)
    for g in range(ng):
        if dg[g] > mx:
            mx = dg[g]
    out = np.empty(n, dtype=np.int64)
    m = 0
    for i in range(n):
        if sign > 0:
            if d_ref[i] + rowsum[i] * mx <= level:
                continue
        elif d_ref[i] - rowsum[i] * mx >= level:
            continue
        acc = np.float32(0.0)
        Ri = R[i]
        for g in range(ng):
            acc += Ri[g] * dg[g]
        if (sign > 0 and d_ref[i] + acc > level) or (sign < 0 and d_ref[i] - acc < level):
            out[m] = i
            m += 1
    return out[:m]


class FluenceOptions(BaseModel):
    max_iterations: int = Field(default=400, ge=1, description="L-BFGS-B iterations per inner solve")
    ftol: float = Field(default=1e-7, gt=0, description="relative objective decrease to stop (scipy ftol)")
    gtol: float = Field(default=1e-7, gt=0)
    constraint_tol_gy: float = Field(default=0.05, gt=0, description="accepted worst hard-constraint violation (Gy)")
    max_outer: int = Field(default=8, ge=1, description="augmented-Lagrangian outer iterations")
    rho0: float = Field(default=1.0, gt=0, description="initial penalty factor relative to the soft objective scale")
    screening: bool = True
    precondition: bool = Field(
        default=True, description="diagonal (Jacobi) scaling of the weights by the Gauss-Newton Hessian diagonal"
    )
    target_objective: float | None = Field(
        default=None, description="stop as soon as the soft objective is <= this (benchmarks)"
    )
    lbfgs_memory: int = Field(default=100, ge=3, le=500, description="L-BFGS-B correction pairs (maxcor)")
    dense_rows: bool = Field(
        default=True, description="dense copy of the fullest Dij rows for faster products (SubsetDij.enable_dense)"
    )


class FluenceResult(BaseModel):
    """Beamlet weights (>= 0) and how the optimiser got there."""

    model_config = {"arbitrary_types_allowed": True}

    weights: list[float] | None = Field(default=None, exclude=True)
    objective: float = Field(description="weighted soft objective at the result")
    iterations: int
    evaluations: int
    outer_iterations: int
    seconds: float
    converged: bool
    message: str
    max_violation_gy: float = 0.0
    constraint_violations: list[dict] = Field(default_factory=list)
    history: list[tuple[float, float]] = Field(
        default_factory=list, description="(seconds, soft objective) per evaluation"
    )
    al_rho: float = Field(default=0.0, exclude=True, description="final augmented-Lagrangian penalty factor")
    al_lambdas: list | None = Field(default=None, exclude=True, description="final multipliers per objective")

    @property
    def w(self) -> np.ndarray:
        return np.asarray(self.weights, dtype=np.float64)


def initial_weights(problem: OptimizationProblem) -> np.ndarray:
    """Uniform weights scaled so the mean target dose equals the prescription (matRad's start)."""
    w = np.ones(problem.num_beamlets)
    rows = problem.structure_rows[problem.target]
    d = problem.dij.dose(w, rows)
    m = float(np.mean(d)) if d.size else 0.0
    return w * (problem.prescription_gy / m if m > 0 else 1.0)


@dataclass
class _Screen:
    obj_index: int
    sign: int
    # Filled by ObjectiveEvaluator (R and rowsum at set-up, d_ref at every refresh); empty until then.
    # R: (term voxels, groups) float32, dose per unit weight of every bixel of a group;
    # rowsum: (term voxels,) float32, R summed over the groups; d_ref: term voxel doses at the last refresh (Gy).
    R: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    rowsum: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    d_ref: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


@dataclass
class ObjectiveEvaluator:
    """f(w) and grad f(w) of a problem's soft objectives (+ AL penalty of its hard ones)."""

    problem: OptimizationProblem
    screening: bool = True
    refresh_fraction: float = 0.25
    group_budget: float = 25e6  # entries of the per-term group matrices R (float32)
    rho: float = 0.0
    lambdas: list[np.ndarray] = field(default_factory=list)
    n_eval: int = 0
    n_refresh: int = 0
    t0: float = field(default_factory=time.perf_counter)
    history: list[tuple[float, float]] = field(default_factory=list)
    last_soft: float = np.inf

    def __post_init__(self) -> None:
        p = self.problem
        n = p.dij.num_rows
        self._screens: list[_Screen] = []
        always = np.zeros(n, dtype=bool)
        for k, o in enumerate(p.objectives):
            if self.screening and not o.hard and o.screen_sign != 0 and o.n > 2000:
                self._screens.append(_Screen(k, o.screen_sign))
            else:
                always[o.voxels] = True
        self._always = always
        self._row_nnz = np.diff(p.dij.indptr).astype(np.int32)
        self._full_nnz = float(p.dij.nnz)
        self._excess = 0.0
        self._base_nnz: float | None = None
        self._screened_ids = {s.obj_index for s in self._screens}
        self._w_ref: np.ndarray | None = None
        self._d_ref: np.ndarray | None = None
        if self._screens:
            nb = p.num_beamlets
            n_scr = sum(p.objectives[s_.obj_index].n for s_ in self._screens)
            G = int(np.clip(self.group_budget // max(n_scr, 1), 8, 128))
            gsize = int(np.ceil(nb / G))
            self._starts = np.arange(0, nb, gsize)
            for s_ in self._screens:
                s_.R = p.dij.group_rowsums(p.objectives[s_.obj_index].voxels, gsize)
                s_.rowsum = s_.R.sum(axis=1, dtype=np.float32) * np.float32(1.0 + 1e-5)
        if not self.lambdas:
            self.lambdas = [np.zeros(0) for _ in p.objectives]

    # ------------------------------------------------------------------ screening state
    def _refresh(self, w: np.ndarray) -> np.ndarray:
        p = self.problem
        d = p.dij.dose(w)
        self._w_ref, self._d_ref = w.copy(), d
        for s in self._screens:
            s.d_ref = d[p.objectives[s.obj_index].voxels].astype(np.float32)
        self.n_refresh += 1
        self._excess = 0.0
        self._base_nnz = None
        return d

    def _candidates(self, s: _Screen, dg_up: np.ndarray | None, dg_down: np.ndarray | None) -> np.ndarray:
        """Term voxel positions whose dose bound can reach the active side of the term's level:
        d_i(w) <= d_i(w0) + sum_g R[i, g] * max_{j in g} (w_j - w0_j)_+  (and the mirror lower bound)."""
        o = self.problem.objectives[s.obj_index]
        margin = 1e-4 * max(o.dose_gy, 1.0)
        if s.sign > 0:
            if dg_up is None:
                return np.flatnonzero(s.d_ref > o.dose_gy - margin)
            return _screen_candidates(s.d_ref, s.rowsum, s.R, dg_up, np.float32(o.dose_gy - margin), 1)
        if dg_down is None:
            return np.flatnonzero(s.d_ref < o.dose_gy + margin)
        return _screen_candidates(s.d_ref, s.rowsum, s.R, dg_down, np.float32(o.dose_gy + margin), -1)

    def _screened_dose(self, w: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Dose on the needed rows (array over all rows, valid where needed) and candidate voxel positions
        per screened term.

        Refresh policy (ski rental): the candidate sets grow as w moves away from the reference
        weights w0; the non-zeros computed beyond those of the first evaluation after the last
        refresh are summed, and once that excess reaches the cost of one full product (all rows)
        this evaluation computes every row and becomes the new reference. A refresh is also forced
        when the candidates exceed ``refresh_fraction`` of the screened voxels."""
        p = self.problem
        if not self._screens:
            return p.dij.dose(w), {}
        if self._w_ref is None:
            d = self._refresh(w)
            return d, {s.obj_index: self._candidates(s, None, None) for s in self._screens}
        dw = (w - self._w_ref).astype(np.float32)
        dg_up = np.maximum(np.maximum.reduceat(dw, self._starts), 0.0)
        dg_down = np.maximum(np.maximum.reduceat(-dw, self._starts), 0.0)
        cands = {}
        total, cap = 0, 0
        for s in self._screens:
            c = self._candidates(s, dg_up, dg_down)
            cands[s.obj_index] = c
            total += c.size
            cap += s.R.shape[0]
        need = self._always.copy()
        for s in self._screens:
            need[self.problem.objectives[s.obj_index].voxels[cands[s.obj_index]]] = True
        rows = np.flatnonzero(need)
        nnz = float(np.sum(self._row_nnz[rows]))
        if self._base_nnz is None:
            self._base_nnz = nnz
        self._excess += nnz - self._base_nnz
        if total > self.refresh_fraction * cap or self._excess > self._full_nnz:
            d = self._refresh(w)
            return d, {s.obj_index: self._candidates(s, None, None) for s in self._screens}
        d = np.zeros(p.dij.num_rows, dtype=np.float32)
        d[rows] = p.dij.dose(w, rows)
        return d, cands

    # ------------------------------------------------------------------ evaluation
    def __call__(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        p = self.problem
        d, cands = self._screened_dose(w)
        g = np.zeros(p.dij.num_rows, dtype=np.float64)
        soft = 0.0
        pen = 0.0
        for k, o in enumerate(p.objectives):
            if k in self._screened_ids:
                pos = cands[k]
                if pos.size == 0:
                    continue
                vox = o.voxels[pos]
                f, gr = (o if o.reference_gy is None else o.restricted(pos)).value_and_grad(d[vox])
                scale = pos.size / o.n
                soft += o.weight * f * scale
                g[vox] += o.weight * scale * gr
                continue
            dv = d[o.voxels]
            if not o.hard:
                f, gr = o.value_and_grad(dv)
                soft += o.weight * f
                g[o.voxels] += o.weight * gr
            elif self.rho > 0:
                r, vjp = o.residual(dv)
                lam = self.lambdas[k] if self.lambdas[k].size == r.size else np.zeros(r.size)
                t = np.maximum(0.0, r + lam / self.rho)
                t[~np.isfinite(t)] = 0.0
                nn = float(r.size)
                pen += 0.5 * self.rho * float(np.dot(t, t)) / nn
                g[o.voxels] += vjp(self.rho * t / nn)
        rows = np.flatnonzero(g)
        gw = p.dij.grad(g[rows], rows) if rows.size else np.zeros(p.num_beamlets)
        if p.regularizer is not None:
            fr, gr_w = p.regularizer.value_and_grad(np.asarray(w, dtype=np.float64))
            soft += fr
            gw = gw + gr_w
        self.n_eval += 1
        self.last_soft = soft
        self.history.append((time.perf_counter() - self.t0, soft))
        return soft + pen, gw

    def soft_value(self, w: np.ndarray) -> float:
        d = self.problem.dose(w)
        reg = self.problem.regularizer
        return self.problem.total_objective(d) + (0.0 if reg is None else reg.value_and_grad(w)[0])

    def update_multipliers(self, w: np.ndarray) -> float:
        """lambda <- max(0, lambda + rho r); returns the worst violation (Gy)."""
        p = self.problem
        d = p.dose(w)
        worst = 0.0
        for k, o in enumerate(p.objectives):
            if not o.hard:
                continue
            r, _ = o.residual(d[o.voxels])
            lam = self.lambdas[k] if self.lambdas[k].size == r.size else np.zeros(r.size)
            self.lambdas[k] = np.maximum(0.0, lam + self.rho * r)  # r = -inf (inactive DVH voxel) -> 0
            if r.size:
                worst = max(worst, float(np.max(np.where(np.isfinite(r), r, 0.0))))
        return worst


class _Stop(Exception):
    pass


def jacobi_scale(problem: OptimizationProblem) -> np.ndarray:
    """Per-beamlet scale s_j = 1 / sqrt(H_jj) (normalised to mean 1) with H_jj = sum over the
    unscreened soft terms of 2 weight / n * sum_i D_ij^2, the Gauss-Newton Hessian diagonal of the
    quadratic objectives: L-BFGS-B then works on z = w / s, whose curvatures are comparable."""
    n = problem.dij.num_rows
    rw = np.zeros(n)
    for o in problem.objectives:
        if o.n <= 2000 or o.screen_sign == 0:
            rw[o.voxels] += 2.0 * o.weight / max(o.n, 1)
    rows = np.flatnonzero(rw)
    if rows.size == 0:
        return np.ones(problem.num_beamlets)
    d2 = problem.dij.data.astype(np.float32) ** 2
    from rayrt.optimize.sparse import _csr_rmatvec_rows_serial

    h = _csr_rmatvec_rows_serial(
        problem.dij.indptr,
        problem.dij.indices,
        d2,
        rows.astype(np.int64),
        rw[rows].astype(np.float32),
        problem.num_beamlets,
    )
    h = np.maximum(h, 1e-3 * max(float(np.median(h[h > 0])) if (h > 0).any() else 1.0, 1e-30))
    s = 1.0 / np.sqrt(h)
    return s / s.mean()


def _optimize_fluence(
    problem: OptimizationProblem,
    options: FluenceOptions | None = None,
    w0: np.ndarray | None = None,
) -> FluenceResult:
    """Minimise the order's objectives over non-negative beamlet weights, honouring hard constraints."""
    opt = options or FluenceOptions()
    t0 = time.perf_counter()
    if opt.dense_rows:
        problem.dij.enable_dense()  # inside the timed region: part of the optimiser's set-up
    ev = ObjectiveEvaluator(problem, screening=opt.screening)
    w = initial_weights(problem) if w0 is None else np.maximum(np.asarray(w0, dtype=np.float64), 0.0)
    upper = problem.regularizer.upper_bound if problem.regularizer is not None else None
    if upper is not None:
        w = np.minimum(w, upper)
    has_hard = bool(problem.hard)
    if has_hard:
        f_soft = max(ev.soft_value(w), 1e-6)
        ev.rho = opt.rho0 * f_soft / max(problem.prescription_gy * 0.01, 1e-3) ** 2
    iters = 0
    outer = 0
    converged = False
    message = ""
    worst = 0.0
    prev_worst = np.inf

    def fun_w(x):  # in the weights w
        f, g = ev(x)
        if opt.target_objective is not None and ev.last_soft <= opt.target_objective and not has_hard:
            stop_w[:] = x
            raise _Stop
        return f, g

    stop_w = np.zeros(problem.num_beamlets)
    scale = jacobi_scale(problem) if opt.precondition else np.ones(problem.num_beamlets)

    def fun(z):  # in the scaled variables z: weights w = scale * z
        f, g = fun_w(z * scale)
        return f, g * scale

    w = w / scale
    bounds = [(0.0, None)] * problem.num_beamlets if upper is None else [(0.0, upper / s) for s in scale]
    nit = [0]

    def _count(*_):
        nit[0] += 1

    for outer in range(1, opt.max_outer + 1):
        try:
            nit[0] = 0
            res = minimize(
                fun,
                w,
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                callback=_count,
                options={"maxiter": opt.max_iterations, "ftol": opt.ftol, "gtol": opt.gtol, "maxcor": opt.lbfgs_memory},
            )
            w = np.maximum(res.x, 0.0)
            iters += int(res.nit)
            converged = bool(res.success)
            message = str(res.message)
        except _Stop:
            iters += nit[0]
            w = stop_w / scale
            converged, message = True, "reached target objective"
            break
        if not has_hard:
            break
        worst = ev.update_multipliers(w * scale)
        if worst <= opt.constraint_tol_gy:
            break
        if worst > 0.25 * prev_worst or outer == 1:
            ev.rho *= 4.0
        prev_worst = worst
    w = w * scale
    d = problem.dose(w)
    viol = [r for r in problem.objective_values(d) if r["hard"]]
    worst = max([r["violation_gy"] for r in viol], default=0.0)
    return FluenceResult(
        weights=w.tolist(),
        objective=problem.total_objective(d),
        iterations=iters,
        evaluations=ev.n_eval,
        outer_iterations=outer,
        seconds=time.perf_counter() - t0,
        converged=converged and worst <= opt.constraint_tol_gy,
        message=message
        if worst <= opt.constraint_tol_gy
        else f"{message}; hard constraints violated by up to {worst:.3f} Gy",
        max_violation_gy=worst,
        constraint_violations=viol,
        history=ev.history,
        al_rho=ev.rho,
        al_lambdas=ev.lambdas,
    )


def optimize_fluence(
    problem: OptimizationProblem,
    options: FluenceOptions | None = None,
    w0: np.ndarray | None = None,
) -> FluenceResult:
    """Minimise the order's objectives over non-negative beamlet weights, honouring hard constraints."""
    with single_blas_thread():
        return _optimize_fluence(problem, options, w0)
