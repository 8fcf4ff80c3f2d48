"""Conversion worker pools: the standard plan -> a plan for one specific treatment machine, on Ray.

One pool of :data:`ConversionWorker` actors per target machine. Each actor loads its
:class:`~rayrt.domain.machine.MachineModel` once, in ``__init__`` (and imports the conversion
engine, so its numba kernels are loaded before the first job), then runs the one conversion
engine of rayrt, :func:`rayrt.convert.convert.convert_for_machine` (coincidence verdict,
recompute mode by policy or forced, target beam model and Dij, mimicking re-optimisation,
QA-gated release loop), on every standard plan it is given::

    worker.run(standard: StandardPlan, geometry: PlanGeometry, options: ConversionOptions | None) -> ConversionResult

:class:`ConversionPools` creates the pools (initial size per machine from the service config
key ``conversion_pool``; by default a pool starts on its machine's first conversion, or earlier
with :meth:`ConversionPools.ensure`), sends each conversion to the least-loaded actor of the
machine's pool, and grows a pool by one actor when more conversions are queued than the pool
has actors and the pool is below its maximum. :meth:`ConversionPools.shrink_idle` returns
idle extra actors.

The pipeline's ``convert`` stage reaches the pools through
:meth:`rayrt.service.controlled.RayExecutor.convert_machines` (the standard plan and its
geometry go into the object store once for all machines); in one process
:class:`rayrt.pipeline.LocalExecutor` calls ``convert_for_machine`` directly.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numba
import ray

from rayrt.convert.convert import ConversionResult, convert_for_machine
from rayrt.convert.policy import ConversionOptions
from rayrt.domain.errors import InputError
from rayrt.domain.machine import MachineModel
from rayrt.machines import get_machine, treatment_machine_names
from rayrt.optimize.standard import PlanGeometry, StandardPlan
from rayrt.service.models import PoolStats
from rayrt.service.policies import ConversionPoolSettings
from rayrt.service.process import lower_priority, named_actor_options

__all__ = [
    "ConversionPools",
    "ConversionPoolsActor",
    "ConversionWorker",
    "get_or_create_conversion_pools",
    "pools_name",
]


# --------------------------------------------------------------------------------------------
# the actor

_MODEL_LOADS = 0  # per worker process: how many MachineModels this process has loaded


class ConversionWorkerImpl:
    """Body of :data:`ConversionWorker`: holds one machine model, converts standard plans for it."""

    def __init__(self, machine: MachineModel | str, config_dir: str | None = None, threads: int = 1):
        global _MODEL_LOADS
        lower_priority()  # conversions are batch work: the HTTP ingress keeps its CPU share
        self.machine = machine if isinstance(machine, MachineModel) else get_machine(machine, config_dir)
        _MODEL_LOADS += 1
        self.threads = max(1, int(threads))
        # one conversion per actor: numba threads = the CPUs it may use (the pool runs machines in parallel)
        numba.set_num_threads(max(1, min(self.threads, numba.config.NUMBA_NUM_THREADS)))
        self.calls = 0
        self.busy_s = 0.0

    def run(
        self, standard: StandardPlan, geometry: PlanGeometry, options: ConversionOptions | None = None
    ) -> ConversionResult:
        """``convert_for_machine(standard, geometry, <this machine>, options)``."""
        t0 = time.perf_counter()
        try:
            return convert_for_machine(standard, geometry, self.machine, options)
        finally:
            self.calls += 1
            self.busy_s += time.perf_counter() - t0

    def info(self) -> dict:
        """Where this worker runs and what it did (for stats and tests)."""
        ctx = ray.get_runtime_context() if ray.is_initialized() else None
        return {
            "machine": self.machine.name,
            "pid": os.getpid(),
            "node_id": ctx.get_node_id() if ctx else None,
            "actor_id": ctx.get_actor_id() if ctx else None,
            "calls": self.calls,
            "busy_s": self.busy_s,
            "model_loads_in_process": _MODEL_LOADS,
        }


ConversionWorker = ray.remote(num_cpus=1, max_restarts=2, max_task_retries=1)(ConversionWorkerImpl)
"""The Ray actor: ``ConversionWorker.options(...).remote(machine_model_or_name)``."""


# --------------------------------------------------------------------------------------------
# pools


class _Pool:
    def __init__(self, machine: str, initial: int, maximum: int):
        self.machine = machine
        self.initial = initial
        self.maximum = maximum
        self.actors: list[Any] = []
        self.inflight: list[list[ray.ObjectRef]] = []
        self.last_used: list[float] = []
        self.submitted = 0
        self.grown = 0


def _unwrap(value: Any) -> Any:
    """A one-element list holding an ObjectRef -> that ObjectRef (a top-level argument, which Ray
    resolves for the worker); anything else as it is."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], ray.ObjectRef):
        return value[0]
    return value


class ConversionPools:
    """One pool of conversion actors per target machine, growing with demand.

    Args:
        machines: ``{name: MachineModel}`` (the model is shipped to each actor once), or names
            (each actor loads its model by name: :func:`rayrt.machines.get_machine`).
        settings: :class:`ConversionPoolSettings` or its dict (service config ``conversion_pool``).
        actor_options: Ray options for the actors, e.g. ``{"num_cpus": 1, "resources": {"worker": 0.01}}``
            (default: ``settings.actor_options``).
        start: create every machine's initial actors now (models load in the background);
            otherwise a pool starts on its first :meth:`submit` (or :meth:`ensure`).

    Thread-safe: the ingress may submit from several threads.
    """

    def __init__(
        self,
        machines: Mapping[str, MachineModel] | Sequence[str],
        settings: ConversionPoolSettings | dict | None = None,
        actor_options: dict | None = None,
        start: bool = True,
        config_dir: str | None = None,
    ):
        self.settings = (
            settings
            if isinstance(settings, ConversionPoolSettings)
            else ConversionPoolSettings.model_validate(settings or {})
        )
        self._models: dict[str, MachineModel | str] = (
            dict(machines) if isinstance(machines, Mapping) else {m: m for m in machines}
        )
        if not self._models:
            raise InputError("ConversionPools needs at least one machine", kind="machine")
        self._options = dict(actor_options if actor_options is not None else self.settings.actor_options)
        self._threads = max(1, int(self._options.get("num_cpus", 1) or 1))
        self._config_dir = config_dir
        self._lock = threading.Lock()
        self._pools: dict[str, _Pool] = {}
        if start:
            for name in self._models:
                self._pool(name)

    # -- internals (call with the lock held)
    def _pool(self, machine: str) -> _Pool:
        pool = self._pools.get(machine)
        if pool is None:
            if machine not in self._models:
                raise InputError(
                    f"no conversion pool for machine '{machine}'; known: {', '.join(sorted(self._models))}",
                    kind="machine",
                    field="machine",
                    status=404,
                )
            pool = _Pool(machine, self.settings.initial(machine), self.settings.maximum(machine))
            self._pools[machine] = pool
            for _ in range(pool.initial):
                self._add_actor(pool)
        return pool

    def _add_actor(self, pool: _Pool) -> None:
        model = self._models[pool.machine]
        actor = ConversionWorker.options(**self._options).remote(model, self._config_dir, self._threads)
        pool.actors.append(actor)
        pool.inflight.append([])
        pool.last_used.append(time.monotonic())

    @staticmethod
    def _prune(pool: _Pool) -> None:
        refs = [r for lst in pool.inflight for r in lst]
        if not refs:
            return
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        if done:
            done_set = set(done)
            pool.inflight = [[r for r in lst if r not in done_set] for lst in pool.inflight]

    # -- API
    def ensure(self, machines: Sequence[str]) -> list[str]:
        """Start the pools of ``machines`` now (their actors load the models in the background),
        so a job's conversions find warm actors; unknown names are skipped. Returns the pools started."""
        with self._lock:
            out = []
            for m in machines:
                if m in self._models and m not in self._pools:
                    self._pool(m)
                    out.append(m)
            return out

    def submit(
        self, machine: str, standard: Any, geometry: Any, options: ConversionOptions | None = None
    ) -> ray.ObjectRef:
        """Queue one conversion of ``standard`` (a :class:`~rayrt.optimize.standard.StandardPlan`)
        computed on ``geometry`` (its :class:`~rayrt.optimize.standard.PlanGeometry`) for
        ``machine`` with ``options`` (None = configs/conversion.yaml). Returns the
        :class:`~rayrt.convert.convert.ConversionResult`'s ObjectRef.

        ``standard`` and ``geometry`` may be the values, their ObjectRefs, or one-element lists
        holding those ObjectRefs: how a caller going through :data:`ConversionPoolsActor` keeps
        Ray from fetching them into this actor; the worker reads them from the object store.

        The pool grows by one actor first when the conversions queued (including this one)
        outnumber its actors and it is below its maximum size.
        """
        standard, geometry = _unwrap(standard), _unwrap(geometry)
        with self._lock:
            pool = self._pool(machine)
            self._prune(pool)
            queued = sum(len(lst) for lst in pool.inflight) + 1
            if queued > len(pool.actors) and len(pool.actors) < pool.maximum:
                self._add_actor(pool)
                pool.grown += 1
            i = min(range(len(pool.actors)), key=lambda k: (len(pool.inflight[k]), k))
            ref = pool.actors[i].run.remote(standard, geometry, options)
            pool.inflight[i].append(ref)
            pool.last_used[i] = time.monotonic()
            pool.submitted += 1
            return ref

    def convert(
        self,
        machine: str,
        standard: Any,
        geometry: Any,
        options: ConversionOptions | None = None,
        timeout_s: float | None = None,
    ) -> ConversionResult:
        """Convert one standard plan for ``machine`` and wait for the ConversionResult."""
        return ray.get(self.submit(machine, standard, geometry, options), timeout=timeout_s)

    def size(self, machine: str) -> int:
        with self._lock:
            return len(self._pool(machine).actors)

    def stats(self) -> list[PoolStats]:
        with self._lock:
            out = []
            for name, pool in self._pools.items():
                self._prune(pool)
                out.append(
                    PoolStats(
                        machine=name,
                        size=len(pool.actors),
                        max_size=pool.maximum,
                        queued=sum(len(lst) for lst in pool.inflight),
                        submitted=pool.submitted,
                        grown=pool.grown,
                    )
                )
            return out

    def actors(self, machine: str) -> list[Any]:
        with self._lock:
            return list(self._pool(machine).actors)

    def worker_info(self, machine: str) -> list[dict]:
        return ray.get([a.info.remote() for a in self.actors(machine)])

    def shrink_idle(self, idle_s: float = 300.0) -> int:
        """Remove actors idle for ``idle_s`` seconds beyond each pool's initial size; returns how many."""
        removed = 0
        now = time.monotonic()
        with self._lock:
            for pool in self._pools.values():
                self._prune(pool)
                k = len(pool.actors) - 1
                while k >= 0 and len(pool.actors) > pool.initial:
                    if not pool.inflight[k] and now - pool.last_used[k] >= idle_s:
                        ray.kill(pool.actors.pop(k))
                        pool.inflight.pop(k)
                        pool.last_used.pop(k)
                        removed += 1
                    k -= 1
        return removed

    def shutdown(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                for a in pool.actors:
                    ray.kill(a)
            self._pools.clear()


ConversionPoolsActor = ray.remote(num_cpus=0, max_concurrency=64, max_restarts=-1)(ConversionPools)
"""``ConversionPools`` as a threaded Ray actor, shared by the scheduler and every controlled
computer: ``inner = ray.get(pools.submit.remote(machine, [standard_ref], [geometry_ref], options)); ray.get(inner)``
(the standard plan and its geometry travel once through the object store, straight to the worker)."""

POOLS_NAME = "rayrt-conversion-pools"


def pools_name(scheduler_name: str) -> str:
    """Name of the conversion-pools actor that belongs to the scheduler called ``scheduler_name``."""
    return f"{scheduler_name}-conversion"


def get_or_create_conversion_pools(
    name: str = POOLS_NAME,
    namespace: str | None = None,
    detached: bool = True,
    actor_options: dict | None = None,
    **kwargs: Any,
):
    """The named :data:`ConversionPoolsActor` (created on first use; ``kwargs`` go to ConversionPools).

    Without ``machines`` in ``kwargs`` it makes a pool for every treatment machine of the
    library (:func:`rayrt.machines.treatment_machine_names`); each worker loads its model by name.
    """
    opts = named_actor_options(name, namespace, "detached" if detached else None, actor_options)
    if "machines" not in kwargs:
        kwargs["machines"] = treatment_machine_names()
    return ConversionPoolsActor.options(**opts).remote(**kwargs)
