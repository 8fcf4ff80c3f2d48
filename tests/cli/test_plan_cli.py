"""`rayrt plan` end to end on the built-in TG-119 phantom (coarse grid): the recipe's files
(OUT/<stage>/, as the service stores them), DICOM RT per released machine, the QA verdicts and
the TG-119 easy goals, and bad input as one line with exit code 2 before any planning work."""

import json

import numpy as np
import pydicom
import pytest
import yaml

from rayrt.cli.app import run
from rayrt.domain.plan import Plan
from rayrt.imaging.volume import Grid


@pytest.fixture(scope="module")
def planned(tmp_path_factory, fast_planning):
    d = tmp_path_factory.mktemp("plan")
    options = d / "options.yaml"
    options.write_text(yaml.safe_dump({k: v for k, v in fast_planning.items() if k != "num_beams"}))
    out = d / "out"
    rc = run(
        [
            "plan",
            "tg119",
            "--out",
            str(out),
            "--beams",
            "0,72,144,216,288",
            "--options",
            str(options),
            "--set",
            "sequencer=xia_verhey",
            "--machines",
            "versahd_agility",
        ]
    )
    assert rc == 0
    return out


def test_recipe_files_written(planned):
    plan = Plan.model_validate_json((planned / "normalize" / "plan.json").read_text())
    std = json.loads((planned / "normalize" / "result.json").read_text())
    dose = np.load(planned / "normalize" / "dose.npy")
    assert dose.shape == Grid.model_validate(std["dose_grid"]).shape and dose.dtype == np.float32
    assert len(plan.beams) == 5 and [b.gantry_deg for b in plan.beams] == [0, 72, 144, 216, 288]
    assert plan.machine == "standard" and plan.fractions == 25 and plan.total_mu > 0
    assert (
        json.loads((planned / "sequence" / "result.json").read_text())["sequencer"] == "xia_verhey"
    )  # --set reached the recipe
    for stage in ("geometry", "beamlets", "dij", "fmo", "dao", "convert", "qa", "export"):
        assert (planned / stage / "result.json").is_file(), stage


def test_dicom_rt_per_released_machine(planned):
    summary = json.loads((planned / "export" / "summary.json").read_text())
    machines = {m["machine"]: m for m in summary["machines"]}
    assert list(machines) == ["standard", "versahd_agility"]
    rs = pydicom.dcmread(planned / "export" / "RS.dcm")
    for name, m in machines.items():
        if m["verdict"] == "not released":
            assert not (planned / "export" / f"RP_{name}.dcm").exists()
            continue
        rp = pydicom.dcmread(planned / "export" / f"RP_{name}.dcm")
        rd = pydicom.dcmread(planned / "export" / f"RD_{name}.dcm")
        assert rp.Modality == "RTPLAN" and rp.BeamSequence[0].TreatmentMachineName == name
        assert rp.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
        assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == rp.SOPInstanceUID
    if machines["versahd_agility"]["verdict"] != "not released":  # Elekta: MLCX + ASYMY, no X jaws
        rp = pydicom.dcmread(planned / "export" / "RP_versahd_agility.dcm")
        assert {d.RTBeamLimitingDeviceType for d in rp.BeamSequence[0].BeamLimitingDeviceSequence} == {"MLCX", "ASYMY"}
    qa = json.loads((planned / "qa" / "qa_versahd_agility.json").read_text())
    assert qa["verdict"] in ("pass", "review", "fail") and qa["checks"]


def test_standard_plan_is_normalised_and_deliverable(planned):
    summary = json.loads((planned / "export" / "summary.json").read_text())
    std = summary["machines"][0]
    goals = {(g["structure"], g["metric"]): g for g in std["goals"]}
    assert goals[("PTV", "D95")]["met"] and goals[("PTV", "D95")]["value_gy"] == pytest.approx(50.0, abs=1e-3)
    qa = json.loads((planned / "qa" / "qa_standard.json").read_text())
    deliver = [c for c in qa["checks"] if c["category"] == "deliverability"]
    assert deliver and all(c["status"] == "pass" for c in deliver)
    # the QA's DVH checks and the export's goals judge the same doses the same way
    checks = {c["name"]: c for c in qa["checks"] if c["category"] == "dvh"}
    for g in std["goals"]:
        c = checks[f"{g['structure']} {g['goal']}"]
        assert (c["status"] == "pass") == g["met"]


def test_bad_inputs_exit_2_before_planning(tmp_path, capsys):
    out = tmp_path / "o"
    assert run(["plan", "tg119", "--out", str(out), "--machine", "no-such-machine"]) == 2
    assert run(["plan", "tg119", "--out", str(out), "--machines", "nosuch"]) == 2
    assert "unknown machine 'nosuch'" in capsys.readouterr().err
    assert run(["plan", "tg119", "--out", str(out), "--set", "sequencer=nope"]) == 2
    assert run(["plan", "tg119", "--out", str(out), "--set", "num_beams=0"]) == 2
    assert run(["plan", "tg119", "--out", str(out), "--set", "no_such_option=1"]) == 2
    assert run(["plan", "tg119", "--out", str(out), "--set", "conversion_options={max_attempts: 0}"]) == 2
    assert run(["plan", "tg119", "--out", str(out), "--beams", "a,b"]) == 2
    assert run(["plan", str(tmp_path / "missing.mat"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert all(line.startswith("error: ") for line in err.strip().splitlines()), err
    assert not out.exists()
