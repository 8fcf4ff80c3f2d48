"""A physicist's review of a plan: approve it for treatment or reject it, with a comment.

QA decides whether a plan may be released at all (a plan that fails QA is never released); the
review is the human decision that follows: a physicist reads the released plan (dose, DVHs, goals,
QA) and approves or rejects it. Every decision is kept (the latest one per machine counts) with who
made it and when; a rejected plan cannot be booked for treatment until a later review approves it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class ReviewDecision(str, Enum):
    approved = "approved"
    rejected = "rejected"


class ReviewRequest(BaseModel):
    """``POST /jobs/{id}/plans/{machine}/review``: the decision and, for a rejection, why."""

    model_config = ConfigDict(extra="forbid")

    decision: ReviewDecision
    comment: str = Field(default="", max_length=2000, description="free text; required when rejecting")


class PlanReview(BaseModel):
    """One recorded decision on one machine's plan of a job."""

    machine: str = Field(description="the plan's machine (the standard machine or a treatment machine)")
    plan_id: str = Field(description="the plan reviewed (its id in the job's export summary)")
    decision: ReviewDecision
    comment: str = ""
    by: str = Field(description="the user who decided (a physicist or admin)")
    at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


class PlanReviews(BaseModel):
    """``GET /jobs/{id}/reviews``: every decision, oldest first, and the latest per machine."""

    job_id: str
    reviews: list[PlanReview] = Field(default_factory=list)

    def latest(self) -> dict[str, PlanReview]:
        """machine -> its latest decision."""
        out: dict[str, PlanReview] = {}
        for r in self.reviews:
            out[r.machine] = r
        return out
