"""Automatic planning's fan-outs on the session's Ray: one task per candidate with the problem put
into the object store once, one task per beam-angle set with the geometry, bixels and Dij put
once; both give the plan the one-process path gives."""

from __future__ import annotations

import numpy as np
import pytest

from rayrt.domain.planning import planning_request
from rayrt.imaging.tg119_cases import tg119_case
from rayrt.pipeline import run_recipe

pytestmark = pytest.mark.ray

ROUNDS = 2


def recording_executor():
    """The real RayExecutor, recording which function each fan-out ran and how many tasks."""
    from rayrt.service.controlled import RayExecutor

    class Recording(RayExecutor):
        def __init__(self) -> None:
            super().__init__()
            self.fanouts: list[tuple[object, int]] = []
            self.puts: list[str] = []

        def put(self, value):
            self.puts.append(type(value).__name__)
            return super().put(value)

        def map(self, fn, items, *shared, progress=None):
            items = list(items)
            self.fanouts.append((fn, len(items)))
            return super().map(fn, items, *shared, progress=progress)

    return Recording()


def test_candidates_run_as_tasks_and_match_one_process(ray_session, fast_planning):
    from rayrt.optimize.candidates import solve_candidate

    study, order = tg119_case("multitarget", 5.0)
    planning = planning_request(
        {**fast_planning, "num_beams": 3, "autoplan": {"rounds": ROUNDS, "iterations_per_round": 15}}, []
    )
    steps = planning.autoplan.candidate_steps
    ex = recording_executor()
    on_ray = run_recipe(study, order, planning, until="fmo", executor=ex)
    # one fan-out per round: 1 candidate in the first, one per step after it; the problem went
    # through the object store once
    solves = [n for fn, n in ex.fanouts if fn is solve_candidate]
    assert solves == [1] + [len(steps)] * (ROUNDS - 1)
    assert ex.puts.count("OptimizationProblem") == 1

    local = run_recipe(study, order, planning, until="fmo")
    a, b = on_ray["fluence"], local["fluence"]
    assert [r.candidates_met for r in a.goal_report.rounds] == [r.candidates_met for r in b.goal_report.rounds]
    assert [r.candidate for r in a.goal_report.rounds] == [r.candidate for r in b.goal_report.rounds]
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-4, atol=1e-6 * max(b.weights))


def test_beam_angle_sets_run_as_tasks_and_match_one_process(ray_session, fast_planning):
    from rayrt.pipeline.optimization import beam_set_task

    study, order = tg119_case("multitarget", 5.0)
    planning = planning_request(
        {
            **fast_planning,
            "gantry_deg": [0, 120, 240],
            "beam_angle_alternatives": [[60, 180, 300]],
            "autoplan": {"rounds": ROUNDS, "iterations_per_round": 15},
        },
        [],
    )
    ex = recording_executor()
    on_ray = run_recipe(study, order, planning, until="fmo", executor=ex)
    assert [n for fn, n in ex.fanouts if fn is beam_set_task] == [2]
    assert {"PlanGeometry", "BeamletSet", "DijResult"} <= set(ex.puts)

    # the one-process path with the tasks' one numba thread: the set's solve is sensitive to the
    # summation order of the threads' partial sums, so compare like with like
    import numba

    from rayrt.pipeline.executor import LocalExecutor

    one_thread = LocalExecutor()
    one_thread.threads_per_task = 1
    try:
        local = run_recipe(study, order, planning, until="fmo", executor=one_thread)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    a, b = on_ray["beam_set"], local["beam_set"]
    assert a.chosen == b.chosen
    assert [s.goals_met for s in a.sets] == [s.goals_met for s in b.sets]
    np.testing.assert_allclose(a.fluence.weights, b.fluence.weights, rtol=1e-4, atol=1e-6 * max(b.fluence.weights))
    assert [g.gantry_deg for g in on_ray["geometry"].beams] == a.gantry_deg
