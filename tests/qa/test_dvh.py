"""Dose-volume metrics against analytic cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rayrt.imaging.volume import Grid, Volume
from rayrt.qa.dvh import cumulative_dvh, dose_at_volume, dvh_metrics, structure_dvh_metrics, volume_at_dose


def test_uniform_dose():
    dose = np.full((4, 5, 6), 2.5)
    mask = np.zeros(dose.shape, bool)
    mask[1:3, 1:4, 2:5] = True
    m = dvh_metrics(dose, mask, 0.027, "box")
    assert m.volume_cc == pytest.approx(18 * 0.027)
    for v in (m.min_gy, m.mean_gy, m.max_gy, m.d2_gy, m.d5_gy, m.d50_gy, m.d95_gy, m.d98_gy):
        assert v == pytest.approx(2.5)
    assert volume_at_dose(dose[mask], 2.5) == 100.0
    assert volume_at_dose(dose[mask], 2.5001) == 0.0


def test_linear_gradient_through_a_box_gives_analytic_dx():
    # dose = g * x across a box [0, L] mm sampled at voxel centres; continuous Dx = g * L * (1 - x/100)
    n, h, gdose = 200, 0.5, 0.4  # 200 voxels of 0.5 mm, 0.4 Gy/mm -> 0..40 Gy
    x = (np.arange(n) + 0.5) * h
    dose = np.broadcast_to(gdose * x[None, None, :], (3, 4, n)).copy()
    mask = np.ones(dose.shape, bool)
    m = dvh_metrics(dose, mask, 0.001, "box")
    L = n * h
    for pct, val in ((2, m.d2_gy), (5, m.d5_gy), (50, m.d50_gy), (95, m.d95_gy), (98, m.d98_gy)):
        assert val == pytest.approx(gdose * L * (1 - pct / 100), abs=1e-9)
    assert m.mean_gy == pytest.approx(gdose * L / 2)
    assert m.max_gy == pytest.approx(gdose * x[-1]) and m.min_gy == pytest.approx(gdose * x[0])
    # Vx is the fraction of voxel centres at or above x Gy
    assert volume_at_dose(dose[mask], 10.0) == pytest.approx(75.0)
    # scalar (partition) and array (sort) paths agree
    pcts = np.array([0, 0.1, 10, 33.3, 90, 99.9, 100])
    arr = dose_at_volume(dose[mask], pcts)
    assert np.allclose(arr, [dose_at_volume(dose[mask], p) for p in pcts])
    assert arr[0] == pytest.approx(dose.max()) and arr[-1] == pytest.approx(dose.min())


def test_dx_definition_on_few_voxels():
    # four voxels: each represents 25 % of the volume, its dose placed at the middle of its share
    d = np.array([10.0, 20.0, 30.0, 40.0])
    assert dose_at_volume(d, 12.5) == pytest.approx(40.0)
    assert dose_at_volume(d, 25.0) == pytest.approx(35.0)
    assert dose_at_volume(d, 87.5) == pytest.approx(10.0)
    assert dose_at_volume(d, 5.0) == pytest.approx(40.0)  # clamped to max
    assert dose_at_volume(d, 100.0) == pytest.approx(10.0)


def test_cumulative_dvh_shape_and_monotonic():
    rng = np.random.default_rng(0)
    dose = rng.uniform(0, 60, size=(10, 10, 10))
    mask = dose > 5
    axis, vol = cumulative_dvh(dose, mask)
    assert vol[0] == pytest.approx(100.0) and vol[-1] == pytest.approx(0.0)
    assert np.all(np.diff(vol) <= 0)
    axis2, vol2 = cumulative_dvh(dose, mask, bins_gy=np.array([0.0, 30.0, 70.0]))
    assert vol2[1] == pytest.approx(volume_at_dose(dose[mask], 30.0))


def test_empty_mask_gives_zero_volume_and_nan():
    m = dvh_metrics(np.ones((2, 2, 2)), np.zeros((2, 2, 2), bool), 1.0, "none")
    assert m.volume_cc == 0 and math.isnan(m.mean_gy)
    assert json.loads(m.model_dump_json())["mean_gy"] is None


def _cylinder_polys(r, z_planes, n=360):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [np.column_stack([r * np.cos(t), r * np.sin(t), np.full(n, z)]) for z in z_planes]


def test_subvoxel_sampling_improves_small_structure_volume_and_linear_dose():
    g = Grid(shape=(12, 20, 20), spacing_mm=(3.0, 3.0, 3.0), origin_mm=(-28.5, -28.5, -16.5))
    zc = g.axis_mm("z")
    polys = _cylinder_polys(4.0, zc[np.abs(zc) < 9])  # r = 4 mm, 6 planes x 3 mm = 18 mm: 0.905 cc
    x = g.voxel_centers_mm()[..., 0]
    dose = Volume(10.0 + 0.5 * x, g, "dose_gy")
    exact = math.pi * 16 * 18 / 1000
    coarse = structure_dvh_metrics(dose, polys, "small", subvoxel=1)
    fine = structure_dvh_metrics(dose, polys, "small", subvoxel=6)
    assert abs(fine.volume_cc - exact) / exact < 0.05  # 0.5 mm sub-voxels: lattice error of a 4 mm circle
    assert abs(fine.volume_cc - exact) < abs(coarse.volume_cc - exact)
    assert fine.mean_gy == pytest.approx(10.0, abs=0.05)  # symmetric structure in a linear field
    assert fine.max_gy <= 10.0 + 0.5 * 4.0 + 1e-6 and fine.max_gy > 11.5
    assert fine.method.startswith("sub-voxel") and coarse.method.startswith("voxel-centre")
    # only structures below small_cc are supersampled
    big = structure_dvh_metrics(dose, polys, "small", subvoxel=6, small_cc=0.5)
    assert big.method.startswith("voxel-centre")
