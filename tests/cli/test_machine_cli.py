"""``rayrt machine`` CLI: list, show, curves (JSON + plot), fit (CSV in, YAML out), errors -> exit 2."""

from __future__ import annotations

import json

import pytest

import rayrt.cli  # noqa: F401  (registers every command)
from rayrt.cli.app import run
from rayrt.machines import list_machines, load_machine

MACHINE = "truebeam_m120"


@pytest.fixture(scope="module", autouse=True)
def _need_machine():
    if MACHINE not in list_machines():
        pytest.skip(f"machine {MACHINE} not in configs/machines")


def test_list_and_show(capsys):
    assert run(["machine", "list"]) == 0
    out = capsys.readouterr().out
    assert MACHINE in out and "Millennium 120" in out
    assert run(["machine", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert MACHINE in {r["name"] for r in rows}
    assert run(["machine", "show", MACHINE]) == 0
    out = capsys.readouterr().out
    assert "60 pairs" in out and "SAD 1000 mm" in out
    assert run(["machine", "show", MACHINE, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == MACHINE


def test_unknown_machine_is_one_line_and_exit_2(capsys):
    assert run(["machine", "show", "no_such_linac"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown machine 'no_such_linac'")
    assert run(["machine", "curves", MACHINE, "--fields", "10,abc"]) == 2
    assert "comma-separated list" in capsys.readouterr().err


def test_curves_text_json_and_plot(tmp_path, capsys):
    png = tmp_path / "curves.png"
    out_json = tmp_path / "curves.json"
    args = [
        "machine",
        "curves",
        MACHINE,
        "--fields",
        "50,100",
        "--depths",
        "dmax,100",
        "--resolution",
        "5",
        "--no-slab",
    ]
    assert run(args + ["--json", "--plot", str(png), "--out", str(out_json)]) == 0
    data = json.loads(capsys.readouterr().out)
    q = data["beam_quality"]
    assert set(q) >= {"dmax_mm", "pdd10_pct", "pdd20_pct", "tpr2010", "penumbra_80_20_mm"}
    assert 60 < q["pdd10_pct"] < 70 and 0.6 < q["tpr2010"] < 0.75
    assert [p["field_mm"] for p in data["curves"]["water"]["pdds"]] == [50.0, 100.0]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads(out_json.read_text())["machine"] == MACHINE
    assert run(args) == 0
    text = capsys.readouterr().out
    for label in ("dmax", "PDD(10 cm)", "PDD(20 cm)", "TPR20,10", "penumbra 80-20"):
        assert label in text


def test_fit_writes_a_machine_and_reports_residuals(tmp_path, capsys):
    from rayrt.dose.curves import commissioning_curves
    from rayrt.dose.fit import curves_as_measurements, machine_with, write_pdd_csv, write_profiles_csv
    from rayrt.machines import get_machine

    base = get_machine(MACHINE)
    pert = machine_with(base, {"attenuation_per_mm": 1.05, "source_sigma_mm": 1.3})
    c = commissioning_curves(
        pert, fields_mm=(100.0,), depths_mm=(100.0,), slab=False, tpr=False, resolution_mm=5.0, max_depth_mm=250.0
    )
    meas = curves_as_measurements(c)
    pdd = write_pdd_csv(tmp_path / "pdd.csv", meas.pdds)
    prof = write_profiles_csv(tmp_path / "prof.csv", meas.profiles)
    out = tmp_path / "fitted.yaml"
    rc = run(
        [
            "machine",
            "fit",
            "--pdd",
            str(pdd),
            "--profiles",
            str(prof),
            "--base",
            MACHINE,
            "--out",
            str(out),
            "--resolution",
            "5",
            "--max-evaluations",
            "40",
            "--name",
            "tb_fitted",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "before" in text and "after" in text and "attenuation_per_mm" in text
    m = load_machine(out)
    assert m.name == "tb_fitted"
    assert m.beam.attenuation_per_mm == pytest.approx(1.05 * base.beam.attenuation_per_mm, rel=0.03)


def test_fit_refuses_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("depth_mm,dose\n5,1\n10,oops\n15,3\n20,2\n25,1\n")
    rc = run(["machine", "fit", "--pdd", str(bad), "--base", MACHINE, "--out", str(tmp_path / "x.yaml")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "not a number" in err and "bad.csv" in err
    assert not (tmp_path / "x.yaml").exists()
