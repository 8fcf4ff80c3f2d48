"""Commissioning fit (rayrt.dose.fit): CSV formats, bad files, and recovery of perturbed parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rayrt.domain.errors import InputError
from rayrt.dose.fit import (
    FIT_PARAMETERS,
    MeasuredData,
    curves_as_measurements,
    fit_machine,
    machine_with,
    read_measurements,
    read_pdd_csv,
    read_profiles_csv,
    residual_vectors,
    write_machine_yaml,
    write_pdd_csv,
    write_profiles_csv,
)
from rayrt.machines import get_machine, list_machines, load_machine

MACHINE = "truebeam_m120"
RES_MM = 5.0


@pytest.fixture(scope="module")
def base():
    if MACHINE not in list_machines():
        pytest.skip(f"machine {MACHINE} not in configs/machines")
    return get_machine(MACHINE)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# --------------------------------------------------------------------------- formats
def test_pdd_csv_header_variants_units_and_normalisation(tmp_path):
    rows = "\n".join(f"{d / 10:.1f};{v:.2f}" for d, v in [(5, 80), (15, 100), (50, 90), (100, 66), (200, 38)])
    p = _write(tmp_path, "pdd.csv", "# measured 2026-11-27, CC13\nDepth (cm);Dose (%)\n" + rows + "\n")
    (pdd,) = read_pdd_csv(p)
    assert pdd.field_mm == 100.0, "no field column: the 10x10 field"
    assert pdd.depths_mm == pytest.approx([5, 15, 50, 100, 200])
    assert max(pdd.dose_pct) == pytest.approx(100.0)
    # whitespace-separated, readings in nC, field in cm, two fields in one file
    text = "depth_mm  reading  field_cm\n" + "\n".join(
        f"{d} {2 * v} {f}" for f in (5, 10) for d, v in [(5, 40), (15, 50), (50, 45), (100, 33), (200, 19)]
    )
    pdds = read_pdd_csv(_write(tmp_path, "pdd2.txt", text))
    assert [p.field_mm for p in pdds] == [50.0, 100.0]
    assert pdds[0].dose_pct[1] == pytest.approx(100.0)
    # headerless: depth_mm, dose
    (h,) = read_pdd_csv(_write(tmp_path, "pdd3.csv", "5,80\n15,100\n50,90\n100,66\n200,38\n"))
    assert h.dose_pct[3] == pytest.approx(66.0)


def test_profile_csv_normalised_on_the_axis(tmp_path):
    lines = ["Field size (mm),Depth_mm,Off-axis (mm),Relative dose"]
    for x in range(-80, 81, 10):
        lines.append(f"100,100,{x},{(50.0 if abs(x) < 55 else 2.0) + 0.01 * x}")
    (prof,) = read_profiles_csv(_write(tmp_path, "prof.csv", "\n".join(lines)))
    assert (prof.field_mm, prof.depth_mm) == (100.0, 100.0)
    assert np.interp(0.0, prof.positions_mm, prof.dose_pct) == pytest.approx(100.0)
    assert prof.positions_mm[0] == -80.0


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("empty.csv", "# nothing\n", "empty"),
        ("nohdr.csv", "depth_mm,dose\n", "no data rows"),
        ("cols.csv", "depth_mm,foo\n5,1\n10,2\n", "no column for dose"),
        ("nan.csv", "depth_mm,dose\n5,1\n10,x\n15,3\n20,2\n25,1\n", "not a number"),
        ("neg.csv", "depth_mm,dose\n5,1\n10,-2\n15,3\n20,2\n25,1\n", "negative dose"),
        ("few.csv", "depth_mm,dose\n5,1\n10,2\n15,3\n", "at least 5"),
        ("dup.csv", "depth_mm,dose\n5,1\n5,2\n15,3\n20,2\n25,1\n", "repeats a depth"),
        ("deep.csv", "depth_mm,dose\n5,1\n10,2\n15,3\n20,2\n2500,1\n", "0..400 mm"),
        ("inf.csv", "depth_mm,dose\n5,1\n10,inf\n15,3\n20,2\n25,1\n", "non-finite"),
        ("short.csv", "depth_mm,dose\n5,1\n10\n15,3\n20,2\n25,1\n", "missing"),
    ],
)
def test_bad_pdd_files_raise_input_error(tmp_path, name, text, match):
    with pytest.raises(InputError, match=match):
        read_pdd_csv(_write(tmp_path, name, text))


def test_bad_profile_files_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_profiles_csv(tmp_path / "missing.csv")
    one_side = "field_mm,depth_mm,position_mm,dose\n" + "\n".join(f"100,100,{x},50" for x in range(5, 60, 10))
    with pytest.raises(InputError, match="central axis"):
        read_profiles_csv(_write(tmp_path, "side.csv", one_side))
    no_depth = "field_mm,position_mm,dose\n" + "\n".join(f"100,{x},50" for x in range(-50, 60, 10))
    with pytest.raises(InputError, match="no column for depth"):
        read_profiles_csv(_write(tmp_path, "nodepth.csv", no_depth))
    with pytest.raises(InputError, match="at least one measurement"):
        read_measurements(None, None)
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(InputError):
        read_pdd_csv(p)


# --------------------------------------------------------------------------- parameters
def test_machine_with_scales_the_named_parameters(base):
    m = machine_with(base, {"attenuation_per_mm": 1.1, "source_sigma_mm": 2.0, "horn_scale": 0.0, "scatter_scale": 1.2})
    assert m.beam.attenuation_per_mm == pytest.approx(1.1 * base.beam.attenuation_per_mm)
    assert m.beam.source_sigma_mm == pytest.approx(2.0 * base.beam.source_sigma_mm)
    assert np.allclose(m.beam.primary_fluence, 1.0), "horn_scale 0 flattens the primary fluence"
    assert m.beam.kernels_per_mm2[0][3] == pytest.approx(1.2 * base.beam.kernels_per_mm2[0][3])
    assert m.beam.betas_per_mm == base.beam.betas_per_mm
    with pytest.raises(InputError, match="unknown fit parameter"):
        machine_with(base, {"colour": 2.0})
    assert set(FIT_PARAMETERS) == {
        "attenuation_per_mm",
        "betas_per_mm",
        "source_sigma_mm",
        "horn_scale",
        "scatter_scale",
    }


def test_fit_recovers_perturbed_parameters(base, tmp_path):
    """Curves of a machine with perturbed parameters, written as CSV, fitted from the base machine."""
    truth = {
        "attenuation_per_mm": 1.06,
        "betas_per_mm": 0.85,
        "source_sigma_mm": 1.4,
        "horn_scale": 1.5,
        "scatter_scale": 1.1,
    }
    perturbed = machine_with(base, truth, name="perturbed")
    from rayrt.dose.curves import commissioning_curves

    c = commissioning_curves(
        perturbed,
        fields_mm=(40.0, 100.0),
        depths_mm=(50.0, 150.0),
        slab=False,
        tpr=False,
        resolution_mm=RES_MM,
        max_depth_mm=250.0,
    )
    meas = curves_as_measurements(c)
    pdd_csv = write_pdd_csv(tmp_path / "pdd.csv", meas.pdds)
    prof_csv = write_profiles_csv(tmp_path / "prof.csv", meas.profiles)
    meas = read_measurements(pdd_csv, prof_csv)
    result = fit_machine(base, meas, resolution_mm=RES_MM, max_evaluations=60)
    rep = result.report
    assert rep.before.pdd_rms_pct > 0.5 and rep.before.profile_rms_pct > 0.5, "the perturbation must be visible"
    assert rep.after.pdd_rms_pct < 0.1 * rep.before.pdd_rms_pct
    assert rep.after.profile_rms_pct < 0.1 * rep.before.profile_rms_pct
    assert rep.after.pdd_max_pct < 0.5 and rep.after.profile_max_pct < 1.0
    b, f = base.beam, result.machine.beam
    assert f.attenuation_per_mm == pytest.approx(truth["attenuation_per_mm"] * b.attenuation_per_mm, rel=0.02)
    assert f.betas_per_mm[0] == pytest.approx(truth["betas_per_mm"] * b.betas_per_mm[0], rel=0.03)
    assert f.source_sigma_mm == pytest.approx(truth["source_sigma_mm"] * b.source_sigma_mm, rel=0.05)
    by_name = {p.name: p for p in rep.parameters}
    assert by_name["horn_scale"].after == pytest.approx(1.5, abs=0.1)
    assert by_name["scatter_scale"].after == pytest.approx(1.1, abs=0.05)
    assert result.machine.name == f"{base.name}-fit"
    # the fitted machine file is valid and reproduces the fitted beam
    y = write_machine_yaml(result.machine, tmp_path / "fitted.yaml")
    again = load_machine(y)
    assert again.beam == result.machine.beam and again.mlc == base.mlc
    a, p = residual_vectors(again, meas, RES_MM)
    assert np.sqrt(np.mean(a**2)) < 0.1 * rep.before.pdd_rms_pct


def test_fit_pdd_only_keeps_profile_parameters(base):
    from rayrt.dose.curves import commissioning_curves

    perturbed = machine_with(base, {"attenuation_per_mm": 0.95})
    c = commissioning_curves(
        perturbed,
        fields_mm=(100.0,),
        depths_mm=(100.0,),
        slab=False,
        tpr=False,
        resolution_mm=RES_MM,
        max_depth_mm=250.0,
    )
    meas = MeasuredData(pdds=curves_as_measurements(c).pdds)
    result = fit_machine(base, meas, resolution_mm=RES_MM, max_evaluations=30)
    assert {p.name for p in result.report.parameters}.isdisjoint({"source_sigma_mm", "horn_scale"})
    assert result.machine.beam.source_sigma_mm == base.beam.source_sigma_mm
    assert result.machine.beam.attenuation_per_mm == pytest.approx(0.95 * base.beam.attenuation_per_mm, rel=0.03)
    assert result.report.after.profile_rms_pct == 0.0 and result.report.after.num_profile_points == 0


def test_write_machine_yaml_needs_yaml_suffix(base, tmp_path):
    with pytest.raises(InputError, match=".yaml"):
        write_machine_yaml(base, tmp_path / "m.json")
