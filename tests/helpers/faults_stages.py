"""Test-only pipeline stages for the fault-tolerance tests (NOT imported by the test process).

A service started with ``stage_modules=[<path of this file>]`` loads this module in each of its
ControlledComputer actors (``rayrt.service.controlled.load_stage_modules``); its :data:`STAGES`
run after each job's recipe:

* ``fault_mark``: quick; its result carries a fresh ``run_id`` and the computer's pid, so a test
  can tell whether a stored result was reused (same ``run_id``) or recomputed.
* ``fault_slow``: fans out :data:`FAULT_TASKS` Ray tasks that each sleep :data:`FAULT_TASK_S`
  seconds (the executor streams tasks done/total as progress), long enough to kill the
  computer, the whole service, or cancel the job in the middle of the stage.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

from pydantic import BaseModel

from rayrt.pipeline import StageContext, stage_of

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


def fault_mark(study: object) -> FaultMark:
    """Quick marker stage: a fresh run id per execution."""
    return FaultMark(run_id=uuid.uuid4().hex, pid=os.getpid(), finished_at=time.time())


def fault_slow(fault_mark: FaultMark, ctx: StageContext) -> FaultSlow:
    """Slow fan-out stage: FAULT_TASKS sleeping tasks, progress as tasks finish."""
    ctx.progress(0, FAULT_TASKS, f"{FAULT_TASKS} tasks")
    squares = ctx.map(slow_task, list(range(FAULT_TASKS)))
    return FaultSlow(run_id=uuid.uuid4().hex, pid=os.getpid(), squares=[int(v) for v in squares])


STAGES = [stage_of(fault_mark, output="fault_mark"), stage_of(fault_slow, output="fault_slow")]
