"""Awaiting a Ray task from the ingress: its result, or the caller's own InputError.

A task that refuses its input raises :class:`rayrt.domain.errors.InputError`; Ray hands it back
wrapped in a ``RayTaskError``. :func:`task_result` unwraps it, so that the route answers the 4xx
the task chose (with its ``field``) instead of a 500; any other failure is raised as Ray gave it.
"""

from __future__ import annotations

from typing import Any

import ray

from rayrt.domain.errors import InputError


async def task_result(ref: Any) -> Any:
    """The result of the Ray task ``ref``; an InputError raised in the task is raised as itself."""
    try:
        return await ref
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, InputError):
            raise exc.cause from None
        raise
