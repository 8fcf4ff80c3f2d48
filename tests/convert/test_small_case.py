"""Plan conversion on a small case (TG-119 phantom on a 6 mm CT, 8 mm dose grid, 5 beams).

The standard plan is made by the pipeline's recipe (load ... normalize), so conversion reads the
one StandardPlan and PlanGeometry that planning makes. Covers: source coincidence (twin matches,
curves cached), the mode policy, twin -> reuse, conversion to MLCi2 (10 mm, no interdigitation;
released, on a 5 mm dose grid), a forced QA failure regenerated up to the limit and never
released nor exported, the typed result (JSON and pickle), and export / re-import / recompute.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass

import numpy as np
import pydicom
import pytest

from rayrt.convert import convert as C
from rayrt.convert.convert import convert_for_machine, fit_angles
from rayrt.convert.policy import ConversionOptions, load_conversion_options
from rayrt.convert.results import AttemptRecord, ConversionResult
from rayrt.domain.errors import InputError
from rayrt.domain.order import ObjectiveKind, ObjectiveSpec
from rayrt.domain.planning import PlanningRequest
from rayrt.imaging.phantoms import tg119_order, tg119_phantom
from rayrt.imaging.study import Study
from rayrt.machines import get_machine
from rayrt.optimize.standard import PlanGeometry, StandardPlan
from rayrt.pipeline import PipelineResult, recipe, run_recipe, run_stages
from rayrt.pipeline.conversion import ConvertedPlans, machine_plan


@dataclass
class Case:
    """A standard plan made by the recipe, the geometry it was computed on, and its study."""

    study: Study
    standard: StandardPlan
    geometry: PlanGeometry


def plan_case(dose_grid_mm: float) -> Case:
    """The TG-119 phantom (6 mm CT), 5 beams, planned on the standard machine up to ``normalize``."""
    req = PlanningRequest(
        gantry_deg=[0.0, 72.0, 144.0, 216.0, 288.0],
        dose_grid_mm=dose_grid_mm,
        fmo_iterations=100,
        dao_rounds=2,
        dao_iterations=30,
    )
    res = run_recipe(tg119_phantom(6.0), tg119_order(), req, until="normalize")
    return Case(study=res["study"], standard=res["standard_plan"], geometry=res["geometry"])


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Case:
    os.environ["RAYRT_CACHE_DIR"] = str(tmp_path_factory.mktemp("rayrt_cache"))
    return plan_case(8.0)


def _opts(**kw) -> ConversionOptions:
    """The configured conversion options (configs/conversion.yaml), as every job converts, with ``kw``."""
    return load_conversion_options(**kw)


def _export(case: Case, results: list[ConversionResult]) -> PipelineResult:
    """The recipe's export stage on the standard plan and these conversions (no QA stage)."""
    masks = case.geometry.masks()
    converted = ConvertedPlans(plans=[machine_plan(r, case.standard, masks, machine=r.machine) for r in results])
    artefacts = {
        "study": case.study,
        "order": case.standard.order,
        "planning": PlanningRequest(machines=[r.machine for r in results]),
        "standard_plan": case.standard,
        "geometry": case.geometry,
        "converted": converted,
    }
    return run_stages(recipe(["export"]), artefacts)


def test_standard_plan_and_geometry_travel_by_pickle(small):
    """What the executors ship to conversion workers: the StandardPlan and PlanGeometry with their arrays."""
    std, geo = pickle.loads(pickle.dumps((small.standard, small.geometry)))
    assert std.plan == small.standard.plan and np.array_equal(std.dose, small.standard.dose)
    assert set(geo.masks()) == {"BODY", "Core", "PTV"} and geo.external == "BODY"
    assert geo.density_volume().array.shape == tuple(geo.density_grid.shape)


def test_a_geometry_of_another_grid_is_refused(small):
    other = small.geometry.model_copy(update={"dose_grid": small.geometry.dose_grid.with_spacing((5.0, 5.0, 5.0))})
    with pytest.raises(InputError, match="dose grid"):
        convert_for_machine(small.standard, other, get_machine("standard_twin"), _opts())


def test_angles_outside_the_target_range_are_fitted_and_noted(small):
    plan, tb = small.standard.plan, get_machine("truebeam_m120")
    assert fit_angles(plan, tb) is plan  # 0, 72, ... 288 deg: all reachable, nothing changes
    beams = [b.model_copy(update={"gantry_deg": 180.0}) if i == 2 else b for i, b in enumerate(plan.beams)]
    moved = fit_angles(plan.model_copy(update={"beams": beams}), tb)
    assert moved.beams[2].gantry_deg == pytest.approx(180.1)
    assert [b.gantry_deg for b in moved.beams[:2]] == [b.gantry_deg for b in plan.beams[:2]]
    assert any("delivered at 180.1 deg" in n for n in moved.notes)
    far = [b.model_copy(update={"collimator_deg": 180.0}) for b in plan.beams]  # M120 collimator: 185 .. 175 through 0
    with pytest.raises(InputError, match="collimator angle 180 deg is outside"):
        fit_angles(plan.model_copy(update={"beams": far}), tb)


def test_source_comparison_twin_matches_and_curves_are_cached(small):
    from rayrt.convert import source_match
    from rayrt.convert.source_match import cached_curves, compare_sources, curves_cache_dir

    source_match._MEM_CACHE.clear()  # earlier tests in this process may hold the curves in memory
    std, twin, mlci2 = get_machine("standard"), get_machine("standard_twin"), get_machine("synergy_mlci2")
    c = compare_sources(std, twin)
    assert c.verdict == "matches" and c.score_pct == 100.0 and c.max_deviation_pct == 0.0
    assert c.output_ratio == pytest.approx(1.0)
    assert {x.phantom for x in c.curves} == {"water", "lung_slab", "bone_slab"}
    assert {x.kind for x in c.curves} == {"pdd", "profile"}
    # same data under another name: one cache entry; the curves carry each machine's own name
    files = list(curves_cache_dir().glob("*.json"))
    assert len(files) == 1
    assert cached_curves(twin).machine == "standard_twin" and cached_curves(std).machine == "standard"
    d = compare_sources(std, mlci2)
    assert d.verdict != "matches" and d.score_pct < 99.0 and d.reasons
    assert len(list(curves_cache_dir().glob("*.json"))) == 2


def test_policy_modes():
    from rayrt.convert.policy import choose_modes

    o = ConversionOptions(max_attempts=3, strength_factor=4.0)
    assert choose_modes("matches", o) == (["reuse", "dose_only", "mu_refit"], [1.0, 1.0, 1.0])
    assert choose_modes("same_leaves", o) == (["mu_refit", "dao", "dao"], [1.0, 1.0, 4.0])
    assert choose_modes("convertible", o) == (["dao", "dao", "dao"], [1.0, 4.0, 16.0])
    assert choose_modes("incompatible", o) == ([], [])
    assert choose_modes("convertible", o, forced="dose_only")[0] == ["dose_only", "mu_refit", "fluence"]
    with pytest.raises(InputError, match="recompute mode"):
        choose_modes("matches", o, forced="magic")


def test_normalised_objective_gradient_matches_finite_differences():
    """The segment-MU refit's objective on the prescription-normalised dose (d = Rx / D95(A m) x A m):
    value and analytic gradient against central differences, and scale invariance (f(c m) = f(m))."""
    from rayrt.optimize.mu_refit import normalised_objective
    from rayrt.optimize.normalize import metric_weights
    from rayrt.optimize.objectives import make_objective
    from rayrt.qa.dvh import dose_at_volume

    rng = np.random.default_rng(3)
    n_vox, n_seg = 400, 7
    A = (rng.random((n_vox, n_seg)) * 0.02).astype(np.float32)
    ptv, oar = np.arange(0, 150), np.arange(150, 400)
    ref = rng.random(n_vox) * 50.0
    terms = [
        (make_objective("squared_deviation", "PTV", ptv, 50.0), 10.0),
        (make_objective("squared_overdose", "OAR", oar, 20.0), 3.0),
        (make_objective("dose_mimicking", "OAR (mimic)", oar, 1.0, reference_gy=ref[oar], tolerance_gy=1.0), 5.0),
    ]
    m = rng.random(n_seg) * 100 + 50
    v, idx, w = metric_weights((A.astype(np.float64) @ m)[ptv], 95.0)
    assert v == pytest.approx(float(dose_at_volume((A.astype(np.float64) @ m)[ptv], 95.0)), rel=1e-5)
    f, g = normalised_objective(m, A, terms, 50.0, ptv, 95.0)
    assert normalised_objective(3.0 * m, A, terms, 50.0, ptv, 95.0)[0] == pytest.approx(f, rel=1e-4)
    h = 0.2  # MU ~ 100: float32 products round m at ~1e-5, far below the step
    fd = np.array(
        [
            (
                normalised_objective(m + h * e, A, terms, 50.0, ptv, 95.0)[0]
                - normalised_objective(m - h * e, A, terms, 50.0, ptv, 95.0)[0]
            )
            / (2 * h)
            for e in np.eye(n_seg)
        ]
    )
    np.testing.assert_allclose(g, fd, rtol=2e-2, atol=1e-3 * np.abs(fd).max())


def test_mu_refit_keeps_the_segments_and_normalises(small):
    """mu_refit on the Agility (same 5 mm leaf boundaries): the dose_only segments' leaves exactly,
    only the MU changed, the refit objective not above its start, and the refit already normalised
    (the final normalisation moves the MU by under 1 %, the share the minimum-MU segments add); QA-gated
    like every mode."""
    agility = get_machine("versahd_agility")
    r0 = convert_for_machine(small.standard, small.geometry, agility, _opts(mode="dose_only", max_attempts=1))
    r1 = convert_for_machine(small.standard, small.geometry, agility, _opts(mode="mu_refit", max_attempts=1))
    a1 = r1.attempts[0]
    assert a1.mode == "mu_refit" and a1.detail.mu_refit is not None
    assert a1.detail.mu_refit.objective <= a1.detail.mu_refit.objective_start
    # segments held at the minimum MU (2 MU per fraction) lift the dose a little: within 1 %
    assert a1.detail.normalization_factor == pytest.approx(1.0, abs=1e-2)
    p0 = r0.plan or r0.candidate_plan
    p1 = r1.plan or r1.candidate_plan
    for b0, b1 in zip(p0.beams, p1.beams):
        leaves0 = {(tuple(s.x1_mm), tuple(s.x2_mm)) for s in b0.segments}
        # segments kept (some may be dropped)
        assert all((tuple(s.x1_mm), tuple(s.x2_mm)) in leaves0 for s in b1.segments)
    changed = any(
        abs(s1.mu - s0.mu) > 1e-3 * s0.mu
        for b0, b1 in zip(p0.beams, p1.beams)
        for s0, s1 in zip(b0.segments, b1.segments)
    )
    # the refit's MU unless it agreed worse with the standard plan (then the transferred MU, said so)
    assert changed == (not (a1.detail.mu_refit.kept or "").startswith("transferred"))
    assert a1.released == (not a1.reasons)


@pytest.fixture(scope="module")
def twin_result(small) -> ConversionResult:
    return convert_for_machine(small.standard, small.geometry, get_machine("standard_twin"), _opts())


def test_twin_reuses_the_standard_plan(small, twin_result):
    std, r = small.standard, twin_result
    assert r.coincidence.verdict == "matches" and r.released and r.mode == "reuse" and len(r.attempts) == 1
    assert r.plan.machine == "standard_twin" and r.plan.source_plan_id == std.plan.id
    assert r.plan.total_mu == pytest.approx(std.plan.total_mu, rel=1e-9)
    assert [b.gantry_deg for b in r.plan.beams] == [b.gantry_deg for b in std.plan.beams]
    assert np.array_equal(r.dose_gy, std.dose)
    assert r.qa.verdict in ("pass", "review") and r.attempts[0].gamma_vs_standard_pct == 100.0
    names = {c.name: c for c in r.qa.checks}
    assert names["deliverability on standard_twin"].status == "pass"
    # the independent dose ran and agrees
    assert any(c.category == "dose_check" and c.status == "pass" for c in r.qa.checks)
    assert any("reused" in n for n in r.qa.notes)


def test_conversion_result_is_typed_json_and_pickles_with_its_arrays(twin_result):
    """The result and its attempts are pydantic models: JSON without the arrays (dose, QA figure data)
    validates back to the same record; a pickle (Ray, processes) keeps the arrays."""
    r = twin_result
    back = ConversionResult.model_validate_json(r.model_dump_json())
    assert back.dose_gy is None and back.qa_result is None and "dose_gy" not in r.model_dump()
    assert back.attempts == r.attempts and all(isinstance(a, AttemptRecord) for a in back.attempts)
    assert back.plan == r.plan and back.coincidence == r.coincidence and back.qa == r.qa and back.released
    assert back.attempts[0].detail.output_ratio == pytest.approx(1.0) and back.attempts[0].dvh["PTV"].d95_gy > 0
    p = pickle.loads(pickle.dumps(r))
    assert np.array_equal(p.dose_gy, r.dose_gy) and p.qa_result.report == r.qa


def test_forced_qa_failure_is_regenerated_then_reported_failed(small):
    """An impossible QA criterion: every attempt fails, up to max_attempts; nothing is released, and
    the recipe's export stage writes no RTPLAN / RTDOSE for the machine (its summary says why)."""
    impossible = ObjectiveSpec(structure="Core", kind=ObjectiveKind.max_dose, dose_gy=0.1, hard=True)
    r = convert_for_machine(
        small.standard, small.geometry, get_machine("standard_twin"), _opts(max_attempts=2, qa_criteria=[impossible])
    )
    assert r.status == "failed" and not r.released and r.plan is None and r.dose_gy is None
    assert [a.mode for a in r.attempts] == ["reuse", "dose_only"] and not any(a.released for a in r.attempts)
    assert all(any("Core D2 <= 0.1 Gy" in x for x in a.reasons) for a in r.attempts)
    assert r.candidate_plan is not None and r.qa.verdict == "fail" and any("NOT RELEASED" in n for n in r.qa.notes)
    exports = _export(small, [r])["exports"]
    files = set(exports.files())
    assert {"RP_standard.dcm", "RD_standard.dcm", "RS.dcm"} <= files
    assert not any("standard_twin" in f for f in files)
    twin = next(m for m in exports.machines if m.machine == "standard_twin")
    assert twin.verdict == "not released" and twin.files == []
    assert any("not released after 2 attempt(s)" in c for c in twin.failed_checks)


@pytest.fixture(scope="module")
def small5(small) -> Case:
    """The same phantom and 5 beams on a 5 mm dose grid: the MLCi2 (10 mm leaves) case.

    On the 8 mm grid of ``small`` gamma 3 %/2 mm cannot reach 95 % for 10 mm leaves even with the
    ideal fluence on the MLCi2's rows (92.8 % measured at the strongest mimicking): the voxels are
    four times the distance criterion, so the test of the released MLCi2 plan runs on 5 mm voxels."""
    return plan_case(5.0)


@pytest.fixture(scope="module")
def mlci2_result(small5) -> ConversionResult:
    return convert_for_machine(small5.standard, small5.geometry, get_machine("synergy_mlci2"), _opts(max_attempts=1))


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
        std_d95 = float(np.percentile(small5.standard.dose[small5.geometry.masks()["PTV"]], 5))
        assert abs(r.attempts[-1].dvh["PTV"].d95_gy - std_d95) <= 1.0
    else:
        assert r.plan is None and r.candidate_plan is not None and r.candidate_plan.machine == "synergy_mlci2"


def test_conversion_to_mlci2_passes_qa(small5, mlci2_result):
    """The MLCi2 plan is released at the first attempt: gamma 3 %/2 mm >= 95 % against the standard
    dose, PTV D95 within 1 Gy and core D10 at most 1 Gy above the standard's; the Y jaws trim the
    10 mm end leaf pairs to the standard plan's field ends (not at a leaf boundary), and no closed
    leaf pair sits inside a segment's Y jaws (no interdigitation: apertures are runs of open pairs)."""
    from rayrt.qa.dvh import dose_at_volume

    r = mlci2_result
    assert r.released, r.reasons
    a = r.attempts[-1]
    assert a.gamma_vs_standard_pct >= 95.0
    std, masks = small5.standard.dose, small5.geometry.masks()
    assert abs(a.dvh["PTV"].d95_gy - float(dose_at_volume(std[masks["PTV"]], 95.0))) <= 1.0
    assert a.dvh["Core"].d10_gy <= float(dose_at_volume(std[masks["Core"]], 10.0)) + 1.0
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
    from rayrt.convert.convert import standard_field_y_mm, trimmed_beamlet_grid
    from rayrt.convert.fluence import segments_fluence_on_bixels
    from rayrt.convert.release import jaws_trim_leaves
    from rayrt.domain.plan import Beam, Plan, Segment
    from rayrt.dose.aperture import aperture_fluence, segment_equivalent_square_mm
    from rayrt.dose.geometry import BeamletGrid, beamlet_grid_for_field

    m, std = get_machine("synergy_mlci2"), get_machine("standard")
    beam = Beam(isocenter_mm=(0.0, 0.0, 0.0))
    bs = std.mlc.boundaries
    x1 = np.where((bs[:-1] >= -35) & (bs[1:] <= 40), -20.0, -1.0)  # standard: pairs -35..40 open
    sseg = Segment(
        x1_mm=list(x1),
        x2_mm=list(np.where(x1 < -1, 20.0, -0.5)),
        jaw_x_mm=(-20.0, 20.0),
        jaw_y_mm=(-35.0, 40.0),
        mu=10.0,
    )
    assert standard_field_y_mm(Beam(isocenter_mm=(0, 0, 0), segments=[sseg]), std) == (-35.0, 40.0)
    bg = beamlet_grid_for_field(beam, m, (-30.0, 30.0), (-50.0, 50.0), 5.0)
    tg = trimmed_beamlet_grid(bg, (-35.0, 40.0))
    assert tg.row_edges_mm[0] == -35.0 and tg.row_edges_mm[-1] == 40.0 and tg.num_bixels < bg.num_bixels
    b = m.mlc.boundaries
    op = (b[:-1] >= -40) & (b[1:] <= 40)
    seg = Segment(
        x1_mm=list(np.where(op, -20.0, -2.5)),
        x2_mm=list(np.where(op, 20.0, 2.5)),
        jaw_x_mm=(-20.0, 20.0),
        jaw_y_mm=(-35.0, 40.0),
        mu=1.0,
    )
    assert jaws_trim_leaves(Plan(machine=m.name, beams=[Beam(isocenter_mm=(0, 0, 0), segments=[seg])]), m)
    fine = np.arange(-50.0, 50.1, 5.0)
    cols = np.arange(-6, 6)
    g5 = BeamletGrid(
        beam, m.name, 5.0, fine, np.repeat(np.arange(fine.size - 1), cols.size), np.tile(cols, fine.size - 1)
    )
    f = segments_fluence_on_bixels([seg], m, g5).reshape(fine.size - 1, cols.size)
    sc = float(m.beam.head_scatter_at(segment_equivalent_square_mm(seg, m)))
    centre = (cols >= -4) & (cols < 4)  # bixels wholly inside -20..20
    row = {float(y): i for i, y in enumerate(fine[:-1])}
    assert np.allclose(f[row[-35.0], centre], sc)  # inside the Y jaw, on the trimmed pair: open
    assert np.allclose(f[row[-40.0], centre], sc * m.jaw_y.transmission)  # the same leaf pair, behind the Y jaw
    seg_b = seg.model_copy(update={"jaw_y_mm": (-40.0, 40.0)})  # jaws on leaf boundaries: both paths agree
    np.testing.assert_allclose(
        segments_fluence_on_bixels([seg_b], m, bg), aperture_fluence(bg, [seg_b], m), rtol=1e-9, atol=1e-12
    )


def test_export_and_rtplan_round_trip(small, tmp_path):
    """Convert (dose_only on the Agility: same 5 mm leaf boundaries), export with the recipe's export
    stage, re-import its RTPLAN and recompute it with the same engine (the conversion's target
    beamlets and Dij): gamma 2 %/2 mm >= 99 % against the converted plan's own dose."""
    from rayrt.imaging.rtplan import read_rtplan, write_rtplan
    from rayrt.imaging.volume import Volume
    from rayrt.optimize.standard import final_dose
    from rayrt.qa.gamma import gamma_index

    std, geo = small.standard, small.geometry
    agility = get_machine("versahd_agility")
    opts = _opts(mode="dose_only", max_attempts=1, qa_criteria=[])
    r = convert_for_machine(std, geo, agility, opts)
    assert r.attempts[0].mode == "dose_only"
    setup = C._setup(C._standard_side(std, geo, agility), agility, opts)
    plan = r.plan if r.released else r.candidate_plan
    dose = r.dose_gy if r.released else final_dose(plan, setup.grids, setup.dij, agility).reshape(std.dose_grid.shape)
    files = _export(small, [r])["exports"].files()
    assert "RS.dcm" in files and "RP_standard.dcm" in files
    if r.released:
        assert {"RP_versahd_agility.dcm", "RD_versahd_agility.dcm"} <= set(files)
        path = tmp_path / "rp.dcm"
        path.write_bytes(files["RP_versahd_agility.dcm"])
        rs_uid = pydicom.dcmread(io.BytesIO(files["RS.dcm"])).SOPInstanceUID
        assert pydicom.dcmread(path).ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs_uid
    else:  # not released: nothing exported for it; write its candidate to test the round trip all the same
        assert not any("versahd_agility" in f for f in files)
        path = write_rtplan(plan, agility, tmp_path / "rp.dcm")
    imp = read_rtplan(path, [get_machine("standard"), agility])
    assert imp.machine.name == "versahd_agility" and imp.plan.fractions == plan.fractions
    assert imp.plan.total_mu == pytest.approx(plan.total_mu, rel=1e-4)
    re = final_dose(imp.plan, setup.grids, setup.dij, agility).reshape(std.dose_grid.shape)
    g = gamma_index(
        Volume(np.asarray(dose, np.float32), std.dose_grid),
        Volume(re.astype(np.float32), std.dose_grid),
        dose_pct=2.0,
        dta_mm=2.0,
        cutoff_pct=10.0,
    )
    assert g.summary.pass_rate_pct >= 99.0


def test_conversion_settings_from_yaml(tmp_path):
    from rayrt.convert.policy import load_conversion_options

    p = tmp_path / "conversion.yaml"
    p.write_text(
        "mlc:\n  boundary_tolerance_mm: 0.05\nsource:\n  match_pass_rate_pct: 98.5\n"
        "  curves:\n    resolution_mm: 4\n"
        "conversion:\n  max_attempts: 5\n  mimic_weight: 50\n"
    )
    o = load_conversion_options(p)
    assert o.max_attempts == 5 and o.mimic_weight == 50
    assert o.source.match_pass_rate_pct == 98.5 and o.source.curves.resolution_mm == 4
    assert load_conversion_options(tmp_path / "absent.yaml").max_attempts == 3
    p.write_text("conversion:\n  max_attempts: 0\n")
    with pytest.raises(InputError, match="max_attempts"):
        load_conversion_options(p)
