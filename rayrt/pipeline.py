"""The planning recipe as a list of plain stages, the same locally and on Ray.

A :class:`Stage` is a named plain function of typed inputs returning one typed output. Inputs
are *artefacts* named by the function's parameters (``study``, ``order`` ...); the output is
stored under the stage's ``output`` name for the stages after it. The run starts from two
artefacts: ``source`` (where the study comes from, see :func:`load_source`) and ``order``
(a :class:`~rayrt.domain.order.MedicalOrder` or None).

A function that declares a parameter named ``ctx`` receives a :class:`StageContext`: it reports
sub-progress (``ctx.progress(done, total)``), and fans work out through ``ctx.executor``
(:class:`LocalExecutor` here, a Ray executor in :mod:`rayrt.service.controlled`), using large
arrays that were put once into ``ctx.shared`` (the CT and the structure masks after ``load``;
object-store references on Ray, the arrays themselves locally).

Registering a stage::

    @stage("dose", output="dose", after="structures")
    def dose(study: Study, order: MedicalOrder, ctx: StageContext) -> DoseResult: ...

Later stages (beamlets, optimize, sequence, convert, qa, export) register the same way; the
runner (:func:`run_stages`) does not change. This module is the core: no Ray, no HTTP.
"""

from __future__ import annotations

import csv
import inspect
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
from pydantic import BaseModel, Field

from rayrt.domain.errors import InputError
from rayrt.domain.order import MedicalOrder, parse_order


# ---------------------------------------------------------------------------- execution
class Executor(Protocol):
    """Where a stage's fan-out runs. ``put`` shares a large value once; ``map`` applies a
    module-level function to items, passing the shared handles as extra arguments."""

    def put(self, value: Any) -> Any: ...

    def map(self, fn: Callable[..., Any], items: Iterable[Any], *shared: Any) -> list[Any]: ...


class LocalExecutor:
    """Runs everything in this process: ``put`` is the identity, ``map`` a loop."""

    def put(self, value: Any) -> Any:
        return value

    def map(self, fn: Callable[..., Any], items: Iterable[Any], *shared: Any) -> list[Any]:
        return [fn(item, *shared) for item in items]


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


# ---------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class Stage:
    """One step of the recipe."""

    name: str
    func: Callable[..., Any]
    output: str
    inputs: tuple[str, ...]
    optional: frozenset[str]
    wants_ctx: bool
    output_type: Any = None
    when: Callable[[dict[str, Any]], str | None] | None = None
    persist: bool = True
    shares: Callable[[Any], dict[str, np.ndarray]] | None = None
    description: str = ""

    def skip_reason(self, artefacts: dict[str, Any]) -> str | None:
        """Why this stage does not apply to these artefacts (None = it runs)."""
        return self.when(artefacts) if self.when else None

    def run(self, artefacts: dict[str, Any], ctx: StageContext) -> Any:
        kwargs = {}
        for name in self.inputs:
            if name in artefacts:
                kwargs[name] = artefacts[name]
            elif name not in self.optional:
                raise KeyError(f"stage {self.name!r} needs artefact {name!r}, which no earlier stage produced")
        if self.wants_ctx:
            kwargs["ctx"] = ctx
        return self.func(**kwargs)


REGISTRY: dict[str, Stage] = {}
ORDER: list[str] = []


def stage(
    name: str,
    *,
    output: str,
    after: str | None = None,
    when: Callable[[dict[str, Any]], str | None] | None = None,
    persist: bool = True,
    shares: Callable[[Any], dict[str, np.ndarray]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as a stage (after stage ``after``, else at the end of the recipe)."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(func)
        params = [p for p in sig.parameters.values() if p.name != "ctx"]
        st = Stage(
            name=name,
            func=func,
            output=output,
            inputs=tuple(p.name for p in params),
            optional=frozenset(p.name for p in params if p.default is not inspect.Parameter.empty),
            wants_ctx="ctx" in sig.parameters,
            output_type=sig.return_annotation,
            when=when,
            persist=persist,
            shares=shares,
            description=(func.__doc__ or "").strip().split("\n")[0],
        )
        if name in ORDER:
            ORDER.remove(name)
        REGISTRY[name] = st
        ORDER.insert(ORDER.index(after) + 1 if after in ORDER else len(ORDER), name)
        return func

    return register


def default_stages(names: Iterable[str] | None = None) -> list[Stage]:
    """The registered stages in recipe order (optionally only ``names``, still in recipe order)."""
    wanted = None if names is None else set(names)
    if wanted is not None and (unknown := wanted - set(REGISTRY)):
        raise InputError(f"unknown stage(s) {sorted(unknown)}; known: {ORDER}", kind="pipeline", field="stages")
    return [REGISTRY[n] for n in ORDER if wanted is None or n in wanted]


def result_model(st: Stage) -> type[BaseModel] | None:
    """The pydantic class of a stage's output (for reading a stored result back), if it has one."""
    t = st.output_type
    if isinstance(t, str):
        t = st.func.__globals__.get(t)
    return t if isinstance(t, type) and issubclass(t, BaseModel) else None


# ---------------------------------------------------------------------------- runner
@dataclass
class PipelineResult:
    artefacts: dict[str, Any]
    events: list[StageEvent]

    def __getitem__(self, name: str) -> Any:
        return self.artefacts[name]


def run_stages(
    stages: list[Stage],
    artefacts: dict[str, Any],
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


def run_local(
    source: Any,
    order: MedicalOrder | dict | str | Path | None = None,
    *,
    stages: Iterable[str] | None = None,
    out_dir: str | Path | None = None,
    on_event: Callable[[StageEvent], None] | None = None,
    planning: Any = None,
    executor: Executor | None = None,
) -> PipelineResult:
    """Run the recipe in this process: ``source`` is a DICOM folder, a zip, or a Study.

    ``planning`` (a :class:`rayrt.stages.PlanningRequest` or its mapping) turns on the planning
    stages (geometry ... export); without it they are skipped.

    ``order`` is a MedicalOrder, its JSON mapping, or a .yaml/.json file; it is checked against
    the study's structure names. With ``out_dir``, each stage's result files are written to
    ``out_dir/<stage>/`` (the same names the service stores).
    """
    sink = None
    if out_dir is not None:
        out_path = Path(out_dir)

        def sink(st: Stage, out: Any) -> None:
            d = out_path / st.name
            d.mkdir(parents=True, exist_ok=True)
            for name, data in write_result_files(out).items():
                (d / name).write_bytes(data)

    artefacts: dict[str, Any] = {"source": source, "order": _as_order(order)}
    if planning is not None:
        from rayrt.stages import PlanningRequest

        artefacts["planning"] = planning if isinstance(planning, PlanningRequest) else PlanningRequest.model_validate(planning)
    return run_stages(default_stages(stages), artefacts, executor=executor, on_event=on_event, sink=sink)


def _as_order(order: MedicalOrder | dict | str | Path | None) -> MedicalOrder | None:
    if order is None or isinstance(order, MedicalOrder):
        return order
    if isinstance(order, dict):
        return parse_order(order)
    from rayrt.domain.order import load_order

    return load_order(order)


def validate_order(order: dict | MedicalOrder, structure_names: Iterable[str]) -> MedicalOrder:
    """Parse an order and check every structure it names exists (InputError 422 otherwise)."""
    mo = order if isinstance(order, MedicalOrder) else parse_order(order, "in request")
    mo.check_structures(structure_names)
    return mo


# ---------------------------------------------------------------------------- the stages
def _csv(header: list[str], rows: list[list[Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


class StudySource(Protocol):
    """Anything that can produce a Study (a stored patient, an upload ...)."""

    def load(self) -> Any: ...


def load_source(source: Any) -> Any:
    """A Study from ``source``: an object with ``load()``, a Study, or a DICOM folder / zip path."""
    if hasattr(source, "load") and callable(source.load):
        return source.load()
    if isinstance(source, (str, Path)):
        from rayrt.imaging.study import load_study

        return load_study(source)
    if hasattr(source, "primary") and hasattr(source, "structures"):
        return source
    raise InputError(f"cannot load a study from {type(source).__name__}", kind="pipeline", field="source")


def _share_study(study: Any) -> dict[str, np.ndarray]:
    shared = {"image": study.primary.array}
    for sm in study.structures:
        shared[f"mask:{sm.structure.name}"] = np.asarray(sm.mask, dtype=bool)
    for n, dose in enumerate(study.doses):
        shared[f"dose:{n}"] = dose.array
    return shared


@stage("load", output="study", persist=False, shares=_share_study)
def load(source: Any) -> Any:
    """Load the patient's study (CT/MR/PET series, structures, doses) from its source."""
    return load_source(source)


class StructureStats(BaseModel):
    """Geometry of one structure on the primary image grid (LPS, mm)."""

    name: str
    kind: str
    num_voxels: int = Field(ge=0)
    volume_cc: float = Field(ge=0, description="voxel count x voxel volume, cm³")
    centroid_mm: tuple[float, float, float] | None = Field(default=None, description="LPS centre of mass of the voxel centres")
    bbox_min_mm: tuple[float, float, float] | None = None
    bbox_max_mm: tuple[float, float, float] | None = None


class StructureReport(BaseModel):
    """Result of the ``structures`` stage."""

    grid_shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    voxel_volume_cc: float
    structures: list[StructureStats]
    empty: list[str] = Field(default_factory=list, description="structures with no voxel on the grid")

    def files(self) -> dict[str, bytes]:
        return {"structures.csv": _csv(["name", "kind", "num_voxels", "volume_cc"],
                                       [[s.name, s.kind, s.num_voxels, f"{s.volume_cc:.4f}"] for s in self.structures])}


@stage("structures", output="structure_report")
def structures(study: Any, ctx: StageContext) -> StructureReport:
    """Volumes (cm³), centroids and bounding boxes of every structure on the primary grid."""
    grid = study.primary.grid
    vv = grid.voxel_volume_cc
    stats, empty = [], []
    n = len(study.structures)
    for done, sm in enumerate(study.structures, 1):
        idx = np.argwhere(np.asarray(sm.mask, dtype=bool))  # (N, 3) as k, j, i
        kind = getattr(sm.structure.kind, "value", str(sm.structure.kind))
        if len(idx) == 0:
            stats.append(StructureStats(name=sm.structure.name, kind=kind, num_voxels=0, volume_cc=0.0))
            empty.append(sm.structure.name)
        else:
            xyz = grid.index_to_world(idx)
            stats.append(
                StructureStats(
                    name=sm.structure.name,
                    kind=kind,
                    num_voxels=len(idx),
                    volume_cc=len(idx) * vv,
                    centroid_mm=tuple(float(v) for v in xyz.mean(axis=0)),
                    bbox_min_mm=tuple(float(v) for v in xyz.min(axis=0)),
                    bbox_max_mm=tuple(float(v) for v in xyz.max(axis=0)),
                )
            )
        ctx.progress(done, n)
    return StructureReport(grid_shape=grid.shape, spacing_mm=grid.spacing_mm, voxel_volume_cc=vv, structures=stats, empty=empty)


class DoseDVH(BaseModel):
    """DVH metrics of every structure for one dose distribution, on the primary image grid."""

    dose_index: int
    max_dose_gy: float
    method: str = "dose resampled trilinearly onto the primary image grid; voxel-centre masks"
    metrics: list[dict[str, Any]]


class DVHReport(BaseModel):
    """Result of the ``dvh`` stage (one entry per dose that came with the study)."""

    doses: list[DoseDVH]

    def files(self) -> dict[str, bytes]:
        keys: list[str] = []
        for d in self.doses:
            for m in d.metrics:
                keys += [k for k in m if k not in keys and not isinstance(m[k], (list, dict))]
        rows = [[d.dose_index, *(m.get(k, "") for k in keys)] for d in self.doses for m in d.metrics]
        return {"dvh.csv": _csv(["dose_index", *keys], rows)}


def _no_dose(artefacts: dict[str, Any]) -> str | None:
    study = artefacts.get("study")
    return None if study is not None and getattr(study, "doses", None) else "the study has no dose (RTDOSE)"


@stage("dvh", output="dvh_report", when=_no_dose)
def dvh(study: Any, ctx: StageContext) -> DVHReport:
    """Cumulative-DVH metrics (Dmin/Dmean/Dmax, D95 ...) per structure for each dose in the study."""
    from rayrt.qa.dvh import dvh_metrics

    grid = study.primary.grid
    total = len(study.doses) * max(1, len(study.structures))
    done = 0
    reports = []
    for n, dose in enumerate(study.doses):
        on_grid = dose.resample(grid, order=1, fill=0.0).array.astype(np.float64)
        metrics = []
        for sm in study.structures:
            m = dvh_metrics(on_grid, np.asarray(sm.mask, dtype=bool), grid.voxel_volume_cc, sm.structure.name)
            metrics.append(m.model_dump(mode="json") if isinstance(m, BaseModel) else dict(m))
            done += 1
            ctx.progress(done, total)
        reports.append(DoseDVH(dose_index=n, max_dose_gy=float(np.max(dose.array)), metrics=metrics))
    return DVHReport(doses=reports)


# ---------------------------------------------------------------------------- the planning recipe
# geometry -> beamlets -> dij -> problem -> fmo -> sequence -> dao -> normalize -> convert -> qa ->
# export register themselves here (rayrt/stages.py; imported last: it uses this module's names).
import rayrt.stages  # noqa: E402,F401
