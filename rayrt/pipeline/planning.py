"""Planning stages, geometry to Dij: where the plan is computed, the bixels of every beam, and the
dose-influence matrix, fanned out through the executor.

    geometry   density (relative electron density, on the CT grid), dose grid, structure masks on
               it, isocenter (target centre of mass), beams (IEC 61217 gantry angles)
    beamlets   bixel grid of every beam (one task per beam; target mask shared once)
    dij        dose-influence matrix, Gy per MU-weight (one task per beam x beamlet chunk, density
               shared once, chunks sized from the free CPUs, reassembled bit-exactly)

On Ray each task is a 1-CPU task with ``threads_per_task`` numba threads, and the shared arrays
travel once through the object store and are read zero-copy; in one process the loop runs
here and numba uses every core inside each call. This module is the core: no Ray, no HTTP.
"""

from __future__ import annotations

import io
import time
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from rayrt.domain.errors import InputError
from rayrt.domain.order import MedicalOrder
from rayrt.domain.plan import Beam
from rayrt.domain.planning import PlanningRequest, gantry_key
from rayrt.dose.dij import compute_dij, dose_grid_for, hstack_exact
from rayrt.dose.geometry import BeamGeometry, BeamletGrid, beamlet_grid, column_offset_for
from rayrt.imaging.volume import Volume, as_vec3
from rayrt.machines import get_machine, standard_machine_name
from rayrt.optimize._threads import set_threads
from rayrt.optimize.problem import target_like
from rayrt.optimize.standard import PlanGeometry, masks_on_grid, planning_phantom
from rayrt.pipeline.runner import StageContext

__all__ = [
    "geometry",
    "beamlets",
    "dij",
    "BeamletSpec",
    "BeamletSet",
    "DijResult",
    "beamlet_task",
    "chunk_plan",
    "beam_path_mm",
    "dij_chunk_order",
    "dij_chunk_task",
    "assemble_dij",
    "narrow_beams",
]


# ---------------------------------------------------------------------------- geometry
def geometry(study: Any, order: MedicalOrder, planning: PlanningRequest, ctx: StageContext) -> PlanGeometry:
    """Density volume from the CT (HU -> relative electron density, 0 outside the external), the
    dose grid, structure masks on it, the structures the beamlets cover (every target of the order
    and its ``cover`` list), the isocenter (their common centre of mass) and the beams."""
    req = planning
    std = get_machine(req.standard_machine or standard_machine_name())
    for m in req.machines:
        get_machine(m)  # unknown target machine: InputError now, not after the optimisation
    order.check_structures(study.structure_names)
    ct = study.primary
    masks_ct, density, ext = planning_phantom(study, sorted(order.structure_names()))
    dose_grid = dose_grid_for(ct.grid, req.dose_grid_mm)
    target = order.prescription.target
    if not masks_ct[target].any():
        raise InputError(f"the target {target!r} is empty on the image grid", field="order.prescription.target")
    targets = target_like(order)
    covered = [*targets, *(c for c in order.cover if c not in targets)]
    union = np.logical_or.reduce([masks_ct[n] for n in covered])
    iso = as_vec3(ct.grid.index_to_world(np.argwhere(union).mean(axis=0)))  # LPS mm
    angles = req.all_angles()  # every candidate set's beams (one set: req.angles())
    beams = [Beam(name=f"B{i + 1}", number=i + 1, gantry_deg=a, isocenter_mm=iso) for i, a in enumerate(angles)]
    ctx.progress(1, 1)
    return PlanGeometry(
        standard_machine=std.name,
        density_grid=ct.grid,
        dose_grid=dose_grid,
        isocenter_mm=iso,
        beams=beams,
        target=target,
        targets=covered,
        external=ext,
        mask_names=sorted(masks_ct),
        density=density.array,
        dose_masks=masks_on_grid(masks_ct, ct.grid, dose_grid),
    )


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
        return cls(
            beam=bg.beam,
            machine_name=bg.machine_name,
            bixel_width_mm=bg.bixel_width_mm,
            row_edges_mm=np.asarray(bg.row_edges_mm).tolist(),
            rows=np.asarray(bg.rows).tolist(),
            cols=np.asarray(bg.cols).tolist(),
            patient_position=bg.patient_position,
            column_offset_mm=float(bg.column_offset_mm),
        )

    def grid(self):
        return BeamletGrid(
            self.beam,
            self.machine_name,
            self.bixel_width_mm,
            np.asarray(self.row_edges_mm, float),
            np.asarray(self.rows, np.int64),
            np.asarray(self.cols, np.int64),
            self.patient_position,
            column_offset_mm=self.column_offset_mm,
        )


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
    """Task: the bixel grid of one beam (``item`` = beam, machine, mask grid, bixel mm, margin mm
    [, column alignment])."""
    beam, machine_name, grid, bixel_mm, margin_mm, *rest = item
    off = column_offset_for(rest[0], bixel_mm) if rest else 0.0
    return BeamletSpec.of(
        beamlet_grid(
            beam,
            get_machine(machine_name),
            target_mask,
            grid,
            bixel_width_mm=bixel_mm,
            margin_mm=margin_mm,
            column_offset_mm=off,
        )
    )


def beamlets(study: Any, geometry: PlanGeometry, planning: PlanningRequest, ctx: StageContext) -> BeamletSet:
    """Bixels covering each beam's-eye view of every covered structure (all targets of the order
    and its ``cover`` list, united) plus a margin (one task per beam; the united mask shared once)."""
    covered = geometry.targets or [geometry.target]
    if len(covered) == 1:
        mask_ref = ctx.shared.get(f"mask:{covered[0]}")
        if mask_ref is None:  # a study whose structures were not shared by load
            mask_ref = ctx.share(f"mask:{covered[0]}", lambda: np.asarray(study.mask(covered[0]), dtype=bool))
    else:
        mask_ref = ctx.share(
            "mask:covered:" + "+".join(covered),
            lambda: np.logical_or.reduce([np.asarray(study.mask(n), dtype=bool) for n in covered]),
        )
    items = [
        (
            b,
            geometry.standard_machine,
            geometry.density_grid,
            planning.bixel_mm,
            planning.margin_mm,
            planning.bixel_columns,
        )
        for b in geometry.beams
    ]
    specs = ctx.map(beamlet_task, items, mask_ref)
    ctx.progress(len(specs), len(specs), f"{sum(len(s.rows) for s in specs)} bixels")
    return BeamletSet(beams=specs)


# ---------------------------------------------------------------------------- Dij
def chunk_plan(
    counts: list[int],
    free_cpus: int,
    chunks_per_cpu: int = 2,
    min_chunk: int = 16,
    work_per_bixel: list[float] | None = None,
    task_overhead_bixels: float = 16.0,
    tolerance: float = 0.03,
) -> list[tuple[int, int, int]]:
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


def beam_path_mm(
    geometry: PlanGeometry, beam: Beam, machine_name: str, min_density: float = 0.05, step_mm: float = 2.0
) -> float:
    """Length (mm) of the central axis of ``beam`` inside the patient (density >= ``min_density``):
    the depth every pencil beam of that beam traverses, i.e. its Dij work per bixel (to balance chunks)."""
    g = BeamGeometry.of(beam, get_machine(machine_name))
    src = g.source_mm
    axis = (g.isocenter_mm - src) / np.linalg.norm(g.isocenter_mm - src)
    t = np.arange(-600.0, 600.0, step_mm)
    kji = np.rint(geometry.density_grid.world_to_index(g.isocenter_mm[None, :] + t[:, None] * axis[None, :])).astype(
        np.int64
    )
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
    spec, machine_name, density_grid, dose_grid, start, stop, cutoff_mm, threshold, threads = item
    set_threads(threads)
    return compute_dij(
        Volume(density, density_grid, "relative_electron_density"),
        dose_grid,
        spec.grid(),
        get_machine(machine_name),
        start,
        stop,
        cutoff_mm=cutoff_mm,
        threshold=threshold,
    )


# RayExecutor.map submits in this order (LPT); results stay in column order. A function attribute, set with
# setattr because a function's type has no such attribute for the type checker.
setattr(dij_chunk_task, "task_order", dij_chunk_order)


def assemble_dij(chunks: list[sp.csc_matrix]) -> sp.csc_matrix:
    """Chunks in column order -> one CSC matrix (rayrt.dose.dij.hstack_exact: one copy, bitwise)."""
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


def dij(geometry: PlanGeometry, beamlet_set: BeamletSet, planning: PlanningRequest, ctx: StageContext) -> DijResult:
    """Pencil-beam Dij of all bixels, fanned out per beam and beamlet chunk; density put once."""
    t0 = time.perf_counter()
    dens = ctx.share("density", lambda: np.ascontiguousarray(geometry.density, dtype=np.float32))
    # work per bixel of each beam ~ its path through the patient (+ a floor for the lateral envelope)
    work = [50.0 + beam_path_mm(geometry, b.beam, geometry.standard_machine) for b in beamlet_set.beams]
    chunks = chunk_plan(
        beamlet_set.counts,
        ctx.executor.available_cpus(),
        planning.chunks_per_cpu,
        work_per_bixel=[w / max(work) for w in work],
    )
    threads = ctx.executor.threads_per_task
    items = [
        (
            beamlet_set.beams[b],
            geometry.standard_machine,
            geometry.density_grid,
            geometry.dose_grid,
            a,
            z,
            planning.dij_cutoff_mm,
            planning.dij_threshold,
            threads,
        )
        for b, a, z in chunks
    ]
    ctx.progress(0, len(items), f"{len(items)} Dij tasks")
    mats = ctx.map(dij_chunk_task, items, dens)
    m = assemble_dij(mats)
    del mats
    ctx.progress(len(items), len(items), f"{m.nnz} non-zeros")
    return DijResult(
        num_voxels=m.shape[0],
        num_bixels=m.shape[1],
        nnz=int(m.nnz),
        tasks=len(items),
        chunk_bixels=[z - a for _, a, z in chunks],
        seconds=time.perf_counter() - t0,
        matrix=m,
    )


# ---------------------------------------------------------------------------- one beam-angle set
def narrow_beams(
    geometry: PlanGeometry, beamlet_set: BeamletSet, dij: DijResult, gantry_deg: list[float]
) -> tuple[PlanGeometry, BeamletSet, DijResult]:
    """The geometry, bixels and Dij of the beams at ``gantry_deg`` (in that order, numbered 1..n)
    out of those computed for every candidate angle set
    (:meth:`~rayrt.domain.planning.PlanningRequest.all_angles`). The density, masks and Dij
    entries are the computed ones: the Dij's columns are those beams' blocks, nothing is recomputed."""
    by_angle = {gantry_key(b.gantry_deg): i for i, b in enumerate(geometry.beams)}
    try:
        idx = [by_angle[gantry_key(a)] for a in gantry_deg]
    except KeyError:
        raise InputError(
            f"gantry angles {list(gantry_deg)} are not among the computed beams "
            f"{[b.gantry_deg for b in geometry.beams]}",
            field="planning.beam_angle_alternatives",
        ) from None
    if idx == list(range(len(geometry.beams))):
        return geometry, beamlet_set, dij
    beams = [geometry.beams[i].model_copy(update={"name": f"B{k + 1}", "number": k + 1}) for k, i in enumerate(idx)]
    specs = [beamlet_set.beams[i].model_copy(update={"beam": b}) for i, b in zip(idx, beams)]
    slices = beamlet_set.slices()
    m = hstack_exact([dij.matrix[:, slices[i]] for i in idx])
    narrowed = dij.model_copy(update={"num_bixels": m.shape[1], "nnz": int(m.nnz), "matrix": m})
    return geometry.model_copy(update={"beams": beams}), BeamletSet(beams=specs), narrowed
