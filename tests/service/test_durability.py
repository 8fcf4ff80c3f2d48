"""Durability and recovery (issue 15, item 7): fsync failures raise, new directories reach the disk,
unreadable job records are reported and quarantined, idempotency keys, versioned contour edits."""

from __future__ import annotations

import errno
import os

import httpx
import pytest
from helpers.http import add_user, bearer, http

from rayrt.domain.job import Job
from rayrt.service import store as store_module
from rayrt.service.store import Store

# ---------------------------------------------------------------------------- the store (no Ray)


def test_an_fsync_failure_raises_and_leaves_the_old_file(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.write_bytes("jobs/a/job.json", b"old")

    def broken_fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        store.write_bytes("jobs/a/job.json", b"new")
    monkeypatch.undo()
    assert store.read_bytes("jobs/a/job.json") == b"old"
    assert [n for n in os.listdir(tmp_path / "jobs" / "a")] == ["job.json"], "no temporary file left"


def test_new_directories_are_fsynced_into_their_parents(tmp_path, monkeypatch):
    store = Store(tmp_path / "root")
    calls: list[tuple[str, bool]] = []
    real = store_module._fsync_path

    def spy(path, directory=False):
        calls.append((os.path.relpath(path, tmp_path), directory))
        real(path, directory)

    monkeypatch.setattr(store_module, "_fsync_path", spy)
    store.write_bytes("patients/p1/masks/m.npy", b"x")
    dirs = [p for p, d in calls if d]
    # each new directory's entry in its parent, then the file's own directory after the rename
    assert dirs[:3] == ["root", "root/patients", "root/patients/p1"], calls
    assert ("root/patients/p1/masks", True) in calls
    calls.clear()
    store.write_bytes("patients/p1/masks/n.npy", b"y")  # nothing new: only the file and its folder
    assert [p for p, d in calls if d] == ["root/patients/p1/masks"]


def test_unreadable_job_records_are_listed_and_quarantined(tmp_path):
    store = Store(tmp_path)
    good = store.create_job(Job(patient_id="p"))
    store.write_bytes("jobs/torn000001/job.json", b'{"id": "torn000001", "pat')
    store.write_bytes("jobs/old0000001/job.json", b'{"id": "old0000001", "patient_id": "p", "colour": "red"}')
    (tmp_path / "jobs" / "dir0000001" / "job.json").mkdir(parents=True)  # not a file at all
    jobs, bad = store.scan_jobs()
    assert [j.id for j in jobs] == [good.id]
    assert {b.job_id for b in bad} == {"torn000001", "old0000001", "dir0000001"}
    assert all(b.reason and b.quarantined_to is None for b in bad)
    for b in bad:
        store.quarantine_job(b)
    jobs, bad = store.scan_jobs()
    assert [j.id for j in jobs] == [good.id] and sorted(os.listdir(tmp_path / "jobs")) == [good.id]
    assert {b.job_id for b in bad} == {"torn000001", "old0000001", "dir0000001"}
    assert all(b.quarantined_to and store.exists(b.quarantined_to) for b in bad)
    torn = next(b for b in bad if b.job_id == "torn000001")
    assert store.read_bytes(f"{torn.quarantined_to}/job.json") == b'{"id": "torn000001", "pat'  # nothing lost


# ---------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def patient(serve_app, small_study_zip) -> dict:
    with open(small_study_zip, "rb") as fh:
        r = http.post(f"{serve_app}/patients", files=[("files", ("s.zip", fh, "application/zip"))], timeout=120)
    assert r.status_code == 201, r.text
    return r.json()


@pytest.mark.ray
def test_idempotency_keys_make_retries_safe(serve_app, small_study_zip, patient):
    def upload(key: str, name: str = "s.zip", headers: dict | None = None) -> httpx.Response:
        with open(small_study_zip, "rb") as fh:
            return http.post(
                f"{serve_app}/patients",
                files=[("files", (name, fh, "application/zip"))],
                headers={"Idempotency-Key": key, **(headers or {})},
                timeout=120,
            )

    before = set(http.get(f"{serve_app}/patients").json()["patients"])
    first, again = upload("upload-1"), upload("upload-1")
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.headers.get("idempotent-replayed") == "true"
    assert set(http.get(f"{serve_app}/patients").json()["patients"]) - before == {first.json()["id"]}
    r = upload("upload-1", name="other.zip")
    assert r.status_code == 422 and r.json()["field"] == "Idempotency-Key"

    body = {"patient_id": patient["id"], "priority": 1}
    key = {"Idempotency-Key": "job-7f3a"}
    a = http.post(f"{serve_app}/jobs", json=body, headers=key)
    b = http.post(f"{serve_app}/jobs", json=body, headers=key)
    assert a.status_code == b.status_code == 201 and a.json()["id"] == b.json()["id"]
    ids = [j["id"] for j in http.get(f"{serve_app}/jobs").json()["jobs"]]
    assert ids.count(a.json()["id"]) == 1
    r = http.post(f"{serve_app}/jobs", json={**body, "priority": 2}, headers=key)
    assert r.status_code == 422 and "different request" in r.json()["message"]
    # keys are per user: another user's same key is a new request
    token = add_user(serve_app, "idem-clinician", "clinician")
    c = httpx.post(f"{serve_app}/jobs", json=body, headers={**key, **bearer(token)}, timeout=30)
    assert c.status_code == 201 and c.json()["id"] != a.json()["id"] and c.json()["created_by"] == "idem-clinician"
    r = http.post(f"{serve_app}/jobs", json=body, headers={"Idempotency-Key": "has space"})
    assert r.status_code == 422 and r.json()["field"] == "Idempotency-Key"


@pytest.mark.ray
def test_a_stale_contour_edit_is_refused_and_jobs_record_the_version(serve_app, patient):
    pid = patient["id"]
    v = http.get(f"{serve_app}/patients/{pid}").json()["structure_version"]
    edit = {"method": "margin", "source": "PTV", "name": "PTV_v", "margin_mm": 3}
    r = http.post(f"{serve_app}/patients/{pid}/structures", json=edit, headers={"If-Match": str(v)}, timeout=120)
    assert r.status_code == 201 and r.json()["structure_version"] == v + 1, r.text
    assert http.get(f"{serve_app}/patients/{pid}").json()["structure_version"] == v + 1
    stale = {**edit, "name": "PTV_stale"}
    r = http.post(f"{serve_app}/patients/{pid}/structures", json=stale, headers={"If-Match": f'"{v}"'}, timeout=120)
    assert r.status_code == 409 and r.json()["field"] == "If-Match", r.text
    names = {s["name"] for s in http.get(f"{serve_app}/patients/{pid}").json()["structures"]}
    assert "PTV_v" in names and "PTV_stale" not in names, "the stale edit changed nothing"
    r = http.post(f"{serve_app}/patients/{pid}/structures", json=stale, headers={"If-Match": "latest"}, timeout=120)
    assert r.status_code == 422
    job = http.post(f"{serve_app}/jobs", json={"patient_id": pid}).json()
    assert job["structure_version"] == v + 1


@pytest.mark.ray
def test_get_jobs_reports_an_unreadable_job_and_lists_the_others(serve_app, serve_settings, patient):
    store = Store(serve_settings.data_dir)
    store.write_bytes("jobs/broken000http/job.json", b"\x00\xff not json")
    try:
        r = http.get(f"{serve_app}/jobs")
        assert r.status_code == 200
        body = r.json()
        assert body["jobs"] and [u["job_id"] for u in body["unreadable"]] == ["broken000http"]
    finally:
        store.delete_dir("jobs/broken000http")
