"""The TG-119 test geometries (C-shape, multitarget, mock prostate, mock head and neck) and their
clinical-goal orders: volumes against the analytic shapes, anatomy where the report puts it, the
orders, and the DICOM written by ``rayrt phantom tg119 --case``."""

from __future__ import annotations

import numpy as np
import pytest

from rayrt.domain.errors import InputError
from rayrt.domain.order import load_order
from rayrt.domain.patient import StructureKind
from rayrt.imaging.phantoms import tg119_order
from rayrt.imaging.study import Study, load_study
from rayrt.imaging.tg119_cases import (
    TG119_CASES,
    TG119_HEADNECK_MM,
    TG119_PROSTATE_MM,
    multitarget_phantom,
    tg119_case,
    write_tg119_case,
)

COARSE = (4.0, 4.0, 5.0)
NAMES = ["cshape", "cshape_hard", "multitarget", "prostate", "headneck"]
EXPECTED_STRUCTURES = {
    "cshape": {"PTV", "Core", "BODY"},
    "cshape_hard": {"PTV", "Core", "BODY"},
    "multitarget": {"CentralTarget", "SuperiorTarget", "InferiorTarget", "BODY"},
    "prostate": {"PTV", "CTV", "Rectum", "Bladder", "BODY"},
    "headneck": {"PTV", "SpinalCord", "Parotid_L", "Parotid_R", "BODY"},
}
# (structure, metric, op, Gy, rank) as stated in the TG-119 report's goal table
EXPECTED_GOALS = {
    "cshape": {("PTV", "D95", ">=", 50, 2), ("PTV", "D10", "<=", 55, 3), ("Core", "D10", "<=", 25, 1)},
    "cshape_hard": {("PTV", "D95", ">=", 50, 2), ("PTV", "D10", "<=", 55, 3), ("Core", "D10", "<=", 10, 1)},
    "multitarget": {
        ("CentralTarget", "D99", ">=", 50, 2),
        ("CentralTarget", "D10", "<=", 53, 3),
        ("SuperiorTarget", "D99", ">=", 25, 2),
        ("SuperiorTarget", "D10", "<=", 35, 3),
        ("InferiorTarget", "D99", ">=", 12.5, 2),
        ("InferiorTarget", "D10", "<=", 25, 3),
    },
    "prostate": {
        ("PTV", "D95", ">=", 75.6, 2),
        ("PTV", "D5", "<=", 83, 3),
        ("Rectum", "D30", "<=", 70, 3),
        ("Rectum", "D10", "<=", 75, 3),
        ("Bladder", "D30", "<=", 70, 3),
        ("Bladder", "D10", "<=", 75, 3),
    },
    "headneck": {
        ("PTV", "D90", ">=", 50, 2),
        ("PTV", "D99", ">=", 46.5, 2),
        ("PTV", "D20", "<=", 55, 3),
        ("SpinalCord", "max", "<=", 40, 1),
        ("Parotid_L", "D50", "<=", 20, 3),
        ("Parotid_R", "D50", "<=", 20, 3),
    },
}
RX = {  # (target, Gy, fractions, normalisation metric)
    "cshape": ("PTV", 50.0, 25, "D95"),
    "cshape_hard": ("PTV", 50.0, 25, "D95"),
    "multitarget": ("CentralTarget", 50.0, 25, "D99"),
    "prostate": ("PTV", 75.6, 42, "D95"),
    "headneck": ("PTV", 50.0, 25, "D90"),
}


def _centroid_mm(st: Study, name: str) -> np.ndarray:
    return st.primary.grid.voxel_centers_mm()[st.mask(name)].mean(axis=0)


@pytest.fixture(scope="module")
def coarse() -> dict:
    return {name: tg119_case(name, COARSE) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_structures_kinds_and_water_ct(coarse, name):
    st, _ = coarse[name]
    assert set(st.structure_names) == EXPECTED_STRUCTURES[name]
    kinds = {s.name: s.structure.kind for s in st.structures}
    assert kinds["BODY"] == StructureKind.external
    targets = {n for n, k in kinds.items() if k == StructureKind.target}
    assert targets == {n for n in EXPECTED_STRUCTURES[name] if "PTV" in n or "CTV" in n or "Target" in n}
    body = st.mask("BODY")
    hu = st.primary.array
    assert (hu[body] == 0).all() and (hu[~body] == -1000).all()
    for s in st.structures:
        assert s.mask.any(), s.name
        assert not (s.mask & ~body).any(), f"{s.name} leaves the body"
        assert s.structure.volume_cc == pytest.approx(s.mask.sum() * st.primary.grid.voxel_volume_cc)


@pytest.mark.parametrize("name", NAMES)
def test_volumes_match_the_analytic_shapes(name):
    case = TG119_CASES[name]
    st = case.phantom((1.0, 1.0, 2.5))
    exact = case.analytic_volumes_cc()
    assert set(exact) == set(st.structure_names)
    for s in st.structures:
        # voxel-centre sampling of a 10-15 mm cylinder on a 1 mm grid: a few % at most
        tol = 0.05 if s.name in ("SpinalCord", "Rectum", "Core") else 0.03
        assert s.structure.volume_cc == pytest.approx(exact[s.name], rel=tol), s.name


def test_analytic_volumes_are_the_stated_shapes():
    mt = TG119_CASES["multitarget"].analytic_volumes_cc()
    assert mt["CentralTarget"] == pytest.approx(np.pi * 2.0**2 * 4.0)  # 4 cm diameter, 4 cm long
    pr = TG119_CASES["prostate"].analytic_volumes_cc()
    assert pr["CTV"] == pytest.approx(4 / 3 * np.pi * 2.0 * 1.3 * 3.25)  # 4.0 x 2.6 x 6.5 cm
    assert pr["PTV"] == pytest.approx(4 / 3 * np.pi * 2.6 * 1.9 * 3.85)  # + 0.6 cm
    hn = TG119_CASES["headneck"].analytic_volumes_cc()
    assert hn["SpinalCord"] == pytest.approx(np.pi * 0.5**2 * 14.0)
    assert 500 < hn["PTV"] < 1000  # a bilateral neck PTV


def test_multitarget_stacked_on_the_axis(coarse):
    st, order = coarse["multitarget"]
    c = {n: _centroid_mm(st, n) for n in ("SuperiorTarget", "CentralTarget", "InferiorTarget")}
    for v in c.values():
        assert abs(v[0]) < 1.0 and abs(v[1]) < 1.0  # on the axis
    # +z is superior (LPS, head first supine): 4 cm apart
    assert c["SuperiorTarget"][2] - c["CentralTarget"][2] == pytest.approx(40.0, abs=2.6)
    assert c["CentralTarget"][2] - c["InferiorTarget"][2] == pytest.approx(40.0, abs=2.6)
    masks = [st.mask(n) for n in c]
    assert not (masks[0] & masks[1]).any() and not (masks[1] & masks[2]).any()
    assert order.target_levels() == {"CentralTarget": 50.0, "SuperiorTarget": 25.0, "InferiorTarget": 12.5}
    # a gap separates the cylinders without changing them
    gapped = multitarget_phantom(COARSE, gap_mm=10.0)
    zc = gapped.primary.grid.voxel_centers_mm()[..., 2]
    sup = zc[gapped.mask("SuperiorTarget")]
    cen = zc[gapped.mask("CentralTarget")]
    assert sup.min() - cen.max() >= 10.0
    with pytest.raises(InputError, match="gap"):
        multitarget_phantom(COARSE, gap_mm=-1.0)


def test_prostate_anatomy(coarse):
    st, _ = coarse["prostate"]
    ctv, ptv, rectum, bladder = (st.mask(n) for n in ("CTV", "PTV", "Rectum", "Bladder"))
    c = {n: _centroid_mm(st, n) for n in ("CTV", "PTV", "Rectum", "Bladder")}
    assert np.allclose(c["CTV"], 0.0, atol=1.0) and np.allclose(c["PTV"], 0.0, atol=1.0)
    assert not (ctv & ~ptv).any()  # the PTV contains the CTV
    # rectum posterior (+y) of the prostate, bladder superior (+z) and anterior (-y)
    assert c["Rectum"][1] > c["CTV"][1] + 15 and abs(c["Rectum"][2]) < 1.0
    assert c["Bladder"][2] > c["CTV"][2] + 40 and c["Bladder"][1] < c["CTV"][1] - 5
    # both organs overlap the PTV a little, neither the CTV
    for organ in (rectum, bladder):
        share = (organ & ptv).sum() / organ.sum()
        assert 0.005 < share < 0.10
        assert not (organ & ctv).any()
    # the rectum runs the length of the PTV and beyond
    zc = st.primary.grid.voxel_centers_mm()[..., 2]
    assert zc[rectum].min() < zc[ptv].min() and zc[rectum].max() > zc[ptv].max()
    assert TG119_PROSTATE_MM["rectum_radius"] == 7.5  # 1.5 cm diameter


def test_headneck_anatomy(coarse):
    st, _ = coarse["headneck"]
    g = st.primary.grid
    xyz = g.voxel_centers_mm()
    ptv, cord = st.mask("PTV"), st.mask("SpinalCord")
    c = {n: _centroid_mm(st, n) for n in st.structure_names}
    assert c["SpinalCord"][1] > c["PTV"][1] + 20  # cord posterior of the PTV
    assert c["Parotid_L"][0] > 30 and c["Parotid_R"][0] < -30  # +x is the patient's left
    assert c["Parotid_L"][1] > c["PTV"][1] and c["Parotid_R"][1] > c["PTV"][1]  # posterolateral
    # the horseshoe: PTV left, right and anterior of the cord on the cord's level, none behind it
    k = g.shape[0] // 2
    cord_x, cord_y = xyz[k][cord[k]][:, 0].mean(), xyz[k][cord[k]][:, 1].mean()
    p = xyz[k][ptv[k]]
    near = np.abs(p[:, 1] - cord_y) <= 6
    assert (p[near, 0] < cord_x - 15).any() and (p[near, 0] > cord_x + 15).any()
    assert (p[np.abs(p[:, 0] - cord_x) <= 3, 1] < cord_y - 15).any()
    assert not ((np.abs(p[:, 0] - cord_x) <= 15) & (p[:, 1] > cord_y)).any()
    # gap between cord and PTV about 1.5 cm (voxel centres on a 4 mm grid)
    d = np.hypot(p[:, 0][:, None] - xyz[k][cord[k]][:, 0][None], p[:, 1][:, None] - xyz[k][cord[k]][:, 1][None])
    assert 12.0 <= d.min() <= 20.0
    assert TG119_HEADNECK_MM["cord_ptv_gap"] == 15.0
    # PTV retracted 6 mm from the skin; the cord runs beyond the PTV; parotids mostly outside the PTV
    a, b = TG119_HEADNECK_MM["body_semi_x"] - 6.0, TG119_HEADNECK_MM["body_semi_y"] - 6.0
    assert ((xyz[..., 0][ptv] / a) ** 2 + (xyz[..., 1][ptv] / b) ** 2 <= 1 + 1e-9).all()
    assert xyz[..., 2][cord].max() > xyz[..., 2][ptv].max()
    for side in ("Parotid_L", "Parotid_R"):
        share = (st.mask(side) & ptv).sum() / st.mask(side).sum()
        assert share < 0.15
    assert not (cord & ptv).any()


@pytest.mark.parametrize("name", NAMES)
def test_goal_orders(coarse, name):
    st, order = coarse[name]
    order.check_structures(st.structure_names)
    assert order.objectives == []
    got = {(gl.structure, gl.metric, gl.op, gl.value, gl.rank) for gl in order.goals}
    assert got == EXPECTED_GOALS[name]
    target, dose, fx, metric = RX[name]
    rx = order.prescription
    assert (rx.target, rx.total_dose_gy, rx.fractions, rx.normalization.metric) == (target, dose, fx, metric)
    assert rx.normalization.structure == target and rx.normalization.value_pct == 100.0
    # every coverage goal of the prescription target is at most the normalised level
    for gl in order.goals:
        assert gl.structure in st.structure_names
        if gl.structure == target and gl.op == ">=":
            assert gl.value <= dose


def test_unknown_case_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="multitarget"):
        tg119_case("lung")
    with pytest.raises(InputError, match="unknown TG-119 case"):
        write_tg119_case("lung", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["multitarget", "prostate", "headneck", "cshape_hard"])
def test_cli_writes_a_case_that_loads_back(tmp_path, capsys, name):
    import rayrt.cli  # noqa: F401
    from rayrt.cli.app import run

    out = tmp_path / name
    args = ["phantom", "tg119", "--out", str(out), "--case", name, "--spacing-mm", "4", "--slice-mm", "5"]
    assert run(args) == 0
    assert "order.yaml" in capsys.readouterr().out
    ref, ref_order = tg119_case(name, COARSE)
    back = load_study(out)
    assert back.primary.grid.same_geometry(ref.primary.grid)
    assert back.structure_names == ref.structure_names
    for s in ref.structures:
        assert back.structure(s.name).structure.kind == s.structure.kind
        assert np.array_equal(back.mask(s.name), s.mask), s.name  # the analytic polygons reproduce the masks
    assert np.array_equal(back.primary.array, ref.primary.array)
    order = load_order(out / "order.yaml")
    assert order == ref_order
    order.check_structures(back.structure_names)


def test_cli_default_case_is_the_original_cshape(tmp_path):
    import rayrt.cli  # noqa: F401
    from rayrt.cli.app import run

    assert run(["phantom", "tg119", "--out", str(tmp_path / "c"), "--spacing-mm", "6", "--slice-mm", "5"]) == 0
    assert load_order(tmp_path / "c" / "order.yaml") == tg119_order()  # today's objectives order, unchanged
    assert run(["phantom", "tg119", "--out", str(tmp_path / "u"), "--case", "lung"]) == 2
    assert not (tmp_path / "u").exists()
