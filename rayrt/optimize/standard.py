"""The standard plan and the geometry it was computed on: one type each, from planning through
conversion, QA and export (the pipeline's ``geometry`` and ``normalize`` stages make them,
:func:`rayrt.convert.convert.convert_for_machine` reads them).

Units: beamlet and segment weights inside the optimiser are *course* MU (the Dij is Gy per MU
through a bixel, :mod:`rayrt.dose.dij`, and the order's doses are course doses); a
:class:`~rayrt.domain.plan.Plan` carries MU per fraction = course MU / fractions. Doses are
course doses in Gy on the dose grid, arrays ``[k, j, i]`` (slice, row, column), LPS mm.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rayrt.domain.errors import InputError
from rayrt.domain.machine import MachineModel
from rayrt.domain.order import MedicalOrder
from rayrt.domain.plan import Beam, Plan, Segment
from rayrt.imaging.arrays import from_npy, from_npz, npy_bytes, npz_bytes
from rayrt.imaging.volume import Grid, Volume
from rayrt.optimize.goal_terms import GoalPlanReport
from rayrt.qa.goals import GoalEvaluation

__all__ = [
    "PlanGeometry",
    "StandardPlan",
    "masks_on_grid",
    "planning_phantom",
    "plan_from_apertures",
    "final_dose",
    "dvh_table",
    "dose_key",
    "weight_metrics",
]


class PlanGeometry(BaseModel):
    """Where a plan is computed: density, dose grid, structure masks, isocenter and beams (LPS mm,
    IEC 61217 angles). ``density`` (relative electron density, 0 outside the external) lives on
    ``density_grid`` (the CT grid); ``dose_masks`` are boolean masks on ``dose_grid``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    standard_machine: str
    density_grid: Grid
    dose_grid: Grid
    isocenter_mm: tuple[float, float, float]
    beams: list[Beam]
    target: str
    targets: list[str] = Field(
        default_factory=list, description="every structure the beamlets cover (the order's targets)"
    )
    external: str | None = None
    mask_names: list[str] = Field(default_factory=list, description="structures with masks on the dose grid")
    density: Any = Field(default=None, exclude=True, description="relative electron density [k, j, i] on density_grid")
    dose_masks: Any = Field(default=None, exclude=True, description="name -> bool mask on dose_grid")

    def density_volume(self) -> Volume:
        return Volume(
            np.ascontiguousarray(self.density, dtype=np.float32), self.density_grid, "relative_electron_density"
        )

    def masks(self) -> dict[str, np.ndarray]:
        """Every structure's mask on the dose grid."""
        return {n: self.dose_masks[n] for n in self.mask_names}

    def files(self) -> dict[str, bytes]:
        packed = {n: np.packbits(np.asarray(self.dose_masks[n], bool).ravel()) for n in self.mask_names}
        return {"density.npy": npy_bytes(np.asarray(self.density, np.float32)), "dose_masks.npz": npz_bytes(**packed)}

    @classmethod
    def from_files(cls, data: dict, read: Callable[[str], bytes]) -> "PlanGeometry":
        g = cls.model_validate(data)
        g.density = from_npy(read("density.npy"))
        n = g.dose_grid.num_voxels
        g.dose_masks = {
            k: np.unpackbits(v)[:n].astype(bool).reshape(g.dose_grid.shape)
            for k, v in from_npz(read("dose_masks.npz")).items()
        }
        return g


class StandardPlan(BaseModel):
    """The standard plan (MU per fraction) on the vendor-neutral machine, the order it was made
    for, and its course dose (Gy, float32 ``[k, j, i]`` on ``dose_grid``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    plan: Plan
    order: MedicalOrder
    dose_grid: Grid
    normalization_factor: float
    raised_segments: int = 0
    dvh: dict = Field(default_factory=dict)
    goals: list[GoalEvaluation] = Field(default_factory=list, description="the order's clinical goals on this plan")
    goal_limits: dict[str, str] = Field(
        default_factory=dict, description="missed goal (label) -> what limited it (automatic planning)"
    )
    goal_report: GoalPlanReport | None = Field(default=None, description="automatic planning's rounds and terms")
    open_field_mu: float = Field(
        default=0.0,
        description="MU per fraction of the open-field plan (one open segment per beam over its beamlet grid, mean "
        "target dose = prescription): the reference of the modulation measure mu / open_field_mu",
    )
    dose: Any = Field(default=None, exclude=True, description="course dose (Gy) [k, j, i] on dose_grid, float32")

    @property
    def modulation(self) -> float:
        """Total MU over the open-field plan's MU (0 when unknown)."""
        return self.plan.total_mu / self.open_field_mu if self.open_field_mu > 0 else 0.0

    def files(self) -> dict[str, bytes]:
        return {
            "plan.json": self.plan.model_dump_json(indent=1).encode(),
            "dose.npy": npy_bytes(np.asarray(self.dose, np.float32)),
        }

    @classmethod
    def from_files(cls, data: dict, read: Callable[[str], bytes]) -> "StandardPlan":
        r = cls.model_validate(data)
        r.dose = from_npy(read("dose.npy"))
        return r


def masks_on_grid(masks: dict[str, np.ndarray], src: Grid, dst: Grid) -> dict[str, np.ndarray]:
    """Resample boolean masks by nearest neighbour at the destination voxel centres."""
    kji = np.stack(np.meshgrid(*(np.arange(n) for n in dst.shape), indexing="ij"), axis=-1).reshape(-1, 3)
    idx = np.rint(src.world_to_index(dst.index_to_world(kji.astype(float)))).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(src.shape)), axis=1)
    out = {}
    for n, m in masks.items():
        v = np.zeros(idx.shape[0], dtype=bool)
        ii = idx[inside]
        v[inside] = np.asarray(m, bool)[ii[:, 0], ii[:, 1], ii[:, 2]]
        out[n] = v.reshape(dst.shape)
    return out


def planning_phantom(study: Any, names: list[str]) -> tuple[dict[str, np.ndarray], Volume, str | None]:
    """Masks (CT grid) of ``names`` plus the body outline, and the computation phantom built from
    them: relative electron density from the CT's HU, zero outside the external contour.
    Returns ``(masks_ct, density, external_name)``."""
    from rayrt.dose.phantom import computation_phantom

    ext = study.external_name
    need = sorted(set(names) | ({ext} if ext else set()))
    masks_ct = {n: study.mask(n) for n in need}
    density = computation_phantom(study.primary, masks_ct, None, masks_ct.get(ext) if ext else None)
    return masks_ct, density, ext


def plan_from_apertures(
    segments: list[list[Segment]],
    gantry_deg: list[float],
    isocenter_mm: Any,
    machine: MachineModel,
    order: MedicalOrder,
    label: str = "rayrt standard plan",
    patient_id: str = "",
    frame_of_reference_uid: str | None = None,
) -> Plan:
    """A Plan from per-beam segments whose ``mu`` are course MU (divided by the fractions here)."""
    fx = order.prescription.fractions
    iso = [float(v) for v in isocenter_mm]
    if len(iso) != 3:
        raise InputError(f"isocenter_mm must have 3 coordinates (x, y, z, mm), got {len(iso)}", field="isocenter_mm")
    iso_mm = (iso[0], iso[1], iso[2])
    beams = []
    for i, (segs, g) in enumerate(zip(segments, gantry_deg)):
        beams.append(
            Beam(
                name=f"B{i + 1}",
                number=i + 1,
                gantry_deg=float(g),
                isocenter_mm=iso_mm,
                segments=[s.model_copy(update={"mu": s.mu / fx}) for s in segs],
            )
        )
    return Plan(
        label=label,
        machine=machine.name,
        patient_id=patient_id,
        frame_of_reference_uid=frame_of_reference_uid,
        fractions=fx,
        prescription_gy=order.prescription.total_dose_gy,
        target=order.prescription.target,
        beams=beams,
    )


def final_dose(plan: Plan, beamlets: list, dij: Any, machine: MachineModel) -> np.ndarray:
    """Course dose (Gy, flat over the dose grid) of the plan's segments through the beams' Dij blocks
    (rayrt.dose.aperture.aperture_fluence: transmission, dosimetric leaf gap, head scatter)."""
    from rayrt.dose.aperture import aperture_fluence

    w = (
        np.concatenate([aperture_fluence(bg, b.segments, machine) for bg, b in zip(beamlets, plan.beams)])
        * plan.fractions
    )
    return np.asarray(dij @ w.astype(np.float32), dtype=np.float64)


def dose_key(volume_pct: float) -> str:
    """The DVH-table key of D_v: ``d95_gy``, ``d0_1_gy`` ..."""
    return f"d{volume_pct:g}_gy".replace(".", "_")


def dvh_table(
    dose: np.ndarray, masks: dict[str, np.ndarray], voxel_cc: float, order: MedicalOrder | None = None
) -> dict[str, dict]:
    """Per structure: DVH metrics (Gy; rayrt.qa.dvh, voxel centres on the dose grid) plus D10 and
    every D_v the order's DVH objectives name."""
    from rayrt.qa.dvh import dose_at_volume, dvh_metrics

    extra = {10.0} | {float(o.volume_pct) for o in (order.objectives if order else []) if o.volume_pct is not None}
    out = {}
    for n, m in masks.items():
        if not m.any():
            continue
        met = dvh_metrics(dose, m, voxel_cc, n).model_dump()
        vals = dose[m]
        for v in sorted(extra):
            met.setdefault(dose_key(v), float(dose_at_volume(vals, v)))
        out[n] = met
    return out


def weight_metrics(problem: Any, w: np.ndarray) -> dict:
    """D95 / D10 / max (Gy) per structure on the problem's voxels for beamlet weights ``w`` (before normalisation)."""
    from rayrt.qa.dvh import dose_at_volume

    d = problem.dose(w)
    out = {}
    for n, rows in problem.structure_rows.items():
        v = d[rows]
        if v.size:
            out[n] = {
                "d95_gy": float(dose_at_volume(v, 95.0)),
                "d10_gy": float(dose_at_volume(v, 10.0)),
                "max_gy": float(v.max()),
            }
    return out
