"""DICOM export: CT image series, RT Structure Set and RT Dose (pydicom 3, Explicit VR Little Endian).

Geometry conventions are those of :mod:`rayrt.imaging.volume`: slice ``k`` of a volume is
written with ``ImagePositionPatient = origin + direction[:, 2] * spacing_k * k``,
``ImageOrientationPatient = direction[:, 0] + direction[:, 1]`` and
``PixelSpacing = [row spacing (j), column spacing (i)]``.
Structures are written as CLOSED_PLANAR contours produced by
:func:`rayrt.imaging.polygons.mask_to_polygons`, each referencing the CT slice it lies on.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from rayrt.domain.errors import InputError
from rayrt.imaging.dicom_io import read_image_series
from rayrt.imaging.polygons import mask_to_polygons
from rayrt.imaging.study import StructureMask, Study
from rayrt.imaging.volume import Grid, Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
IMPLEMENTATION_VERSION = "RAYRT_0_1"

__all__ = [
    "CTReference",
    "write_ct_series",
    "write_rtstruct",
    "write_rtdose",
    "write_study",
    "save_dataset",
    "CT_IMAGE_STORAGE",
    "RT_STRUCTURE_SET_STORAGE",
    "RT_DOSE_STORAGE",
    "RT_PLAN_STORAGE",
]


def _fmt_ds(x: float) -> str:
    """A decimal string of at most 16 characters."""
    s = f"{float(x):.6f}".rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    if len(s) > 16:
        s = f"{float(x):.10g}"
    return s


def _fmt_ds_list(values: Sequence[float] | np.ndarray, decimals: int = 4) -> list[str]:
    arr = np.round(np.asarray(values, dtype=float).ravel(), decimals)
    out = np.char.rstrip(np.char.rstrip(np.char.mod(f"%.{decimals}f", arr), "0"), ".")
    out = np.where((out == "-0") | (out == ""), "0", out)
    return out.tolist()


_MAX_VALUE_BYTES = 65534  # explicit VR: a DS value is at most 2**16 - 2 bytes


def _set_contour_data(item, poly: np.ndarray) -> int:
    """Set ContourData (3006,0050) as a pre-encoded DS value (pydicom's per-number conversion is slow).

    Uses 4 decimals (0.1 um), fewer when a very long contour would exceed the 64 kB limit of
    an explicit-VR DS value, and as a last resort keeps every n-th vertex. Returns the number of
    vertices written.
    """
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(0x3006, 0x0050)
    pts = np.asarray(poly, dtype=float).reshape(-1, 3)
    while True:
        for decimals in (4, 3, 2, 1):
            raw = "\\".join(_fmt_ds_list(pts, decimals)).encode("ascii")
            if len(raw) % 2:
                raw += b" "
            if len(raw) <= _MAX_VALUE_BYTES:
                item[tag] = RawDataElement(tag, "DS", len(raw), raw, 0, False, True)
                # mark the item as already explicit VR little endian so the writer keeps the raw bytes
                item.set_original_encoding(False, True, item._character_set)
                return int(pts.shape[0])
        pts = pts[::2]


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _new_dataset(sop_class_uid: str, sop_instance_uid: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    return ds


def _patient_study(
    ds,
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    date: str,
    time: str,
    study_id: str = "1",
    study_description: str = "",
) -> None:
    ds.PatientName = patient_name or "ANONYMOUS"
    ds.PatientID = patient_id or "ANON"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = date
    ds.StudyTime = time
    ds.ReferringPhysicianName = ""
    ds.StudyID = study_id
    ds.AccessionNumber = ""
    if study_description:
        ds.StudyDescription = study_description
    ds.Manufacturer = "rayrt"
    ds.ManufacturerModelName = "rayrt"
    ds.SoftwareVersions = "0.1.0"
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time


def save_dataset(ds, path: Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file (preamble and File Meta) at ``path``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _orientation(grid: Grid) -> list[str]:
    d = grid.direction_matrix
    return _fmt_ds_list(np.concatenate([d[:, 0], d[:, 1]]), 6)


def _slice_positions(grid: Grid) -> np.ndarray:
    """LPS position (mm) of voxel (k, 0, 0) for every slice k: shape (nk, 3)."""
    nk = grid.shape[0]
    kji = np.zeros((nk, 3))
    kji[:, 0] = np.arange(nk)
    return grid.index_to_world(kji)


@dataclass
class CTReference:
    """What an RT Structure Set needs to know about the image series it is drawn on."""

    grid: Grid
    series_instance_uid: str
    sop_instance_uids: list[str]
    study_instance_uid: str
    frame_of_reference_uid: str
    patient_id: str = ""
    patient_name: str = ""
    sop_class_uid: str = CT_IMAGE_STORAGE
    files: list[Path] = field(default_factory=list)

    @classmethod
    def from_volume(cls, volume: Volume, *, patient_id: str = "", patient_name: str = "") -> "CTReference":
        """Reference info of an imported (or just written) series carried in ``volume.meta``."""
        m = volume.meta
        missing = [
            k
            for k in ("series_instance_uid", "sop_instance_uids", "study_instance_uid", "frame_of_reference_uid")
            if not m.get(k)
        ]
        if missing:
            raise InputError(
                f"the image volume carries no DICOM reference ({', '.join(missing)}); write the CT series first",
                kind="dicom",
            )
        return cls(
            grid=volume.grid,
            series_instance_uid=m["series_instance_uid"],
            sop_instance_uids=list(m["sop_instance_uids"]),
            study_instance_uid=m["study_instance_uid"],
            frame_of_reference_uid=m["frame_of_reference_uid"],
            patient_id=patient_id or m.get("patient_id", ""),
            patient_name=patient_name or m.get("patient_name", ""),
            sop_class_uid=m.get("sop_class_uid", CT_IMAGE_STORAGE),
        )

    @classmethod
    def from_files(cls, files: Sequence[str | Path]) -> "CTReference":
        """Read the reference from CT files (any order) with :func:`rayrt.imaging.dicom_io.read_image_series`."""
        vol = read_image_series([Path(f) for f in files])
        return cls.from_volume(vol)


def write_ct_series(
    volume: Volume,
    out_dir: str | Path,
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_uid: str | None = None,
    series_description: str = "rayrt CT",
    series_number: int = 1,
) -> list[Path]:
    """Write a volume of Hounsfield units as a CT Image Storage series, one file per slice.

    Pixels are stored as signed 16-bit integers with RescaleSlope 1, RescaleIntercept 0
    (HU rounded to the nearest integer, clipped to [-32768, 32767]). Sets
    ``volume.meta`` keys ``series_instance_uid``, ``sop_instance_uids``,
    ``study_instance_uid``, ``frame_of_reference_uid``, ``patient_id``, ``patient_name`` so that
    :meth:`CTReference.from_volume` can reference the written series. Returns the file paths.
    """
    from pydicom.uid import generate_uid

    if volume.array.ndim != 3:
        raise InputError("write_ct_series needs a 3-D volume", kind="dicom")
    if volume.quantity.upper() not in ("HU", ""):
        raise InputError(
            f"write_ct_series writes Hounsfield units, but the volume holds '{volume.quantity}'", kind="dicom"
        )
    if not np.all(np.isfinite(volume.array)):
        raise InputError(
            "the CT volume contains NaN or infinite values; replace them (e.g. with -1000 HU) before export",
            kind="dicom",
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    grid = volume.grid
    date, time = _now()
    hu = np.clip(np.rint(np.asarray(volume.array, dtype=np.float64)), -32768, 32767).astype(np.int16)
    positions = _slice_positions(grid)
    iop = _orientation(grid)
    pixel_spacing = _fmt_ds_list([grid.spacing[1], grid.spacing[0]], 6)
    normal = grid.direction_matrix[:, 2]
    paths: list[Path] = []
    sop_uids: list[str] = []
    for k in range(grid.shape[0]):
        sop_uid = generate_uid()
        ds = _new_dataset(CT_IMAGE_STORAGE, sop_uid)
        _patient_study(ds, patient_id=patient_id, patient_name=patient_name, study_uid=study_uid, date=date, time=time)
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.SeriesDate = date
        ds.SeriesTime = time
        ds.ContentDate = date
        ds.ContentTime = time
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.Laterality = ""
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.KVP = ""
        ds.ImagePositionPatient = _fmt_ds_list(positions[k], 4)
        ds.ImageOrientationPatient = iop
        ds.SliceLocation = _fmt_ds(float(positions[k] @ normal))
        ds.PixelSpacing = pixel_spacing
        ds.SliceThickness = _fmt_ds(grid.spacing[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = grid.shape[1]
        ds.Columns = grid.shape[2]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = np.ascontiguousarray(hu[k]).astype("<i2").tobytes()
        paths.append(save_dataset(ds, out_dir / f"CT_{k + 1:04d}.dcm"))
        sop_uids.append(sop_uid)
    volume.meta.update(
        series_instance_uid=series_uid,
        sop_instance_uids=sop_uids,
        study_instance_uid=study_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        patient_id=patient_id,
        patient_name=patient_name,
        sop_class_uid=CT_IMAGE_STORAGE,
    )
    return paths


def write_rtstruct(
    structures: "list[StructureMask]",
    reference: CTReference | Volume | Sequence[str | Path],
    path: str | Path,
    *,
    patient_id: str | None = None,
    patient_name: str | None = None,
    label: str = "rayrt",
    series_uid: str | None = None,
    contours: dict[str, list[np.ndarray]] | None = None,
) -> Path:
    """Write masks on the reference image grid as an RT Structure Set (CLOSED_PLANAR polygons).

    ``reference`` is a :class:`CTReference`, an image :class:`Volume` written or imported by
    rayrt (its ``meta`` holds the UIDs), or the list of CT files. Each contour references the
    CT slice it lies on (ContourImageSequence). ``contours`` optionally gives, by structure
    name, the polygons (LPS mm, on image planes) to write instead of those traced from the mask
    (e.g. analytic shapes of a phantom). Returns ``path``.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DSequence
    from pydicom.uid import generate_uid

    if isinstance(reference, Volume):
        ref = CTReference.from_volume(reference)
    elif isinstance(reference, CTReference):
        ref = reference
    else:
        ref = CTReference.from_files(list(reference))
    grid = ref.grid
    date, time = _now()
    sop_uid = generate_uid()
    ds = _new_dataset(RT_STRUCTURE_SET_STORAGE, sop_uid)
    _patient_study(
        ds,
        patient_id=patient_id or ref.patient_id,
        patient_name=patient_name or ref.patient_name,
        study_uid=ref.study_instance_uid,
        date=date,
        time=time,
    )
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 2
    ds.SeriesDescription = "rayrt structures"
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = ref.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.StructureSetDate = date
    ds.StructureSetTime = time

    contour_images = []
    for uid in ref.sop_instance_uids:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = uid
        contour_images.append(item)
    series_item = Dataset()
    series_item.SeriesInstanceUID = ref.series_instance_uid
    series_item.ContourImageSequence = DSequence(contour_images)
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = (
        "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, conventional here)
    )
    study_item.ReferencedSOPInstanceUID = ref.study_instance_uid
    study_item.RTReferencedSeriesSequence = DSequence([series_item])
    for_item = Dataset()
    for_item.FrameOfReferenceUID = ref.frame_of_reference_uid
    for_item.RTReferencedStudySequence = DSequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = DSequence([for_item])

    roi_items, contour_items, obs_items = [], [], []
    for n, sm in enumerate(structures, start=1):
        st = sm.structure
        mask = np.asarray(sm.mask, dtype=bool)
        if mask.shape != tuple(grid.shape):
            raise InputError(
                f"mask of '{st.name}' has shape {mask.shape}, the image grid {grid.shape}", kind="rtstruct"
            )
        roi_number = st.roi_number or n
        roi = Dataset()
        roi.ROINumber = roi_number
        roi.ReferencedFrameOfReferenceUID = ref.frame_of_reference_uid
        roi.ROIName = st.name
        roi.ROIGenerationAlgorithm = "AUTOMATIC" if st.source not in ("manual", "rtstruct") else "MANUAL"
        roi_items.append(roi)

        rc = Dataset()
        rc.ROIDisplayColor = [int(c) for c in st.colour]
        rc.ReferencedROINumber = roi_number
        seq = []
        polys = contours[st.name] if contours and st.name in contours else mask_to_polygons(mask, grid)
        for cnum, poly in enumerate(polys, start=1):
            poly = np.asarray(poly, dtype=float).reshape(-1, 3)
            k = int(round(float(grid.world_to_index(poly[0])[0])))
            c = Dataset()
            if 0 <= k < len(ref.sop_instance_uids):
                img = Dataset()
                img.ReferencedSOPClassUID = ref.sop_class_uid
                img.ReferencedSOPInstanceUID = ref.sop_instance_uids[k]
                c.ContourImageSequence = DSequence([img])
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.ContourNumber = cnum
            c.NumberOfContourPoints = _set_contour_data(c, poly)
            seq.append(c)
        if seq:
            rc.ContourSequence = DSequence(seq)
        contour_items.append(rc)

        obs = Dataset()
        obs.ObservationNumber = roi_number
        obs.ReferencedROINumber = roi_number
        obs.ROIObservationLabel = st.name[:16]
        obs.RTROIInterpretedType = st.kind.to_dicom(st.name)
        obs.ROIInterpreter = ""
        obs_items.append(obs)
    ds.StructureSetROISequence = DSequence(roi_items)
    ds.ROIContourSequence = DSequence(contour_items)
    ds.RTROIObservationsSequence = DSequence(obs_items)
    ds.ApprovalStatus = "UNAPPROVED"
    return save_dataset(ds, Path(path))


def write_rtdose(
    dose: Volume,
    path: str | Path,
    *,
    frame_of_reference_uid: str,
    study_uid: str,
    patient_id: str = "",
    patient_name: str = "",
    referenced_plan_uid: str | None = None,
    bits: int = 32,
    dose_summation_type: str = "PLAN",
    dose_type: str = "PHYSICAL",
    series_uid: str | None = None,
) -> Path:
    """Write a dose volume (Gy) as a multi-frame RT Dose, unsigned 16- or 32-bit with DoseGridScaling.

    ``DoseGridScaling`` = max dose / (2**bits - 1), so stored integer x scaling = dose in Gy
    (negative doses are clipped to 0). ``GridFrameOffsetVector`` is relative to the first
    frame (first element 0). With ``referenced_plan_uid`` the RTPLAN is referenced
    (ReferencedRTPlanSequence); DoseSummationType PLAN without it is written as is.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DSequence
    from pydicom.tag import Tag
    from pydicom.uid import generate_uid

    if bits not in (16, 32):
        raise InputError(f"RTDOSE bits must be 16 or 32, got {bits}", kind="dicom")
    grid = dose.grid
    if not np.all(np.isfinite(dose.array)):
        raise InputError("the dose contains NaN or infinite values; an RTDOSE needs finite doses", kind="dicom")
    arr = np.clip(np.asarray(dose.array, dtype=np.float64), 0.0, None)
    dmax = float(arr.max()) if arr.size else 0.0
    top = float(2**bits - 1)
    scaling = dmax / top if dmax > 0 else 1.0
    stored = np.rint(arr / scaling).clip(0, top).astype("<u4" if bits == 32 else "<u2")
    date, time = _now()
    sop_uid = generate_uid()
    ds = _new_dataset(RT_DOSE_STORAGE, sop_uid)
    _patient_study(ds, patient_id=patient_id, patient_name=patient_name, study_uid=study_uid, date=date, time=time)
    ds.Modality = "RTDOSE"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 3
    ds.SeriesDescription = "rayrt dose"
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    ds.ContentDate = date
    ds.ContentTime = time
    ds.ImagePositionPatient = _fmt_ds_list(grid.origin, 4)
    ds.ImageOrientationPatient = _orientation(grid)
    ds.PixelSpacing = _fmt_ds_list([grid.spacing[1], grid.spacing[0]], 6)
    ds.SliceThickness = _fmt_ds(grid.spacing[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = grid.shape[0]
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
    ds.Rows = grid.shape[1]
    ds.Columns = grid.shape[2]
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = dose_type
    ds.DoseSummationType = dose_summation_type
    ds.GridFrameOffsetVector = _fmt_ds_list(np.arange(grid.shape[0]) * grid.spacing[2], 4)
    ds.DoseGridScaling = f"{scaling:.9e}" if len(f"{scaling:.9e}") <= 16 else f"{scaling:.6e}"
    if referenced_plan_uid:
        item = Dataset()
        item.ReferencedSOPClassUID = RT_PLAN_STORAGE
        item.ReferencedSOPInstanceUID = referenced_plan_uid
        ds.ReferencedRTPlanSequence = DSequence([item])
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return save_dataset(ds, Path(path))


def write_study(
    study: "Study", out_dir: str | Path, *, contours: dict[str, list[np.ndarray]] | None = None
) -> dict[str, list[Path]]:
    """Write the study's primary image as a CT series (``CT/``), its structures (``RS.dcm``) and doses (``RD_<n>.dcm``).

    Keeps the study's StudyInstanceUID and FrameOfReferenceUID when it has them. Returns the
    written paths by kind (``ct``, ``rtstruct``, ``rtdose``).
    """
    from pydicom.uid import generate_uid

    out_dir = Path(out_dir)
    study_uid = study.study_instance_uid or generate_uid()
    for_uid = study.frame_of_reference_uid or generate_uid()
    primary = study.primary
    image = Volume(primary.array, primary.grid, primary.quantity, {})
    ct = write_ct_series(
        image,
        out_dir / "CT",
        patient_id=study.patient_id,
        patient_name=study.patient_name,
        study_uid=study_uid,
        frame_of_reference_uid=for_uid,
    )
    out: dict[str, list[Path]] = {"ct": ct, "rtstruct": [], "rtdose": []}
    if study.structures:
        out["rtstruct"].append(write_rtstruct(study.structures, image, out_dir / "RS.dcm", contours=contours))
    for n, dose in enumerate(study.doses, start=1):
        out["rtdose"].append(
            write_rtdose(
                dose,
                out_dir / f"RD_{n}.dcm",
                frame_of_reference_uid=for_uid,
                study_uid=study_uid,
                patient_id=study.patient_id,
                patient_name=study.patient_name,
            )
        )
    return out
