"""DICOM import/export with real pydicom-written files: rayrt's own exporters and hand-built datasets."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from rayrt.domain.errors import InputError
from rayrt.domain.patient import Structure, StructureKind
from rayrt.imaging.archive import safe_extract_zip
from rayrt.imaging.dicom_io import read_rtdose, read_rtstruct
from rayrt.imaging.export import CTReference, write_ct_series, write_rtdose, write_rtstruct, write_study
from rayrt.imaging.study import StructureMask, Study, load_study
from rayrt.imaging.volume import Grid, Volume

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


# ----------------------------------------------------------------------------- helpers
def _save(ds: Dataset, path: Path, sop_class: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def hand_image(
    path: Path,
    modality: str,
    pixels: np.ndarray,
    ipp,
    *,
    iop=(1, 0, 0, 0, 1, 0),
    ps=(1.0, 1.0),
    slope=1.0,
    intercept=0.0,
    series_uid: str,
    study_uid: str,
    for_uid: str,
    patient_id="P1",
    **extra,
) -> Path:
    ds = Dataset()
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.Modality = modality
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = [float(v) for v in ps]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0 if pixels.dtype == np.uint16 else 1
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.tobytes()
    sop = {"CT": CT_STORAGE, "MR": MR_STORAGE, "PT": PET_STORAGE}[modality]
    return _save(ds, path, sop)


def hand_series(
    folder: Path,
    modality="CT",
    n=4,
    shape=(6, 7),
    dz=2.0,
    *,
    z_list=None,
    iop=(1, 0, 0, 0, 1, 0),
    for_uid=None,
    tilt_mm_per_slice=0.0,
    **kw,
) -> tuple[list[Path], str]:
    series_uid, study_uid = generate_uid(), generate_uid()
    for_uid = for_uid or generate_uid()
    zs = z_list if z_list is not None else [k * dz for k in range(n)]
    paths = []
    for k, z in enumerate(zs):
        px = (np.arange(shape[0] * shape[1]).reshape(shape) + 100 * k).astype(np.int16)
        paths.append(
            hand_image(
                folder / f"{modality}_{generate_uid()[-8:]}.dcm",
                modality,
                px,
                (-3.0 + tilt_mm_per_slice * k, -2.0, z),
                iop=iop,
                series_uid=series_uid,
                study_uid=study_uid,
                for_uid=for_uid,
                **kw,
            )
        )
    return paths, for_uid


def _square(x0, y0, x1, y1, z):
    return [x0, y0, z, x1, y0, z, x1, y1, z, x0, y1, z]


def hand_rtstruct(
    path: Path, for_uid: str, rois: dict[str, list[list[float]]], *, study_uid=None, patient_id="P1"
) -> Path:
    ds = Dataset()
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.StructureSetLabel = "hand"
    fr = Dataset()
    fr.FrameOfReferenceUID = for_uid
    ds.ReferencedFrameOfReferenceSequence = Sequence([fr])
    ssroi, roic, obs = [], [], []
    for n, (name, contours) in enumerate(rois.items(), start=1):
        r = Dataset()
        r.ROINumber = n
        r.ROIName = name
        r.ReferencedFrameOfReferenceUID = for_uid
        ssroi.append(r)
        c = Dataset()
        c.ReferencedROINumber = n
        c.ROIDisplayColor = [255, 0, 0]
        seq = []
        for pts in contours:
            it = Dataset()
            it.ContourGeometricType = "CLOSED_PLANAR"
            it.NumberOfContourPoints = len(pts) // 3
            it.ContourData = [float(v) for v in pts]
            seq.append(it)
        c.ContourSequence = Sequence(seq)
        roic.append(c)
        o = Dataset()
        o.ObservationNumber = n
        o.ReferencedROINumber = n
        o.RTROIInterpretedType = "ORGAN"
        obs.append(o)
    ds.StructureSetROISequence = Sequence(ssroi)
    ds.ROIContourSequence = Sequence(roic)
    ds.RTROIObservationsSequence = Sequence(obs)
    return _save(ds, path, "1.2.840.10008.5.1.4.1.1.481.3")


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _ct_volume(direction=None) -> Volume:
    kw = {} if direction is None else {"direction": direction}
    g = Grid(shape=(8, 30, 26), spacing_mm=(1.5, 1.25, 2.5), origin_mm=(-20.0, -15.5, 30.0), **kw)
    rng = np.random.default_rng(1)
    return Volume(rng.integers(-1000, 2000, size=g.shape).astype(np.float32), g, "HU")


# ----------------------------------------------------------------------------- CT
@pytest.mark.parametrize("direction", [None, ((0.0, 1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0))])
def test_ct_round_trip_geometry_and_hu(tmp_path, direction):
    vol = _ct_volume(direction)
    files = write_ct_series(vol, tmp_path / "ct", patient_id="P7", patient_name="Doe^J")
    assert len(files) == vol.grid.shape[0]
    st = load_study(tmp_path / "ct")
    assert st.patient_id == "P7" and st.primary.quantity == "HU" and st.primary.meta["modality"] == "CT"
    assert st.primary.grid.same_geometry(vol.grid, tol_mm=1e-3)
    assert np.array_equal(st.primary.array, vol.array)
    assert st.frame_of_reference_uid == vol.meta["frame_of_reference_uid"]
    assert st.series[0].num_files == 8 and st.series[0].modality == "CT"


def test_load_study_from_zip_and_single_file(tmp_path):
    vol = _ct_volume()
    files = write_ct_series(vol, tmp_path / "ct", patient_id="P7", patient_name="Doe^J")
    zp = tmp_path / "ct.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        for f in files:
            zf.write(f, f"nested/dir/{f.name}")
    st = load_study(zp)
    assert np.array_equal(st.primary.array, vol.array)
    single = load_study(files[3])
    assert single.primary.grid.shape == (1, 30, 26)


def test_ct_and_mr_in_one_folder_primary_is_ct(tmp_path):
    vol = _written_ct(tmp_path)
    hand_series(tmp_path / "mr", "MR", n=3, for_uid=vol.meta["frame_of_reference_uid"], patient_id="P1")
    zp = tmp_path.parent / f"{tmp_path.name}.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        for f in tmp_path.rglob("*.dcm"):
            zf.write(f, str(f.relative_to(tmp_path)))
        zf.writestr("__MACOSX/ct/._CT_0001.dcm", b"\x00\x05\x16\x07 apple double")
        zf.writestr(".DS_Store", b"junk")
    st = load_study(zp)
    assert st.primary.meta["modality"] == "CT" and len(st.images) == 2
    assert sorted(s.modality for s in st.series) == ["CT", "MR"]
    assert st.source is None  # no plan: the extracted archive was removed


def test_write_ct_series_refuses_non_hu(tmp_path):
    g = Grid(shape=(2, 3, 4), spacing_mm=(1, 1, 1), origin_mm=(0, 0, 0))
    with pytest.raises(InputError, match="Hounsfield"):
        write_ct_series(Volume(np.zeros(g.shape), g, "MR"), tmp_path, patient_id="P", patient_name="P")


# ----------------------------------------------------------------------------- MR / PET
def test_mr_series_shuffled_files_with_rescale(tmp_path):
    # positions given in reverse order and file names random: sorting is by position along the normal
    paths, _ = hand_series(tmp_path, "MR", n=5, z_list=[8.0, 6.0, 4.0, 2.0, 0.0], slope=0.5, intercept=10.0)
    st = load_study(tmp_path)
    v = st.primary
    assert v.quantity == "MR" and v.grid.shape == (5, 6, 7)
    assert v.grid.spacing_mm == pytest.approx((1.0, 1.0, 2.0))
    assert v.grid.origin_mm == pytest.approx((-3.0, -2.0, 0.0))
    # the slice at z = 0 was written 5th (k = 4 in file order: pixel offset 400)
    base = np.arange(42).reshape(6, 7)
    assert np.allclose(v.array[0], (base + 400) * 0.5 + 10.0)
    assert np.allclose(v.array[4], base * 0.5 + 10.0)


def test_sagittal_mr_orientation(tmp_path):
    # rows along +y, columns along -z (sagittal): slice normal = row x column = -x
    series_uid, study_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    for x in (0.0, 2.0, 4.0):
        px = np.full((5, 6), int(x), np.int16)
        hand_image(
            tmp_path / f"mr{x:.0f}.dcm",
            "MR",
            px,
            (x, -10.0, 50.0),
            iop=(0, 1, 0, 0, 0, -1),
            series_uid=series_uid,
            study_uid=study_uid,
            for_uid=for_uid,
        )
    v = load_study(tmp_path).primary
    assert np.allclose(v.grid.direction_matrix, [[0, 0, -1], [1, 0, 0], [0, -1, 0]])
    assert v.grid.origin_mm == pytest.approx((4.0, -10.0, 50.0))
    assert [float(v.array[k, 0, 0]) for k in range(3)] == [4.0, 2.0, 0.0]
    # voxel (k=2, j=4, i=5): x = 0, y = -10 + 5, z = 50 - 4
    assert v.grid.index_to_world(np.array([2, 4, 5])) == pytest.approx((0.0, -5.0, 46.0))
    # an axial contour is not parallel to these slices
    hand_rtstruct(tmp_path / "RS.dcm", for_uid, {"X": [_square(-1, -9, 3, -6, 48.0)]})
    with pytest.raises(InputError, match="not parallel"):
        load_study(tmp_path)


def test_two_patients_are_refused(tmp_path):
    hand_series(tmp_path / "a", "CT", n=2, patient_id="A")
    hand_series(tmp_path / "b", "CT", n=2, patient_id="B")
    with pytest.raises(InputError, match="2 patients"):
        load_study(tmp_path)


def test_pet_series_in_suv(tmp_path):
    info = Dataset()
    info.RadionuclideTotalDose = 370e6
    info.RadionuclideHalfLife = 6586.2
    info.RadiopharmaceuticalStartTime = "100000"
    hand_series(
        tmp_path,
        "PT",
        n=3,
        Units="BQML",
        PatientWeight=70.0,
        SeriesTime="110000",
        RadiopharmaceuticalInformationSequence=Sequence([info]),
    )
    st = load_study(tmp_path)
    v = st.primary
    assert v.quantity == "SUV"
    factor = 70000.0 / (370e6 * 2 ** (-3600 / 6586.2))
    assert np.allclose(v.array[1], (np.arange(42).reshape(6, 7) + 100) * factor, rtol=1e-5)


def test_pet_without_dose_info_stays_pet(tmp_path):
    hand_series(tmp_path, "PT", n=2, Units="BQML")
    st = load_study(tmp_path)
    assert st.primary.quantity == "PET" and any("SUV could not" in w for w in st.warnings)


# ----------------------------------------------------------------------------- geometry problems
def test_missing_slice_is_refused(tmp_path):
    hand_series(tmp_path, "CT", z_list=[0.0, 2.0, 4.0, 8.0, 10.0])
    with pytest.raises(InputError, match=r"missing 1 slice\(s\).*4.00 mm"):
        load_study(tmp_path)


def test_a_series_beyond_the_voxel_budget_is_refused_from_its_headers(tmp_path):
    """Three slices at z = 0, 1 and 30,000.5 mm would resample to 30,001 slices; slices that claim
    65535 x 65535 pixels; 4096 x 4096 slices whose resampling (21 slices) exceeds the budget: each is
    refused from the headers, before any pixel is decoded or any volume allocated."""
    import pydicom

    from rayrt.imaging.dicom_io import MAX_IMAGE_VOXELS

    far = tmp_path / "far"
    hand_series(far, "CT", z_list=[0.0, 1.0, 30000.5])
    with pytest.raises(InputError, match="spans 30000 mm"):
        load_study(far)

    def claim(folder: Path, rows: int, z_list: list[float]) -> None:
        for f in hand_series(folder, "CT", z_list=z_list)[0]:
            ds = pydicom.dcmread(f)
            ds.Rows = ds.Columns = rows  # the header lies about a pixel block it does not carry
            ds.save_as(f)

    huge = tmp_path / "huge"
    claim(huge, 65535, [0.0, 2.0, 4.0])
    with pytest.raises(InputError, match="65535 x 65535 pixels"):
        load_study(huge)
    budget = tmp_path / "budget"
    claim(budget, 4096, [0.0, 1.0, 20.0])
    assert 4096 * 4096 * 3 <= MAX_IMAGE_VOXELS < 4096 * 4096 * 21
    with pytest.raises(InputError, match="4096 x 4096 x 21"):
        load_study(budget)


def test_a_deflate_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    """A 9 kB Deflated Explicit VR Little Endian file whose dataset inflates to 8 MB: read when the
    limit allows it, refused (422) by the bounded inflate when it does not."""
    from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian

    from rayrt.imaging.dicom_io import read_dicom

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID, ds.Modality = CTImageStorage, generate_uid(), "P", "CT"
    ds.Rows = ds.Columns = 2048
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.zeros((2048, 2048), np.int16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, ds.SOPInstanceUID
    bomb = tmp_path / "bomb.dcm"
    ds.save_as(bomb, enforce_file_format=True)
    assert bomb.stat().st_size < 64 * 1024
    assert read_dicom(bomb).Rows == 2048  # within the default 256 MiB
    monkeypatch.setenv("RAYRT_DICOM_MAX_INFLATED_BYTES", str(2**20))
    with pytest.raises(InputError, match="inflates beyond 1,048,576 bytes") as e:
        read_dicom(bomb, stop_before_pixels=True)
    assert e.value.status == 422


def test_raw_datasets_are_read_and_reported(tmp_path):
    """A CT series and its RTSTRUCT written without the Part 10 preamble and File Meta header (raw
    datasets, implicit VR): imported like Part 10 files, and the import and `rayrt inspect` say so."""
    import pydicom

    from rayrt.imaging.inspect import inspect_path

    g = Grid(shape=(4, 6, 5), spacing_mm=(2.0, 2.0, 3.0), origin_mm=(-4.0, -5.0, 0.0))
    hu = np.arange(g.num_voxels, dtype=float).reshape(g.shape) - 500.0
    vol = Volume(hu, g, "HU")
    files = write_ct_series(vol, tmp_path / "ct", patient_id="P7", patient_name="Doe^J")
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.file_meta
        ds.preamble = None
        ds.save_as(f.with_suffix(""), implicit_vr=True, little_endian=True, enforce_file_format=False)
        f.unlink()
    study = load_study(tmp_path / "ct")
    np.testing.assert_allclose(study.primary.array, hu)
    assert any("without the DICOM Part 10 header" in w and "Implicit VR Little Endian" in w for w in study.warnings)
    report = inspect_path(tmp_path / "ct")
    assert any("without the DICOM Part 10 header" in w for w in report.warnings)


def test_gantry_tilt_is_refused(tmp_path):
    hand_series(tmp_path, "CT", n=4, tilt_mm_per_slice=0.5)
    with pytest.raises(InputError, match="gantry tilt of 14.04 deg"):
        load_study(tmp_path)


def test_mixed_orientations_are_refused(tmp_path):
    series_uid, study_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    px = np.zeros((4, 4), np.int16)
    hand_image(tmp_path / "a.dcm", "CT", px, (0, 0, 0), series_uid=series_uid, study_uid=study_uid, for_uid=for_uid)
    hand_image(
        tmp_path / "b.dcm",
        "CT",
        px,
        (0, 0, 2),
        iop=(0, 1, 0, 1, 0, 0),
        series_uid=series_uid,
        study_uid=study_uid,
        for_uid=for_uid,
    )
    with pytest.raises(InputError, match="mixes 2 slice orientations"):
        load_study(tmp_path)


def test_non_uniform_spacing_is_resampled_with_warning(tmp_path):
    hand_series(tmp_path, "CT", z_list=[0.0, 2.0, 4.0, 7.0, 10.0])
    st = load_study(tmp_path)
    v = st.primary
    assert v.grid.shape[0] == 6 and v.grid.spacing_mm[2] == pytest.approx(2.0)
    assert any("non-uniform" in w for w in st.warnings)
    base = np.arange(42).reshape(6, 7)
    # z = 6 mm lies 2/3 of the way from the slice at 4 mm (offset 200) to the one at 7 mm (offset 300)
    assert np.allclose(v.array[3], base + 200 + 100 * 2 / 3, atol=1e-3)


# ----------------------------------------------------------------------------- RTSTRUCT
def _written_ct(tmp_path, shape=(6, 40, 40), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)):
    g = Grid(shape=shape, spacing_mm=spacing, origin_mm=origin)
    vol = Volume(np.zeros(g.shape, np.float32), g, "HU")
    write_ct_series(vol, tmp_path / "ct", patient_id="P1", patient_name="Test^Patient")
    return vol


def test_hand_built_rtstruct_hole_two_contours_and_between_planes(tmp_path):
    vol = _written_ct(tmp_path)
    for_uid = vol.meta["frame_of_reference_uid"]
    rois = {
        # ring: outer 18 x 18 with a 4 x 4 hole on slices z = 2 and 4 mm (k = 1, 2)
        "Ring": [_square(2.5, 2.5, 20.5, 20.5, z) for z in (2.0, 4.0)]
        + [_square(6.5, 6.5, 10.5, 10.5, z) for z in (2.0, 4.0)],
        # two islands on the same slice z = 6 mm (k = 3)
        "Two": [_square(22.5, 22.5, 25.5, 25.5, 6.0), _square(30.5, 30.5, 35.5, 32.5, 6.0)],
        # contours between image planes at z = 5 and 7 mm: slab [4, 8) -> slices k = 2, 3
        "Between": [_square(1.5, 30.5, 4.5, 33.5, z) for z in (5.0, 7.0)],
    }
    hand_rtstruct(tmp_path / "rs" / "RS.dcm", for_uid, rois, study_uid=vol.meta["study_instance_uid"])
    st = load_study(tmp_path)
    ring, two, between = st.mask("Ring"), st.mask("Two"), st.mask("Between")
    assert ring.sum() == 2 * (18 * 18 - 16) and ring[1:3].sum() == ring.sum() and not ring[1, 8, 8]
    assert two[3].sum() == 9 + 10 and two.sum() == 19
    assert [int(k) for k in np.nonzero(between.any(axis=(1, 2)))[0]] == [2, 3] and between.sum() == 18
    assert st.structure("Ring").structure.kind == StructureKind.organ
    assert st.structure("Two").structure.volume_cc == pytest.approx(19 * 0.002)


def test_rtstruct_round_trip_dice(tmp_path):
    from scipy import ndimage

    vol = _written_ct(tmp_path, shape=(10, 48, 44), spacing=(0.9766, 0.9766, 3.0), origin=(-21.3, -22.1, -13.5))
    rng = np.random.default_rng(5)
    blob = ndimage.gaussian_filter(rng.standard_normal(vol.grid.shape), (1, 3, 3)) > 0.05
    ring = np.zeros(vol.grid.shape, bool)
    c = vol.grid.voxel_centers_mm()
    r = np.hypot(c[..., 0], c[..., 1])
    ring[(r < 18) & (r > 8) & (np.abs(c[..., 2]) < 8)] = True
    structs = [
        StructureMask(Structure(name="Blob", kind=StructureKind.organ), blob),
        StructureMask(Structure(name="PTV ring", kind=StructureKind.target, colour=(1, 2, 3)), ring),
    ]
    write_rtstruct(structs, vol, tmp_path / "RS.dcm")
    st = load_study(tmp_path)
    assert st.primary.grid.same_geometry(vol.grid)
    for s in structs:
        back = st.mask(s.structure.name)
        assert dice(back, s.mask) >= 0.99
    assert st.structure("PTV ring").structure.kind == StructureKind.target
    assert st.structure("PTV ring").structure.colour == (1, 2, 3)
    rs = read_rtstruct(tmp_path / "RS.dcm")
    assert rs.referenced_series_uids == [vol.meta["series_instance_uid"]]
    # references from CT files give the same RTSTRUCT geometry
    ref = CTReference.from_files(sorted((tmp_path / "ct").glob("*.dcm")))
    assert ref.sop_instance_uids == vol.meta["sop_instance_uids"]


def test_rtstruct_on_another_frame_of_reference_is_refused(tmp_path):
    _written_ct(tmp_path)
    hand_rtstruct(tmp_path / "RS.dcm", generate_uid(), {"X": [_square(2.5, 2.5, 5.5, 5.5, 2.0)]})
    with pytest.raises(InputError, match="frame of reference"):
        load_study(tmp_path)


# ----------------------------------------------------------------------------- RTDOSE
def _hand_rtdose(path: Path, frames: np.ndarray, *, gfov, ipp, scaling, for_uid) -> Path:
    ds = Dataset()
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "P1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = for_uid
    ds.Modality = "RTDOSE"
    ds.ImagePositionPatient = list(ipp)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [2.0, 3.0]  # rows 2 mm apart (y), columns 3 mm apart (x)
    ds.NumberOfFrames = frames.shape[0]
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = "PLAN"
    ds.GridFrameOffsetVector = list(gfov)
    ds.DoseGridScaling = scaling
    ds.PixelData = frames.astype(np.uint16).tobytes()
    return _save(ds, path, "1.2.840.10008.5.1.4.1.1.481.2")


@pytest.mark.parametrize("layout", ["relative", "absolute", "decreasing"])
def test_hand_built_multiframe_rtdose(tmp_path, layout):
    frames = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5) * 10
    z0 = 50.0
    if layout == "relative":
        gfov, ipp, expect = [0.0, 2.5, 5.0], (10.0, 20.0, z0), frames
    elif layout == "absolute":
        gfov, ipp, expect = [z0, z0 + 2.5, z0 + 5.0], (10.0, 20.0, z0), frames
    else:  # frames stored from superior to inferior
        gfov, ipp, expect = [0.0, -2.5, -5.0], (10.0, 20.0, z0 + 5.0), frames[::-1]
    d = read_rtdose(
        _hand_rtdose(tmp_path / "RD.dcm", frames, gfov=gfov, ipp=ipp, scaling=0.002, for_uid=generate_uid())
    )
    assert d.quantity == "dose_gy" and d.grid.shape == (3, 4, 5)
    assert d.grid.spacing_mm == pytest.approx((3.0, 2.0, 2.5))
    assert d.grid.origin_mm == pytest.approx((10.0, 20.0, z0))
    assert np.allclose(d.array, expect * 0.002)


@pytest.mark.parametrize("bits", [16, 32])
def test_write_rtdose_round_trip(tmp_path, bits):
    g = Grid(shape=(5, 6, 7), spacing_mm=(2.5, 2.5, 3.0), origin_mm=(-7.5, -6.25, 10.0))
    rng = np.random.default_rng(2)
    dose = Volume(rng.uniform(0, 62.0, g.shape).astype(np.float32), g, "dose_gy")
    plan_uid = generate_uid()
    p = write_rtdose(
        dose,
        tmp_path / "RD.dcm",
        frame_of_reference_uid="1.2.3",
        study_uid="1.2.4",
        patient_id="P1",
        referenced_plan_uid=plan_uid,
        bits=bits,
    )
    back = read_rtdose(p)
    assert back.grid.same_geometry(g)
    tol = 62.0 / (2**bits - 1)
    assert np.abs(back.array - dose.array).max() <= tol * 0.51 + 1e-5
    assert back.meta["referenced_plan_uid"] == plan_uid and back.meta["frame_of_reference_uid"] == "1.2.3"


def test_rtdose_on_another_frame_of_reference_is_refused(tmp_path):
    vol = _written_ct(tmp_path)
    dose = Volume(np.ones(vol.grid.shape, np.float32), vol.grid, "dose_gy")
    write_rtdose(
        dose,
        tmp_path / "RD.dcm",
        frame_of_reference_uid=generate_uid(),
        study_uid=vol.meta["study_instance_uid"],
        patient_id="P1",
    )
    with pytest.raises(InputError, match="frame of reference"):
        load_study(tmp_path)


def test_write_study_round_trip_with_dose(tmp_path):
    vol = _written_ct(tmp_path / "src")
    mask = np.zeros(vol.grid.shape, bool)
    mask[1:4, 5:20, 8:30] = True
    study = Study(
        patient_id="P1",
        patient_name="X",
        study_instance_uid=None,
        frame_of_reference_uid=None,
        series=[],
        images={"s": vol},
        primary_uid="s",
        structures=[StructureMask(Structure(name="Box"), mask)],
        doses=[Volume(np.full(vol.grid.shape, 2.0, np.float32), vol.grid, "dose_gy")],
    )
    out = write_study(study, tmp_path / "out")
    assert len(out["ct"]) == 6 and len(out["rtstruct"]) == 1 and len(out["rtdose"]) == 1
    back = load_study(tmp_path / "out")
    assert np.array_equal(back.mask("Box"), mask)
    assert np.allclose(back.doses[0].array, 2.0, atol=1e-6)


# ----------------------------------------------------------------------------- bad input
def test_empty_file_is_refused(tmp_path):
    (tmp_path / "slice.dcm").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        load_study(tmp_path)


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM files found"):
        load_study(tmp_path)
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 200)
    with pytest.raises(InputError, match="not a DICOM file"):
        load_study(tmp_path)


@pytest.mark.parametrize("name", ["../evil.dcm", "a/../../evil.dcm", "/abs/evil.dcm"])
def test_zip_slip_is_refused(tmp_path, name):
    zp = tmp_path / "bad.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        zf.writestr("ok/file.txt", "x")
        zf.writestr(name, "y")
    dest = tmp_path / "out"
    with pytest.raises(InputError):
        safe_extract_zip(zp, dest)
    assert not (tmp_path / "evil.dcm").exists()
    assert not dest.exists() or not any(p.is_file() for p in dest.rglob("*"))  # checked before anything is written
    with pytest.raises(InputError, match="escapes|absolute"):
        load_study(zp)


def test_zip_symlink_and_bomb_are_refused(tmp_path):
    zp = tmp_path / "link.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(InputError, match="symbolic link"):
        safe_extract_zip(zp, tmp_path / "o1")
    zb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.bin", b"\x00" * (8 * 2**20))
    with pytest.raises(InputError, match="zip bomb|limit"):
        safe_extract_zip(zb, tmp_path / "o2")
    zr = tmp_path / "random.zip"
    with zipfile.ZipFile(zr, "w") as zf:
        zf.writestr("noise.bin", np.random.default_rng(0).bytes(2 * 2**20))
    with pytest.raises(InputError, match="limit"):
        safe_extract_zip(zr, tmp_path / "o3", max_bytes=2**20)
    assert len(safe_extract_zip(zr, tmp_path / "o4")) == 1
    with pytest.raises(InputError, match="not a valid .zip"):
        (tmp_path / "fake.zip").write_text("nope")
        load_study(tmp_path / "fake.zip")


def _run_cli(args, capsys):
    from rayrt.cli import app as _  # noqa: F401  (registers commands)
    from rayrt.cli.app import run

    code = run(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_bad_input_is_one_line_and_exit_code(tmp_path, capsys):
    import rayrt.cli  # noqa: F401

    hand_series(tmp_path / "miss", "CT", z_list=[0.0, 2.0, 6.0])
    code, out, err = _run_cli(["inspect", str(tmp_path / "miss")], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "missing" in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.dcm").write_bytes(b"")
    code, out, err = _run_cli(["inspect", str(tmp_path / "empty")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_cli_inspect_and_dvh(tmp_path, capsys):
    import rayrt.cli  # noqa: F401

    vol = _written_ct(tmp_path)
    mask = np.zeros(vol.grid.shape, bool)
    mask[1:5, 10:30, 5:25] = True
    write_rtstruct([StructureMask(Structure(name="Box", kind=StructureKind.target), mask)], vol, tmp_path / "RS.dcm")
    x = vol.grid.voxel_centers_mm()[..., 0]
    dose = Volume((1.0 + 0.1 * x).astype(np.float32), vol.grid, "dose_gy")
    write_rtdose(
        dose,
        tmp_path / "RD.dcm",
        frame_of_reference_uid=vol.meta["frame_of_reference_uid"],
        study_uid=vol.meta["study_instance_uid"],
        patient_id="P1",
    )
    code, out, err = _run_cli(["inspect", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert rep["series"][0]["dims_ijk"] == [40, 40, 6]
    assert rep["structures"][0]["name"] == "Box" and rep["structures"][0]["volume_cc"] == pytest.approx(3.2)
    assert rep["doses"][0]["max_gy"] == pytest.approx(1.0 + 0.1 * 39, rel=1e-4)
    args = ["dvh", "--rtstruct", str(tmp_path / "RS.dcm"), "--rtdose", str(tmp_path / "RD.dcm"), "--json"]
    code, out, err = _run_cli(args, capsys)
    assert code == 0, err
    rows = json.loads(out)
    # default: structures below 5 cc are supersampled (4 x 4 in-plane); the traced polygons cut the box corners
    assert rows[0]["method"].startswith("sub-voxel") and rows[0]["volume_cc"] == pytest.approx(3.2, rel=0.01)
    code, out, err = _run_cli(args + ["--subvoxel", "1"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert rows[0]["method"].startswith("voxel-centre")
    assert rows[0]["name"] == "Box" and rows[0]["volume_cc"] == pytest.approx(3.2)
    # dose 1 + 0.1 x over x = 5..24 mm: min 1.5, max 3.4, mean 2.45; D50 = 2.45
    assert rows[0]["min_gy"] == pytest.approx(1.5, abs=1e-3) and rows[0]["max_gy"] == pytest.approx(3.4, abs=1e-3)
    assert rows[0]["mean_gy"] == pytest.approx(2.45, abs=1e-3) and rows[0]["d50_gy"] == pytest.approx(2.45, abs=1e-3)
    for key in ("d2_gy", "d5_gy", "d95_gy", "d98_gy"):
        assert key in rows[0]
    code, out, err = _run_cli(
        ["dvh", "--rtstruct", str(tmp_path / "RS.dcm"), "--rtdose", str(tmp_path / "RD.dcm")], capsys
    )
    assert code == 0 and "Box" in out
    # mismatched frame of reference between the RTSTRUCT and the RTDOSE
    write_rtdose(dose, tmp_path / "RD2.dcm", frame_of_reference_uid=generate_uid(), study_uid="1.2.3")
    code, out, err = _run_cli(
        ["dvh", "--rtstruct", str(tmp_path / "RS.dcm"), "--rtdose", str(tmp_path / "RD2.dcm")], capsys
    )
    assert code == 2 and "frame of reference" in err


def test_inspect_lists_plans_and_contours_and_zip_keeps_plan_files(tmp_path, capsys):
    import rayrt.cli  # noqa: F401

    vol = _written_ct(tmp_path / "d")
    mask = np.zeros(vol.grid.shape, bool)
    mask[1:5, 10:30, 5:25] = True
    write_rtstruct([StructureMask(Structure(name="Box"), mask)], vol, tmp_path / "d" / "RS.dcm")
    ds = Dataset()
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "P1"
    ds.StudyInstanceUID = vol.meta["study_instance_uid"]
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = vol.meta["frame_of_reference_uid"]
    ds.Modality = "RTPLAN"
    ds.RTPlanLabel = "TEST"
    beams = []
    for n in range(2):
        b = Dataset()
        b.BeamNumber = n + 1
        b.TreatmentMachineName = "TrueBeam1"
        beams.append(b)
    ds.BeamSequence = Sequence(beams)
    fg = Dataset()
    fg.NumberOfFractionsPlanned = 25
    ds.FractionGroupSequence = Sequence([fg])
    _save(ds, tmp_path / "d" / "RP.dcm", "1.2.840.10008.5.1.4.1.1.481.5")
    code, out, err = _run_cli(["inspect", str(tmp_path / "d"), "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert rep["plans"] == [
        {
            "file": "RP.dcm",
            "label": "TEST",
            "num_beams": 2,
            "fractions": 25,
            "machines": ["TrueBeam1"],
            "sop_instance_uid": ds.SOPInstanceUID,
        }
    ]
    assert rep["structures"][0]["num_contours"] == 4
    code, out, err = _run_cli(["inspect", str(tmp_path / "d")], capsys)
    assert code == 0 and "TrueBeam1" in out and "Box" in out
    zp = tmp_path / "d.zip"
    shutil.make_archive(str(tmp_path / "d"), "zip", tmp_path / "d")
    st = load_study(zp)
    assert len(st.plan_files) == 1 and st.plan_files[0].is_file()
    shutil.rmtree(st.source)


# ----------------------------------------------------------------------------- validator
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed")
def test_files_pass_dciodvfy(tmp_path):
    vol = _written_ct(tmp_path)
    mask = np.zeros(vol.grid.shape, bool)
    mask[1:5, 10:30, 5:25] = True
    write_rtstruct([StructureMask(Structure(name="Box"), mask)], vol, tmp_path / "RS.dcm")
    dose = Volume(np.ones(vol.grid.shape, np.float32), vol.grid, "dose_gy")
    write_rtdose(
        dose,
        tmp_path / "RD.dcm",
        frame_of_reference_uid=vol.meta["frame_of_reference_uid"],
        study_uid=vol.meta["study_instance_uid"],
        bits=16,
        referenced_plan_uid=generate_uid(),
    )
    for f in (sorted((tmp_path / "ct").glob("*.dcm"))[0], tmp_path / "RS.dcm", tmp_path / "RD.dcm"):
        res = subprocess.run(["dciodvfy", "-new", str(f)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"{f.name}: {errors}"
