"""A patient study in memory: image series, structure masks on the primary image grid, doses.

:func:`load_study` reads a folder or a .zip (extracted safely into a temporary folder) holding
CT / MR / PET series, RT Structure Sets, RT Plans and RT Doses of one patient. The primary
image is the CT (the one the structure set references, else the CT with most slices), else the
first MR / PET series. Structures are rasterised onto the primary grid; an RTSTRUCT or RTDOSE on
another FrameOfReferenceUID than the primary image is refused.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rayrt.domain.errors import InputError
from rayrt.domain.patient import ImageSeriesInfo, Structure, StructureKind
from rayrt.imaging.archive import safe_extract_zip
from rayrt.imaging.dicom_io import (
    IMAGE_MODALITIES,
    check_frame_of_reference,
    damaged_input,
    read_image_series,
    read_rtdose,
    read_rtstruct,
    scan_dicom,
)
from rayrt.imaging.polygons import rasterize_polygons
from rayrt.imaging.volume import Volume

__all__ = ["StructureMask", "Study", "load_study", "structure_masks_from_rtstruct"]


@dataclass
class StructureMask:
    """A structure and its voxel mask (bool) on the primary image grid."""

    structure: Structure
    mask: np.ndarray

    @property
    def name(self) -> str:
        return self.structure.name


@dataclass(init=False)
class Study:
    """Everything loaded for one patient (see module docstring).

    ``primary_uid`` names the primary image in ``images``. For convenience the constructor
    also accepts ``primary=<Volume>`` instead (it is then found in, or added to, ``images``).
    """

    patient_id: str
    patient_name: str
    study_instance_uid: str | None
    frame_of_reference_uid: str | None
    series: list[ImageSeriesInfo]
    images: dict[str, Volume]
    primary_uid: str
    structures: list[StructureMask]
    doses: list[Volume]
    plan_files: list[Path]
    warnings: list[str]
    source: Path | None  # folder the files were read from (the extraction folder for a zip)

    def __init__(
        self,
        patient_id: str,
        patient_name: str,
        study_instance_uid: str | None = None,
        frame_of_reference_uid: str | None = None,
        series: list[ImageSeriesInfo] | None = None,
        images: dict[str, Volume] | None = None,
        primary_uid: str = "",
        structures: list[StructureMask] | None = None,
        doses: list[Volume] | None = None,
        plan_files: list[Path] | None = None,
        warnings: list[str] | None = None,
        source: Path | None = None,
        *,
        primary: Volume | None = None,
    ) -> None:
        self.patient_id = patient_id
        self.patient_name = patient_name
        self.study_instance_uid = study_instance_uid
        self.frame_of_reference_uid = frame_of_reference_uid
        self.series = list(series or [])
        self.images = dict(images or {})
        self.primary_uid = primary_uid
        self.structures = list(structures or [])
        self.doses = list(doses or [])
        self.plan_files = list(plan_files or [])
        self.warnings = list(warnings or [])
        self.source = source
        if primary is not None and not self.primary_uid:
            found = [uid for uid, v in self.images.items() if v is primary]
            if found:
                self.primary_uid = found[0]
            else:
                uid = str(primary.meta.get("series_instance_uid") or "primary")
                self.images[uid] = primary
                self.primary_uid = uid
        if not self.primary_uid and self.images:
            self.primary_uid = next(iter(self.images))

    @property
    def primary(self) -> Volume:
        """The primary image (CT in HU if there is one)."""
        if self.primary_uid not in self.images:
            raise InputError("the study has no image series; add the CT (or MR / PET) series", kind="dicom", status=422)
        return self.images[self.primary_uid]

    @property
    def structure_names(self) -> list[str]:
        return [s.structure.name for s in self.structures]

    def structure(self, name: str) -> StructureMask:
        for s in self.structures:
            if s.structure.name == name:
                return s
        raise InputError(
            f"no structure named '{name}'; the study has: {', '.join(self.structure_names) or 'none'}",
            kind="structure",
            field="structure",
            status=404,
        )

    def mask(self, name: str) -> np.ndarray:
        """The bool mask of structure ``name`` on the primary grid (InputError if unknown)."""
        return self.structure(name).mask

    @property
    def external_name(self) -> str | None:
        """The body outline: the structure of kind external, else one named BODY/EXTERNAL/SKIN/OUTLINE."""
        for s in self.structures:
            if s.structure.kind is StructureKind.external:
                return s.structure.name
        for s in self.structures:
            if s.structure.name.upper() in ("BODY", "EXTERNAL", "SKIN", "OUTLINE"):
                return s.structure.name
        return None


def _series_info(vol: Volume) -> ImageSeriesInfo:
    m = vol.meta
    return ImageSeriesInfo(
        series_instance_uid=m.get("series_instance_uid", ""),
        study_instance_uid=m.get("study_instance_uid") or None,
        frame_of_reference_uid=m.get("frame_of_reference_uid") or None,
        modality=m.get("modality", "CT"),
        description=m.get("series_description", ""),
        shape=vol.grid.shape,
        spacing_mm=vol.grid.spacing_mm,
        origin_mm=vol.grid.origin_mm,
        num_files=int(m.get("num_files", vol.grid.shape[0])),
        warnings=list(m.get("warnings", [])),
    )


def structure_masks_from_rtstruct(rtstruct, grid, *, plane_spacing_mm: float | None = None) -> list[StructureMask]:
    """Rasterise every ROI of a parsed RT Structure Set (:class:`~rayrt.imaging.dicom_io.RTStructData`)
    onto ``grid``."""
    out: list[StructureMask] = []
    for roi in rtstruct.rois:
        mask = rasterize_polygons(roi.contours, grid, plane_spacing_mm=plane_spacing_mm)
        st = roi.structure()
        n = int(mask.sum())
        st.num_voxels = n
        st.volume_cc = n * grid.voxel_volume_cc
        out.append(StructureMask(structure=st, mask=mask))
    return out


def _list_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]


def load_study(path: str | Path) -> Study:
    """Load a folder, a .zip or a single DICOM file into a :class:`Study` (all modalities).

    A .zip is extracted safely into a temporary folder, which is removed after loading unless
    the study holds RT plans (``plan_files`` then point into it; ``source`` names it).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file or folder: {path}", kind="dicom", status=404)
    source = path
    extracted: Path | None = None
    if path.is_file() and path.suffix.lower() == ".zip":
        source = extracted = Path(tempfile.mkdtemp(prefix="rayrt_study_"))
        try:
            files = safe_extract_zip(path, source)
        except BaseException:
            shutil.rmtree(extracted, ignore_errors=True)
            raise
    elif path.is_file():
        files = [path]
        source = path.parent
    else:
        files = _list_files(path)
    try:
        study = _load(path, files, source)
    except BaseException:
        if extracted is not None:
            shutil.rmtree(extracted, ignore_errors=True)
        raise
    if extracted is not None and not study.plan_files:
        # the volumes are in memory: keep an extracted archive only while plan files point into it
        shutil.rmtree(extracted, ignore_errors=True)
        study.source = None
    return study


@damaged_input("the study")
def _load(path: Path, files: list[Path], source: Path) -> Study:
    if not files:
        raise InputError(f"{path} holds no files; give a folder or .zip of DICOM files", kind="dicom")
    warnings: list[str] = []
    headers = scan_dicom(files, warnings)

    patients = {(h.patient_id or "") for h in headers if h.patient_id}
    if len(patients) > 1:
        raise InputError(
            f"{path} holds files of {len(patients)} patients (PatientID {', '.join(sorted(patients))}); "
            "give one patient's files at a time",
            kind="dicom",
        )

    by_series: dict[str, list] = defaultdict(list)
    rtstructs, rtdoses, plans = [], [], []
    for h in headers:
        if h.modality in IMAGE_MODALITIES:
            by_series[h.series_instance_uid].append(h)
        elif h.modality == "RTSTRUCT":
            rtstructs.append(h)
        elif h.modality == "RTDOSE":
            rtdoses.append(h)
        elif h.modality in ("RTPLAN", "RTIONPLAN"):
            plans.append(h.path)
        else:
            warnings.append(f"ignored {h.path.name} (modality {h.modality})")

    images: dict[str, Volume] = {}
    for uid, hs in by_series.items():
        vol = read_image_series([h.path for h in hs], warnings)
        images[uid] = vol

    parsed_structs = [read_rtstruct(h.path) for h in rtstructs]
    primary_uid = ""
    referenced = {u for rs in parsed_structs for u in rs.referenced_series_uids}
    cts = [u for u, v in images.items() if v.meta.get("modality") == "CT"]
    ref_cts = [u for u in cts if u in referenced]
    if ref_cts:
        primary_uid = ref_cts[0]
    elif cts:
        primary_uid = max(cts, key=lambda u: images[u].grid.shape[0])
    elif images:
        primary_uid = next(iter(images))

    if not images and parsed_structs:
        raise InputError(
            f"{path} holds an RTSTRUCT but no image series to put its structures on; add the CT series "
            "(or use `rayrt dvh --rtstruct --rtdose` for a dose-only evaluation)",
            kind="dicom",
        )

    primary = images.get(primary_uid)
    p_for = primary.meta.get("frame_of_reference_uid") if primary is not None else None
    for uid, vol in images.items():
        if (
            uid != primary_uid
            and p_for
            and vol.meta.get("frame_of_reference_uid")
            and vol.meta["frame_of_reference_uid"] != p_for
        ):
            warnings.append(
                f"{vol.meta.get('modality')} series {uid[-12:]} is on another frame of reference "
                "than the primary image (not registered; not used for planning)"
            )

    structures: list[StructureMask] = []
    names: set[str] = set()
    for rs in parsed_structs:
        warnings.extend(rs.warnings)
        check_frame_of_reference(
            f"structure set {rs.path.name}", rs.frame_of_reference_uid, p_for, "the primary image series"
        )
        for roi in rs.rois:
            check_frame_of_reference(
                f"ROI '{roi.name}' in {rs.path.name}", roi.frame_of_reference_uid, p_for, "the primary image series"
            )
        assert primary is not None
        for sm in structure_masks_from_rtstruct(rs, primary.grid, plane_spacing_mm=float(primary.grid.spacing[2])):
            name = sm.structure.name
            if name in names:
                new = f"{name}_{len([n for n in names if n.startswith(name)]) + 1}"
                warnings.append(f"structure name '{name}' appears twice; the second one is called '{new}'")
                sm.structure = sm.structure.model_copy(update={"name": new})
            names.add(sm.structure.name)
            if not sm.mask.any():
                warnings.append(f"structure '{sm.structure.name}' has no voxel on the image grid")
            structures.append(sm)

    doses: list[Volume] = []
    for h in rtdoses:
        dose = read_rtdose(h.path, warnings)
        check_frame_of_reference(
            f"dose {h.path.name}", dose.meta.get("frame_of_reference_uid"), p_for, "the primary image series"
        )
        doses.append(dose)

    first = primary.meta if primary is not None else {}
    hdr0 = headers[0]
    series = [_series_info(v) for v in images.values()]
    return Study(
        patient_id=first.get("patient_id") or hdr0.patient_id,
        patient_name=first.get("patient_name") or hdr0.patient_name,
        study_instance_uid=(first.get("study_instance_uid") or hdr0.study_instance_uid) or None,
        frame_of_reference_uid=p_for or (hdr0.frame_of_reference_uid if not images else None),
        series=series,
        images=images,
        primary_uid=primary_uid,
        structures=structures,
        doses=doses,
        plan_files=[Path(p) for p in plans],
        warnings=warnings,
        source=source,
    )
