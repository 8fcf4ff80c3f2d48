"""The status path (issue 7): the scheduler's long-polling job snapshots that feed the ingress'
status cache, the Serve environment the service starts Ray with, and GET /jobs/{id} agreeing
with the store once a job has finished."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from helpers.http import http
from helpers.service import wait_job


def test_serve_env_defaults_fill_in_but_never_override(monkeypatch):
    from rayrt.service.process import SERVE_ENV_DEFAULTS, ray_env_defaults

    assert SERVE_ENV_DEFAULTS["RAY_SERVE_PROXY_USE_GRPC"] == "1"
    monkeypatch.delenv("RAY_SERVE_PROXY_USE_GRPC", raising=False)
    ray_env_defaults()
    assert os.environ["RAY_SERVE_PROXY_USE_GRPC"] == "1"
    monkeypatch.setenv("RAY_SERVE_PROXY_USE_GRPC", "0")  # an operator's explicit choice is kept
    ray_env_defaults()
    assert os.environ["RAY_SERVE_PROXY_USE_GRPC"] == "0"


@pytest.fixture
def scheduler(ray_session, tmp_path):
    import ray

    from rayrt.service.scheduler import get_or_create_scheduler
    from rayrt.service.settings import ServiceSettings

    settings = ServiceSettings(
        data_dir=str(tmp_path / "data"),
        scheduler_name=f"test-status-{uuid.uuid4().hex[:6]}",
        controlled_computers=1,
        controlled_computer_cpus=0,
        progress_interval_s=0,
    )
    h = get_or_create_scheduler(settings)
    yield h
    ray.kill(h, no_restart=True)


@pytest.mark.ray
def test_snapshots_long_poll_waits_then_answers_the_change(scheduler):
    import ray

    from rayrt.service.scheduler import SNAPSHOT_WAIT_MAX_S

    first = ray.get(scheduler.snapshots_since.remote(0, None))
    inc, v = first.incarnation, first.version
    # nothing changed: a short long poll answers with no jobs and the same version
    quiet = ray.get(scheduler.snapshots_since.remote(v, inc, 0.2))
    assert (quiet.incarnation, quiet.version, quiet.jobs) == (inc, v, {})
    # a long poll waits while nothing changes ...
    pending = scheduler.snapshots_since.remote(v, inc, SNAPSHOT_WAIT_MAX_S)
    ready, _ = ray.wait([pending], timeout=0.5)
    assert not ready, "snapshots_since(wait_s=...) answered before any job changed"
    # ... and answers with the change once a computer publishes a job's save
    data = json.dumps({"id": "job-status-1", "state": "running"}).encode()
    ray.get(scheduler.job_snapshot.remote("job-status-1", data, time.time()))
    out = ray.get(pending, timeout=SNAPSHOT_WAIT_MAX_S - 2.0)  # woken by the change, not by the end of its wait
    assert out.version == v + 1 and out.jobs == {"job-status-1": (v + 1, data)}
    # a caller that does not know this incarnation (the scheduler restarted) gets everything at once
    again = ray.get(
        scheduler.snapshots_since.remote(out.version, "not-this-one", SNAPSHOT_WAIT_MAX_S),
        timeout=SNAPSHOT_WAIT_MAX_S - 2.0,
    )
    assert "job-status-1" in again.jobs


@pytest.mark.ray
def test_status_route_agrees_with_the_store_when_finished(serve_app, serve_settings, small_study_zip):
    with open(small_study_zip, "rb") as fh:
        r = http.post(
            f"{serve_app}/patients", files=[("files", (small_study_zip.name, fh, "application/zip"))], timeout=120
        )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    ids = []
    for _ in range(3):
        r = http.post(f"{serve_app}/jobs", json={"patient_id": pid}, timeout=60)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    for jid in ids:
        job = wait_job(serve_app, jid)  # polls GET /jobs/{id}: the status cache
        stored = json.loads((Path(serve_settings.data_dir) / "jobs" / jid / "job.json").read_text())
        assert job["state"] == stored["state"] == "succeeded"
        assert [s["state"] for s in job["stages"]] == [s["state"] for s in stored["stages"]]
