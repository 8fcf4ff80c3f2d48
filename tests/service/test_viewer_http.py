"""The image viewer's routes (rayrt.service.viewer through rayrt.service.app): the description of a
patient and of a planned job, image / mask / dose slices as binary answers, equal to what was
uploaded and stored; errors as one 4xx JSON; a structure edit seen at once; a token needed."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pydicom
import pytest
from helpers.http import http

from rayrt.imaging.dicom_io import read_rtdose, read_rtdose_bytes
from rayrt.imaging.slices import PLANES, mask_on_plane, plane_image, plane_index_range, plane_shape
from rayrt.imaging.volume import Grid, Volume
from rayrt.service.store import Store

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def patient(serve_app, small_study_zip) -> str:
    """A patient of its own (this module edits its structures)."""
    with open(small_study_zip, "rb") as fh:
        r = http.post(f"{serve_app}/patients", files=[("files", ("s.zip", fh, "application/zip"))], timeout=120)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _picture(r: httpx.Response) -> np.ndarray:
    """A slice answer as an array [rows, cols] (int16 / float32) or [n, rows, cols] bool (bits)."""
    assert r.status_code == 200, r.text
    rows, cols, dtype = int(r.headers["x-rows"]), int(r.headers["x-cols"]), r.headers["x-dtype"]
    if dtype == "bits":
        n = int(r.headers["x-structures"])
        bits = np.unpackbits(np.frombuffer(r.content, np.uint8), count=n * rows * cols)
        return bits.astype(bool).reshape(n, rows, cols)
    return np.frombuffer(r.content, {"int16": "<i2", "float32": "<f4"}[dtype]).reshape(rows, cols)


def test_patient_description(serve_app, patient, small_study) -> None:
    v = http.get(f"{serve_app}/patients/{patient}/viewer", timeout=30).json()
    assert v["patient_id"] == patient and v["job_id"] is None
    assert tuple(v["grid"]["shape"]) == (12, 32, 32)
    planes = {p["plane"]: p for p in v["planes"]}
    assert set(planes) == set(PLANES)
    assert (planes["axial"]["count"], planes["axial"]["rows"], planes["axial"]["cols"]) == (12, 32, 32)
    assert (planes["coronal"]["rows"], planes["coronal"]["cols"], planes["coronal"]["row_flip"]) == (12, 32, True)
    assert planes["sagittal"]["col_axis"] == "j" and planes["axial"]["row_mm"] == 4.0
    assert len(planes["axial"]["positions_mm"]) == 12
    (ct,) = v["series"]
    assert ct["modality"] == "CT" and ct["primary"] and ct["dtype"] == "int16" and ct["units"] == "HU"
    presets = {w["name"]: (w["width"], w["level"]) for w in ct["windows"]}
    assert presets["soft tissue"] == (400, 40) and presets["lung"] == (1500, -600) and presets["bone"] == (1800, 400)
    assert presets["brain"] == (80, 40)
    assert [(s["index"], s["name"]) for s in v["structures"]] == [(0, "BODY"), (1, "PTV"), (2, "Core")]
    assert all(len(s["colour"]) == 3 for s in v["structures"])
    (dose,) = v["doses"]
    assert dose["kind"] == "uploaded" and dose["slices"] == f"/patients/{patient}/doses/0"
    assert dose["max_gy"] == pytest.approx(float(small_study.doses[0].array.max()), rel=1e-3)


def test_image_slices_are_the_uploaded_ct(serve_app, patient, small_study) -> None:
    ct = small_study.primary
    for plane in PLANES:
        for index in (0, 5, len(plane_index_range(ct.grid, plane)) - 1):
            r = http.get(f"{serve_app}/patients/{patient}/slices/{plane}/{index}", timeout=30)
            got = _picture(r)
            assert r.headers["x-dtype"] == "int16" and r.headers["x-plane"] == plane
            assert got.shape == plane_shape(ct.grid, plane)
            assert np.array_equal(got, plane_image(ct, plane, index)), (plane, index)
    r = http.get(f"{serve_app}/patients/{patient}/slices/axial/6", timeout=30)
    assert r.headers.get("content-encoding") == "gzip"  # a flat phantom: compressed
    assert int(r.headers["content-length"]) < 32 * 32 * 2
    series = http.get(f"{serve_app}/patients/{patient}/viewer", timeout=30).json()["series"][0]["key"]
    same = http.get(f"{serve_app}/patients/{patient}/slices/axial/6", params={"series": series}, timeout=30)
    assert same.content == r.content


def test_masks_are_the_stored_masks(serve_app, serve_settings, patient) -> None:
    stored = Store(serve_settings.data_dir).load_masks(patient)
    for plane in PLANES:
        for index in (2, 6):
            r = http.get(f"{serve_app}/patients/{patient}/masks/{plane}/{index}", timeout=30)
            got = _picture(r)
            assert got.shape[0] == len(stored) == int(r.headers["x-structures"])
            for n, (_, mask) in enumerate(stored):
                assert np.array_equal(got[n], mask_on_plane(mask, plane, index)), (plane, index, n)
    assert any(m[6].any() for _, m in stored)


def test_uploaded_dose_slices(serve_app, patient, small_study_dir) -> None:
    rd = read_rtdose(next(small_study_dir.glob("RD_*.dcm")))
    for plane in PLANES:
        r = http.get(f"{serve_app}/patients/{patient}/doses/0/{plane}/5", timeout=30)
        got = _picture(r)
        assert r.headers["x-dtype"] == "float32" and r.headers["x-units"] == "Gy"
        # the dose is on the CT's grid: the values themselves
        assert np.allclose(got, plane_image(rd, plane, 5), atol=1e-4 * float(rd.array.max()))


def test_plan_doses_of_a_job(serve_app, planned_job) -> None:
    jid = planned_job["id"]
    v = http.get(f"{serve_app}/jobs/{jid}/viewer", timeout=60).json()
    assert v["job_id"] == jid and v["patient_id"] == planned_job["patient_id"]
    assert v["prescription_gy"] == 50.0 and v["prescription_target"] == "PTV"
    plans = [d for d in v["doses"] if d["kind"] == "plan"]
    assert plans[0]["machine"] == "standard" and plans[0]["standard"]
    assert [d["kind"] for d in v["doses"]][-1] == "uploaded"
    listed = http.get(f"{serve_app}/jobs/{jid}/plans", timeout=30).json()["machines"]
    released = [m["machine"] for m in listed if m["verdict"] != "not released"]
    assert [d["machine"] for d in plans] == released
    grid = v["grid"]
    for d in plans:
        assert d["slices"] == f"/jobs/{jid}/plans/{d['machine']}/dose"
        data = http.get(f"{serve_app}/jobs/{jid}/plans/{d['machine']}/rtdose", timeout=30).content
        assert pydicom.dcmread(io.BytesIO(data)).Modality == "RTDOSE"
        rd = read_rtdose_bytes(data)
        assert d["max_gy"] == pytest.approx(float(rd.array.max()), rel=1e-4)
        g = Grid.model_validate(grid)
        for plane in PLANES:
            index = {"axial": 5, "coronal": 16, "sagittal": 18}[plane]  # through the PTV (x = +10 mm)
            got = _picture(http.get(f"{serve_app}{d['slices']}/{plane}/{index}", timeout=30))
            assert got.shape == plane_shape(g, plane)
            # the RTDOSE interpolated at each CT pixel centre: what the slice must hold
            want = rd.sample(_pixel_centres(g, plane, index), order=1, fill=0.0)
            assert np.allclose(got, want, atol=1e-3 * float(rd.array.max())), (d["machine"], plane)
            assert got.max() > 0.5 * v["prescription_gy"], "the slice through the target holds the high dose"
        # a point in the PTV: the RTDOSE's value there, within the interpolation between its voxels
        axial = _picture(http.get(f"{serve_app}{d['slices']}/axial/5", timeout=30))
        xyz = g.index_to_world(np.array([5.0, 16.0, 18.0]))
        kji = np.rint(rd.grid.world_to_index(xyz)).astype(int)
        near = rd.array[kji[0] - 1 : kji[0] + 2, kji[1] - 1 : kji[1] + 2, kji[2] - 1 : kji[2] + 2]
        assert near.min() - 1e-3 <= axial[16, 18] <= near.max() + 1e-3


def _pixel_centres(g: Grid, plane: str, index: int) -> np.ndarray:
    """LPS (x, y, z) of every pixel of a picture, oriented like the picture."""
    c = g.voxel_centers_mm()
    return np.stack([plane_image(Volume(c[..., a], g), plane, index) for a in range(3)], axis=-1)


def test_one_answer_per_slice_change(serve_app, patient, planned_job) -> None:
    """The view routes carry the same bytes as the separate image, masks and dose answers."""
    from rayrt.service.viewer import unbundle

    r = http.get(f"{serve_app}/patients/{patient}/views/coronal/16", params={"dose": "upload:0"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    parts = unbundle(r.content)
    assert set(parts) == {"image", "masks", "dose:upload:0"}
    for name, path in (
        ("image", "slices/coronal/16"),
        ("masks", "masks/coronal/16"),
        ("dose:upload:0", "doses/0/coronal/16"),
    ):
        alone = http.get(f"{serve_app}/patients/{patient}/{path}", timeout=30)
        headers, data = parts[name]
        assert data == alone.content and headers["X-Dtype"] == alone.headers["x-dtype"], name
    jid = planned_job["id"]
    r = http.get(
        f"{serve_app}/jobs/{jid}/views/axial/5", params=[("dose", "plan:standard"), ("dose", "upload:0")], timeout=30
    )
    parts = unbundle(r.content)
    assert set(parts) == {"image", "masks", "dose:plan:standard", "dose:upload:0"}
    alone = http.get(f"{serve_app}/jobs/{jid}/plans/standard/dose/axial/5", timeout=30)
    assert parts["dose:plan:standard"][1] == alone.content
    # a click that moves two views: both slices in one answer, each part the same as on its own
    r = http.get(
        f"{serve_app}/jobs/{jid}/views/coronal/16",
        params=[("dose", "plan:standard"), ("also", "sagittal:20")],
        timeout=30,
    )
    both = unbundle(r.content)
    assert set(both) == {"image", "masks", "dose:plan:standard"} | {
        f"sagittal@20/{n}" for n in ("image", "masks", "dose:plan:standard")
    }
    for plane, index, prefix in (("coronal", 16, ""), ("sagittal", 20, "sagittal@20/")):
        alone = unbundle(
            http.get(f"{serve_app}/jobs/{jid}/views/{plane}/{index}", params={"dose": "plan:standard"}).content
        )
        assert all(both[prefix + name][1] == alone[name][1] for name in alone), plane
    for url, params, status in (
        (f"/jobs/{jid}/views/axial/5", [("also", "sagittal:20")] * 3, 422),  # at most two more slices
        (f"/jobs/{jid}/views/axial/5", {"also": "sagittal"}, 422),
        (f"/jobs/{jid}/views/axial/5", {"also": "sagittal:9999"}, 422),
        (f"/jobs/{jid}/views/axial/5", {"also": "oblique:1"}, 422),
    ):
        r = http.get(f"{serve_app}{url}", params=params, timeout=30)
        assert r.status_code == status and r.json()["field"] in ("also", "index", "plane"), (url, params, r.text)
    for url, params, status in (
        (f"/patients/{patient}/views/axial/5", {"dose": "plan:standard"}, 404),  # a plan needs a job
        (f"/jobs/{jid}/views/axial/5", {"dose": "plan:halcyon"}, 404),
        (f"/jobs/{jid}/views/axial/5", {"dose": "nope"}, 404),
        (f"/jobs/{jid}/views/axial/5", [("dose", "upload:0")] * 5, 422),
        (f"/jobs/{jid}/views/axial/50", {}, 422),
    ):
        r = http.get(f"{serve_app}{url}", params=params, timeout=30)
        assert r.status_code == status and r.json()["field"] in ("dose", "machine", "index"), (url, params, r.text)


def test_bad_requests_answer_one_4xx(serve_app, patient, planned_job) -> None:
    jid = planned_job["id"]
    cases = [
        (f"/patients/{patient}/slices/oblique/1", 422, "plane"),
        (f"/patients/{patient}/slices/axial/12", 422, "index"),
        (f"/patients/{patient}/slices/coronal/-1", 422, "index"),
        (f"/patients/{patient}/slices/axial/abc", 422, "index"),
        (f"/patients/{patient}/slices/axial/1?series=nope", 404, "series"),
        (f"/patients/{patient}/masks/sagittal/32", 422, "index"),
        (f"/patients/{patient}/doses/1/axial/1", 404, "dose"),
        (f"/patients/{patient}/doses/x/axial/1", 404, "dose"),
        ("/patients/nobody/viewer", 404, "patient_id"),
        ("/patients/nobody/slices/axial/1", 404, "patient_id"),
        ("/jobs/nojob/viewer", 404, "job_id"),
        (f"/jobs/{jid}/plans/halcyon/dose/axial/1", 404, "machine"),
        (f"/jobs/{jid}/plans/standard/dose/axial/99", 422, "index"),
        ("/patients/..%2f..%2fetc/viewer", 404, None),
    ]
    for path, status, field in cases:
        r = http.get(f"{serve_app}{path}", timeout=30)
        assert r.status_code == status, (path, r.status_code, r.text)
        body = r.json()
        assert body["error"] and body["message"], path
        if field:
            assert body.get("field") == field, (path, body)


def test_job_without_plans_is_a_conflict(serve_app, patient) -> None:
    from helpers.service import wait_job

    job = http.post(f"{serve_app}/jobs", json={"patient_id": patient}, timeout=30).json()  # analysis only
    wait_job(serve_app, job["id"], timeout_s=300)
    r = http.get(f"{serve_app}/jobs/{job['id']}/viewer", timeout=30)
    assert r.status_code == 409 and r.json()["field"] == "job_id"


def test_a_new_structure_is_shown_at_once(serve_app, serve_settings, patient) -> None:
    """Read the masks (cached), add a structure, read again: the new one is there, never a stale set."""
    before = http.get(f"{serve_app}/patients/{patient}/viewer", timeout=30).json()
    old = _picture(http.get(f"{serve_app}/patients/{patient}/masks/axial/6", timeout=30))
    r = http.post(
        f"{serve_app}/patients/{patient}/structures",
        json={"method": "margin", "source": "PTV", "name": "PTV_viewer", "margin_mm": 5},
        timeout=120,
    )
    assert r.status_code == 201, r.text
    after = http.get(f"{serve_app}/patients/{patient}/viewer", timeout=30).json()
    assert [s["name"] for s in after["structures"]] == [s["name"] for s in before["structures"]] + ["PTV_viewer"]
    assert after["structure_version"] == before["structure_version"] + 1
    assert after["structure_key"] != before["structure_key"]
    r = http.get(f"{serve_app}/patients/{patient}/masks/axial/6", timeout=30)
    assert r.headers["x-structure-key"] == after["structure_key"]
    new = _picture(r)
    assert new.shape[0] == old.shape[0] + 1 and np.array_equal(new[:-1], old)
    stored = dict((s.name, m) for s, m in Store(serve_settings.data_dir).load_masks(patient))
    assert np.array_equal(new[-1], mask_on_plane(stored["PTV_viewer"], "axial", 6))
    assert new[-1].sum() > new[1].sum() > 0, "the 5 mm margin is larger than the PTV"


def test_a_token_is_needed(serve_app, patient, planned_job) -> None:
    jid = planned_job["id"]
    for path in (
        f"/patients/{patient}/viewer",
        f"/patients/{patient}/slices/axial/1",
        f"/patients/{patient}/masks/axial/1",
        f"/patients/{patient}/doses/0/axial/1",
        f"/jobs/{jid}/viewer",
        f"/jobs/{jid}/plans/standard/dose/axial/1",
        f"/patients/{patient}/views/axial/1",
        f"/jobs/{jid}/views/axial/1",
    ):
        r = httpx.get(f"{serve_app}{path}", timeout=30)
        assert r.status_code == 401, (path, r.status_code)


# ---------------------------------------------------------------------------- the cache and compact masks
def test_byte_lru_is_bounded_and_loads_once() -> None:
    import threading

    from rayrt.service.viewer import ByteLRU

    cache = ByteLRU(100)
    for n in range(5):
        cache.get(n, lambda n=n: n, lambda v: 30)
    assert len(cache) == 3 and cache.nbytes == 90 and 0 not in cache and 4 in cache
    cache.get(2, lambda: -1, lambda v: 30)  # a hit: 2 becomes the newest
    cache.get(5, lambda: 5, lambda v: 30)
    assert 3 not in cache and 2 in cache
    assert cache.get("big", lambda: "x", lambda v: 1000) == "x" and "big" not in cache  # over budget: not kept

    calls = []
    gate = threading.Event()

    def slow() -> str:
        calls.append(1)
        gate.wait(5)
        return "v"

    threads = [threading.Thread(target=cache.get, args=("k", slow, lambda v: 1)) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.get("k", lambda: "other", lambda v: 1) == "v"


def test_packed_masks_cut_like_full_masks() -> None:
    from rayrt.domain.patient import Structure
    from rayrt.imaging.slices import plane_axes, plane_index_range
    from rayrt.service.viewer import PackedMask

    rng = np.random.default_rng(3)
    g = Grid(
        shape=(9, 13, 21),
        spacing_mm=(1.0, 1.0, 2.0),
        origin_mm=(0, 0, 0),
        direction=((-1, 0, 0), (0, 1, 0), (0, 0, -1)),
    )
    m = np.zeros(g.shape, dtype=bool)
    m[2:7, 3:11, 4:19] = rng.random((5, 8, 15)) > 0.4
    pm = PackedMask.of(Structure(name="X"), m)
    ks, js, is_ = (np.flatnonzero(m.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    assert pm.box == (ks[0], ks[-1] + 1, js[0], js[-1] + 1, is_[0], is_[-1] + 1)
    assert np.array_equal(pm.full(), m) and pm.bits.nbytes < m.nbytes / 4
    for plane in PLANES:
        ax = plane_axes(g, plane)
        for index in plane_index_range(g, plane):
            cut = pm.cut(ax.normal, index)[:: -1 if ax.row_flip else 1, :: -1 if ax.col_flip else 1]
            assert np.array_equal(cut, mask_on_plane(m, plane, index, g)), (plane, index)
    empty = PackedMask.of(Structure(name="E"), np.zeros(g.shape, dtype=bool))
    assert not empty.cut(0, 3).any() and not empty.full().any()
