"""Settings of the delineation tools: thresholds (HU, SUV), cleanup sizes (mm, cc) and names.

Everything here is *data*: the defaults in code are the CT defaults documented in
``configs/contour.yaml``; that file (or one named by ``RAYRT_CONTOUR_CONFIG``) overrides them.
The code runs with no file at all.

Hounsfield units (HU): air -1000, lung about -850..-500, fat about -100, soft tissue 0..+80,
cancellous bone +200..+400, cortical bone above +700. A body threshold of about -350 HU separates
the patient from air and from most foam mattresses; lungs are the large air-like regions inside
the body (below about -400 HU); bone is above about +200 HU.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from rayrt.domain.errors import InputError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BodySettings(_Section):
    """External (body outline) on CT: threshold, couch/immobilisation removal, hole filling."""

    name: str = "External"
    threshold_hu: float = Field(default=-350.0, description="voxels above this HU are candidate body")
    opening_radius_mm: float = Field(
        default=6.0,
        ge=0,
        description="in-plane opening radius (mm) that cuts thin bridges to the couch and immobilisation",
    )
    work_spacing_mm: float = Field(
        default=2.0,
        gt=0,
        description=(
            "in-plane spacing (mm) of the coarse grid used to find the body; edges are refined at full resolution"
        ),
    )
    fill_holes_per_slice: bool = True
    min_volume_cc: float = Field(default=50.0, ge=0, description="refuse a body smaller than this (cc)")


class LungSettings(_Section):
    name_left: str = "Lung_L"
    name_right: str = "Lung_R"
    threshold_hu: float = Field(default=-400.0, description="lung is inside the body and below this HU")
    min_volume_cc: float = Field(
        default=100.0, ge=0, description="an air region inside the body smaller than this is not a lung"
    )
    max_split_erosions: int = Field(
        default=8, ge=0, description="erosion steps (coarse voxels) tried to split joined lungs"
    )
    fill_holes_per_slice: bool = Field(default=True, description="include vessels and airways inside the lung outline")
    closing_radius_mm: float = Field(
        default=2.0, ge=0, description="in-plane closing (mm) that smooths the lung outline"
    )


class BoneSettings(_Section):
    name: str = "Bones"
    threshold_hu: float = Field(default=250.0, description="bone is inside the body and above this HU")
    min_component_cc: float = Field(
        default=0.5, ge=0, description="bone pieces smaller than this are dropped (calcifications, contrast, noise)"
    )
    fill_holes_per_slice: bool = Field(default=True, description="include marrow inside cortical shells")


class CavitySettings(_Section):
    name: str = "Cavity_Air"
    threshold_hu: float = Field(default=-400.0, description="air cavity: inside the body, not lung, below this HU")
    min_component_cc: float = Field(default=0.2, ge=0)


class NonCTBodySettings(_Section):
    """Body outline on MR or PET: Otsu threshold of the (smoothed) intensity histogram."""

    smoothing_sigma_mm: float = Field(
        default=2.0, ge=0, description="Gaussian smoothing before the Otsu threshold (mm)"
    )
    otsu_scale: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description=(
            "threshold = p1 + otsu_scale x (Otsu - p1), p1 the 1st percentile (background): "
            "MR bodies are dim at the edges"
        ),
    )
    opening_radius_mm: float = Field(default=4.0, ge=0)


class GrowSettings(_Section):
    connectivity: int = Field(
        default=1, ge=1, le=3, description="1: faces (6-neighbours), 2: +edges (18), 3: +corners (26)"
    )
    max_fraction_of_body: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="refuse a grown region larger than this fraction of External (or of the image)",
    )
    max_border_faces: int = Field(
        default=3, ge=1, le=6, description="refuse a region touching more than this many of the 6 image faces"
    )


class PetSettings(_Section):
    percent_of_max: float = Field(default=40.0, gt=0, lt=100, description="default threshold, % of local SUVmax")
    connected_to_max: bool = Field(default=True, description="keep only the part connected to the SUVmax voxel")


class ContourConfig(_Section):
    """All delineation settings; see configs/contour.yaml."""

    body: BodySettings = BodySettings()
    lungs: LungSettings = LungSettings()
    bones: BoneSettings = BoneSettings()
    cavities: CavitySettings = CavitySettings()
    non_ct_body: NonCTBodySettings = NonCTBodySettings()
    grow: GrowSettings = GrowSettings()
    pet: PetSettings = PetSettings()


def default_config_path() -> Path | None:
    """``$RAYRT_CONTOUR_CONFIG`` if set, else ``configs/contour.yaml`` of the source tree if present."""
    env = os.environ.get("RAYRT_CONTOUR_CONFIG")
    if env:
        return Path(env)
    p = Path(__file__).resolve().parents[2] / "configs" / "contour.yaml"
    return p if p.is_file() else None


def load_contour_config(path: str | Path | None = None) -> ContourConfig:
    """Read the delineation settings from YAML (missing keys keep their defaults).

    With no path, uses :func:`default_config_path`; with no file at all, the code defaults.
    """
    import yaml

    p = Path(path) if path is not None else default_config_path()
    if p is None:
        return ContourConfig()
    if not p.is_file():
        raise InputError(
            f"contour config {p} does not exist; give an existing YAML file or none for the defaults",
            kind="config",
            field=str(p),
        )
    try:
        data = yaml.safe_load(p.read_text()) or {}
        return ContourConfig.model_validate(data)
    except yaml.YAMLError as exc:
        raise InputError(f"contour config {p} is not valid YAML: {exc}", kind="config", field=str(p)) from exc
    except ValueError as exc:
        raise InputError(f"contour config {p} is invalid: {exc}", kind="config", field=str(p)) from exc
