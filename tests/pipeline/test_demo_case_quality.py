"""The demo's case planned with the configured defaults (configs/planning.yaml and
conversion.yaml, exactly what `rayrt demo`, `rayrt plan` and every job use): the TG-119 C-shape
at 4 mm for the demo's three machines. The standard plan and every converted plan meet the
TG-119 easy goals with QA verdict "pass", and Core D10 keeps at least 1 Gy of margin."""

from __future__ import annotations

import pytest

from rayrt.cli.demo import DEFAULT_MACHINES
from rayrt.domain.planning import planning_request
from rayrt.imaging.phantoms import tg119_order, write_tg119
from rayrt.pipeline import run_recipe


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    case = write_tg119(tmp_path_factory.mktemp("tg119"), 4.0)  # the demo's phantom, as DICOM
    return run_recipe(case, tg119_order(), planning_request({}, DEFAULT_MACHINES.split(",")))


def test_every_plan_passes_qa_and_meets_the_goals(planned):
    summary = planned["exports"]
    assert [m.machine for m in summary.machines] == ["standard", *DEFAULT_MACHINES.split(",")]
    for m in summary.machines:
        assert m.verdict == "pass", (m.machine, m.failed_checks)
        assert m.goals and all(g.met for g in m.goals), (m.machine, [(g.goal, g.value_gy) for g in m.goals])


def test_core_d10_has_a_gray_of_margin(planned):
    for m in planned["exports"].machines:
        core = next(g for g in m.goals if g.structure == "Core" and g.metric == "D10")
        assert core.value_gy is not None and core.value_gy <= core.limit_gy - 1.0, (m.machine, core.value_gy)


def test_the_standard_plan_is_deliverable_and_normalised(planned):
    std = planned["standard_plan"]
    assert std.dvh["PTV"]["d95_gy"] == pytest.approx(50.0, abs=1e-3)
    qa = planned["qa"].reports[0]
    assert all(c.status == "pass" for c in qa.checks if c.category == "deliverability")
    assert planned["fluence"].target_aim_factor > 1.0  # the normalisation-aware pass raised the target's aims
