"""The bound on a plan's normalised total MU (rayrt.optimize.mu_bound): the penalty and its exact
gradient through the normalisation metric, scale invariance, and the exact segment-MU refit
(rayrt.optimize.mu_refit) holding the bound where the unbounded refit exceeds it."""

from __future__ import annotations

import numpy as np
import pytest

from rayrt.domain.order import MedicalOrder
from rayrt.optimize.mu_bound import MU_BOUND_STIFFNESS_STEPS, MUBound, NormalisedMU, normalised_mu_bound
from rayrt.optimize.mu_refit import refit_segment_mu
from rayrt.optimize.objectives import make_objective
from rayrt.optimize.problem import OptimizationProblem
from rayrt.optimize.sparse import SubsetDij

RX_GY = 50.0


def test_penalty_is_zero_within_the_bound_and_its_derivative_exact():
    b = MUBound.from_open_field(4.0, 1000.0, RX_GY)
    assert b.limit_course_mu == pytest.approx(4000.0 * 0.98)
    assert b.penalty(3000.0) == (0.0, 0.0)
    n, h = 4100.0, 1e-3
    p, dp = b.penalty(n)
    assert p > 0
    assert dp == pytest.approx((b.penalty(n + h)[0] - b.penalty(n - h)[0]) / (2 * h), rel=1e-6)


def test_stiffness_steps_end():
    b = MUBound(100.0, RX_GY)
    seen = [b.stiffness]
    while b.stiffer():
        seen.append(b.stiffness)
    assert tuple(seen) == MU_BOUND_STIFFNESS_STEPS


def _case(seed: int = 5):
    rng = np.random.default_rng(seed)
    n_vox, n_seg = 300, 9
    a = (rng.random((n_vox, n_seg)) * 0.02).astype(np.float32)
    ptv, oar = np.arange(0, 120), np.arange(120, 300)
    a[oar] *= np.linspace(0.2, 2.0, n_seg, dtype=np.float32)  # segments differ in organ dose per MU
    return a, ptv, oar


def test_normalised_penalty_gradient_matches_finite_differences():
    """P(N(m)), N = Rx / (mean(A m) / ratio) x sum m: dP/dm = dm + A[rows]^T gd against central
    differences; with ratio = mean / D95 at m, N is the exact normalised MU there, and it is
    invariant under a uniform scaling of m."""
    a, ptv, _ = _case()
    m = np.random.default_rng(1).random(a.shape[1]) * 100 + 50
    d = a[ptv].astype(np.float64) @ m
    nb = NormalisedMU(MUBound(1.0, RX_GY), ptv, RX_GY, 95.0)
    nb.bound.limit_course_mu = 0.5 * nb.value(m.sum(), d)
    ratio = nb.mean_ratio(d)
    assert ratio > 1.0  # the mean of a dose above its D95

    def f(x):
        return nb.penalty(x.sum(), a[ptv].astype(np.float64) @ x, ratio)[0]

    p, dm, gd = nb.penalty(m.sum(), d, ratio)
    assert p == pytest.approx(nb.bound.penalty(nb.value(m.sum(), d))[0])
    grad = dm + a[ptv].T.astype(np.float64) @ gd
    h = 1e-3
    fd = np.array([(f(m + h * e) - f(m - h * e)) / (2 * h) for e in np.eye(m.size)])
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-6 * np.abs(fd).max())
    assert nb.value(3.0 * m.sum(), 3.0 * (a[ptv].astype(np.float64) @ m)) == pytest.approx(
        nb.value(m.sum(), a[ptv].astype(np.float64) @ m)
    )


def _problem(a: np.ndarray, ptv: np.ndarray, oar: np.ndarray) -> OptimizationProblem:
    import scipy.sparse as sp

    objectives = [
        make_objective("squared_deviation", "PTV", ptv, RX_GY, weight=10.0),
        make_objective("squared_overdose", "OAR", oar, 5.0, weight=5.0),
    ]
    return OptimizationProblem(
        dij=SubsetDij(sp.csr_matrix(a)),
        objectives=objectives,
        structure_rows={"PTV": ptv, "OAR": oar},
        prescription_gy=RX_GY,
        target="PTV",
    )


def _order() -> MedicalOrder:
    return MedicalOrder.model_validate(
        {
            "prescription": {"target": "PTV", "total_dose_gy": RX_GY, "fractions": 25},
            "objectives": [{"structure": "PTV", "kind": "squared_deviation", "dose_gy": RX_GY}],
        }
    )


def _modulated_case():
    """Segment 0 is an open field (PTV and organ alike, 0.02 Gy/MU); segments 1-4 each cover a quarter
    of the PTV at 0.02 Gy/MU and spare the organ (0.002 Gy/MU). The open-field course MU for 50 Gy
    is 2500; the organ-sparing plan (segments 1-4) needs 4x that."""
    ptv, oar = np.arange(0, 100), np.arange(100, 200)
    a = np.zeros((200, 5))
    a[:, 0] = 0.02
    for q in range(4):
        a[ptv[q * 25 : (q + 1) * 25], 1 + q] = 0.02
        a[oar, 1 + q] = 0.002
    # +-2 % voxel to voxel (no ties in the D95 ranking)
    a *= np.random.default_rng(0).uniform(0.98, 1.02, size=a.shape)
    return a.astype(np.float32), ptv, oar


def test_refit_holds_the_bound_the_unbounded_refit_exceeds():
    a, ptv, oar = _modulated_case()
    prob, order = _problem(a, ptv, oar), _order()
    mu0 = np.full(a.shape[1], 500.0)
    free, _ = refit_segment_mu(prob, a, mu0, order, 0.0, 200)
    open_course = RX_GY / 0.02
    assert free.sum() > 3.5 * open_course  # unbounded: the organ-sparing segments
    bound = normalised_mu_bound(prob.structure_rows, order, 2.0, open_course)
    assert bound is not None and bound.bound.limit_course_mu < free.sum()
    held, _ = refit_segment_mu(prob, a, mu0, order, 0.0, 200, mu_bound=bound)
    # the refit returns normalised MU: their sum is the plan's MU after normalisation
    assert held.sum() <= bound.bound.limit_course_mu * 1.001
    assert held.sum() < free.sum()
    # the caller's bound is not stiffened by the refit (each refit starts at the first step)
    assert bound.bound.stiffness == MU_BOUND_STIFFNESS_STEPS[0]


def test_no_bound_without_a_factor_or_a_normalisation():
    a, ptv, oar = _case()
    prob, order = _problem(a, ptv, oar), _order()
    assert normalised_mu_bound(prob.structure_rows, order, None, 100.0) is None
    assert normalised_mu_bound(prob.structure_rows, order, 4.0, 0.0) is None
    none = order.model_copy(deep=True)
    none.prescription.normalization.metric = "none"
    assert normalised_mu_bound(prob.structure_rows, none, 4.0, 100.0) is None


def test_dropping_small_segments_never_empties_a_beam():
    """Unbounded, the organ-sparing segments carry the plan and the open segment falls to ~0 MU: it
    is dropped, unless it is its beam's only segment."""
    from rayrt.optimize.mu_refit import refit_dropping_small

    a, ptv, oar = _modulated_case()
    prob, order = _problem(a, ptv, oar), _order()
    mu0 = np.full(a.shape[1], 500.0)
    mu, keep, det = refit_dropping_small(prob, a, mu0, order, 100.0, 200)
    assert not keep[0] and mu[0] == 0.0 and det.dropped_segments == 1
    mu, keep, det = refit_dropping_small(prob, a, mu0, order, 100.0, 200, beam_of=np.array([0, 1, 1, 1, 1]))
    assert keep.all() and mu[0] > 0 and det.dropped_segments == 0
