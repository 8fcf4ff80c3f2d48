"""Candidate solves of automatic planning: independent fluence optimisations of one problem.

Each round of :func:`rayrt.optimize.autoplan.autoplan_fluence` proposes several re-weightings of
the same goal problem (the candidates, :attr:`rayrt.domain.planning.AutoPlanOptions.candidate_steps`)
and keeps the one whose normalised dose meets the goals best. The candidates differ only in their
objectives' aims (Gy) and weights, so each is solved from the shared problem (Dij, voxel rows,
regulariser) and a small :class:`CandidateSolve`: on Ray one task per candidate with the problem
put into the object store once (:mod:`rayrt.pipeline.optimization`), in one process one after
the other. Both give the same candidates the same numbers, so the plan does not depend on where it
ran. This module is the core: no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from rayrt.optimize._threads import set_threads
from rayrt.optimize.fmo import FluenceOptions, FluenceResult, optimize_fluence
from rayrt.optimize.problem import OptimizationProblem

__all__ = ["CandidateSolve", "SolveMap", "solve_candidate", "solve_in_order"]


@dataclass(frozen=True)
class CandidateSolve:
    """One candidate: every objective's (aim Gy, weight), the warm start (course MU-weights, or
    None for the optimiser's own start), the L-BFGS-B iterations and the numba threads of the solve
    (0: leave the process's setting)."""

    settings: tuple[tuple[float, float], ...]
    w0: np.ndarray | None
    iterations: int
    threads: int = 0


SolveMap = Callable[[list[CandidateSolve]], list[FluenceResult]]
"""Solves candidates, results in their order (:func:`solve_in_order`, or the executor's ``map``
of :func:`solve_candidate` over the shared problem)."""


def solve_candidate(item: CandidateSolve, problem: OptimizationProblem) -> FluenceResult:
    """Task: the fluence optimisation of ``problem`` with the candidate's aims and weights.

    The problem's objectives are set to the candidate's (a task's own copy on Ray; the caller's
    problem in one process, whose settings the caller restores to the candidate it keeps)."""
    if len(item.settings) != len(problem.objectives):
        raise ValueError(
            f"candidate has {len(item.settings)} objective settings, the problem {len(problem.objectives)}"
        )
    set_threads(item.threads)
    for o, (dose_gy, weight) in zip(problem.objectives, item.settings):
        o.dose_gy, o.weight = dose_gy, weight
    return optimize_fluence(problem, FluenceOptions(max_iterations=item.iterations), w0=item.w0)


def solve_in_order(problem: OptimizationProblem) -> SolveMap:
    """The one-process :data:`SolveMap`: the candidates solved one after the other here."""

    def run(items: list[CandidateSolve]) -> list[FluenceResult]:
        return [solve_candidate(item, problem) for item in items]

    return run
