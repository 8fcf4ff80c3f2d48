"""The TG119.mat phantom (CORT, via matRad/pyRadPlan) through compute_dij: slow, needs ../shared/data."""

import numpy as np
import pytest
from helpers.paths import SHARED
from scipy.ndimage import binary_dilation

from rayrt.domain.plan import Beam
from rayrt.dose.dij import dose_grid_for, plan_dij
from rayrt.dose.phantom import computation_phantom
from rayrt.imaging.volume import Volume
from rayrt.machines import get_machine

TG119 = SHARED / "data" / "phantoms" / "TG119.mat"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tg119():
    if not TG119.is_file():
        pytest.skip(f"shared data not found: {TG119} (set RAYRT_SHARED)")
    from rayrt.imaging.phantoms import load_mat_phantom

    st = load_mat_phantom(TG119)
    ct = st.images[st.primary_uid]
    masks = {s.structure.name: s.mask for s in st.structures}
    rho = computation_phantom(
        Volume(ct.meta["relative_electron_density"], ct.grid, "relative_electron_density"), external_mask=masks["BODY"]
    )
    return rho, masks


def test_tg119_setup_a_dij(tg119):
    rho, masks = tg119
    tgt = masks["OuterTarget"]
    iso = tuple(rho.grid.index_to_world(np.argwhere(tgt).mean(axis=0)))
    m = get_machine("standard")
    beams = [Beam(gantry_deg=a, isocenter_mm=iso, number=i + 1) for i, a in enumerate([0, 72, 144, 216, 288])]
    dg = dose_grid_for(rho.grid, 5.0)
    D, grids = plan_dij(rho, dg, beams, m, tgt)
    assert 1400 < D.shape[1] < 1800 and D.nnz > 1e7
    # uniform weights: the target gets more dose than the core's surroundings average, nothing outside the body
    dose = D @ np.ones(D.shape[1], np.float32)
    body = rho.resample(dg, order=0).array > 0
    # a dose voxel whose centre lies on a face between CT voxels takes the densest one it touches
    # (rayrt.dose.dij), so the surface shell one dose voxel beyond the nearest-neighbour body is scored too
    assert dose.reshape(dg.shape)[~binary_dilation(body)].max() == 0
    tgt_d = Volume(tgt.astype(np.uint8), rho.grid).resample(dg, order=0).array > 0
    assert dose.reshape(dg.shape)[tgt_d].mean() > 2 * dose.reshape(dg.shape)[body & ~tgt_d].mean()
