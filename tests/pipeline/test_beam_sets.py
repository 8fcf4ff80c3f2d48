"""Beam-angle sets to choose from (PlanningRequest.beam_angle_alternatives): the Dij computed once
for every candidate beam, each set's fluence optimised, the set meeting the goals best kept, and
the stages after it planning that set's beams only, also when a run resumes from stored results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rayrt.domain.planning import planning_request
from rayrt.imaging.tg119_cases import tg119_case
from rayrt.pipeline import recipe, restore_output, run_recipe
from rayrt.pipeline.runner import run_stages

POOR = [0.0]  # one beam: cannot meet the multitarget's three dose levels
GOOD = [40.0, 160.0, 280.0]


@pytest.fixture(scope="module")
def case():
    return tg119_case("multitarget", 5.0)


@pytest.fixture(scope="module")
def planning(fast_planning):
    opts = {**fast_planning, "gantry_deg": POOR, "beam_angle_alternatives": [GOOD, [0.0], [360.0]]}
    return planning_request({**opts, "autoplan": {"rounds": 2, "iterations_per_round": 15}}, [])


@pytest.fixture(scope="module")
def planned(case, planning, tmp_path_factory):
    study, order = case
    out = tmp_path_factory.mktemp("beam-sets")
    return run_recipe(study, order, planning, out_dir=out), out


def test_angle_sets_are_checked_and_deduplicated(fast_planning):
    from rayrt.domain.errors import InputError

    req = planning_request({"gantry_deg": [0, 120, 240], "beam_angle_alternatives": [[240, 0, 480], [30, 150]]}, [])
    assert req.angle_sets() == [[0.0, 120.0, 240.0], [30.0, 150.0]]  # {240, 0, 120} is the first set again
    assert req.all_angles() == [0.0, 120.0, 240.0, 30.0, 150.0]
    assert planning_request({}, []).angle_sets() == [planning_request({}, []).angles()]
    with pytest.raises(InputError, match="beam_angle_alternatives"):
        planning_request({"beam_angle_alternatives": [[0, 360]]}, [])
    with pytest.raises(InputError, match="gantry_deg"):
        planning_request({"gantry_deg": [10, 370]}, [])
    with pytest.raises(InputError, match="beam_angle_alternatives"):
        planning_request({"beam_angle_alternatives": [[]]}, [])


def test_the_set_meeting_the_goals_best_is_planned(planned):
    res, _ = planned
    choice = res["beam_set"]
    assert [s.gantry_deg for s in choice.sets] == [POOR, GOOD]  # [0] and [360] repeat the first set
    assert choice.chosen == 1
    poor, good = choice.sets
    assert good.goals == poor.goals == 6
    assert good.goals_met > poor.goals_met
    # the stages after it plan the chosen beams only, numbered from 1
    beams = res["standard_plan"].plan.beams
    assert [b.gantry_deg for b in beams] == GOOD
    assert [(b.name, b.number) for b in beams] == [("B1", 1), ("B2", 2), ("B3", 3)]
    assert [b.beam.gantry_deg for b in res["beamlet_set"].beams] == GOOD
    assert res["dij"].matrix.shape[1] == sum(res["beamlet_set"].counts) == len(choice.fluence.weights)
    assert res["fluence"] is choice.fluence


def test_the_summary_names_the_sets(planned):
    """summary.json records every set's standing and the set planned."""
    import json

    res, out = planned
    summary = json.loads((out / "export" / "summary.json").read_text())
    assert [s["gantry_deg"] for s in summary["beam_angle_sets"]] == [POOR, GOOD]
    assert summary["beam_angle_set_chosen"] == 2
    assert res["exports"].machines[0].machine == res["standard_plan"].plan.machine


def test_the_chosen_columns_are_the_computed_ones(planned):
    """The narrowed Dij is the full Dij's blocks of the chosen beams, bit for bit."""
    res, out = planned
    from rayrt.pipeline.planning import BeamletSet, DijResult

    full = DijResult.from_files(
        __import__("json").loads((out / "dij" / "result.json").read_text()), lambda n: (out / "dij" / n).read_bytes()
    ).matrix
    stored = BeamletSet.model_validate_json((out / "beamlets" / "result.json").read_text())
    assert [b.beam.gantry_deg for b in stored.beams] == [0.0, *GOOD]  # every candidate beam, computed once
    blocks = stored.slices()[1:]
    want = full[:, blocks[0].start : blocks[-1].stop]
    got = res["dij"].matrix
    assert np.array_equal(got.indptr, want.indptr)
    assert np.array_equal(got.indices, want.indices)
    assert np.array_equal(got.data, want.data)


def test_a_resumed_run_plans_the_chosen_set(case, planning, planned):
    """Stored geometry, bixels, Dij and choice: the resumed run narrows them again and optimises
    the chosen set's problem without choosing again."""
    study, order = case
    _, out = planned
    reuse = {"geometry", "beamlets", "dij", "beam_set"}

    def previous(st):
        d = Path(out) / st.name
        if st.name not in reuse or not (d / "result.json").is_file():
            return None
        return restore_output(st, lambda n: (d / n).read_bytes())

    artefacts = {"source": study, "order": order, "planning": planning}
    res = run_stages(recipe(until="sequence"), artefacts, previous=previous)
    reused = [e.stage for e in res.events if e.kind == "reused"]
    assert reused == ["geometry", "beamlets", "dij", "beam_set"]
    assert [b.gantry_deg for b in res["geometry"].beams] == GOOD
    assert len(res["sequenced"].segments) == 3


def test_one_set_skips_the_choice(case, fast_planning):
    study, order = case
    req = planning_request({**fast_planning, "num_beams": 3, "autoplan": {"rounds": 1, "iterations_per_round": 5}}, [])
    res = run_recipe(study, order, req, until="fmo")
    skipped = {e.stage: e.message for e in res.events if e.kind == "skipped"}
    assert skipped["beam_set"] == "one beam-angle set: nothing to choose"
    assert res["beam_set"] is None
    assert [b.gantry_deg for b in res["geometry"].beams] == [0.0, 120.0, 240.0]


def test_the_chosen_set_plans_as_if_asked_for_alone(case, planning, planned):
    """Choosing GOOD among the sets gives the plan that GOOD alone gives, bit for bit (the same
    Dij columns, problem, fluence and, with the problem's dense rows built where it is, the same
    DAO products)."""
    study, order = case
    res, _ = planned
    alone = planning.model_copy(update={"gantry_deg": GOOD, "beam_angle_alternatives": []})
    ref = run_recipe(study, order, alone, until="normalize")
    assert ref["beam_set"] is None
    np.testing.assert_array_equal(np.asarray(ref["fluence"].weights), np.asarray(res["fluence"].weights))
    assert [[sg.mu for sg in b.segments] for b in ref["standard_plan"].plan.beams] == [
        [sg.mu for sg in b.segments] for b in res["standard_plan"].plan.beams
    ]
    np.testing.assert_array_equal(ref["standard_plan"].dose, res["standard_plan"].dose)
