"""StructureSet + ContourRequest dispatch: atomic changes, operations log, replay; and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rayrt.contour.requests import parse_request
from rayrt.contour.structureset import ContourLog, StructureSet, apply_request, log_path_for
from rayrt.contour.synthetic import dice, ellipsoid_mask, thorax_phantom
from rayrt.domain.errors import InputError
from rayrt.domain.patient import Structure, StructureKind
from rayrt.imaging.volume import Volume


@pytest.fixture()
def ss():
    ct, truth = thorax_phantom((24, 96, 96), (5.0, 5.0, 5.0))
    s = StructureSet(ct)
    gtv = ellipsoid_mask(ct.grid, (60.0, -20.0, 0.0), (15.0, 15.0, 15.0))
    s.add_imported(Structure(name="CTV", kind=StructureKind.target), gtv)
    return s


def _state(s: StructureSet):
    return {n: (s.structure(n).model_dump(), s.mask(n).copy()) for n in s.names}, len(s.history)


def _same(a, b):
    (sa, ha), (sb, hb) = a, b
    return (
        ha == hb
        and sa.keys() == sb.keys()
        and all(sa[n][0] == sb[n][0] and np.array_equal(sa[n][1], sb[n][1]) for n in sa)
    )


def test_full_workflow_log_and_replay(ss):
    out = apply_request(ss, {"method": "auto"}, user="dosimetrist")
    assert {s.name for s in out} == {"External", "Lung_L", "Lung_R", "Bones", "Cavity_Air"}
    assert all(s.volume_cc > 0 and s.num_voxels > 0 for s in out)
    apply_request(ss, {"method": "margin", "source": "CTV", "name": "PTV", "margin_mm": 5})
    assert ss.structure("PTV").kind is StructureKind.target
    apply_request(
        ss,
        {
            "method": "margin",
            "source": "PTV",
            "name": "PTV_aniso",
            "margins": {"left_mm": 5, "right_mm": 10, "superior_mm": 10, "inferior_mm": 0},
        },
    )
    apply_request(
        ss,
        {
            "method": "ring",
            "source": "PTV",
            "name": "Ring",
            "inner_mm": 5,
            "outer_mm": 20,
            "post": {"crop_to": "External"},
        },
    )
    apply_request(
        ss, {"method": "boolean", "operation": "subtraction", "a": ["Lung_L"], "b": ["PTV"], "name": "Lung_L-PTV"}
    )
    apply_request(
        ss,
        {
            "method": "grow",
            "seed_mm": [-75.0, -25.0, 0.0],
            "window": [-1000, -400],
            "name": "LungR_grown",
            "post": {"fill_holes": "slice"},
        },
    )
    z = ss.grid.axis_mm("z")
    contours = [[[-20.0, -20.0, float(z[k])], [20.0, -20.0, float(z[k])], [0.0, 20.0, float(z[k])]] for k in (8, 16)]
    apply_request(ss, {"method": "interpolate", "name": "Wedge", "contours": contours})
    assert all(ss.mask("Wedge")[k].any() for k in range(8, 17))
    apply_request(ss, {"method": "edit", "structure": "Wedge", "action": "rename", "new_name": "Wedge2"})
    apply_request(ss, {"method": "edit", "structure": "Wedge2", "action": "recolour", "colour": [1, 2, 3]})
    apply_request(ss, {"method": "edit", "structure": "Wedge2", "action": "replace_slice", "z_mm": [float(z[12])]})
    assert not ss.mask("Wedge2")[12].any() and ss.structure("Wedge2").colour == (1, 2, 3)
    assert [op.method for op in ss.logs["Wedge2"]] == ["interpolate", "edit", "edit", "edit"]
    assert ss.logs["Lung_L"][0].user == "dosimetrist"
    apply_request(ss, {"method": "edit", "structure": "Lung_L-PTV", "action": "delete"})
    assert "Lung_L-PTV" not in ss

    # the log is JSON, its operations rebuild every structure exactly
    log = ContourLog.model_validate_json(ss.log().model_dump_json())
    assert log.operations_of("PTV")[0].parameters["margin_mm"] == 5
    assert log.operations_of("External")[0].parameters["config"]["body"]["threshold_hu"] == -350
    again = ss.replay(log.history)
    assert again.names == ss.names
    for n in ss.names:
        assert np.array_equal(again.mask(n), ss.mask(n)), n
        assert again.structure(n) == ss.structure(n)
    assert np.array_equal(ss.reproduce("Ring"), ss.mask("Ring"))


def test_bad_requests_leave_structures_untouched(ss):
    apply_request(ss, {"method": "auto", "structures": ["body"]})
    before = _state(ss)
    bad = [
        ({"method": "margin", "source": "GTV", "name": "PTV", "margin_mm": 5}, "unknown structure 'GTV'"),
        ({"method": "grow", "seed_mm": [0, 0, 900], "window": [-100, 100], "name": "X"}, "outside the image"),
        ({"method": "grow", "seed_mm": [0, 0, 0], "window": [-2000, 4000], "name": "X"}, "leak"),
        ({"method": "grow", "seed_mm": [0, -60, 0], "window": [-100, 100], "name": "X"}, "% of the External"),
        (
            {"method": "polygons", "name": "X", "contours": [[[0, 0, 2.5], [10, 10, 2.5], [10, 0, 2.5], [0, 10, 2.5]]]},
            "crosses itself",
        ),
        ({"method": "margin", "source": "CTV", "name": "CTV_shrunk", "margin_mm": 40, "contract": True}, "empty"),
        ({"method": "margin", "source": "CTV", "name": "External", "margin_mm": 5}, "already exists"),
        ({"method": "edit", "structure": "CTV", "action": "rename", "new_name": "External"}, "taken"),
        ({"method": "pet_threshold", "name": "X", "suv": 3}, "no PET"),
        (
            {"method": "auto", "structures": ["lungs"], "config": {"lungs": {"min_volume_cc": 1e7}}},
            "no air-like region",
        ),
    ]
    for req, msg in bad:
        with pytest.raises(InputError, match=msg):
            apply_request(ss, req)
        assert _same(_state(ss), before), req
    with pytest.raises(InputError) as exc:
        parse_request({"method": "margin", "source": "CTV", "name": "PTV"})
    assert exc.value.status == 422
    with pytest.raises(InputError):
        parse_request('{"method": "paint"}')


def test_pet_threshold_request_and_frame_of_reference():
    ct, _ = thorax_phantom((24, 96, 96), (5.0, 5.0, 5.0))
    ct.meta["frame_of_reference_uid"] = "1.2.3"
    x, y, z = (ct.grid.axis_mm(a) for a in "xyz")
    r = np.sqrt(x[None, None, :] ** 2 + (y[None, :, None] + 20) ** 2 + z[:, None, None] ** 2)
    pet = Volume(
        (1.0 + 7.0 * (r <= 15.0)).astype(np.float32),
        ct.grid,
        "SUV",
        {"modality": "PT", "frame_of_reference_uid": "1.2.3"},
    )
    s = StructureSet(ct, images={"pet": pet})
    out = apply_request(
        s,
        {
            "method": "pet_threshold",
            "name": "GTV_PET",
            "box_mm": {"min_mm": [-30, -50, -30], "max_mm": [30, 10, 30]},
            "percent_of_max": 40,
        },
    )
    assert out[0].kind is StructureKind.target
    assert dice(s.mask("GTV_PET"), r <= 15.0) >= 0.95
    assert "SUVmax 8.00" in s.history[-1].notes[0]
    pet.meta["frame_of_reference_uid"] = "9.9"
    with pytest.raises(InputError, match="another frame of reference"):
        apply_request(s, {"method": "pet_threshold", "name": "G2", "suv": 3})


def test_apply_request_on_study_updates_study():
    study_mod = pytest.importorskip("rayrt.imaging.study")
    ct, truth = thorax_phantom((24, 96, 96), (5.0, 5.0, 5.0))
    study = study_mod.Study(patient_id="P1", patient_name="Test", primary=ct)
    out = apply_request(study, {"method": "auto", "structures": ["body"]})
    assert out[0].name == "External" and study.structure_names == ["External"]
    assert dice(study.mask("External"), truth["External"]) >= 0.97


# ------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def patient_dir(tmp_path):
    export = pytest.importorskip("rayrt.imaging.export")
    pytest.importorskip("rayrt.imaging.study")
    ct, truth = thorax_phantom((20, 96, 96), (5.0, 5.0, 5.0))
    export.write_ct_series(ct, tmp_path, patient_id="P1", patient_name="Test^Patient")
    return tmp_path, truth


def _cli(args):
    import rayrt.cli.commands  # noqa: F401
    from rayrt.cli import app as _  # noqa: F401  (registers commands)
    from rayrt.cli.app import run

    return run(args)


def test_cli_auto_margin_ring_chain(patient_dir, capsys):
    d, truth = patient_dir
    inputs = sorted(p.name for p in d.iterdir())
    assert _cli(["contour", "auto", str(d)]) == 0
    text = capsys.readouterr().out
    assert "External" in text and "Lung_L" in text and "volume cc" in text
    rt = d / "RTSTRUCT_rayrt.dcm"
    assert rt.is_file() and log_path_for(rt).is_file()
    # chain: grow a target, then expand it, then ring it; each continues from the previous output
    assert (
        _cli(
            [
                "contour",
                "grow",
                str(d),
                "--seed",
                "75,-25,0",
                "--window",
                "-1000,-400",
                "--name",
                "GTV",
                "--kind",
                "target",
                "--box",
                "40,-60,-20,110,10,20",
            ]
        )
        == 0
    )
    assert _cli(["contour", "margin", str(d), "--from", "GTV", "--to", "PTV", "--mm", "5"]) == 0
    assert (
        _cli(["contour", "margin", str(d), "--from", "GTV", "--to", "PTV_dir", "--mm-dir", "left=10,superior=15"]) == 0
    )
    assert _cli(["contour", "margin", str(d), "--from", "GTV", "--to", "X", "--mm-dir", "up=3"]) == 2
    assert "unknown direction 'up'" in capsys.readouterr().err
    capsys.readouterr()
    assert (
        _cli(
            [
                "contour",
                "ring",
                str(d),
                "--from",
                "PTV",
                "--to",
                "Ring",
                "--inner",
                "5",
                "--outer",
                "15",
                "--crop-to",
                "External",
                "--print-json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["rtstruct"].endswith("RTSTRUCT_rayrt.dcm") and [c["name"] for c in res["changed"]] == ["Ring"]
    from rayrt.imaging.study import load_study

    study = load_study(d)
    names = set(study.structure_names)
    assert {"External", "Lung_L", "Lung_R", "Bones", "GTV", "PTV", "Ring"} <= names
    assert not any(n.endswith("_2") for n in names)  # our output replaced, not duplicated
    assert dice(study.mask("External"), truth["External"]) >= 0.97
    log = StructureSet.read_log(log_path_for(rt))
    assert [op.method for op in log.operations_of("PTV")] == ["margin"]
    assert log.operations_of("PTV_dir")[0].parameters["margins"]["superior_mm"] == 15.0
    gtv, ptv_dir = study.mask("GTV"), study.mask("PTV_dir")
    x = study.primary.grid.axis_mm("x")
    assert x[ptv_dir.any(axis=(0, 1))].max() >= x[gtv.any(axis=(0, 1))].max() + 10.0 - 1e-6
    assert x[ptv_dir.any(axis=(0, 1))].min() == x[gtv.any(axis=(0, 1))].min()
    assert log.operations_of("GTV")[0].parameters["window"] == [-1000.0, -400.0]
    # input files are untouched and an input file is never overwritten
    assert set(inputs) <= {p.name for p in d.iterdir()}
    ct_file = d / inputs[0]
    assert _cli(["contour", "auto", str(d), "--out", str(ct_file)]) == 2
    assert "never overwrites" in capsys.readouterr().err
    # bad input: one line, exit code 2
    assert _cli(["contour", "margin", str(d), "--from", "Nope", "--to", "X", "--mm", "5"]) == 2
    assert "unknown structure 'Nope'" in capsys.readouterr().err


def test_cli_manual_verbs_and_import(patient_dir, tmp_path_factory, capsys):
    d, truth = patient_dir
    from rayrt.imaging.study import load_study

    z = load_study(d).primary.grid.axis_mm("z")
    poly = [
        [[-30.0, -30.0, float(z[k])], [30.0, -30.0, float(z[k])], [30.0, 30.0, float(z[k])], [-30.0, 30.0, float(z[k])]]
        for k in (6, 10)
    ]
    pfile = tmp_path_factory.mktemp("in") / "poly.json"
    pfile.write_text(json.dumps(poly))
    assert _cli(["contour", "interpolate", str(d), "--name", "Box", "--polygons", str(pfile)]) == 0
    assert _cli(["contour", "polygons", str(d), "--json", str(pfile), "--name", "TwoSlices"]) == 0
    # interpolate in place: a structure drawn on two slices, stored in the RTSTRUCT, filled in between
    assert _cli(["contour", "polygons", str(d), "--json", str(pfile), "--name", "GTV_drawn"]) == 0
    assert _cli(["contour", "interpolate", str(d), "--name", "GTV_drawn"]) == 0
    gtv = load_study(d).mask("GTV_drawn")
    assert np.array_equal(np.flatnonzero(gtv.any(axis=(1, 2))), np.arange(6, 11))
    assert (
        _cli(
            ["contour", "boolean", str(d), "--op", "intersection", "--a", "Box", "--b", "TwoSlices", "--to", "Between"]
        )
        == 0
    )
    assert _cli(["contour", "edit", str(d), "--structure", "TwoSlices", "--rename", "Drawn"]) == 0
    assert _cli(["contour", "edit", str(d), "--structure", "Drawn", "--colour", "10,20,30"]) == 0
    bow = [[[0.0, 0.0, float(z[8])], [20.0, 20.0, float(z[8])], [20.0, 0.0, float(z[8])], [0.0, 20.0, float(z[8])]]]
    pfile.write_text(json.dumps(bow))
    assert _cli(["contour", "edit", str(d), "--structure", "Drawn", "--slice-json", str(pfile)]) == 2
    assert "crosses itself" in capsys.readouterr().err
    study = load_study(d)
    assert {"Box", "Drawn", "Between"} <= set(study.structure_names) and "TwoSlices" not in study.structure_names
    box = study.mask("Box")
    assert all(box[k].any() for k in range(6, 11)) and not box[5].any()
    assert study.structure("Drawn").structure.colour == (10, 20, 30)
    log = StructureSet.read_log(d / "RTSTRUCT_rayrt.contour_log.json")
    assert [op.method for op in log.operations_of("Drawn")] == ["polygons", "edit", "edit"]
    assert [op.method for op in log.history].count("import") == 0  # every structure here was made by rayrt
    # import a whole RTSTRUCT written elsewhere into a fresh copy of the folder
    other = tmp_path_factory.mktemp("other")
    for f in d.iterdir():
        if f.name.startswith("RTSTRUCT_rayrt"):
            continue
        (other / f.name).write_bytes(f.read_bytes())
    assert _cli(["contour", "import", str(other), "--rtstruct", str(d / "RTSTRUCT_rayrt.dcm")]) == 0
    assert set(load_study(other).structure_names) == set(study.structure_names)
    assert _cli(["contour", "import", str(other), "--rtstruct", str(d / "RTSTRUCT_rayrt.dcm")]) == 2
    assert "already exist" in capsys.readouterr().err


def test_default_auto_skips_missing_lungs_but_explicit_request_fails():
    ct, truth = thorax_phantom((20, 96, 96), (5.0, 5.0, 5.0))
    hu = ct.array.copy()
    hu[truth["Lung_L"] | truth["Lung_R"]] = 20  # a CT without lungs (soft tissue where they were)
    s = StructureSet(Volume(hu, ct.grid, "HU", {"modality": "CT"}))
    out = apply_request(s, {"method": "auto"})
    assert {o.name for o in out} == {"External", "Bones", "Cavity_Air"}
    assert any("no lungs" in n for n in s.history[-1].notes)
    with pytest.raises(InputError, match="no air-like region"):
        apply_request(s, {"method": "auto", "structures": ["lungs"]})
