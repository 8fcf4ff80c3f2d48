"""What a DICOM folder or zip holds: a typed summary for ``rayrt inspect`` and the service."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from rayrt.domain.errors import InputError
from rayrt.imaging.archive import safe_extract_zip
from rayrt.imaging.dicom_io import IMAGE_MODALITIES, read_dicom, read_rtdose, read_rtstruct, scan_dicom
from rayrt.imaging.polygons import rasterize_polygons
from rayrt.imaging.study import load_study

__all__ = ["InspectReport", "SeriesSummary", "StructureSummary", "DoseSummary", "PlanSummary", "inspect_path"]


class SeriesSummary(BaseModel):
    series_instance_uid: str
    modality: str
    description: str = ""
    dims_ijk: tuple[int, int, int] = Field(description="columns, rows, slices")
    spacing_mm: tuple[float, float, float] = Field(description="(i, j, k) voxel size in mm")
    origin_mm: tuple[float, float, float]
    num_files: int
    quantity: str
    min_value: float
    max_value: float
    primary: bool = False
    warnings: list[str] = Field(default_factory=list)


class StructureSummary(BaseModel):
    name: str
    kind: str
    roi_number: int | None = None
    volume_cc: float | None = Field(
        default=None, description="voxel-centre volume on the grid named in InspectReport.structures_on"
    )
    num_voxels: int | None = None
    num_contours: int | None = None


class DoseSummary(BaseModel):
    file: str
    dims_ijk: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    max_gy: float
    summation_type: str = ""
    referenced_plan_uid: str | None = None


class PlanSummary(BaseModel):
    file: str
    label: str = ""
    num_beams: int = 0
    fractions: int | None = None
    machines: list[str] = Field(default_factory=list)
    sop_instance_uid: str = ""


def _plan_summary(path: Path) -> PlanSummary:
    ds = read_dicom(path, stop_before_pixels=True)
    beams = list(getattr(ds, "BeamSequence", []) or getattr(ds, "IonBeamSequence", []) or [])
    fg = getattr(ds, "FractionGroupSequence", None)
    fractions = (
        int(fg[0].NumberOfFractionsPlanned)
        if fg and getattr(fg[0], "NumberOfFractionsPlanned", None) is not None
        else None
    )
    machines = sorted({str(getattr(b, "TreatmentMachineName", "")) for b in beams} - {""})
    return PlanSummary(
        file=path.name,
        label=str(getattr(ds, "RTPlanLabel", "") or ""),
        num_beams=len(beams),
        fractions=fractions,
        machines=machines,
        sop_instance_uid=str(getattr(ds, "SOPInstanceUID", "")),
    )


class InspectReport(BaseModel):
    path: str
    patient_id: str = ""
    patient_name: str = ""
    study_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    series: list[SeriesSummary] = Field(default_factory=list)
    structures: list[StructureSummary] = Field(default_factory=list)
    structures_on: str = Field(default="primary image grid", description="grid the structure volumes were computed on")
    plans: list[PlanSummary] = Field(default_factory=list)
    doses: list[DoseSummary] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


def _dose_summary(dose, name: str) -> DoseSummary:
    g = dose.grid
    return DoseSummary(
        file=name,
        dims_ijk=g.size_ijk,
        spacing_mm=g.spacing_mm,
        max_gy=float(np.max(dose.array)) if dose.array.size else 0.0,
        summation_type=dose.meta.get("dose_summation_type", ""),
        referenced_plan_uid=dose.meta.get("referenced_plan_uid"),
    )


def inspect_path(path: str | Path) -> InspectReport:
    """Summarise a DICOM folder, .zip or file. Without an image series, structure volumes are computed on
    the dose grid."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file or folder: {path}", kind="dicom", status=404)
    tmp: Path | None = None
    try:
        folder = path
        if path.is_file() and path.suffix.lower() == ".zip":
            tmp = Path(tempfile.mkdtemp(prefix="rayrt_inspect_"))
            safe_extract_zip(path, tmp)
            folder = tmp
        files = [folder] if folder.is_file() else [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
        if not files:
            raise InputError(f"{path} holds no files", kind="dicom")
        warnings: list[str] = []
        headers = scan_dicom(files, warnings)
        report = InspectReport(path=str(path))
        if any(h.modality in IMAGE_MODALITIES for h in headers):
            study = load_study(folder)
            report.patient_id, report.patient_name = study.patient_id, study.patient_name
            report.study_instance_uid, report.frame_of_reference_uid = (
                study.study_instance_uid,
                study.frame_of_reference_uid,
            )
            for uid, vol in study.images.items():
                g = vol.grid
                report.series.append(
                    SeriesSummary(
                        series_instance_uid=uid,
                        modality=vol.meta.get("modality", ""),
                        description=vol.meta.get("series_description", ""),
                        dims_ijk=g.size_ijk,
                        spacing_mm=g.spacing_mm,
                        origin_mm=g.origin_mm,
                        num_files=int(vol.meta.get("num_files", 0)),
                        quantity=vol.quantity,
                        min_value=float(vol.array.min()),
                        max_value=float(vol.array.max()),
                        primary=uid == study.primary_uid,
                        warnings=list(vol.meta.get("warnings", [])),
                    )
                )
            n_contours: dict[str, int] = {}
            for h in headers:
                if h.modality == "RTSTRUCT":
                    for roi in read_rtstruct(h.path).rois:
                        n_contours.setdefault(roi.name, len(roi.contours))
            for sm in study.structures:
                st = sm.structure
                report.structures.append(
                    StructureSummary(
                        name=st.name,
                        kind=st.kind.value,
                        roi_number=st.roi_number,
                        volume_cc=st.volume_cc,
                        num_voxels=st.num_voxels,
                        num_contours=n_contours.get(st.name),
                    )
                )
            report.plans = [_plan_summary(p) for p in study.plan_files]
            report.doses = [_dose_summary(d, Path(d.meta.get("path", "dose")).name) for d in study.doses]
            report.warnings = study.warnings
            return report
        # no image: list what is there; structure volumes on the first dose grid if any
        h0 = headers[0]
        report.patient_id, report.patient_name = h0.patient_id, h0.patient_name
        report.study_instance_uid, report.frame_of_reference_uid = (
            h0.study_instance_uid or None,
            h0.frame_of_reference_uid,
        )
        doses = []
        for h in headers:
            if h.modality == "RTDOSE":
                d = read_rtdose(h.path, warnings)
                doses.append(d)
                report.doses.append(_dose_summary(d, h.path.name))
            elif h.modality in ("RTPLAN", "RTIONPLAN"):
                report.plans.append(_plan_summary(h.path))
        report.structures_on = "first dose grid" if doses else "no grid (no image or dose)"
        for h in headers:
            if h.modality != "RTSTRUCT":
                continue
            rs = read_rtstruct(h.path)
            warnings.extend(rs.warnings)
            for roi in rs.rois:
                volume_cc: float | None = None
                nvox: int | None = None
                if doses:
                    m = rasterize_polygons(roi.contours, doses[0].grid)
                    nvox = int(m.sum())
                    volume_cc = nvox * doses[0].grid.voxel_volume_cc
                report.structures.append(
                    StructureSummary(
                        name=roi.name,
                        kind=roi.kind.value,
                        roi_number=roi.number,
                        volume_cc=volume_cc,
                        num_voxels=nvox,
                        num_contours=len(roi.contours),
                    )
                )
        report.warnings = warnings
        return report
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
