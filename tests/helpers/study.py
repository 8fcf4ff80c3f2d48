"""Small studies and orders the tests plan: a 12 x 32 x 32 synthetic CT (4 x 4 x 5 mm) with BODY,
PTV and a 'Core' organ, optionally a dose; the small order; a folder zipped for upload."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

__all__ = ["make_small_study", "SMALL_ORDER", "zip_dir"]


def make_small_study(with_dose: bool = True):
    """A synthetic study: water cylinder (BODY) with a PTV and a 'Core' organ, optional dose (Gy)."""
    from rayrt.domain.patient import Structure, StructureKind
    from rayrt.imaging.study import StructureMask, Study
    from rayrt.imaging.volume import Grid, Volume

    g = Grid(shape=(12, 32, 32), spacing_mm=(4.0, 4.0, 5.0), origin_mm=(-62.0, -62.0, -27.5))
    c = g.voxel_centers_mm()
    r = np.hypot(c[..., 0], c[..., 1])
    body = r < 55
    ptv = (np.hypot(c[..., 0] - 10, c[..., 1]) < 15) & (np.abs(c[..., 2]) < 15)
    core = (np.hypot(c[..., 0] + 15, c[..., 1]) < 8) & (np.abs(c[..., 2]) < 20)
    ct = Volume(np.where(body, 0, -1000).astype(np.int16), g, "HU", {"modality": "CT"})
    doses = []
    if with_dose:
        d = 50.0 * np.exp(-((c[..., 0] - 10) ** 2 + c[..., 1] ** 2) / 800.0)
        doses.append(Volume(d.astype(np.float32), g, "dose_gy", {}))
    return Study(
        patient_id="RT-TEST-1",
        patient_name="Test^Small",
        study_instance_uid=None,
        frame_of_reference_uid=None,
        series=[],
        images={"ct": ct},
        primary_uid="ct",
        structures=[
            StructureMask(Structure(name="BODY", kind=StructureKind.external), body),
            StructureMask(Structure(name="PTV", kind=StructureKind.target), ptv),
            StructureMask(Structure(name="Core", kind=StructureKind.organ), core),
        ],
        doses=doses,
    )


def zip_dir(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    return zip_path


SMALL_ORDER = {
    "name": "small test order",
    "prescription": {"target": "PTV", "total_dose_gy": 50.0, "fractions": 25},
    "objectives": [
        {"structure": "PTV", "kind": "squared_deviation", "dose_gy": 50.0, "priority": 100},
        {"structure": "Core", "kind": "max_dose", "dose_gy": 25.0},
    ],
}
