"""Dose voxels whose centre lies on the patient's surface (a CT voxel face) are scored by the Dij.

A dose grid of twice the CT's voxel size (e.g. 2.5 mm CT slices, 5 mm dose grid, made by
``dose_grid_for``) puts every dose-voxel centre on a face between two CT voxels. Where that face
is the external contour (tissue on one side, density 0 on the other) the voxel is inside the
patient, and the structure masks resampled to the dose grid say so; the Dij must give it dose,
whichever side of it the air lies on (OpenKBP pt_203: 1131 body voxels, 9 of them in PTV56, got
exactly 0 Gy because the engine looked only at the CT voxel on the +x/+y/+z side).
"""

import numpy as np

from rayrt.domain.plan import Beam
from rayrt.dose.dij import compute_dij, dose_grid_for
from rayrt.dose.geometry import beamlet_grid_for_field
from rayrt.imaging.volume import Grid, Volume
from rayrt.machines import get_machine

#: the water cube's half side (mm): a CT voxel face (CT faces at multiples of 2.5 mm) and a plane
#: of dose-voxel centres (5 mm dose grid centred at odd multiples of 2.5 mm)
HALF_MM = 27.5


def _cube_phantom() -> Volume:
    """Water cube |x|, |y|, |z| < 27.5 mm in air (density 0) on a 2.5 mm CT, 100 mm across."""
    g = Grid(shape=(40, 40, 40), spacing_mm=(2.5, 2.5, 2.5), origin_mm=(-48.75, -48.75, -48.75))
    c = g.axis_mm("x")
    inside = np.abs(c) < HALF_MM
    rho = (inside[:, None, None] & inside[None, :, None] & inside[None, None, :]).astype(np.float32)
    return Volume(rho, g, "relative_electron_density")


def test_voxels_on_the_external_face_get_dose_on_every_side():
    m = get_machine("standard")
    ct = _cube_phantom()
    dose_grid = dose_grid_for(ct.grid, 5.0)
    x = dose_grid.axis_mm("x")
    assert np.isclose(np.abs(x), HALF_MM).sum() == 2  # the cube's faces are planes of dose-voxel centres
    beam = Beam(gantry_deg=0, isocenter_mm=(0, 0, 0))  # beam travels +y (anterior -> posterior)
    bg = beamlet_grid_for_field(beam, m, (-45.0, 45.0), (-45.0, 45.0), 5.0)
    dij = compute_dij(ct, dose_grid, bg, m)
    scored = (np.diff(dij.tocsr().indptr) > 0).reshape(dose_grid.shape)  # [k, j, i] = [z, y, x]

    on = np.abs(x) <= HALF_MM + 1e-6  # centre inside the cube or on its surface (same axes for x, y, z)
    closed_cube = on[:, None, None] & on[None, :, None] & on[None, None, :]
    entrance = np.isclose(dose_grid.axis_mm("y"), -HALF_MM)  # on the entrance face: depth 0, no dose (build-up)
    expected = closed_cube & ~entrance[None, :, None]
    # every voxel of the closed cube behind the entrance face has entries, nothing outside it does
    missing = np.argwhere(expected & ~scored)
    assert missing.size == 0, f"{len(missing)} patient voxels without dose, e.g. [k, j, i] {missing[:3].tolist()}"
    assert not (scored & ~closed_cube).any()

    # the voxels on the +z (superior) face, air above them, get about the dose of the voxels on the
    # -z face (air below): mirror images through the isocenter plane z = 0
    dose = np.asarray(dij.sum(axis=1)).ravel().reshape(dose_grid.shape)
    z = dose_grid.axis_mm("z")
    top, bottom = int(np.argmin(np.abs(z - HALF_MM))), int(np.argmin(np.abs(z + HALF_MM)))
    inner = np.ix_(on, on)
    np.testing.assert_allclose(dose[top][inner], dose[bottom][inner], rtol=1e-3, atol=1e-7)
