"""Fluence-map optimisation (FMO): non-negative beamlet weights minimising the weighted objectives,
hard constraints honoured by an augmented Lagrangian (penalty continuation) with a final
feasibility check.

Inner solver: scipy L-BFGS-B with bounds w >= 0 on the row-subset float32 Dij with numba-parallel
products (:mod:`rayrt.optimize.sparse`).

Exact one-sided screening: an over-dose-type term (squared over-dose / max dose above D Gy)
contributes only voxels with d > D. After a full dose evaluation at weights w0, for any w
    d_i(w) <= d_i(w0) + S_i * max_j (w_j - w0_j)_+        (S_i = sum_j D_ij >= 0),
so voxel i can only be active once delta = max(w - w0)_+ exceeds (D - d_i(w0)) / S_i. These
slacks are sorted once per refresh; each evaluation computes exact doses only for the voxels whose
slack is below the current delta (a prefix of the sorted list), and refreshes when that prefix
grows past a fraction of the structure. Under-dose terms use the mirror bound. The value and the
gradient are exact, not approximated (the large external-contour term costs only its hot rim).

Augmented Lagrangian: for residuals r(d) <= 0 (Gy) of the hard terms with multipliers lambda,
    L(w) = F(w) + sum_c (1/n_c) * (rho/2) * sum_i max(0, r_i + lambda_i / rho)^2,
lambda_i <- max(0, lambda_i + rho r_i) after each inner solve; rho grows 4x while the worst
violation does not drop below ``constraint_tol_gy``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field
from scipy.optimize import minimize

from rayrt.optimize._threads import single_blas_thread
from rayrt.optimize.problem import OptimizationProblem

__all__ = ["FluenceResult", "FluenceOptions", "ObjectiveEvaluator", "optimize_fluence", "initial_weights"]


class FluenceOptions(BaseModel):
    max_iterations: int = Field(default=400, ge=1, description="L-BFGS-B iterations per inner solve")
    ftol: float = Field(default=1e-7, gt=0, description="relative objective decrease to stop (scipy ftol)")
    gtol: float = Field(default=1e-7, gt=0)
    constraint_tol_gy: float = Field(default=0.05, gt=0, description="accepted worst hard-constraint violation (Gy)")
    max_outer: int = Field(default=8, ge=1, description="augmented-Lagrangian outer iterations")
    rho0: float = Field(default=1.0, gt=0, description="initial penalty factor relative to the soft objective scale")
    screening: bool = True
    target_objective: float | None = Field(default=None, description="stop as soon as the soft objective is <= this (benchmarks)")


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
    history: list[tuple[float, float]] = Field(default_factory=list, description="(seconds, soft objective) per evaluation")
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
    order: np.ndarray = None  # term voxel positions sorted by slack
    slack: np.ndarray = None  # sorted slacks (weight units)


@dataclass
class ObjectiveEvaluator:
    """f(w) and grad f(w) of a problem's soft objectives (+ AL penalty of its hard ones)."""

    problem: OptimizationProblem
    screening: bool = True
    refresh_fraction: float = 0.25
    rho: float = 0.0
    lambdas: list[np.ndarray] = field(default_factory=list)
    n_eval: int = 0
    n_refresh: int = 0
    t0: float = field(default_factory=time.perf_counter)
    history: list[tuple[float, float]] = field(default_factory=list)
    last_soft: float = np.inf

    def __post_init__(self):
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
        self._screened_ids = {s.obj_index for s in self._screens}
        self._w_ref = None
        self._d_ref = None
        if not self.lambdas:
            self.lambdas = [np.zeros(0) for _ in p.objectives]

    # ------------------------------------------------------------------ screening state
    def _refresh(self, w: np.ndarray) -> np.ndarray:
        p = self.problem
        d = p.dij.dose(w)
        self._w_ref, self._d_ref = w.copy(), d
        rs = p.dij.rowsums()
        for s in self._screens:
            o = p.objectives[s.obj_index]
            dv = d[o.voxels].astype(np.float64)
            S = rs[o.voxels]
            margin = 1e-4 * max(o.dose_gy, 1.0)
            gap = (o.dose_gy - dv - margin) if s.sign > 0 else (dv - o.dose_gy - margin)
            with np.errstate(divide="ignore", invalid="ignore"):
                slack = np.where(S > 0, gap / S, np.inf)
            slack = np.where(gap <= 0, -np.inf, slack)
            s.order = np.argsort(slack, kind="stable")
            s.slack = slack[s.order]
        self.n_refresh += 1
        return d

    def _screened_dose(self, w: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Dose on the needed rows (array over all rows, valid where needed) and candidate voxel positions per screened term."""
        p = self.problem
        if not self._screens:
            return p.dij.dose(w), {}
        if self._w_ref is None:
            d = self._refresh(w)
            return d, {s.obj_index: s.order[: np.searchsorted(s.slack, 0.0, side="right")] for s in self._screens}
        dw = w - self._w_ref
        up, down = float(max(dw.max(), 0.0)), float(max((-dw).max(), 0.0))
        cands = {}
        total, cap = 0, 0
        for s in self._screens:
            delta = up if s.sign > 0 else down
            k = int(np.searchsorted(s.slack, delta, side="right"))
            cands[s.obj_index] = s.order[:k]
            total += k
            cap += s.order.size
        if total > self.refresh_fraction * cap:
            d = self._refresh(w)
            return d, {s.obj_index: s.order[: np.searchsorted(s.slack, 0.0, side="right")] for s in self._screens}
        need = self._always.copy()
        for s in self._screens:
            need[self.problem.objectives[s.obj_index].voxels[cands[s.obj_index]]] = True
        rows = np.flatnonzero(need)
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
                f, gr = o.value_and_grad(d[vox])
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
        self.n_eval += 1
        self.last_soft = soft
        self.history.append((time.perf_counter() - self.t0, soft))
        return soft + pen, gw

    def soft_value(self, w: np.ndarray) -> float:
        d = self.problem.dose(w)
        return self.problem.total_objective(d)

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


def _optimize_fluence(
    problem: OptimizationProblem,
    options: FluenceOptions | None = None,
    w0: np.ndarray | None = None,
) -> FluenceResult:
    """Minimise the order's objectives over non-negative beamlet weights, honouring hard constraints."""
    opt = options or FluenceOptions()
    t0 = time.perf_counter()
    ev = ObjectiveEvaluator(problem, screening=opt.screening)
    w = initial_weights(problem) if w0 is None else np.maximum(np.asarray(w0, dtype=np.float64), 0.0)
    bounds = [(0.0, None)] * problem.num_beamlets
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

    def fun(x):
        f, g = ev(x)
        if opt.target_objective is not None and ev.last_soft <= opt.target_objective and not has_hard:
            stop_w[:] = x
            raise _Stop
        return f, g

    stop_w = np.zeros(problem.num_beamlets)
    for outer in range(1, opt.max_outer + 1):
        try:
            res = minimize(
                fun, w, jac=True, method="L-BFGS-B", bounds=bounds,
                options={"maxiter": opt.max_iterations, "ftol": opt.ftol, "gtol": opt.gtol, "maxcor": 20},
            )
            w = np.maximum(res.x, 0.0)
            iters += int(res.nit)
            converged = bool(res.success)
            message = str(res.message)
        except _Stop:
            w = stop_w.copy()
            converged, message = True, "reached target objective"
            break
        if not has_hard:
            break
        worst = ev.update_multipliers(w)
        if worst <= opt.constraint_tol_gy:
            break
        if worst > 0.25 * prev_worst or outer == 1:
            ev.rho *= 4.0
        prev_worst = worst
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
        message=message if worst <= opt.constraint_tol_gy else f"{message}; hard constraints violated by up to {worst:.3f} Gy",
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
