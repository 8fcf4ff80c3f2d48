"""Objective registry: every kind's analytic gradient against central finite differences."""

import numpy as np
import pytest

from rayrt.domain.errors import InputError
from rayrt.optimize.objectives import make_objective, objective_kinds

RNG = np.random.default_rng(7)


def _fd(obj, d, h=1e-6):
    g = np.empty_like(d)
    for i in range(d.size):
        e = np.zeros_like(d)
        e[i] = h
        g[i] = (obj.value(d + e) - obj.value(d - e)) / (2 * h)
    return g


CASES = [
    ("squared_deviation", {}),
    ("squared_overdose", {}),
    ("squared_underdose", {}),
    ("max_dose", {}),
    ("min_dose", {}),
    ("max_dvh", {"volume_pct": 30.0}),
    ("min_dvh", {"volume_pct": 80.0}),
    ("mean_dose", {"level": 45.0}),
    ("geud", {"a": 8.0}),
    ("geud", {"a": -10.0}),
    ("dose_mimicking", {"reference_gy": RNG.uniform(40, 60, 40), "tolerance_gy": np.full(40, 1.5)}),
    ("falloff", {"reference_gy": RNG.uniform(35, 55, 40)}),
]


def test_every_kind_is_covered():
    assert {c[0] for c in CASES} == set(objective_kinds())


@pytest.mark.parametrize("kind,kw", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_gradient_matches_finite_differences(kind, kw):
    d = RNG.uniform(40.0, 60.0, 40)
    kw = dict(kw)
    level = kw.pop("level", 50.0)
    obj = make_objective(kind, "S", np.arange(40), level, **kw)
    f, g = obj.value_and_grad(d)
    assert f > 0, "test point must make the objective active"
    np.testing.assert_allclose(g, _fd(obj, d), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kind,kw", CASES[1:], ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES[1:])])
def test_residual_vjp_matches_finite_differences(kind, kw):
    d = RNG.uniform(40.0, 60.0, 40)
    kw = dict(kw)
    level = kw.pop("level", 50.0)
    obj = make_objective(kind, "S", np.arange(40), level, hard=True, **kw)
    r, vjp = obj.residual(d)
    fin = np.isfinite(r)
    v = RNG.normal(size=r.size) * fin
    jv = vjp(np.where(fin, v, 0.0))
    h = 1e-6
    num = np.empty_like(d)
    for i in range(d.size):
        e = np.zeros_like(d)
        e[i] = h
        rp, _ = obj.residual(d + e)
        rm, _ = obj.residual(d - e)
        num[i] = np.sum((np.where(fin, rp, 0.0) - np.where(fin, rm, 0.0)) / (2 * h) * v)
    np.testing.assert_allclose(jv, num, rtol=1e-5, atol=1e-7)


def test_values_zero_when_satisfied():
    d = np.full(50, 20.0)
    assert make_objective("squared_overdose", "S", np.arange(50), 25.0).value(d) == 0
    assert make_objective("max_dvh", "S", np.arange(50), 25.0, volume_pct=10).value(d) == 0
    d[:5] = 30.0  # exactly 10 % above 25 Gy: allowed by D10 <= 25? no: the hottest 10 % may exceed
    assert make_objective("max_dvh", "S", np.arange(50), 25.0, volume_pct=10).value(d) == 0
    d[5] = 30.0
    assert make_objective("max_dvh", "S", np.arange(50), 25.0, volume_pct=10).value(d) > 0


def test_bad_input_raises_input_error():
    with pytest.raises(InputError):
        make_objective("nonsense", "S", np.arange(3), 1.0)
    with pytest.raises(InputError):
        make_objective("squared_deviation", "S", np.arange(3), 1.0, hard=True)
    with pytest.raises(InputError):
        make_objective("dose_mimicking", "S", np.arange(3), 1.0)


def test_falloff_restricted_to_candidates_equals_the_full_term():
    """The screened evaluation sees only the voxels above the smallest limit: on them, with the
    references sliced alike, the term's sum equals the full term's."""
    limit = RNG.uniform(20, 60, 200)
    d = RNG.uniform(10, 70, 200)
    full = make_objective("falloff", "NT", np.arange(200), 0.0, reference_gy=limit)
    assert full.dose_gy == pytest.approx(limit.min())
    pos = np.flatnonzero(d > full.dose_gy)
    part = full.restricted(pos)
    f_full, g_full = full.value_and_grad(d)
    f_part, g_part = part.value_and_grad(d[pos])
    assert f_part * pos.size / 200 == pytest.approx(f_full)
    np.testing.assert_allclose(g_part * pos.size / 200, g_full[pos])
