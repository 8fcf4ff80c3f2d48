"""De-identification (issue 15, item 8): DICOM PS3.15 Basic Profile on rayrt's RT files, UIDs
remapped consistently across a set, nothing identifying left anywhere in a file."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from rayrt.imaging.deidentify import deidentify, deidentify_json, new_uid, pseudonym

KEY = b"k" * 32


def _values(ds: Dataset):
    """(keyword, str(value)) of every element, nested items included."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _values(item)
        elif elem.VR not in ("OB", "OW", "OF", "OD", "UN"):
            yield elem.keyword, str(elem.value)


def _identified(path) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "MRN-0042", "19600229"
    ds.InstitutionName, ds.ReferringPhysicianName, ds.OperatorsName = "St Elsewhere", "House^G", "Tech^A"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20261201", "101500", "ACC77"
    ds.add_new(0x00091001, "LO", "private secret")  # a private attribute
    ds.add_new(0x00091010, "LO", "Doe^Jane again")
    return ds


def test_basic_profile_on_rtstruct_and_rtdose(small_study_dir, tmp_path):
    rs, rd = _identified(small_study_dir / "RS.dcm"), _identified(small_study_dir / "RD_1.dcm")
    originals = {
        v for ds in (rs, rd) for k, v in _values(ds) if k.endswith("UID") and v not in pydicom.uid.UID_dictionary
    }
    dose_before = rd.pixel_array.copy()
    for ds in (rs, rd):
        deidentify(ds, KEY)
    for ds in (rs, rd):
        text = {v for _, v in _values(ds)}
        for secret in ("Doe^Jane", "MRN-0042", "19600229", "St Elsewhere", "House^G", "Tech^A", "20261201", "ACC77"):
            assert not any(secret in v for v in text), secret
        assert not any(e.tag.is_private for e in ds.iterall())
        assert not originals & text, "no original UID left"
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert ds.PatientID == ds.PatientName == pseudonym(KEY, "MRN-0042")
        assert ds.SOPClassUID in pydicom.uid.UID_dictionary, "standard UIDs are kept"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # one set, one mapping: both files still share study and frame of reference
    assert rs.StudyInstanceUID == rd.StudyInstanceUID and rs.FrameOfReferenceUID == rd.FrameOfReferenceUID
    np.testing.assert_array_equal(rd.pixel_array, dose_before)
    assert [r.ROIName for r in rs.StructureSetROISequence] == [
        r.ROIName for r in pydicom.dcmread(small_study_dir / "RS.dcm").StructureSetROISequence
    ]
    # another key: other UIDs and pseudonym (unlinkable)
    other = deidentify(_identified(small_study_dir / "RS.dcm"), b"x" * 32)
    assert other.SOPInstanceUID != rs.SOPInstanceUID and other.PatientID != rs.PatientID
    out = tmp_path / "rs.dcm"
    rs.save_as(out, enforce_file_format=True)
    if shutil.which("dciodvfy"):
        from helpers.dicom import dciodvfy_errors

        assert dciodvfy_errors(out) == []


def test_json_results_follow_the_same_mapping():
    rt_plan_storage = "1.2.840.10008.5.1.4.1.1.481.5"
    doc = {
        "patient_id": "MRN-0042",
        "plan": {"frame_of_reference_uid": "1.2.3.4", "beams": [{"sop_class_uid": rt_plan_storage}]},
    }
    out = deidentify_json(doc, KEY)
    assert out["patient_id"] == pseudonym(KEY, "MRN-0042")
    assert out["plan"]["frame_of_reference_uid"] == new_uid(KEY, "1.2.3.4")
    assert out["plan"]["beams"][0]["sop_class_uid"] == rt_plan_storage


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.826.0.1.3680043.8.498.1"])
def test_new_uids_are_valid(uid):
    u = new_uid(KEY, uid)
    assert u.startswith("2.25.") and len(u) <= 64 and pydicom.uid.UID(u).is_valid
