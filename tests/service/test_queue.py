"""The compute queue: user priority then age, admission by free cluster CPUs, positions visible
(``GET /queue``, ``queue_position`` of ``GET /jobs/{id}``), queued and running jobs cancellable."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from helpers.faults import STAGES_FILE, delete_private_app, deploy_private_app, wait_for

from rayrt.domain.job import Job, JobState
from rayrt.service.scheduler import JobQueue
from rayrt.service.settings import ServiceSettings
from rayrt.service.store import Store


def test_job_queue_orders_by_priority_then_age():
    q = JobQueue()
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    q.push("old-low", 0, t0)
    q.push("new-high", 5, t0 + timedelta(seconds=2))
    q.push("old-high", 5, t0 + timedelta(seconds=1))
    q.push("mid-low", 0, (t0 + timedelta(seconds=1)).isoformat())
    assert not q.push("old-low", 9, t0)  # already queued: not twice
    assert q.ordered() == ["old-high", "new-high", "old-low", "mid-low"]
    assert [(j, p) for j, p, _ in q.entries()] == [("old-high", 5), ("new-high", 5), ("old-low", 0), ("mid-low", 0)]
    assert q.remove("new-high") and not q.remove("new-high")
    assert q.pop() == "old-high" and q.pop() == "old-low" and len(q) == 1 and "mid-low" in q


def _settings(tmp_path, **kw) -> ServiceSettings:
    base = dict(
        data_dir=str(tmp_path / "data"),
        scheduler_name=f"queue-{uuid.uuid4().hex[:6]}",
        controlled_computer_cpus=0,
        progress_interval_s=0,
        heartbeat_interval_s=0.5,
        stage_modules=[STAGES_FILE],
    )
    base.update(kw)
    return ServiceSettings(**base)


@pytest.fixture
def queue_app(serve_app, tmp_path, small_study):
    """A private ingress + scheduler with two computers but ``job_cpus`` larger than the cluster:
    free CPUs admit only one job at a time although a second computer is idle."""
    store = Store(tmp_path / "data")
    pid = store.put_study(small_study).id
    settings = _settings(tmp_path, controlled_computers=2, job_cpus=64)
    prefix = f"queue{uuid.uuid4().hex[:6]}"
    name = deploy_private_app(settings, prefix)
    try:
        yield f"{serve_app}/{prefix}", store, pid
    finally:
        delete_private_app(name, settings)


@pytest.mark.ray
def test_queue_positions_priority_order_and_admission_over_http(queue_app):
    import httpx

    url, store, pid = queue_app
    c = httpx.Client(base_url=url, timeout=30)

    def submit(priority: int) -> str:
        r = c.post("/jobs", json={"patient_id": pid, "priority": priority})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def queue() -> dict:
        return c.get("/queue").json()

    def running(jid: str) -> bool:
        return [r["job_id"] for r in queue()["running"]] == [jid]

    a = submit(0)
    wait_for(lambda: running(a), 120, f"job {a} to run")
    b, hi1, hi2 = submit(0), submit(5), submit(5)
    q = queue()
    assert [(e["position"], e["job_id"], e["priority"]) for e in q["queued"]] == [(0, hi1, 5), (1, hi2, 5), (2, b, 0)]
    assert q["job_cpus"] == 64 and q["free_cpus"] < 64
    # the second computer is idle, yet the queue waits: not enough free CPUs for another job
    health = c.get("/cluster").json()["scheduler"]
    assert len(health["computers"]) == 2 and len(health["idle"]) == 1
    for jid, pos in ((hi1, 0), (hi2, 1), (b, 2)):
        j = c.get(f"/jobs/{jid}").json()
        assert (j["state"], j["queue_position"]) == ("queued", pos), j
    assert c.get(f"/jobs/{a}").json()["queue_position"] is None

    # cancelling the running job admits the head of the queue; positions move up
    assert c.post(f"/jobs/{a}/cancel").status_code == 200
    wait_for(lambda: running(hi1), 120, f"job {hi1} to run after {a} was cancelled")
    assert [(e["position"], e["job_id"]) for e in queue()["queued"]] == [(0, hi2), (1, b)]
    assert c.get(f"/jobs/{hi2}").json()["queue_position"] == 0
    assert wait_for(
        lambda: c.get(f"/jobs/{hi1}").json()["queue_position"] is None, 30, "the running job to drop its position"
    )

    # cancelling a queued job takes it out of the queue at once
    assert c.post(f"/jobs/{b}/cancel").status_code == 200
    assert [e["job_id"] for e in queue()["queued"]] == [hi2]
    jb = c.get(f"/jobs/{b}").json()
    assert jb["state"] == "cancelled" and jb["started_at"] is None and jb["queue_position"] is None

    assert c.post(f"/jobs/{hi1}/cancel").status_code == 200
    wait_for(lambda: running(hi2), 120, f"job {hi2} to run")
    assert queue()["queued"] == []
    assert c.post(f"/jobs/{hi2}/cancel").status_code == 200
    wait_for(lambda: queue()["running"] == [], 120, "every job to stop")
    states = {jid: store.get_job(jid) for jid in (a, b, hi1, hi2)}
    assert all(j.state is JobState.cancelled for j in states.values())
    # the run order was priority, then age
    assert states[a].started_at < states[hi1].started_at < states[hi2].started_at


@pytest.mark.ray
def test_jobs_run_side_by_side_when_free_cpus_allow(ray_session, tmp_path, small_study):
    """With job_cpus=0 every idle computer takes a job: two jobs run at the same time."""
    import ray

    from rayrt.service.scheduler import get_or_create_scheduler

    store = Store(tmp_path / "data")
    pid = store.put_study(small_study).id
    settings = _settings(tmp_path, controlled_computers=2, job_cpus=0)
    sched = get_or_create_scheduler(settings)
    try:
        jobs = [store.create_job(Job(patient_id=pid)) for _ in range(2)]
        for j in jobs:
            ray.get(sched.submit.remote(j.id, j.priority, j.created_at.isoformat()))
        status = ray.get(sched.get_status.remote())
        assert sorted(status.running) == sorted(j.id for j in jobs) and status.queued == []
        assert len(set(status.running.values())) == 2  # on two computers
        for j in jobs:
            assert ray.get(sched.cancel.remote(j.id))
        assert ray.get(sched.wait_idle.remote(120))
        assert all(store.get_job(j.id).state is JobState.cancelled for j in jobs)
    finally:
        ray.kill(sched, no_restart=True)
