"""Machine library: the shipped machines load, carry the published MLC geometry and differ the way real beams do."""

import shutil

import numpy as np
import pytest
import yaml

import rayrt.machines as lib
from rayrt.config import config_dir
from rayrt.domain.errors import InputError
from rayrt.dose.geometry import row_edges_mm
from rayrt.dose.pencil_beam import pdd_metrics, penumbra_80_20, water_dose

SHIPPED = {"standard", "truebeam_m120", "truebeam_hd120", "versahd_agility", "synergy_mlci2", "halcyon"}
FLATTENED_6MV = ["standard", "truebeam_m120", "truebeam_hd120", "versahd_agility", "synergy_mlci2"]


def test_all_shipped_machines_load():
    names = lib.list_machines()
    assert SHIPPED <= set(names)
    for n in names:
        m = lib.get_machine(n)
        assert m.name == n and m.nominal_energy_mv == 6
    assert lib.get_machine("standard").standard
    assert sum(lib.get_machine(n).standard for n in names) == 1


def test_unknown_machine_lists_available():
    with pytest.raises(InputError) as e:
        lib.get_machine("clinac_2100")
    assert "truebeam_m120" in e.value.message and "standard" in e.value.message


def test_mlc_geometry_matches_reference():
    m120 = lib.get_machine("truebeam_m120").mlc
    assert m120.num_pairs == 60 and m120.interdigitation
    w = m120.leaf_widths_mm
    assert np.allclose(w[:10], 10) and np.allclose(w[10:50], 5) and np.allclose(w[50:], 10)
    assert m120.boundaries[0] == -200 and m120.boundaries[-1] == 200

    hd = lib.get_machine("truebeam_hd120")
    w = hd.mlc.leaf_widths_mm
    assert hd.mlc.num_pairs == 60 and np.allclose(w[:14], 5) and np.allclose(w[14:46], 2.5) and np.allclose(w[46:], 5)
    assert hd.mlc.boundaries[-1] - hd.mlc.boundaries[0] == pytest.approx(220)

    ag = lib.get_machine("versahd_agility")
    assert (
        ag.mlc.num_pairs == 80 and np.allclose(ag.mlc.leaf_widths_mm, 5) and ag.jaw_x is None and ag.jaw_y is not None
    )
    assert ag.mlc.transmission < 0.006

    i2 = lib.get_machine("synergy_mlci2")
    assert i2.mlc.num_pairs == 40 and np.allclose(i2.mlc.leaf_widths_mm, 10) and not i2.mlc.interdigitation

    hal = lib.get_machine("halcyon")
    assert hal.fff and hal.jaw_x is None and hal.jaw_y is None and hal.mlc.dual_layer
    assert hal.mlc.num_pairs == 28 and np.allclose(hal.mlc.leaf_widths_mm, 10)
    assert np.allclose(np.diff(row_edges_mm(hal)), 5.0)  # 5 mm effective rows

    std = lib.get_machine("standard")
    assert std.mlc.interdigitation and std.mlc.num_pairs >= 80 and std.mlc.leaf_widths_mm.max() <= 5


def test_transmission_differs_like_real_mlcs():
    t = {n: lib.get_machine(n).mlc.transmission for n in SHIPPED}
    assert 0.01 <= t["truebeam_m120"] <= 0.02 and 0.01 <= t["truebeam_hd120"] <= 0.02
    assert t["versahd_agility"] < 0.006 and t["halcyon"] < 0.006


@pytest.mark.parametrize("name", FLATTENED_6MV)
def test_flattened_6mv_water_data_in_published_ranges(name):
    m = lib.get_machine(name)
    dep = np.arange(0.0, 301.0, 0.5)
    met = pdd_metrics(dep, water_dose(m, 100, 100, dep, head_scatter=False))
    assert 14.0 <= met["dmax_mm"] <= 16.0
    assert 66.0 <= met["pdd10_pct"] <= 68.0
    assert 38.0 <= met["pdd20_pct"] <= 39.0
    x = np.arange(-80, 80.01, 0.25)
    pen = penumbra_80_20(x, water_dose(m, 100, 100, 100.0, x))
    assert 5.0 <= pen <= 7.0


def test_fff_lower_pdd_and_horn_profile():
    fff = lib.get_machine("halcyon")
    std = lib.get_machine("standard")
    dep = np.arange(0.0, 301.0, 0.5)
    met = pdd_metrics(dep, water_dose(fff, 100, 100, dep, head_scatter=False))
    assert 13.0 <= met["dmax_mm"] <= 15.0 and 63.0 <= met["pdd10_pct"] <= 64.0 and 36.0 <= met["pdd20_pct"] <= 37.0
    x = np.array([0.0, 50.0, 80.0])
    p_fff = water_dose(fff, 200, 200, 100.0, x)
    p_std = water_dose(std, 200, 200, 100.0, x)
    assert p_fff[2] / p_fff[0] < 0.92  # FFF: cone-shaped, strongly non-flat
    assert abs(p_std[1] / p_std[0] - 1) < 0.05  # flattened: flat within a few %


def test_calibration_one_mu_gives_one_cgy_at_dmax():
    for n in SHIPPED:
        m = lib.get_machine(n)
        dep = np.arange(5.0, 30.0, 0.25)
        assert water_dose(m, 100, 100, dep).max() == pytest.approx(0.01, rel=2e-3)


def test_invalid_machine_file_names_the_field(tmp_path, monkeypatch):
    (tmp_path / "machines").mkdir()
    data = yaml.safe_load((config_dir() / "machines" / "standard.yaml").read_text())
    data["name"] = "broken"
    data["beam"]["betas_per_mm"] = [0.3, 0.02]
    (tmp_path / "machines" / "broken.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("RAYRT_CONFIG_DIR", str(tmp_path))
    assert lib.list_machines() == ["broken"]
    with pytest.raises(InputError, match="betas_per_mm"):
        lib.get_machine("broken")


def test_a_renamed_copy_is_a_new_identical_machine(tmp_path, monkeypatch):
    (tmp_path / "machines").mkdir()
    src = config_dir() / "machines" / "standard.yaml"
    shutil.copy(src, tmp_path / "machines" / "standard.yaml")
    data = yaml.safe_load(src.read_text())
    data["name"] = "standard_twin"
    data["standard"] = False
    (tmp_path / "machines" / "twin.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("RAYRT_CONFIG_DIR", str(tmp_path))
    a, b = lib.get_machine("standard"), lib.get_machine("standard_twin")
    assert a.beam == b.beam and a.mlc == b.mlc and a.name != b.name
