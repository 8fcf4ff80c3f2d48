"""Bookkeeping of automatic planning: which objectives stand for which clinical goal
(:mod:`rayrt.optimize.autoplan` builds it; :class:`rayrt.optimize.problem.OptimizationProblem`
carries it between the problem and the fluence stages)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from rayrt.domain.goals import ClinicalGoal

__all__ = ["GoalTerm", "AutoPlan", "AutoPlanRound", "GoalPlanReport"]


@dataclass
class GoalTerm:
    """The objectives standing for one clinical goal and how the rounds treated them."""

    goal: ClinicalGoal
    role: str  # coverage | target_hot | organ
    objectives: list[int]  # indices into the problem's objectives
    region: str  # what the objectives act on, in words
    start_weights: list[float] = field(default_factory=list)
    start_aims: list[float] = field(default_factory=list)
    frozen: bool = False  # its weights no longer grow (a higher-ranked goal was lost when they did)
    pushed: bool = False  # its aim was lowered in the last round
    push_scale: float = 1.0  # share of the push step still applied (halved each time a push cost a goal)
    frozen_by: str = ""
    unreachable: str = ""
    last_change: list[tuple[int, float, float]] = field(default_factory=list)  # (objective, dose_gy, weight) before


@dataclass
class AutoPlan:
    """The goal-driven problem's bookkeeping beside :class:`OptimizationProblem`."""

    terms: list[GoalTerm]
    voxel_cc: float
    conflicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class AutoPlanRound(BaseModel):
    """One re-weighting round: goals met per rank on the normalised dose."""

    round: int
    met_per_rank: dict[int, int]
    goals_met: int
    shortfall: float = Field(description="sum over missed goals of the shortfall relative to the goal value")
    normalization_factor: float
    objective: float
    candidate: int = Field(
        default=1, description="the candidate re-weighting kept (1-based, AutoPlanOptions.candidate_steps)"
    )
    candidates_met: list[int] = Field(default_factory=list, description="goals met by each candidate of the round")


class GoalPlanReport(BaseModel):
    """What automatic planning did, for the plan's report."""

    rounds: list[AutoPlanRound] = Field(default_factory=list)
    chosen_round: int = 0
    terms: list[dict] = Field(default_factory=list, description="per goal: region, aim (Gy), weight, role, notes")
    conflicts: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
