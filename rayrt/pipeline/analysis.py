"""Analysis stages: the study loaded, every structure's geometry, and the DVH of every dose that
came with the study. They run for every job, planning or not.

    load        the patient's study (CT/MR/PET series, structures, doses); shares the image and
                the structure masks once with the executor (object store on Ray)
    structures  volume (cm³), centroid and bounding box (LPS mm) of every structure
    dvh         cumulative-DVH metrics (Gy) per structure of each RTDOSE in the study
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, Field

from rayrt.domain.errors import InputError
from rayrt.imaging.volume import as_vec3
from rayrt.pipeline.runner import Artefacts, StageContext, stage_of

__all__ = [
    "StudySource",
    "load_source",
    "StructureStats",
    "StructureReport",
    "DoseDVH",
    "DVHReport",
    "csv_bytes",
    "ANALYSIS_STAGES",
    "load",
    "structures",
    "dvh",
]


def csv_bytes(header: list[str], rows: list[list[Any]]) -> bytes:
    """A CSV file (UTF-8, ``\\n`` line ends) of one header row and ``rows``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


class StudySource(Protocol):
    """Anything that can produce a Study (a stored patient, an upload ...)."""

    def load(self) -> Any: ...


def load_source(source: Any) -> Any:
    """A Study from ``source``: an object with ``load()``, a Study, or a DICOM folder / zip path."""
    if hasattr(source, "load") and callable(source.load):
        return source.load()
    if isinstance(source, (str, Path)):
        from rayrt.imaging.study import load_study

        return load_study(source)
    if hasattr(source, "primary") and hasattr(source, "structures"):
        return source
    raise InputError(f"cannot load a study from {type(source).__name__}", kind="pipeline", field="source")


def _share_study(study: Any) -> dict[str, np.ndarray]:
    shared = {"image": study.primary.array}
    for sm in study.structures:
        shared[f"mask:{sm.structure.name}"] = np.asarray(sm.mask, dtype=bool)
    for n, dose in enumerate(study.doses):
        shared[f"dose:{n}"] = dose.array
    return shared


def load(source: Any) -> Any:
    """Load the patient's study (CT/MR/PET series, structures, doses) from its source."""
    return load_source(source)


class StructureStats(BaseModel):
    """Geometry of one structure on the primary image grid (LPS, mm)."""

    name: str
    kind: str
    num_voxels: int = Field(ge=0)
    volume_cc: float = Field(ge=0, description="voxel count x voxel volume, cm³")
    centroid_mm: tuple[float, float, float] | None = Field(
        default=None, description="LPS centre of mass of the voxel centres"
    )
    bbox_min_mm: tuple[float, float, float] | None = None
    bbox_max_mm: tuple[float, float, float] | None = None


class StructureReport(BaseModel):
    """Result of the ``structures`` stage."""

    grid_shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    voxel_volume_cc: float
    structures: list[StructureStats]
    empty: list[str] = Field(default_factory=list, description="structures with no voxel on the grid")

    def files(self) -> dict[str, bytes]:
        return {
            "structures.csv": csv_bytes(
                ["name", "kind", "num_voxels", "volume_cc"],
                [[s.name, s.kind, s.num_voxels, f"{s.volume_cc:.4f}"] for s in self.structures],
            )
        }


def structures(study: Any, ctx: StageContext) -> StructureReport:
    """Volumes (cm³), centroids and bounding boxes of every structure on the primary grid."""
    grid = study.primary.grid
    vv = grid.voxel_volume_cc
    stats, empty = [], []
    n = len(study.structures)
    for done, sm in enumerate(study.structures, 1):
        idx = np.argwhere(np.asarray(sm.mask, dtype=bool))  # (N, 3) as k, j, i
        kind = getattr(sm.structure.kind, "value", str(sm.structure.kind))
        if len(idx) == 0:
            stats.append(StructureStats(name=sm.structure.name, kind=kind, num_voxels=0, volume_cc=0.0))
            empty.append(sm.structure.name)
        else:
            xyz = grid.index_to_world(idx)
            stats.append(
                StructureStats(
                    name=sm.structure.name,
                    kind=kind,
                    num_voxels=len(idx),
                    volume_cc=len(idx) * vv,
                    centroid_mm=as_vec3(xyz.mean(axis=0)),
                    bbox_min_mm=as_vec3(xyz.min(axis=0)),
                    bbox_max_mm=as_vec3(xyz.max(axis=0)),
                )
            )
        ctx.progress(done, n)
    return StructureReport(
        grid_shape=grid.shape, spacing_mm=grid.spacing_mm, voxel_volume_cc=vv, structures=stats, empty=empty
    )


class DoseDVH(BaseModel):
    """DVH metrics of every structure for one dose distribution, on the primary image grid."""

    dose_index: int
    max_dose_gy: float
    method: str = "dose resampled trilinearly onto the primary image grid; voxel-centre masks"
    metrics: list[dict[str, Any]]


class DVHReport(BaseModel):
    """Result of the ``dvh`` stage (one entry per dose that came with the study)."""

    doses: list[DoseDVH]

    def files(self) -> dict[str, bytes]:
        keys: list[str] = []
        for d in self.doses:
            for m in d.metrics:
                keys += [k for k in m if k not in keys and not isinstance(m[k], (list, dict))]
        rows = [[d.dose_index, *(m.get(k, "") for k in keys)] for d in self.doses for m in d.metrics]
        return {"dvh.csv": csv_bytes(["dose_index", *keys], rows)}


def _no_dose(artefacts: Artefacts) -> str | None:
    study = artefacts.get("study")
    return None if study is not None and getattr(study, "doses", None) else "the study has no dose (RTDOSE)"


def dvh(study: Any, ctx: StageContext) -> DVHReport:
    """Cumulative-DVH metrics (Dmin/Dmean/Dmax, D95 ...) per structure for each dose in the study."""
    from rayrt.qa.dvh import dvh_metrics

    grid = study.primary.grid
    total = len(study.doses) * max(1, len(study.structures))
    done = 0
    reports = []
    for n, dose in enumerate(study.doses):
        on_grid = dose.resample(grid, order=1, fill=0.0).array.astype(np.float64)
        metrics = []
        for sm in study.structures:
            m = dvh_metrics(on_grid, np.asarray(sm.mask, dtype=bool), grid.voxel_volume_cc, sm.structure.name)
            metrics.append(m.model_dump(mode="json") if isinstance(m, BaseModel) else dict(m))
            done += 1
            ctx.progress(done, total)
        reports.append(DoseDVH(dose_index=n, max_dose_gy=float(np.max(dose.array)), metrics=metrics))
    return DVHReport(doses=reports)


ANALYSIS_STAGES = [
    stage_of(load, output="study", persist=False, shares=_share_study),
    stage_of(structures, output="structure_report"),
    stage_of(dvh, output="dvh_report", when=_no_dose),
]
