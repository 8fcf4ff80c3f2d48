"""Physicists' reviews of a job's plans in the store (``jobs/<jid>/reviews.json``).

The file holds every decision of the job (:class:`rayrt.domain.review.PlanReviews`), oldest
first; a new decision is appended and the whole file replaced atomically (the store writes to a
temporary name and renames). Decisions of one job are serialised per ingress replica by the
caller; two replicas deciding on the same job within the same instant could lose one of the two
appends (the audit trail still records both requests).
"""

from __future__ import annotations

from rayrt.domain.review import PlanReview, PlanReviews
from rayrt.service.store import Store, check_id


def _path(job_id: str) -> str:
    return f"jobs/{check_id(job_id, 'job')}/reviews.json"


def load_reviews(store: Store, job_id: str) -> PlanReviews:
    """Every recorded decision of a job (none yet: an empty list). The job must exist."""
    job = store.get_job(job_id)
    if not store.exists(_path(job.id)):
        return PlanReviews(job_id=job.id)
    return store.read_model(_path(job.id), PlanReviews)


def add_review(store: Store, job_id: str, review: PlanReview) -> PlanReviews:
    """Append one decision and store the job's reviews; returns them."""
    reviews = load_reviews(store, job_id)
    reviews.reviews.append(review)
    store.write_json(_path(reviews.job_id), reviews)
    return reviews
