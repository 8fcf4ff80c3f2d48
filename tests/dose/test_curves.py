"""Commissioning curves (rayrt.dose.curves) computed with the voxel engine: physics and grids.

Coarse grids (4-5 mm) keep this file fast; physics checks use bounds that a wrong engine or a
wrong phantom set-up would break (field-size ordering, edge position, slab effects, symmetry).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import erf

from rayrt.domain.errors import InputError
from rayrt.dose.curves import (
    BeamQuality,
    CommissioningCurves,
    beam_quality,
    commissioning_curves,
    penumbra_80_20,
    refine_maximum,
)
from rayrt.machines import get_machine, list_machines

MACHINE = "truebeam_m120"


@pytest.fixture(scope="module")
def machine():
    if MACHINE not in list_machines():
        pytest.skip(f"machine {MACHINE} not in configs/machines")
    return get_machine(MACHINE)


@pytest.fixture(scope="module")
def curves(machine) -> CommissioningCurves:
    return commissioning_curves(
        machine, fields_mm=(30.0, 100.0), depths_mm=("dmax", 100.0), slab=True, resolution_mm=4.0, max_depth_mm=250.0
    )


def test_refine_maximum_exact_on_parabola():
    x = np.arange(0.0, 40.0, 4.0)
    y = 10.0 - (x - 13.3) ** 2
    xm, ym = refine_maximum(x, y)
    assert xm == pytest.approx(13.3, abs=1e-9)
    assert ym == pytest.approx(10.0, abs=1e-9)


def test_penumbra_of_a_gaussian_edge_is_1_683_sigma():
    sigma = 2.5
    x = np.arange(-120.0, 120.01, 0.5)
    prof = 100 * 0.5 * (erf((x + 50) / (math.sqrt(2) * sigma)) - erf((x - 50) / (math.sqrt(2) * sigma)))
    # Phi^-1(0.8) - Phi^-1(0.2) = 1.6832
    assert penumbra_80_20(x, prof) == pytest.approx(1.6832 * sigma, rel=0.01)


def test_penumbra_needs_a_profile_that_falls(machine):
    with pytest.raises(InputError, match="never falls"):
        penumbra_80_20([-10, -5, 0, 5, 10], [100, 100, 100, 100, 100])


def test_pdd_shape_and_field_size_dependence(curves):
    d = np.asarray(curves.depths_mm)
    assert d[0] > 0 and np.allclose(np.diff(d), curves.resolution_mm)
    for p in curves.water.pdds:
        v = np.asarray(p.dose_pct)
        assert v.max() <= 100.0 + 1e-6 and v.max() > 99.0
        assert 8.0 <= p.dmax_mm <= 25.0, p.dmax_mm
        beyond = v[d > p.dmax_mm + 8]
        assert np.all(np.diff(beyond) < 0), "PDD must fall monotonically beyond dmax"
        assert v[0] < 90.0, "build-up: the surface region is below the maximum"
    small, ref = curves.water.pdd(30.0), curves.water.pdd(100.0)
    assert 60.0 <= ref.pdd_at(100.0) <= 70.0
    assert small.pdd_at(100.0) < ref.pdd_at(100.0) - 2.0, "a 3x3 field has less phantom scatter than 10x10"
    assert small.dmax_gy_per_mu < ref.dmax_gy_per_mu, "output factor of 3x3 < 1"
    assert ref.dmax_gy_per_mu == pytest.approx(0.01, rel=0.03), "1 MU = 1 cGy at dmax of 10x10, SSD 100"


def test_profiles_normalised_symmetric_and_edge_at_the_divergent_field_edge(curves):
    x = np.asarray(curves.positions_mm)
    assert np.allclose(x, -x[::-1]) and 0.0 in curves.positions_mm
    p = curves.water.profile(100.0, 100.0)
    v = np.asarray(p.dose_pct)
    assert v[x == 0.0][0] == pytest.approx(100.0, abs=1e-6)
    assert np.max(np.abs(v - v[::-1])) < 0.5, "open square field on the axis must be symmetric"
    # the 50 % point lies at the geometric edge projected to depth 100: 50 * 1100/1000 = 55 mm
    right = x >= 0
    x50 = np.interp(50.0, v[right][::-1], x[right][::-1])
    assert x50 == pytest.approx(55.0, abs=2.5)
    assert p.depth_mm == 100.0
    dm = curves.water.profile(100.0, "dmax")
    assert dm.depth_mm == pytest.approx(curves.water.pdd(100.0).dmax_mm)
    # deeper profiles are wider (beam divergence)
    x50_dmax = np.interp(50.0, np.asarray(dm.dose_pct)[right][::-1], x[right][::-1])
    assert x50 > x50_dmax


def test_slab_phantoms_follow_radiological_depth(curves):
    water = curves.water.pdd(100.0)
    lung = curves.phantom("lung_slab")
    bone = curves.phantom("bone_slab")
    assert lung.slab_density == 0.25 and bone.slab_density == 1.8
    # above the slab: identical to water
    assert lung.pdd(100.0).pdd_at(20.0) == pytest.approx(water.pdd_at(20.0), abs=0.05)
    assert bone.pdd(100.0).pdd_at(20.0) == pytest.approx(water.pdd_at(20.0), abs=0.05)
    # below the slab: lung attenuates less (more dose), bone more
    assert lung.pdd(100.0).pdd_at(150.0) > water.pdd_at(150.0) + 3.0
    assert bone.pdd(100.0).pdd_at(150.0) < water.pdd_at(150.0) - 3.0
    # 50 mm of lung (0.25) ~ 12.5 mm of water: the lung PDD at 150 mm is close to water at
    # 150 - 37.5 mm, corrected by inverse square (1112.5/1150)^2
    expected = water.pdd_at(112.5) * (1112.5 / 1150.0) ** 2
    assert lung.pdd(100.0).pdd_at(150.0) == pytest.approx(expected, rel=0.03)


def test_beam_quality_in_published_6mv_ranges(curves):
    q = beam_quality(curves)
    assert isinstance(q, BeamQuality)
    assert q.reference_field_mm == 100.0
    assert 10.0 <= q.dmax_mm <= 20.0
    assert 60.0 <= q.pdd10_pct <= 70.0
    assert 32.0 <= q.pdd20_pct <= 42.0
    assert 0.60 <= q.tpr2010 <= 0.75
    assert abs(q.tpr2010 - q.tpr2010_from_pdd) < 0.04
    assert q.penumbra_80_20_mm is not None and 3.0 <= q.penumbra_80_20_mm <= 10.0


def test_shared_grids_and_json_round_trip(machine, curves):
    other = get_machine("versahd_agility") if "versahd_agility" in list_machines() else machine
    c2 = commissioning_curves(
        other,
        fields_mm=(30.0, 100.0),
        depths_mm=("dmax", 100.0),
        slab=False,
        tpr=False,
        resolution_mm=4.0,
        max_depth_mm=250.0,
    )
    assert c2.depths_mm == curves.depths_mm
    assert c2.positions_mm == curves.positions_mm
    back = CommissioningCurves.model_validate_json(curves.model_dump_json())
    assert back.water.pdd(100.0).pdd_at(100.0) == pytest.approx(curves.water.pdd(100.0).pdd_at(100.0))
    assert back.tpr2010 == curves.tpr2010
    assert c2.slabs == [] and c2.tpr2010 is None


def test_matches_the_analytic_water_model(machine):
    """Voxel engine vs the analytic convolution of the same kernels (rayrt.dose.pencil_beam.water_dose).

    A 3 x 3 cm² field lies entirely inside the engine's lateral cut-off, so the two must agree.
    """
    from rayrt.dose.pencil_beam import water_dose

    c = commissioning_curves(
        machine, fields_mm=(30.0,), depths_mm=(100.0,), slab=False, tpr=False, resolution_mm=4.0, max_depth_mm=200.0
    )
    d = np.asarray(c.depths_mm)
    ana = water_dose(machine, 30.0, 30.0, d, 0.0, 0.0, ssd_mm=1000.0)
    vox = np.asarray(c.water.pdd(30.0).dose_pct) * c.water.pdd(30.0).dmax_gy_per_mu / 100.0
    sel = d >= 20.0
    assert np.max(np.abs(vox[sel] / ana[sel] - 1.0)) < 0.02


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fields_mm": (0.0,)}, "outside 5..400"),
        ({"fields_mm": (500.0,)}, "outside 5..400"),
        ({"fields_mm": ()}, "at least one field"),
        ({"resolution_mm": 0.01}, "resolution_mm"),
        ({"depths_mm": ("deep",)}, "number \\(mm\\) or 'dmax'"),
        ({"depths_mm": (-5.0,)}, "profile depths"),
    ],
)
def test_bad_arguments_raise_input_error(machine, kwargs, match):
    with pytest.raises(InputError, match=match):
        commissioning_curves(machine, **{"slab": False, "tpr": False, "resolution_mm": 5.0, **kwargs})


def test_field_larger_than_the_machine_is_refused():
    if "halcyon" not in list_machines():
        pytest.skip("no halcyon machine")
    m = get_machine("halcyon")
    too_big = m.limits.max_field_x_mm + 20.0
    if too_big > 400:
        pytest.skip("machine allows 40 cm")
    with pytest.raises(InputError, match="exceeds machine"):
        commissioning_curves(m, fields_mm=(too_big,), slab=False, tpr=False, resolution_mm=5.0)
