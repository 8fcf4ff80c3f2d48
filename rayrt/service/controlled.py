"""ControlledComputer actors: take a job, run the pipeline's stages, persist every result.

A :class:`ControlledComputer` is a long-lived Ray actor. For each job the scheduler hands it,
it loads the patient from the durable store, puts the large arrays (image, masks, doses) into
the Ray object store *once* (``ctx.shared`` of :mod:`rayrt.pipeline`: later stages pass these
references to their remote tasks instead of the arrays), runs the job's recipe
(:func:`rayrt.pipeline.recipe`: the analysis stages, and the planning stages when the job
carries a planning request; then any extra stages of ``settings.stage_modules``), writes
each stage's result files to ``jobs/<id>/stages/<stage>/`` before the next stage starts, and
writes the job's state and per-stage progress to ``jobs/<id>/job.json`` as it goes. The actor
owns the objects it puts, so they live as long as it does; they are dropped when the job ends.

A job that a restarted service finds unfinished is queued again; :class:`JobRunner` then reuses
the stored results of stages that had finished (``reused`` in the job's stage messages).

:class:`JobRunner` holds the Ray-free part (state machine, persistence) so it runs in tests and
in one process too.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import socket
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

import ray

from rayrt.convert.convert import ConversionResult
from rayrt.convert.policy import ConversionOptions
from rayrt.domain.errors import InputError
from rayrt.domain.job import Job, JobState, StageProgress
from rayrt.imaging.study import Study
from rayrt.optimize.standard import PlanGeometry, StandardPlan
from rayrt.pipeline import (
    Executor,
    LocalExecutor,
    Progress,
    Stage,
    StageEvent,
    recipe,
    restore_output,
    run_stages,
    write_result_files,
)
from rayrt.service.conversion import POOLS_NAME, get_or_create_conversion_pools, pools_name
from rayrt.service.models import Heartbeat
from rayrt.service.policies import ConversionPoolSettings
from rayrt.service.process import lower_priority
from rayrt.service.store import Store, check_id

log = logging.getLogger("rayrt.service")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class StoreSource:
    """The ``source`` artefact of a service job: a patient in the durable store (picklable)."""

    def __init__(self, store: Store, patient_id: str):
        self.store = store
        self.patient_id = patient_id

    def load(self) -> Study:
        return self.store.load_study(self.patient_id)


# ---------------------------------------------------------------------------- cancellation
class JobCancelled(Exception):
    """Raised inside a running job when its cancellation was requested (checked between stages
    and at every progress report, i.e. between fan-out tasks); the job ends ``cancelled``."""


def _cancel_file(job_id: str) -> str:
    return f"jobs/{check_id(job_id, 'job')}/cancel.json"


def request_cancel(store: Store, job_id: str, reason: str = "cancelled on request") -> None:
    """Record durably that ``job_id`` must stop (survives a computer or service restart)."""
    store.write_json(_cancel_file(job_id), {"requested_at": _now().isoformat(), "reason": reason})


def cancel_requested(store: Store, job_id: str) -> bool:
    return store.exists(_cancel_file(job_id))


def _import_module(name: str) -> Any:
    """A module by dotted name, or a .py file by path (imported under its file stem)."""
    if not (name.endswith(".py") or os.sep in name):
        return importlib.import_module(name)
    path = os.path.abspath(name)
    mod_name = os.path.splitext(os.path.basename(path))[0]
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"stage module {name!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return module


def load_stage_modules(names: Iterable[str]) -> list[Stage]:
    """The extra stages of ``settings.stage_modules``: each module (a dotted name, or the path of
    a .py file) exports ``STAGES``, a list of :class:`rayrt.pipeline.Stage` (built with
    :func:`rayrt.pipeline.stage_of`); they run after the job's recipe, in the order given."""
    stages: list[Stage] = []
    for name in names:
        extra = getattr(_import_module(name), "STAGES", None)
        if not isinstance(extra, list) or not all(isinstance(st, Stage) for st in extra):
            raise InputError(
                f"stage module {name!r} must export STAGES, a list of rayrt.pipeline.Stage "
                "(made with rayrt.pipeline.stage_of)",
                kind="settings",
                field="stage_modules",
            )
        stages += extra
    return stages


def run_task(fn: Callable[..., Any], item: Any, *shared: Any) -> Any:
    """Body of every stage task on Ray: ``fn(item, *shared)`` at compute priority
    (:func:`rayrt.service.process.lower_priority`: the HTTP ingress keeps answering while tasks
    saturate the CPUs)."""
    lower_priority()
    return fn(item, *shared)


class RayExecutor:
    """:class:`rayrt.pipeline.Executor` on Ray: ``put`` = ``ray.put``; ``map`` = one task per item.

    Shared handles passed to ``map`` are ObjectRefs; Ray hands each task the stored array
    (zero-copy for numpy) instead of shipping it again. Tasks are submitted in the order of
    ``fn.task_order(items)`` when the function has one (largest work first, so the last task to
    start is a short one). ``map``'s ``progress(done, total, message)`` is called as tasks
    finish; if it raises (a cancelled job), the remaining tasks are cancelled and the error
    propagates.

    ``convert_machines`` runs the convert stage's conversions on the per-machine conversion
    ActorPools (:mod:`rayrt.service.conversion`, actor ``pools``). ``on_tasks(submitted,
    finished)`` receives this executor's running task counts (the scheduler's accounting behind
    ``GET /cluster``).
    """

    def __init__(
        self,
        num_cpus_per_task: float = 1.0,
        pools: str = POOLS_NAME,
        namespace: str | None = None,
        pool_settings: ConversionPoolSettings | None = None,
        on_tasks: Callable[[int, int], None] | None = None,
    ):
        self.num_cpus_per_task = num_cpus_per_task
        #: numba threads inside each task: as many as the CPUs the task reserves (stages read it)
        self.threads_per_task = max(1, int(num_cpus_per_task))
        self._remote: dict[Callable, Any] = {}
        self.pools_name = pools
        self.namespace = namespace
        self.pool_settings = pool_settings
        #: ``on_tasks(submitted, finished)``: this executor's task accounting (the scheduler's GET /cluster counts)
        self.on_tasks = on_tasks
        self.tasks_submitted = 0
        self.tasks_finished = 0

    def _count(self, submitted: int = 0, finished: int = 0) -> None:
        self.tasks_submitted += submitted
        self.tasks_finished += finished
        if self.on_tasks is not None:
            try:
                self.on_tasks(self.tasks_submitted, self.tasks_finished)
            except Exception:  # accounting is best effort
                log.debug("task accounting report failed", exc_info=True)

    def pools(self) -> Any:
        """The conversion-pools actor (:mod:`rayrt.service.conversion`) of this service, created on first use."""
        try:
            return ray.get_actor(self.pools_name, namespace=self.namespace)
        except ValueError:
            return get_or_create_conversion_pools(
                name=self.pools_name, namespace=self.namespace, detached=False, start=False, settings=self.pool_settings
            )

    def convert_machines(
        self,
        standard: StandardPlan,
        geometry: PlanGeometry,
        machines: list[str],
        options: ConversionOptions,
        progress: Progress | None = None,
    ) -> list[ConversionResult | BaseException]:
        """Convert ``standard`` (computed on ``geometry``) for every machine on that machine's
        conversion ActorPool: the plan and the geometry are put into the object store once and
        read by each pool's worker; ``progress(done, total, message)`` as machines finish (it may
        raise to cancel the rest). Results (:class:`rayrt.convert.convert.ConversionResult`, or
        the exception a machine's conversion raised: the others go on) in the order of ``machines``."""
        pools = self.pools()
        plan_ref, geometry_ref = ray.put(standard), ray.put(geometry)
        inner = ray.get([pools.submit.remote(m, [plan_ref], [geometry_ref], options) for m in machines])
        self._count(submitted=len(inner))
        index = {r: i for i, r in enumerate(inner)}
        done = 0

        def finished(ready: list) -> None:
            nonlocal done
            for r in ready:
                done += 1
                if progress is not None:
                    progress(done, len(inner), f"{machines[index[r]]} converted ({done}/{len(inner)})")

        self._await(inner, finished)
        out: list[ConversionResult | BaseException] = []
        for r in inner:
            try:
                out.append(ray.get(r))
            except ray.exceptions.RayTaskError as exc:  # the conversion raised: report its own error
                cause = exc.cause
                out.append(cause if isinstance(cause, BaseException) else exc)
            except ray.exceptions.RayError as exc:  # actor died beyond its restarts, ...
                out.append(exc)
        return out

    def available_cpus(self) -> int:
        """CPUs free in the cluster now (at least 1): stages size their fan-out from it."""
        return max(1, int(ray.available_resources().get("CPU", 0) // max(self.num_cpus_per_task, 1e-9)))

    def put(self, value: Any) -> Any:
        return ray.put(value)

    def map(
        self, fn: Callable[..., Any], items: Iterable[Any], *shared: Any, progress: Progress | None = None
    ) -> list[Any]:
        rf = self._remote.get(fn)
        if rf is None:  # one remote function per stage function, named after it (run_task wraps it)
            rf = self._remote[fn] = ray.remote(num_cpus=self.num_cpus_per_task)(run_task).options(
                name=getattr(fn, "__name__", "task")
            )
        items = list(items)
        order = getattr(fn, "task_order", None)  # e.g. largest work first (the dij stage's chunk task)
        seq = order(items) if callable(order) else range(len(items))
        refs: list[Any] = [None] * len(items)
        for i in seq:  # submitted in that order; Ray starts them in submission order as CPUs free up
            refs[i] = rf.remote(fn, items[i], *shared)
        self._count(submitted=len(refs))
        if not refs:
            return []
        done = 0

        def finished(ready: list) -> None:
            nonlocal done
            done += len(ready)
            if progress is not None:
                progress(done, len(refs), "")

        self._await(refs, finished)
        return ray.get(refs)

    def _await(self, refs: list, finished: Callable[[list], None]) -> None:
        """Wait for every ref; as some finish (all that are ready at once): the task accounting,
        then ``finished(ready refs)``. If that raises (a cancelled job), the refs still pending
        are cancelled and the error propagates."""
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=None, fetch_local=False)
                if pending:  # and every other one that is ready by now
                    more, pending = ray.wait(pending, num_returns=len(pending), timeout=0, fetch_local=False)
                    ready += more
                self._count(finished=len(ready))
                finished(ready)
        except BaseException:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:
                    pass
            raise


def job_stages(job: Job, extra: Sequence[Stage] = ()) -> list[Stage]:
    """The recipe for ``job`` (:func:`rayrt.pipeline.recipe`: the planning stages only when it
    carries a planning request), then the ``extra`` stages (``settings.stage_modules``)."""
    stages = recipe(plan=job.planning is not None)
    clash = {st.name for st in stages} & {st.name for st in extra}
    if clash:
        raise InputError(
            f"extra stage(s) {sorted(clash)} have the names of recipe stages; rename them",
            kind="settings",
            field="stage_modules",
        )
    return stages + list(extra)


class JobRunner:
    """Runs one stored job through its stages (:func:`job_stages`) and keeps ``job.json`` up to date."""

    def __init__(
        self,
        store: Store,
        job_id: str,
        *,
        worker: str = "local",
        executor: Executor | None = None,
        extra_stages: Sequence[Stage] = (),
        progress_interval_s: float = 0.5,
        report: Callable[[str, StageEvent], None] | None = None,
        publish: Callable[[str, bytes], None] | None = None,
    ):
        self.store = store
        self.job = store.get_job(job_id)
        self.worker = worker
        self.executor = executor or LocalExecutor()
        self.extra_stages = list(extra_stages)
        self.interval = progress_interval_s
        self.report = report
        self.publish = publish
        self._last_save = 0.0
        self._lock = threading.Lock()
        self.cancel_event = threading.Event()

    # ---------------------------------------------------------------- cancellation
    def cancel(self) -> None:
        """Ask the run to stop at its next check (next progress report or stage start)."""
        self.cancel_event.set()

    def _check_cancel(self, durable: bool = False) -> None:
        if not self.cancel_event.is_set() and durable and cancel_requested(self.store, self.job.id):
            self.cancel_event.set()
        if self.cancel_event.is_set():
            raise JobCancelled(f"job {self.job.id} was cancelled")

    # ---------------------------------------------------------------- persistence hooks
    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_save >= self.interval:
            self.store.save_job(self.job)
            self._last_save = now
            if self.publish is not None:  # the same state to the ingress' status cache (via the scheduler)
                try:
                    self.publish(self.job.id, self.job.model_dump_json().encode())
                except Exception:
                    log.debug("status publish failed", exc_info=True)

    def _stage(self, name: str) -> StageProgress:
        for sp in self.job.stages:
            if sp.name == name:
                return sp
        sp = StageProgress(name=name)
        self.job.stages.append(sp)
        return sp

    def on_event(self, ev: StageEvent) -> None:
        """A stage event of the run: update the job's stage progress and save it (progress at most
        every ``progress_interval_s``); the job stops here when it was cancelled."""
        if ev.kind == "started":
            self._check_cancel(durable=True)  # between stages: no further stage starts
        with self._lock:
            sp = self._stage(ev.stage)
            force = True
            if ev.kind == "started":
                self.job.stage = ev.stage
                sp.state, sp.started_at, sp.percent, sp.message = JobState.running, _now(), 0.0, ""
            elif ev.kind == "progress":
                sp.tasks_done, sp.tasks_total = ev.done, ev.total
                sp.percent = min(100.0, 100.0 * ev.done / ev.total) if ev.total else sp.percent
                sp.message = ev.message or sp.message
                force = False
            elif ev.kind in ("finished", "skipped", "reused"):
                sp.state, sp.percent, sp.finished_at = JobState.succeeded, 100.0, _now()
                sp.started_at = sp.started_at or sp.finished_at
                sp.message = {"skipped": f"skipped: {ev.message}", "reused": "reused the stored result"}.get(
                    ev.kind, sp.message
                )
            elif ev.kind == "failed" and self.cancel_event.is_set():
                sp.state, sp.finished_at, sp.message = JobState.cancelled, _now(), "cancelled"
            elif ev.kind == "failed":
                sp.state, sp.finished_at, sp.message = JobState.failed, _now(), ev.message
            self.job.progress = sum(s.percent for s in self.job.stages) / max(1, len(self.job.stages))
            self._save(force)
        if self.report is not None:
            try:
                self.report(self.job.id, ev)
            except Exception:  # progress fan-in is best effort; the store is the record
                log.debug("progress report failed", exc_info=True)
        if ev.kind == "progress":
            self._check_cancel()  # between tasks / steps of a stage

    def sink(self, st: Stage, out: Any) -> None:
        for name, data in write_result_files(out).items():
            self.store.put_stage_bytes(self.job.id, st.name, name, data)

    def previous(self, st: Stage) -> Any:
        """A finished stage's stored output (resume), or None. Outputs holding arrays rebuild them
        from their stored files (:func:`rayrt.pipeline.restore_output`)."""
        sp = next((s for s in self.job.stages if s.name == st.name), None)
        if sp is None or sp.state is not JobState.succeeded:
            return None
        if not self.store.has_stage_file(self.job.id, st.name, "result.json"):
            return None
        return restore_output(st, lambda name: self.store.read_bytes(self.store.stage_path(self.job.id, st.name, name)))

    # ---------------------------------------------------------------- the run
    def run(self) -> Job:
        job = self.job
        if job.state.finished:
            return job
        job.state, job.worker, job.started_at = JobState.running, self.worker, job.started_at or _now()
        job.queue_position = None
        if cancel_requested(self.store, job.id):
            job.state, job.finished_at = JobState.cancelled, _now()
            self._save(force=True)
            return job
        artefacts: dict[str, Any] = {
            "source": StoreSource(self.store, job.patient_id),
            "order": job.order,
            "planning": job.planning,
        }
        try:
            stages = job_stages(job, self.extra_stages)
            known = {s.name for s in job.stages}
            job.stages += [StageProgress(name=st.name) for st in stages if st.name not in known]
            self._save(force=True)
            run_stages(
                stages,
                artefacts,
                executor=self.executor,
                on_event=self.on_event,
                sink=self.sink,
                previous=self.previous,
            )
        except JobCancelled:
            job.state = JobState.cancelled
        except InputError as exc:
            job.errors.append(exc.message)
            job.state = JobState.failed
        except Exception as exc:  # a bug or an infrastructure failure: keep the job's record readable
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            job.errors.append(f"{type(exc).__name__}: {exc}")
            job.state = JobState.failed
        else:
            job.state = JobState.succeeded
            job.stage = None
            job.progress = 100.0
        finally:
            artefacts.get("_shared", {}).clear()  # drop our object-store references
        job.finished_at = _now()
        self._save(force=True)
        return job


@ray.remote
class ControlledComputer:
    """A worker that runs whole jobs (one at a time) and answers heartbeats while it does."""

    def __init__(
        self,
        name: str,
        store: Store,
        progress_interval_s: float = 0.5,
        scheduler_name: str | None = None,
        namespace: str | None = None,
        stage_modules: Iterable[str] = (),
        pool_settings: ConversionPoolSettings | None = None,
    ):
        lower_priority()  # jobs are batch work: the HTTP ingress keeps its CPU share
        self.name = name
        self.pool_settings = pool_settings
        self.runner: JobRunner | None = None
        self.stage_error: str | None = None
        self.extra_stages: list[Stage] = []
        try:
            self.extra_stages = load_stage_modules(stage_modules)
        except BaseException as exc:  # fail its jobs with the reason rather than the actor's start (a retry loop)
            self.stage_error = f"cannot load stage module(s) {list(stage_modules)}: {type(exc).__name__}: {exc}"
            log.error("%s", self.stage_error)
        self.store = store
        self.interval = progress_interval_s
        self.scheduler_name = scheduler_name
        self.namespace = namespace
        self.current: str | None = None
        self.jobs_done = 0
        self.started = time.time()

    def heartbeat(self) -> Heartbeat:
        """Liveness and load: name, host, pid, the job running (if any), jobs done."""
        runner = self.runner if self.current else None
        return Heartbeat(
            name=self.name,
            host=socket.gethostname(),
            node_id=ray.get_runtime_context().get_node_id(),
            pid=os.getpid(),
            job=self.current,
            stage=runner.job.stage if runner is not None else None,
            progress=runner.job.progress if runner is not None else None,
            jobs_done=self.jobs_done,
            uptime_s=time.time() - self.started,
        )

    def cancel(self, job_id: str) -> bool:
        """Ask the running job ``job_id`` to stop at its next check; False if it is not running here."""
        runner = self.runner
        if runner is None or self.current != job_id:
            return False
        runner.cancel()
        return True

    def run_job(self, job_id: str) -> Job:
        """Run a stored job to its end; returns the final Job."""
        report = publish = on_tasks = None
        if self.scheduler_name:
            try:
                sched = ray.get_actor(self.scheduler_name, namespace=self.namespace)
                # fire and forget: progress, status snapshots and task counts fan in to the scheduler
                report = lambda jid, ev: sched.report.remote(jid, ev)  # noqa: E731
                publish = lambda jid, data: sched.job_snapshot.remote(jid, data, time.time())  # noqa: E731
                on_tasks = lambda sub, fin: sched.report_tasks.remote(job_id, self.name, sub, fin)  # noqa: E731
            except ValueError:
                pass
        self.runner = None
        self.current = job_id
        try:
            if self.stage_error:
                job = self.store.get_job(job_id)
                job.state, job.finished_at, job.worker = JobState.failed, _now(), self.name
                job.errors.append(self.stage_error)
                self.store.save_job(job)
                if publish is not None:
                    publish(job.id, job.model_dump_json().encode())
                return job
            executor = RayExecutor(
                pools=pools_name(self.scheduler_name or "rayrt"),
                namespace=self.namespace,
                pool_settings=self.pool_settings,
                on_tasks=on_tasks,
            )
            runner = self.runner = JobRunner(
                self.store,
                job_id,
                worker=self.name,
                executor=executor,
                extra_stages=self.extra_stages,
                progress_interval_s=self.interval,
                report=report,
                publish=publish,
            )
            return runner.run()
        finally:
            self.current = None
            self.jobs_done += 1
