"""Phantoms: the built-in TG-119 C-shape generator and the CORT / matRad .mat loader."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.paths import SHARED

from rayrt.domain.order import ObjectiveKind, load_order
from rayrt.domain.patient import StructureKind
from rayrt.imaging.phantoms import (
    TG119_GEOMETRY_MM,
    load_mat_phantom,
    tg119_analytic_volumes_cc,
    tg119_contours,
    tg119_order,
    tg119_phantom,
    write_tg119,
)
from rayrt.imaging.study import load_study

PHANTOMS = SHARED / "data" / "phantoms"


def test_tg119_default_grid_is_modest_and_labelled():
    st = tg119_phantom()
    g = st.primary.grid
    assert g.spacing_mm == (3.0, 3.0, 2.5)
    assert 40 <= g.shape[0] <= 60 and g.shape[1] * 3.0 >= 200
    assert st.structure_names == ["PTV", "Core", "BODY"]
    kinds = {s.structure.name: s.structure.kind for s in st.structures}
    assert kinds == {"PTV": StructureKind.target, "Core": StructureKind.organ, "BODY": StructureKind.external}
    hu = st.primary.array
    assert hu[st.mask("BODY")].max() == 0 and hu[~st.mask("BODY")].min() == -1000
    # geometry: the core is enclosed by the C, separated by a gap; PTV inside BODY
    assert not (st.mask("PTV") & st.mask("Core")).any()
    assert not (st.mask("PTV") & ~st.mask("BODY")).any()


def test_tg119_volumes_match_analytic():
    exact = tg119_analytic_volumes_cc()
    assert exact["Core"] == pytest.approx(np.pi * 1.0**2 * 10.0)
    fine = tg119_phantom((1.0, 1.0, 2.5))
    for s in fine.structures:
        assert s.structure.volume_cc == pytest.approx(exact[s.structure.name], rel=0.02), s.structure.name
    coarse = tg119_phantom()
    for s in coarse.structures:
        # a 10 mm core on 3 mm voxels cannot be represented better than about 8 % by voxel centres
        tol = 0.10 if s.structure.name == "Core" else 0.02
        assert s.structure.volume_cc == pytest.approx(exact[s.structure.name], rel=tol), s.structure.name


def test_tg119_core_volume_with_subvoxel_dvh_on_default_grid():
    from rayrt.imaging.volume import Volume
    from rayrt.qa.dvh import structure_dvh_metrics

    st = tg119_phantom()
    g = st.primary.grid
    polys = tg119_contours(g)
    dose = Volume(np.full(g.shape, 20.0, np.float32), g, "dose_gy")
    m = structure_dvh_metrics(dose, polys["Core"], "Core", subvoxel=4)
    assert m.volume_cc == pytest.approx(tg119_analytic_volumes_cc()["Core"], rel=0.02)
    assert m.d95_gy == pytest.approx(20.0)


def test_tg119_shape_follows_the_cort_phantom():
    st = tg119_phantom((1.0, 1.0, 2.5))
    g = st.primary.grid
    c = g.voxel_centers_mm()
    ptv = st.mask("PTV")
    r = np.hypot(c[..., 0], c[..., 1])[ptv]
    y = c[..., 1][ptv]
    z = c[..., 2][ptv]
    G = TG119_GEOMETRY_MM
    assert r.min() >= G["ptv_inner_radius"] - 1e-6 and r.max() <= G["ptv_outer_radius"] + 1e-6
    assert y.max() <= G["ptv_y_max"] and y.min() < -35
    assert np.abs(z).max() < G["ptv_half_length"]
    core_z = c[..., 2][st.mask("Core")]
    assert np.abs(core_z).max() > np.abs(z).max()  # the core extends beyond the target, as in TG119.mat


def test_write_tg119_round_trip_and_order(tmp_path):
    out = write_tg119(tmp_path / "tg")
    assert (out / "order.yaml").is_file() and (out / "RS.dcm").is_file()
    ref = tg119_phantom()
    st = load_study(out)
    assert st.primary.grid.same_geometry(ref.primary.grid)
    for s in ref.structures:
        back = st.mask(s.structure.name)
        d = 2 * (back & s.mask).sum() / (back.sum() + s.mask.sum())
        assert d >= 0.99, s.structure.name
    assert st.structure("BODY").structure.kind == StructureKind.external
    order = load_order(out / "order.yaml")
    order.check_structures(st.structure_names)
    assert order == tg119_order()
    assert order.prescription.total_dose_gy == 50 and order.prescription.fractions == 25
    assert order.prescription.normalization.metric == "D95"
    kinds = {(o.structure, o.kind) for o in order.objectives}
    assert (
        ("PTV", ObjectiveKind.min_dvh) in kinds
        and ("Core", ObjectiveKind.max_dvh) in kinds
        and ("BODY", ObjectiveKind.squared_overdose) in kinds
    )
    core_dvh = [o for o in order.objectives if o.structure == "Core" and o.kind == ObjectiveKind.max_dvh][0]
    assert core_dvh.dose_gy == 25 and core_dvh.volume_pct == 10
    assert "10 Gy" in order.notes


def test_cli_phantom_tg119(tmp_path, capsys):
    import rayrt.cli  # noqa: F401
    from rayrt.cli.app import run

    assert run(["phantom", "tg119", "--out", str(tmp_path / "p"), "--spacing-mm", "6", "--slice-mm", "5"]) == 0
    assert "order.yaml" in capsys.readouterr().out
    st = load_study(tmp_path / "p")
    assert st.primary.grid.spacing_mm == pytest.approx((6.0, 6.0, 5.0))
    assert st.structure_names == ["PTV", "Core", "BODY"]


@pytest.mark.skipif(not (PHANTOMS / "TG119.mat").is_file(), reason=f"shared phantom data not found at {PHANTOMS}")
def test_load_tg119_mat():
    st = load_mat_phantom(PHANTOMS / "TG119.mat")
    g = st.primary.grid
    assert g.shape == (129, 167, 167) and g.spacing_mm == (3.0, 3.0, 2.5)
    assert g.origin_mm == (-250.0, -250.0, -160.0)
    counts = {s.structure.name: int(s.mask.sum()) for s in st.structures}
    assert counts == {"Core": 1320, "OuterTarget": 7458, "BODY": 601736}
    kinds = {s.structure.name: s.structure.kind for s in st.structures}
    assert kinds["OuterTarget"] == StructureKind.target and kinds["BODY"] == StructureKind.external
    assert st.primary.quantity == "HU" and st.primary.array.min() == pytest.approx(-1000, abs=1)
    assert not st.warnings  # TG119 carries its HU cube
    # the target wraps the core: core centre inside the C's bounding box, no overlap
    core_c = np.argwhere(st.mask("Core")).mean(axis=0)
    tgt = np.argwhere(st.mask("OuterTarget"))
    assert (tgt.min(axis=0) <= core_c).all() and (core_c <= tgt.max(axis=0)).all()
    assert not (st.mask("Core") & st.mask("OuterTarget")).any()
    # density kept alongside: water ~1 inside the body
    red = st.primary.meta["relative_electron_density"]
    assert np.median(red[st.mask("BODY")]) == pytest.approx(1.0, abs=0.1)


@pytest.mark.skipif(not (PHANTOMS / "BOXPHANTOM.mat").is_file(), reason=f"shared phantom data not found at {PHANTOMS}")
def test_load_boxphantom_mat_centred():
    st = load_mat_phantom(PHANTOMS / "BOXPHANTOM.mat")
    g = st.primary.grid
    assert g.shape == (160, 160, 160)
    assert np.allclose(np.array(g.origin_mm) + np.array(g.spacing_mm) * 79.5, 0.0)  # no coordinate vectors: centred
    assert {s.structure.name: int(s.mask.sum()) for s in st.structures} == {"OuterTarget": 9261, "BODY": 531441}


@pytest.mark.skipif(not (PHANTOMS / "TG119.mat").is_file(), reason=f"shared phantom data not found at {PHANTOMS}")
def test_tg119_mat_as_dicom_round_trip(tmp_path):
    from rayrt.imaging.export import write_study

    st = load_mat_phantom(PHANTOMS / "TG119.mat")
    write_study(st, tmp_path)
    back = load_study(tmp_path)
    assert back.primary.grid.same_geometry(st.primary.grid)
    assert np.array_equal(back.primary.array, np.rint(st.primary.array))
    for s in st.structures:
        m = back.mask(s.structure.name)
        assert 2 * (m & s.mask).sum() / (m.sum() + s.mask.sum()) >= 0.99
