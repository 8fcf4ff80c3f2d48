"""A physicist's review of a released plan over HTTP: approve / reject with who and when, every
decision kept, the rules of the roles, and a rejected plan refused for booking until approved."""

from __future__ import annotations

import time

import httpx
import pytest
from helpers.http import add_user, bearer, http

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def tokens(serve_app):
    return {role: add_user(serve_app, f"review-{role}", role) for role in ("clinician", "physicist")}


def _review(url, jid, machine, token, **body):
    return httpx.post(f"{url}/jobs/{jid}/plans/{machine}/review", json=body, headers=bearer(token), timeout=60)


def test_review_rules_and_booking(serve_app, planned_job, tokens):
    jid = planned_job["id"]
    plans = {m["machine"]: m for m in http.get(f"{serve_app}/jobs/{jid}/plans", timeout=30).json()["machines"]}
    mine = [plans[m] for m in planned_job["machines"]]
    released = [m["machine"] for m in mine if m["verdict"] != "not released"]
    assert released, [(m["machine"], m["failed_checks"]) for m in mine]  # fast settings release one or both
    machine = released[0]
    for m in mine:
        if m["verdict"] == "not released":  # QA failed: nothing to approve
            r = _review(serve_app, jid, m["machine"], tokens["physicist"], decision="approved")
            assert r.status_code == 409 and r.json()["field"] == "decision", r.text
    assert http.get(f"{serve_app}/jobs/{jid}/reviews", timeout=30).json() == {"job_id": jid, "reviews": []}

    # a clinician may read, not decide
    r = _review(serve_app, jid, machine, tokens["clinician"], decision="approved")
    assert r.status_code == 403, r.text
    # bad bodies: one clear 4xx, nothing stored
    for body, field in (({"decision": "maybe"}, "decision"), ({"decision": "rejected"}, "comment")):
        r = _review(serve_app, jid, machine, tokens["physicist"], **body)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    r = _review(serve_app, jid, "no_such_machine", tokens["physicist"], decision="approved")
    assert r.status_code == 404 and r.json()["field"] == "machine", r.text
    r = httpx.post(
        f"{serve_app}/jobs/nosuchjob/plans/{machine}/review",
        json={"decision": "approved"},
        headers=bearer(tokens["physicist"]),
    )
    assert r.status_code == 404, r.text
    assert http.get(f"{serve_app}/jobs/{jid}/reviews", timeout=30).json()["reviews"] == []

    # rejected: recorded with who, why and which plan; booking that plan is refused
    r = _review(serve_app, jid, machine, tokens["physicist"], decision="rejected", comment="cord too hot")
    assert r.status_code == 201, r.text
    (rev,) = r.json()["reviews"]
    assert rev["by"] == "review-physicist" and rev["decision"] == "rejected" and rev["comment"] == "cord too hot"
    assert rev["plan_id"] == plans[machine]["plan_id"] and rev["at"]
    b = httpx.post(
        f"{serve_app}/jobs/{jid}/book", json={"machine": machine}, headers=bearer(tokens["physicist"]), timeout=120
    )
    assert b.status_code == 409 and "rejected by review-physicist" in b.json()["message"], b.text

    # approved later: both decisions kept, the latest counts, booking accepted
    r = _review(serve_app, jid, machine, tokens["physicist"], decision="approved", comment="re-checked")
    assert r.status_code == 201, r.text
    assert [x["decision"] for x in r.json()["reviews"]] == ["rejected", "approved"]
    b = httpx.post(
        f"{serve_app}/jobs/{jid}/book", json={"machine": machine}, headers=bearer(tokens["physicist"]), timeout=120
    )
    assert b.status_code == 201, b.text
    seen = httpx.get(f"{serve_app}/jobs/{jid}/reviews", headers=bearer(tokens["clinician"])).json()["reviews"]
    assert [x["decision"] for x in seen] == ["rejected", "approved"]

    # the decisions are in the audit trail, with the job and the machine (recorded after the answer)
    def decisions():
        records = http.get(f"{serve_app}/audit", params={"job_id": jid}, timeout=30).json()["records"]
        return [x for x in records if x["action"].endswith("/review") and x["status"] == 201]

    deadline = time.monotonic() + 30
    while len(decisions()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    got = decisions()
    assert len(got) == 2 and all(x["user"] == "review-physicist" and x["machine"] == machine for x in got), got
