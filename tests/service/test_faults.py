"""Fault tolerance of the planning service, with real actors and a real (test-only) slow stage.

* a ControlledComputer killed mid-job: the scheduler replaces it, the job resumes on the new
  computer after its last finished stage (those results are reused, not recomputed) and ends
  ``succeeded`` with every result stored exactly once;
* a computer that stops answering heartbeats (SIGSTOP) is killed and replaced the same way;
* ``POST /jobs/{id}/cancel`` stops a *running* job (no further stage runs, state ``cancelled``);
* (slow) the whole service (``rayrt serve`` in a subprocess: its driver, its Ray, its workers)
  SIGKILLed mid-job and started again on the same store: the job resumes from its last stage.

The slow stages come from ``tests/helpers/faults_stages.py`` (``settings.stage_modules``); see there.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from helpers.faults import (
    STAGES_FILE,
    ServiceProcess,
    delete_private_app,
    deploy_private_app,
    expected_result_files,
    mid_slow_stage,
    snapshot_stage_files,
    stage_of,
    stored_files,
    wait_for,
)
from helpers.http import http

from rayrt.domain.job import Job, JobState
from rayrt.service.settings import ServiceSettings
from rayrt.service.store import Store

pytestmark = pytest.mark.ray

REUSED = ["structures", "dvh", "fault_mark"]
REUSED_MSG = "reused the stored result"


def _settings(data_dir, **kw) -> ServiceSettings:
    base = dict(
        data_dir=str(data_dir),
        scheduler_name=f"faults-{uuid.uuid4().hex[:6]}",
        controlled_computers=1,
        controlled_computer_cpus=0,
        progress_interval_s=0,
        heartbeat_interval_s=0.5,
        stage_modules=[STAGES_FILE],
    )
    base.update(kw)
    return ServiceSettings(**base)


@pytest.fixture
def fault_scheduler(ray_session, tmp_path, small_study):
    """A store with the small patient and a factory for a private scheduler using the slow stages."""
    import ray

    from rayrt.service.scheduler import get_or_create_scheduler

    store = Store(tmp_path / "data")
    pid = store.put_study(small_study).id
    handles = []

    def start(**kw):
        settings = _settings(tmp_path / "data", **kw)
        h = get_or_create_scheduler(settings)
        handles.append(h)
        return settings, h

    yield store, pid, start
    for h in handles:
        ray.kill(h, no_restart=True)


def _job_json(store: Store, job_id: str) -> dict:
    return store.get_job(job_id).model_dump(mode="json")


def _assert_resumed(store: Store, job_id: str, before: dict, victim: str) -> Job:
    """The job succeeded on another computer, reused the stages finished before the fault, and
    stored every result exactly once."""
    done = store.get_job(job_id)
    assert done.state is JobState.succeeded, done.errors
    assert done.worker != victim
    assert any(victim in e and "re-queued" in e for e in done.errors), done.errors
    js = done.model_dump(mode="json")
    for name in REUSED:
        assert stage_of(js, name)["message"] == REUSED_MSG, stage_of(js, name)
    # not recomputed: the stored files are the very same bytes, never rewritten (same mtime)
    assert snapshot_stage_files(store.root, job_id, REUSED) == before
    slow = stage_of(js, "fault_slow")
    assert slow["state"] == "succeeded" and slow["tasks_done"] == slow["tasks_total"] > 0
    result = store.get_stage_json(job_id, "fault_slow", "result.json")
    assert result["squares"] == [i * i for i in range(slow["tasks_total"])]
    # complete and unique: exactly the expected files, no leftovers of interrupted writes
    listed = [f.path for f in store.list_results(job_id)]
    assert len(listed) == len(set(listed))
    assert set(listed) == expected_result_files()
    assert not [f for f in stored_files(store.root, job_id) if ".tmp-" in f]
    return done


def test_kill_controlled_computer_mid_job_the_job_finishes(fault_scheduler):
    import ray

    store, pid, start = fault_scheduler
    settings, sched = start()
    job = store.create_job(Job(patient_id=pid))
    ray.get(sched.submit.remote(job.id, job.priority, job.created_at.isoformat()))

    mid = wait_for(lambda: mid_slow_stage(_job_json(store, job.id)), 180, "fault_slow to be half-way")
    before = snapshot_stage_files(store.root, job.id, REUSED)
    assert set(before) >= {"fault_mark/result.json", "structures/result.json", "dvh/result.json"}
    victim = mid["worker"]
    ray.kill(ray.get_actor(victim, namespace=settings.ray_namespace), no_restart=True)

    assert ray.get(sched.wait_idle.remote(240))
    _assert_resumed(store, job.id, before, victim)
    status = ray.get(sched.get_status.remote())
    assert victim not in status.computers and len(status.computers) == 1


@pytest.mark.slow
def test_unresponsive_computer_is_replaced(fault_scheduler):
    """A computer frozen with SIGSTOP answers no heartbeat: after heartbeat_timeout_s the
    scheduler kills it, starts another and re-queues its job, which then finishes."""
    import ray

    store, pid, start = fault_scheduler
    settings, sched = start(heartbeat_timeout_s=4.0)
    job = store.create_job(Job(patient_id=pid))
    ray.get(sched.submit.remote(job.id, job.priority, job.created_at.isoformat()))

    mid = wait_for(lambda: mid_slow_stage(_job_json(store, job.id)), 180, "fault_slow to be half-way")
    before = snapshot_stage_files(store.root, job.id, REUSED)
    victim = mid["worker"]
    beat = ray.get(ray.get_actor(victim, namespace=settings.ray_namespace).heartbeat.remote(), timeout=30)
    assert beat.job == job.id and beat.stage == "fault_slow"
    os.kill(beat.pid, signal.SIGSTOP)
    try:
        assert ray.get(sched.wait_idle.remote(240))
    finally:
        try:  # the frozen worker of this test: make sure it does not linger
            os.kill(beat.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done = _assert_resumed(store, job.id, before, victim)
    assert any("did not answer heartbeats" in e for e in done.errors), done.errors
    assert victim in ray.get(sched.get_status.remote()).lost


# ---------------------------------------------------------------------------- cancel over HTTP
@pytest.fixture
def fault_app(serve_app, tmp_path, small_study):
    """A second rayrt ingress on the session's Serve, with its own scheduler, store and the slow stages."""
    store = Store(tmp_path / "data")
    pid = store.put_study(small_study).id
    settings = _settings(tmp_path / "data")
    prefix = f"faults{uuid.uuid4().hex[:6]}"
    name = deploy_private_app(settings, prefix)
    try:
        yield f"{serve_app}/{prefix}", store, pid
    finally:
        delete_private_app(name, settings)


def test_cancel_running_job_over_http(fault_app):

    url, store, pid = fault_app
    r = http.post(f"{url}/jobs", json={"patient_id": pid}, timeout=30)
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    wait_for(lambda: mid_slow_stage(http.get(f"{url}/jobs/{jid}", timeout=10).json()), 180, "fault_slow to be half-way")

    r = http.post(f"{url}/jobs/{jid}/cancel", timeout=30)
    assert r.status_code == 200, r.text
    job = wait_for(
        lambda: (
            (j := http.get(f"{url}/jobs/{jid}", timeout=10).json())["state"] in ("succeeded", "failed", "cancelled")
            and j
        ),
        120,
        "the job to stop",
    )
    assert job["state"] == "cancelled", job
    slow = stage_of(job, "fault_slow")
    assert slow["state"] == "cancelled" and slow["tasks_done"] < slow["tasks_total"], slow
    assert not store.has_stage_file(jid, "fault_slow", "result.json")  # no result of a cancelled stage
    assert stage_of(job, "fault_mark")["state"] == "succeeded"
    # a finished job cannot be cancelled again, and the service stays usable
    assert http.post(f"{url}/jobs/{jid}/cancel", timeout=30).status_code == 409
    assert http.get(f"{url}/queue", timeout=10).json()["running"] == []


# ---------------------------------------------------------------------------- whole service
@pytest.mark.slow
def test_kill_whole_service_mid_job_and_restart_resumes(tmp_path, small_study_zip):
    """``rayrt serve`` (own Ray) SIGKILLed with its process group mid-stage, then started again on
    the same store: the job resumes after its last finished stage and completes, nothing lost or
    duplicated. Runs in subprocesses only: the session's Ray is not touched."""

    from rayrt.service.process import free_port

    data = tmp_path / "data"
    cfg = tmp_path / "service.yaml"
    cfg.write_text(
        "num_cpus: 2\nobject_store_memory_mb: 128\ncontrolled_computers: 1\ncontrolled_computer_cpus: 0\n"
        f"progress_interval_s: 0\nheartbeat_interval_s: 0.5\nstage_modules: ['{STAGES_FILE}']\n"
    )
    svc = ServiceProcess(data, free_port(), cfg, tmp_path / "serve.log")
    try:
        svc.start()
        svc.wait_healthy()
        with open(small_study_zip, "rb") as fh:
            r = http.post(f"{svc.url}/patients", files=[("files", ("study.zip", fh, "application/zip"))], timeout=120)
        assert r.status_code == 201, r.text
        r = http.post(f"{svc.url}/jobs", json={"patient_id": r.json()["id"]}, timeout=30)
        assert r.status_code == 201, r.text
        jid = r.json()["id"]
        mid = wait_for(
            lambda: mid_slow_stage(http.get(f"{svc.url}/jobs/{jid}", timeout=10).json()),
            240,
            "fault_slow to be half-way",
        )
        before = snapshot_stage_files(data, jid, REUSED)

        stragglers = svc.kill()
        assert stragglers == 0, "Ray processes outlived the service's process group"
        store = Store(data)
        killed = store.get_job(jid)
        assert (
            killed.state is JobState.running
            and stage_of(killed.model_dump(mode="json"), "fault_slow")["state"] == "running"
        )

        svc.start()
        svc.wait_healthy()
        job = wait_for(
            lambda: (
                (j := http.get(f"{svc.url}/jobs/{jid}", timeout=10).json())["state"]
                in ("succeeded", "failed", "cancelled")
                and j
            ),
            300,
            "the resumed job to finish",
        )
        assert job["state"] == "succeeded", job
        for name in REUSED:
            assert stage_of(job, name)["message"] == REUSED_MSG, stage_of(job, name)
        assert snapshot_stage_files(data, jid, REUSED) == before
        listed = [f["path"] for f in http.get(f"{svc.url}/jobs/{jid}/results", timeout=10).json()["files"]]
        assert len(listed) == len(set(listed)) and set(listed) == expected_result_files()
        assert not [f for f in stored_files(data, jid) if ".tmp-" in f]
        slow = http.get(f"{svc.url}/jobs/{jid}/results/fault_slow/result.json", timeout=10).json()
        assert slow["squares"] == [i * i for i in range(stage_of(job, "fault_slow")["tasks_total"])]
        assert mid["worker"] and job["worker"]  # ran on a computer of each incarnation
    finally:
        svc.cleanup()


@pytest.mark.slow
def test_scheduler_crash_restarts_and_resumes_the_job(fault_scheduler):
    """The scheduler actor's process dies mid-job (its computers die with it, as it owns them):
    Ray restarts it, it finds the unfinished job in the store and resumes it after its last
    finished stage."""
    import ray

    store, pid, start = fault_scheduler
    settings, sched = start()
    job = store.create_job(Job(patient_id=pid))
    ray.get(sched.submit.remote(job.id, job.priority, job.created_at.isoformat()))
    mid = wait_for(lambda: mid_slow_stage(_job_json(store, job.id)), 180, "fault_slow to be half-way")
    before = snapshot_stage_files(store.root, job.id, REUSED)
    old = ray.get(sched.get_status.remote()).computers
    ray.kill(sched, no_restart=False)  # a crash: Ray restarts the (max_restarts=-1) actor
    # nobody calls the restarted scheduler: it resumes the job by itself
    wait_for(
        lambda: store.get_job(job.id).worker not in (None, mid["worker"]), 180, "the job to resume on a new computer"
    )
    assert ray.get(sched.wait_idle.remote(240))
    assert not set(old) & set(ray.get(sched.get_status.remote()).computers)
    done = store.get_job(job.id)
    assert done.state is JobState.succeeded, done.errors
    js = done.model_dump(mode="json")
    for name in REUSED:
        assert stage_of(js, name)["message"] == REUSED_MSG, stage_of(js, name)
    assert snapshot_stage_files(store.root, job.id, REUSED) == before
    listed = [f.path for f in store.list_results(job.id)]
    assert len(listed) == len(set(listed)) and set(listed) == expected_result_files()
