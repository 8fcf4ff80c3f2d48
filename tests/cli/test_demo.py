"""End to end over HTTP: a planning job on the session's Ray + Serve (the demo's client code), and
the full ``rayrt demo`` in a subprocess (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from helpers.http import http
from helpers.paths import REPO

from rayrt.pipeline import PLANNING_STAGES

#: the demo plans one beam-angle set: the beam_set stage is skipped (succeeded, nothing stored)
PLAN_STAGES = [n for n in PLANNING_STAGES if n != "beam_set"]

pytestmark = pytest.mark.ray


def test_planning_job_over_http(serve_app, small_study_dir, small_order, tmp_path, fast_planning):
    from rayrt.cli.demo import run_demo_job
    from rayrt.cli.planning_options import format_summary

    lines: list[str] = []
    res = run_demo_job(
        serve_app,
        small_study_dir,
        small_order,
        ["truebeam_m120", "synergy_mlci2"],
        fast_planning,
        tmp_path / "out",
        timeout_s=600,
        echo=lines.append,
    )
    job = res["job"]
    assert job["state"] == "succeeded", job
    states = {s["name"]: s["state"] for s in job["stages"]}
    assert all(states[n] == "succeeded" for n in PLAN_STAGES)
    assert set(PLAN_STAGES) - {"problem"} <= set(res["stage_seconds"])
    dij = next(s for s in job["stages"] if s["name"] == "dij")
    assert dij["tasks_total"] >= 4  # fanned out: at least one task per beam
    names = {p.name for p in res["files"]}
    verdicts = {m["machine"]: m["verdict"] for m in res["summary"]["machines"]}
    for m in ("standard", "truebeam_m120", "synergy_mlci2"):
        assert f"qa_{m}.json" in names  # the release QA of every conversion (reused by the QA stage), pass or not
        qa_report = json.loads((tmp_path / "out" / f"qa_{m}.json").read_text())
        assert qa_report["verdict"] in ("pass", "review", "fail")
        if verdicts[m] == "not released":  # failed its release QA: no RTPLAN, no RTDOSE
            assert m != "standard" and f"RP_{m}.dcm" not in names and f"RD_{m}.dcm" not in names
        else:
            assert {f"RP_{m}.dcm", f"RD_{m}.dcm"} <= names
            assert pydicom.dcmread(tmp_path / "out" / f"RP_{m}.dcm").Modality == "RTPLAN"
    assert {"RS.dcm", "dvh.csv", "summary.json"} <= names  # an imported study: RTSTRUCT on its frame of reference
    rs = pydicom.dcmread(tmp_path / "out" / "RS.dcm")
    rp = pydicom.dcmread(tmp_path / "out" / "RP_standard.dcm")
    assert rp.FrameOfReferenceUID == rs.FrameOfReferenceUID
    summary = res["summary"]
    assert [m["machine"] for m in summary["machines"]] == ["standard", "truebeam_m120", "synergy_mlci2"]
    assert all(m["verdict"] in ("pass", "review", "fail", "not released") for m in summary["machines"])
    assert any("Core" in line and "D2 <= 25 Gy" in line for line in format_summary(summary))
    assert any("uploaded patient" in line for line in lines)
    if verdicts["truebeam_m120"] != "not released":  # released by rayrt.convert's QA loop: its plan is stored
        conv = http.get(f"{serve_app}/jobs/{job['id']}/results/convert/plan_truebeam_m120.json", timeout=30).json()
        assert conv["machine"] == "truebeam_m120" and conv["source_plan_id"]

    # every stage's result is in the store: the job can resume from any of them
    listing = http.get(f"{serve_app}/jobs/{job['id']}/results", timeout=30).json()
    stored = {f["stage"] for f in listing["files"]}
    assert set(PLAN_STAGES) - {"problem"} <= stored


def test_planning_options_are_validated(serve_app, small_study_zip, small_order):
    from rayrt.cli.service import _client, upload_patient

    with _client(serve_app) as c:
        pid = upload_patient(c, Path(small_study_zip))["id"]
        r = c.post(
            "/jobs", json={"patient_id": pid, "order": small_order, "machines": ["no_such_linac"], "options": {}}
        )
        assert r.status_code == 422 and "no_such_linac" in r.json()["message"]
        r = c.post(
            "/jobs",
            json={"patient_id": pid, "order": small_order, "machines": ["truebeam_m120"], "options": {"num_beams": 0}},
        )
        assert r.status_code == 422 and r.json()["field"] == "options.num_beams"
        r = c.post("/jobs", json={"patient_id": pid, "machines": ["truebeam_m120"], "options": {}})
        assert r.status_code == 422 and r.json()["field"] == "order"


@pytest.mark.slow
def test_rayrt_demo_end_to_end(tmp_path):
    """The README's main command: its own local Ray + Serve, TG-119, three machines, files, summary."""
    out = tmp_path / "demo-out"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run(
        [
            str(Path(sys.executable).parent / "rayrt"),
            "demo",
            "--out",
            str(out),
            "--set",
            "num_beams=5",
            "--spacing-mm",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [m["machine"] for m in summary["machines"]] == [
        "standard",
        "truebeam_m120",
        "versahd_agility",
        "synergy_mlci2",
    ]
    for m in summary["machines"]:  # every conversion ran (rayrt.convert); only released plans have DICOM RT
        released = m["verdict"] != "not released"
        assert (out / f"RP_{m['machine']}.dcm").is_file() == released and (
            out / f"RD_{m['machine']}.dcm"
        ).is_file() == released
        assert (out / f"qa_{m['machine']}.json").is_file()
    assert (out / "RS.dcm").is_file() and (out / "dvh.csv").is_file()
    assert "plan quality vs the TG-119 goals" in p.stdout and "results in" in p.stdout


def test_demo_rejects_unknown_machine(tmp_path):
    from rayrt.cli.app import run

    assert run(["demo", "--machines", "no_such_linac", "--out", str(tmp_path)]) == 2
