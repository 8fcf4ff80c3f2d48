"""Fluence-map optimisation on an analytic C-shape case: sparse products, exact screening,
goals, hard constraints (augmented Lagrangian), dose mimicking, problem construction."""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

import rayrt.optimize.sparse as sparse_mod
from rayrt.domain.errors import InputError
from rayrt.domain.order import MedicalOrder, ObjectiveKind, ObjectiveSpec, Prescription
from rayrt.optimize.fmo import FluenceOptions, ObjectiveEvaluator, initial_weights, optimize_fluence
from rayrt.optimize.problem import build_problem
from rayrt.optimize.sparse import SubsetDij
from rayrt.optimize.synthetic import c_shape_case, tg119_like_order
from rayrt.qa.dvh import dose_at_volume


@pytest.fixture(scope="module")
def case():
    return c_shape_case(gantry_deg=(0, 51, 103, 154, 206, 257, 309), n_slices=5)


def _metrics(problem, w):
    d = problem.dose(w)
    out = {}
    for s in ("PTV", "Core"):
        v = d[problem.structure_rows[s]]
        out[s] = (float(dose_at_volume(v, 95)), float(dose_at_volume(v, 10)), float(v.max()))
    return out


@pytest.mark.parametrize("parallel", [False, True])
def test_subset_products_match_scipy(monkeypatch, parallel):
    if parallel:
        monkeypatch.setattr(sparse_mod, "PARALLEL_MIN_NNZ", 0)
    rng = np.random.default_rng(1)
    A = sp.random(300, 40, density=0.2, random_state=2, format="csc", dtype=np.float32)
    rows = np.sort(rng.choice(300, 120, replace=False))
    S = SubsetDij(A, rows)
    ref = A.toarray()[rows]
    w = rng.random(40)
    np.testing.assert_allclose(S.dose(w), ref @ w, rtol=1e-5)
    sel = np.arange(0, 120, 3)
    np.testing.assert_allclose(S.dose(w, sel), (ref @ w)[sel], rtol=1e-5)
    g = rng.normal(size=sel.size)
    g[::4] = 0.0
    np.testing.assert_allclose(S.grad(g, sel), ref[sel].T @ g, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(S.rowsums(), ref.sum(axis=1), rtol=1e-5)
    # CSR input gives the same subset
    np.testing.assert_allclose(SubsetDij(A.tocsr(), rows).dose(w), S.dose(w), rtol=1e-6)
    np.testing.assert_allclose(S.to_scipy().toarray(), ref, rtol=0)


@pytest.mark.parametrize("parallel", [False, True])
def test_dense_rows_products_match(monkeypatch, parallel):
    """Hybrid storage: the fullest rows also held densely give the same products (all rows, row
    subsets, zero entries of g skipped) and the memory cap keeps only the fullest rows."""
    if parallel:
        monkeypatch.setattr(sparse_mod, "PARALLEL_MIN_NNZ", 0)
    rng = np.random.default_rng(3)
    dens = np.repeat([0.05, 0.6], 100)  # 100 sparse rows, 100 rows with 60 % fill
    A = sp.csc_matrix((rng.random((200, 50)) < dens[:, None]) * rng.random((200, 50)).astype(np.float32))
    ref = A.toarray()
    S = SubsetDij(A, np.arange(200))
    assert S.indices.dtype == np.uint16
    w = rng.random(50)
    d_csr, g_csr = S.dose(w), S.grad(np.arange(200.0) - 80.0)
    assert S.enable_dense(min_fill=0.3) == int((np.count_nonzero(ref, axis=1) >= 15).sum()) > 0
    assert S.enable_dense(min_fill=0.0) == S.dense_rows  # idempotent
    np.testing.assert_allclose(S.dose(w), ref @ w, rtol=1e-5)
    np.testing.assert_allclose(S.dose(w), d_csr, rtol=1e-5)
    sel = np.sort(rng.choice(200, 70, replace=False))
    np.testing.assert_allclose(S.dose(w, sel), (ref @ w)[sel], rtol=1e-5)
    g = rng.normal(size=sel.size)
    g[::3] = 0.0
    np.testing.assert_allclose(S.grad(g, sel), ref[sel].T @ g, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(S.grad(np.arange(200.0) - 80.0), g_csr, rtol=1e-4, atol=1e-4)
    capped = SubsetDij(A, np.arange(200))
    one_row_mib = 50 * 4 / 2**20
    assert capped.enable_dense(min_fill=0.3, max_mib=10.5 * one_row_mib) == 10
    fill = np.count_nonzero(ref, axis=1)
    assert fill[capped._dpos >= 0].min() >= np.sort(fill)[-10]  # the fullest rows were kept
    np.testing.assert_allclose(capped.dose(w), ref @ w, rtol=1e-5)
    clone = pickle.loads(pickle.dumps(S))  # pickled without the dense cache, rebuilt on demand
    assert clone.dense_rows == 0 and clone._dense.size == 0
    np.testing.assert_allclose(clone.dose(w), ref @ w, rtol=1e-5)
    assert clone.enable_dense(min_fill=0.3) == S.dense_rows


def test_screening_is_exact(case):
    p = build_problem(tg119_like_order(core_gy=10), case.masks, case.dij, beam_slices=case.beam_slices)
    assert p.objectives[-1].structure == "BODY" and p.objectives[-1].n > 2000  # the screened term
    p.dij.enable_dense(min_fill=0.2)  # hybrid storage, as optimize_fluence uses it
    assert p.dij.dense_rows > 0
    ev_s = ObjectiveEvaluator(p, screening=True)
    ev_f = ObjectiveEvaluator(p, screening=False)
    rng = np.random.default_rng(5)
    w = initial_weights(p)
    for k in range(8):
        w = np.maximum(w * (1 + 0.3 * rng.normal(size=w.size)), 0)  # includes big steps (refresh) and small ones
        if k % 2:
            w = w * 1.01
        fs, gs = ev_s(w)
        ff, gf = ev_f(w)
        assert fs == pytest.approx(ff, rel=1e-5)
        np.testing.assert_allclose(gs, gf, rtol=1e-4, atol=1e-6 * np.abs(gf).max())
    assert ev_s.n_refresh >= 1
    # small steps from the start: evaluated on the screened candidates only, without refreshing
    ev_s, ev_f = ObjectiveEvaluator(p, screening=True), ObjectiveEvaluator(p, screening=False)
    w = initial_weights(p)
    for k in range(6):
        w = np.maximum(w * (1 + 0.01 * rng.normal(size=w.size)), 0)
        fs, gs = ev_s(w)
        ff, gf = ev_f(w)
        assert fs == pytest.approx(ff, rel=1e-5)
        np.testing.assert_allclose(gs, gf, rtol=1e-4, atol=1e-6 * np.abs(gf).max())
    assert ev_s.n_refresh == 1 and ev_s.n_eval == 6


def test_fmo_meets_c_shape_goals(case):
    p = build_problem(tg119_like_order(core_gy=10), case.masks, case.dij, beam_slices=case.beam_slices)
    r = optimize_fluence(p, FluenceOptions(max_iterations=300))
    w = r.w
    assert (w >= 0).all()
    f0 = p.total_objective(p.dose(initial_weights(p)))
    assert r.objective < 0.2 * f0
    m = _metrics(p, w)
    k = 50.0 / m["PTV"][0]  # normalise PTV D95 = 50 Gy
    assert m["PTV"][1] * k <= 55.0
    assert m["Core"][1] * k <= 25.0


def test_hard_max_dose_is_honoured(case):
    order = tg119_like_order(core_gy=15, hard_core_max_gy=12.0)
    p = build_problem(order, case.masks, case.dij, beam_slices=case.beam_slices)
    soft = optimize_fluence(
        build_problem(tg119_like_order(core_gy=15), case.masks, case.dij), FluenceOptions(max_iterations=200)
    )
    d_soft = build_problem(tg119_like_order(core_gy=15), case.masks, case.dij).dose(soft.w)
    assert d_soft[p.structure_rows["Core"]].max() > 12.5  # the constraint is active
    r = optimize_fluence(p, FluenceOptions(max_iterations=200))
    core_max = p.dose(r.w)[p.structure_rows["Core"]].max()
    assert core_max <= 12.0 + FluenceOptions().constraint_tol_gy
    assert r.max_violation_gy <= FluenceOptions().constraint_tol_gy
    assert r.constraint_violations and r.constraint_violations[0]["structure"] == "Core"
    assert _metrics(p, r.w)["PTV"][0] > 45.0  # coverage kept


def test_dose_mimicking_reproduces_reference(case):
    base = build_problem(tg119_like_order(core_gy=10), case.masks, case.dij)
    w_ref = optimize_fluence(base, FluenceOptions(max_iterations=150)).w
    ref = np.asarray(case.dij @ w_ref, dtype=float)
    order = MedicalOrder(
        prescription=Prescription(target="PTV", total_dose_gy=50.0),
        objectives=[
            ObjectiveSpec(structure="PTV", kind=ObjectiveKind.dose_mimicking, dose_gy=0.5, priority=10.0),
            ObjectiveSpec(structure="Core", kind=ObjectiveKind.dose_mimicking, dose_gy=1.0, priority=5.0),
            ObjectiveSpec(structure="BODY", kind=ObjectiveKind.dose_mimicking, dose_gy=2.0, priority=1.0),
        ],
    )
    p = build_problem(order, case.masks, case.dij, reference_dose_gy=ref)
    r = optimize_fluence(p, FluenceOptions(max_iterations=300))
    d = p.dose(r.w)
    ptv = p.structure_rows["PTV"]
    assert np.mean(np.abs(d[ptv] - ref[p.dij.voxel_index][ptv]) <= 1.0) > 0.95
    with pytest.raises(InputError):
        build_problem(order, case.masks, case.dij)  # no reference dose


def test_problem_construction(case):
    order = tg119_like_order()
    p = build_problem(order, case.masks, case.dij)
    body = next(o for o in p.objectives if o.structure == "BODY")
    ptv_rows = set(p.structure_rows["PTV"].tolist())
    assert not ptv_rows & set(body.voxels.tolist())  # overlap: target voxels leave the external's term
    assert p.dij.num_rows == int(case.masks["BODY"].sum())  # only objective voxels kept
    bad = order.model_copy(
        update={"objectives": [ObjectiveSpec(structure="Liver", kind=ObjectiveKind.mean_dose, dose_gy=5)]}
    )
    with pytest.raises(InputError):
        build_problem(bad, case.masks, case.dij)
    only_rx = MedicalOrder(prescription=Prescription(target="PTV", total_dose_gy=60.0))
    p2 = build_problem(only_rx, case.masks, case.dij)
    assert [(o.kind, o.dose_gy) for o in p2.objectives] == [("squared_deviation", 60.0)]
