"""Warm numba's kernel caches: compile every kernel specialisation a plan uses, once, at install time.

rayrt's hot loops are numba kernels compiled with ``cache=True``: the first process that calls a
kernel with a new combination of argument types (dtype, dimensions, memory layout) compiles it
(about a minute for all of them together) and stores the machine code in the ``__pycache__``
folder next to the kernel's source file (or under ``NUMBA_CACHE_DIR`` when that is set); every
later process, Ray workers included (they import the same source files of the editable install,
so they look in the same folders), loads it in milliseconds. An entry is reused while the source
file is unchanged (numba compares its modification time and size).

:func:`warm_kernels` runs a tiny real plan through the public entry points, with the argument
types the planning pipeline passes, so that the first ``rayrt demo`` or service job after an
install finds every specialisation on disk. ``scripts/env.sh`` calls ``rayrt warmup`` right after
installing. The plan: the TG-119 C-shape phantom on a 10 mm grid (polygon rasterisation), the
contouring tools (polygon validation, margins, in-plane erosion), three beams' Dij with the
configured planning defaults (``configs/planning.yaml``), FMO with one-sided screening on the
serial and the parallel Dij products, leaf sequencing, DAO, aperture dose on two dose grids and
gamma on the same grid (aligned kernel) and across grids (general kernel). A warm cache makes the
whole warm-up take a few seconds, so running it again is harmless.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field

from rayrt.contour.manual import rasterize
from rayrt.contour.morphology import Margins, contract, disk_2d, erode_2d, expand
from rayrt.domain.machine import MachineModel
from rayrt.domain.order import MedicalOrder
from rayrt.domain.plan import Beam, Segment
from rayrt.domain.planning import PlanningRequest, planning_request
from rayrt.dose.aperture import aperture_dose
from rayrt.dose.dij import dose_grid_for, plan_dij
from rayrt.dose.geometry import BeamletGrid, column_offset_for
from rayrt.imaging.phantoms import tg119_contours, tg119_order, tg119_phantom
from rayrt.imaging.study import Study
from rayrt.imaging.volume import Grid, Volume
from rayrt.machines import get_machine, standard_machine_name
from rayrt.optimize.dao import DAOOptions, optimize_apertures
from rayrt.optimize.fmo import FluenceOptions, optimize_fluence
from rayrt.optimize.layout import layout_from_beamlets
from rayrt.optimize.problem import OptimizationProblem, build_problem
from rayrt.optimize.sequencing import get_sequencer
from rayrt.optimize.standard import masks_on_grid, planning_phantom
from rayrt.qa.gamma import gamma_index

__all__ = ["WarmupReport", "WarmupStep", "warm_kernels", "WARMUP_SPACING_MM"]

#: voxel size (mm) of the warm-up phantom and of its dose grid: small arrays, the same types as any plan
WARMUP_SPACING_MM = 10.0
#: dose grid (mm) of the second aperture-dose computation: not commensurate with the first, so that
#: gamma between the two needs the general (per-voxel interpolation) kernel
OFFSET_GRID_MM = 7.0


class WarmupStep(BaseModel):
    """One part of the warm-up and its wall time (compiling, or loading from the cache)."""

    name: str
    seconds: float


class WarmupReport(BaseModel):
    """What :func:`warm_kernels` ran and where numba keeps the compiled kernels."""

    steps: list[WarmupStep] = Field(default_factory=list)
    total_seconds: float = 0.0
    cache_dir: str = Field(description="NUMBA_CACHE_DIR, or '__pycache__ next to each source file' when it is not set")


class _Plan:
    """The tiny plan's state, filled in step by step (each step sets the attributes it documents)."""

    study: Study
    order: MedicalOrder
    request: PlanningRequest
    density: Volume
    dose_grid: Grid
    masks: dict[str, np.ndarray]
    machine: MachineModel
    beams: list[Beam]
    dij: sp.csc_matrix
    grids: list[BeamletGrid]
    slices: list[slice]
    problem: OptimizationProblem
    weights: np.ndarray
    segments: list[list[Segment]]


def _phantom(p: _Plan) -> None:
    """The TG-119 phantom (structures rasterised from polygons), its order and the planning
    defaults with three beams on a coarse grid."""
    p.study = tg119_phantom(spacing_mm=WARMUP_SPACING_MM)
    p.order = tg119_order()
    p.request = planning_request({"num_beams": 3, "dose_grid_mm": WARMUP_SPACING_MM, "bixel_mm": WARMUP_SPACING_MM})


def _contouring(p: _Plan) -> None:
    """Manual polygons (validation: segment intersection; rasterisation), margins (scattered
    offsets), in-plane erosion (row runs) on the phantom's structures."""
    grid = p.study.primary.grid
    rasterize(tg119_contours(grid)["Core"], grid)
    ptv = p.study.mask("PTV")
    expand(ptv, grid, Margins.isotropic(5.0))
    contract(p.study.mask("BODY"), grid, Margins.isotropic(5.0))
    erode_2d(ptv, disk_2d(15.0, (float(grid.spacing[1]), float(grid.spacing[0]))))


def _dij(p: _Plan) -> None:
    """Density, dose grid, masks and beams as the planning stages make them; the plan's Dij."""
    req = p.request
    ct = p.study.primary
    masks_ct, p.density, _ = planning_phantom(p.study, sorted(p.order.structure_names()))
    p.dose_grid = dose_grid_for(ct.grid, req.dose_grid_mm)
    p.masks = masks_on_grid(masks_ct, ct.grid, p.dose_grid)
    p.machine = get_machine(req.standard_machine or standard_machine_name())
    target = p.order.prescription.target
    x, y, z = ct.grid.index_to_world(np.argwhere(masks_ct[target]).mean(axis=0))  # isocenter: target centre of mass
    iso = (float(x), float(y), float(z))
    p.beams = [Beam(name=f"B{i + 1}", number=i + 1, gantry_deg=a, isocenter_mm=iso) for i, a in enumerate(req.angles())]
    p.dij, p.grids = plan_dij(
        p.density,
        p.dose_grid,
        p.beams,
        p.machine,
        masks_ct[target],
        bixel_width_mm=req.bixel_mm,
        margin_mm=req.margin_mm,
        cutoff_mm=req.dij_cutoff_mm,
        threshold=req.dij_threshold,
        mask_grid=ct.grid,
        column_offset_mm=column_offset_for(req.bixel_columns, req.bixel_mm),
    )


def _fmo(p: _Plan) -> None:
    """The order's problem (row-subset Dij) and a few FMO iterations, first with the serial Dij
    products (small plans) and then with the parallel ones (plans above the parallel threshold)."""
    n = np.cumsum([0] + [g.num_bixels for g in p.grids])
    p.slices = [slice(int(a), int(b)) for a, b in zip(n[:-1], n[1:])]
    p.problem = build_problem(
        p.order,
        p.masks,
        p.dij,
        beam_slices=p.slices,
        grid_shape=p.dose_grid.shape,
        voxel_volume_cc=p.dose_grid.voxel_volume_cc,
    )
    options = FluenceOptions(max_iterations=5, max_outer=2)
    p.weights = optimize_fluence(p.problem, options).w
    p.problem.dij.parallel_min_nnz = 0
    optimize_fluence(p.problem, options)


def _apertures(p: _Plan) -> None:
    """Leaf sequencing of the fluence and a few DAO iterations."""
    seq = get_sequencer(p.request.sequencer)
    layouts = [layout_from_beamlets(g) for g in p.grids]
    p.segments = [
        seq.sequence_with_info(lay.to_map(p.weights[sl]), lay, p.machine, p.request.max_segments).segments
        for lay, sl in zip(layouts, p.slices)
    ]
    optimize_apertures(p.problem, layouts, p.segments, p.machine, DAOOptions(outer_rounds=1, iterations_per_round=3))


def _dose_checks(p: _Plan) -> None:
    """Aperture dose of the first beam on the plan's dose grid and on a finer, offset one; gamma
    of each against the plan's grid (the aligned and the general kernel)."""
    beam = p.beams[0]
    segments = p.segments[0]
    fine = dose_grid_for(p.study.primary.grid, OFFSET_GRID_MM)
    ref = Volume(aperture_dose(p.density, p.dose_grid, beam, segments, p.machine), p.dose_grid, "Gy")
    other = Volume(aperture_dose(p.density, fine, beam, segments, p.machine), fine, "Gy")
    gamma_index(ref, ref)
    gamma_index(ref, other)


#: the warm-up, in order: (name, step)
STEPS: list[tuple[str, Callable[[_Plan], None]]] = [
    ("phantom", _phantom),
    ("contouring", _contouring),
    ("dose-influence matrix", _dij),
    ("fluence optimisation", _fmo),
    ("sequencing and DAO", _apertures),
    ("aperture dose and gamma", _dose_checks),
]


def warm_kernels(echo: Callable[[str], None] | None = None) -> WarmupReport:
    """Run the tiny plan (see the module docstring); ``echo`` receives one line per step. Returns
    the steps' wall times (seconds): compile times on a cold cache, load times on a warm one."""
    t_all = time.perf_counter()
    report = WarmupReport(cache_dir=os.environ.get("NUMBA_CACHE_DIR") or "__pycache__ next to each source file")
    plan = _Plan()
    for name, step in STEPS:
        t0 = time.perf_counter()
        step(plan)
        report.steps.append(WarmupStep(name=name, seconds=time.perf_counter() - t0))
        if echo is not None:
            echo(f"{name}: {report.steps[-1].seconds:.1f} s")
    report.total_seconds = time.perf_counter() - t_all
    return report
