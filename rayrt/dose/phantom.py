"""The computation phantom: relative electron density from CT numbers, with density overrides.

Photon dose in the pencil-beam model scales with the *radiological* (water-equivalent) depth,
the path integral of the relative electron density (water = 1) along the ray. The density comes
from the CT through a HU -> density calibration (``configs/hu_density.yaml``, or
:data:`DEFAULT_HU_DENSITY` when absent); structures may override it (couch, contrast, metal, or
bulk densities of an MR-only patient, who has no CT at all: build the volume from masks with
:func:`bulk_density_phantom`). Outside the external (body) contour the density is 0 (air), so
the dose engine neither attenuates nor scores dose there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rayrt.domain.errors import InputError, first_error
from rayrt.imaging.volume import Grid, Volume

#: quantity name of relative-electron-density volumes
DENSITY = "relative_electron_density"


class HUCalibration(BaseModel):
    """Piecewise-linear HU -> relative electron density curve (clamped at its ends)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "generic"
    points: list[tuple[float, float]] = Field(
        description="(HU, relative electron density) pairs, HU strictly increasing"
    )

    @field_validator("points")
    @classmethod
    def _increasing(cls, v):
        if len(v) < 2:
            raise ValueError("a HU calibration needs at least two points")
        hu = [p[0] for p in v]
        if any(b <= a for a, b in zip(hu, hu[1:])):
            raise ValueError("HU values must increase strictly")
        if any(p[1] < 0 for p in v):
            raise ValueError("densities must be >= 0")
        return v

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        p = np.asarray(self.points, dtype=float)
        return np.interp(np.asarray(hu, dtype=float), p[:, 0], p[:, 1]).astype(np.float32)


DEFAULT_HU_DENSITY = HUCalibration(
    name="generic_120kVp",
    points=[(-1024, 0.0), (-1000, 0.001), (-800, 0.19), (-100, 0.93), (0, 1.0), (40, 1.04), (1000, 1.52), (3071, 2.6)],
)

#: typical bulk relative electron densities for overrides (MR-only planning, contrast, couch)
BULK_DENSITIES: dict[str, float] = {
    "air": 0.0,
    "lung": 0.25,
    "adipose": 0.93,
    "water": 1.0,
    "soft_tissue": 1.04,
    "bone": 1.6,
    "carbon_fibre_couch": 0.5,
    "titanium": 3.74,
}


def load_hu_calibration(path: str | Path | None = None) -> HUCalibration:
    """The HU calibration from ``path`` or ``<config_dir>/hu_density.yaml``; the built-in default when absent."""
    import yaml
    from pydantic import ValidationError

    from rayrt.config import config_dir

    p = Path(path) if path is not None else config_dir() / "hu_density.yaml"
    if not p.exists():
        if path is not None:
            raise InputError(f"HU calibration file {p} does not exist", field="hu_calibration")
        return DEFAULT_HU_DENSITY
    try:
        return HUCalibration.model_validate(yaml.safe_load(p.read_text(encoding="utf-8")))
    except ValidationError as exc:
        loc, msg = first_error(exc)
        raise InputError(
            f"invalid HU calibration {p.name}: {loc}: {msg}",
            field="hu_calibration",
        ) from None


def density_from_hu(hu: Volume, calibration: HUCalibration | None = None) -> Volume:
    """Relative electron density (float32) of a CT volume in HU."""
    cal = calibration if calibration is not None else load_hu_calibration()
    return Volume(cal(hu.array), hu.grid, DENSITY, dict(hu.meta, hu_calibration=cal.name))


def _resolve_override(name: str, value: float | str) -> float:
    if isinstance(value, str):
        if value not in BULK_DENSITIES:
            raise InputError(
                f"unknown bulk density {value!r} for {name!r}; use a number or one of {sorted(BULK_DENSITIES)}",
                field="overrides",
            )
        return BULK_DENSITIES[value]
    v = float(value)
    if not np.isfinite(v) or v < 0 or v > 20:
        raise InputError(
            f"density override for {name!r} must be a relative electron density in [0, 20], got {value}",
            field="overrides",
        )
    return v


def computation_phantom(
    ct: Volume,
    masks: dict[str, np.ndarray] | None = None,
    overrides: dict[str, float | str] | None = None,
    external_mask: np.ndarray | None = None,
    calibration: HUCalibration | None = None,
) -> Volume:
    """Relative-electron-density volume the dose engine traces through.

    ``ct`` in HU (quantity "HU") is converted with the calibration; a volume that already holds
    density (quantity "relative_electron_density") is used as is. ``overrides`` maps structure
    names (keys of ``masks``, on the CT grid) to a density or a BULK_DENSITIES name, applied in
    the given order (later ones win). Outside ``external_mask`` the density is 0; inside it is at
    least 0.001 so that internal air cavities still receive dose.
    """
    if ct.quantity == DENSITY:
        rho = np.asarray(ct.array, dtype=np.float32).copy()
    else:
        rho = density_from_hu(ct, calibration).array.copy()
    masks = masks or {}
    for name, value in (overrides or {}).items():
        if name not in masks:
            raise InputError(
                f"density override names structure {name!r}, which has no mask; available: {sorted(masks)}",
                field="overrides",
            )
        m = np.asarray(masks[name], dtype=bool)
        if m.shape != rho.shape:
            raise InputError(f"mask {name!r} has shape {m.shape}, the CT {rho.shape}", field="overrides")
        rho[m] = _resolve_override(name, value)
    if external_mask is not None:
        ext = np.asarray(external_mask, dtype=bool)
        if ext.shape != rho.shape:
            raise InputError(f"external mask has shape {ext.shape}, the CT {rho.shape}", field="external_mask")
        rho = np.where(ext, np.maximum(rho, np.float32(0.001)), np.float32(0.0)).astype(np.float32)
    return Volume(rho, ct.grid, DENSITY, dict(ct.meta))


def bulk_density_phantom(
    grid: Grid, masks: dict[str, np.ndarray], densities: dict[str, float | str], external: str
) -> Volume:
    """A density volume without CT (MR-only): water-equivalent ``external`` plus per-structure bulk densities."""
    if external not in masks:
        raise InputError(f"external structure {external!r} has no mask; available: {sorted(masks)}", field="external")
    rho = np.zeros(grid.shape, dtype=np.float32)
    rho[np.asarray(masks[external], bool)] = _resolve_override(external, densities.get(external, 1.0))
    vol = Volume(rho, grid, DENSITY)
    rest = {k: v for k, v in densities.items() if k != external}
    return computation_phantom(vol, masks, rest, external_mask=masks[external])
