"""Stages and the runner that runs them in order, the same in one process and on Ray.

A :class:`Stage` is a named plain function of typed inputs returning one typed output. Inputs
are *artefacts* named by the function's parameters (``study``, ``order``, ``geometry`` ...); the
output is stored under the stage's ``output`` name for the stages after it. A function that
declares a parameter named ``ctx`` receives a :class:`StageContext`: it reports sub-progress
(``ctx.progress(done, total)``) and fans work out through ``ctx.executor``
(:class:`~rayrt.pipeline.executor.Executor`), using large arrays put once into ``ctx.shared``.

Every persistent stage's output is a pydantic model whose JSON (``result.json``) and extra files
(``files()``: .npy/.npz/DICOM) are what a run stores; models holding arrays rebuild themselves
from those files (``from_files(data, read)``), so a restarted job resumes after its last
finished stage (:func:`restore_output`). This module is the core: no Ray, no HTTP.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel

from rayrt.pipeline.executor import Executor, LocalExecutor

__all__ = [
    "Stage",
    "StageContext",
    "StageEvent",
    "PipelineResult",
    "stage_of",
    "run_stages",
    "write_result_files",
    "restore_output",
    "result_model",
    "Artefacts",
]

Artefacts = dict[str, Any]
"""The named values of one run: ``source``, ``order``, ``planning`` and every stage's output."""


@dataclass
class StageEvent:
    """Progress of one stage: kind is started, progress, finished, skipped, reused or failed."""

    stage: str
    kind: str
    done: int = 0
    total: int = 0
    message: str = ""
    time: float = field(default_factory=time.time)


class StageContext:
    """What a running stage may use besides its inputs."""

    def __init__(self, stage: str, executor: Executor, shared: dict[str, Any], emit: Callable[[StageEvent], None]):
        self.stage = stage
        self.executor = executor
        self.shared = shared
        self._emit = emit

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Report that ``done`` of ``total`` units of this stage's work are finished."""
        self._emit(StageEvent(self.stage, "progress", int(done), int(total), message))

    def share(self, key: str, value: Callable[[], Any]) -> Any:
        """The executor handle of ``key``, put once per run (later stages and resumed runs reuse it)."""
        if key not in self.shared:
            self.shared[key] = self.executor.put(value())
        return self.shared[key]

    def map(self, fn: Callable[..., Any], items: list, *shared: Any) -> list:
        """``executor.map`` with this stage's progress reported as items finish."""

        def progress(done: int, total: int, message: str = "") -> None:
            self.progress(done, total, message)

        return self.executor.map(fn, items, *shared, progress=progress)


@dataclass(frozen=True)
class Stage:
    """One step of the recipe (see :func:`stage_of`)."""

    name: str
    func: Callable[..., Any]
    output: str
    inputs: tuple[str, ...]
    optional: frozenset[str]
    wants_ctx: bool
    output_type: Any = None
    when: Callable[[Artefacts], str | None] | None = None
    persist: bool = True
    shares: Callable[[Any], dict[str, np.ndarray]] | None = None
    updates: Callable[[Artefacts, Any], None] | None = None
    description: str = ""

    def skip_reason(self, artefacts: Artefacts) -> str | None:
        """Why this stage does not apply to these artefacts (None = it runs)."""
        return self.when(artefacts) if self.when else None

    def run(self, artefacts: Artefacts, ctx: StageContext) -> Any:
        kwargs = {}
        for name in self.inputs:
            if name in artefacts:
                kwargs[name] = artefacts[name]
            elif name not in self.optional:
                raise KeyError(f"stage {self.name!r} needs artefact {name!r}, which no earlier stage produced")
        if self.wants_ctx:
            kwargs["ctx"] = ctx
        return self.func(**kwargs)


def stage_of(
    func: Callable[..., Any],
    *,
    name: str | None = None,
    output: str,
    when: Callable[[Artefacts], str | None] | None = None,
    persist: bool = True,
    shares: Callable[[Any], dict[str, np.ndarray]] | None = None,
    updates: Callable[[Artefacts, Any], None] | None = None,
) -> Stage:
    """A :class:`Stage` running ``func``: its parameters name the artefacts it reads (``ctx`` is
    the :class:`StageContext`), its return annotation the model it stores; ``when(artefacts)``
    gives a reason to skip it (None: it runs); ``shares(output)`` names arrays put once for the
    stages after it; ``persist=False`` keeps the output in memory only; ``updates(artefacts,
    output)`` replaces earlier artefacts with what the output decided (e.g. the chosen beams'
    geometry, bixels and Dij), both when the stage runs and when its stored output is reused."""
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.name != "ctx"]
    return Stage(
        name=name or func.__name__,
        func=func,
        output=output,
        inputs=tuple(p.name for p in params),
        optional=frozenset(p.name for p in params if p.default is not inspect.Parameter.empty),
        wants_ctx="ctx" in sig.parameters,
        output_type=sig.return_annotation,
        when=when,
        persist=persist,
        shares=shares,
        updates=updates,
        description=(func.__doc__ or "").strip().split("\n")[0],
    )


def result_model(st: Stage) -> type[BaseModel] | None:
    """The pydantic class of a stage's output (for reading a stored result back), if it has one."""
    t = st.output_type
    if isinstance(t, str):
        t = st.func.__globals__.get(t)
    return t if isinstance(t, type) and issubclass(t, BaseModel) else None


@dataclass
class PipelineResult:
    artefacts: Artefacts
    events: list[StageEvent]

    def __getitem__(self, name: str) -> Any:
        return self.artefacts[name]


def run_stages(
    stages: list[Stage],
    artefacts: Artefacts,
    *,
    executor: Executor | None = None,
    on_event: Callable[[StageEvent], None] | None = None,
    sink: Callable[[Stage, Any], None] | None = None,
    previous: Callable[[Stage], Any] | None = None,
) -> PipelineResult:
    """Run ``stages`` in order on ``artefacts`` (updated in place).

    ``sink(stage, output)`` persists each persistent stage's output before the next stage starts;
    ``previous(stage)`` may return a stored output to reuse instead of running the stage (resume
    after a restart). Exceptions propagate after a ``failed`` event.
    """
    executor = executor or LocalExecutor()
    events: list[StageEvent] = []
    shared: dict[str, Any] = artefacts.setdefault("_shared", {})

    def emit(ev: StageEvent) -> None:
        events.append(ev)
        if on_event:
            on_event(ev)

    for st in stages:
        reason = st.skip_reason(artefacts)
        if reason:
            artefacts[st.output] = None
            emit(StageEvent(st.name, "skipped", message=reason))
            continue
        out = previous(st) if previous is not None else None
        if out is not None:
            artefacts[st.output] = out
            if st.updates is not None:
                st.updates(artefacts, out)
            emit(StageEvent(st.name, "reused", 1, 1, "result found in the store"))
            continue
        emit(StageEvent(st.name, "started"))
        try:
            out = st.run(artefacts, StageContext(st.name, executor, shared, emit))
            if st.shares is not None and out is not None:
                for key, value in st.shares(out).items():
                    shared[key] = executor.put(value)
            if sink is not None and st.persist and out is not None:
                sink(st, out)
        except BaseException as exc:
            emit(StageEvent(st.name, "failed", message=f"{type(exc).__name__}: {exc}"))
            raise
        artefacts[st.output] = out
        if st.updates is not None and out is not None:
            st.updates(artefacts, out)
        emit(StageEvent(st.name, "finished", 1, 1))
    return PipelineResult(artefacts, events)


def write_result_files(out: Any) -> dict[str, bytes]:
    """The files a stage output is stored as: ``result.json`` plus any the model adds via ``files()``."""
    files: dict[str, bytes] = {}
    if isinstance(out, BaseModel):
        files["result.json"] = out.model_dump_json(indent=1).encode("utf-8")
    extra = getattr(out, "files", None)
    if callable(extra):
        files.update(extra())
    return files


def restore_output(st: Stage, read: Callable[[str], bytes]) -> Any:
    """A stage's stored output rebuilt from its files (``read(name) -> bytes``), or None when the
    stage has no pydantic result model. Models with arrays rebuild them in ``from_files``."""
    model = result_model(st)
    if model is None:
        return None
    data = json.loads(read("result.json"))
    fn = getattr(model, "from_files", None)
    return fn(data, read) if callable(fn) else model.model_validate(data)
