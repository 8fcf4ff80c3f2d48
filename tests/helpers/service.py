"""Talking to the test session's service: waiting for a job to finish."""

from __future__ import annotations

import time

from helpers.http import http

__all__ = ["stored_files", "wait_job"]


def stored_files(data_dir: str) -> list[tuple[str, int]]:
    """(path, size) of every file in a store but its audit trail, which records refused requests
    too (by design): what "a rejected request changes nothing stored" compares."""
    from pathlib import Path

    root = Path(data_dir)
    files = (p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "audit")
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in files)


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
