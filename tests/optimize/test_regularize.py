"""Fluence regularisation: neighbour differences, the sweep-MU estimate and the penalty terms.

Two beams: beam 0 has a 3 x 4 beamlet grid with one missing beamlet (-1), beam 1 a full 2 x 3 grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rayrt.optimize.layout import BeamletLayout
from rayrt.optimize.regularize import FluenceRegularizer, neighbour_differences, sweep_mu_operator

IDX0 = np.array([[0, 1, 2, 3], [4, -1, 5, 6], [7, 8, 9, 10]])
IDX1 = np.array([[0, 1, 2], [3, 4, 5]])
LAYOUTS = [
    BeamletLayout(np.array([-15.0, -5.0, 5.0, 15.0]), np.array([-20.0, -10.0, 0.0, 10.0, 20.0]), IDX0),
    BeamletLayout(np.array([-10.0, 0.0, 10.0]), np.array([-15.0, -5.0, 5.0, 15.0]), IDX1),
]
SLICES = [slice(0, 11), slice(11, 17)]
NB = 17

# every pair of edge-sharing beamlets (global indices), row neighbours then column neighbours
EXPECTED_PAIRS = {
    # beam 0, along rows
    (0, 1), (1, 2), (2, 3), (5, 6), (7, 8), (8, 9), (9, 10),
    # beam 0, across rows
    (0, 4), (4, 7), (2, 5), (5, 9), (3, 6), (6, 10),
    # beam 1 (offset 11)
    (11, 12), (12, 13), (14, 15), (15, 16), (11, 14), (12, 15), (13, 16),
}  # fmt: skip


def _pairs(d) -> list[tuple[int, int]]:
    d = d.tocsr()
    out = []
    for k in range(d.shape[0]):
        row = d.getrow(k)
        plus = row.indices[row.data == 1.0]
        minus = row.indices[row.data == -1.0]
        assert plus.size == 1 and minus.size == 1 and row.nnz == 2
        out.append((int(plus[0]), int(minus[0])))
    return out


def _exact_sweep_mu(w: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """Sum over beams of the largest per-row sum of rising steps (0 outside and at missing beamlets)."""
    total, per_row = 0.0, []
    for lay, sl in zip(LAYOUTS, SLICES):
        fmap = lay.to_map(w[sl])
        steps = np.diff(np.concatenate([np.zeros((fmap.shape[0], 1)), fmap], axis=1), axis=1)
        rows = np.maximum(steps, 0.0).sum(axis=1)
        per_row.append(rows)
        total += rows.max()
    return total, per_row


def _fd_grad(f, w: np.ndarray, h: float) -> np.ndarray:
    g = np.zeros_like(w)
    for j in range(w.size):
        e = np.zeros_like(w)
        e[j] = h
        g[j] = (f(w + e) - f(w - e)) / (2 * h)
    return g


@pytest.fixture
def w() -> np.ndarray:
    return np.random.default_rng(7).uniform(0.5, 3.0, NB)


# ---------------------------------------------------------------------------- neighbour differences
def test_neighbour_differences_pairs():
    d = neighbour_differences(LAYOUTS, SLICES, NB)
    assert d.shape == (20, NB)
    pairs = _pairs(d)
    assert len(pairs) == len(set(pairs)) == 20
    assert set(pairs) == EXPECTED_PAIRS


def test_neighbour_differences_values(w):
    d = neighbour_differences(LAYOUTS, SLICES, NB)
    got = dict(zip(_pairs(d), d @ w))
    for a, b in EXPECTED_PAIRS:
        assert got[(a, b)] == w[a] - w[b]


def test_neighbour_differences_single_beamlet_beam_has_no_pairs():
    lay = BeamletLayout(np.array([0.0, 10.0]), np.array([0.0, 10.0]), np.array([[0]]))
    d = neighbour_differences([lay], [slice(0, 1)], 1)
    assert d.shape == (0, 1)


# ---------------------------------------------------------------------------- smoothing
def _regularizer(**kw) -> FluenceRegularizer:
    return FluenceRegularizer(
        differences=neighbour_differences(LAYOUTS, SLICES, NB), open_weight=2.0, prescription_gy=60.0, **kw
    )


def test_smoothing_value_hand_computed(w):
    reg = _regularizer(smooth_weight=0.25)
    value, _ = reg.value_and_grad(w)
    mean_sq = np.mean([((w[a] - w[b]) / 2.0) ** 2 for a, b in EXPECTED_PAIRS])
    assert value == pytest.approx(0.25 * 60.0**2 * mean_sq, rel=1e-12)
    # a uniform fluence is perfectly smooth
    value0, grad0 = reg.value_and_grad(np.full(NB, 1.7))
    assert value0 == 0.0 and not grad0.any()


def test_smoothing_gradient_matches_finite_differences(w):
    reg = _regularizer(smooth_weight=0.25)
    _, grad = reg.value_and_grad(w)
    fd = _fd_grad(lambda x: reg.value_and_grad(x)[0], w, 1e-5)
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-7)


def test_no_smoothing_no_sweep_is_zero(w):
    value, grad = _regularizer().value_and_grad(w)
    assert value == 0.0
    assert grad.shape == w.shape and not grad.any()


def test_upper_bound():
    assert _regularizer(max_factor=3.0).upper_bound == 6.0
    assert _regularizer().upper_bound is None


# ---------------------------------------------------------------------------- sweep MU
def test_sweep_operator_shapes():
    s = sweep_mu_operator(LAYOUTS, SLICES, NB)
    assert s.num_beams == 2
    assert s.steps.shape == (NB, NB)  # one rising-step candidate per beamlet
    assert s.rows.shape == (5, NB)  # 3 + 2 rows
    np.testing.assert_array_equal(s.beam_of_row, [0, 0, 0, 1, 1])


def test_sweep_mu_equals_the_p_norm_of_the_exact_row_sums(w):
    s = sweep_mu_operator(LAYOUTS, SLICES, NB)
    est, _ = s.value_and_grad(w, 1e-9)
    exact, per_row = _exact_sweep_mu(w)
    p = s.p
    p_norms = sum(float(np.max(r) * np.sum((r / np.max(r)) ** p) ** (1 / p)) for r in per_row)
    assert est == pytest.approx(p_norms, rel=1e-8)
    # the p-norm lies between the largest row and n_rows^(1/p) times it
    assert exact * (1 - 1e-8) <= est <= exact * 3 ** (1 / p)


def test_sweep_mu_exact_when_one_row_per_beam_is_modulated():
    w = np.zeros(NB)
    w[[4, 5, 6]] = [2.0, 1.0, 3.0]  # beam 0 row 1: [2, (missing), 1, 3] -> 2 + 1 + 2 = 5
    w[[14, 15, 16]] = [1.0, 4.0, 2.5]  # beam 1 row 1: 1 + 3 = 4
    s = sweep_mu_operator(LAYOUTS, SLICES, NB)
    est, _ = s.value_and_grad(w, 1e-9)
    exact, _ = _exact_sweep_mu(w)
    assert exact == 9.0
    assert est == pytest.approx(9.0, abs=1e-6)


def test_sweep_mu_open_field():
    # uniform weight 1: one rising step per row, two in beam 0's row with the missing beamlet
    s = sweep_mu_operator(LAYOUTS, SLICES, NB)
    est, _ = s.value_and_grad(np.ones(NB), 1e-9)
    p = s.p
    beam0 = 2.0 * (2 / 2**p + 1) ** (1 / p)
    beam1 = 2 ** (1 / p)
    assert est == pytest.approx(beam0 + beam1, rel=1e-8)


def test_sweep_mu_gradient_matches_finite_differences(w):
    s = sweep_mu_operator(LAYOUTS, SLICES, NB)
    _, grad = s.value_and_grad(w, 0.1)
    fd = _fd_grad(lambda x: s.value_and_grad(x, 0.1)[0], w, 1e-6)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------- MU cap penalty
def test_mu_cap_penalty_zero_below_the_cap(w):
    sweep = sweep_mu_operator(LAYOUTS, SLICES, NB)
    reg = _regularizer(sweep=sweep, mu_cap=10.0, mu_weight=2.0)
    ratio = reg.sweep_mu_ratio(w)
    assert 0 < ratio < 10.0
    value, grad = reg.value_and_grad(w)
    assert value == 0.0 and not grad.any()


def test_mu_cap_penalty_above_the_cap(w):
    sweep = sweep_mu_operator(LAYOUTS, SLICES, NB)
    reg = _regularizer(sweep=sweep, mu_cap=0.5, mu_weight=2.0)
    mu, _ = sweep.value_and_grad(w, 1e-3 * 2.0)
    ratio = mu / (2 * 2.0)
    assert reg.sweep_mu_ratio(w) == pytest.approx(ratio, rel=1e-15)
    assert ratio > 0.5
    value, grad = reg.value_and_grad(w)
    assert value == pytest.approx(2.0 * 60.0**2 * (ratio - 0.5) ** 2, rel=1e-12)
    assert value > 0
    fd = _fd_grad(lambda x: reg.value_and_grad(x)[0], w, 1e-6)
    # the penalty is ~1e4 (Rx^2 scale): finite-difference round-off is relative to the largest component
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-8 * np.abs(fd).max())


def test_mu_cap_penalty_adds_to_smoothing(w):
    sweep = sweep_mu_operator(LAYOUTS, SLICES, NB)
    smooth_only = _regularizer(smooth_weight=0.25).value_and_grad(w)
    cap_only = _regularizer(sweep=sweep, mu_cap=0.5).value_and_grad(w)
    both = _regularizer(smooth_weight=0.25, sweep=sweep, mu_cap=0.5).value_and_grad(w)
    assert both[0] == pytest.approx(smooth_only[0] + cap_only[0], rel=1e-12)
    np.testing.assert_allclose(both[1], smooth_only[1] + cap_only[1], rtol=1e-12, atol=1e-12)


def test_sweep_mu_ratio_without_sweep_is_zero(w):
    assert _regularizer().sweep_mu_ratio(w) == 0.0
    assert math.isfinite(_regularizer(sweep=sweep_mu_operator(LAYOUTS, SLICES, NB)).sweep_mu_ratio(w))


def test_open_field_sweep_mu_ratio_is_one():
    idx = np.arange(20 * 12).reshape(20, 12)  # 20 leaf-pair rows x 12 columns, a typical 10 x 6 cm beam
    lay = BeamletLayout(np.linspace(-50.0, 50.0, 21), np.linspace(-30.0, 30.0, 13), idx)
    n = idx.size
    reg = FluenceRegularizer(
        differences=neighbour_differences([lay], [slice(0, n)], n),
        open_weight=2.0,
        prescription_gy=60.0,
        sweep=sweep_mu_operator([lay], [slice(0, n)], n),
        mu_cap=3.0,
    )
    # one open segment delivers a uniform fluence w_open: its sweep MU is exactly the open-field MU
    assert reg.sweep_mu_ratio(np.full(n, 2.0)) == pytest.approx(1.0, rel=0.05)
