"""Test-only pipeline stages for the fault-tolerance tests (NOT imported by the test process).

A service started with ``stage_modules=[<path of this file>]`` imports this module in each of
its ControlledComputer actors (``rayrt.service.controlled.import_stage_modules``), which
registers two stages at the end of the recipe:

* ``fault_mark``: quick; its result carries a fresh ``run_id`` and the computer's pid, so a test
  can tell whether a stored result was reused (same ``run_id``) or recomputed.
* ``fault_slow``: fans out :data:`FAULT_TASKS` Ray tasks that each sleep :data:`FAULT_TASK_S`
  seconds (the executor streams tasks done/total as progress), long enough to kill the
  computer, the whole service, or cancel the job in the middle of the stage.

The test process itself must not import this module: the registry is global, and the other
tests' in-process pipelines (``run_local``) would then run these stages too.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

from pydantic import BaseModel

from rayrt.pipeline import StageContext, stage

FAULT_TASKS = int(os.environ.get("RAYRT_FAULT_TASKS", "12"))
FAULT_TASK_S = float(os.environ.get("RAYRT_FAULT_TASK_S", "0.5"))


def _register_by_value() -> None:
    """Ray task workers cannot import this file: ship its functions by value."""
    try:
        import ray.cloudpickle as cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    except Exception:  # pragma: no cover - only without Ray
        pass


_register_by_value()


class FaultMark(BaseModel):
    run_id: str
    pid: int
    finished_at: float


class FaultSlow(BaseModel):
    run_id: str
    pid: int
    squares: list[int]


def slow_task(i: int) -> int:
    """One fan-out task: sleep, then return i²."""
    time.sleep(FAULT_TASK_S)
    return i * i


@stage("fault_mark", output="fault_mark")
def fault_mark(study: object) -> FaultMark:
    """Quick marker stage: a fresh run id per execution."""
    return FaultMark(run_id=uuid.uuid4().hex, pid=os.getpid(), finished_at=time.time())


@stage("fault_slow", output="fault_slow", after="fault_mark")
def fault_slow(fault_mark: FaultMark, ctx: StageContext) -> FaultSlow:
    """Slow fan-out stage: FAULT_TASKS sleeping tasks, progress as tasks finish."""
    ctx.progress(0, FAULT_TASKS, f"{FAULT_TASKS} tasks")
    squares = ctx.executor.map(slow_task, list(range(FAULT_TASKS)))
    ctx.progress(FAULT_TASKS, FAULT_TASKS)
    return FaultSlow(run_id=uuid.uuid4().hex, pid=os.getpid(), squares=[int(v) for v in squares])
