"""Plan conversion on a small case (TG-119 phantom on a 6 mm CT, 8 mm dose grid, 5 beams).

Covers: source coincidence (twin matches, curves cached), the mode policy, twin -> reuse,
conversion to MLCi2 (10 mm, no interdigitation; released, on a 5 mm dose grid), a forced QA failure regenerated up to the
limit and never released, the output folders, and export / re-import / recompute.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from rayrt.domain.errors import InputError
from rayrt.domain.order import ObjectiveKind, ObjectiveSpec


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    import os

    os.environ["RAYRT_CACHE_DIR"] = str(tmp_path_factory.mktemp("rayrt_cache"))
    from rayrt.convert.convert import standard_input_from_result
    from rayrt.machines import get_machine
    from rayrt.imaging.phantoms import tg119_order, tg119_phantom
    from rayrt.optimize.planner import PlanningOptions, plan_standard

    study, order, m = tg119_phantom(6.0), tg119_order(), get_machine("standard")
    res = plan_standard(study, order, m, [0.0, 72.0, 144.0, 216.0, 288.0],
                        PlanningOptions(dose_grid_mm=8.0, fmo_iterations=100, dao_rounds=2, dao_iterations=30))
    return study, order, m, res, standard_input_from_result(res, study, order, m)


def _opts(**kw):
    from rayrt.convert.policy import ConversionOptions

    base = dict(fmo_iterations=100, dao_rounds=2, dao_iterations=30)
    base.update(kw)
    return ConversionOptions(**base)


def test_standard_input_is_picklable(small):
    import pickle

    si = small[4]
    back = pickle.loads(pickle.dumps(si))
    assert back.plan == si.plan and np.array_equal(back.dose_gy, si.dose_gy) and set(back.masks) == set(si.masks)
    assert back.density.array.shape == si.density.array.shape and back.external == "BODY"


def test_angles_outside_the_target_range_are_fitted_and_noted(small):
    from rayrt.convert.convert import fit_angles
    from rayrt.machines import get_machine

    si, tb = small[4], get_machine("truebeam_m120")
    assert fit_angles(si, tb) is si  # 0, 72, ... 288 deg: all reachable, nothing changes
    beams = [b.model_copy(update={"gantry_deg": 180.0}) if i == 2 else b for i, b in enumerate(si.plan.beams)]
    moved = fit_angles(replace(si, plan=si.plan.model_copy(update={"beams": beams})), tb)
    assert moved.plan.beams[2].gantry_deg == pytest.approx(180.1)
    assert [b.gantry_deg for b in moved.plan.beams[:2]] == [b.gantry_deg for b in si.plan.beams[:2]]
    assert any("delivered at 180.1 deg" in n for n in moved.plan.notes)
    far = [b.model_copy(update={"collimator_deg": 180.0}) for b in si.plan.beams]  # M120 collimator: 185 .. 175 through 0
    with pytest.raises(InputError, match="collimator angle 180 deg is outside"):
        fit_angles(replace(si, plan=si.plan.model_copy(update={"beams": far})), tb)


def test_source_comparison_twin_matches_and_curves_are_cached(small):
    from rayrt.convert import source_match
    from rayrt.convert.source_match import cached_curves, compare_sources, curves_cache_dir
    from rayrt.machines import get_machine

    source_match._MEM_CACHE.clear()  # earlier tests in this process may hold the curves in memory
    std, twin, mlci2 = get_machine("standard"), get_machine("standard_twin"), get_machine("synergy_mlci2")
    c = compare_sources(std, twin)
    assert c.verdict == "matches" and c.score_pct == 100.0 and c.max_deviation_pct == 0.0 and c.output_ratio == pytest.approx(1.0)
    assert {x.phantom for x in c.curves} == {"water", "lung_slab", "bone_slab"} and {x.kind for x in c.curves} == {"pdd", "profile"}
    # same data under another name: one cache entry; the curves carry each machine's own name
    files = list(curves_cache_dir().glob("*.json"))
    assert len(files) == 1
    assert cached_curves(twin).machine == "standard_twin" and cached_curves(std).machine == "standard"
    d = compare_sources(std, mlci2)
    assert d.verdict != "matches" and d.score_pct < 99.0 and d.reasons
    assert len(list(curves_cache_dir().glob("*.json"))) == 2


def test_policy_modes():
    from rayrt.convert.policy import ConversionOptions, choose_modes
    from rayrt.domain.errors import InputError

    o = ConversionOptions(max_attempts=3, strength_factor=4.0)
    assert choose_modes("matches", o) == (["reuse", "dose_only", "mu_refit"], [1.0, 1.0, 1.0])
    assert choose_modes("same_leaves", o) == (["mu_refit", "mu_refit", "fluence"], [1.0, 4.0, 4.0])
    assert choose_modes("convertible", o) == (["dao", "dao", "dao"], [1.0, 4.0, 16.0])
    assert choose_modes("incompatible", o) == ([], [])
    assert choose_modes("convertible", o, forced="dose_only")[0] == ["dose_only", "mu_refit", "fluence"]
    with pytest.raises(InputError, match="recompute mode"):
        choose_modes("matches", o, forced="magic")


def test_normalised_objective_gradient_matches_finite_differences():
    """The segment-MU refit's objective on the prescription-normalised dose (d = Rx / D95(A m) x A m):
    value and analytic gradient against central differences, and scale invariance (f(c m) = f(m))."""
    from rayrt.convert.convert import _metric_weights, normalised_objective
    from rayrt.optimize.objectives import make_objective
    from rayrt.qa.dvh import dose_at_volume

    rng = np.random.default_rng(3)
    n_vox, n_seg = 400, 7
    A = (rng.random((n_vox, n_seg)) * 0.02).astype(np.float32)
    ptv, oar = np.arange(0, 150), np.arange(150, 400)
    ref = rng.random(n_vox) * 50.0
    terms = [(make_objective("squared_deviation", "PTV", ptv, 50.0), 10.0),
             (make_objective("squared_overdose", "OAR", oar, 20.0), 3.0),
             (make_objective("dose_mimicking", "OAR (mimic)", oar, 1.0, reference_gy=ref[oar], tolerance_gy=1.0), 5.0)]
    m = rng.random(n_seg) * 100 + 50
    v, idx, w = _metric_weights((A.astype(np.float64) @ m)[ptv], 95.0)
    assert v == pytest.approx(float(dose_at_volume((A.astype(np.float64) @ m)[ptv], 95.0)), rel=1e-5)
    f, g = normalised_objective(m, A, terms, 50.0, ptv, 95.0)
    assert normalised_objective(3.0 * m, A, terms, 50.0, ptv, 95.0)[0] == pytest.approx(f, rel=1e-4)
    h = 0.2  # MU ~ 100: float32 products round m at ~1e-5, far below the step
    fd = np.array([(normalised_objective(m + h * e, A, terms, 50.0, ptv, 95.0)[0] - normalised_objective(m - h * e, A, terms, 50.0, ptv, 95.0)[0])
                   / (2 * h) for e in np.eye(n_seg)])
    np.testing.assert_allclose(g, fd, rtol=2e-2, atol=1e-3 * np.abs(fd).max())


def test_mu_refit_keeps_the_segments_and_normalises(small):
    """mu_refit on the Agility (same 5 mm leaf boundaries): the dose_only segments' leaves exactly,
    only the MU changed, the refit objective not above its start, and the refit already normalised
    (the final normalisation moves the MU by round-off only); QA-gated like every mode."""
    from rayrt.convert.convert import convert_for_machine
    from rayrt.machines import get_machine

    si = small[4]
    agility = get_machine("versahd_agility")
    r0 = convert_for_machine(si, agility, _opts(mode="dose_only", max_attempts=1))
    r1 = convert_for_machine(si, agility, _opts(mode="mu_refit", max_attempts=1))
    a0, a1 = r0.attempts[0], r1.attempts[0]
    assert a1.mode == "mu_refit" and a1.detail["mu_refit"]["objective"] <= a1.detail["mu_refit"]["objective_start"]
    assert a1.detail["normalization_factor"] == pytest.approx(1.0, abs=1e-3)
    p0 = r0.plan or r0.candidate_plan
    p1 = r1.plan or r1.candidate_plan
    for b0, b1 in zip(p0.beams, p1.beams):
        leaves0 = {(tuple(s.x1_mm), tuple(s.x2_mm)) for s in b0.segments}
        assert all((tuple(s.x1_mm), tuple(s.x2_mm)) in leaves0 for s in b1.segments)  # segments kept (some may be dropped)
    assert any(abs(s1.mu - s0.mu) > 1e-3 * s0.mu for b0, b1 in zip(p0.beams, p1.beams) for s0, s1 in zip(b0.segments, b1.segments))
    assert a1.released == (not a1.reasons)


def test_twin_reuses_the_standard_plan(small):
    from rayrt.convert.convert import convert_for_machine
    from rayrt.machines import get_machine

    si = small[4]
    r = convert_for_machine(si, get_machine("standard_twin"), _opts())
    assert r.coincidence.verdict == "matches" and r.released and r.mode == "reuse" and len(r.attempts) == 1
    assert r.plan.machine == "standard_twin" and r.plan.source_plan_id == si.plan.id
    assert r.plan.total_mu == pytest.approx(si.plan.total_mu, rel=1e-9)
    assert [b.gantry_deg for b in r.plan.beams] == [b.gantry_deg for b in si.plan.beams]
    assert np.array_equal(r.dose_gy, si.dose_gy)
    assert r.qa.verdict in ("pass", "review") and r.attempts[0].gamma_vs_standard_pct == 100.0
    names = {c.name: c for c in r.qa.checks}
    assert names["deliverability on standard_twin"].status == "pass"
    assert any(c.category == "dose_check" and c.status == "pass" for c in r.qa.checks)  # independent dose ran and agrees
    assert any("reused" in n for n in r.qa.notes)


def test_forced_qa_failure_is_regenerated_then_reported_failed(small, tmp_path):
    """An impossible QA criterion: every attempt fails, up to max_attempts, and nothing is released or written."""
    from rayrt.convert.convert import convert_for_machine
    from rayrt.convert.outputs import write_conversion_outputs
    from rayrt.machines import get_machine

    study, order, m, res, si = small
    impossible = ObjectiveSpec(structure="Core", kind=ObjectiveKind.max_dose, dose_gy=0.1, hard=True)
    r = convert_for_machine(si, get_machine("standard_twin"), _opts(max_attempts=2, qa_criteria=[impossible]))
    assert r.status == "failed" and not r.released and r.plan is None and r.dose_gy is None
    assert [a.mode for a in r.attempts] == ["reuse", "dose_only"] and not any(a.released for a in r.attempts)
    assert all(any("Core D2 <= 0.1 Gy" in x for x in a.reasons) for a in r.attempts)
    assert r.candidate_plan is not None and r.qa.verdict == "fail" and any("NOT RELEASED" in n for n in r.qa.notes)
    out = write_conversion_outputs(tmp_path, study, res, [r], order=order, standard_machine=m, png=False)
    folder = tmp_path / "standard_twin"
    assert (folder / "qa.json").is_file() and (folder / "NOT_RELEASED.txt").is_file()
    assert not (folder / "rtplan.dcm").exists() and not (folder / "rtdose.dcm").exists()
    summary = json.loads((tmp_path / "conversion.json").read_text())
    assert summary["machines"][0]["status"] == "failed" and len(summary["machines"][0]["attempts"]) == 2
    assert "rtplan" in out["standard"]


@pytest.fixture(scope="module")
def small5(tmp_path_factory):
    """The same phantom and 5 beams on a 5 mm dose grid: the MLCi2 (10 mm leaves) case.

    On the 8 mm grid of ``small`` gamma 3 %/2 mm cannot reach 95 % for 10 mm leaves even with the
    ideal fluence on the MLCi2's rows (92.8 % measured at the strongest mimicking): the voxels are
    four times the distance criterion, so the test of the released MLCi2 plan runs on 5 mm voxels."""
    import os

    os.environ.setdefault("RAYRT_CACHE_DIR", str(tmp_path_factory.mktemp("rayrt_cache5")))
    from rayrt.convert.convert import standard_input_from_result
    from rayrt.machines import get_machine
    from rayrt.imaging.phantoms import tg119_order, tg119_phantom
    from rayrt.optimize.planner import PlanningOptions, plan_standard

    study, order, m = tg119_phantom(6.0), tg119_order(), get_machine("standard")
    res = plan_standard(study, order, m, [0.0, 72.0, 144.0, 216.0, 288.0],
                        PlanningOptions(dose_grid_mm=5.0, fmo_iterations=100, dao_rounds=2, dao_iterations=30))
    return standard_input_from_result(res, study, order, m)


@pytest.fixture(scope="module")
def mlci2_result(small5):
    from rayrt.convert.convert import convert_for_machine
    from rayrt.machines import get_machine

    return convert_for_machine(small5, get_machine("synergy_mlci2"), _opts(max_attempts=1))


def test_conversion_to_mlci2_is_reoptimised_deliverable_and_gated_by_qa(small5, mlci2_result):
    """Coarser leaves (10 mm), no interdigitation, 5 mm minimum gap: the policy re-optimises (dao);
    every candidate is deliverable on the MLCi2, and a candidate is released only when every release
    check passes (gamma vs standard >= 95 %, PTV D95 within 1 Gy, organ D10 at most 1 Gy above)."""
    r = mlci2_result
    assert r.coincidence.verdict == "convertible" and r.coincidence.mlc.interdigitation == "lost"
    assert r.attempts and [a.mode for a in r.attempts] == ["dao"] * len(r.attempts)
    assert [a.strength for a in r.attempts] == [4.0**i for i in range(len(r.attempts))]
    assert next(c for c in r.qa.checks if c.category == "deliverability").status == "pass"
    for a in r.attempts:
        if a.released:
            assert a.gamma_vs_standard_pct >= 95.0 and not a.reasons
        else:
            assert a.reasons
    if r.released:
        std_d95 = float(np.percentile(small5.dose_gy[small5.masks["PTV"]], 5))
        assert abs(r.attempts[-1].dvh["PTV"]["d95_gy"] - std_d95) <= 1.0
    else:
        assert r.plan is None and r.candidate_plan is not None and r.candidate_plan.machine == "synergy_mlci2"


def test_conversion_to_mlci2_passes_qa(small5, mlci2_result):
    """The MLCi2 plan is released at the first attempt: gamma 3 %/2 mm >= 95 % against the standard
    dose, PTV D95 within 1 Gy and core D10 at most 1 Gy above the standard's; the Y jaws trim the
    10 mm end leaf pairs to the standard plan's field ends (not at a leaf boundary), and no closed
    leaf pair sits inside a segment's Y jaws (no interdigitation: apertures are runs of open pairs)."""
    from rayrt.machines import get_machine
    from rayrt.qa.dvh import dose_at_volume

    r = mlci2_result
    assert r.released, r.reasons
    a = r.attempts[-1]
    assert a.gamma_vs_standard_pct >= 95.0
    std = small5.dose_gy
    assert abs(a.dvh["PTV"]["d95_gy"] - float(dose_at_volume(std[small5.masks["PTV"]], 95.0))) <= 1.0
    assert a.dvh["Core"]["d10_gy"] <= float(dose_at_volume(std[small5.masks["Core"]], 10.0)) + 1.0
    m = get_machine("synergy_mlci2")
    b = m.mlc.boundaries
    segs = [s for beam in r.plan.beams for s in beam.segments]
    for s in segs:
        x1, x2 = np.asarray(s.x1_mm), np.asarray(s.x2_mm)
        inside = (b[1:] > s.jaw_y_mm[0] + 1e-6) & (b[:-1] < s.jaw_y_mm[1] - 1e-6)
        assert np.all(x2[inside] - x1[inside] >= m.mlc.min_gap_mm - 1e-6)
        # pairs inside the jaws are open (between the X jaws), not parked closed inside the field
        assert np.all((np.minimum(x2, s.jaw_x_mm[1]) - np.maximum(x1, s.jaw_x_mm[0]))[inside] > 1e-6)


def test_y_jaw_trim_of_wide_leaves_and_exact_fluence():
    """MLCi2: beamlet rows end at the standard plan's field ends (-35 mm, inside a 10 mm pair); the
    bixel fluence of a segment whose Y jaw trims a leaf pair there is exact on 5 mm sub-rows, and on
    leaf-pair rows equals the aperture-dose path's (rayrt.dose.aperture.aperture_fluence)."""
    from rayrt.convert.convert import segments_fluence_on_bixels, standard_field_y_mm, trimmed_beamlet_grid
    from rayrt.convert.release import jaws_trim_leaves
    from rayrt.domain.plan import Beam, Plan, Segment
    from rayrt.dose.aperture import aperture_fluence
    from rayrt.dose.geometry import BeamletGrid, beamlet_grid_for_field
    from rayrt.machines import get_machine

    m, std = get_machine("synergy_mlci2"), get_machine("standard")
    beam = Beam(isocenter_mm=(0.0, 0.0, 0.0))
    bs = std.mlc.boundaries
    x1 = np.where((bs[:-1] >= -35) & (bs[1:] <= 40), -20.0, -1.0)  # standard: pairs -35..40 open
    sseg = Segment(x1_mm=list(x1), x2_mm=list(np.where(x1 < -1, 20.0, -0.5)), jaw_x_mm=(-20.0, 20.0), jaw_y_mm=(-35.0, 40.0), mu=10.0)
    assert standard_field_y_mm(Beam(isocenter_mm=(0, 0, 0), segments=[sseg]), std) == (-35.0, 40.0)
    bg = beamlet_grid_for_field(beam, m, (-30.0, 30.0), (-50.0, 50.0), 5.0)
    tg = trimmed_beamlet_grid(bg, (-35.0, 40.0))
    assert tg.row_edges_mm[0] == -35.0 and tg.row_edges_mm[-1] == 40.0 and tg.num_bixels < bg.num_bixels
    b = m.mlc.boundaries
    op = (b[:-1] >= -40) & (b[1:] <= 40)
    seg = Segment(x1_mm=list(np.where(op, -20.0, -2.5)), x2_mm=list(np.where(op, 20.0, 2.5)), jaw_x_mm=(-20.0, 20.0), jaw_y_mm=(-35.0, 40.0), mu=1.0)
    assert jaws_trim_leaves(Plan(machine=m.name, beams=[Beam(isocenter_mm=(0, 0, 0), segments=[seg])]), m)
    fine = np.arange(-50.0, 50.1, 5.0)
    cols = np.arange(-6, 6)
    g5 = BeamletGrid(beam, m.name, 5.0, fine, np.repeat(np.arange(fine.size - 1), cols.size), np.tile(cols, fine.size - 1))
    f = segments_fluence_on_bixels([seg], m, g5).reshape(fine.size - 1, cols.size)
    sc = float(m.beam.head_scatter_at(__import__("rayrt.dose.aperture", fromlist=["x"]).segment_equivalent_square_mm(seg, m)))
    centre = (cols >= -4) & (cols < 4)  # bixels wholly inside -20..20
    row = {float(y): i for i, y in enumerate(fine[:-1])}
    assert np.allclose(f[row[-35.0], centre], sc)  # inside the Y jaw, on the trimmed pair: open
    assert np.allclose(f[row[-40.0], centre], sc * m.jaw_y.transmission)  # the same leaf pair, behind the Y jaw
    seg_b = seg.model_copy(update={"jaw_y_mm": (-40.0, 40.0)})  # jaws on leaf boundaries: both paths agree
    np.testing.assert_allclose(segments_fluence_on_bixels([seg_b], m, bg), aperture_fluence(bg, [seg_b], m), rtol=1e-9, atol=1e-12)


def test_outputs_and_rtplan_round_trip(small, tmp_path):
    """Convert (dose_only on the Agility: same 5 mm leaf boundaries), write the folders, re-import the
    RTPLAN and recompute it with the same engine: gamma 2 %/2 mm >= 99 % against its own dose."""
    from rayrt.convert import convert as C
    from rayrt.convert.outputs import write_conversion_outputs
    from rayrt.machines import get_machine
    from rayrt.imaging.rtplan import read_rtplan
    from rayrt.imaging.volume import Volume
    from rayrt.optimize.planner import final_dose
    from rayrt.qa.gamma import gamma_index

    study, order, m, res, si = small
    agility = get_machine("versahd_agility")
    opts = _opts(mode="dose_only", max_attempts=1, qa_criteria=[])
    r = C.convert_for_machine(si, agility, opts)
    assert r.attempts[0].mode == "dose_only"
    plan, dose = (r.plan, r.dose_gy) if r.released else (r.candidate_plan, None)
    if dose is None:  # not released: recompute its dose to test the round trip all the same
        setup = C._setup(si, agility, opts)
        dose = final_dose(plan, setup.grids, setup.dij, agility).reshape(si.dose_grid.shape)
    out = write_conversion_outputs(tmp_path, study, res, [r], order=order, standard_machine=m, png=True)
    assert (tmp_path / "standard" / "qa.png").is_file() and (tmp_path / "standard" / "rtstruct.dcm").is_file()
    if r.released:
        assert set(out["versahd_agility"]) >= {"rtplan", "rtdose", "rtstruct", "json", "png"}
        path = tmp_path / "versahd_agility" / "rtplan.dcm"
    else:
        from rayrt.imaging.rtplan import write_rtplan

        path = write_rtplan(plan, agility, tmp_path / "rp.dcm")
    imp = read_rtplan(path, [m, agility])
    assert imp.machine.name == "versahd_agility" and imp.plan.fractions == plan.fractions
    assert imp.plan.total_mu == pytest.approx(plan.total_mu, rel=1e-4)
    setup = C._setup(si, agility, opts)
    re = final_dose(imp.plan, setup.grids, setup.dij, agility).reshape(si.dose_grid.shape)
    g = gamma_index(Volume(np.asarray(dose, np.float32), si.dose_grid), Volume(re.astype(np.float32), si.dose_grid),
                    dose_pct=2.0, dta_mm=2.0, cutoff_pct=10.0)
    assert g.summary.pass_rate_pct >= 99.0


def test_conversion_settings_from_yaml(tmp_path):
    from rayrt.convert.policy import load_conversion_options
    from rayrt.domain.errors import InputError

    p = tmp_path / "conversion.yaml"
    p.write_text("mlc:\n  boundary_tolerance_mm: 0.05\nsource:\n  match_pass_rate_pct: 98.5\n  curves:\n    resolution_mm: 4\n"
                 "conversion:\n  max_attempts: 5\n  mimic_weight: 50\n")
    o = load_conversion_options(p)
    assert o.max_attempts == 5 and o.mimic_weight == 50 and o.source.match_pass_rate_pct == 98.5 and o.source.curves.resolution_mm == 4
    assert load_conversion_options(tmp_path / "absent.yaml").max_attempts == 3
    p.write_text("conversion:\n  max_attempts: 0\n")
    with pytest.raises(InputError, match="max_attempts"):
        load_conversion_options(p)
