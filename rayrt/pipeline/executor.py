"""Where a stage's fan-out runs: the executor interface and its in-process implementation.

A stage never asks where it runs. It shares large arrays once (``put``), fans work out over a
module-level function (``map``), sizes that fan-out from ``available_cpus`` and
``threads_per_task``, and converts the standard plan for the target machines through
``convert_machines``. :class:`LocalExecutor` does all of it in this process (numba uses every
core inside each call); :class:`rayrt.service.controlled.RayExecutor` does it on Ray (one task
per item, shared arrays through the object store, conversions on each machine's actor pool).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Protocol

from rayrt.convert.convert import convert_for_machine
from rayrt.convert.policy import ConversionOptions
from rayrt.convert.results import ConversionResult
from rayrt.machines import get_machine
from rayrt.optimize.standard import PlanGeometry, StandardPlan

__all__ = ["Executor", "LocalExecutor", "Progress"]

Progress = Callable[[int, int, str], None]
"""``progress(done, total, message)``: units of a stage's work finished (it may raise to cancel)."""


class Executor(Protocol):
    """The interface every stage runs against."""

    #: numba threads inside each fanned-out task (0: leave numba's default, i.e. every core)
    threads_per_task: int

    def put(self, value: Any) -> Any:
        """Share a large value once; the handle is passed to ``map``."""
        ...

    def map(
        self, fn: Callable[..., Any], items: Iterable[Any], *shared: Any, progress: Progress | None = None
    ) -> list[Any]:
        """``[fn(item, *shared) for item in items]``, in item order; ``progress(done, total, "")`` as items finish."""
        ...

    def available_cpus(self) -> int:
        """CPUs the executor can run tasks on now (at least 1)."""
        ...

    def convert_machines(
        self,
        standard: StandardPlan,
        geometry: PlanGeometry,
        machines: list[str],
        options: ConversionOptions,
        progress: Progress | None = None,
    ) -> list[ConversionResult | BaseException]:
        """Each machine's :func:`rayrt.convert.convert.convert_for_machine` result (or the
        exception it raised), in the order of ``machines``."""
        ...


class LocalExecutor:
    """Runs everything in this process: ``put`` is the identity, ``map`` a loop, conversions one
    machine after the other."""

    threads_per_task = 0

    def put(self, value: Any) -> Any:
        return value

    def map(
        self, fn: Callable[..., Any], items: Iterable[Any], *shared: Any, progress: Progress | None = None
    ) -> list[Any]:
        items = list(items)
        out = []
        for n, item in enumerate(items, 1):
            out.append(fn(item, *shared))
            if progress is not None:
                progress(n, len(items), "")
        return out

    def available_cpus(self) -> int:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

    def convert_machines(
        self,
        standard: StandardPlan,
        geometry: PlanGeometry,
        machines: list[str],
        options: ConversionOptions,
        progress: Progress | None = None,
    ) -> list[ConversionResult | BaseException]:
        out: list[ConversionResult | BaseException] = []
        for n, name in enumerate(machines, 1):
            try:
                r = convert_for_machine(standard, geometry, get_machine(name), options)
                out.append(r)
                note = f"{name}: {r.status} ({r.mode})"
            except Exception as exc:  # this machine fails with the reason; the others go on
                out.append(exc)
                note = f"{name}: conversion error"
            if progress is not None:
                progress(n, len(machines), note)
        return out
