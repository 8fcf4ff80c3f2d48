"""Durable store: everything survives a restart; writes are atomic; failed imports change nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.paths import REPO

from rayrt.domain.errors import InputError
from rayrt.domain.job import Job, JobState, StageProgress
from rayrt.domain.order import parse_order
from rayrt.domain.planning import planning_request
from rayrt.service.settings import load_settings
from rayrt.service.store import TMP_PREFIX, Store


def _open(kind: str, root: Path) -> Store:
    return Store(root) if kind == "local" else Store(root.as_uri())  # file:///... through FileSystem.from_uri


@pytest.mark.parametrize("kind", ["local", "file_uri"])
def test_patient_and_job_survive_restart(tmp_path, small_study, small_order, kind):
    store = _open(kind, tmp_path / "data")
    summary = store.put_study(small_study)
    job = Job(
        patient_id=summary.id,
        priority=5,
        order=parse_order(small_order),
        machines=["truebeam_m120"],
        planning=planning_request({"num_beams": 5}, ["truebeam_m120"]),
    )
    store.create_job(job)
    job.stages = [StageProgress(name="structures", state=JobState.succeeded, percent=100.0)]
    store.save_job(job)
    store.put_stage_json(job.id, "structures", "result.json", {"n": 3})
    store.put_stage_array(job.id, "structures", "sizes.npy", np.arange(3))
    del store

    again = _open("file_uri" if kind == "local" else "local", tmp_path / "data")  # the other way in
    assert again.list_patients() == [summary.id]
    p = again.get_patient(summary.id)
    assert p == summary
    assert {s.name: s.num_voxels for s in p.structures} == {s.name: int(s.mask.sum()) for s in small_study.structures}
    vv = small_study.primary.grid.voxel_volume_cc
    assert p.structure("PTV").volume_cc == pytest.approx(small_study.mask("PTV").sum() * vv)

    study = again.load_study(summary.id)
    assert study.primary.grid == small_study.primary.grid
    np.testing.assert_array_equal(study.primary.array, small_study.primary.array)
    for a, b in zip(study.structures, small_study.structures):
        assert a.structure.name == b.structure.name
        np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(study.doses[0].array, small_study.doses[0].array)

    j = again.get_job(job.id)
    assert j.priority == 5 and j.stages[0].state is JobState.succeeded
    assert j.order == parse_order(small_order) and j.planning == job.planning  # typed, whole
    assert j.planning.num_beams == 5 and j.planning.machines == ["truebeam_m120"]
    assert [r.path for r in again.list_results(job.id)] == ["structures/result.json", "structures/sizes.npy"]
    assert again.get_stage_json(job.id, "structures", "result.json") == {"n": 3}
    np.testing.assert_array_equal(again.read_array(again.stage_path(job.id, "structures", "sizes.npy")), np.arange(3))


def test_unreadable_job_files_do_not_break_listing(tmp_path, small_study, small_order, caplog):
    store = Store(tmp_path)
    pid = store.put_study(small_study).id
    good = store.create_job(Job(patient_id=pid, order=parse_order(small_order)))
    damaged = store.create_job(Job(patient_id=pid))
    (tmp_path / "jobs" / damaged.id / "job.json").write_text('{"id": "broken"')  # damaged by hand
    old = store.create_job(Job(patient_id=pid))
    legacy = old.model_dump(mode="json") | {"options": {"num_beams": 5}}  # written before the typed job contract
    (tmp_path / "jobs" / old.id / "job.json").write_text(json.dumps(legacy))
    (tmp_path / "jobs" / "interrupted").mkdir()  # creation interrupted before job.json
    assert [j.id for j in store.list_jobs()] == [good.id]
    assert {damaged.id, old.id} <= {w for r in caplog.records for w in r.getMessage().split("/")}


def test_masks_are_packed_bits(tmp_path, small_study):
    store = Store(tmp_path)
    pid = store.put_study(small_study).id
    f = tmp_path / "patients" / pid / "masks" / "0.npy"
    assert np.load(f).dtype == np.uint8
    assert np.load(f).size == -(-small_study.primary.grid.num_voxels // 8)


def test_missing_things_are_404(tmp_path, small_study):
    store = Store(tmp_path)
    pid = store.put_study(small_study).id
    job = store.create_job(Job(patient_id=pid))
    for call in (
        lambda: store.get_patient("nope"),
        lambda: store.get_job("nope"),
        lambda: store.get_patient("../etc"),
        lambda: store.read_result(job.id, "../job.json"),
        lambda: store.read_result(job.id, "x/none.json"),
    ):
        with pytest.raises(InputError) as e:
            call()
        assert e.value.status == 404


def test_failed_import_changes_nothing(tmp_path, small_study):
    from rayrt.imaging.study import StructureMask

    store = Store(tmp_path)
    pid = store.put_study(small_study).id
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    bad = type(small_study)(
        **{
            **small_study.__dict__,
            "structures": [
                *small_study.structures,
                StructureMask(
                    small_study.structures[0].structure.model_copy(update={"name": "Bad"}), np.zeros((2, 2, 2), bool)
                ),
            ],
        }
    )
    with pytest.raises(InputError):
        store.put_study(bad)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before  # no new patient, no staging leftovers
    assert store.list_patients() == [pid]


def test_atomic_write_keeps_old_file_when_rename_fails(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.write_json("a/job.json", {"v": 1})

    def boom(src, dest):
        raise OSError("disk gone")

    monkeypatch.setattr(store, "fs", _FsProxy(store.fs, move=boom))
    with pytest.raises(OSError):
        store.write_json("a/job.json", {"v": 2})
    assert store.read_json("a/job.json") == {"v": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["job.json"]  # the temp file was removed


class _FsProxy:
    def __init__(self, fs, **override):
        self._fs, self._o = fs, override

    def __getattr__(self, name):
        return self._o.get(name) or getattr(self._fs, name)


def test_killed_writer_never_leaves_a_half_written_file(tmp_path):
    """SIGKILL a process that keeps rewriting a 16 MB array; every read afterwards is complete."""
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from rayrt.service.store import Store
        s = Store({str(tmp_path)!r})
        i = 0
        while True:
            s.write_array("v.npy", np.full(2_000_000, i, dtype=np.float64))
            i += 1
            if i == 2:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # let it get into the middle of further writes
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    store = Store(tmp_path)
    v = store.read_array("v.npy")
    assert v.shape == (2_000_000,) and v[0] >= 1 and np.all(v == v[0])
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert store.cleanup() == len(leftovers)
    assert [p.name for p in tmp_path.iterdir()] == ["v.npy"]


def test_settings_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("RAYRT_DATA_DIR", raising=False)
    monkeypatch.delenv("RAYRT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_settings().data_dir == "./rayrt-data"
    cfg = tmp_path / "configs"
    cfg.mkdir()
    (cfg / "service.yaml").write_text("data_dir: /srv/a\nport: 9000\n")
    assert (load_settings().data_dir, load_settings().port) == ("/srv/a", 9000)
    monkeypatch.setenv("RAYRT_DATA_DIR", "file:///srv/b")
    assert load_settings().data_dir == "file:///srv/b"
    assert load_settings(data_dir="/srv/c", port=None).data_dir == "/srv/c"
    (cfg / "service.yaml").write_text("port: -3\n")
    with pytest.raises(InputError, match="port"):
        load_settings()
    assert load_settings(REPO / "configs" / "service.yaml").port == 8000  # the shipped file is valid
