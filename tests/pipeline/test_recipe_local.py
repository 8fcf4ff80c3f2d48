"""The planning recipe (rayrt.pipeline) in one process: the whole recipe on a small phantom,
resuming from stored results, Dij chunking, goals, the request checks."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from helpers.planning import FAST_PLANNING as FAST

from rayrt import pipeline
from rayrt.domain.errors import InputError
from rayrt.domain.order import parse_order
from rayrt.domain.planning import PlanningRequest
from rayrt.pipeline import PLANNING_STAGES, check_request, restore_output, run_recipe
from rayrt.pipeline.conversion import conversion_options
from rayrt.pipeline.export import goals_of
from rayrt.pipeline.planning import chunk_plan, dij_chunk_order

MACHINES = ["standard_twin", "synergy_mlci2"]  # a matching machine (reuse) and a convertible one (re-optimised)
#: the stages a plan of one beam-angle set runs (beam_set is skipped: nothing to choose; see test_beam_sets.py)
RUN_STAGES = [n for n in PLANNING_STAGES if n != "beam_set"]


@pytest.fixture(scope="module")
def study():
    from helpers.study import make_small_study

    return make_small_study(with_dose=False)


@pytest.fixture(scope="module")
def order():
    from helpers.study import SMALL_ORDER

    return parse_order(SMALL_ORDER)


@pytest.fixture(scope="module")
def planned(study, order, tmp_path_factory):
    out = tmp_path_factory.mktemp("plan-local")
    events = []
    req = PlanningRequest(machines=MACHINES, **FAST)
    res = run_recipe(study, order, req, out_dir=out, on_event=events.append)
    return res, events, out


def test_recipe_is_one_ordered_list():
    names = [s.name for s in pipeline.RECIPE]
    assert names == [
        "load",
        "structures",
        "dvh",
        "geometry",
        "beamlets",
        "dij",
        "beam_set",
        "problem",
        "fmo",
        "sequence",
        "dao",
        "normalize",
        "convert",
        "qa",
        "export",
    ]
    assert PLANNING_STAGES == names[3:]
    assert [s.name for s in pipeline.recipe(plan=False)] == ["load", "structures", "dvh"]
    assert [s.name for s in pipeline.recipe(["export", "load"])] == ["load", "export"]
    with pytest.raises(InputError, match="unknown stage"):
        pipeline.recipe(["optimise"])
    assert [s.name for s in pipeline.recipe(until="geometry")] == ["load", "structures", "dvh", "geometry"]
    assert [s.name for s in pipeline.recipe(["load", "dij", "qa"], until="dij")] == ["load", "dij"]
    with pytest.raises(InputError, match="unknown stage"):
        pipeline.recipe(until="optimise")


def test_all_planning_stages_run_and_store(planned):
    res, events, out = planned
    finished = [e.stage for e in events if e.kind == "finished"]
    assert finished == ["load", "structures", *RUN_STAGES]
    for name in RUN_STAGES:
        if name != "problem":  # in memory only
            assert (out / name / "result.json").is_file(), name
    assert (out / "dij" / "dij.npz").is_file() and (out / "geometry" / "density.npy").is_file()


def test_standard_plan_is_normalised_and_converted(planned, order):
    res, _, _ = planned
    std = res["standard_plan"]
    assert std.plan.machine == "standard"
    assert std.dvh["PTV"]["d95_gy"] == pytest.approx(50.0, abs=0.05)  # D95 normalisation to the prescription
    assert std.dose.shape == std.dose_grid.shape
    conv = res["converted"]
    assert [p.machine for p in conv.plans] == MACHINES
    from rayrt.machines import get_machine

    for p in conv.plans:
        m = get_machine(p.machine)
        assert p.method == f"rayrt.convert:{p.mode}" and p.coincidence and p.attempts and p.qa is not None
        if p.status != "released":  # not released: no plan, no dose; the release QA says why
            assert p.plan is None and p.dose is None and p.reasons
            continue
        assert p.plan.source_plan_id == std.plan.id and p.plan.machine == p.machine
        assert all(len(s.x1_mm) == m.mlc.num_pairs for b in p.plan.beams for s in b.segments)
        assert all(s.mu >= m.limits.min_mu_per_segment - 1e-9 for b in p.plan.beams for s in b.segments)
        assert 20.0 < p.dvh["PTV"]["mean_gy"] < 70.0
    twin = conv.get("standard_twin")  # same beam, same MLC: the policy reuses the standard plan
    assert twin.coincidence == "matches" and twin.mode == "reuse" and twin.status == "released"
    assert twin.dvh["PTV"]["d95_gy"] == pytest.approx(std.dvh["PTV"]["d95_gy"], abs=0.05)


def test_qa_and_export(planned):
    res, events, out = planned
    qa = res["qa"]
    assert [r.machine for r in qa.reports] == ["standard", *MACHINES]
    assert all(r.verdict in ("pass", "review", "fail") and r.checks for r in qa.reports)
    # the converted plans are compared with the standard dose (gamma); the standard one is not
    assert qa.reports[0].gamma is None and qa.reports[1].gamma is not None
    # the QA stage reuses the release loop's reports: it ran one QA task (the standard plan's)
    conv = res["converted"]
    assert [qa.reports[i + 1] for i in range(len(MACHINES))] == [conv.get(m).qa for m in MACHINES]
    assert max(e.total for e in events if e.stage == "qa" and e.kind == "progress") == 1
    ex = res["exports"]
    assert [m.machine for m in ex.machines] == ["standard", *MACHINES]
    qa_fail = {r.machine for r in qa.reports if r.verdict == "fail"} - {"standard"}
    not_released = {p.machine for p in conv.plans if p.status != "released"}
    for m in ex.machines:
        if (
            m.machine in qa_fail | not_released
        ):  # a plan that failed QA or its release is never exported: no RTPLAN / RTDOSE
            assert m.verdict == "not released" and m.failed_checks
            assert (
                not (out / "export" / f"RP_{m.machine}.dcm").exists()
                and not (out / "export" / f"RD_{m.machine}.dcm").exists()
            )
            continue
        rp = pydicom.dcmread(out / "export" / f"RP_{m.machine}.dcm")
        rd = pydicom.dcmread(out / "export" / f"RD_{m.machine}.dcm")
        assert rp.Modality == "RTPLAN" and rd.Modality == "RTDOSE"
        assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == rp.SOPInstanceUID
        mu = sum(
            float(fg.ReferencedBeamSequence[i].BeamMeterset)
            for fg in rp.FractionGroupSequence
            for i in range(len(fg.ReferencedBeamSequence))
        )
        assert mu == pytest.approx(m.total_mu_per_fraction, rel=1e-3)
        assert {g.structure for g in m.goals} == {"Core"}  # SMALL_ORDER: Core max_dose 25 Gy
    summary = json.loads((out / "export" / "summary.json").read_text())
    assert [m["machine"] for m in summary["machines"]] == ["standard", *MACHINES]
    assert (out / "export" / "dvh.csv").read_text().startswith("machine,structure,")


def test_resume_reuses_every_stored_stage(planned, study, order):
    """A second run whose ``previous`` reads the first run's files reuses every persisted stage."""
    res, _, out = planned

    def previous(st):
        d = out / st.name
        if not (d / "result.json").is_file():
            return None
        return restore_output(st, lambda name: (d / name).read_bytes())

    events = []
    artefacts = {"source": study, "order": order, "planning": PlanningRequest(machines=MACHINES, **FAST)}
    res2 = pipeline.run_stages(pipeline.recipe(), artefacts, on_event=events.append, previous=previous)
    kinds = {e.stage: e.kind for e in events if e.kind in ("finished", "reused", "skipped")}
    assert kinds["problem"] == "finished"  # in memory only: rebuilt
    assert all(kinds[n] == "reused" for n in RUN_STAGES if n != "problem")
    a, b = res["dij"].matrix, res2["dij"].matrix
    assert (
        np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices) and np.array_equal(a.data, b.data)
    )
    assert np.array_equal(res2["standard_plan"].dose, res["standard_plan"].dose)
    assert res2["exports"].machines[1].plan_id == res["exports"].machines[1].plan_id


def test_no_planning_request_skips_planning(study, order):
    res = run_recipe(study, order, None)
    skipped = [e.stage for e in res.events if e.kind == "skipped"]
    assert skipped == ["dvh", *PLANNING_STAGES]
    assert res["exports"] is None


def test_unknown_machine_is_an_input_error(study, order):
    req = PlanningRequest(machines=["no_such_linac"], **FAST)
    with pytest.raises(InputError, match="unknown machine"):
        check_request(req)
    with pytest.raises(InputError, match="unknown machine"):
        run_recipe(study, order, req, stages=["load", "structures", "geometry"])


def test_chunk_plan_never_crosses_beams_and_covers_all():
    counts = [300, 0, 125, 7]
    chunks = chunk_plan(counts, free_cpus=2, chunks_per_cpu=4)
    for b, n in enumerate(counts):
        mine = [(a, z) for bb, a, z in chunks if bb == b]
        assert sum(z - a for a, z in mine) == n
        assert all(z > a for a, z in mine)
        if mine:
            assert mine[0][0] == 0 and mine[-1][1] == n
            assert all(mine[i][1] == mine[i + 1][0] for i in range(len(mine) - 1))
    assert len(chunks) >= 8  # about free_cpus * chunks_per_cpu tasks
    assert chunk_plan([10], 64) == [(0, 0, 10)]  # min chunk keeps tiny beams whole


def _lpt_makespan(works, cpus):
    load = [0.0] * cpus
    for w in sorted(works, reverse=True):
        load[load.index(min(load))] += w
    return max(load)


def test_chunk_plan_balances_beams_over_the_cpus():
    """9 similar beams on 2 CPUs: whole beams leave one CPU idle for a ninth of the run; the plan
    splits just enough to balance, and the largest-first order is what RayExecutor submits."""
    counts = [360, 339, 265, 321, 360, 376, 320, 265, 338]
    whole = _lpt_makespan([c + 16 for c in counts], 2)
    chunks = chunk_plan(counts, free_cpus=2, chunks_per_cpu=2)
    works = [z - a + 16 for _, a, z in chunks]
    ideal = sum(works) / 2
    assert _lpt_makespan(works, 2) <= 1.03 * ideal < whole
    assert len(chunks) <= len(counts) + 3  # balanced with few extra splits (each repeats the depth terms)
    # heavier beams (longer paths) get split first
    heavy = chunk_plan([300, 300, 300], free_cpus=2, chunks_per_cpu=1, work_per_bixel=[1.0, 1.0, 3.0])
    assert sum(1 for b, _, _ in heavy if b == 2) > 1
    items = [(None, None, None, None, a, z) for _, a, z in chunks]
    order = dij_chunk_order(items)
    assert sorted(order) == list(range(len(chunks))) and [items[i][5] - items[i][4] for i in order] == sorted(
        (z - a for _, a, z in chunks), reverse=True
    )


def test_goals_of_reads_dvh_objectives():
    from rayrt.imaging.phantoms import tg119_order

    order = tg119_order()
    dvh = {"PTV": {"d95_gy": 50.0, "d10_gy": 56.0}, "Core": {"d10_gy": 20.0}}
    goals = {(g.structure, g.metric): g for g in goals_of(order, dvh)}
    assert goals[("PTV", "D95")].met and not goals[("PTV", "D10")].met and goals[("Core", "D10")].met


def test_conversion_options_and_forced_mode_reach_rayrt_convert():
    req = PlanningRequest(conversion_mode="dose_only", conversion_options={"max_attempts": 2, "fmo_iterations": 11})
    opts = conversion_options(req)
    assert opts.mode == "dose_only" and opts.max_attempts == 2 and opts.fmo_iterations == 11
    assert conversion_options(PlanningRequest()).mode is None  # the policy chooses
    with pytest.raises(InputError, match="no_such_option") as bad:
        check_request(PlanningRequest(conversion_options={"no_such_option": 1}))
    assert bad.value.status == 422 and bad.value.field == "options.conversion_options.no_such_option"
    with pytest.raises(InputError, match="conversion_mode"):
        check_request(PlanningRequest(conversion_options={"mode": "reuse"}))


def test_planning_defaults_come_from_configs(tmp_path):
    """Every way in starts from configs/planning.yaml; a job's options override it field by field."""
    import yaml

    from rayrt.config import config_dir
    from rayrt.domain.planning import planning_request

    defaults = yaml.safe_load((config_dir() / "planning.yaml").read_text())["planning"]
    assert set(defaults) == set(PlanningRequest.model_fields) - {"machines", "standard_machine", "gantry_deg"}
    assert planning_request() == PlanningRequest.model_validate(defaults)
    req = planning_request({"num_beams": 7}, ["truebeam_m120"])
    assert req.num_beams == 7 and req.machines == ["truebeam_m120"] and req.fmo_iterations == defaults["fmo_iterations"]
    other = tmp_path / "planning.yaml"
    other.write_text("planning:\n  fmo_iterations: 17\n")
    assert planning_request(defaults_path=other).fmo_iterations == 17
    with pytest.raises(InputError) as bad:
        planning_request({"num_beams": 0})
    assert bad.value.status == 422 and bad.value.field == "options.num_beams"
    other.write_text("planning:\n  no_such_field: 1\n")
    with pytest.raises(InputError, match="no_such_field"):
        planning_request(defaults_path=other)
