"""``rayrt submit | status | results`` against the session's rayrt server (real local Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rayrt.cli.app import run

pytestmark = pytest.mark.ray

RAYRT = [sys.executable, "-c", "from rayrt.cli import main; main()"]  # the console script's entry point


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_submit_status_results(serve_app, small_study_dir, small_order, tmp_path, capsys):
    order = tmp_path / "order.yaml"
    order.write_text(yaml.safe_dump(small_order))
    code, out, err = _cli(
        capsys,
        "submit",
        str(small_study_dir),
        "--order",
        str(order),
        "--priority",
        "3",
        "--machines",
        "agility, truebeam",
        "--server",
        serve_app,
    )
    assert code == 0, err
    job_id = out.strip()
    assert len(job_id) == 12

    code, out, err = _cli(capsys, "status", job_id, "--wait", "--timeout", "120", "--json", "--server", serve_app)
    assert code == 0, err
    job = json.loads(out)
    assert job["state"] == "succeeded" and job["priority"] == 3 and job["machines"] == ["agility", "truebeam"]

    code, out, err = _cli(capsys, "status", job_id, "--server", serve_app)
    assert code == 0 and out.startswith(f"job {job_id}") and "dvh" in out and "succeeded" in out

    dest = tmp_path / "results"
    code, out, err = _cli(capsys, "results", job_id, "--out", str(dest), "--server", serve_app)
    assert code == 0, err
    assert (dest / "dvh" / "dvh.csv").read_text().startswith("dose_index,name,")
    rep = json.loads((dest / "structures" / "result.json").read_text())
    assert sorted(s["name"] for s in rep["structures"]) == ["BODY", "Core", "PTV"]
    assert sorted(Path(line).relative_to(dest.resolve()).as_posix() for line in out.split()) == sorted(
        p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()
    )


def test_submit_zip_with_server_from_env(serve_app, small_study_zip, monkeypatch, capsys):
    monkeypatch.setenv("RAYRT_SERVER", serve_app)
    code, out, err = _cli(capsys, "submit", str(small_study_zip))
    assert code == 0, err
    code, out, err = _cli(capsys, "status", out.strip(), "--wait", "--timeout", "120")
    assert code == 0 and "succeeded" in out


def test_cli_errors_are_one_line(serve_app, small_study_dir, small_order, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({**small_order, "objectives": [{"structure": "Rectum", "kind": "max_dose", "dose_gy": 40}]})
    )
    notdicom = tmp_path / "notes"
    notdicom.mkdir()
    (notdicom / "a.txt").write_text("hello")
    for argv, expect in [
        (["submit", str(small_study_dir), "--order", str(bad)], "Rectum"),
        (["submit", str(notdicom)], "DICOM"),
        (["submit", str(tmp_path / "nowhere")], "does not exist"),
        (["status", "0123456789ab"], "no job"),
        (["results", "0123456789ab", "--out", str(tmp_path / "r")], "no job"),
    ]:
        code, out, err = _cli(capsys, *argv, "--server", serve_app)
        assert code == 2, (argv, code, out, err)
        assert err.count("\n") == 1 and err.startswith("error: ") and expect in err, (argv, err)


def test_cli_subprocess_exit_code(serve_app, tmp_path):
    """The installed entry point: exit != 0 and one readable line when the server says 404."""
    env = {**os.environ, "RAYRT_SERVER": serve_app}
    p = subprocess.run([*RAYRT, "status", "0123456789ab"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "no job" in p.stderr
    p = subprocess.run(
        [*RAYRT, "status", "x", "--server", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 1 and "cannot reach" in p.stderr


def test_watch_summary_says_why_a_plan_was_not_released():
    from rayrt.cli.service import plan_line

    released = {
        "machine": "truebeam_m120",
        "verdict": "review",
        "total_mu_per_fraction": 845.25,
        "goals": [{"structure": "PTV70", "metric": "D99", "value_gy": 66.4, "met": False}],
    }
    assert plan_line(released) == "  truebeam_m120    QA REVIEW    845.2 MU/fx  PTV70 D99 66.4!"
    refused = {
        "machine": "versahd_agility",
        "verdict": "not released",
        "total_mu_per_fraction": 0.0,
        "failed_checks": ["not released after 3 attempt(s)", "PTV56 D95 within 1 Gy of the standard plan: fail"],
    }
    line = plan_line(refused)
    assert "NOT RELEASED" in line and "PTV56 D95 within 1 Gy" in line and "MU/fx" not in line
