"""End to end through HTTP on a real local Ray: upload, job, progress, results, bad input -> 4xx JSON."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import httpx
import pytest
from helpers.http import http
from helpers.service import stored_files, wait_job
from helpers.study import zip_dir

pytestmark = pytest.mark.ray


def _upload_zip(url: str, zip_path: Path) -> httpx.Response:
    with open(zip_path, "rb") as fh:
        return http.post(f"{url}/patients", files=[("files", (zip_path.name, fh, "application/zip"))], timeout=120)


@pytest.fixture(scope="module")
def patient(serve_app, small_study_zip) -> dict:
    r = _upload_zip(serve_app, small_study_zip)
    assert r.status_code == 201, r.text
    return r.json()


def test_upload_job_results(serve_app, serve_settings, patient, small_study, small_order, tmp_path):
    # the patient summary: ids, series, structures with volumes, warnings
    vv = small_study.primary.grid.voxel_volume_cc
    assert patient["patient_id"] == "RT-TEST-1"
    assert patient["series"][0]["modality"] == "CT" and patient["series"][0]["shape"] == [12, 32, 32]
    vols = {s["name"]: s["volume_cc"] for s in patient["structures"]}
    assert vols["PTV"] == pytest.approx(small_study.mask("PTV").sum() * vv, rel=0.05)
    assert isinstance(patient["warnings"], list) and len(patient["doses"]) == 1
    # stored durably before the 201
    assert (Path(serve_settings.data_dir) / "patients" / patient["id"] / "patient.json").is_file()
    assert http.get(f"{serve_app}/patients/{patient['id']}").json() == patient

    r = http.post(
        f"{serve_app}/jobs",
        json={"patient_id": patient["id"], "order": small_order, "priority": 2, "machines": ["agility", "truebeam"]},
    )
    assert r.status_code == 201, r.text
    job = wait_job(serve_app, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["machines"] == ["agility", "truebeam"] and job["priority"] == 2
    assert [(s["name"], s["state"], s["percent"]) for s in job["stages"]] == [
        ("load", "succeeded", 100.0),
        ("structures", "succeeded", 100.0),
        ("dvh", "succeeded", 100.0),
    ]
    assert job["worker"].startswith("rayrt-cc-") and job["started_at"] <= job["finished_at"]

    listing = http.get(f"{serve_app}/jobs/{job['id']}/results").json()
    paths = {f["path"] for f in listing["files"]}
    assert {"structures/result.json", "dvh/result.json", "dvh/dvh.csv"} <= paths
    rep = http.get(f"{serve_app}/jobs/{job['id']}/results/structures/result.json").json()
    assert {s["name"]: s["num_voxels"] for s in rep["structures"]}["Core"] == int(small_study.mask("Core").sum())
    csv_text = http.get(f"{serve_app}/jobs/{job['id']}/results/dvh/dvh.csv").text
    assert csv_text.splitlines()[0].startswith("dose_index,name,volume_cc")
    assert len(csv_text.splitlines()) == 1 + 3


def test_upload_as_separate_dicom_files(serve_app, small_study_dir):
    files = sorted(p for p in small_study_dir.rglob("*") if p.is_file())
    handles = [open(p, "rb") for p in files]
    try:
        r = http.post(
            f"{serve_app}/patients",
            files=[("files", (p.name, h, "application/dicom")) for p, h in zip(files, handles)],
            timeout=120,
        )
    finally:
        for h in handles:
            h.close()
    assert r.status_code == 201, r.text
    assert sorted(s["name"] for s in r.json()["structures"]) == ["BODY", "Core", "PTV"]


def _zip_slip(tmp_path: Path) -> Path:
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("CT/ok.dcm", b"x" * 10)
        zf.writestr("../../outside.dcm", b"gotcha")
    return z


def _missing_slice(small_study_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "missing"
    shutil.copytree(small_study_dir, d)
    cts = sorted((d / "CT").iterdir())
    import pydicom

    by_z = sorted(cts, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    by_z[len(by_z) // 2].unlink()
    return zip_dir(d, tmp_path / "missing.zip")


def _thirty_metres(small_study_dir: Path, tmp_path: Path) -> Path:
    """The CT's last slice moved 30 m along the axis: resampling would make ~30,000 slices."""
    import pydicom

    d = tmp_path / "thirty"
    shutil.copytree(small_study_dir, d)
    last = max(sorted((d / "CT").iterdir()), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    ds = pydicom.dcmread(last)
    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], 30000.5]
    ds.save_as(last)
    return zip_dir(d, tmp_path / "thirty.zip")


def _foreign_for(small_study_dir: Path, tmp_path: Path) -> Path:
    import pydicom
    from pydicom.uid import generate_uid

    d = tmp_path / "foreign"
    shutil.copytree(small_study_dir, d)
    rs = pydicom.dcmread(d / "RS.dcm")
    other = generate_uid()
    for item in rs.ReferencedFrameOfReferenceSequence:
        item.FrameOfReferenceUID = other
    for roi in rs.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = other
    rs.save_as(d / "RS.dcm")
    return zip_dir(d, tmp_path / "foreign.zip")


def _many_members(tmp_path: Path, limit: int) -> Path:
    """A zip of ``limit`` + 1 empty members: more files than one upload may bring."""
    out = tmp_path / "many.zip"
    with zipfile.ZipFile(out, "w") as z:
        for i in range(limit + 1):
            z.writestr(f"f{i:06d}.dcm", b"")
    return out


def test_bad_uploads_are_4xx_json_and_change_nothing(serve_app, serve_settings, patient, small_study_dir, tmp_path):
    before = stored_files(serve_settings.data_dir)
    cases = {
        "no files": http.post(f"{serve_app}/patients", data={"note": "nothing"}, timeout=60),
        "not multipart": http.post(f"{serve_app}/patients", content=b"hello", timeout=60),
        "empty file": http.post(
            f"{serve_app}/patients", files=[("files", ("a.dcm", b"", "application/dicom"))], timeout=60
        ),
        "not dicom": http.post(
            f"{serve_app}/patients", files=[("files", ("notes.txt", b"hello world", "text/plain"))], timeout=60
        ),
        "zip slip": _upload_zip(serve_app, _zip_slip(tmp_path)),
        "missing slice": _upload_zip(serve_app, _missing_slice(small_study_dir, tmp_path)),
        "foreign frame of reference": _upload_zip(serve_app, _foreign_for(small_study_dir, tmp_path)),
        "30 m series": _upload_zip(serve_app, _thirty_metres(small_study_dir, tmp_path)),
        "too many files in a zip": _upload_zip(serve_app, _many_members(tmp_path, serve_settings.max_upload_files)),
    }
    for name, r in cases.items():
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        body = r.json()
        assert set(body) <= {"error", "message", "field"} and body["error"] and body["message"], (name, body)
    assert cases["zip slip"].json()["error"] == "zip"
    assert "missing" in cases["missing slice"].json()["message"]
    assert cases["foreign frame of reference"].status_code == 422
    assert "frame of reference" in cases["foreign frame of reference"].json()["message"]
    assert cases["30 m series"].status_code == 422 and "spans" in cases["30 m series"].json()["message"]
    assert cases["too many files in a zip"].status_code == 413  # counted before anything is extracted
    assert "/tmp" not in cases["not dicom"].json().get("field", "")
    assert stored_files(serve_settings.data_dir) == before
    assert not (Path(serve_settings.data_dir).parent / "outside.dcm").exists()


def test_bad_jobs_are_4xx_json_and_change_nothing(serve_app, serve_settings, patient, small_order):
    before = stored_files(serve_settings.data_dir)
    unknown = {**small_order, "objectives": [{"structure": "Rectum", "kind": "max_dose", "dose_gy": 40}]}
    negative = {**small_order, "prescription": {"target": "PTV", "total_dose_gy": -60}}
    neg_obj = {**small_order, "objectives": [{"structure": "PTV", "kind": "min_dose", "dose_gy": -1}]}
    cases = {
        "unknown structure": (
            http.post(f"{serve_app}/jobs", json={"patient_id": patient["id"], "order": unknown}),
            422,
            "objectives.0.structure",  # where the unknown name stands
        ),
        "negative prescription": (
            http.post(f"{serve_app}/jobs", json={"patient_id": patient["id"], "order": negative}),
            422,
            "prescription.total_dose_gy",
        ),
        "negative objective dose": (
            http.post(f"{serve_app}/jobs", json={"patient_id": patient["id"], "order": neg_obj}),
            422,
            "objectives.0.dose_gy",
        ),
        "unknown patient": (
            http.post(f"{serve_app}/jobs", json={"patient_id": "0123456789ab", "order": small_order}),
            404,
            "patient_id",
        ),
        "no patient id": (http.post(f"{serve_app}/jobs", json={"order": small_order}), 422, "patient_id"),
        "not json": (
            http.post(f"{serve_app}/jobs", content=b"{nope", headers={"content-type": "application/json"}),
            422,
            None,
        ),
        "bad priority": (
            http.post(f"{serve_app}/jobs", json={"patient_id": patient["id"], "priority": "high"}),
            422,
            "priority",
        ),
        "bad planning option": (
            http.post(
                f"{serve_app}/jobs",
                json={"patient_id": patient["id"], "order": small_order, "options": {"num_beams": 0}},
            ),
            422,
            "options.num_beams",
        ),
        "unknown target machine": (
            http.post(
                f"{serve_app}/jobs",
                json={"patient_id": patient["id"], "order": small_order, "options": {}, "machines": ["no_such_linac"]},
            ),
            422,
            "machines",
        ),
        "planning without order": (
            http.post(f"{serve_app}/jobs", json={"patient_id": patient["id"], "options": {}}),
            422,
            "order",
        ),
    }
    for name, (r, status, field) in cases.items():
        assert r.status_code == status, (name, r.status_code, r.text)
        body = r.json()
        assert body["error"] and body["message"], (name, body)
        if field:
            assert body.get("field") == field, (name, body)
    assert "Rectum" in cases["unknown structure"][0].json()["message"]
    assert stored_files(serve_settings.data_dir) == before
    for path in ("/jobs/nope", "/patients/nope", "/jobs/nope/results", "/patients/..%2F..%2Fetc"):
        r = http.get(f"{serve_app}{path}")
        assert r.status_code == 404 and r.json()["error"] == "not_found", (path, r.text)


def test_job_request_is_validated_once_into_typed_order_and_planning(small_order):
    """What POST /jobs stores: the order checked against the patient's structures, and the
    planning request = configs/planning.yaml defaults + the request's options + its machines."""
    from rayrt.domain.errors import InputError
    from rayrt.domain.order import MedicalOrder
    from rayrt.domain.planning import planning_defaults
    from rayrt.service.app import check_job_request
    from rayrt.service.models import JobRequest

    names = ["BODY", "PTV", "Core"]
    req = JobRequest(
        patient_id="p",
        order=small_order,
        machines=["truebeam_m120"],
        options={"num_beams": 5, "conversion_options": {"max_attempts": 1}},
    )
    order, planning = check_job_request(req, names)
    assert isinstance(order, MedicalOrder) and order.prescription.target == "PTV"
    assert (
        planning.num_beams == 5
        and planning.machines == ["truebeam_m120"]
        and planning.conversion_options == {"max_attempts": 1}
    )
    for key, value in planning_defaults().items():  # every other setting from the one set of defaults
        if key not in ("num_beams", "conversion_options", "machines"):
            got = getattr(planning, key)
            assert (got.model_dump() if hasattr(got, "model_dump") else got) == value, key
    assert check_job_request(req.model_copy(update={"options": None}), names) == (
        order,
        None,
    )  # analysis only: machines only recorded
    bad = {
        "options.conversion_options.nope": {"conversion_options": {"nope": 1}},
        "options.conversion_options.mode": {"conversion_options": {"mode": "dao"}},
        "options.num_beams": {"num_beams": 0},
        "options.extra": {"extra": 1},
    }
    for field, options in bad.items():
        with pytest.raises(InputError) as e:
            check_job_request(req.model_copy(update={"options": options}), names)
        assert (e.value.status, e.value.field) == (422, field), (options, e.value.message)


def test_result_download_cannot_escape_the_job(serve_app, patient):
    r = http.post(f"{serve_app}/jobs", json={"patient_id": patient["id"]})
    job = wait_job(serve_app, r.json()["id"])
    assert job["state"] == "succeeded"
    r = http.post(f"{serve_app}/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"] == "conflict"  # only queued jobs can be cancelled
    assert patient["id"] in http.get(f"{serve_app}/patients").json()["patients"]
    assert job["id"] in [j["id"] for j in http.get(f"{serve_app}/jobs").json()["jobs"]]
    for rel in ("..%2Fjob.json", "structures/..%2F..%2Fjob.json", "nothing.json"):
        r = http.get(f"{serve_app}/jobs/{job['id']}/results/{rel}")
        assert r.status_code == 404, (rel, r.status_code, r.text)


def test_corrupt_store_file_is_a_500_json(serve_app, serve_settings, patient):
    job = http.post(f"{serve_app}/jobs", json={"patient_id": patient["id"]}).json()
    wait_job(serve_app, job["id"])
    f = Path(serve_settings.data_dir) / "jobs" / job["id"] / "job.json"
    good = f.read_bytes()
    try:
        f.write_text('{"id": "broken"')  # damaged by hand, outside rayrt's atomic writes
        r = http.get(f"{serve_app}/jobs/{job['id']}/results")  # reads job.json from the store
        assert r.status_code == 500 and r.json()["error"] == "internal"
        # no exception text, no store path: a reference to the service log
        assert "reference" in r.json()["message"] and serve_settings.data_dir not in r.text
        assert "ValidationError" not in r.text and "job.json" not in r.text
        # the status of a job comes from the ingress' status cache (the scheduler's snapshot of the
        # last save), not from the store: pollers are not affected, and never see the damaged bytes
        r = http.get(f"{serve_app}/jobs/{job['id']}")
        assert r.status_code == 200 and r.json()["state"] == "succeeded"
    finally:
        f.write_bytes(good)
    assert http.get(f"{serve_app}/jobs/{job['id']}").json()["state"] == "succeeded"
