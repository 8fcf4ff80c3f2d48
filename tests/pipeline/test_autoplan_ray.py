"""Automatic planning's candidate solves on the session's Ray: one task per candidate with the
problem put into the object store once, giving the plan the one-process path gives."""

from __future__ import annotations

import numpy as np
import pytest

from rayrt.domain.planning import planning_request
from rayrt.imaging.tg119_cases import tg119_case
from rayrt.pipeline import run_recipe

pytestmark = pytest.mark.ray

ROUNDS = 2


def test_candidates_run_as_tasks_and_match_one_process(ray_session, fast_planning):
    from rayrt.optimize.candidates import solve_candidate
    from rayrt.service.controlled import RayExecutor

    class Recording(RayExecutor):
        """The real RayExecutor, recording which function each fan-out ran and how many tasks."""

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

    study, order = tg119_case("multitarget", 5.0)
    planning = planning_request(
        {**fast_planning, "num_beams": 3, "autoplan": {"rounds": ROUNDS, "iterations_per_round": 15}}, []
    )
    steps = planning.autoplan.candidate_steps
    ex = Recording()
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
