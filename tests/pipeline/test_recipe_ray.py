"""The planning recipe on the session's Ray: the Dij fanned out as tasks (per beam x chunk, density
put once) is bit-for-bit the single-process matrix."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.planning import FAST_PLANNING

from rayrt.domain.planning import PlanningRequest
from rayrt.pipeline import run_recipe
from rayrt.pipeline.planning import chunk_plan

pytestmark = pytest.mark.ray

# the one fast planning settings, with fewer beams and a coarser Dij (cut-off, threshold) and more
# chunks per CPU: this test compares the Dij itself, fanned out against computed in one process
REQ = {
    **FAST_PLANNING,
    "machines": [],
    "num_beams": 3,
    "dij_cutoff_mm": 30.0,
    "dij_threshold": 1e-3,
    "chunks_per_cpu": 6,
}


@pytest.fixture(scope="module")
def study():
    from helpers.study import make_small_study

    return make_small_study(with_dose=False)


@pytest.fixture(scope="module")
def order():
    from helpers.study import SMALL_ORDER

    return SMALL_ORDER


def _same(a, b) -> bool:
    a, b = a.tocsc(), b.tocsc()
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and np.array_equal(a.indptr, b.indptr)
        and np.array_equal(a.indices, b.indices)
        and np.array_equal(a.data, b.data)
    )


def test_ray_fanout_dij_equals_single_process(ray_session, study, order):
    import ray

    from rayrt.dose.dij import compute_dij, hstack_exact
    from rayrt.machines import get_machine
    from rayrt.service.controlled import RayExecutor

    ex = RayExecutor()
    res = run_recipe(study, order, PlanningRequest(**REQ), until="dij", executor=ex)
    shared = res.artefacts["_shared"]
    assert isinstance(shared["density"], ray.ObjectRef)  # the density went through the object store once
    assert isinstance(shared["mask:PTV"], ray.ObjectRef)
    d = res["dij"]
    assert d.tasks > len(res["beamlet_set"].beams)  # more than one chunk per beam: chunks really split beams

    geo, bs = res["geometry"], res["beamlet_set"]
    m = get_machine(geo.standard_machine)
    single = hstack_exact(
        [compute_dij(geo.density_volume(), geo.dose_grid, g, m, cutoff_mm=30.0, threshold=1e-3) for g in bs.grids()]
    )
    assert _same(d.matrix, single)

    local = run_recipe(study, order, PlanningRequest(**REQ), until="dij")
    assert _same(local["dij"].matrix, d.matrix)


def test_ray_chunks_use_free_cpus(ray_session):
    from rayrt.service.controlled import RayExecutor

    ex = RayExecutor()
    n = ex.available_cpus()
    assert 1 <= n <= 2  # the session Ray has 2 CPUs
    chunks = chunk_plan([400, 400], n, chunks_per_cpu=2)
    assert len(chunks) >= 2 * n - 1
