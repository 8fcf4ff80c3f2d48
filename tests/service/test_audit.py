"""The audit trail (issue 15, item 6): hash-chained, append-only, verified on start; every API
request recorded with its user and outcome; users on jobs, contour edits and machine status."""

from __future__ import annotations

import json

import httpx
import pytest
from helpers.http import add_user, bearer, http

from rayrt.service.audit import AuditEntry, AuditQuery, AuditTrail, outcome_of
from rayrt.service.store import Store


def _entry(i: int, user: str = "alice", patient: str | None = None) -> AuditEntry:
    return AuditEntry(user=user, action=f"GET /x/{i}", patient_id=patient, status=200, outcome="ok")


def test_the_chain_spans_segments_and_continues_after_a_restart(tmp_path):
    trail = AuditTrail(Store(tmp_path), segment_size=3)
    recs = trail.append([_entry(i) for i in range(5)])
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0].prev_hash == "0" * 64 and all(b.prev_hash == a.hash for a, b in zip(recs, recs[1:]))
    again = AuditTrail(Store(tmp_path), segment_size=3)  # the service restarted
    more = again.append([_entry(5, "bob", "p1"), _entry(6)]) + again.append([_entry(7)])
    assert [r.seq for r in more] == [6, 7, 8] and more[0].prev_hash == recs[-1].hash
    assert sorted(p.name for p in (tmp_path / "audit").iterdir()) == [
        "000000000001.jsonl",
        "000000000004.jsonl",
        "000000000007.jsonl",
    ]
    check = AuditTrail(Store(tmp_path)).verify()
    assert check.ok and check.records == 8 and check.last_hash == more[-1].hash
    assert [r.seq for r in again.query(AuditQuery(user="bob"))] == [6]
    assert [r.seq for r in again.query(AuditQuery(patient_id="p1"))] == [6]
    assert [r.seq for r in again.query(AuditQuery(limit=2))] == [7, 8]
    assert [r.seq for r in again.query(AuditQuery(after_seq=6))] == [7, 8]


@pytest.mark.parametrize("tamper", ["change", "remove", "swap", "garble"])
def test_any_change_to_the_trail_is_found(tmp_path, tamper):
    trail = AuditTrail(Store(tmp_path), segment_size=4)
    trail.append([_entry(i) for i in range(6)])
    seg = tmp_path / "audit" / "000000000001.jsonl"
    lines = seg.read_text().splitlines()
    if tamper == "change":  # someone hides who read a record
        rec = json.loads(lines[1])
        rec["user"] = "mallory"
        lines[1] = json.dumps(rec)
    elif tamper == "remove":
        del lines[2]
    elif tamper == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines[3] = lines[3][:20]
    seg.write_text("\n".join(lines) + "\n")
    check = AuditTrail(Store(tmp_path)).verify()
    assert not check.ok and check.problem
    expected = {"change": "record 2 was changed", "remove": "record 3 is missing", "swap": "record 2 is missing"}
    if tamper in expected:
        assert expected[tamper] in check.problem
    else:
        assert "unreadable" in check.problem


def test_outcomes():
    assert [outcome_of(s) for s in (200, 201, 404, 422, 401, 403, 500)] == [
        "ok",
        "ok",
        "refused",
        "refused",
        "denied",
        "denied",
        "error",
    ]


@pytest.mark.ray
def test_the_audit_actor_verifies_the_trail_when_it_starts(ray_session, tmp_path):
    from rayrt.service.audit_log import AuditLog

    AuditTrail(Store(tmp_path)).append([_entry(i) for i in range(3)])
    seg = tmp_path / "audit" / "000000000001.jsonl"
    seg.write_text(seg.read_text().replace('"alice"', '"mallory"', 1))
    actor = AuditLog.remote(str(tmp_path))
    try:
        check = ray_session.get(actor.ready.remote())
        assert not check.ok and "record 1 was changed" in check.problem
        # recording goes on (the break stays visible to every later verification)
        assert ray_session.get(actor.record.remote([_entry(9)])) == 4
        assert not ray_session.get(actor.verify.remote()).ok
    finally:
        ray_session.kill(actor)


@pytest.mark.ray
def test_every_request_is_recorded_with_its_user_and_outcome(serve_app, serve_settings, small_study_zip, capsys):
    from rayrt.cli.app import run

    nurse = add_user(serve_app, "audit-clinician", "clinician")
    phys = add_user(serve_app, "audit-physicist", "physicist")
    with open(small_study_zip, "rb") as fh:
        r = httpx.post(
            f"{serve_app}/patients",
            files=[("files", ("s.zip", fh, "application/zip"))],
            headers=bearer(nurse),
            timeout=120,
        )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    for _ in range(3):  # a repeated read is one record
        assert httpx.get(f"{serve_app}/patients/{pid}", headers=bearer(nurse), timeout=30).status_code == 200
    r = httpx.post(f"{serve_app}/jobs", json={"patient_id": pid}, headers=bearer(nurse), timeout=30)
    job = r.json()
    assert r.status_code == 201 and job["created_by"] == "audit-clinician"
    edit = {"method": "margin", "source": "PTV", "name": "PTV_audit", "margin_mm": 2}
    r = httpx.post(f"{serve_app}/patients/{pid}/structures", json=edit, headers=bearer(nurse), timeout=120)
    assert r.status_code == 201, r.text
    log = httpx.get(f"{serve_app}/patients/{pid}/structures/log", headers=bearer(nurse), timeout=30).json()
    assert log["history"][-1]["user"] == "audit-clinician"
    assert httpx.get(f"{serve_app}/patients/{pid}", timeout=30).status_code == 401  # anonymous
    assert httpx.get(f"{serve_app}/cluster", headers=bearer(nurse), timeout=30).status_code == 403
    machines = httpx.get(f"{serve_app}/machines", headers=bearer(phys), timeout=30).json()["machines"]
    name = machines[0]["name"]
    reason = {"state": machines[0]["status"]["state"], "cause": machines[0]["status"].get("cause"), "reason": "audit"}
    r = httpx.post(f"{serve_app}/machines/{name}/status", json=reason, headers=bearer(phys), timeout=60)
    assert r.status_code == 200 and r.json()["status"]["changed_by"] == "audit-physicist", r.text

    page = http.get(f"{serve_app}/audit", params={"patient_id": pid, "limit": 1000}).json()
    assert page["check"]["ok"] is True
    seen = [(x["user"], x["action"], x["status"], x["outcome"]) for x in page["records"]]
    assert seen == [
        ("audit-clinician", "POST /patients", 201, "ok"),
        ("audit-clinician", "GET /patients/{patient_id}", 200, "ok"),
        ("audit-clinician", "POST /jobs", 201, "ok"),
        ("audit-clinician", "POST /patients/{patient_id}/structures", 201, "ok"),
        ("audit-clinician", "GET /patients/{patient_id}/structures/log", 200, "ok"),
        ("anonymous", f"GET /patients/{pid}", 401, "denied"),  # refused before routing: the path itself
    ], seen
    assert [x["job_id"] for x in page["records"] if x["action"] == "POST /jobs"] == [job["id"]]
    mine = http.get(f"{serve_app}/audit", params={"user": "audit-clinician", "limit": 1000}).json()["records"]
    assert ("GET /cluster", 403, "denied") in [(x["action"], x["status"], x["outcome"]) for x in mine]
    phys_recs = http.get(f"{serve_app}/audit", params={"user": "audit-physicist"}).json()["records"]
    assert [(x["action"], x["machine"]) for x in phys_recs if x["action"].startswith("POST")] == [
        ("POST /machines/{name}/status", name)
    ]
    r = http.get(f"{serve_app}/audit", params={"limit": 0})
    assert r.status_code == 422 and r.json()["field"] == "limit"
    assert httpx.get(f"{serve_app}/audit", headers=bearer(phys), timeout=30).status_code == 403

    # the same trail from the CLI, on the store
    assert run(["audit", "--data", serve_settings.data_dir, "--verify"]) == 0
    assert "audit trail intact" in capsys.readouterr().out
    assert run(["audit", "--data", serve_settings.data_dir, "--patient", pid, "--limit", "1000"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(seen) and "POST /patients" in out[0] and f"patient={pid}" in out[0]
