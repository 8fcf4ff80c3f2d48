"""Automatic delineation on an analytic thorax phantom (body, two lungs, bones, couch) and on TG119."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.paths import REPO, SHARED

from rayrt.contour.automatic import auto_contour, body_ct, lungs_ct, otsu_threshold
from rayrt.contour.config import ContourConfig, load_contour_config
from rayrt.contour.morphology import Margins, expand
from rayrt.contour.synthetic import centred_grid, dice, ellipsoid_mask, thorax_phantom
from rayrt.domain.errors import InputError
from rayrt.imaging.volume import Volume

TG119 = SHARED / "data" / "phantoms" / "TG119.mat"


@pytest.fixture(scope="module")
def thorax():
    return thorax_phantom((40, 128, 128), (4.0, 4.0, 5.0))


@pytest.fixture(scope="module")
def thorax_fine():
    # 2 mm in-plane: the coarse-grid path (work_spacing 4 mm -> factor 2) is exercised
    return thorax_phantom((24, 256, 256), (2.0, 2.0, 5.0), noise_hu=25.0, seed=3)


@pytest.mark.parametrize("fixture", ["thorax", "thorax_fine"])
def test_auto_body_lungs_bones_on_thorax_phantom(fixture, request):
    ct, truth = request.getfixturevalue(fixture)
    cfg = ContourConfig()
    if fixture == "thorax_fine":
        cfg = cfg.model_copy(update={"body": cfg.body.model_copy(update={"work_spacing_mm": 4.0})})
    out = {name: m for name, _, _, m in auto_contour(ct, "CT", config=cfg)}
    assert dice(out["External"], truth["External"]) >= 0.97
    assert not (out["External"] & truth["Couch"]).any(), "the couch must not be part of External"
    assert dice(out["Lung_L"], truth["Lung_L"]) >= 0.97
    assert dice(out["Lung_R"], truth["Lung_R"]) >= 0.97
    assert dice(out["Bones"], truth["Bones"]) >= 0.95
    assert dice(out["Cavity_Air"], truth["Cavity_Air"]) >= 0.9
    assert not (out["Lung_L"] & out["Lung_R"]).any()


def test_joined_lungs_are_split_left_right():
    ct, truth = thorax_phantom((40, 128, 128), (4.0, 4.0, 5.0), noise_hu=0.0)
    hu = ct.array.copy()
    # a 12 mm air bridge between the lungs (like the anterior junction / a common airway)
    x, y, z = ct.grid.axis_mm("x"), ct.grid.axis_mm("y"), ct.grid.axis_mm("z")
    bridge = (np.abs(z)[:, None, None] < 30) & (np.abs(y + 25)[None, :, None] < 6) & (np.abs(x)[None, None, :] < 30)
    hu[bridge] = -820
    ct2 = Volume(hu, ct.grid, "HU", ct.meta)
    body = body_ct(hu, ct.grid)
    left, right = lungs_ct(hu, ct.grid, body)
    assert dice(left, truth["Lung_L"]) >= 0.95 and dice(right, truth["Lung_R"]) >= 0.95
    assert ct2.grid.index_to_world(np.array([0, 0, np.flatnonzero(left.any(axis=(0, 1))).mean()]))[0] > 0


def test_mr_body_by_otsu_and_lungs_refused():
    grid = centred_grid((30, 96, 96), (4.0, 4.0, 5.0))
    body = ellipsoid_mask(grid, (0.0, 0.0, 0.0), (150.0, 110.0, 400.0))
    rng = np.random.default_rng(2)
    mr = np.where(body, 400.0, 5.0) + rng.normal(0, 20, grid.shape)
    mr[ellipsoid_mask(grid, (60.0, 0.0, 0.0), (40.0, 40.0, 50.0))] = 80.0  # dark organ inside (filled as a hole)
    vol = Volume(mr.astype(np.float32), grid, "MR", {"modality": "MR"})
    out = auto_contour(vol, "MR", targets=("body",))
    assert out[0][0] == "External" and dice(out[0][3], body) >= 0.97
    with pytest.raises(InputError, match="not supported for MR"):
        auto_contour(vol, "MR", targets=("body", "lungs"))
    assert 5.0 < otsu_threshold(mr[body | ~body]) < 400.0


def test_no_body_is_a_clear_error():
    grid = centred_grid((8, 32, 32), (4.0, 4.0, 5.0))
    air = Volume(np.full(grid.shape, -1000, np.int16), grid, "HU")
    with pytest.raises(InputError, match="no body"):
        auto_contour(air, "CT", targets=("body",))
    with pytest.raises(InputError, match="unknown automatic"):
        auto_contour(air, "CT", targets=("liver",))
    with pytest.raises(InputError, match="not supported for PET"):
        auto_contour(air, "PT", targets=("bones",))


def test_config_file_overrides_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("body:\n  threshold_hu: -500\nlungs:\n  name_left: LungL\n")
    cfg = load_contour_config(p)
    assert cfg.body.threshold_hu == -500 and cfg.lungs.name_left == "LungL" and cfg.bones.threshold_hu == 250
    p.write_text("body:\n  treshold: 1\n")
    with pytest.raises(InputError, match="invalid"):
        load_contour_config(p)
    repo_cfg = REPO / "configs" / "contour.yaml"
    assert load_contour_config(repo_cfg) == ContourConfig()  # the shipped file documents the code defaults


@pytest.mark.skipif(not TG119.is_file(), reason=f"shared data absent: {TG119} (set RAYRT_SHARED)")
def test_tg119_external_matches_body():
    try:
        from rayrt.imaging.phantoms import load_mat_phantom
    except ImportError:  # pragma: no cover
        pytest.skip("rayrt.imaging.phantoms not available")
    study = load_mat_phantom(TG119)
    ct = study.primary
    body_truth = study.mask("BODY")
    out = auto_contour(ct, "CT", targets=("body",))
    assert dice(out[0][3], body_truth) >= 0.98


@pytest.mark.parametrize("gap_mm", [0.0, -5.0])
@pytest.mark.parametrize("work_mm", [2.0, 4.0])
def test_couch_in_contact_with_the_back_is_excluded(gap_mm, work_mm):
    ct, truth = thorax_phantom((24, 256, 256), (2.0, 2.0, 5.0), couch_gap_mm=gap_mm, seed=4)
    cfg = ContourConfig()
    cfg = cfg.model_copy(update={"body": cfg.body.model_copy(update={"work_spacing_mm": work_mm})})
    body = body_ct(ct.array, ct.grid, cfg)
    assert dice(body, truth["External"]) >= 0.97
    # where shell and skin touch, at most a thin strip of shell within two coarse voxels
    strip = expand(
        truth["External"],
        ct.grid,
        Margins(left_mm=2 * work_mm, right_mm=2 * work_mm, anterior_mm=2 * work_mm, posterior_mm=2 * work_mm),
    )
    assert not (body & truth["Couch"] & ~strip).any()
    assert (body & truth["Couch"]).sum() < 0.03 * truth["Couch"].sum()
    if work_mm == 2.0:
        # without the opening the couch shell joins the External
        no_open = cfg.model_copy(
            update={"body": cfg.body.model_copy(update={"opening_radius_mm": 0.0, "work_spacing_mm": 2.0})}
        )
        leaky = body_ct(ct.array, ct.grid, no_open)
        assert (leaky & truth["Couch"]).sum() > 0.05 * truth["Couch"].sum()  # the top shell is ~10 % of the couch
