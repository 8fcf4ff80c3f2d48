"""The install-time warm-up (rayrt.warmup) reaches every numba kernel that planning uses, and the
dose engine compiles one specialisation of its grid pass whatever the density array's origin."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import numpy as np
from numba.core.registry import CPUDispatcher

from rayrt.contour import _kernels as contour_kernels
from rayrt.dose import _numba as dose_kernels
from rayrt.dose.dij import compute_dij
from rayrt.imaging import polygons
from rayrt.imaging.volume import Volume
from rayrt.optimize import fmo, sparse
from rayrt.qa.gamma import _get_kernel
from rayrt.warmup import STEPS, _Plan, warm_kernels

#: kernels that no planning path calls (only tests and SubsetDij.rowsums): the warm-up need not reach them
NOT_IN_PLANNING = {"radiological_depths", "_csr_rowsums"}


def _entry_kernels() -> dict[str, CPUDispatcher]:
    """Every numba dispatcher of rayrt's kernel modules that Python code calls: kernels called only
    from other kernels are compiled into their callers (and loaded from the cache with them)."""
    kernels = {}
    for mod in (dose_kernels, sparse, fmo, contour_kernels, polygons):
        for name, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and name not in NOT_IN_PLANNING:
                kernels[f"{mod.__name__}.{name}"] = obj
    general, aligned = _get_kernel()
    kernels["rayrt.qa.gamma.kernel"] = general
    kernels["rayrt.qa.gamma.kernel_aligned"] = aligned
    sources = {k: inspect.getsource(d.py_func) for k, d in kernels.items()}
    return {
        k: d
        for k, d in kernels.items()
        if not any(f"{d.py_func.__name__}(" in src for other, src in sources.items() if other != k)
    }


def _unreached_after_warm_up() -> list[str]:
    """The entry kernels that have no compiled (or cache-loaded) specialisation after warm_kernels()."""
    report = warm_kernels()
    assert [s.name for s in report.steps] == [name for name, _ in STEPS]
    return sorted(name for name, d in _entry_kernels().items() if not d.signatures)


def test_warm_up_compiles_every_planning_kernel():
    """In a fresh process (this one has run other tests' kernels), nothing but the warm-up runs."""
    out = subprocess.run([sys.executable, __file__], capture_output=True, text=True, check=True)
    missing = json.loads(out.stdout.strip().splitlines()[-1])
    assert not missing, f"rayrt.warmup does not reach these kernels; add a step that calls them: {missing}"


def test_one_grid_pass_specialisation_for_writable_and_read_only_density():
    """compute_dij hands the kernels a read-only density (as Ray's object store does), so a
    writable float64 density and a read-only float32 one share one compiled grid pass."""
    plan = _Plan()
    for _, step in STEPS[:3]:  # phantom, contouring, Dij: the plan's density, dose grid, beamlets and machine
        step(plan)
    grid = plan.grids[0]
    writable = Volume(plan.density.array.astype(np.float64), plan.density.grid, plan.density.quantity)
    frozen = np.ascontiguousarray(plan.density.array, dtype=np.float32)
    frozen.flags.writeable = False
    a = compute_dij(writable, plan.dose_grid, grid, plan.machine, 0, 8)
    b = compute_dij(Volume(frozen, plan.density.grid, plan.density.quantity), plan.dose_grid, grid, plan.machine, 0, 8)
    assert a.nnz > 0
    assert (a != b).nnz == 0
    assert len(dose_kernels.voxel_terms.signatures) == 1


if __name__ == "__main__":
    print(json.dumps(_unreached_after_warm_up()))
