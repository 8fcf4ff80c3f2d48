"""The plan report over HTTP (``GET /jobs/{id}/report``) and ``rayrt report``: a PDF for a planned
job, 409 before the export stage, 401 without a token, 404 for an unknown job."""

from __future__ import annotations

import re

import httpx
import pytest
from helpers.http import http

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def report_job(serve_app, planned_job):
    """The session's planned job (conftest ``planned_job``: TrueBeam M120 not released, the standard
    machine's twin released), and an analysis-only job of the same patient (never exported)."""
    from helpers.service import wait_job

    r = http.post(f"{serve_app}/jobs", json={"patient_id": planned_job["patient_id"]}, timeout=30)
    assert r.status_code == 201, r.text
    assert wait_job(serve_app, r.json()["id"], timeout_s=120)["state"] == "succeeded"
    return planned_job, r.json()


def test_report_is_a_pdf(serve_app, report_job):
    jid = report_job[0]["id"]
    r = http.get(f"{serve_app}/jobs/{jid}/report", timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"] == f'attachment; filename="report_{jid}.pdf"'
    assert r.content.startswith(b"%PDF-")
    # cover, summary + goals, DVH of the twin vs standard, dose pages of both, QA
    assert len(re.findall(rb"/Type\s*/Page\b(?!s)", r.content)) >= 6
    assert re.search(rb"/Title \([^)]*" + jid.encode(), r.content)


def test_report_before_export_unknown_job_and_no_token(serve_app, report_job):
    r = http.get(f"{serve_app}/jobs/{report_job[1]['id']}/report", timeout=60)
    assert r.status_code == 409 and r.json()["error"] == "conflict" and "export" in r.json()["message"]
    r = http.get(f"{serve_app}/jobs/nosuchjob0/report", timeout=60)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = httpx.get(f"{serve_app}/jobs/{report_job[0]['id']}/report", timeout=60)  # no token
    assert r.status_code == 401


def test_cli_report_writes_the_pdf(serve_app, report_job, tmp_path, capsys):
    from rayrt.cli.app import run

    out = tmp_path / "sub" / "report.pdf"
    assert run(["report", report_job[0]["id"], "--out", str(out), "--server", serve_app]) == 0
    assert out.read_bytes().startswith(b"%PDF-") and str(out) in capsys.readouterr().out
    assert not list(out.parent.glob("*.part"))
    assert run(["report", "nosuchjob0", "--out", str(tmp_path / "x.pdf"), "--server", serve_app]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nosuchjob0" in err[0]
    assert not (tmp_path / "x.pdf").exists()
    assert run(["report", report_job[1]["id"], "--out", str(tmp_path / "y.pdf"), "--server", serve_app]) == 2
    assert "export" in capsys.readouterr().err


def test_full_dvh_curves_agree_with_the_exported_metrics(serve_app, report_job):
    """``GET /jobs/{id}/dvh``: every plan with a dose, each structure's cumulative DVH on one axis;
    its D95 (read off the curve) equals the exported D95 of dvh.csv within one axis step."""
    import numpy as np

    jid = report_job[0]["id"]
    r = http.get(f"{serve_app}/jobs/{jid}/dvh", timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    axis = np.asarray(body["dose_gy"])
    plans = {p["machine"]: p for p in body["plans"]}
    released = [
        m["machine"]
        for m in http.get(f"{serve_app}/jobs/{jid}/plans").json()["machines"]
        if m["verdict"] != "not released"
    ]
    assert sorted(plans) == sorted(released)
    rows = [ln.split(",") for ln in http.get(f"{serve_app}/jobs/{jid}/results/export/dvh.csv").text.splitlines()]
    head, rows = rows[0], rows[1:]
    checked = 0
    for row in rows:
        rec = dict(zip(head, row))
        plan = plans.get(rec["machine"])
        curve = next((s for s in plan["structures"] if s["name"] == rec["structure"]), None) if plan else None
        if curve is None or not rec.get("d95_gy"):
            continue
        y = np.asarray(curve["volume_pct"])
        assert y[0] == pytest.approx(100.0) and np.all(np.diff(y) <= 1e-9)  # cumulative: falls from 100 %
        d95 = axis[np.nonzero(y >= 95.0)[0][-1]]
        assert abs(d95 - float(rec["d95_gy"])) <= 1.5 * (axis[1] - axis[0]) + 0.02 * float(rec["d95_gy"]), rec
        checked += 1
    assert checked >= 2
    assert http.get(f"{serve_app}/jobs/{report_job[1]['id']}/dvh", timeout=60).status_code == 409
