"""Talking to the test session's service: waiting for a job to finish."""

from __future__ import annotations

import time

from helpers.http import http

__all__ = ["wait_job"]


def wait_job(url: str, job_id: str, timeout_s: float = 120.0) -> dict:
    """Poll ``GET /jobs/{id}`` until the job has finished; returns its JSON."""

    deadline = time.monotonic() + timeout_s
    while True:
        job = http.get(f"{url}/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['state']} after {timeout_s} s: {job}")
        time.sleep(0.1)
