"""DICOM import: CT / MR / PET image series, RT Structure Sets and RT Dose (pydicom 3).

* Image series are grouped by SeriesInstanceUID and sorted by position along the slice
  normal ``n = row x column`` (ImageOrientationPatient). The grid's third axis is ``n``; the
  origin is the ImagePositionPatient of the first slice; spacing is
  ``(PixelSpacing[1], PixelSpacing[0], slice spacing)``. Stored values are converted with each
  slice's RescaleSlope / RescaleIntercept (HU for CT).
* Checks (each an :class:`~rayrt.domain.errors.InputError` with what to do): mixed
  orientations within a series, duplicate slice positions, gantry tilt (slices shifted within
  their plane as the position advances), missing slices (a gap that is a multiple of the
  regular spacing). Other non-uniform spacing is resampled linearly onto the finest spacing,
  with a warning.
* RTSTRUCT: CLOSED_PLANAR contours per ROI (POINT and OPEN contours are skipped with a
  warning), rasterised with :func:`rayrt.imaging.polygons.rasterize_polygons`.
* RTDOSE: stored integers x DoseGridScaling = Gy; frames positioned by GridFrameOffsetVector
  (relative to ImagePositionPatient, or absolute when its first element equals the first
  frame's position); single and multi-frame.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import numpy as np

from rayrt.domain.errors import InputError
from rayrt.domain.patient import Structure, StructureKind
from rayrt.imaging.volume import Grid, Volume, as_mat3, as_vec3

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "damaged_input",
    "DicomFile",
    "RoiContours",
    "RTStructData",
    "scan_dicom",
    "read_dicom",
    "read_raw_dataset",
    "raw_transfer_syntax",
    "check_image_size",
    "read_image_series",
    "read_rtstruct",
    "read_rtdose",
    "read_rtdose_bytes",
    "IMAGE_MODALITIES",
]

IMAGE_MODALITIES = ("CT", "MR", "PT")
_ORIENT_TOL = 1e-4
_TILT_TOL_DEG = 0.05
_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass
class DicomFile:
    """Header of one DICOM file found while scanning (pixel data not read)."""

    path: Path
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str | None
    patient_id: str
    patient_name: str
    series_description: str = ""


#: the most voxels an image series may hold, as stored and after any resampling (float32: 1 GiB;
#: a 512 x 512 CT of 1,024 slices). Checked on the headers, before any pixel is read.
MAX_IMAGE_VOXELS = 512 * 512 * 1024
#: the most rows or columns of one slice
MAX_SLICE_PIXELS = 4096
#: the longest a series may reach along the slice normal (mm): 2 m, a whole-body scan
MAX_SERIES_EXTENT_MM = 2000.0


def check_image_size(label: str, rows: int, columns: int, slices: int, extent_mm: float) -> None:
    """InputError 422 unless an image series of ``rows`` x ``columns`` x ``slices`` (as stored or as
    it would be resampled) spanning ``extent_mm`` along the slice normal fits the budgets above."""
    if not (1 <= rows <= MAX_SLICE_PIXELS and 1 <= columns <= MAX_SLICE_PIXELS):
        raise InputError(
            f"{label}: slices of {rows} x {columns} pixels; rayrt reads 1 to {MAX_SLICE_PIXELS} rows and columns",
            kind="dicom",
            field="Rows",
            status=422,
        )
    if extent_mm > MAX_SERIES_EXTENT_MM:
        raise InputError(
            f"{label} spans {extent_mm:.0f} mm along the slice normal (at most {MAX_SERIES_EXTENT_MM:.0f} mm): "
            "check the slice positions (ImagePositionPatient)",
            kind="dicom",
            field="ImagePositionPatient",
            status=422,
        )
    if rows * columns * slices > MAX_IMAGE_VOXELS:
        raise InputError(
            f"{label} would hold {rows} x {columns} x {slices} = {rows * columns * slices:,} voxels, more than "
            f"the {MAX_IMAGE_VOXELS:,} rayrt reads in one series",
            kind="dicom",
            field="ImagePositionPatient",
            status=422,
        )


#: the most bytes the dataset of one deflated DICOM file (Deflated Explicit VR Little Endian) may
#: inflate to (env ``RAYRT_DICOM_MAX_INFLATED_BYTES``): checked by a bounded inflate before pydicom,
#: which inflates the whole dataset in memory, reads it (a 9 kB file can carry gigabytes of zeros)
DEFAULT_MAX_INFLATED_BYTES = 256 * 2**20

_DEFLATED = "1.2.840.10008.1.2.1.99"


def _check_inflated_size(path: Path) -> None:
    """InputError 422 when ``path`` is a deflated DICOM file whose dataset inflates beyond the limit."""
    import struct
    import zlib

    with open(path, "rb") as fh:
        head = fh.read(144)
        # Part 10: preamble, "DICM", then (0002,0000) UL group length as the first meta element
        if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
            return
        meta_end = 144 + struct.unpack("<I", head[140:144])[0]
        meta = head + fh.read(max(0, meta_end - 144))
        if _DEFLATED.encode() not in meta:
            return
        limit = int(os.environ.get("RAYRT_DICOM_MAX_INFLATED_BYTES", DEFAULT_MAX_INFLATED_BYTES))
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # DICOM deflate: raw RFC 1951, no zlib header
        pending, total = fh.read(), 0
        try:
            while pending and not inflater.eof:
                total += len(inflater.decompress(pending, limit - total + 1))
                if total > limit:
                    raise InputError(
                        f"{path.name}: its deflated dataset inflates beyond {limit:,} bytes; refused before reading",
                        kind="dicom",
                        field=str(path.name),
                        status=422,
                    )
                pending = inflater.unconsumed_tail
        except zlib.error as exc:
            raise InputError(f"{path.name} is a damaged deflated DICOM file: {exc}", kind="dicom") from None


def damaged_input(what: str, kind: str = "dicom") -> Callable[[F], F]:
    """Decorate a reader of a file or folder (its first argument): any exception but InputError that
    the data provokes (pydicom parses lazily: a damaged value raises where it is read, as a
    ValueError, AttributeError, TypeError, NotImplementedError...) becomes one InputError 422
    naming the file and what was wrong, so that a damaged upload is a clear refusal, never a crash.
    Found by fuzzing (tests/imaging/test_fuzz.py keeps each crasher)."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(source: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(source, *args, **kwargs)
            except InputError:
                raise
            except Exception as exc:
                name = Path(source).name if isinstance(source, (str, Path)) else what
                raise InputError(
                    f"cannot read {what} {name}: it is damaged or incomplete ({type(exc).__name__}: {str(exc)[:200]})",
                    kind=kind,
                    field=name,
                    status=422,
                ) from None

        return wrapper  # type: ignore[return-value]

    return deco


def read_dicom(path: str | Path, stop_before_pixels: bool = False):
    """One DICOM file as a pydicom Dataset: a Part 10 file (preamble, ``DICM``, File Meta header) or
    a raw dataset without them, as some planning systems export RTPLANs (:func:`read_raw_dataset`:
    transfer syntax inferred). Deflated files are inflated with a bound first. InputError when it is
    neither, or damaged."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    _check_inflated_size(path)
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raw = read_raw_dataset(path, stop_before_pixels)
        if raw is not None:
            return raw
        raise InputError(
            f"{path.name} is not a DICOM file ({exc}); remove it or point rayrt at the DICOM folder",
            kind="dicom",
            field=str(path.name),
        ) from None
    except Exception as exc:  # truncated or corrupt file
        raise InputError(
            f"{path.name} is a damaged DICOM file: {type(exc).__name__}: {exc}", kind="dicom", field=str(path.name)
        ) from None


def read_raw_dataset(path: Path, stop_before_pixels: bool = False):
    """A DICOM dataset written without the Part 10 preamble and File Meta header, or None when the
    file does not parse as one (it must carry a SOP Class and a SOP Instance UID). The transfer
    syntax is inferred from the data (implicit or explicit VR, byte order) and recorded in a File
    Meta header added to the dataset, so that its pixel data decodes like any other file's."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
        sop_class, sop_instance = str(ds.get("SOPClassUID", "") or ""), str(ds.get("SOPInstanceUID", "") or "")
        implicit, little = ds.original_encoding
    except Exception:  # not a dataset at all
        return None
    if not sop_class.startswith("1.2.840.10008.") or not sop_instance:
        return None
    meta = ds.get("file_meta") or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_instance
    ds.file_meta = meta
    return ds


def raw_transfer_syntax(ds) -> str | None:
    """The inferred transfer syntax's name when ``ds`` was read as a raw dataset (no Part 10 header)."""
    if getattr(ds, "preamble", b"x") is not None:
        return None
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return ts.name if ts is not None else None


#: files never tried as raw DICOM datasets (a raw dataset has no signature to recognise it by)
_NOT_DICOM_SUFFIXES = frozenset(
    {
        ".txt",
        ".md",
        ".json",
        ".yaml",
        ".yml",
        ".csv",
        ".xml",
        ".html",
        ".pdf",
        ".png",
        ".jpg",
        ".jpeg",
        ".zip",
        ".gz",
        ".mat",
        ".npy",
        ".npz",
        ".py",
        ".log",
    }
)


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) >= 132 and head[128:132] == b"DICM"


def _frame_of_reference(ds) -> str | None:
    uid = getattr(ds, "FrameOfReferenceUID", None)
    if uid:
        return str(uid)
    seq = getattr(ds, "ReferencedFrameOfReferenceSequence", None)
    if seq:
        uid = getattr(seq[0], "FrameOfReferenceUID", None)
        if uid:
            return str(uid)
    seq = getattr(ds, "StructureSetROISequence", None)
    if seq:
        uid = getattr(seq[0], "ReferencedFrameOfReferenceUID", None)
        if uid:
            return str(uid)
    return None


def scan_dicom(files: Iterable[Path], warnings: list[str] | None = None) -> list[DicomFile]:
    """Read the headers of DICOM files; skip non-DICOM files (noted in ``warnings``).

    An empty file or one that starts like DICOM (``DICM`` at byte 128) but cannot be parsed is
    an :class:`InputError`; so is a list that holds no DICOM file at all.
    """
    warnings = warnings if warnings is not None else []
    found: list[DicomFile] = []
    skipped: list[str] = []
    raw: list[str] = []
    files = sorted(Path(f) for f in files)
    for f in files:
        if f.name.startswith("._") or f.name in _JUNK_NAMES or "__MACOSX" in f.parts:
            continue  # macOS resource forks and folder metadata inside archives
        if f.stat().st_size == 0:
            raise InputError(
                f"{f.name} is an empty file (0 bytes); remove it or re-export the data", kind="dicom", field=str(f)
            )
        if _looks_like_dicom(f) or f.suffix.lower() in (".dcm", ".dicom", ".ima"):
            ds = read_dicom(f, stop_before_pixels=True)  # named or marked DICOM: it must read as DICOM
        elif f.suffix.lower() in _NOT_DICOM_SUFFIXES or (ds := read_raw_dataset(f, stop_before_pixels=True)) is None:
            skipped.append(f.name)
            continue
        if (ts := raw_transfer_syntax(ds)) is not None:  # no preamble nor File Meta header (some TPS exports)
            raw.append(f"{f.name} ({ts})")
        modality = str(getattr(ds, "Modality", "") or "")
        if not modality or not getattr(ds, "SOPInstanceUID", None):
            skipped.append(f.name)
            continue
        found.append(
            DicomFile(
                path=f,
                modality=modality.upper(),
                sop_class_uid=str(getattr(ds, "SOPClassUID", "")),
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_instance_uid=str(getattr(ds, "SeriesInstanceUID", "") or ""),
                study_instance_uid=str(getattr(ds, "StudyInstanceUID", "") or ""),
                frame_of_reference_uid=_frame_of_reference(ds),
                patient_id=str(getattr(ds, "PatientID", "") or ""),
                patient_name=str(getattr(ds, "PatientName", "") or ""),
                series_description=str(getattr(ds, "SeriesDescription", "") or ""),
            )
        )
    if skipped:
        warnings.append(
            f"skipped {len(skipped)} non-DICOM file(s): {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}"
        )
    if raw:
        warnings.append(
            f"read {len(raw)} file(s) written without the DICOM Part 10 header (raw datasets, transfer syntax "
            f"inferred): {', '.join(raw[:5])}{' ...' if len(raw) > 5 else ''}"
        )
    if not found:
        raise InputError(
            f"no DICOM files found ({len(files)} file(s) looked at{', none of them DICOM' if files else ''}); "
            "give a folder or .zip of DICOM files (CT/MR/PET series, RTSTRUCT, RTPLAN, RTDOSE)",
            kind="dicom",
        )
    return found


# --------------------------------------------------------------------------------- images
def _float_list(value, n: int, what: str, path: Path) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except Exception:
        arr = np.empty(0)
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise InputError(f"{path.name}: {what} is missing or malformed", kind="dicom", field=str(path))
    return arr


def _pet_scale(ds, warnings: list[str]) -> tuple[float, str]:
    """Factor from PET values (after rescale) to SUVbw, or (1, 'PET') when it cannot be computed."""
    units = str(getattr(ds, "Units", "") or "").upper()
    if units == "GML":
        return 1.0, "SUV"
    try:
        weight_kg = float(ds.PatientWeight)
        info = ds.RadiopharmaceuticalInformationSequence[0]
        dose_bq = float(info.RadionuclideTotalDose)
        half_life_s = float(info.RadionuclideHalfLife)
        start = str(info.RadiopharmaceuticalStartTime)
        ref_time = str(getattr(ds, "SeriesTime", "") or getattr(ds, "AcquisitionTime", ""))

        def secs(t: str) -> float:
            t = t.split(".")[0].ljust(6, "0")
            return int(t[0:2]) * 3600 + int(t[2:4]) * 60 + int(t[4:6])

        if units != "BQML" or weight_kg <= 0 or dose_bq <= 0 or half_life_s <= 0 or not ref_time:
            raise ValueError
        decay_s = (secs(ref_time) - secs(start)) % 86400
        decayed = dose_bq * 2.0 ** (-decay_s / half_life_s)
        return weight_kg * 1000.0 / decayed, "SUV"
    except Exception:
        warnings.append(
            "PET series: SUV could not be computed (needs Units BQML, PatientWeight, radiopharmaceutical dose, "
            "half-life and start time); values kept as stored (quantity 'PET')"
        )
        return 1.0, "PET"


def read_image_series(files: list[Path], warnings: list[str] | None = None) -> Volume:
    """One CT, MR or PET series (files in any order) as a :class:`Volume` (HU / 'MR' / 'SUV' or 'PET').

    ``volume.meta`` carries ``modality``, ``series_instance_uid``, ``study_instance_uid``,
    ``frame_of_reference_uid``, ``sop_instance_uids`` (in slice order), ``sop_class_uid``,
    ``patient_id``, ``patient_name``, ``series_description``, ``warnings``.
    """
    warnings = warnings if warnings is not None else []
    own_warnings: list[str] = []
    if not files:
        raise InputError("an image series needs at least one file", kind="dicom")
    # headers first: every size is checked against the voxel budget before any pixel is read
    paths = [Path(f) for f in files]
    datasets = [read_dicom(f, stop_before_pixels=True) for f in paths]
    first = datasets[0]
    series_uid = str(getattr(first, "SeriesInstanceUID", ""))
    label = f"{getattr(first, 'Modality', '?')} series {series_uid[-12:] or '?'}"
    multi = [ds for ds in datasets if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1]
    if multi:
        raise InputError(
            f"{label}: multi-frame (enhanced) image objects are not supported; "
            "export the series as single-frame images",
            kind="dicom",
        )
    iops = np.array(
        [
            _float_list(getattr(ds, "ImageOrientationPatient", []), 6, "ImageOrientationPatient", Path(f))
            for ds, f in zip(datasets, files)
        ]
    )
    if np.abs(iops - iops[0]).max() > _ORIENT_TOL:
        n_orient = len(np.unique(np.round(iops, 3), axis=0))
        raise InputError(
            f"{label} mixes {n_orient} slice orientations (ImageOrientationPatient differs between files); "
            "split the series or re-export it with one orientation",
            kind="dicom",
        )
    row = iops[0, :3] / np.linalg.norm(iops[0, :3])
    col = iops[0, 3:] / np.linalg.norm(iops[0, 3:])
    if abs(row @ col) > 1e-3:
        raise InputError(f"{label}: ImageOrientationPatient row and column vectors are not orthogonal", kind="dicom")
    col = col - (col @ row) * row
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    ipps = np.array(
        [
            _float_list(getattr(ds, "ImagePositionPatient", []), 3, "ImagePositionPatient", Path(f))
            for ds, f in zip(datasets, files)
        ]
    )
    d = ipps @ normal
    order = np.argsort(d, kind="stable")
    datasets = [datasets[i] for i in order]
    paths = [paths[i] for i in order]
    ipps = ipps[order]
    d = d[order]
    rows = {int(getattr(ds, "Rows", 0) or 0) for ds in datasets}
    cols = {int(getattr(ds, "Columns", 0) or 0) for ds in datasets}
    if len(rows) > 1 or len(cols) > 1:
        raise InputError(
            f"{label}: slices have different sizes (rows {sorted(rows)}, columns {sorted(cols)})", kind="dicom"
        )
    check_image_size(label, next(iter(rows)), next(iter(cols)), len(datasets), float(d[-1] - d[0]))
    ps = {
        tuple(np.round(_float_list(getattr(ds, "PixelSpacing", []), 2, "PixelSpacing", Path(files[0])), 6))
        for ds in datasets
    }
    if len(ps) > 1:
        raise InputError(f"{label}: slices have different PixelSpacing {sorted(ps)}", kind="dicom")
    pixel_spacing = np.array(next(iter(ps)))
    nk = len(datasets)
    if nk > 1:
        diffs = np.diff(d)
        if np.any(diffs < 1e-3):
            dup = d[1:][diffs < 1e-3][0]
            raise InputError(
                f"{label} has two slices at the same position ({dup:.2f} mm along the slice normal); "
                "it may hold several acquisitions: split them into separate series",
                kind="dicom",
            )
        steps = np.diff(ipps, axis=0)
        inplane = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
        tilt_deg = np.degrees(np.arctan2(inplane, diffs))
        if tilt_deg.max() > _TILT_TOL_DEG:
            raise InputError(
                f"{label} is acquired with a gantry tilt of {tilt_deg.max():.2f} deg "
                "(slice positions shift within the slice plane); rayrt needs an untilted series: "
                "reconstruct without tilt or resample it to an orthogonal grid first",
                kind="dicom",
            )
        h0 = float(diffs.min())
        # a non-uniform series is resampled onto its finest spacing: that size must fit the budget too
        check_image_size(label, next(iter(rows)), next(iter(cols)), int((d[-1] - d[0]) / h0) + 1, float(d[-1] - d[0]))
        tol = max(0.01, 0.01 * h0)
        ratios = diffs / h0
        if np.abs(diffs - h0).max() > tol:
            near_int = np.abs(ratios - np.round(ratios)) * h0 <= tol
            if np.all(near_int):
                gaps = np.nonzero(np.round(ratios) >= 2)[0]
                g = gaps[0]
                missing = int(np.sum(np.round(ratios[gaps]) - 1))
                raise InputError(
                    f"{label} is missing {missing} slice(s): "
                    f"a gap of {diffs[g]:.2f} mm after the slice at {d[g]:.2f} mm "
                    f"(regular spacing {h0:.2f} mm); add the missing files or re-export the complete series",
                    kind="dicom",
                )
            own_warnings.append(
                f"{label} has non-uniform slice spacing ({diffs.min():.2f}-{diffs.max():.2f} mm); "
                f"resampled linearly onto a uniform {h0:.2f} mm spacing"
            )
        spacing_k = h0
    else:
        st = getattr(datasets[0], "SpacingBetweenSlices", None) or getattr(datasets[0], "SliceThickness", None)
        spacing_k = float(st) if st not in (None, "") and float(st) > 0 else 1.0
    modality = str(getattr(first, "Modality", "")).upper()
    scale, quantity = 1.0, {"CT": "HU", "MR": "MR", "PT": "PET"}.get(modality, modality or "values")
    if modality == "PT":
        scale, quantity = _pet_scale(datasets[0], own_warnings)
    planes = np.empty((nk, int(datasets[0].Rows), int(datasets[0].Columns)), dtype=np.float32)
    for k, path in enumerate(paths):
        ds = read_dicom(path)  # one slice's pixel data in memory at a time
        try:
            px = ds.pixel_array
        except Exception as exc:
            raise InputError(
                f"{label}: cannot decode the pixel data of slice {k + 1} ({type(exc).__name__}: {exc})", kind="dicom"
            ) from None
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        planes[k] = (px.astype(np.float64) * slope + intercept) * scale
    if nk > 1 and own_warnings and "non-uniform" in own_warnings[-1]:
        n_new = int(np.floor((d[-1] - d[0]) / spacing_k + 1e-6)) + 1
        d_new = d[0] + spacing_k * np.arange(n_new)
        idx = np.clip(np.searchsorted(d, d_new, side="right") - 1, 0, nk - 2)
        w = ((d_new - d[idx]) / (d[idx + 1] - d[idx])).astype(np.float32)[:, None, None]
        planes = planes[idx] * (1 - w) + planes[idx + 1] * w
        sop_uids = []
    else:
        sop_uids = [str(ds.SOPInstanceUID) for ds in datasets]
    grid = Grid(
        shape=planes.shape,
        spacing_mm=(float(pixel_spacing[1]), float(pixel_spacing[0]), float(spacing_k)),
        origin_mm=as_vec3(ipps[0]),
        direction=as_mat3(np.stack([row, col, normal], axis=1)),
    )
    warnings.extend(own_warnings)
    meta = dict(
        modality=modality,
        series_instance_uid=series_uid,
        study_instance_uid=str(getattr(first, "StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "") or "") or None,
        sop_instance_uids=sop_uids,
        sop_class_uid=str(getattr(first, "SOPClassUID", "")),
        patient_id=str(getattr(first, "PatientID", "") or ""),
        patient_name=str(getattr(first, "PatientName", "") or ""),
        series_description=str(getattr(first, "SeriesDescription", "") or ""),
        warnings=own_warnings,
        num_files=nk,
    )
    if quantity == "HU":
        return Volume(planes, grid, "HU", meta)
    return Volume(planes, grid, quantity, meta)


# --------------------------------------------------------------------------------- RTSTRUCT
@dataclass
class RoiContours:
    """One ROI of an RT Structure Set: its polygons (LPS mm) and description."""

    number: int
    name: str
    kind: StructureKind
    colour: tuple[int, int, int]
    frame_of_reference_uid: str | None
    contours: list[np.ndarray] = field(default_factory=list)
    interpreted_type: str = ""

    def structure(self, source: str = "rtstruct") -> Structure:
        return Structure(name=self.name, kind=self.kind, colour=self.colour, roi_number=self.number, source=source)


@dataclass
class RTStructData:
    path: Path
    frame_of_reference_uid: str | None
    referenced_series_uids: list[str]
    rois: list[RoiContours]
    study_instance_uid: str = ""
    label: str = ""
    warnings: list[str] = field(default_factory=list)


def _contour_data(item) -> np.ndarray | None:
    """ContourData as floats; parses the raw bytes directly when pydicom has not converted them yet (fast)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(0x3006, 0x0050)
    if tag not in item:
        return None
    elem = item.get_item(tag)
    if isinstance(elem, RawDataElement) and elem.value is not None:
        try:
            parts = bytes(elem.value).replace(b"\x00", b"").strip().split(b"\\")
            return np.array([p for p in parts if p.strip()], dtype=np.float64)
        except ValueError:
            pass
    data = item.ContourData
    if data is None:
        return None
    if isinstance(data, (str, bytes)) or not hasattr(data, "__len__"):
        data = [data]
    return np.asarray([float(v) for v in data], dtype=np.float64)


@damaged_input("the RTSTRUCT", "rtstruct")
def read_rtstruct(path: str | Path) -> RTStructData:
    """Parse an RT Structure Set into polygons per ROI (no image needed)."""
    path = Path(path)
    ds = read_dicom(path)
    if str(getattr(ds, "Modality", "")).upper() != "RTSTRUCT":
        raise InputError(
            f"{path.name} is not an RTSTRUCT (Modality {getattr(ds, 'Modality', '?')})",
            kind="rtstruct",
            field=str(path),
        )
    warnings: list[str] = []
    ref_series: list[str] = []
    for fr in getattr(ds, "ReferencedFrameOfReferenceSequence", []) or []:
        for st in getattr(fr, "RTReferencedStudySequence", []) or []:
            for se in getattr(st, "RTReferencedSeriesSequence", []) or []:
                if getattr(se, "SeriesInstanceUID", None):
                    ref_series.append(str(se.SeriesInstanceUID))
    set_for = _frame_of_reference(ds)
    kinds: dict[int, str] = {}
    for ob in getattr(ds, "RTROIObservationsSequence", []) or []:
        if hasattr(ob, "ReferencedROINumber"):
            kinds[int(ob.ReferencedROINumber)] = str(getattr(ob, "RTROIInterpretedType", "") or "")
    contours_by_roi: dict[int, tuple[tuple[int, int, int], list[np.ndarray]]] = {}
    for rc in getattr(ds, "ROIContourSequence", []) or []:
        num = int(rc.ReferencedROINumber)
        colour = tuple(int(c) for c in getattr(rc, "ROIDisplayColor", [255, 0, 0]) or [255, 0, 0])
        if len(colour) != 3:
            colour = (255, 0, 0)
        polys: list[np.ndarray] = []
        skipped = 0
        for c in getattr(rc, "ContourSequence", []) or []:
            gtype = str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR")).upper()
            pts = _contour_data(c)
            if pts is None:
                continue
            if pts.size % 3 or pts.size < 9 or gtype != "CLOSED_PLANAR":
                skipped += 1
                continue
            polys.append(pts.reshape(-1, 3))
        contours_by_roi[num] = (colour, polys)
        if skipped:
            warnings.append(f"ROI {num}: skipped {skipped} contour(s) that are not CLOSED_PLANAR polygons")
    rois: list[RoiContours] = []
    for roi in getattr(ds, "StructureSetROISequence", []) or []:
        num = int(roi.ROINumber)
        name = str(getattr(roi, "ROIName", "") or f"ROI_{num}").strip() or f"ROI_{num}"
        colour, polys = contours_by_roi.get(num, ((255, 0, 0), []))
        itype = kinds.get(num, "")
        rois.append(
            RoiContours(
                number=num,
                name=name,
                kind=StructureKind.from_dicom(itype, name),
                colour=colour,
                frame_of_reference_uid=str(getattr(roi, "ReferencedFrameOfReferenceUID", "") or "") or set_for,
                contours=polys,
                interpreted_type=itype,
            )
        )
    return RTStructData(
        path=path,
        frame_of_reference_uid=set_for,
        referenced_series_uids=ref_series,
        rois=rois,
        study_instance_uid=str(getattr(ds, "StudyInstanceUID", "") or ""),
        label=str(getattr(ds, "StructureSetLabel", "") or ""),
        warnings=warnings,
    )


def check_frame_of_reference(what: str, uid: str | None, expected: str | None, expected_what: str) -> None:
    """Refuse objects on another frame of reference than the image they are used with."""
    if uid and expected and uid != expected:
        raise InputError(
            f"{what} is on frame of reference {uid}, but {expected_what} is on {expected}: they do not share patient "
            "coordinates; use the matching image series (or register and re-export the data on one frame of reference)",
            kind="frame_of_reference",
            status=422,
        )


# --------------------------------------------------------------------------------- RTDOSE
@damaged_input("the RTDOSE", "rtdose")
def read_rtdose_bytes(data: bytes) -> Volume:
    """An RT Dose file held in memory (e.g. read from the service's store) as :func:`read_rtdose`
    reads a file: the same checks, the dose in Gy."""
    with tempfile.TemporaryDirectory(prefix="rayrt-rtdose-") as d:
        path = Path(d) / "RD.dcm"
        path.write_bytes(data)
        return read_rtdose(path)


def read_rtdose(path: str | Path, warnings: list[str] | None = None) -> Volume:
    """An RT Dose file as a Volume of dose in Gy (quantity ``dose_gy``)."""
    path = Path(path)
    warnings = warnings if warnings is not None else []
    ds = read_dicom(path)
    if str(getattr(ds, "Modality", "")).upper() != "RTDOSE":
        raise InputError(
            f"{path.name} is not an RTDOSE (Modality {getattr(ds, 'Modality', '?')})", kind="rtdose", field=str(path)
        )
    if "PixelData" not in ds:
        raise InputError(
            f"{path.name}: RTDOSE without a dose grid (no PixelData); only grid doses are supported", kind="rtdose"
        )
    offsets = getattr(ds, "GridFrameOffsetVector", None) or [0.0]
    check_image_size(
        f"RTDOSE {path.name}",
        int(getattr(ds, "Rows", 0) or 0),
        int(getattr(ds, "Columns", 0) or 0),
        int(getattr(ds, "NumberOfFrames", 1) or 1),
        float(max(offsets) - min(offsets)) if len(offsets) > 1 else 0.0,
    )
    try:
        px = ds.pixel_array
    except Exception as exc:
        raise InputError(
            f"{path.name}: cannot decode the dose pixel data ({type(exc).__name__}: {exc})", kind="rtdose"
        ) from None
    nf = int(getattr(ds, "NumberOfFrames", 1) or 1)
    arr = np.asarray(px, dtype=np.float64).reshape(nf, int(ds.Rows), int(ds.Columns))
    scaling = float(getattr(ds, "DoseGridScaling", 1.0) or 1.0)
    arr = arr * scaling
    units = str(getattr(ds, "DoseUnits", "GY")).upper()
    if units != "GY":
        warnings.append(f"{path.name}: DoseUnits {units} (not GY); values kept as stored")
    iop = _float_list(getattr(ds, "ImageOrientationPatient", []), 6, "ImageOrientationPatient", path)
    ipp = _float_list(getattr(ds, "ImagePositionPatient", []), 3, "ImagePositionPatient", path)
    ps = _float_list(getattr(ds, "PixelSpacing", []), 2, "PixelSpacing", path)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    if nf > 1:
        gfov = getattr(ds, "GridFrameOffsetVector", None)
        if gfov is None:
            raise InputError(f"{path.name}: multi-frame RTDOSE without GridFrameOffsetVector", kind="rtdose")
        offsets = np.asarray([float(v) for v in gfov], dtype=float)
        if offsets.size != nf:
            raise InputError(
                f"{path.name}: GridFrameOffsetVector has {offsets.size} values for {nf} frames", kind="rtdose"
            )
        if abs(offsets[0]) > 1e-6 and abs(offsets[0] - ipp @ normal) < 1e-3:
            offsets = offsets - offsets[0]  # absolute positions (older convention)
        steps = np.diff(offsets)
        if np.any(steps == 0):
            raise InputError(f"{path.name}: GridFrameOffsetVector repeats a frame position", kind="rtdose")
        if steps[0] < 0:
            if np.any(steps > 0):
                raise InputError(f"{path.name}: GridFrameOffsetVector is not monotonic", kind="rtdose")
            arr = arr[::-1]
            ipp = ipp + normal * offsets[-1]
            offsets = offsets[::-1] - offsets[-1]
            steps = np.diff(offsets)
        if np.abs(steps - steps[0]).max() > max(0.01, 0.01 * abs(steps[0])):
            raise InputError(
                f"{path.name}: dose frames are not evenly spaced ({steps.min():.2f}-{steps.max():.2f} mm)",
                kind="rtdose",
            )
        ipp = ipp + normal * offsets[0]
        dz = float(steps.mean())
    else:
        st = getattr(ds, "SliceThickness", None)
        dz = float(st) if st not in (None, "") and float(st) > 0 else 1.0
    grid = Grid(
        shape=arr.shape,
        spacing_mm=(float(ps[1]), float(ps[0]), dz),
        origin_mm=as_vec3(ipp),
        direction=as_mat3(np.stack([row, col, normal], axis=1)),
    )
    plan_uid = None
    seq = getattr(ds, "ReferencedRTPlanSequence", None)
    if seq:
        plan_uid = str(getattr(seq[0], "ReferencedSOPInstanceUID", "") or "") or None
    meta = dict(
        modality="RTDOSE",
        path=str(path),
        sop_instance_uid=str(ds.SOPInstanceUID),
        frame_of_reference_uid=str(getattr(ds, "FrameOfReferenceUID", "") or "") or None,
        study_instance_uid=str(getattr(ds, "StudyInstanceUID", "") or ""),
        dose_summation_type=str(getattr(ds, "DoseSummationType", "") or ""),
        dose_type=str(getattr(ds, "DoseType", "") or ""),
        dose_units=units,
        referenced_plan_uid=plan_uid,
        dose_grid_scaling=scaling,
    )
    return Volume(arr.astype(np.float32), grid, "dose_gy", meta)
