"""One recipe: the same order and settings give the same standard plan through `rayrt plan` (in
this process), `POST /jobs` (the session's Ray + Serve) and `rayrt demo` (its own Ray, in a
subprocess): segments equal, MU equal within 1e-6 relative."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.paths import REPO

from rayrt.domain.plan import Plan

pytestmark = pytest.mark.ray

SPACING_MM = 5.0  # the demo's phantom voxel size for this test (--spacing-mm)


def _same_plan(a: Plan, b: Plan) -> None:
    assert [bm.gantry_deg for bm in a.beams] == [bm.gantry_deg for bm in b.beams]
    for ba, bb in zip(a.beams, b.beams):
        assert len(ba.segments) == len(bb.segments)
        for sa, sb in zip(ba.segments, bb.segments):
            assert (
                sa.x1_mm == sb.x1_mm
                and sa.x2_mm == sb.x2_mm
                and sa.jaw_x_mm == sb.jaw_x_mm
                and sa.jaw_y_mm == sb.jaw_y_mm
            )
            assert sa.mu == pytest.approx(sb.mu, rel=1e-6)
    assert a.total_mu == pytest.approx(b.total_mu, rel=1e-6)


def test_plan_cli_http_job_and_demo_give_the_same_standard_plan(serve_app, tmp_path, fast_planning):
    from helpers.service import wait_job

    from rayrt.cli.app import run
    from rayrt.cli.service import _client, upload_patient
    from rayrt.imaging.phantoms import tg119_order, write_tg119

    options = {k: v for k, v in fast_planning.items() if k != "conversion_options"}
    opt_file = tmp_path / "options.yaml"
    opt_file.write_text(yaml.safe_dump(options))
    case = write_tg119(tmp_path / "tg119", SPACING_MM)

    # 1. rayrt plan, in this process
    assert run(["plan", str(case), "--out", str(tmp_path / "cli"), "--options", str(opt_file)]) == 0
    cli = Plan.model_validate_json((tmp_path / "cli" / "normalize" / "plan.json").read_text())

    # 2. POST /jobs on the service
    with _client(serve_app) as c:
        pid = upload_patient(c, case)["id"]
        job = c.post(
            "/jobs",
            json={
                "patient_id": pid,
                "order": tg119_order().model_dump(mode="json"),
                "machines": [],
                "options": options,
            },
        ).json()
        done = wait_job(serve_app, job["id"], timeout_s=600)
        assert done["state"] == "succeeded", done
        http = Plan.model_validate(c.get(f"/jobs/{job['id']}/results/normalize/plan.json").json())

    # 3. rayrt demo, its own Ray and service
    data = tmp_path / "demo-data"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run(
        [
            str(Path(sys.executable).parent / "rayrt"),
            "demo",
            "--machines",
            "",
            "--out",
            str(tmp_path / "demo-out"),
            "--options",
            str(opt_file),
            "--spacing-mm",
            str(SPACING_MM),
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (plan_file,) = data.glob("jobs/*/stages/normalize/plan.json")
    demo = Plan.model_validate_json(plan_file.read_text())

    _same_plan(cli, http)
    _same_plan(cli, demo)
    summary = json.loads((tmp_path / "demo-out" / "summary.json").read_text())
    assert [m["machine"] for m in summary["machines"]] == ["standard"]
