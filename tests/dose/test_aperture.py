"""Aperture (segment) dose: partial coverage, transmission, head scatter, and agreement with beamlet sums."""

import numpy as np
import pytest
from helpers.dose import leaf_gradient_vs_finite_differences

from rayrt.domain.errors import InputError
from rayrt.domain.plan import Beam, Segment
from rayrt.dose.aperture import (
    aperture_dose,
    aperture_fluence,
    segment_equivalent_square_mm,
    segment_transmission,
)
from rayrt.dose.dij import compute_dij
from rayrt.dose.geometry import beamlet_grid_for_field
from rayrt.imaging.volume import Grid, Volume
from rayrt.machines import get_machine


def water(spacing=5.0):
    n = int(300 / spacing)
    g = Grid(
        shape=(n, n, n), spacing_mm=(spacing,) * 3, origin_mm=(-150 + spacing / 2, spacing / 2, -150 + spacing / 2)
    )
    return Volume(np.ones(g.shape, np.float32), g, "relative_electron_density")


def rect_segment(machine, x=(-50.0, 50.0), y=(-50.0, 50.0), mu=1.0, jaws=True):
    c = machine.mlc.leaf_centers_mm
    inside = (c > y[0]) & (c < y[1])
    x1 = np.where(inside, x[0], 0.0)
    x2 = np.where(inside, x[1], 0.0)
    return Segment(
        x1_mm=x1.tolist(),
        x2_mm=x2.tolist(),
        mu=mu,
        jaw_x_mm=tuple(x) if (jaws and machine.jaw_x) else None,
        jaw_y_mm=tuple(y) if (jaws and machine.jaw_y) else None,
    )


BEAM = Beam(gantry_deg=0, isocenter_mm=(0.0, 100.0, 0.0))
DOSE_GRID = Grid(shape=(5, 9, 13), spacing_mm=(10.0, 20.0, 10.0), origin_mm=(-60.0, 20.0, -40.0))


@pytest.mark.parametrize("name", ["standard", "versahd_agility"])
def test_open_aperture_equals_sum_of_beamlets(name):
    m = get_machine(name)
    rho = water()
    seg = rect_segment(m)
    ap = aperture_dose(rho, DOSE_GRID, BEAM, [seg], m)
    bg = beamlet_grid_for_field(BEAM, m, (-50, 50), (-50, 50), 5.0)
    beamlets = np.asarray(compute_dij(rho, DOSE_GRID, bg, m).sum(axis=1)).ravel().reshape(DOSE_GRID.shape)
    inside = beamlets > 0.5 * beamlets.max()
    assert inside.sum() > 50
    rel = np.abs(ap[inside] - beamlets[inside]) / beamlets[inside]
    assert rel.max() < 0.01
    # outside the field the aperture adds the MLC/jaw transmission the bixel sum lacks
    assert ap.sum() >= beamlets.sum() * 0.99


def test_partial_leaf_and_jaw_coverage_is_exact():
    m = get_machine("standard")  # transmission 1 %, dosimetric leaf gap 1 mm, jaw transmission 0.1 %
    bg = beamlet_grid_for_field(BEAM, m, (-10, 10), (-10, 10), 5.0)
    seg = rect_segment(m, x=(-10.0, 2.5), y=(-10.0, 10.0), jaws=False)
    t = segment_transmission(bg, seg, m).reshape(4, 4)  # rows: pairs, cols: -10..-5, -5..0, 0..5, 5..10
    tm = m.mlc.transmission
    # column [0, 5]: open to 2.5 + 0.5 (half DLG) = 3.0 -> 0.6 open + 0.4 transmitted
    assert np.allclose(t[:, 2], 0.6 + 0.4 * tm)
    assert np.allclose(t[:, 0], 1.0) and np.allclose(t[:, 1], 1.0)
    assert np.allclose(t[:, 3], tm)
    # a Y jaw half-way across a 10 mm MLCi2 leaf row
    i2 = get_machine("synergy_mlci2")
    bg2 = beamlet_grid_for_field(BEAM, i2, (-10, 10), (-10, 10), 5.0)
    seg2 = rect_segment(i2, x=(-10.0, 10.0), y=(-10.0, 10.0))
    seg2 = seg2.model_copy(update={"jaw_y_mm": (-5.0, 10.0)})
    t2 = segment_transmission(bg2, seg2, i2).reshape(2, 4)
    tj = i2.jaw_y.transmission
    assert np.allclose(t2[0], 0.5 + 0.5 * tj) and np.allclose(t2[1], 1.0)


def test_closed_leaves_transmit_and_fluence_is_linear_in_mu():
    m = get_machine("truebeam_m120")
    bg = beamlet_grid_for_field(BEAM, m, (-50, 50), (-50, 50), 5.0)
    closed = Segment(x1_mm=[0.0] * 60, x2_mm=[0.0] * 60, mu=10.0, jaw_x_mm=(-50, 50), jaw_y_mm=(-50, 50))
    assert np.allclose(aperture_fluence(bg, [closed], m), 10.0 * m.mlc.transmission * float(m.beam.head_scatter_at(0)))
    a = rect_segment(m, mu=2.0)
    b = rect_segment(m, x=(-20, 20), y=(-20, 20), mu=3.0)
    fa, fb = aperture_fluence(bg, [a], m), aperture_fluence(bg, [b], m)
    assert np.allclose(aperture_fluence(bg, [a, b], m), fa + fb)
    assert np.allclose(fa.max(), 2.0)  # 10 x 10 field: Sc = 1
    assert segment_equivalent_square_mm(b, m) == pytest.approx(40.0)
    assert np.allclose(fb.max(), 3.0 * float(m.beam.head_scatter_at(40.0)))  # small field: less head scatter


def test_dual_layer_rows_follow_their_leaf_pair():
    m = get_machine("halcyon")
    bg = beamlet_grid_for_field(BEAM, m, (-10, 10), (-10, 10), 5.0)
    assert bg.num_bixels == 16 and np.allclose(bg.height_mm, 5.0)
    seg = rect_segment(m, x=(-10, 10), y=(-10, 0), jaws=False)
    t = segment_transmission(bg, seg, m).reshape(4, 4)
    assert np.allclose(t[:2], 1.0) and np.allclose(t[2:], m.mlc.transmission)


def test_segment_must_match_the_mlc():
    m = get_machine("standard")
    bg = beamlet_grid_for_field(BEAM, m, (-10, 10), (-10, 10), 5.0)
    with pytest.raises(InputError, match="leaf pairs"):
        aperture_fluence(bg, [Segment(x1_mm=[0.0] * 60, x2_mm=[1.0] * 60, mu=1)], m)
    with pytest.raises(InputError, match="open"):
        aperture_dose(water(10.0), DOSE_GRID, BEAM, [Segment(x1_mm=[0.0] * 80, x2_mm=[0.0] * 80, mu=1)], m)


@pytest.mark.parametrize("name", ["standard", "truebeam_m120", "versahd_agility"])
def test_leaf_gradient_matches_finite_differences(name):
    m = get_machine(name)
    bg = beamlet_grid_for_field(BEAM, m, (-40, 40), (-20, 20), 5.0)
    seg = rect_segment(m, x=(-13.3, 21.7), y=(-20, 20), jaws=False)
    seg = seg.model_copy(update={"jaw_x_mm": (-30.0, 17.2) if m.jaw_x else None})
    g1, g2 = leaf_gradient_vs_finite_differences(bg, seg, m)
    assert np.abs(g2).max() > 0 and np.abs(g1).max() > 0


def test_beam_without_mu_delivers_no_dose():
    m = get_machine("standard")
    rho = water(10.0)
    for segs in ([], [rect_segment(m, mu=0.0)]):
        d = aperture_dose(rho, DOSE_GRID, BEAM, segs, m)
        assert d.shape == DOSE_GRID.shape and not d.any()
    assert aperture_dose(rho, DOSE_GRID, BEAM, [rect_segment(m)], m).max() > 0
