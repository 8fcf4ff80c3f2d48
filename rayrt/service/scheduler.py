"""The compute queue: a named Ray actor that orders jobs by priority, then age.

The :class:`Scheduler` actor (name :data:`~rayrt.service.settings.SCHEDULER_NAME`, namespace
``rayrt``) owns a pool of :class:`~rayrt.service.controlled.ControlledComputer` actors. A job
submitted with :meth:`Scheduler.submit` waits in a heap keyed (−priority, created_at, sequence):
higher priority first, and the oldest first among equals. Whenever a computer is idle, the head
of the queue is dispatched to it. A computer that dies mid-job is replaced and its job goes
back into the queue (its finished stages are reused from the store).

Admission: a job leaves the queue only when a computer is idle *and* the cluster has
``settings.job_cpus`` free CPUs for its fan-out (``ray.available_resources()``, less what jobs
admitted in the last heartbeat interval will claim); one job always runs when none does. Each
queued job's 0-based place is written to its ``job.json`` (``queue_position``) when it enters the
queue and kept current in the status cache (``GET /jobs/{id}``) as jobs ahead of it leave;
:meth:`Scheduler.queue_status` lists the queue (``GET /queue``).

Fault tolerance: a background task asks every computer for a heartbeat every
``settings.heartbeat_interval_s``; a computer that is dead, or busy and silent for longer than
``settings.heartbeat_timeout_s``, is killed and replaced, and its job re-queued. Cancelling a
running job (:meth:`Scheduler.cancel`) writes a durable request and tells its computer; the job
stops at its next stage or progress report (``cancelled``).

On start (:meth:`Scheduler.ready`) the scheduler re-queues every job the store holds that has
not finished, so a restarted service resumes where it stopped. The store is the record of
truth; the scheduler's memory is only the queue and the computers' liveness.

The ingress finds the actor by name (:func:`get_scheduler`); :func:`get_or_create_scheduler`
creates it detached so it outlives the process that created it (a Serve replica or the
``rayrt serve`` driver), and :func:`rayrt.service.runtime.stop` kills it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import ray
from ray.exceptions import RayActorError

from rayrt.domain.job import Job, JobState
from rayrt.pipeline import StageEvent
from rayrt.pipeline.export import ExportResult
from rayrt.service.controlled import ControlledComputer, cancel_requested, request_cancel
from rayrt.service.conversion import get_or_create_conversion_pools, pools_name
from rayrt.service.machine_queues import ReplanRequest
from rayrt.service.models import (
    Heartbeat,
    JobSnapshots,
    JobTasks,
    PoolStats,
    QueuedJob,
    QueueStatus,
    RunningJob,
    SchedulerStatus,
    TaskCounts,
)
from rayrt.service.settings import SCHEDULER_NAME, ServiceSettings
from rayrt.service.store import Store

log = logging.getLogger("rayrt.service")


def _ts(created_at: str | datetime) -> float:
    if isinstance(created_at, str):
        created_at = datetime.fromisoformat(created_at)
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=timezone.utc)
    return created_at.timestamp()


class JobQueue:
    """Priority queue of job ids: higher ``priority`` first, then earlier ``created_at``."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, str]] = []
        self._seq = itertools.count()
        self._ids: set[str] = set()

    def push(self, job_id: str, priority: int, created_at: str | datetime) -> bool:
        if job_id in self._ids:
            return False
        heapq.heappush(self._heap, (-int(priority), _ts(created_at), next(self._seq), job_id))
        self._ids.add(job_id)
        return True

    def pop(self) -> str | None:
        while self._heap:
            _, _, _, jid = heapq.heappop(self._heap)
            if jid in self._ids:
                self._ids.discard(jid)
                return jid
        return None

    def remove(self, job_id: str) -> bool:
        if job_id in self._ids:
            self._ids.discard(job_id)  # lazily dropped from the heap on pop
            return True
        return False

    def ordered(self) -> list[str]:
        return [e[3] for e in sorted(self._heap) if e[3] in self._ids]

    def entries(self) -> list[tuple[str, int, float]]:
        """(job id, priority, created_at as a Unix time) in queue order."""
        return [(e[3], -e[0], e[1]) for e in sorted(self._heap) if e[3] in self._ids]

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._ids


@ray.remote(num_cpus=0, max_restarts=-1)
class Scheduler:
    """Queues jobs and dispatches them to ControlledComputer actors (an async actor)."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.store = Store(self.settings.data_dir)
        self.queue = JobQueue()
        self.computers: dict[str, Any] = {}
        self.slots: dict[str, int] = {}
        self.idle: list[str] = []
        self.running: dict[str, str] = {}  # job id -> computer name
        self.last_event: dict[str, StageEvent] = {}  # job id -> its computer's last stage event
        self._tasks: set[asyncio.Task] = set()
        self._ready = False
        self._generation = itertools.count()
        self.beats: dict[str, Heartbeat] = {}  # computer -> its last heartbeat
        self.last_ok: dict[str, float] = {}  # computer -> monotonic time of its last answer (or dispatch)
        self.lost: dict[str, str] = {}  # computer -> why it was killed by the monitor
        self.positions: dict[str, int] = {}  # job id -> queue position last published
        self.queued_jobs: dict[
            str, Job
        ] = {}  # job id -> its Job as written when it entered the queue (positions updated in memory)
        self.admitted_at: dict[str, float] = {}  # job id -> monotonic time it was dispatched
        self._monitor_task: asyncio.Task | None = None
        self._incarnation = uuid.uuid4().hex[:4]  # computer names stay unique across restarts of this actor
        # job status snapshots (Job JSON as last saved) for the ingress' status cache: job id -> (version, bytes)
        self.snap: dict[str, tuple[int, bytes]] = {}
        self.snap_version = 0
        self.snap_time: dict[str, float] = {}  # job id -> Unix time of the save its snapshot shows
        self._snap_changed = (
            asyncio.Event()
        )  # set (then replaced) on every new snapshot: wakes snapshots_since(wait_s=...)
        # task accounting reported by the computers' executors: job id -> {computer, submitted, finished}
        self.tasks: dict[str, JobTasks] = {}
        self.tasks_done_total = 0  # tasks of jobs that have ended
        self.pools: Any = None
        self._kick_ready()

    @staticmethod
    def _kick_ready() -> None:
        """Call ``ready()`` on this actor soon, from outside ``__init__``: after Ray restarts the
        actor (a crash) it resumes the stored jobs without waiting for a caller."""
        handle = ray.get_runtime_context().current_actor

        def kick() -> None:
            try:
                handle.ready.remote()
            except Exception:
                log.exception("could not schedule ready()")

        t = threading.Timer(1.0, kick)
        t.daemon = True
        t.start()

    # ---------------------------------------------------------------- job snapshots
    def _save_job(self, job: Job) -> None:
        """Write job.json and publish the same state to the ingress' status cache."""
        self.store.save_job(job)
        self._snapshot(job.id, job.model_dump_json().encode())

    def _snapshot(self, job_id: str, data: bytes, saved_at: float | None = None) -> None:
        saved_at = time.time() if saved_at is None else saved_at
        if self.snap_time.get(job_id, 0.0) > saved_at:  # an older save that arrived late: keep the newer one
            return
        self.snap_time[job_id] = saved_at
        self.snap_version += 1
        self.snap[job_id] = (self.snap_version, data)
        changed, self._snap_changed = self._snap_changed, asyncio.Event()
        changed.set()  # wake the ingress replicas waiting in snapshots_since
        if len(self.snap) > SNAPSHOT_LIMIT:  # forget the least recently changed jobs (the store still has them)
            for jid, _ in sorted(self.snap.items(), key=lambda kv: kv[1][0])[: len(self.snap) - SNAPSHOT_LIMIT]:
                self.snap.pop(jid, None)
                self.snap_time.pop(jid, None)

    async def job_snapshot(self, job_id: str, data: bytes, saved_at: float | None = None) -> None:
        """A computer saved ``job_id``'s job.json at ``saved_at`` (Unix time; ``data``: the same Job as
        JSON): keep it for the ingress, unless a later save of that job is already here."""
        self._snapshot(job_id, data, saved_at)

    async def snapshots_since(self, version: int, incarnation: str | None = None, wait_s: float = 0.0) -> JobSnapshots:
        """Job snapshots changed after ``version`` (all of them when ``incarnation`` is not this
        actor's: it restarted), with this actor's incarnation and its latest version.

        ``wait_s`` > 0 makes it a long poll: when nothing changed after ``version`` it answers as soon
        as a job changes, or after ``wait_s`` (at most :data:`SNAPSHOT_WAIT_MAX_S`) with no jobs. An
        idle service then costs one call per ``wait_s`` per ingress replica instead of one per
        refresh interval, and a change reaches the status cache at once."""
        if incarnation != self._incarnation:
            version = 0
        elif wait_s > 0 and self.snap_version <= version:
            try:
                await asyncio.wait_for(self._snap_changed.wait(), min(float(wait_s), SNAPSHOT_WAIT_MAX_S))
            except asyncio.TimeoutError:
                pass
        return JobSnapshots(
            incarnation=self._incarnation,
            version=self.snap_version,
            jobs={j: (v, d) for j, (v, d) in self.snap.items() if v > version},
        )

    # ---------------------------------------------------------------- task accounting
    async def report_tasks(self, job_id: str, computer: str, submitted: int, finished: int) -> None:
        """A computer's executor: ``submitted`` / ``finished`` Ray tasks (and conversions) of ``job_id`` so far."""
        self.tasks[job_id] = JobTasks(computer=computer, submitted=submitted, finished=finished)

    async def task_counts(self) -> TaskCounts:
        """Tasks of the running jobs from rayrt's own accounting (no dashboard needed): per job
        submitted / finished / in flight; ``running`` = in flight up to the CPUs in use, ``queued`` = the rest."""
        in_flight = sum(t.in_flight for t in self.tasks.values())
        try:
            total, free = ray.cluster_resources().get("CPU", 0.0), ray.available_resources().get("CPU", 0.0)
        except Exception:
            total = free = 0.0
        own = self.settings.controlled_computer_cpus * len(self.running)
        busy = max(0, int(round(total - free - own)))
        pools: list[PoolStats] = []
        if self.pools is not None:
            try:
                pools = await self.pools.stats.remote()
            except Exception:  # the pools actor restarting: no pool stats this time
                pools = []
        running = min(in_flight, max(busy, 0)) if busy else min(in_flight, int(total))
        return TaskCounts(
            in_flight=in_flight,
            running=running,
            queued=in_flight - running,
            submitted=sum(t.submitted for t in self.tasks.values()),
            finished_in_running_jobs=sum(t.finished for t in self.tasks.values()),
            finished_in_ended_jobs=self.tasks_done_total,
            per_job=dict(self.tasks),
            conversion_pools=pools,
        )

    # ---------------------------------------------------------------- start-up
    def _pools_handle(self) -> Any:
        """This service's conversion ActorPools (one pool per machine, started on first use), owned by this actor."""
        if self.pools is None:
            self.pools = get_or_create_conversion_pools(
                name=pools_name(self.settings.scheduler_name),
                namespace=self.settings.ray_namespace,
                detached=False,
                settings=self.settings.conversion_pool,
                start=False,
            )
        return self.pools

    def _new_computer(self, slot: int) -> str:
        base = "rayrt" if self.settings.scheduler_name == SCHEDULER_NAME else self.settings.scheduler_name
        name = f"{base}-cc-{slot}-{next(self._generation)}{self._incarnation}"
        self.slots[name] = slot
        self.computers[name] = ControlledComputer.options(
            name=name,
            namespace=self.settings.ray_namespace,
            num_cpus=self.settings.controlled_computer_cpus,
            max_concurrency=4,  # heartbeats answer while a job runs
        ).remote(
            name,
            self.store,
            self.settings.progress_interval_s,
            self.settings.scheduler_name,
            self.settings.ray_namespace,
            stage_modules=list(self.settings.stage_modules),
            pool_settings=self.settings.conversion_pool,
        )
        self.last_ok[name] = time.monotonic()
        return name

    async def ready(self) -> SchedulerStatus:
        """Start the computers and re-queue unfinished jobs from the store (idempotent)."""
        if not self._ready:
            self._ready = True
            self._pools_handle()
            for slot in range(self.settings.controlled_computers):
                self.idle.append(self._new_computer(slot))
            jobs, unreadable = self.store.scan_jobs()
            for bad in unreadable:  # never blocks the recovery of the others
                if bad.quarantined_to is None:
                    try:
                        self.store.quarantine_job(bad)
                    except Exception:
                        log.exception("could not quarantine job %s", bad.job_id)
            for job in jobs:
                if job.state.finished:
                    continue
                if cancel_requested(self.store, job.id):  # cancelled while the service was down
                    job.state, job.finished_at, job.queue_position = (
                        JobState.cancelled,
                        datetime.now(timezone.utc),
                        None,
                    )
                    self._save_job(job)
                    continue
                self.queue.push(job.id, job.priority, job.created_at)
            self._monitor_task = asyncio.get_running_loop().create_task(self._monitor())
            self._dispatch()
        return self.status()

    # ---------------------------------------------------------------- API
    async def submit(self, job_id: str, priority: int, created_at: str) -> int:
        """Queue a stored job; returns how many jobs are ahead of it in the queue."""
        if not self._ready:
            await self.ready()
        if job_id not in self.running:
            self.queue.push(job_id, priority, created_at)
        ahead = self.queue.ordered().index(job_id) if job_id in self.queue else 0
        self._dispatch()
        return ahead

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job: a queued one leaves the queue now; a running one gets a durable cancel
        request and its computer is told, so it stops at its next stage or progress report.
        False if the job is neither queued nor running."""
        if job_id in self.running:
            if self.store.get_job(job_id).state.finished:  # it ended; its computer is returning
                return False
            request_cancel(self.store, job_id)
            name = self.running[job_id]
            try:
                told = await self.computers[name].cancel.remote(job_id)
            except (RayActorError, KeyError):  # died meanwhile: the request on disk stops a re-run
                told = False
            if not told:  # not started yet (the request on disk stops it) or just ended
                job = self.store.get_job(job_id)
                return not job.state.finished or job.state is JobState.cancelled
            return True
        if not self.queue.remove(job_id):
            return False
        request_cancel(self.store, job_id)
        job = self.store.get_job(job_id)
        job.state, job.finished_at, job.queue_position = JobState.cancelled, datetime.now(timezone.utc), None
        self._save_job(job)
        self.positions.pop(job_id, None)
        self.queued_jobs.pop(job_id, None)
        self._publish_positions()
        return True

    async def queue_status(self) -> QueueStatus:
        """The compute queue in order (position, job id, priority, created_at), the running jobs
        and their computers, and the cluster's free CPUs."""
        if not self._ready:
            await self.ready()
        queued = [
            QueuedJob(position=n, job_id=jid, priority=prio, created_at=datetime.fromtimestamp(ts, timezone.utc))
            for n, (jid, prio, ts) in enumerate(self.queue.entries())
        ]
        running = []
        for jid, name in self.running.items():
            ev = self.last_event.get(jid)
            running.append(
                RunningJob(
                    job_id=jid,
                    worker=name,
                    stage=ev.stage if ev else None,
                    tasks_done=ev.done if ev else 0,
                    tasks_total=ev.total if ev else 0,
                )
            )
        return QueueStatus(queued=queued, running=running, free_cpus=self._free_cpus(), job_cpus=self.settings.job_cpus)

    async def replan(self, request: ReplanRequest) -> bool:
        """A booking moved off a machine that went down: swap the machine in the job's target list
        (its machines and its planning request's) and run its convert -> qa -> export stages
        again (every earlier stage is reused from the store). False when there is nothing to do:
        no new machine, the booking kept its plan, or the job never planned."""
        to, frm = request.to_machine, request.from_machine
        if not to or not request.needs_conversion:
            return False
        job = self.store.get_job(request.job_id)
        if job.planning is None:
            return False
        job.machines = list(dict.fromkeys([to if m == frm else m for m in job.machines] + [to]))
        job.planning = job.planning.model_copy(update={"machines": list(job.machines)})
        for sp in job.stages:
            if sp.name in REPLAN_STAGES:
                sp.state, sp.percent, sp.tasks_done, sp.started_at, sp.finished_at = JobState.queued, 0.0, 0, None, None
                sp.message = f"re-planning: {frm} -> {to} ({request.reason})"[:300]
        job.state, job.finished_at, job.stage = JobState.queued, None, None
        job.progress = sum(s.percent for s in job.stages) / max(1, len(job.stages))
        self._save_job(job)
        if job.id not in self.running:
            self.queue.push(job.id, job.priority, job.created_at)
        self._dispatch()
        return True

    async def _attach_plans(self, job_id: str) -> None:
        """After a (re-)planned job: give every booking still 'converting' its machine's plan id, or
        mark it ``not_released`` (with the QA reasons) when that machine's plan failed QA: a plan
        that QA did not release is never attached to a booking."""
        try:
            reg = ray.get_actor(registry_name(self.settings), namespace=self.settings.ray_namespace)
        except ValueError:
            return  # no machine registry: nothing is booked
        try:
            summary = self.store.get_stage_model(job_id, "export", "summary.json", ExportResult)
        except FileNotFoundError:
            return  # the job's export was skipped: no plans
        by_machine = {m.machine: m for m in summary.machines}
        for b in await reg.bookings_of.remote(job_id):
            m = by_machine.get(b.machine)
            if b.plan_id is not None or m is None:
                continue
            if m.plan_id and m.verdict != "not released":
                await reg.attach_plan.remote(b.machine, job_id, m.plan_id)
            else:
                await reg.plan_not_released.remote(b.machine, job_id, list(m.failed_checks))

    async def report(self, job_id: str, event: StageEvent) -> None:
        """Progress fan-in from the computers (the store holds the durable copy)."""
        self.last_event[job_id] = event

    def status(self) -> SchedulerStatus:
        return SchedulerStatus(
            queued=self.queue.ordered(),
            running=dict(self.running),
            computers=sorted(self.computers),
            idle=list(self.idle),
            heartbeats={n: self.beats.get(n) for n in sorted(self.computers)},
            lost=dict(self.lost),
        )

    async def get_status(self) -> SchedulerStatus:
        if not self._ready:  # e.g. after an automatic restart of this actor
            await self.ready()
        return self.status()

    async def heartbeats(self, timeout_s: float = 5.0) -> dict[str, Heartbeat | None]:
        """Ask every computer for a heartbeat; None for one that did not answer in time."""
        names = list(self.computers)
        refs = [self.computers[n].heartbeat.remote() for n in names]
        out: dict[str, Heartbeat | None] = {}
        for n, ref in zip(names, refs):
            try:
                out[n] = await asyncio.wait_for(ref, timeout_s)
            except (asyncio.TimeoutError, RayActorError):
                out[n] = None
        return out

    async def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Wait until nothing is queued or running (tests, graceful shutdown)."""
        end = time.monotonic() + timeout_s
        while (self.running or len(self.queue)) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        return not (self.running or len(self.queue))

    # ---------------------------------------------------------------- monitor
    async def _monitor(self) -> None:
        """Every heartbeat interval: heartbeat every computer, then re-try admission."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            try:
                await self._check_computers()
                self._dispatch()
                if (
                    self.pools is not None
                ):  # actors a pool grew for demand go back after 5 idle minutes (fire and forget)
                    self.pools.shrink_idle.remote(POOL_IDLE_S)
            except Exception:
                log.exception("scheduler monitor tick failed")

    async def _check_computers(self) -> None:
        names = list(self.computers)
        refs = [self.computers[n].heartbeat.remote() for n in names]
        wait_s = max(1.0, self.settings.heartbeat_interval_s)
        results = await asyncio.gather(*(asyncio.wait_for(r, wait_s) for r in refs), return_exceptions=True)
        now = time.monotonic()
        for name, res in zip(names, results):
            if name not in self.computers or name in self.lost:
                continue
            busy = name in self.running.values()
            if isinstance(res, Heartbeat):
                self.beats[name], self.last_ok[name] = res, now
            elif isinstance(res, RayActorError):
                self._lose(name, f"controlled computer {name} died ({type(res).__name__})", busy)
            elif busy and name in self.beats and now - self.last_ok.get(name, now) > self.settings.heartbeat_timeout_s:
                # (a computer still being created has never answered: killing it would not help)
                self._lose(
                    name,
                    f"controlled computer {name} did not answer heartbeats for {now - self.last_ok[name]:.0f} s",
                    busy,
                )

    def _lose(self, name: str, why: str, busy: bool) -> None:
        """Kill a dead or unresponsive computer; a busy one is replaced by its job's ``_run``."""
        log.warning("%s; replacing it", why)
        self.lost[name] = why
        try:
            ray.kill(self.computers[name], no_restart=True)
        except Exception:
            log.debug("ray.kill(%s) failed", name, exc_info=True)
        if not busy and name in self.idle:
            self.idle.remove(name)
            slot = self.slots.pop(name)
            self.computers.pop(name, None)
            self.idle.append(self._new_computer(slot))

    # ---------------------------------------------------------------- dispatch
    def _free_cpus(self) -> float:
        try:
            return float(ray.available_resources().get("CPU", 0.0))
        except Exception:
            return 0.0

    def _dispatch(self) -> None:
        free: float | None = None
        while self.idle and len(self.queue):
            if free is None:
                now = time.monotonic()
                grace = self.settings.heartbeat_interval_s  # Ray's view lags: count what new jobs will claim
                claiming = sum(1 for j in self.running if now - self.admitted_at.get(j, 0.0) < grace)
                free = self._free_cpus() - claiming * self.settings.job_cpus
            if self.running and free + 1e-9 < self.settings.job_cpus:
                break  # not enough free CPUs for one more job; the monitor re-tries
            free -= self.settings.job_cpus
            job_id = self.queue.pop()
            if job_id is None:
                break
            if cancel_requested(self.store, job_id):
                continue
            self._warm_pools(job_id)
            name = self.idle.pop(0)
            self.running[job_id] = name
            self.admitted_at[job_id] = self.last_ok[name] = time.monotonic()
            t = asyncio.get_running_loop().create_task(self._run(name, job_id))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        self._publish_positions()

    def _warm_pools(self, job_id: str) -> None:
        """Start the conversion pools of a planning job's machines now (their actors load the machine
        models while the standard plan is optimised), fire and forget."""
        try:
            job = self.store.get_job(job_id)
            if job.planning is not None and job.planning.machines:
                self._pools_handle().ensure.remote(list(job.planning.machines))
        except Exception:
            log.debug("could not warm the conversion pools of job %s", job_id, exc_info=True)

    def _publish_positions(self) -> None:
        """Publish each queued job's place when it changed.

        A job entering the queue is written to its job.json (state ``queued`` and its place, durable);
        later moves of its place (a job ahead of it started or left) go only to the status cache
        (``GET /jobs/{id}``, ``GET /queue``): with N queued jobs every dispatch moves all N, and
        writing each durably (two fsyncs) would cost O(N^2) writes on the scheduler's event loop.
        """
        order = self.queue.ordered()
        for pos, jid in enumerate(order):
            if self.positions.get(jid) == pos:
                continue
            try:
                job = self.queued_jobs.get(jid)
                durable = job is None
                if durable:
                    job = self.store.get_job(jid)
                    if job.state.finished:
                        continue
                job.queue_position, job.state = pos, JobState.queued
                if durable:
                    self._save_job(job)
                    self.queued_jobs[jid] = job
                else:
                    self._snapshot(jid, job.model_dump_json().encode())
                self.positions[jid] = pos
            except Exception:
                log.exception("could not publish the queue position of job %s", jid)
        for jid in set(self.positions) - set(order):
            self.positions.pop(jid, None)
            self.queued_jobs.pop(jid, None)

    async def _run(self, name: str, job_id: str) -> None:
        replace = False
        try:
            done: Job = await self.computers[name].run_job.remote(job_id)
            if done.state is JobState.succeeded and done.planning is not None:
                await self._attach_plans(job_id)
        except RayActorError:
            log.warning("controlled computer %s died running job %s; re-queueing it", name, job_id)
            replace = True
            try:
                job = self.store.get_job(job_id)
                if not job.state.finished and cancel_requested(self.store, job_id):
                    job.state, job.finished_at = JobState.cancelled, datetime.now(timezone.utc)
                    self._save_job(job)
                elif not job.state.finished:
                    why = self.lost.get(name, f"controlled computer {name} died")
                    job.errors.append(f"{why}; the job was re-queued")
                    job.state = JobState.queued
                    self._save_job(job)
                    self.queue.push(job.id, job.priority, job.created_at)
            except Exception:
                log.exception("could not re-queue job %s", job_id)
        except Exception:
            log.exception("job %s failed on %s", job_id, name)
        finally:
            self.running.pop(job_id, None)
            self.admitted_at.pop(job_id, None)
            self.last_event.pop(job_id, None)
            t = self.tasks.pop(job_id, None)
            if t:
                self.tasks_done_total += t.finished
            if replace:
                slot = self.slots.pop(name)
                self.computers.pop(name, None)
                self.beats.pop(name, None)
                self.last_ok.pop(name, None)
                name = self._new_computer(slot)
            self.idle.append(name)
            self._dispatch()


#: a conversion actor beyond its pool's initial size is removed after this long idle (s)
POOL_IDLE_S = 300.0

#: job snapshots the scheduler keeps for the ingress' status cache (older ones are read from the store)
SNAPSHOT_LIMIT = 5000

#: longest wait of one long-polling ``snapshots_since`` call (s)
SNAPSHOT_WAIT_MAX_S = 10.0

#: the stages a re-plan for another machine runs again
REPLAN_STAGES = ("convert", "qa", "export")


def registry_name(settings: ServiceSettings) -> str:
    """Name of the machine registry actor (rayrt.service.machine_queues) that belongs to this service's scheduler."""
    return f"{settings.scheduler_name}-machines"


class ReplanToScheduler:
    """The machine registry's replan callback: forwards a ReplanRequest to the named scheduler (picklable)."""

    def __init__(self, scheduler_name: str, namespace: str):
        self.scheduler_name = scheduler_name
        self.namespace = namespace

    def __call__(self, request: ReplanRequest) -> None:
        ray.get_actor(self.scheduler_name, namespace=self.namespace).replan.remote(request)


def get_scheduler(settings: ServiceSettings) -> Any:
    """The running scheduler actor (ValueError if there is none)."""
    return ray.get_actor(settings.scheduler_name, namespace=settings.ray_namespace)


def get_or_create_scheduler(settings: ServiceSettings) -> Any:
    """The scheduler actor, created (detached) on first use; waits until it is ready."""
    handle = Scheduler.options(
        name=settings.scheduler_name,
        namespace=settings.ray_namespace,
        lifetime="detached",
        get_if_exists=True,
    ).remote(settings)
    ray.get(handle.ready.remote())
    return handle
