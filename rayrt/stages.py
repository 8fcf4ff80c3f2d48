"""The planning recipe as pipeline stages: the standard plan, its conversion to every target
machine, QA and DICOM export — the same functions in one process and on Ray.

Registered in :mod:`rayrt.pipeline`'s stage registry after ``load -> structures -> dvh``::

    geometry   density (relative electron density, on the CT grid), dose grid, isocenter, beams
    beamlets   bixel grid of every beam (fan-out: one task per beam; target mask shared once)
    dij        dose-influence matrix (fan-out: one task per beam x beamlet chunk, density shared
               once, chunks sized from the free CPUs, reassembled bit-exactly with hstack_exact)
    problem    the order's objectives on the Dij rows that matter (in memory only, rebuilt on resume)
    fmo        fluence-map optimisation on the standard machine
    sequence   leaf sequencing of the optimal fluence onto the standard MLC
    dao        direct aperture optimisation of those segments
    normalize  standard plan: MU normalised to the prescription, final dose (Gy)
    convert    standard plan -> plan for each target machine with rayrt.convert's convert_for_machine
               (coincidence, recompute mode, target beam model, QA-gated release); on Ray on each
               machine's conversion ActorPool (rayrt.service.conversion), locally in this process
    qa         standard plan: independent dose, DVH criteria, deliverability; converted plans: the
               release loop's QA report is reused (gamma vs standard, independent check, agreement)
    export     RTSTRUCT once, RTPLAN + RTDOSE per machine, DVH CSV, QA JSON, summary.json

Planning runs only when the run carries a ``planning`` artefact (a :class:`PlanningRequest`) and
an order; otherwise these stages are ``skipped`` with the reason, so a structures-only job stays
cheap. Every stage returns a pydantic model whose JSON (and ``files()``: .npy/.npz/DICOM) is what
the runner stores; models holding arrays rebuild themselves from those files
(``from_files(data, read)``), so a restarted job resumes after its last finished stage.

Fan-out goes through ``ctx.executor`` (``put`` once, ``map`` a module-level function): in one
process the LocalExecutor loops (numba uses every core inside each call); on Ray each item is a
1-CPU task with one numba thread (``threads_per_task``), and the shared arrays travel once
through the object store and are read zero-copy. This module is the core: no Ray, no HTTP.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any, Callable, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rayrt.domain.errors import InputError
from rayrt.domain.order import MedicalOrder
from rayrt.domain.plan import Beam, Plan, Segment
from rayrt.imaging.volume import Grid, Volume
from rayrt.pipeline import StageContext, _csv, stage
from rayrt.qa.report import QAReport

__all__ = [
    "PlanningRequest", "PlanGeometry", "BeamletSet", "DijResult", "FluenceStage", "SequencedPlan", "ApertureStage",
    "StandardPlan", "MachinePlan", "ConvertedPlans", "QAStage", "ExportResult", "PLANNING_STAGES", "plan_local",
    "dij_chunk_task", "beamlet_task", "qa_task", "assemble_dij", "chunk_plan", "standard_input", "conversion_options", "machine_plan",
    "convert_local", "restore_output", "goals_of",
]

PLANNING_STAGES = ["geometry", "beamlets", "dij", "problem", "fmo", "sequence", "dao", "normalize", "convert", "qa", "export"]


# ---------------------------------------------------------------------------- request
class PlanningRequest(BaseModel):
    """What to plan: target machines and the planning settings (doses in Gy, lengths in mm)."""

    model_config = ConfigDict(extra="forbid")

    machines: list[str] = Field(default_factory=list, description="target treatment machines (configs/machines names); empty = standard plan only")
    standard_machine: str | None = Field(default=None, description="machine the standard plan is optimised on (default: the library's standard machine)")
    gantry_deg: list[float] | None = Field(default=None, description="IEC 61217 gantry angles; default num_beams equispaced from 0")
    num_beams: int = Field(default=9, ge=1, le=72)
    dose_grid_mm: float = Field(default=5.0, gt=0, le=20)
    bixel_mm: float = Field(default=5.0, gt=0, le=20)
    margin_mm: float = Field(default=5.0, ge=0, le=30)
    bixel_columns: Literal["edge", "isocenter"] = Field(
        default="edge", description="alignment of the bixel columns along the leaf-travel direction (rows are always the leaf pairs): "
                                    "'edge' = column edges at multiples of bixel_mm from the central axis; 'isocenter' = bixels centred "
                                    "on it (centres at multiples of bixel_mm, as matRad/pyRadPlan)")
    dij_cutoff_mm: float = Field(default=50.0, gt=0, description="lateral kernel cut-off of the pencil beams")
    dij_threshold: float = Field(default=1e-4, ge=0, lt=1, description="relative Dij entries below this are dropped")
    chunks_per_cpu: int = Field(default=2, ge=1, le=64, description="Dij tasks per free CPU (load balance vs per-chunk depth overhead)")
    max_segments: int = Field(default=10, ge=1, le=100)
    sequencer: str = "sweep"
    conversion_mode: Literal["reuse", "dose_only", "mu_refit", "fluence", "dao"] | None = Field(
        default=None, description="force the recompute mode of each conversion's first attempt (None: rayrt.convert's policy from the coincidence verdict)")
    conversion_options: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of rayrt.convert.policy.ConversionOptions (configs/conversion.yaml, section conversion), e.g. "
                    "{max_attempts: 1, fmo_iterations: 60}")
    fmo_iterations: int = Field(default=200, ge=1)
    dao_rounds: int = Field(default=2, ge=1)
    dao_iterations: int = Field(default=30, ge=1)
    qa_independent_dose: bool = Field(default=True, description="recompute each plan's dose with the aperture engine (rayrt.dose.aperture)")
    qa_grid_mm: float | None = Field(default=None, gt=0, description="grid of the independent dose (default: the dose grid)")
    qa_bixel_mm: float = Field(default=2.5, gt=0, le=20, description="bixel width of the independent aperture dose engine")
    qa_figures: bool = Field(default=False, description="also render qa_<machine>.png (matplotlib, ~1 s per machine)")

    @field_validator("conversion_options")
    @classmethod
    def _known_conversion_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        from rayrt.convert.policy import ConversionOptions

        if "mode" in v:
            raise ValueError("give the recompute mode as conversion_mode, not conversion_options.mode")
        ConversionOptions.model_validate(v)  # unknown keys / bad values: 422 before the job is queued
        return v

    def angles(self) -> list[float]:
        if self.gantry_deg:
            return [float(a) % 360.0 for a in self.gantry_deg]
        return [round(i * 360.0 / self.num_beams, 6) for i in range(self.num_beams)]


def _no_plan(artefacts: dict[str, Any]) -> str | None:
    if artefacts.get("planning") is None:
        return "no planning requested (no target machines / planning options)"
    if artefacts.get("order") is None:
        return "no medical order: nothing to plan"
    return None


def _skip_after(name: str) -> Callable[[dict[str, Any]], str | None]:
    def when(artefacts: dict[str, Any]) -> str | None:
        return _no_plan(artefacts) or (None if artefacts.get(name) is not None else f"no {name}")

    return when


# ---------------------------------------------------------------------------- helpers
def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _from_npy(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _from_npz(b: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(b), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _shared(ctx: StageContext, key: str, value: Callable[[], Any]) -> Any:
    """The executor handle of ``key``, put once per run (later stages and resumed runs reuse it)."""
    if key not in ctx.shared:
        ctx.shared[key] = ctx.executor.put(value())
    return ctx.shared[key]


def _map(ctx: StageContext, fn: Callable[..., Any], items: list, *shared: Any) -> list:
    """``ctx.executor.map`` with per-item progress (``ctx.progress(done, total)``) when the executor
    supports a ``progress`` callback (Local/RayExecutor do), plain ``map`` otherwise."""
    import inspect

    try:
        takes = "progress" in inspect.signature(ctx.executor.map).parameters
    except (TypeError, ValueError):
        takes = False
    if takes:
        return ctx.executor.map(fn, items, *shared, progress=lambda done, total: ctx.progress(done, total))
    return ctx.executor.map(fn, items, *shared)


def _free_cpus(executor: Any) -> int:
    """CPUs the executor can run tasks on now (Ray: free cluster CPUs; locally: this machine's)."""
    fn = getattr(executor, "available_cpus", None)
    if callable(fn):
        try:
            return max(1, int(fn()))
        except Exception:  # a cluster query that failed: fall back to the local count
            pass
    return max(1, os.cpu_count() or 1)


def _task_threads(executor: Any) -> int:
    """numba threads per task: the executor's ``threads_per_task`` (Ray), else 0 = leave numba's default."""
    return int(getattr(executor, "threads_per_task", 0) or 0)


def _set_threads(n: int) -> None:
    if n > 0:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def _machine(name: str):
    from rayrt.machines import get_machine

    return get_machine(name)


def _standard_machine_name(req: PlanningRequest) -> str:
    if req.standard_machine:
        return req.standard_machine
    from rayrt.machines import list_machines

    for n in list_machines():
        if _machine(n).standard:
            return n
    raise InputError("no standard machine in configs/machines (a MachineModel with standard: true); name one in standard_machine", field="standard_machine")


def _dkey(volume_pct: float) -> str:
    return f"d{volume_pct:g}_gy".replace(".", "_")


def _dvh_table(dose: np.ndarray, masks: dict[str, np.ndarray], voxel_cc: float, order: MedicalOrder | None = None) -> dict[str, dict]:
    """Per structure: DVH metrics (Gy; rayrt.qa.dvh, voxel centres on the dose grid) plus D10 and
    every D_v the order's DVH objectives name."""
    from rayrt.qa.dvh import dose_at_volume, dvh_metrics

    extra = {10.0} | {float(o.volume_pct) for o in (order.objectives if order else []) if o.volume_pct is not None}
    out = {}
    for n, m in masks.items():
        if not m.any():
            continue
        met = dvh_metrics(dose, m, voxel_cc, n).model_dump()
        vals = dose[m]
        for v in sorted(extra):
            met.setdefault(_dkey(v), float(dose_at_volume(vals, v)))
        out[n] = met
    return out


# ---------------------------------------------------------------------------- geometry
class PlanGeometry(BaseModel):
    """Where the plan is computed: density, dose grid, isocenter, beams (LPS mm, IEC angles)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    standard_machine: str
    density_grid: Grid
    dose_grid: Grid
    isocenter_mm: tuple[float, float, float]
    beams: list[Beam]
    target: str
    external: str | None = None
    mask_names: list[str] = Field(default_factory=list, description="structures with masks on the dose grid")
    density: Any = Field(default=None, exclude=True, description="relative electron density [k, j, i] on density_grid")
    dose_masks: Any = Field(default=None, exclude=True, description="name -> bool mask on dose_grid")

    def density_volume(self) -> Volume:
        return Volume(self.density, self.density_grid, "relative_electron_density")

    def files(self) -> dict[str, bytes]:
        packed = {n: np.packbits(np.asarray(self.dose_masks[n], bool).ravel()) for n in self.mask_names}
        return {"density.npy": _npy(np.asarray(self.density, np.float32)), "dose_masks.npz": _npz(**packed)}

    @classmethod
    def from_files(cls, data: dict, read: Callable[[str], bytes]) -> "PlanGeometry":
        g = cls.model_validate(data)
        g.density = _from_npy(read("density.npy"))
        n = g.dose_grid.num_voxels
        g.dose_masks = {k: np.unpackbits(v)[:n].astype(bool).reshape(g.dose_grid.shape) for k, v in _from_npz(read("dose_masks.npz")).items()}
        return g


@stage("geometry", output="geometry", after="dvh", when=_no_plan)
def geometry(study: Any, order: MedicalOrder, planning: PlanningRequest | None = None, ctx: StageContext = None) -> PlanGeometry:
    """Density volume from the CT (HU -> relative electron density, 0 outside the external), the
    dose grid, structure masks on it, the isocenter (target centre of mass) and the beams."""
    from rayrt.dose.dij import dose_grid_for
    from rayrt.optimize.planner import masks_on_grid, planning_phantom

    req = planning
    std = _machine(_standard_machine_name(req))
    for m in req.machines:
        _machine(m)  # unknown target machine: InputError now, not after the optimisation
    order.check_structures(study.structure_names)
    ct = study.primary
    masks_ct, density, ext = planning_phantom(study, order.structure_names())
    dose_grid = dose_grid_for(ct.grid, req.dose_grid_mm)
    target = order.prescription.target
    if not masks_ct[target].any():
        raise InputError(f"the target {target!r} is empty on the image grid", field="order.prescription.target")
    iso = ct.grid.index_to_world(np.argwhere(masks_ct[target]).mean(axis=0))
    beams = [Beam(name=f"B{i + 1}", number=i + 1, gantry_deg=a, isocenter_mm=tuple(map(float, iso))) for i, a in enumerate(req.angles())]
    ctx.progress(1, 1)
    return PlanGeometry(standard_machine=std.name, density_grid=ct.grid, dose_grid=dose_grid, isocenter_mm=tuple(map(float, iso)), beams=beams,
                        target=target, external=ext, mask_names=sorted(masks_ct), density=density.array,
                        dose_masks=masks_on_grid(masks_ct, ct.grid, dose_grid))


# ---------------------------------------------------------------------------- beamlets
class BeamletSpec(BaseModel):
    """One beam's bixels (rayrt.dose.geometry.BeamletGrid as JSON)."""

    beam: Beam
    machine_name: str
    bixel_width_mm: float
    row_edges_mm: list[float]
    rows: list[int]
    cols: list[int]
    patient_position: str = "HFS"
    column_offset_mm: float = 0.0  # column c spans [offset + c*w, offset + (c+1)*w] (BeamletGrid.column_offset_mm)

    @classmethod
    def of(cls, bg) -> "BeamletSpec":
        return cls(beam=bg.beam, machine_name=bg.machine_name, bixel_width_mm=bg.bixel_width_mm, row_edges_mm=np.asarray(bg.row_edges_mm).tolist(),
                   rows=np.asarray(bg.rows).tolist(), cols=np.asarray(bg.cols).tolist(), patient_position=bg.patient_position,
                   column_offset_mm=float(bg.column_offset_mm))

    def grid(self):
        from rayrt.dose.geometry import BeamletGrid

        return BeamletGrid(self.beam, self.machine_name, self.bixel_width_mm, np.asarray(self.row_edges_mm, float),
                           np.asarray(self.rows, np.int64), np.asarray(self.cols, np.int64), self.patient_position,
                           column_offset_mm=self.column_offset_mm)


class BeamletSet(BaseModel):
    """Result of ``beamlets``: every beam's bixel grid on the standard machine."""

    beams: list[BeamletSpec]

    @property
    def counts(self) -> list[int]:
        return [len(b.rows) for b in self.beams]

    def grids(self) -> list:
        return [b.grid() for b in self.beams]

    def slices(self) -> list[slice]:
        offs = np.cumsum([0] + self.counts)
        return [slice(int(a), int(b)) for a, b in zip(offs[:-1], offs[1:])]


def beamlet_task(item: tuple, target_mask: np.ndarray) -> BeamletSpec:
    """Task: the bixel grid of one beam (``item`` = beam, machine, mask grid, bixel mm, margin mm[, column alignment])."""
    from rayrt.dose.geometry import beamlet_grid, column_offset_for

    beam, machine_name, grid, bixel_mm, margin_mm, *rest = item
    off = column_offset_for(rest[0], bixel_mm) if rest else 0.0
    return BeamletSpec.of(beamlet_grid(beam, _machine(machine_name), target_mask, grid, bixel_width_mm=bixel_mm, margin_mm=margin_mm,
                                       column_offset_mm=off))


@stage("beamlets", output="beamlet_set", after="geometry", when=_skip_after("geometry"))
def beamlets(geometry: PlanGeometry, planning: PlanningRequest | None = None, ctx: StageContext = None) -> BeamletSet:
    """Bixels covering each beam's-eye view of the target plus a margin (one task per beam)."""
    mask_ref = ctx.shared.get(f"mask:{geometry.target}")
    if mask_ref is None:  # a study whose structures were not shared by load
        raise InputError(f"no mask for the target {geometry.target!r}", field="order.prescription.target")
    items = [(b, geometry.standard_machine, geometry.density_grid, planning.bixel_mm, planning.margin_mm, planning.bixel_columns)
             for b in geometry.beams]
    specs = _map(ctx, beamlet_task, items, mask_ref)
    ctx.progress(len(specs), len(specs), f"{sum(len(s.rows) for s in specs)} bixels")
    return BeamletSet(beams=specs)


# ---------------------------------------------------------------------------- Dij
def chunk_plan(counts: list[int], free_cpus: int, chunks_per_cpu: int = 2, min_chunk: int = 16, work_per_bixel: list[float] | None = None,
               task_overhead_bixels: float = 16.0, tolerance: float = 0.03) -> list[tuple[int, int, int]]:
    """(beam, start, stop) beamlet chunks balanced over ``free_cpus``, in column order.

    Each chunk traces one beam's geometry (never crosses a beam). The estimated work of a chunk
    is its bixel count x the beam's ``work_per_bixel`` (e.g. its radiological path length;
    default 1) plus ``task_overhead_bixels`` (projection of the dose grid and depth terms every
    chunk repeats). Beams start whole; the beam with the largest pieces is split into one more
    equal piece (at least ``min_chunk`` bixels each) until there are at least ``free_cpus x
    chunks_per_cpu`` tasks *and* the longest-processing-time-first makespan on ``free_cpus``
    is within ``tolerance`` of the perfect split (total work / CPUs). E.g. 9 equal beams on 2
    CPUs: 9 whole beams would leave one CPU idle for a ninth of the run (5 vs 4 beams); one
    beam split in two balances them (4.5 + 4.5). Submit the chunks largest first
    (:func:`dij_chunk_order`) so the last one to start is short.
    """
    import heapq

    cpus = max(1, int(free_cpus))
    n = [int(c) for c in counts]
    wpb = [1.0] * len(n) if work_per_bixel is None else [max(1e-9, float(w)) for w in work_per_bixel]
    pieces = [1 if c > 0 else 0 for c in n]
    if not any(pieces):
        return []

    def piece_work(b: int) -> float:
        return n[b] / pieces[b] * wpb[b] + task_overhead_bixels

    def makespan() -> float:
        works = sorted((piece_work(b) for b in range(len(n)) for _ in range(pieces[b])), reverse=True)
        load = [0.0] * cpus
        for w in works:
            heapq.heapreplace(load, load[0] + w)
        return max(load)

    want = cpus * max(1, int(chunks_per_cpu))
    for _ in range(4 * sum(n)):  # bounded: every step adds a piece
        ideal = sum(n[b] * wpb[b] + pieces[b] * task_overhead_bixels for b in range(len(n))) / cpus
        if sum(pieces) >= want and makespan() <= (1.0 + tolerance) * ideal:
            break
        can = [b for b in range(len(n)) if pieces[b] and n[b] // (pieces[b] + 1) >= min_chunk]
        if not can:
            break
        b = max(can, key=piece_work)
        pieces[b] += 1
    out = []
    for b, c in enumerate(n):
        if not pieces[b]:
            continue
        edges = [round(i * c / pieces[b]) for i in range(pieces[b] + 1)]
        out += [(b, edges[i], edges[i + 1]) for i in range(pieces[b]) if edges[i + 1] > edges[i]]
    return out


def beam_path_mm(geometry: PlanGeometry, beam: Beam, machine_name: str, min_density: float = 0.05, step_mm: float = 2.0) -> float:
    """Length (mm) of the central axis of ``beam`` inside the patient (density >= ``min_density``):
    the depth every pencil beam of that beam traverses, i.e. its Dij work per bixel (to balance chunks)."""
    from rayrt.dose.geometry import BeamGeometry

    g = BeamGeometry.of(beam, _machine(machine_name))
    src = g.source_mm
    axis = (g.isocenter_mm - src) / np.linalg.norm(g.isocenter_mm - src)
    t = np.arange(-600.0, 600.0, step_mm)
    kji = np.rint(geometry.density_grid.world_to_index(g.isocenter_mm[None, :] + t[:, None] * axis[None, :])).astype(np.int64)
    dens = np.asarray(geometry.density)
    inside = np.all((kji >= 0) & (kji < np.asarray(dens.shape)), axis=1)
    k, j, i = kji[inside].T
    return float((dens[k, j, i] >= min_density).sum() * step_mm)  # nearest voxel, no copy of the volume


def dij_chunk_order(items: list) -> list[int]:
    """Submission order of ``dij_chunk_task`` items: largest chunk (bixels) first."""
    return sorted(range(len(items)), key=lambda i: -(items[i][5] - items[i][4]))


def dij_chunk_task(item: tuple, density: np.ndarray) -> sp.csc_matrix:
    """Task: Dij columns [start, stop) of one beam (Gy per MU-weight, float32 CSC over the dose grid).

    ``item`` = (BeamletSpec, machine name, density grid, dose grid, start, stop, cutoff mm,
    threshold, numba threads). ``density`` is the shared relative-electron-density array (a
    read-only object-store view on Ray: compute_dij reads it without copying).
    """
    from rayrt.dose.dij import compute_dij

    spec, machine_name, density_grid, dose_grid, start, stop, cutoff_mm, threshold, threads = item
    _set_threads(threads)
    return compute_dij(Volume(density, density_grid, "relative_electron_density"), dose_grid, spec.grid(), _machine(machine_name), start, stop,
                       cutoff_mm=cutoff_mm, threshold=threshold)


dij_chunk_task.task_order = dij_chunk_order  # RayExecutor.map submits in this order (LPT); results stay in column order


def assemble_dij(chunks: list[sp.csc_matrix]) -> sp.csc_matrix:
    """Chunks in column order -> one CSC matrix (rayrt.dose.dij.hstack_exact: one copy, bitwise)."""
    from rayrt.dose.dij import hstack_exact

    return hstack_exact(chunks)


class DijResult(BaseModel):
    """Result of ``dij``: the voxels x bixels dose-influence matrix (stored as dij.npz)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    num_voxels: int
    num_bixels: int
    nnz: int
    tasks: int
    chunk_bixels: list[int] = Field(default_factory=list)
    seconds: float = 0.0
    matrix: Any = Field(default=None, exclude=True, description="scipy.sparse.csc_matrix, float32")

    def files(self) -> dict[str, bytes]:
        buf = io.BytesIO()
        sp.save_npz(buf, self.matrix, compressed=False)
        return {"dij.npz": buf.getvalue()}

    @classmethod
    def from_files(cls, data: dict, read: Callable[[str], bytes]) -> "DijResult":
        r = cls.model_validate(data)
        r.matrix = sp.load_npz(io.BytesIO(read("dij.npz"))).tocsc()
        r.matrix.has_sorted_indices = True
        return r


@stage("dij", output="dij", after="beamlets", when=_skip_after("beamlet_set"))
def dij(geometry: PlanGeometry, beamlet_set: BeamletSet, planning: PlanningRequest | None = None, ctx: StageContext = None) -> DijResult:
    """Pencil-beam Dij of all bixels, fanned out per beam and beamlet chunk; density put once."""
    t0 = time.perf_counter()
    dens = _shared(ctx, "density", lambda: np.ascontiguousarray(geometry.density, dtype=np.float32))
    # work per bixel of each beam ~ its path through the patient (+ a floor for the lateral envelope)
    work = [50.0 + beam_path_mm(geometry, b.beam, geometry.standard_machine) for b in beamlet_set.beams]
    chunks = chunk_plan(beamlet_set.counts, _free_cpus(ctx.executor), planning.chunks_per_cpu, work_per_bixel=[w / max(work) for w in work])
    threads = _task_threads(ctx.executor)
    items = [(beamlet_set.beams[b], geometry.standard_machine, geometry.density_grid, geometry.dose_grid, a, z,
              planning.dij_cutoff_mm, planning.dij_threshold, threads) for b, a, z in chunks]
    ctx.progress(0, len(items), f"{len(items)} Dij tasks")
    mats = _map(ctx, dij_chunk_task, items, dens)
    m = assemble_dij(mats)
    del mats
    ctx.progress(len(items), len(items), f"{m.nnz} non-zeros")
    return DijResult(num_voxels=m.shape[0], num_bixels=m.shape[1], nnz=int(m.nnz), tasks=len(items), chunk_bixels=[z - a for _, a, z in chunks],
                     seconds=time.perf_counter() - t0, matrix=m)


# ---------------------------------------------------------------------------- optimisation
@stage("problem", output="problem", after="dij", when=_skip_after("dij"), persist=False)
def problem(order: MedicalOrder, geometry: PlanGeometry, beamlet_set: BeamletSet, dij: DijResult) -> Any:
    """The order's objectives on the Dij rows inside the structures (in memory; rebuilt on resume)."""
    from rayrt.optimize.problem import build_problem

    masks = {n: geometry.dose_masks[n] for n in order.structure_names()}
    return build_problem(order, masks, dij.matrix, beam_slices=beamlet_set.slices(), grid_shape=geometry.dose_grid.shape,
                         voxel_volume_cc=geometry.dose_grid.voxel_volume_cc)


def _metrics(problem, w: np.ndarray) -> dict:
    from rayrt.optimize.planner import _stage_metrics

    return _stage_metrics(problem, w)


class FluenceStage(BaseModel):
    """Result of ``fmo``: optimal beamlet weights (course MU-weights) and the optimiser's record."""

    weights: list[float]
    objective: float
    iterations: int
    evaluations: int
    seconds: float
    converged: bool
    message: str
    max_violation_gy: float = 0.0
    al_rho: float = 0.0
    al_lambdas: list[list[float]] | None = Field(default=None, description="augmented-Lagrangian multipliers per objective (DAO continues from them)")
    metrics: dict = Field(default_factory=dict, description="D95/D10/max (Gy) per structure before normalisation")


@stage("fmo", output="fluence", after="problem", when=_skip_after("dij"))
def fmo(problem: Any, planning: PlanningRequest | None = None, ctx: StageContext = None) -> FluenceStage:
    """Fluence-map optimisation (L-BFGS-B, augmented Lagrangian for hard constraints)."""
    from rayrt.optimize.fmo import FluenceOptions, optimize_fluence

    fr = optimize_fluence(problem, FluenceOptions(max_iterations=planning.fmo_iterations))
    ctx.progress(1, 1, f"objective {fr.objective:.4g} after {fr.iterations} iterations")
    return FluenceStage(weights=list(map(float, fr.w)), objective=fr.objective, iterations=fr.iterations, evaluations=fr.evaluations, seconds=fr.seconds,
                        converged=fr.converged, message=fr.message, max_violation_gy=fr.max_violation_gy, al_rho=fr.al_rho,
                        al_lambdas=[np.asarray(v, dtype=float).tolist() for v in fr.al_lambdas] if fr.al_lambdas else None, metrics=_metrics(problem, fr.w))


class SequencedPlan(BaseModel):
    """Segments per beam (MU = course fluence units) from a leaf sequencer."""

    machine: str
    sequencer: str
    segments: list[list[Segment]]
    per_beam: list[dict] = Field(default_factory=list)
    metrics: dict = Field(default_factory=dict)


def _sequence(w: np.ndarray, beamlet_set: BeamletSet, machine, req: PlanningRequest) -> SequencedPlan:
    from rayrt.optimize.layout import layout_from_beamlets
    from rayrt.optimize.sequencing import get_sequencer

    seq = get_sequencer(req.sequencer)
    segs, info = [], []
    for bg, sl in zip(beamlet_set.grids(), beamlet_set.slices()):
        lay = layout_from_beamlets(bg)
        r = seq.sequence_with_info(lay.to_map(w[sl]), lay, machine, req.max_segments)
        segs.append(r.segments)
        info.append({"segments": r.num_segments, "levels": r.levels, "total_course_mu": r.total_mu, "dropped_course_mu": r.dropped_mu})
    return SequencedPlan(machine=machine.name, sequencer=seq.name, segments=segs, per_beam=info)


@stage("sequence", output="sequenced", after="fmo", when=_skip_after("fluence"))
def sequence(fluence: FluenceStage, beamlet_set: BeamletSet, geometry: PlanGeometry, planning: PlanningRequest | None = None,
             ctx: StageContext = None) -> SequencedPlan:
    """Leaf sequencing of the optimal fluence onto the standard machine's MLC."""
    out = _sequence(np.asarray(fluence.weights), beamlet_set, _machine(geometry.standard_machine), planning)
    ctx.progress(1, 1, f"{sum(len(s) for s in out.segments)} segments")
    return out


class ApertureStage(BaseModel):
    """Result of ``dao``: optimised segments per beam (MU = course fluence units)."""

    machine: str
    segments: list[list[Segment]]
    objective_start: float
    objective: float
    iterations: int
    seconds: float
    dropped_segments: int
    metrics: dict = Field(default_factory=dict)


def _evaluator(problem, fluence: FluenceStage):
    from rayrt.optimize.fmo import ObjectiveEvaluator

    ev = ObjectiveEvaluator(problem)
    if problem.hard:
        ev.rho = fluence.al_rho
        if fluence.al_lambdas:
            ev.lambdas = [np.asarray(v, dtype=float) for v in fluence.al_lambdas]
    return ev


def _dao(problem, beamlet_set: BeamletSet, segments: list[list[Segment]], machine, req: PlanningRequest, fluence: FluenceStage, fractions: int):
    from rayrt.optimize.dao import DAOOptions, optimize_apertures
    from rayrt.optimize.layout import layout_from_beamlets

    layouts = [layout_from_beamlets(bg) for bg in beamlet_set.grids()]
    opts = DAOOptions(outer_rounds=req.dao_rounds, iterations_per_round=req.dao_iterations, min_mu_weight=machine.limits.min_mu_per_segment * fractions)
    return optimize_apertures(problem, layouts, segments, machine, opts, evaluator=_evaluator(problem, fluence))


@stage("dao", output="apertures", after="sequence", when=_skip_after("sequenced"))
def dao(problem: Any, order: MedicalOrder, beamlet_set: BeamletSet, sequenced: SequencedPlan, fluence: FluenceStage,
        planning: PlanningRequest | None = None, ctx: StageContext = None) -> ApertureStage:
    """Direct aperture optimisation of the sequenced segments (weights and leaf tips)."""
    m = _machine(sequenced.machine)
    r = _dao(problem, beamlet_set, sequenced.segments, m, planning, fluence, order.prescription.fractions)
    ctx.progress(1, 1, f"objective {r.objective_start:.4g} -> {r.objective:.4g}")
    return ApertureStage(machine=m.name, segments=r.segments, objective_start=r.objective_start, objective=r.objective, iterations=r.iterations,
                         seconds=r.seconds, dropped_segments=r.dropped_segments, metrics=_metrics(problem, np.asarray(r.weights)))


# ---------------------------------------------------------------------------- standard plan
class StandardPlan(BaseModel):
    """Result of ``normalize``: the standard plan (MU per fraction) and its course dose (Gy)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    plan: Plan
    dose_grid: Grid
    normalization_factor: float
    raised_segments: int = 0
    dvh: dict = Field(default_factory=dict)
    dose: Any = Field(default=None, exclude=True, description="course dose (Gy) [k, j, i] on dose_grid, float32")

    def files(self) -> dict[str, bytes]:
        return {"plan.json": self.plan.model_dump_json(indent=1).encode(), "dose.npy": _npy(np.asarray(self.dose, np.float32))}

    @classmethod
    def from_files(cls, data: dict, read: Callable[[str], bytes]) -> "StandardPlan":
        r = cls.model_validate(data)
        r.dose = _from_npy(read("dose.npy"))
        return r


@stage("normalize", output="standard_plan", after="dao", when=_skip_after("apertures"))
def normalize(apertures: ApertureStage, geometry: PlanGeometry, beamlet_set: BeamletSet, dij: DijResult, order: MedicalOrder, study: Any,
              ctx: StageContext = None) -> StandardPlan:
    """Standard plan: MU per fraction normalised to the prescription, final dose through the Dij
    (aperture fluence with transmission, leaf gap and head scatter)."""
    from rayrt.optimize.normalize import normalize_plan
    from rayrt.optimize.planner import final_dose, plan_from_apertures

    m = _machine(apertures.machine)
    grids = beamlet_set.grids()
    plan = plan_from_apertures(apertures.segments, [b.gantry_deg for b in geometry.beams], geometry.isocenter_mm, m, order,
                               patient_id=getattr(study, "patient_id", ""), frame_of_reference_uid=getattr(study, "frame_of_reference_uid", None))
    plan, dose, f, raised = normalize_plan(plan, lambda p: final_dose(p, grids, dij.matrix, m), geometry.dose_masks, order,
                                           m.limits.min_mu_per_segment)
    dose3 = dose.reshape(geometry.dose_grid.shape).astype(np.float32)
    ctx.progress(1, 1, f"{plan.total_mu:.1f} MU/fraction")
    return StandardPlan(plan=plan, dose_grid=geometry.dose_grid, normalization_factor=f, raised_segments=raised,
                        dvh=_dvh_table(dose3, geometry.dose_masks, geometry.dose_grid.voxel_volume_cc, order), dose=dose3)


# ---------------------------------------------------------------------------- conversion
class MachinePlan(BaseModel):
    """One target machine's plan (MU per fraction) and how :func:`rayrt.convert.convert.convert_for_machine` made it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    machine: str
    plan: Plan | None = Field(default=None, description="None when the conversion was not released")
    status: str = Field(default="released", description="released | failed (no plan, no RTPLAN)")
    reasons: list[str] = Field(default_factory=list)
    method: str = Field(description="rayrt.convert:<recompute mode of the released (or last) attempt>")
    mode: str | None = Field(default=None, description="recompute mode: reuse | dose_only | mu_refit | fluence | dao")
    coincidence: str | None = Field(default=None, description="coincidence verdict: matches | same_leaves | convertible | incompatible")
    attempts: list[dict] = Field(default_factory=list, description="each attempt: mode, strength, QA verdict, gamma vs standard, seconds")
    qa: QAReport | None = Field(default=None, description="QA report of the release loop's last attempt (the qa stage reuses it)")
    seconds: float
    dvh: dict = Field(default_factory=dict)
    dose: Any = Field(default=None, exclude=True, description="course dose (Gy) [k, j, i] on the dose grid, float32")
    qa_png: bytes | None = Field(default=None, exclude=True, description="QA figure of the release QA (PlanningRequest.qa_figures)")


def standard_input(standard: StandardPlan, geometry: PlanGeometry, order: MedicalOrder):
    """The standard plan bundled for :func:`rayrt.convert.convert.convert_for_machine`
    (:class:`~rayrt.convert.convert.StandardPlanInput`: plan, standard machine, course dose,
    dose-grid masks, density on the CT grid, order, external)."""
    from rayrt.convert.convert import StandardPlanInput

    masks = {n: geometry.dose_masks[n] for n in geometry.mask_names}
    density = Volume(np.ascontiguousarray(geometry.density, dtype=np.float32), geometry.density_grid, "relative_electron_density")
    return StandardPlanInput(plan=standard.plan, machine=_machine(standard.plan.machine), dose_gy=standard.dose, dose_grid=standard.dose_grid,
                             density=density, masks=masks, order=order, external=geometry.external)


def conversion_options(req: PlanningRequest):
    """:class:`~rayrt.convert.policy.ConversionOptions` of a request: configs/conversion.yaml, then
    ``req.conversion_options``, then the forced ``req.conversion_mode`` (None: the policy chooses)."""
    from rayrt.convert.policy import load_conversion_options

    over = dict(req.conversion_options)
    if req.conversion_mode is not None:
        over["mode"] = req.conversion_mode
    return load_conversion_options(**over)


def machine_plan(r: Any, standard: StandardPlan, masks: dict[str, np.ndarray], order: MedicalOrder, figure: bool = False,
                 machine: str | None = None) -> MachinePlan:
    """A :class:`~rayrt.convert.convert.ConversionResult` as the stage's MachinePlan (dose and DVH
    only when released; the release QA report either way). ``r`` may be the exception a
    conversion raised: that machine is then ``failed`` with the error as its reason (the other
    machines and the standard plan go on)."""
    if isinstance(r, BaseException):
        msg = getattr(r, "message", None) or str(r).strip().splitlines()[-1:] or [type(r).__name__]
        msg = msg if isinstance(msg, str) else msg[0]
        return MachinePlan(machine=machine or "?", status="failed", reasons=[f"conversion error: {type(r).__name__}: {msg}"[:500]],
                           method="rayrt.convert:error", seconds=0.0)
    dose3 = None if r.dose_gy is None or not r.released else np.asarray(r.dose_gy, np.float32).reshape(standard.dose_grid.shape)
    png = None
    if figure and r.qa_result is not None:
        import tempfile
        from pathlib import Path

        from rayrt.qa.report import render_qa_figure

        with tempfile.TemporaryDirectory(prefix="rayrt-qa-") as d:
            png = render_qa_figure(r.qa_result, Path(d) / "qa.png").read_bytes()
    return MachinePlan(machine=r.machine, plan=r.plan if r.released else None, status=r.status, reasons=list(r.reasons),
                       method=f"rayrt.convert:{r.mode}", mode=r.mode, coincidence=r.coincidence.verdict if r.coincidence is not None else None,
                       attempts=[{"attempt": a.attempt, "mode": a.mode, "strength": a.strength, "released": a.released, "verdict": a.verdict,
                                  "gamma_vs_standard_pct": a.gamma_vs_standard_pct, "seconds": round(a.seconds, 3)} for a in r.attempts],
                       qa=r.qa, seconds=float(r.seconds),
                       dvh=_dvh_table(dose3, masks, standard.dose_grid.voxel_volume_cc, order) if dose3 is not None else {}, dose=dose3, qa_png=png)


def convert_local(standard, machines: list[str], options: Any, progress: Callable[[int, int, str], None] | None = None) -> list:
    """Every machine's conversion in this process, one after the other (the LocalExecutor's way)."""
    from rayrt.convert.convert import convert_for_machine

    out: list = []
    for n, name in enumerate(machines):
        try:
            r = convert_for_machine(standard, _machine(name), options)
            note = f"{name}: {r.status} ({r.mode})"
        except Exception as exc:  # this machine fails with the reason; the others go on
            r, note = exc, f"{name}: conversion error"
        out.append(r)
        if progress is not None:
            progress(n + 1, len(machines), note)
    return out


class ConvertedPlans(BaseModel):
    """Result of ``convert``: one plan per target machine."""

    plans: list[MachinePlan] = Field(default_factory=list)

    def get(self, machine: str) -> MachinePlan:
        for p in self.plans:
            if p.machine == machine:
                return p
        raise KeyError(machine)

    def files(self) -> dict[str, bytes]:
        out = {}
        for p in self.plans:
            if p.plan is None:
                continue
            out[f"plan_{_safe(p.machine)}.json"] = p.plan.model_dump_json(indent=1).encode()
            out[f"dose_{_safe(p.machine)}.npy"] = _npy(np.asarray(p.dose, np.float32))
        return out

    @classmethod
    def from_files(cls, data: dict, read: Callable[[str], bytes]) -> "ConvertedPlans":
        r = cls.model_validate(data)
        for p in r.plans:
            if p.plan is not None:
                p.dose = _from_npy(read(f"dose_{_safe(p.machine)}.npy"))
        return r


@stage("convert", output="converted", after="normalize", when=_skip_after("standard_plan"))
def convert(standard_plan: StandardPlan, geometry: PlanGeometry, order: MedicalOrder, planning: PlanningRequest | None = None,
            ctx: StageContext = None) -> ConvertedPlans:
    """Standard plan -> each target machine with :func:`rayrt.convert.convert.convert_for_machine`
    (coincidence, recompute mode by policy or forced, target beam model, QA-gated release). On
    Ray each machine's conversion runs on that machine's conversion ActorPool
    (``ctx.executor.convert_machines``); in one process they run here, one after the other."""
    if not planning.machines:
        return ConvertedPlans()
    std = standard_input(standard_plan, geometry, order)
    opts = conversion_options(planning)
    ctx.progress(0, len(planning.machines), "converting on " + ", ".join(planning.machines))
    run = getattr(ctx.executor, "convert_machines", None)
    if callable(run):
        results = run(std, list(planning.machines), opts, progress=ctx.progress)
    else:
        results = convert_local(std, list(planning.machines), opts, progress=ctx.progress)
    plans = [machine_plan(r, standard_plan, std.masks, order, figure=planning.qa_figures, machine=m) for r, m in zip(results, planning.machines)]
    ctx.progress(len(plans), len(plans), "; ".join(f"{p.machine} {p.status}" for p in plans))
    return ConvertedPlans(plans=plans)


# ---------------------------------------------------------------------------- QA
class QAStage(BaseModel):
    """Result of ``qa``: one QA report per plan (standard first, then the target machines)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reports: list[QAReport] = Field(default_factory=list, description="one QA report per machine")
    figures: dict[str, str] = Field(default_factory=dict, description="machine -> PNG file name")
    png: dict[str, bytes] = Field(default_factory=dict, exclude=True)

    def files(self) -> dict[str, bytes]:
        out = {f"qa_{_safe(r.machine)}.json": r.model_dump_json(indent=1).encode() for r in self.reports}
        out.update({self.figures[m]: b for m, b in self.png.items()})
        return out

    def verdicts(self) -> dict[str, str]:
        return {r.machine: r.verdict for r in self.reports}


def qa_task(item: tuple, density: np.ndarray) -> tuple[Any, bytes | None]:
    """Task: QA of one plan (``item`` = plan, dose, standard plan, masks, order, density grid, request, threads)."""
    from rayrt.qa.checks import aperture_recompute
    from rayrt.qa.report import qa_plan

    plan, dose3, standard, masks, order, density_grid, req, threads = item
    _set_threads(threads)
    m = _machine(plan.machine)
    dose = Volume(np.asarray(dose3, np.float32), standard.dose_grid, "dose_gy")
    recompute = None
    if req.qa_independent_dose:
        engine = aperture_recompute(Volume(density, density_grid, "relative_electron_density"), bixel_width_mm=req.qa_bixel_mm,
                                    cutoff_mm=req.dij_cutoff_mm, threshold=req.dij_threshold)
        qa_grid = standard.dose_grid if req.qa_grid_mm is None else standard.dose_grid.with_spacing((req.qa_grid_mm,) * 3)

        def recompute(p: Plan, mach, grid: Grid) -> Volume:  # on the QA grid, then onto the requested one
            v = engine(p, mach, qa_grid)
            return v if v.grid.same_geometry(grid) else v.resample(grid, order=1, fill=0.0)

    is_standard = plan.id == standard.plan.id
    res = qa_plan(plan, m, dose, standard_dose=None if is_standard else Volume(np.asarray(standard.dose, np.float32), standard.dose_grid, "dose_gy"),
                  masks=masks, order=order, recompute=recompute, standard_plan_id=standard.plan.id)
    png = None
    if req.qa_figures:
        import tempfile
        from pathlib import Path

        from rayrt.qa.report import render_qa_figure

        with tempfile.TemporaryDirectory(prefix="rayrt-qa-") as d:
            png = render_qa_figure(res, Path(d) / "qa.png").read_bytes()
    return res.report, png


@stage("qa", output="qa", after="convert", when=_skip_after("standard_plan"))
def qa(standard_plan: StandardPlan, geometry: PlanGeometry, order: MedicalOrder, converted: ConvertedPlans | None = None,
       planning: PlanningRequest | None = None, ctx: StageContext = None) -> QAStage:
    """Per plan: independent dose (aperture engine), gamma vs the standard dose (3 %/2 mm), the
    order's DVH criteria and deliverability; verdict pass / review / fail (one task per plan).
    A converted plan's QA was already done by the conversion's release loop
    (rayrt.convert.release: the same checks plus the independent check on a finer grid and the
    agreement with the standard plan): that report is reused, not recomputed; so is the report
    of a conversion that was not released (QA report only)."""
    dens = _shared(ctx, "density", lambda: np.ascontiguousarray(geometry.density, dtype=np.float32))
    masks = {n: geometry.dose_masks[n] for n in geometry.mask_names}
    threads = _task_threads(ctx.executor)
    conv = converted.plans if converted else []
    todo = [(standard_plan.plan, standard_plan.dose)] + [(p.plan, p.dose) for p in conv if p.plan is not None and p.qa is None]
    items = [(p, d, standard_plan, masks, order, geometry.density_grid, planning, threads) for p, d in todo]
    ctx.progress(0, len(items), f"{len(items)} QA task(s); {sum(p.qa is not None for p in conv)} release QA report(s) reused")
    out = _map(ctx, qa_task, items, dens)
    ctx.progress(len(items), len(items))
    done = {r.machine: (r, b) for r, b in out}
    reports = [out[0][0]]
    png = {m: b for m, (_, b) in done.items() if b}
    for p in conv:
        if p.qa is not None:
            reports.append(p.qa)
            if p.qa_png:
                png[p.machine] = p.qa_png
        elif p.machine in done:
            reports.append(done[p.machine][0])
    return QAStage(reports=reports, figures={m: f"qa_{_safe(m)}.png" for m in png}, png=png)


# ---------------------------------------------------------------------------- export
class GoalResult(BaseModel):
    """One DVH goal of the order on one plan."""

    structure: str
    metric: str
    goal: str
    value_gy: float | None
    limit_gy: float
    met: bool


GOAL_TOLERANCE_GY = 1e-4
"""A goal compares a float32 dose with its limit: a plan normalised to D95 = 50 Gy stores D95 as
49.9999988 Gy (float32 rounding is ~4 uGy at 50 Gy). 0.1 mGy absorbs that and is clinically nil."""


class MachineSummary(BaseModel):
    machine: str
    plan_id: str
    total_mu_per_fraction: float
    segments: int
    verdict: str | None = None
    failed_checks: list[str] = Field(default_factory=list)
    goals: list[GoalResult] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)


class ExportResult(BaseModel):
    """Result of ``export``: DICOM RT per machine, DVH CSV, QA JSON and a summary (summary.json)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    machines: list[MachineSummary]
    rtstruct: str | None = None
    dvh_csv: str = "dvh.csv"
    blobs: dict[str, bytes] = Field(default_factory=dict, exclude=True)

    def files(self) -> dict[str, bytes]:
        out = dict(self.blobs)
        out["summary.json"] = self.model_dump_json(indent=1).encode()
        return out

    @classmethod
    def from_files(cls, data: dict, read: Callable[[str], bytes]) -> "ExportResult":
        return cls.model_validate(data)  # the DICOM files stay in the store; nothing later needs them in memory


def goals_of(order: MedicalOrder, dvh: dict[str, dict]) -> list[GoalResult]:
    """The order's DVH objectives as pass/fail goals on a plan's DVH (min_dvh: D_v >= dose;
    max_dvh: D_v <= dose; max_dose: D2 <= dose; min_dose: D98 >= dose; mean_dose: mean <= dose)."""
    out = []
    for o in order.objectives:
        kind = getattr(o.kind, "value", str(o.kind))
        met = dvh.get(o.structure)
        if met is None:
            continue
        if kind in ("min_dvh", "max_dvh") and o.volume_pct is not None:
            metric, key, lower = f"D{o.volume_pct:g}", _dkey(o.volume_pct), kind == "min_dvh"
        elif kind == "max_dose":
            metric, key, lower = "D2", "d2_gy", False
        elif kind == "min_dose":
            metric, key, lower = "D98", "d98_gy", True
        elif kind == "mean_dose":
            metric, key, lower = "mean", "mean_gy", False
        else:
            continue
        v = met.get(key)
        if v is None:
            continue
        ok = v >= o.dose_gy - GOAL_TOLERANCE_GY if lower else v <= o.dose_gy + GOAL_TOLERANCE_GY
        out.append(GoalResult(structure=o.structure, metric=metric, goal=f"{metric} {'>=' if lower else '<='} {o.dose_gy:g} Gy",
                              value_gy=float(v), limit_gy=o.dose_gy, met=bool(ok)))
    return out


def _dvh_rows(label: str, dvh: dict[str, dict]) -> list[list]:
    keys = ["volume_cc", "min_gy", "mean_gy", "max_gy", "d2_gy", "d5_gy", "d10_gy", "d50_gy", "d95_gy", "d98_gy"]
    return [[label, n, *(f"{met.get(k, float('nan')):.4f}" for k in keys)] for n, met in dvh.items()]


@stage("export", output="exports", after="qa", when=_skip_after("standard_plan"))
def export(study: Any, standard_plan: StandardPlan, geometry: PlanGeometry, order: MedicalOrder, converted: ConvertedPlans | None = None,
           qa: QAStage | None = None, ctx: StageContext = None) -> ExportResult:
    """RTSTRUCT (once), RTPLAN + RTDOSE per machine (standard included), dvh.csv, summary.json."""
    import tempfile
    from pathlib import Path

    from pydicom.uid import generate_uid

    from rayrt.imaging.export import write_rtdose, write_rtstruct
    from rayrt.imaging.rtplan import StructureSetRef, build_rtplan
    from rayrt.imaging.export import _save

    verdicts = {r.machine: r for r in (qa.reports if qa else [])}

    def _qa_failed(machine: str) -> bool:
        rep = verdicts.get(machine)
        return rep is not None and rep.verdict == "fail"

    # a converted plan that failed QA is never released: no RTPLAN / RTDOSE, the summary says why
    plans = [(standard_plan.plan, standard_plan.dose, standard_plan.dvh)] + [(p.plan, p.dose, p.dvh) for p in (converted.plans if converted else [])
                                                                              if p.plan is not None and not _qa_failed(p.machine)]
    blobs: dict[str, bytes] = {}
    summaries = []
    rows: list[list] = []
    with tempfile.TemporaryDirectory(prefix="rayrt-export-") as tmp:
        d = Path(tmp)
        rs = d / "RS.dcm"
        study_uid = getattr(study, "study_instance_uid", None) or generate_uid()
        for_uid = getattr(study, "frame_of_reference_uid", None)
        try:
            write_rtstruct(study.structures, study.primary, rs, patient_id=getattr(study, "patient_id", None),
                           patient_name=getattr(study, "patient_name", None), label="rayrt")
            ssref = StructureSetRef.from_file(rs)
            blobs["RS.dcm"] = rs.read_bytes()
        except InputError:
            ssref = None
        for n, (plan, dose3, dvh) in enumerate(plans):
            m = _machine(plan.machine)
            safe = _safe(m.name)
            p = plan.model_copy(update={"frame_of_reference_uid": ssref.frame_of_reference_uid if ssref else (plan.frame_of_reference_uid or for_uid)})
            ds = build_rtplan(p, m, structure_set=ssref, patient_id=getattr(study, "patient_id", None) or None,
                              patient_name=getattr(study, "patient_name", "") or "", study_uid=None if ssref else study_uid)
            rp = _save(ds, d / f"RP_{safe}.dcm")
            rd = write_rtdose(Volume(np.asarray(dose3, np.float32), standard_plan.dose_grid, "dose_gy"), d / f"RD_{safe}.dcm",
                              frame_of_reference_uid=str(ds.FrameOfReferenceUID), study_uid=str(ds.StudyInstanceUID), patient_id=str(ds.PatientID),
                              patient_name=str(ds.PatientName), referenced_plan_uid=str(ds.SOPInstanceUID), bits=32)
            blobs[rp.name] = rp.read_bytes()
            blobs[rd.name] = rd.read_bytes()
            rows += _dvh_rows(m.name, dvh)
            rep = verdicts.get(m.name)
            summaries.append(MachineSummary(machine=m.name, plan_id=plan.id, total_mu_per_fraction=plan.total_mu,
                                            segments=sum(len(b.segments) for b in plan.beams), verdict=rep.verdict if rep else None,
                                            failed_checks=[f"{c.name}: {c.status}" for c in rep.failed()] if rep else [],
                                            goals=goals_of(order, dvh), files=[rp.name, rd.name]))
            ctx.progress(n + 1, len(plans))
    for p in (converted.plans if converted else []):
        if p.plan is None:  # not released: no plan, no RTPLAN; the summary says why
            summaries.append(MachineSummary(machine=p.machine, plan_id="", total_mu_per_fraction=0.0, segments=0, verdict="not released",
                                            failed_checks=list(p.reasons)))
        elif _qa_failed(p.machine):
            rep = verdicts[p.machine]
            summaries.append(MachineSummary(machine=p.machine, plan_id=p.plan.id, total_mu_per_fraction=p.plan.total_mu,
                                            segments=sum(len(b.segments) for b in p.plan.beams), verdict="not released",
                                            failed_checks=[f"QA {rep.verdict}"] + [f"{c.name}: {c.status}" for c in rep.failed()],
                                            goals=goals_of(order, p.dvh)))
    rank = {name: i for i, name in enumerate([standard_plan.plan.machine] + [p.machine for p in (converted.plans if converted else [])])}
    summaries.sort(key=lambda m: rank.get(m.machine, len(rank)))  # standard first, then the requested machines in order
    blobs["dvh.csv"] = _csv(["machine", "structure", "volume_cc", "min_gy", "mean_gy", "max_gy", "d2_gy", "d5_gy", "d10_gy", "d50_gy", "d95_gy", "d98_gy"], rows)
    return ExportResult(machines=summaries, rtstruct="RS.dcm" if "RS.dcm" in blobs else None, blobs=blobs)


# ---------------------------------------------------------------------------- one process
def plan_local(source: Any, order: MedicalOrder | dict | str | None, planning: PlanningRequest | dict, *, stages: list[str] | None = None,
               out_dir: str | None = None, executor: Any = None, on_event: Callable | None = None):
    """Run the whole recipe (load ... export) in this process (or on ``executor``); with ``out_dir``
    each stage's files go to ``out_dir/<stage>/`` like the service stores them."""
    from pathlib import Path

    from rayrt import pipeline

    req = planning if isinstance(planning, PlanningRequest) else PlanningRequest.model_validate(planning)
    sink = None
    if out_dir is not None:
        root = Path(out_dir)

        def sink(st, out):
            d = root / st.name
            d.mkdir(parents=True, exist_ok=True)
            for name, data in pipeline.write_result_files(out).items():
                (d / name).write_bytes(data)

    artefacts = {"source": source, "order": pipeline._as_order(order), "planning": req}
    return pipeline.run_stages(pipeline.default_stages(stages), artefacts, executor=executor, on_event=on_event, sink=sink)


def restore_output(st: Any, read: Callable[[str], bytes]) -> Any:
    """A stage's stored output rebuilt from its files (``read(name) -> bytes``), or None when the
    stage has no pydantic result model. Models with arrays rebuild them in ``from_files``."""
    import json

    from rayrt import pipeline

    model = pipeline.result_model(st)
    if model is None:
        return None
    data = json.loads(read("result.json"))
    fn = getattr(model, "from_files", None)
    return fn(data, read) if callable(fn) else model.model_validate(data)
