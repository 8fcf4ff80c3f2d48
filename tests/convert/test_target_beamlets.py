"""Conversion on a plan with two dose levels (a simultaneous boost): the target machine's beamlets
cover every target the standard plan treats, and the conversion's fluence-map optimisation carries
the standard plan's fluence regulariser.

Before the fix the conversion's beamlets covered the prescription target only: on the OpenKBP
head-and-neck patients (SIB 70/56 Gy) 7.5 % of the standard fluence (the PTV56 part) fell outside
them, so every recomputed candidate under-dosed PTV56 (gamma 77-82 % in mu_refit); and the
conversion's FMO had no regulariser, so its fluence had beamlets at up to 170 x the open-field
weight that no 15 segments reproduce (sequencing error 50-90 %, gamma 29-50 % after DAO).

A synthetic water box (5 mm grid) with two cubic targets side by side, one beam, one open segment
over each: small enough to build the target's Dij in a few seconds.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rayrt.convert import convert as C
from rayrt.convert.policy import load_conversion_options
from rayrt.domain.order import MedicalOrder, ObjectiveKind, ObjectiveSpec, Prescription
from rayrt.domain.plan import Beam, Plan, Segment
from rayrt.domain.planning import PlanningRequest, planning_defaults
from rayrt.imaging.volume import Grid
from rayrt.machines import get_machine
from rayrt.optimize.fmo import FluenceOptions, initial_weights, optimize_fluence
from rayrt.optimize.standard import PlanGeometry, StandardPlan

SPACING_MM = 5.0


def _two_target_case(targets: list[str]) -> tuple[StandardPlan, PlanGeometry]:
    """Water box 120 x 60 x 60 mm; PTVhigh (20 mm cube) at x = -25 mm, PTVlow (20 mm cube) at
    x = +25 mm; one beam (gantry 0, isocenter at the box centre) with one segment opening both
    (two segments, x -35..-15 and 15..35 mm, y -10..10 mm). ``targets``: the geometry's covered structures."""
    shape = (12, 12, 24)  # k, j, i
    grid = Grid(
        shape=shape,
        spacing_mm=(SPACING_MM, SPACING_MM, SPACING_MM),
        origin_mm=(-57.5, -27.5, -27.5),
    )
    k, j, i = np.indices(shape)
    x = -57.5 + SPACING_MM * i
    y = -27.5 + SPACING_MM * j
    z = -27.5 + SPACING_MM * k
    body = np.ones(shape, bool)
    cube = (np.abs(y) < 10) & (np.abs(z) < 10)
    high = cube & (np.abs(x + 25) < 10)
    low = cube & (np.abs(x - 25) < 10)
    order = MedicalOrder(
        prescription=Prescription(target="PTVhigh", total_dose_gy=60.0, fractions=30),
        dose_levels={"PTVlow": 50.0},
        objectives=[
            ObjectiveSpec(structure="PTVhigh", kind=ObjectiveKind.squared_deviation, dose_gy=60.0, priority=100.0),
            ObjectiveSpec(structure="PTVlow", kind=ObjectiveKind.squared_deviation, dose_gy=50.0, priority=100.0),
        ],
    )
    std_machine = get_machine("standard")
    b = std_machine.mlc.boundaries
    op = (b[:-1] >= -10.0 - 1e-6) & (b[1:] <= 10.0 + 1e-6)

    def segment(x_lo: float, x_hi: float) -> Segment:
        return Segment(
            x1_mm=list(np.full(op.size, x_lo)),
            x2_mm=list(np.where(op, x_hi, x_lo)),
            jaw_x_mm=(x_lo, x_hi) if std_machine.jaw_x is not None else None,
            jaw_y_mm=(-10.0, 10.0) if std_machine.jaw_y is not None else None,
            mu=100.0,
        )

    segs = [segment(-35.0, -15.0), segment(15.0, 35.0)]  # each target's projection
    beam = Beam(name="B1", number=1, gantry_deg=0.0, isocenter_mm=(0.0, 0.0, 0.0), segments=segs)
    plan = Plan(machine=std_machine.name, beams=[beam], fractions=30)
    geometry = PlanGeometry(
        standard_machine=std_machine.name,
        density_grid=grid,
        dose_grid=grid,
        isocenter_mm=(0.0, 0.0, 0.0),
        beams=[beam.model_copy(update={"segments": []})],
        target="PTVhigh",
        targets=targets,
        external="BODY",
        mask_names=["BODY", "PTVhigh", "PTVlow"],
        density=np.ones(shape, np.float32),
        dose_masks={"BODY": body, "PTVhigh": high, "PTVlow": low},
    )
    dose = np.where(high, 60.0, np.where(low, 50.0, 10.0)).astype(np.float32)
    standard = StandardPlan(plan=plan, order=order, dose_grid=grid, normalization_factor=1.0, dose=dose)
    return standard, geometry


@pytest.fixture(scope="module")
def setups():
    """(std, setup) of the conversion to the TrueBeam M120 with the geometry's covered targets both
    targets (as the pipeline's geometry stage writes them) and the prescription target only."""
    target = get_machine("truebeam_m120")
    opts = load_conversion_options()
    out = {}
    for label, covered in (("both", ["PTVhigh", "PTVlow"]), ("high", ["PTVhigh"])):
        standard, geometry = _two_target_case(covered)
        std = C._standard_side(standard, geometry, target)
        out[label] = (std, C._setup(std, target, opts))
    return out


def test_target_beamlets_cover_every_target_of_the_standard_plan(setups):
    std, setup = setups["both"]
    assert std.covered == ("PTVhigh", "PTVlow")
    # the standard segments open both targets: their fluence lies within the target's beamlets (the
    # estimate counts the 1 mm rounded-leaf-end strip of every open pair as open area: ~5 % here)
    assert setup.lost_fraction < 0.1
    # the prescription target's beamlets alone miss the other dose level (what the conversion did before)
    std_h, setup_h = setups["high"]
    assert setup_h.lost_fraction > setup.lost_fraction + 0.35
    assert setup.dij.shape[1] > setup_h.dij.shape[1]


def test_covered_targets_default_to_the_orders_targets():
    """A geometry without its covered list (older stored runs): every target of the order."""
    standard, geometry = _two_target_case([])
    std = C._standard_side(standard, geometry, get_machine("truebeam_m120"))
    assert set(std.covered) == {"PTVhigh", "PTVlow"}


def test_conversion_fmo_carries_the_planning_regulariser(setups):
    std, setup = setups["both"]
    opts = load_conversion_options()
    problem = C._problem(std, setup, opts, 1.0)
    reg = problem.regularizer
    assert reg is not None
    d = PlanningRequest.model_validate(planning_defaults())
    w_open = float(initial_weights(problem).mean())
    assert reg.open_weight == pytest.approx(w_open)
    assert reg.smooth_weight == pytest.approx(d.fluence_smoothing)
    assert reg.mu_cap == d.fluence_mu_cap
    if d.max_beamlet_weight is not None:
        assert reg.upper_bound == pytest.approx(d.max_beamlet_weight * w_open)
    # a start far above the bound ends within it
    w0 = np.full(problem.num_beamlets, 20.0 * w_open)
    fr = optimize_fluence(problem, FluenceOptions(max_iterations=5), w0=w0)
    if reg.upper_bound is not None:
        assert fr.w.max() <= reg.upper_bound * (1 + 1e-9)
    # every target's D95 is mimicked both ways (the release's agreement check is two-sided)
    names = {o.structure for o in problem.objectives}
    assert {"PTVhigh (std D95 cap)", "PTVlow (std D95 cap)", "PTVlow (std D95)"} <= names
    # the segment-MU refit's row-only problem has no beamlets to regularise
    assert C._problem(std, setup, opts, 1.0, with_dij=False).regularizer is None


def test_conversion_regulariser_settings_override_the_planning_defaults(setups):
    std, setup = setups["both"]
    opts = load_conversion_options(fluence_smoothing=0.0, max_beamlet_weight=2.0, fluence_mu_cap=5.0)
    reg = C._problem(std, setup, opts, 1.0).regularizer
    assert reg is not None
    assert reg.smooth_weight == 0.0
    assert reg.upper_bound == pytest.approx(2.0 * reg.open_weight)
    assert reg.mu_cap == 5.0


def test_structures_near_their_agreement_limit_get_stronger_dvh_mimicking(setups):
    """A failed attempt's structures whose agreement with the standard plan is worse than half the
    limit (target D95 either way, organ D10 above) get their DVH-mimicking weights multiplied by
    ``agreement_boost`` in the next attempt; the others keep theirs."""
    std, setup = setups["both"]
    opts = load_conversion_options()
    dose = std.dose_gy.copy()
    dose[std.masks["PTVlow"]] += 0.8  # D95 0.8 Gy above the standard's: within the 1 Gy limit, past half of it
    dose[std.masks["PTVhigh"]] -= 0.3
    boost = C.agreement_boost(dose, std, ["PTVhigh", "PTVlow"], opts, {})
    assert boost == {"PTVlow": opts.agreement_boost}
    assert C.agreement_boost(dose, std, ["PTVhigh", "PTVlow"], opts, boost) == {"PTVlow": opts.agreement_boost**2}
    off = opts.model_copy(update={"agreement_boost": 1.0})
    assert C.agreement_boost(dose, std, ["PTVhigh", "PTVlow"], off, {}) == {}
    # the boosted structure's DVH terms weigh more, its per-voxel mimicking and the other structures' do not
    plain = C._problem(std, setup, opts, 1.0)
    boosted = C._problem(replace(std, dvh_boost=tuple(boost.items())), setup, opts, 1.0)
    w0 = {o.structure: o.weight for o in plain.objectives}
    w1 = {o.structure: o.weight for o in boosted.objectives}
    assert w1["PTVlow (std D95)"] == pytest.approx(opts.agreement_boost * w0["PTVlow (std D95)"])
    assert w1["PTVlow (mimic)"] == pytest.approx(w0["PTVlow (mimic)"])
    assert w1["PTVhigh (std D95)"] == pytest.approx(w0["PTVhigh (std D95)"])
