"""Delineation through HTTP: POST /patients/{id}/structures on a real local Ray + Serve."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from helpers.http import http

pytestmark = pytest.mark.ray


def _snapshot(data_dir: str) -> list[tuple[str, int]]:
    root = Path(data_dir)
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def patient(serve_app, small_study_zip) -> dict:
    with open(small_study_zip, "rb") as fh:
        r = http.post(
            f"{serve_app}/patients", files=[("files", (small_study_zip.name, fh, "application/zip"))], timeout=120
        )
    assert r.status_code == 201, r.text
    return r.json()


def test_margin_then_rtstruct_and_log(serve_app, patient):
    pid = patient["id"]
    r = http.post(
        f"{serve_app}/patients/{pid}/structures",
        json={"method": "margin", "source": "PTV", "name": "PTV_5mm", "margin_mm": 5},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    body = r.json()
    changed = {c["name"]: c for c in body["changed"]}
    ptv = next(s for s in patient["structures"] if s["name"] == "PTV")
    assert changed["PTV_5mm"]["volume_cc"] > ptv["volume_cc"]
    # the patient now lists it, and the RTSTRUCT export carries it
    names = [s["name"] for s in http.get(f"{serve_app}/patients/{pid}").json()["structures"]]
    assert "PTV_5mm" in names
    rs = pydicom.dcmread(io.BytesIO(http.get(f"{serve_app}/patients/{pid}/rtstruct", timeout=60).content))
    assert "PTV_5mm" in [roi.ROIName for roi in rs.StructureSetROISequence]
    log = http.get(f"{serve_app}/patients/{pid}/structures/log", params={"name": "PTV_5mm"}).json()
    assert log["operations"][-1]["method"] == "margin"


def test_bad_structure_requests_are_4xx_and_change_nothing(serve_app, serve_settings, patient):
    pid = patient["id"]
    before = _snapshot(serve_settings.data_dir + f"/patients/{pid}")
    for body in (
        {"method": "margin", "source": "Nope", "name": "X", "margin_mm": 5},  # unknown structure
        {"method": "teleport"},  # unknown method
        {"method": "grow", "name": "G", "seed_mm": [9999, 9999, 9999], "window": [-100, 100]},  # seed outside the image
    ):
        r = http.post(f"{serve_app}/patients/{pid}/structures", json=body, timeout=60)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        assert r.json()["message"]
    assert _snapshot(serve_settings.data_dir + f"/patients/{pid}") == before
