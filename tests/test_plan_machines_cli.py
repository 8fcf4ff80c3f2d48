"""`rayrt plan ... --machines`: the standard plan and a converted, QA-released plan per machine as DICOM RT."""

import json

import pydicom

from rayrt.cli.app import run


def test_plan_converts_and_writes_dicom_per_machine(tmp_path, capsys):
    out = tmp_path / "out"
    rc = run(["plan", "tg119", "--out", str(out), "--dose-grid-mm", "8",
              "--machines", "versahd_agility"])
    assert rc == 0, capsys.readouterr().err
    for folder in ("standard", "versahd_agility"):
        assert (out / folder / "rtplan.dcm").is_file() and (out / folder / "rtdose.dcm").is_file()
    rp = pydicom.dcmread(out / "versahd_agility" / "rtplan.dcm")
    assert rp.Modality == "RTPLAN" and rp.BeamSequence[0].TreatmentMachineName == "versahd_agility"
    # Elekta: MLCX + ASYMY, no X jaws
    types = {d.RTBeamLimitingDeviceType for d in rp.BeamSequence[0].BeamLimitingDeviceSequence}
    assert types == {"MLCX", "ASYMY"}
    qa = json.loads((out / "versahd_agility" / "qa.json").read_text())
    assert qa["verdict"] in ("pass", "review")
    assert "released" in capsys.readouterr().out


def test_plan_unknown_target_machine_fails_before_planning(tmp_path, capsys):
    rc = run(["plan", "tg119", "--out", str(tmp_path / "o"), "--machines", "nosuch"])
    assert rc == 2
    assert "unknown machine 'nosuch'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
