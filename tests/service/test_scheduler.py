"""Scheduler and ControlledComputer actors on the session's Ray (a private scheduler and store)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from rayrt.domain.job import Job, JobState
from rayrt.service.settings import ServiceSettings
from rayrt.service.store import Store

pytestmark = pytest.mark.ray


@pytest.fixture
def private_scheduler(ray_session, tmp_path, small_study):
    """A store with one patient, and a factory for a scheduler of its own (killed afterwards)."""
    import ray

    from rayrt.service.scheduler import get_or_create_scheduler

    store = Store(tmp_path / "data")
    pid = store.put_study(small_study).id
    settings = ServiceSettings(
        data_dir=str(tmp_path / "data"),
        scheduler_name=f"test-sched-{uuid.uuid4().hex[:6]}",
        controlled_computers=1,
        controlled_computer_cpus=0,
        progress_interval_s=0,
    )
    handles = []

    def start(**changes):
        h = get_or_create_scheduler(settings.model_copy(update=changes))
        handles.append(h)
        return h

    yield store, pid, settings, start
    for h in handles:
        ray.kill(h, no_restart=True)


def test_restart_runs_unfinished_jobs_by_priority_then_age(private_scheduler):
    import ray

    store, pid, settings, start = private_scheduler
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    jobs = {
        "low-old": Job(patient_id=pid, priority=0, created_at=t0),
        "high-new": Job(patient_id=pid, priority=5, created_at=t0 + timedelta(seconds=2)),
        "high-old": Job(patient_id=pid, priority=5, created_at=t0 + timedelta(seconds=1)),
        "done": Job(patient_id=pid, priority=9, created_at=t0, state=JobState.succeeded),
    }
    for j in jobs.values():
        store.create_job(j)
    store.write_bytes("jobs/damaged00001/job.json", b'{"id": "damaged00001", "patient_id": ')  # torn write
    sched = start()  # finds three unfinished jobs in the store, queues them, runs them one at a time
    assert ray.get(sched.wait_idle.remote(120))
    # the damaged record did not stop the recovery: it was moved aside with the reason
    assert not store.exists("jobs/damaged00001")
    [bad] = store.scan_jobs()[1]
    assert bad.job_id == "damaged00001" and "ValidationError" in bad.reason
    assert bad.quarantined_to and store.exists(f"{bad.quarantined_to}/job.json")
    runs = {k: store.get_job(j.id) for k, j in jobs.items()}
    assert all(runs[k].state is JobState.succeeded for k in ("low-old", "high-new", "high-old"))
    order = sorted(("low-old", "high-new", "high-old"), key=lambda k: runs[k].started_at)
    assert order == ["high-old", "high-new", "low-old"]
    assert runs["done"].started_at is None and runs["done"].stages == []  # a finished job is not run again


def test_dead_computer_is_replaced_and_its_job_requeued(private_scheduler):
    import ray

    store, pid, settings, start = private_scheduler
    sched = start(
        heartbeat_interval_s=30.0
    )  # the monitor must not replace the dead computer before the job is dispatched to it
    status = ray.get(sched.get_status.remote())
    [name] = status.computers
    deadline = time.monotonic() + 120  # a computer still starting (a loaded machine) answers no heartbeat yet
    while (beats := ray.get(sched.heartbeats.remote()))[name] is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert beats[name] is not None and beats[name].job is None and beats[name].pid > 0
    ray.kill(ray.get_actor(name, namespace=settings.ray_namespace), no_restart=True)

    job = store.create_job(Job(patient_id=pid))
    ray.get(sched.submit.remote(job.id, job.priority, job.created_at.isoformat()))
    assert ray.get(sched.wait_idle.remote(120))
    done = store.get_job(job.id)
    assert done.state is JobState.succeeded
    assert any("died" in e for e in done.errors)
    [new] = ray.get(sched.get_status.remote()).computers
    assert new != name and done.worker == new
    assert all(b is not None for b in ray.get(sched.heartbeats.remote()).values())


def test_ray_executor_shares_arrays_through_the_object_store(ray_session):
    import ray

    from rayrt.service.controlled import RayExecutor

    def _weighted_sum(weight, image):  # defined here: pickled by value (tests/ is not importable on workers)
        return float((image * weight).sum())

    ex = RayExecutor(num_cpus_per_task=0.5)
    image = np.arange(1000, dtype=np.float64)
    ref = ex.put(image)
    assert isinstance(ref, ray.ObjectRef)
    seen = []
    out = ex.map(_weighted_sum, [1.0, 2.0, 0.5], ref, progress=lambda done, total, message: seen.append((done, total)))
    assert out == [image.sum(), 2 * image.sum(), 0.5 * image.sum()]
    assert seen[-1] == (3, 3) and all(t == 3 for _, t in seen) and [d for d, _ in seen] == sorted({d for d, _ in seen})

    def cancel(done, total, message):  # what a cancelled job's progress report does
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        ex.map(_weighted_sum, [1.0, 2.0], ref, progress=cancel)
    assert ex.available_cpus() >= 1 and ex.threads_per_task == 1
