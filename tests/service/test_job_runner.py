"""Pipeline stages, the job runner and the priority queue, in one process (no Ray)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from rayrt import pipeline
from rayrt.domain.errors import InputError
from rayrt.domain.job import Job, JobState
from rayrt.domain.order import parse_order
from rayrt.domain.planning import planning_request
from rayrt.pipeline import StageContext, stage_of
from rayrt.service.controlled import JobRunner, job_stages, load_stage_modules
from rayrt.service.scheduler import JobQueue
from rayrt.service.store import Store


def test_run_recipe_from_dicom_folder(small_study_dir, small_study, small_order, tmp_path):
    events = []
    res = pipeline.run_recipe(small_study_dir, small_order, None, out_dir=tmp_path, on_event=events.append)
    assert [e.stage for e in res.events if e.kind == "finished"] == ["load", "structures", "dvh"]
    assert {e.stage for e in res.events if e.kind == "skipped"} == set(pipeline.PLANNING_STAGES)  # no planning request
    rep = res["structure_report"]
    ptv = next(s for s in rep.structures if s.name == "PTV")
    assert ptv.num_voxels == int(small_study.mask("PTV").sum())
    assert ptv.centroid_mm == pytest.approx((10.0, 0.0, 0.0), abs=2.0)  # the PTV cylinder is centred at x = +10 mm
    dvh = {m["name"]: m for m in res["dvh_report"].doses[0].metrics}
    dose = small_study.doses[0].array
    assert dvh["PTV"]["max_gy"] == pytest.approx(dose[small_study.mask("PTV")].max(), rel=1e-3)
    assert dvh["PTV"]["d95_gy"] <= dvh["PTV"]["d50_gy"] <= dvh["PTV"]["max_gy"]
    assert (tmp_path / "dvh" / "dvh.csv").read_text().startswith("dose_index,name,")
    assert json.loads((tmp_path / "structures" / "result.json").read_text())["grid_shape"] == [12, 32, 32]
    assert any(e.kind == "progress" and e.stage == "dvh" for e in events)


def test_dvh_is_skipped_without_dose(small_study):
    from helpers.study import make_small_study

    res = pipeline.run_recipe(make_small_study(with_dose=False), None, None, stages=["load", "structures", "dvh"])
    assert res["dvh_report"] is None
    assert [e.kind for e in res.events if e.stage == "dvh"] == ["skipped"]


def body_mean_hu(study, structure_report, ctx: StageContext) -> float:
    """An extra stage: mean HU inside BODY, fanned out over the executor with the shared arrays."""
    vals = ctx.map(_mean_in_mask, [ctx.shared["mask:BODY"]], ctx.shared["image"])
    return float(vals[0])


def _mean_in_mask(mask, image):
    return image[mask].mean()


def test_recipe_with_extra_stages(small_study):
    names = [s.name for s in pipeline.recipe()]
    assert names[:3] == ["load", "structures", "dvh"] and names[3:] == pipeline.PLANNING_STAGES
    assert [s.name for s in pipeline.recipe(plan=False)] == ["load", "structures", "dvh"]
    with pytest.raises(InputError, match="unknown stage"):
        pipeline.recipe(["nope"])
    extra = stage_of(body_mean_hu, output="body_mean_hu")
    res = pipeline.run_recipe(small_study, None, None, stages=["load", "structures"], extra=[extra])
    assert res["body_mean_hu"] == pytest.approx(0.0)  # water
    progress = [e for e in res.events if e.stage == "body_mean_hu" and e.kind == "progress"]
    assert [(e.done, e.total) for e in progress] == [(1, 1)]  # ctx.map reports items as they finish


def test_stage_modules_export_stages(tmp_path):
    good = tmp_path / "extra_good.py"
    good.write_text(
        "from rayrt.pipeline import stage_of\n\n"
        "def n_structures(study) -> int:\n    return len(study.structures)\n\n"
        "STAGES = [stage_of(n_structures, output='n_structures')]\n"
    )
    (st,) = load_stage_modules([str(good)])
    assert st.name == "n_structures" and st.output == "n_structures"
    bad = tmp_path / "extra_bad.py"
    bad.write_text("def n_structures(study) -> int:\n    return len(study.structures)\n")  # no STAGES list
    with pytest.raises(InputError, match="must export STAGES") as e:
        load_stage_modules([str(bad)])
    assert e.value.field == "stage_modules"
    analysis = Job(patient_id="p")
    assert [s.name for s in job_stages(analysis, [st])] == ["load", "structures", "dvh", "n_structures"]
    planned = Job(patient_id="p", planning=planning_request({}, []))
    assert [s.name for s in job_stages(planned)][3:] == pipeline.PLANNING_STAGES
    with pytest.raises(InputError, match="dvh"):
        job_stages(analysis, [stage_of(n_structures_twin, name="dvh", output="x")])


def n_structures_twin(study) -> int:
    return len(study.structures)


def test_order_validation_against_structures(small_order):
    assert pipeline.validate_order(small_order, ["PTV", "Core", "BODY"]).prescription.target == "PTV"
    with pytest.raises(InputError) as e:
        pipeline.validate_order(small_order, ["PTV", "BODY"])
    assert e.value.status == 422 and "Core" in e.value.message
    small_order["objectives"][0]["dose_gy"] = -5
    with pytest.raises(InputError) as e:
        pipeline.validate_order(small_order, ["PTV", "Core"])
    assert e.value.field == "objectives.0.dose_gy"


def test_job_runner_persists_and_resumes(tmp_path, small_study, small_order):
    store = Store(tmp_path)
    pid = store.put_study(small_study).id
    job = store.create_job(Job(patient_id=pid, order=parse_order(small_order)))
    extra = stage_of(body_mean_hu, output="body_mean_hu")
    done = JobRunner(store, job.id, extra_stages=[extra], progress_interval_s=0).run()
    assert done.state is JobState.succeeded and done.progress == 100.0
    assert [(s.name, s.state) for s in done.stages] == [
        (n, JobState.succeeded) for n in ("load", "structures", "dvh", "body_mean_hu")
    ]
    assert store.get_job(job.id).order == parse_order(small_order)  # the order travels in the job, typed
    stored = store.get_job(job.id)
    assert stored.finished_at is not None and stored.started_at <= stored.finished_at
    files = {r.path for r in store.list_results(job.id)}
    assert {"structures/result.json", "structures/structures.csv", "dvh/result.json", "dvh/dvh.csv"} <= files
    assert "body_mean_hu/result.json" not in files  # a float: nothing to store

    # a service restart mid-job: the job is unfinished, dvh had not finished
    stored.state = JobState.running
    stored.stages[2].state = JobState.running
    store.save_job(stored)
    old = store.get_stage_json(job.id, "structures", "result.json")
    again = JobRunner(store, job.id, extra_stages=[extra], progress_interval_s=0).run()
    assert again.state is JobState.succeeded
    assert again.stages[1].message == "reused the stored result"
    assert again.stages[2].message == ""
    assert store.get_stage_json(job.id, "structures", "result.json") == old


def test_job_runner_records_failure(tmp_path, small_study):
    store = Store(tmp_path)
    pid = store.put_study(small_study).id
    job = store.create_job(Job(patient_id=pid))
    store.delete_dir(f"patients/{pid}/images")  # the patient's CT went missing
    done = JobRunner(store, job.id, progress_interval_s=0).run()
    assert done.state is JobState.failed
    assert done.errors and done.stages[0].state is JobState.failed
    assert store.get_job(job.id).state is JobState.failed


def test_queue_orders_by_priority_then_age():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    q = JobQueue()
    q.push("old-low", 0, t0)
    q.push("new-high", 5, t0 + timedelta(seconds=30))
    q.push("old-high", 5, t0 + timedelta(seconds=10))
    q.push("mid", 1, (t0 + timedelta(seconds=1)).isoformat())
    assert not q.push("mid", 9, t0)  # already queued
    assert q.ordered() == ["old-high", "new-high", "mid", "old-low"]
    assert q.remove("mid") and "mid" not in q
    assert [q.pop() for _ in range(4)] == ["old-high", "new-high", "old-low", None]
    assert len(q) == 0
