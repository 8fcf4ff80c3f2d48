"""`rayrt plan` end to end on the built-in TG-119 phantom (coarse grid): files, deliverability and
the TG-119 C-shape (easy) goals on the final, normalised, deliverable plan."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rayrt.cli.app import run
from rayrt.domain.plan import Plan
from rayrt.optimize.recipes import tg119_goal_order


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    order = d / "order.yaml"
    order.write_text(yaml.safe_dump(tg119_goal_order().model_dump(mode="json")))
    out = d / "out"
    rc = run(["plan", "tg119", "--order", str(order), "--machine", "standard", "--out", str(out), "--beams", "0,72,144,216,288",
              "--dose-grid-mm", "8", "--max-segments", "8", "--fmo-iterations", "150", "--dao-rounds", "2", "--sequencer", "xia_verhey"])
    assert rc == 0
    return out


def test_outputs_written(planned):
    plan = Plan.model_validate_json((planned / "plan.json").read_text())
    grid = json.loads((planned / "dose_grid.json").read_text())
    dose = np.load(planned / "dose.npy")
    assert dose.shape == tuple(grid["shape"]) and dose.dtype == np.float32
    assert len(plan.beams) == 5 and all(1 <= len(b.segments) <= 8 for b in plan.beams)
    assert plan.machine == "standard" and plan.fractions == 25 and plan.total_mu > 0
    rep = json.loads((planned / "report.json").read_text())
    names = [s["name"] for s in rep["stages"]]
    assert names == ["import", "dij", "problem", "fmo", "sequencing", "dao", "normalize_dose", "report"]
    assert all(s["seconds"] >= 0 and s["peak_rss_mib"] > 0 for s in rep["stages"])
    assert "VmHWM" in rep["memory_method"]
    assert rep["deliverability"]["deliverable"], rep["deliverability"]["violations"]
    assert {o["structure"] for o in rep["objectives"]} == {"PTV", "Core", "BODY"}


def test_tg119_easy_goals_met(planned):
    dvh = json.loads((planned / "report.json").read_text())["dvh"]
    assert dvh["PTV"]["d95_gy"] >= 50.0 - 1e-3  # normalised
    assert dvh["PTV"]["d10_gy"] <= 55.0
    assert dvh["Core"]["d10_gy"] <= 25.0


def test_bad_inputs_exit_2(tmp_path):
    assert run(["plan", "tg119", "--out", str(tmp_path / "o"), "--machine", "no-such-machine"]) == 2
    assert run(["plan", "tg119", "--out", str(tmp_path / "o"), "--sequencer", "nope"]) == 2
    assert run(["plan", "tg119", "--out", str(tmp_path / "o"), "--beams", "a,b"]) == 2
    assert run(["plan", str(tmp_path / "missing.mat"), "--out", str(tmp_path / "o")]) == 2
