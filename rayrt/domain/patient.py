"""Patient, image series metadata and structures."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum

from pydantic import BaseModel, Field


class StructureKind(str, Enum):
    """What a structure is for planning. Maps to DICOM RTROIInterpretedType."""

    target = "target"  # PTV, CTV, GTV
    organ = "organ"  # organ at risk / avoidance
    external = "external"  # body outline
    support = "support"  # couch, immobilisation
    other = "other"  # rings, helper structures, cavities

    @classmethod
    def from_dicom(cls, interpreted_type: str | None, name: str = "") -> "StructureKind":
        t = (interpreted_type or "").upper()
        if t in {"PTV", "CTV", "GTV", "TREATED_VOLUME", "IRRAD_VOLUME"}:
            return cls.target
        if t in {"ORGAN", "AVOIDANCE", "OAR"}:
            return cls.organ
        if t == "EXTERNAL":
            return cls.external
        if t in {"SUPPORT", "FIXATION", "BOLUS"}:
            return cls.support
        upper = name.upper()
        if upper.startswith(("PTV", "CTV", "GTV")) or "TARGET" in upper:
            return cls.target
        if upper in {"BODY", "EXTERNAL", "SKIN"}:
            return cls.external
        return cls.organ if t == "" else cls.other

    def to_dicom(self, name: str = "") -> str:
        if self is StructureKind.target:
            upper = name.upper()
            return "CTV" if upper.startswith("CTV") else "GTV" if upper.startswith("GTV") else "PTV"
        return {
            StructureKind.organ: "ORGAN",
            StructureKind.external: "EXTERNAL",
            StructureKind.support: "SUPPORT",
            StructureKind.other: "CONTROL",
        }[self]


class Structure(BaseModel):
    """A delineated region of interest; its voxel mask lives in the store beside it."""

    name: str = Field(min_length=1, description="structure name, e.g. 'PTV' or TG-263 'Lung_L'")
    kind: StructureKind = StructureKind.organ
    colour: tuple[int, int, int] = Field(default=(255, 0, 0), description="display colour, RGB 0-255")
    roi_number: int | None = None
    volume_cc: float | None = Field(default=None, ge=0, description="mask volume in cm³ on its grid")
    num_voxels: int | None = Field(default=None, ge=0)
    source: str = Field(default="rtstruct", description="how it was made: rtstruct, auto, grow, margin, manual ...")


class ImageSeriesInfo(BaseModel):
    """Metadata of one imported image series (CT, MR or PET)."""

    series_instance_uid: str
    study_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    modality: str = Field(description="CT, MR or PT")
    description: str = ""
    shape: tuple[int, int, int] = Field(description="(slices, rows, columns)")
    spacing_mm: tuple[float, float, float] = Field(description="(column, row, slice) spacing in mm")
    origin_mm: tuple[float, float, float]
    num_files: int
    warnings: list[str] = Field(default_factory=list)


class Patient(BaseModel):
    """A patient known to the service."""

    id: str = Field(description="rayrt patient id (store key)")
    patient_id: str = Field(default="", description="DICOM PatientID")
    patient_name: str = Field(default="", description="DICOM PatientName")
    frame_of_reference_uid: str | None = None
    series: list[ImageSeriesInfo] = Field(default_factory=list)
    structures: list[Structure] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    def structure(self, name: str) -> Structure:
        for s in self.structures:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def structure_names(self) -> list[str]:
        return [s.name for s in self.structures]
