"""Imports run in a Ray task, off the ingress replica (issue 15, item 4): the upload is staged in
the store, imported by the task, the staging removed whatever happened; errors stay InputErrors."""

from __future__ import annotations

import asyncio
import io

import pytest

from rayrt.domain.errors import InputError
from rayrt.service.import_task import UPLOADS, import_remote
from rayrt.service.store import Store

pytestmark = pytest.mark.ray


def test_an_upload_is_imported_by_a_task_and_its_staging_removed(ray_session, tmp_path, small_study_zip):
    store = Store(tmp_path / "data")
    with open(small_study_zip, "rb") as fh:
        summary = asyncio.run(import_remote(store, [("study.zip", fh)], 100, {"num_cpus": 0}))
    assert store.get_patient(summary.id).structure_names == summary.structure_names
    assert {"BODY", "PTV", "Core"} <= set(summary.structure_names)
    assert store.list_dirs(UPLOADS) == [], "nothing staged is left"


def test_a_refused_upload_is_the_same_input_error_and_leaves_nothing(ray_session, tmp_path):
    store = Store(tmp_path / "data")
    with pytest.raises(InputError) as e:
        asyncio.run(import_remote(store, [("notes.txt", io.BytesIO(b"hello"))], 100, {"num_cpus": 0}))
    assert e.value.status == 400 and "no DICOM files" in e.value.message and type(e.value) is InputError
    assert store.list_patients() == [] and store.list_dirs(UPLOADS) == []
