"""MLC coincidence between machines: identical, finer/coarser leaves, lost interdigitation, field."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.machines import elekta, halcyon, make_plan, varian
from helpers.paths import REPO

from rayrt.convert.coincidence import (
    ConversionConfig,
    compare_mlc,
    load_conversion_config,
    max_field_mm,
    plan_field_mm,
)
from rayrt.domain.errors import InputError
from rayrt.domain.machine import JawModel, MLCModel

CFG = load_conversion_config(REPO / "configs" / "conversion.yaml")


def standard():
    """A vendor-neutral 80 x 5 mm MLC with X and Y jaws (like configs/machines/standard.yaml)."""
    m = elekta()
    return m.model_copy(
        update={
            "name": "Standard",
            "standard": True,
            "mlc": m.mlc.model_copy(update={"name": "Standard 80x5", "max_leaf_span_mm": 400.0}),
            "jaw_x": JawModel(min_mm=-200, max_mm=200, dicom_type="ASYMX"),
        }
    )


def mlci2():
    m = elekta()
    return m.model_copy(
        update={
            "name": "Synergy",
            "mlc": MLCModel(
                name="MLCi2",
                leaf_boundaries_mm=list(np.arange(-200, 201, 10.0)),
                interdigitation=False,
                min_gap_mm=5.0,
                max_leaf_span_mm=325.0,
            ),
        }
    )


def test_config_file_is_read():
    assert CFG.mlc.thresholds.compatible == 0.85 and CFG.mlc.weights.geometry == 0.40
    assert load_conversion_config(REPO / "does-not-exist.yaml") == ConversionConfig()


def test_bad_config(tmp_path):
    p = tmp_path / "conversion.yaml"
    p.write_text("mlc:\n  weights:\n    geometry: -1\n")
    with pytest.raises(InputError, match="mlc.weights.geometry"):
        load_conversion_config(p)


def test_identical_mlc():
    c = compare_mlc(varian(), varian(), CFG)
    assert c.same_boundaries and c.same_leaf_widths and c.same_pair_count and c.max_boundary_diff_mm == 0
    assert c.score == 1.0 and c.verdict == "identical" and c.reasons == []


def test_coarser_to_finer_is_compatible_but_not_identical():
    """Millennium 120 (5/10 mm) -> 80 x 5 mm: every source boundary exists on the target, no leaf is wider."""
    c = compare_mlc(varian(), standard(), CFG)
    assert not c.same_pair_count and not c.same_boundaries
    assert c.scores["geometry"] == 1.0 and c.verdict == "compatible"


def test_finer_to_coarser_loses_resolution():
    """80 x 5 mm -> Millennium 120: the outer 2 x 10 pairs are 10 mm wide (40 source pairs lie on them);
    the M120 leaf span (150 mm) is shorter than the standard's (400 mm)."""
    c = compare_mlc(standard(), varian(), CFG)
    coincide = 61 / 81  # boundaries of the 5 mm bank found on the M120
    resolution = (40 + 40 * 0.5) / 80
    assert c.scores["geometry"] == pytest.approx(0.5 * coincide + 0.5 * resolution, abs=1e-6)
    assert c.scores["span"] == pytest.approx(150 / 400)
    expected = (0.4 * c.scores["geometry"] + 0.25 + 0.15 + 0.1 + 0.1 * 150 / 400) / 1.0
    assert c.score == pytest.approx(expected, abs=1e-6)
    assert c.verdict == "convertible"  # 0.838 < 0.85: re-optimise rather than copy segments
    assert any("wider target leaves" in r for r in c.reasons) and any("leaf span" in r for r in c.reasons)


def test_no_interdigitation_and_large_gap_is_only_convertible():
    c = compare_mlc(standard(), mlci2(), CFG)
    assert c.interdigitation == "lost" and c.scores["interdigitation"] == 0.0
    assert c.min_gap_diff_mm == pytest.approx(4.5) and c.scores["min_gap"] == pytest.approx(0.1)
    assert c.verdict == "convertible" and 0.5 <= c.score < 0.85
    back = compare_mlc(mlci2(), standard(), CFG)
    assert back.interdigitation == "gained" and back.scores["interdigitation"] == 1.0


def test_field_size_machine_level_and_plan_level():
    h = halcyon()
    assert max_field_mm(h) == (280.0, 280.0)  # jawless: the leaf bank and its travel
    c = compare_mlc(standard(), h, CFG)
    assert c.scores["field"] == pytest.approx(280**2 / 400**2)
    assert c.verdict == "convertible"
    # a plan whose segments open 60 x 70 mm fits the Halcyon; one opening 300 mm in Y does not
    plan = make_plan(standard(), n_beams=1, n_segments=2)
    fx, fy = plan_field_mm(plan, standard())
    assert 0 < fx <= 80 and 0 < fy <= 80
    assert compare_mlc(standard(), h, CFG, required_field_mm=(fx, fy)).scores["field"] == 1.0
    big = compare_mlc(standard(), h, CFG, required_field_mm=(100.0, 300.0))
    assert big.verdict == "incompatible" and big.scores["field"] == pytest.approx(280 / 300)
    # a threshold change in the config changes the verdict
    strict = CFG.model_copy(deep=True)
    strict.mlc.min_field_coverage = 0.6
    assert compare_mlc(standard(), h, strict).verdict == "incompatible"


def test_repository_machine_files():
    """Every pair of configs/machines files compares; same-file pairs are identical."""
    from rayrt.machines import load_machine

    files = sorted((REPO / "configs" / "machines").glob("*.yaml"))
    if not files:
        pytest.skip("no configs/machines/*.yaml")
    ms = [load_machine(f) for f in files]
    for a in ms:
        for b in ms:
            c = compare_mlc(a, b, CFG)
            assert 0.0 <= c.score <= 1.0
            if a.name == b.name:
                assert c.verdict == "identical"
