"""RTPLAN export / import: device sequences per machine, control points, MU, round trip, dciodvfy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers.dicom import dciodvfy_errors
from helpers.machines import elekta, halcyon, make_plan, varian
from helpers.paths import REPO

from rayrt.domain.errors import InputError
from rayrt.imaging.rtplan import build_rtplan, export_plan_dicom, match_machine, read_rtplan, write_rtplan
from rayrt.machines import load_machine

MACHINES = [varian(), elekta(), halcyon()]


@pytest.mark.parametrize(
    "machine,types",
    [(MACHINES[0], ["ASYMX", "ASYMY", "MLCX"]), (MACHINES[1], ["ASYMY", "MLCX"]), (MACHINES[2], ["MLCX1", "MLCX2"])],
)
def test_export_devices_control_points_and_mu(machine, types):
    plan = make_plan(machine)
    ds = build_rtplan(plan, machine)
    assert ds.Modality == "RTPLAN" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.5"
    fg = ds.FractionGroupSequence[0]
    assert fg.NumberOfFractionsPlanned == 25 and fg.NumberOfBeams == 2
    assert float(ds.DoseReferenceSequence[0].TargetPrescriptionDose) == 50.0
    for beam, rb, pb in zip(ds.BeamSequence, fg.ReferencedBeamSequence, plan.beams):
        assert beam.TreatmentMachineName == machine.name
        assert [d.RTBeamLimitingDeviceType for d in beam.BeamLimitingDeviceSequence] == types
        mlc_type = "MLCX1" if machine.mlc.dual_layer else "MLCX"  # dual layer: MLCX1 = distal (the model's pairs)
        mlc = [d for d in beam.BeamLimitingDeviceSequence if d.RTBeamLimitingDeviceType == mlc_type][0]
        assert mlc.NumberOfLeafJawPairs == machine.mlc.num_pairs
        assert np.allclose([float(v) for v in mlc.LeafPositionBoundaries], machine.mlc.leaf_boundaries_mm)
        assert rb.ReferencedBeamNumber == beam.BeamNumber
        assert float(rb.BeamMeterset) == pytest.approx(pb.mu, abs=1e-4)
        cps = beam.ControlPointSequence
        assert beam.NumberOfControlPoints == len(cps) == 2 * len(pb.segments)
        w = np.array([float(cp.CumulativeMetersetWeight) for cp in cps])
        assert (
            w[0] == 0 and w[-1] == pytest.approx(float(beam.FinalCumulativeMetersetWeight)) and np.all(np.diff(w) >= 0)
        )
        # the weight rise of each control-point pair is the segment's MU share, positions unchanged within the pair
        for s, seg in enumerate(pb.segments):
            assert (w[2 * s + 1] - w[2 * s]) * pb.mu == pytest.approx(seg.mu, abs=1e-4)
            a, b = cps[2 * s], cps[2 * s + 1]
            for pa, pb_ in zip(a.BeamLimitingDevicePositionSequence, b.BeamLimitingDevicePositionSequence):
                assert list(pa.LeafJawPositions) == list(pb_.LeafJawPositions)
            leaves = [p for p in a.BeamLimitingDevicePositionSequence if p.RTBeamLimitingDeviceType == mlc_type][0]
            assert np.allclose([float(v) for v in leaves.LeafJawPositions], seg.x1_mm + seg.x2_mm, atol=0.006)
        assert float(cps[0].GantryAngle) == pytest.approx(pb.gantry_deg)
        assert [float(v) for v in cps[0].IsocenterPosition] == [1.5, -20.0, 12.25]


def test_jaws_follow_the_open_leaves():
    m = MACHINES[0]
    plan = make_plan(m, n_beams=1, n_segments=1)
    seg = plan.beams[0].segments[0]
    ds = build_rtplan(plan, m)
    pos = {
        p.RTBeamLimitingDeviceType: [float(v) for v in p.LeafJawPositions]
        for p in ds.BeamSequence[0].ControlPointSequence[0].BeamLimitingDevicePositionSequence
    }
    open_ = (
        np.asarray(seg.x2_mm) - np.asarray(seg.x1_mm) > m.mlc.min_gap_mm + 0.01
    )  # closed pairs sit at the minimum gap
    assert pos["ASYMX"] == pytest.approx(
        [min(np.asarray(seg.x1_mm)[open_]), max(np.asarray(seg.x2_mm)[open_])], abs=0.006
    )
    idx = np.nonzero(open_)[0]
    assert pos["ASYMY"] == pytest.approx([m.mlc.leaf_boundaries_mm[idx[0]], m.mlc.leaf_boundaries_mm[idx[-1] + 1]])


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_round_trip_same_segments_and_mu(tmp_path, machine):
    plan = make_plan(machine, n_beams=3, n_segments=4, seed=3)
    path = write_rtplan(plan, machine, tmp_path / "rp.dcm")
    imp = read_rtplan(path, MACHINES)
    assert imp.machine.name == machine.name
    assert imp.technique == "step_and_shoot"
    back = imp.plan
    assert back.fractions == plan.fractions and back.prescription_gy == pytest.approx(50.0)
    assert len(back.beams) == len(plan.beams)
    for b0, b1 in zip(plan.beams, back.beams):
        assert (b1.number, b1.gantry_deg, b1.collimator_deg) == (b0.number, b0.gantry_deg, b0.collimator_deg)
        assert b1.isocenter_mm == pytest.approx(b0.isocenter_mm)
        assert b1.mu == pytest.approx(b0.mu, abs=1e-3)
        assert len(b1.segments) == len(b0.segments)
        for s0, s1 in zip(b0.segments, b1.segments):
            assert s1.mu == pytest.approx(s0.mu, abs=1e-3)
            assert np.allclose(s1.x1_mm, s0.x1_mm, atol=0.006) and np.allclose(s1.x2_mm, s0.x2_mm, atol=0.006)
            assert (s1.jaw_x_mm is None) == (machine.jaw_x is None)
            assert (s1.jaw_y_mm is None) == (machine.jaw_y is None)
    assert back.total_mu == pytest.approx(plan.total_mu, abs=1e-2)


def _save_raw(path: Path, out: Path, implicit: bool) -> Path:
    """Re-write a Part 10 file as a raw dataset: no preamble, no ``DICM``, no File Meta header."""
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(out, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    assert out.read_bytes()[128:132] != b"DICM"
    return out


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit_vr", "explicit_vr"])
def test_raw_rtplan_without_part10_header_reads_the_same(tmp_path, implicit):
    """Some planning systems export RTPLANs as raw datasets: read them, transfer syntax inferred."""
    machine = MACHINES[0]
    plan = make_plan(machine, n_beams=2, n_segments=3, seed=5)
    part10 = write_rtplan(plan, machine, tmp_path / "rp.dcm")
    raw = _save_raw(part10, tmp_path / "RP_export", implicit)  # no extension, as such exports often are
    a, b = read_rtplan(part10, MACHINES).plan, read_rtplan(raw, MACHINES).plan
    assert [[sg.mu for sg in bm.segments] for bm in a.beams] == [[sg.mu for sg in bm.segments] for bm in b.beams]
    assert [bm.gantry_deg for bm in a.beams] == [bm.gantry_deg for bm in b.beams]


def test_match_machine_by_name_then_by_leaves():
    m = MACHINES[1]
    ds = build_rtplan(make_plan(m), m)
    assert match_machine(ds, MACHINES).name == "VersaHD1"
    for b in ds.BeamSequence:
        b.TreatmentMachineName = "LINAC_7"  # unknown name: matched by the 80 x 5 mm Agility boundaries
    assert match_machine(ds, MACHINES).name == "VersaHD1"
    assert match_machine(ds, {mm.name: mm for mm in MACHINES}).name == "VersaHD1"
    with pytest.raises(InputError, match="no machine model matches"):
        match_machine(ds, [MACHINES[0], MACHINES[2]])
    for b in ds.BeamSequence:  # right name, wrong leaves: refused
        b.TreatmentMachineName = "TrueBeam1"
    with pytest.raises(InputError, match="matches model TrueBeam1 by name"):
        match_machine(ds, MACHINES)


def test_dynamic_and_arc_beams_are_recognised():
    m = MACHINES[0]
    ds = build_rtplan(make_plan(m, n_beams=1, n_segments=2), m)
    cps = ds.BeamSequence[0].ControlPointSequence
    # sliding window: leaves move between two control points while the weight rises
    mlc = [p for p in cps[1].BeamLimitingDevicePositionSequence if p.RTBeamLimitingDeviceType == "MLCX"][0]
    vals = [float(v) for v in mlc.LeafJawPositions]
    vals[70] += 3.0
    mlc.LeafJawPositions = [f"{v:g}" for v in vals]
    with pytest.raises(InputError, match="dynamic MLC"):
        read_rtplan(ds, MACHINES)
    ds = build_rtplan(make_plan(m, n_beams=1, n_segments=2), m)
    cps = ds.BeamSequence[0].ControlPointSequence
    cps[0].GantryRotationDirection = "CW"
    with pytest.raises(InputError, match="VMAT"):
        read_rtplan(ds, MACHINES)
    ds = build_rtplan(make_plan(m, n_beams=1, n_segments=2), m)
    cps = ds.BeamSequence[0].ControlPointSequence
    cps[1].GantryAngle = "20"
    with pytest.raises(InputError, match="VMAT"):
        read_rtplan(ds, MACHINES)


def test_static_varian_plan_with_sparse_control_points():
    """A static beam as other systems write it: positions only in CP0, CP1 carries the weight only."""
    m = MACHINES[0]
    ds = build_rtplan(make_plan(m, n_beams=1, n_segments=1), m)
    cp1 = ds.BeamSequence[0].ControlPointSequence[1]
    del cp1.BeamLimitingDevicePositionSequence
    imp = read_rtplan(ds, MACHINES)
    assert imp.technique == "static"
    seg0 = make_plan(m, n_beams=1, n_segments=1).beams[0].segments[0]
    assert np.allclose(imp.plan.beams[0].segments[0].x1_mm, seg0.x1_mm, atol=0.006)


def test_two_layer_halcyon_plan_keeps_both_layers_or_is_combined():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DSeq

    m = MACHINES[2]
    ds = build_rtplan(make_plan(m, n_beams=1, n_segments=1), m)
    beam = ds.BeamSequence[0]
    distal = np.arange(-140, 141, 10.0)  # 28 x 10 mm
    proximal = np.arange(-145, 146, 10.0)  # 29 x 10 mm, offset 5 mm
    devs = []
    for t, b in (("MLCX1", distal), ("MLCX2", proximal)):
        d = Dataset()
        d.RTBeamLimitingDeviceType = t
        d.NumberOfLeafJawPairs = b.size - 1
        d.LeafPositionBoundaries = [f"{v:g}" for v in b]
        devs.append(d)
    beam.BeamLimitingDeviceSequence = DSeq(devs)
    nd, np_ = distal.size - 1, proximal.size - 1
    d1, d2 = np.full(nd, -30.0), np.full(nd, 30.0)
    p1 = -20.0 + 5.0 * (np.arange(np_) % 2)  # alternating -20 / -15 under each 10 mm distal pair
    p2 = np.full(np_, 40.0)
    for cp in beam.ControlPointSequence:
        pos = []
        for t, a, b in (("MLCX1", d1, d2), ("MLCX2", p1, p2)):
            p = Dataset()
            p.RTBeamLimitingDeviceType = t
            p.LeafJawPositions = [f"{v:g}" for v in np.concatenate([a, b])]
            pos.append(p)
        cp.BeamLimitingDevicePositionSequence = DSeq(pos)
    beam.TreatmentMachineName = "SomeHalcyon"  # unknown name: matched by the distal layer's boundaries
    assert match_machine(ds, MACHINES).name == "Halcyon1"
    imp = read_rtplan(ds, MACHINES)
    seg = imp.plan.beams[0].segments[0]
    # the dual-layer model's own two layers: both kept as they are
    assert np.allclose(seg.x1_mm, d1) and np.allclose(seg.x2_mm, d2)
    assert np.allclose(seg.x1_proximal_mm, p1) and np.allclose(seg.x2_proximal_mm, p2)
    # a single-layer model with the distal boundaries: each distal pair lies under two proximal
    # leaves (-20 and -15), the opening is the intersection
    m1 = m.model_copy(update={"mlc": m.mlc.model_copy(update={"dual_layer": False})})
    seg = read_rtplan(ds, [m1]).plan.beams[0].segments[0]
    assert np.allclose(seg.x1_mm, -15.0) and np.allclose(seg.x2_mm, 30.0) and seg.x1_proximal_mm is None
    # a model with the union boundaries (58 x 5 mm effective pairs) gets the 5 mm detail
    m58 = m.model_copy(
        update={
            "name": "Halcyon5",
            "mlc": m.mlc.model_copy(update={"leaf_boundaries_mm": list(np.arange(-145, 146, 5.0))}),
        }
    )
    imp = read_rtplan(ds, [m58])
    x1, x2 = np.asarray(imp.plan.beams[0].segments[0].x1_mm), np.asarray(imp.plan.beams[0].segments[0].x2_mm)
    assert np.allclose(x1, np.repeat(p1, 2)) and np.allclose(x2[1:-1], 30.0)
    assert x2[0] == 40.0 and x2[-1] == 40.0  # the outermost 5 mm are under the proximal layer only
    beam.TreatmentMachineName = "TrueBeam1"
    with pytest.raises(InputError, match="by name"):
        read_rtplan(ds, MACHINES)


def test_bad_plans_refused():
    m = MACHINES[0]
    plan = make_plan(m)
    with pytest.raises(InputError, match="not 'VersaHD1'"):
        build_rtplan(plan, MACHINES[1])
    bad = plan.model_copy(deep=True)
    bad.beams[0].segments[0].x1_mm.pop()
    bad.beams[0].segments[0].x2_mm.pop()
    with pytest.raises(InputError, match="leaf pairs"):
        build_rtplan(bad, m)
    ds = build_rtplan(plan, m)
    ds.Modality = "RTDOSE"
    with pytest.raises(InputError, match="not an RTPLAN"):
        read_rtplan(ds, MACHINES)


def test_yaml_machines_round_trip(tmp_path):
    """Every machine file in configs/machines exports and re-imports (when the files exist)."""
    files = sorted((REPO / "configs" / "machines").glob("*.yaml"))
    if not files:
        pytest.skip("no configs/machines/*.yaml yet")
    from rayrt.qa.deliverability import check_plan

    machines = [load_machine(f) for f in files]
    for m in machines:
        plan = make_plan(m, n_beams=1, n_segments=2)
        imp = read_rtplan(write_rtplan(plan, m, tmp_path / f"{m.name}.dcm"), machines)
        assert imp.machine.name == m.name
        assert imp.plan.total_mu == pytest.approx(plan.total_mu, abs=1e-2)
        # the re-imported plan (jaws from the RTPLAN) is deliverable on its machine
        rep = check_plan(imp.plan, m)
        assert rep.deliverable, (m.name, [v.message for v in rep.violations][:3])


# ----------------------------------------------------------------------------- dciodvfy
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from rayrt.domain.patient import Structure, StructureKind
    from rayrt.imaging.export import write_ct_series, write_rtstruct
    from rayrt.imaging.study import StructureMask
    from rayrt.imaging.volume import Grid, Volume

    out = tmp_path_factory.mktemp("dicom")
    grid = Grid(shape=(8, 32, 32), spacing_mm=(4.0, 4.0, 5.0), origin_mm=(-62.0, -62.0, -17.5))
    ct = Volume(np.full(grid.shape, -1000.0), grid, "HU")
    z, y, x = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    body = (x - 15.5) ** 2 + (y - 15.5) ** 2 < 14**2
    ptv = (x - 15.5) ** 2 + (y - 15.5) ** 2 < 5**2
    ptv &= (z > 1) & (z < 6)
    ct.array[body] = 0.0
    write_ct_series(ct, out / "CT", patient_id="P1", patient_name="Test^Patient")
    rs = write_rtstruct(
        [
            StructureMask(Structure(name="BODY", kind=StructureKind.external), body),
            StructureMask(Structure(name="PTV", kind=StructureKind.target, colour=(255, 0, 0)), ptv),
        ],
        ct,
        out / "RS.dcm",
    )
    m = MACHINES[0]
    plan = make_plan(m)
    plan.frame_of_reference_uid = ct.meta["frame_of_reference_uid"]
    dose = Volume((2.0 * np.exp(-((x - 15.5) ** 2 + (y - 15.5) ** 2) / 60.0)).astype(np.float32), grid, "dose_gy")
    paths = export_plan_dicom(plan, m, out, dose=dose, rtstruct=rs, dose_bits=32)
    paths16 = export_plan_dicom(
        make_plan(MACHINES[1]), MACHINES[1], out / "elekta", dose=dose, rtstruct=rs, dose_bits=16
    )
    paths_h = export_plan_dicom(make_plan(MACHINES[2]), MACHINES[2], out / "halcyon", rtstruct=rs)
    return {"rs": rs, "varian": paths, "elekta": paths16, "halcyon": paths_h, "plan": plan, "ct": ct}


def test_export_references(exported):
    rp = pydicom.dcmread(exported["varian"]["rtplan"])
    rd = pydicom.dcmread(exported["varian"]["rtdose"])
    rs = pydicom.dcmread(exported["rs"])
    assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == rp.SOPInstanceUID
    assert rp.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
    assert rp.FrameOfReferenceUID == rs.FrameOfReferenceUID == rd.FrameOfReferenceUID
    assert rp.StudyInstanceUID == rs.StudyInstanceUID == rd.StudyInstanceUID
    assert rp.RTPlanGeometry == "PATIENT"
    ptv_roi = [r.ROINumber for r in rs.StructureSetROISequence if r.ROIName == "PTV"][0]
    dref = rp.DoseReferenceSequence[0]
    assert dref.DoseReferenceStructureType == "VOLUME" and dref.ReferencedROINumber == ptv_roi


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed (apt-get install -y dicom3tools)")
def test_dciodvfy_reports_no_errors(exported, tmp_path):
    bare = make_plan(MACHINES[0], n_segments=1)  # static, no RTSTRUCT, no prescription
    bare.prescription_gy = None
    files = [
        exported["varian"]["rtplan"],
        exported["elekta"]["rtplan"],
        exported["rs"],
        exported["elekta"]["rtdose"],
        write_rtplan(bare, MACHINES[0], tmp_path / "bare.dcm"),
    ]
    for f in files:
        errors = dciodvfy_errors(Path(f))
        assert errors == [], f"{Path(f).name}: {errors}"
    # the dual-layer (Halcyon) RTPLAN: MLCX1 + MLCX2, no error but the validator's unknown device types
    rp = Path(exported["halcyon"]["rtplan"])
    assert [d.RTBeamLimitingDeviceType for d in pydicom.dcmread(rp).BeamSequence[0].BeamLimitingDeviceSequence] == [
        "MLCX1",
        "MLCX2",
    ]
    errors = dciodvfy_errors(rp, allow_dual_layer_types=True)
    assert errors == [], f"{rp.name}: {errors}"


def test_gamma_cli_on_exported_rtdose(exported, capsys):
    """The 32-bit and 16-bit RTDOSE of the same dose agree (rayrt gamma reads both)."""
    import json

    import rayrt.cli  # noqa: F401  (registers the commands)
    from rayrt.cli.app import run

    assert (
        run(
            [
                "gamma",
                str(exported["varian"]["rtdose"]),
                str(exported["elekta"]["rtdose"]),
                "--json",
                "--dd",
                "1",
                "--dta",
                "1",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["pass_rate_pct"] == 100.0 and out["max_gamma"] < 0.05


def test_imported_plan_recomputes_to_the_same_dose(tmp_path):
    """An exported and re-imported plan gives the same aperture dose (rayrt.dose.aperture)."""
    pytest.importorskip("rayrt.dose.aperture")
    from rayrt.dose.aperture import aperture_dose
    from rayrt.imaging.volume import Grid, Volume
    from rayrt.machines import get_machine, list_machines

    if "versahd_agility" not in list_machines():
        pytest.skip("configs/machines/versahd_agility.yaml not present")
    m = get_machine("versahd_agility")
    from rayrt.imaging.rtplan import _jaws_for_segment

    plan = make_plan(m, n_beams=1, n_segments=2)
    for seg in plan.beams[0].segments:  # a deliverable plan carries the jaws of the machine
        seg.jaw_x_mm, seg.jaw_y_mm = _jaws_for_segment(seg, m)
        seg.jaw_y_mm = (seg.jaw_y_mm[0] - 2.5, seg.jaw_y_mm[1] + 2.5)
    imp = read_rtplan(write_rtplan(plan, m, tmp_path / "rp.dcm"), [m])
    assert imp.plan.beams[0].segments[0].jaw_y_mm == plan.beams[0].segments[0].jaw_y_mm
    grid = Grid(shape=(12, 12, 12), spacing_mm=(5.0, 5.0, 5.0), origin_mm=(-27.5, -27.5, -27.5))
    density = Volume(np.ones(grid.shape, np.float32), grid, "relative_electron_density")
    d0 = aperture_dose(density, grid, plan.beams[0], None, m)
    d1 = aperture_dose(density, grid, imp.plan.beams[0], None, imp.machine)
    assert d0.max() > 0
    assert np.allclose(d1, d0, rtol=1e-3, atol=1e-4 * d0.max())
