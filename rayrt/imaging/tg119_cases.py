"""The AAPM TG-119 IMRT test geometries as analytic water phantoms with clinical-goal orders.

Ezzell et al., "IMRT commissioning: multiple institution planning and dosimetry comparisons, a
report from AAPM Task Group 119", Med Phys 36:5359 (2009), defines five planning tests on a
water-equivalent phantom: the C-shape (easy and hard goals, see :mod:`rayrt.imaging.phantoms`),
the multitarget, the mock prostate and the mock head-and-neck. The report gives the shapes in a
few sentences, a figure and downloadable structure sets. The "Report:" lines below give the
report's description as recalled when this module was written (neither the text nor the AAPM
structure sets were at hand to check against); the analytic shapes follow it where it gives a
number and are *approximations chosen here* where it does not (marked "approx.").

All phantoms are water (0 HU) inside BODY and air (-1000 HU) outside, patient
coordinates are DICOM LPS for a head-first supine patient (+x patient left, +y posterior,
+z superior), the grid is centred on the phantom exactly like :func:`tg119_phantom`'s, and voxel
membership is decided at voxel centres from polygons on the slice planes (so the written
RTSTRUCT reproduces the masks). All dimensions in mm.

Multitarget (:data:`TG119_MULTITARGET_MM`)
    Report: three cylindrical targets about 4 cm in diameter and 4 cm long stacked along the
    axis of rotation (superior, central, inferior). Here: radius 20, length 40, on the axis,
    central at ``|z| <= 20``, superior ``20 < z <= 60``, inferior ``-60 <= z < -20``: the
    cylinders abut (approx.: the report says only "stacked"; ``gap_mm`` of
    :func:`multitarget_phantom` separates them). BODY: the C-shape's water cylinder, radius 100,
    ``|z| <= 100`` (approx.).
Prostate (:data:`TG119_PROSTATE_MM`)
    Report: prostate CTV roughly elliptical, 4.0 cm RL, 2.6 cm AP, 6.5 cm SI; PTV a 0.6 cm
    expansion; rectum a 1.5 cm diameter cylinder against the posterior prostate, partly inside
    the PTV; bladder roughly elliptical, superior and anterior, partly inside the PTV. Here:
    CTV ellipsoid semi-axes (20, 13, 32.5) at the origin; PTV the ellipsoid with semi-axes
    enlarged by 6 (26, 19, 38.5): exactly 6 mm along the principal axes, 5.5-6 mm in between
    (approx. of the 3-D margin); rectum radius 7.5 along z at y = +22 (1.5 mm behind the CTV,
    approx.: it puts 6 % of the rectum inside the PTV so that rectum D10 <= 75 Gy stays
    attainable), ``|z| <= 60`` (12 cm, approx.); bladder ellipsoid semi-axes (25, 20, 25)
    centred (0, -14, +52) (approx.; about 2 % of it inside the PTV, a sliver below 0.01 cm³ in the CTV). BODY: an
    elliptical pelvis, semi-axes 150 x 100, ``|z| <= 80`` (approx.).
Head and neck (:data:`TG119_HEADNECK_MM`)
    Report: the PTV includes all anterior volume from the base of the skull to the upper neck,
    including the posterior neck nodes, retracted 0.6 cm from the skin, with a gap of about
    1.5 cm between the cord and the PTV; two parotids. Here: BODY an elliptical neck, semi-axes
    80 (RL) x 70 (AP), ``|z| <= 80`` (approx.); spinal cord radius 5 at y = +25 (45 mm in front
    of the posterior skin), ``|z| <= 70``; PTV = the body ellipse retracted by 6 (semi-axes 74 x
    64) up to the cord's posterior edge plane (y <= 30), minus a disc of radius 20 round the cord
    (the 15 mm gap), ``|z| <= 35`` (7 cm): a horseshoe closed anteriorly round the cord, its arms
    reaching the posterior neck (approx.); parotids ellipsoids semi-axes (12, 14, 20) at
    (+-45, +40, +20), posterolateral to the PTV arms with about 5 % of each inside the PTV
    (approx.).

Orders: doses and goals are those of the report's Table (total course, Gy); 25 fractions except
the prostate (75.6 Gy in 42 fractions). Ranks: 1 for organ-at-risk limits (cord max, the
C-shape core), 2 for target coverage (``D9x >=``), 3 for target hot spots and the other organs.
The orders carry goals only (no ``objectives``): the planner derives its objectives from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rayrt.domain.errors import InputError
from rayrt.domain.goals import ClinicalGoal
from rayrt.domain.order import MedicalOrder, Normalization, Prescription
from rayrt.domain.patient import StructureKind
from rayrt.imaging.export import write_study
from rayrt.imaging.phantoms import (
    _disc_area_below,
    phantom_grid,
    tg119_analytic_volumes_cc,
    tg119_contours,
    tg119_phantom,
    water_study,
)
from rayrt.imaging.study import Study
from rayrt.imaging.volume import Grid

__all__ = [
    "TG119Case",
    "TG119_CASES",
    "TG119_MULTITARGET_MM",
    "TG119_PROSTATE_MM",
    "TG119_HEADNECK_MM",
    "tg119_case",
    "write_tg119_case",
    "cshape_goal_order",
    "cshape_hard_goal_order",
    "multitarget_phantom",
    "multitarget_contours",
    "multitarget_analytic_volumes_cc",
    "multitarget_goal_order",
    "prostate_phantom",
    "prostate_contours",
    "prostate_analytic_volumes_cc",
    "prostate_goal_order",
    "headneck_phantom",
    "headneck_contours",
    "headneck_analytic_volumes_cc",
    "headneck_goal_order",
]

Spacing = tuple[float, float, float] | float
DEFAULT_SPACING_MM: tuple[float, float, float] = (3.0, 3.0, 2.5)

TG119_MULTITARGET_MM = {
    "body_radius": 100.0,
    "body_half_length": 100.0,
    "target_radius": 20.0,
    "target_length": 40.0,
    "target_gap": 0.0,
}

TG119_PROSTATE_MM = {
    "body_semi_x": 150.0,
    "body_semi_y": 100.0,
    "body_half_length": 80.0,
    "ctv_semi_x": 20.0,
    "ctv_semi_y": 13.0,
    "ctv_semi_z": 32.5,
    "ptv_margin": 6.0,
    "rectum_radius": 7.5,
    "rectum_y": 22.0,
    "rectum_half_length": 60.0,
    "bladder_semi_x": 25.0,
    "bladder_semi_y": 20.0,
    "bladder_semi_z": 25.0,
    "bladder_y": -14.0,
    "bladder_z": 52.0,
}

TG119_HEADNECK_MM = {
    "body_semi_x": 80.0,
    "body_semi_y": 70.0,
    "body_half_length": 80.0,
    "skin_margin": 6.0,
    "cord_radius": 5.0,
    "cord_y": 25.0,
    "cord_half_length": 70.0,
    "cord_ptv_gap": 15.0,
    "ptv_half_length": 35.0,
    "parotid_semi_x": 12.0,
    "parotid_semi_y": 14.0,
    "parotid_semi_z": 20.0,
    "parotid_x": 45.0,
    "parotid_y": 40.0,
    "parotid_z": 20.0,
}

_N_VERTICES = 360  # per full ellipse: inscribed-polygon area error 5e-5
_COLOURS = {
    "CentralTarget": (255, 0, 0),
    "SuperiorTarget": (255, 128, 0),
    "InferiorTarget": (255, 0, 255),
    "CTV": (255, 255, 0),
    "PTV": (255, 0, 0),
    "Rectum": (128, 64, 0),
    "Bladder": (0, 255, 255),
    "SpinalCord": (0, 128, 255),
    "Parotid_L": (128, 255, 0),
    "Parotid_R": (0, 160, 80),
    "BODY": (0, 200, 0),
}


# ------------------------------------------------------------------------------------ shapes
def _ellipse(cx: float, cy: float, a: float, b: float, n: int = _N_VERTICES) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], axis=1)


@dataclass(frozen=True)
class _Prism:
    """A planar polygon (x, y) extruded along z over [z_min, z_max] (an end open when flagged)."""

    xy: np.ndarray
    z_min: float
    z_max: float
    open_min: bool = False
    open_max: bool = False

    def section(self, z: float) -> np.ndarray | None:
        tol = 1e-9
        lo = z > self.z_min + tol if self.open_min else z >= self.z_min - tol
        hi = z < self.z_max - tol if self.open_max else z <= self.z_max + tol
        return self.xy if lo and hi else None


@dataclass(frozen=True)
class _Ellipsoid:
    """An axis-aligned ellipsoid: its section at z is an ellipse scaled by sqrt(1 - (dz/c)^2)."""

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]

    def section(self, z: float) -> np.ndarray | None:
        f = 1.0 - ((z - self.centre[2]) / self.semi[2]) ** 2
        if f <= 1e-12:
            return None
        s = math.sqrt(f)
        return _ellipse(self.centre[0], self.centre[1], self.semi[0] * s, self.semi[1] * s)


_Shape = _Prism | _Ellipsoid


def _plane_z(grid: Grid) -> np.ndarray:
    kji = np.zeros((grid.shape[0], 3))
    kji[:, 0] = np.arange(grid.shape[0])
    return grid.index_to_world(kji)[:, 2]


def _contours(shapes: dict[str, _Shape], grid: Grid) -> dict[str, list[np.ndarray]]:
    """Polygons (LPS mm, (n, 3)) of each shape on every slice plane of ``grid`` it crosses."""
    out: dict[str, list[np.ndarray]] = {}
    planes = _plane_z(grid)
    for name, shape in shapes.items():
        polys = []
        for z in planes:
            xy = shape.section(float(z))
            if xy is not None:
                polys.append(np.column_stack([xy, np.full(xy.shape[0], z)]))
        out[name] = polys
    return out


def _ellipse_area_below(a: float, b: float, h: float) -> float:
    """Area (mm²) of the ellipse x²/a² + y²/b² <= 1 where y <= h (the disc's, scaled by a/b)."""
    return a / b * _disc_area_below(b, h)


def _ellipsoid_cc(semi: tuple[float, float, float]) -> float:
    return 4.0 / 3.0 * math.pi * semi[0] * semi[1] * semi[2] / 1000.0


def _horseshoe(a: float, b: float, h: float, yc: float, r: float, n: int = _N_VERTICES) -> np.ndarray:
    """Closed polygon of {x²/a² + y²/b² <= 1, y <= h} minus the disc of radius r about (0, yc)
    (the disc crossing the line y = h and lying inside the ellipse): a horseshoe closed towards
    -y (anterior) round the disc, open towards +y."""
    s = math.asin(h / b)
    t = np.linspace(s, -math.pi - s, n)  # ellipse from the right arm's end through y = -b to the left arm's end
    u0 = math.asin((h - yc) / r)
    u = np.linspace(math.pi - u0, 2 * math.pi + u0, max(16, int(n * r / a)))  # disc: left, through yc - r, right
    outer = np.stack([a * np.cos(t), b * np.sin(t)], axis=1)
    inner = np.stack([r * np.cos(u), yc + r * np.sin(u)], axis=1)
    return np.concatenate([outer, inner])


# ------------------------------------------------------------------------------ study build
def _goal(structure: str, metric: str, op: str, value: float, rank: int) -> ClinicalGoal:
    return ClinicalGoal.model_validate(dict(structure=structure, metric=metric, op=op, value=value, rank=rank))


# --------------------------------------------------------------------------------- C-shape
_CSHAPE_NOTE = "AAPM TG-119 C-shape (Ezzell et al., Med Phys 36:5359, 2009), goals from the report's Table."


def _cshape_order(name: str, core_d10_gy: float, note: str) -> MedicalOrder:
    return MedicalOrder(
        name=name,
        prescription=Prescription(
            target="PTV",
            total_dose_gy=50.0,
            fractions=25,
            normalization=Normalization(metric="D95", structure="PTV", value_pct=100.0),
        ),
        goals=[
            _goal("Core", "D10", "<=", core_d10_gy, 1),
            _goal("PTV", "D95", ">=", 50.0, 2),
            _goal("PTV", "D10", "<=", 55.0, 3),
        ],
        notes=note,
    )


def cshape_goal_order() -> MedicalOrder:
    """TG-119 C-shape, easy goals: PTV D95 >= 50 Gy, PTV D10 <= 55 Gy, core D10 <= 25 Gy
    (50 Gy in 25 fractions). Normalisation PTV D95 = 100 % of 50 Gy, the coverage goal itself.
    The core stands for the spinal cord: its limit is rank 1."""
    return _cshape_order("TG-119 C-shape (easy goals)", 25.0, _CSHAPE_NOTE)


def cshape_hard_goal_order() -> MedicalOrder:
    """TG-119 C-shape, hard goals: as :func:`cshape_goal_order` with core D10 <= 10 Gy (rank 1;
    rayrt's recipes reach it with the PTV goals met, see
    :func:`rayrt.optimize.recipes.tg119_hard_goal_order`)."""
    return _cshape_order("TG-119 C-shape (hard goals)", 10.0, _CSHAPE_NOTE + " Hard variant: core D10 <= 10 Gy.")


# ----------------------------------------------------------------------------- multitarget
def _multitarget_shapes(gap_mm: float) -> dict[str, _Shape]:
    g = TG119_MULTITARGET_MM
    if not 0 <= gap_mm <= 50:
        raise InputError(f"multitarget gap must be 0-50 mm, got {gap_mm}", kind="phantom")
    half = g["target_length"] / 2
    disc = _ellipse(0.0, 0.0, g["target_radius"], g["target_radius"])
    centre = half + gap_mm  # near end of the superior / inferior cylinder
    abut = gap_mm == 0  # abutting cylinders: the shared plane belongs to the central target
    body = _ellipse(0.0, 0.0, g["body_radius"], g["body_radius"], 2 * _N_VERTICES)
    return {
        "CentralTarget": _Prism(disc, -half, half),
        "SuperiorTarget": _Prism(disc, centre, centre + 2 * half, open_min=abut),
        "InferiorTarget": _Prism(disc, -centre - 2 * half, -centre, open_max=abut),
        "BODY": _Prism(body, -g["body_half_length"], g["body_half_length"]),
    }


def multitarget_contours(grid: Grid, gap_mm: float = TG119_MULTITARGET_MM["target_gap"]) -> dict[str, list[np.ndarray]]:
    """Analytic multitarget polygons (LPS mm) on every slice plane of ``grid``."""
    return _contours(_multitarget_shapes(gap_mm), grid)


def multitarget_analytic_volumes_cc(gap_mm: float = TG119_MULTITARGET_MM["target_gap"]) -> dict[str, float]:
    """Exact volumes (cm³) of the multitarget structures."""
    g = TG119_MULTITARGET_MM
    target = math.pi * g["target_radius"] ** 2 * g["target_length"] / 1000.0
    return {
        "CentralTarget": target,
        "SuperiorTarget": target,
        "InferiorTarget": target,
        "BODY": math.pi * g["body_radius"] ** 2 * 2 * g["body_half_length"] / 1000.0,
    }


def multitarget_phantom(
    spacing_mm: Spacing = DEFAULT_SPACING_MM, gap_mm: float = TG119_MULTITARGET_MM["target_gap"]
) -> Study:
    """The TG-119 multitarget phantom: three 4 cm x 4 cm cylindrical targets stacked on the axis
    of a water cylinder (see the module docstring); ``gap_mm`` between neighbouring targets."""
    g = TG119_MULTITARGET_MM
    grid = phantom_grid(g["body_radius"], g["body_radius"], g["body_half_length"], spacing_mm)
    kinds = {
        "CentralTarget": StructureKind.target,
        "SuperiorTarget": StructureKind.target,
        "InferiorTarget": StructureKind.target,
        "BODY": StructureKind.external,
    }
    return water_study(
        grid,
        multitarget_contours(grid, gap_mm),
        kinds,
        _COLOURS,
        "TG119MT",
        "TG119^Multitarget",
        "rayrt TG-119 multitarget phantom",
    )


def multitarget_goal_order() -> MedicalOrder:
    """TG-119 multitarget: central 50 Gy, superior 25 Gy, inferior 12.5 Gy in 25 fractions.

    Goals (Gy): central D99 >= 50, D10 <= 53; superior D99 >= 25, D10 <= 35; inferior
    D99 >= 12.5, D10 <= 25. Normalisation: central-target D99 = 100 % of 50 Gy, i.e. the
    prescription target's coverage goal itself, as a planner scaling to the coverage goal
    would do. 100 % rather than 101 %: the normalisation already lifts its factor by a hair
    (``rayrt.optimize.normalize.NORMALISATION_HEADROOM``) so the ``>=`` goal holds on round-off,
    and the window from D99 = 50 Gy to the D10 <= 53 Gy hot-spot goal is only 6 %; a 1 % margin
    would spend a sixth of it. The superior and inferior targets are ``dose_levels``.
    """
    return MedicalOrder(
        name="TG-119 multitarget",
        prescription=Prescription(
            target="CentralTarget",
            total_dose_gy=50.0,
            fractions=25,
            normalization=Normalization(metric="D99", structure="CentralTarget", value_pct=100.0),
        ),
        dose_levels={"SuperiorTarget": 25.0, "InferiorTarget": 12.5},
        goals=[
            _goal("CentralTarget", "D99", ">=", 50.0, 2),
            _goal("SuperiorTarget", "D99", ">=", 25.0, 2),
            _goal("InferiorTarget", "D99", ">=", 12.5, 2),
            _goal("CentralTarget", "D10", "<=", 53.0, 3),
            _goal("SuperiorTarget", "D10", "<=", 35.0, 3),
            _goal("InferiorTarget", "D10", "<=", 25.0, 3),
        ],
        notes="AAPM TG-119 multitarget (Ezzell et al., Med Phys 36:5359, 2009), goals from the report's Table.",
    )


# -------------------------------------------------------------------------------- prostate
def _prostate_shapes() -> dict[str, _Shape]:
    g = TG119_PROSTATE_MM
    m = g["ptv_margin"]
    ctv = (g["ctv_semi_x"], g["ctv_semi_y"], g["ctv_semi_z"])
    r = g["rectum_radius"]
    body = _ellipse(0.0, 0.0, g["body_semi_x"], g["body_semi_y"], 2 * _N_VERTICES)
    return {
        "PTV": _Ellipsoid((0.0, 0.0, 0.0), (ctv[0] + m, ctv[1] + m, ctv[2] + m)),
        "CTV": _Ellipsoid((0.0, 0.0, 0.0), ctv),
        "Rectum": _Prism(_ellipse(0.0, g["rectum_y"], r, r), -g["rectum_half_length"], g["rectum_half_length"]),
        "Bladder": _Ellipsoid(
            (0.0, g["bladder_y"], g["bladder_z"]), (g["bladder_semi_x"], g["bladder_semi_y"], g["bladder_semi_z"])
        ),
        "BODY": _Prism(body, -g["body_half_length"], g["body_half_length"]),
    }


def prostate_contours(grid: Grid) -> dict[str, list[np.ndarray]]:
    """Analytic mock-prostate polygons (LPS mm) on every slice plane of ``grid``."""
    return _contours(_prostate_shapes(), grid)


def prostate_analytic_volumes_cc() -> dict[str, float]:
    """Exact volumes (cm³) of the mock-prostate structures."""
    g = TG119_PROSTATE_MM
    m = g["ptv_margin"]
    return {
        "PTV": _ellipsoid_cc((g["ctv_semi_x"] + m, g["ctv_semi_y"] + m, g["ctv_semi_z"] + m)),
        "CTV": _ellipsoid_cc((g["ctv_semi_x"], g["ctv_semi_y"], g["ctv_semi_z"])),
        "Rectum": math.pi * g["rectum_radius"] ** 2 * 2 * g["rectum_half_length"] / 1000.0,
        "Bladder": _ellipsoid_cc((g["bladder_semi_x"], g["bladder_semi_y"], g["bladder_semi_z"])),
        "BODY": math.pi * g["body_semi_x"] * g["body_semi_y"] * 2 * g["body_half_length"] / 1000.0,
    }


def prostate_phantom(spacing_mm: Spacing = DEFAULT_SPACING_MM) -> Study:
    """The TG-119 mock prostate: CTV/PTV ellipsoids, rectum cylinder behind them, bladder above
    and in front, in an elliptical water pelvis (see the module docstring)."""
    g = TG119_PROSTATE_MM
    grid = phantom_grid(g["body_semi_x"], g["body_semi_y"], g["body_half_length"], spacing_mm)
    kinds = {
        "PTV": StructureKind.target,
        "CTV": StructureKind.target,
        "Rectum": StructureKind.organ,
        "Bladder": StructureKind.organ,
        "BODY": StructureKind.external,
    }
    return water_study(
        grid,
        prostate_contours(grid),
        kinds,
        _COLOURS,
        "TG119PR",
        "TG119^Prostate",
        "rayrt TG-119 mock prostate phantom",
    )


def prostate_goal_order() -> MedicalOrder:
    """TG-119 mock prostate: 75.6 Gy in 42 fractions to the PTV, normalised to PTV D95 = 100 %
    (the coverage goal). Goals (Gy): PTV D95 >= 75.6, D5 <= 83; rectum D30 <= 70, D10 <= 75;
    bladder D30 <= 70, D10 <= 75."""
    return MedicalOrder(
        name="TG-119 mock prostate",
        prescription=Prescription(
            target="PTV",
            total_dose_gy=75.6,
            fractions=42,
            normalization=Normalization(metric="D95", structure="PTV", value_pct=100.0),
        ),
        goals=[
            _goal("PTV", "D95", ">=", 75.6, 2),
            _goal("PTV", "D5", "<=", 83.0, 3),
            _goal("Rectum", "D30", "<=", 70.0, 3),
            _goal("Rectum", "D10", "<=", 75.0, 3),
            _goal("Bladder", "D30", "<=", 70.0, 3),
            _goal("Bladder", "D10", "<=", 75.0, 3),
        ],
        notes="AAPM TG-119 mock prostate (Ezzell et al., Med Phys 36:5359, 2009), goals from the report's Table.",
    )


# --------------------------------------------------------------------------- head and neck
def _headneck_shapes() -> dict[str, _Shape]:
    g = TG119_HEADNECK_MM
    a, b = g["body_semi_x"] - g["skin_margin"], g["body_semi_y"] - g["skin_margin"]
    rc, yc = g["cord_radius"], g["cord_y"]
    ptv_xy = _horseshoe(a, b, yc + rc, yc, rc + g["cord_ptv_gap"])
    parotid = (g["parotid_semi_x"], g["parotid_semi_y"], g["parotid_semi_z"])
    body = _ellipse(0.0, 0.0, g["body_semi_x"], g["body_semi_y"], 2 * _N_VERTICES)
    return {
        "PTV": _Prism(ptv_xy, -g["ptv_half_length"], g["ptv_half_length"]),
        "SpinalCord": _Prism(_ellipse(0.0, yc, rc, rc), -g["cord_half_length"], g["cord_half_length"]),
        "Parotid_L": _Ellipsoid((g["parotid_x"], g["parotid_y"], g["parotid_z"]), parotid),
        "Parotid_R": _Ellipsoid((-g["parotid_x"], g["parotid_y"], g["parotid_z"]), parotid),
        "BODY": _Prism(body, -g["body_half_length"], g["body_half_length"]),
    }


def headneck_contours(grid: Grid) -> dict[str, list[np.ndarray]]:
    """Analytic mock head-and-neck polygons (LPS mm) on every slice plane of ``grid``."""
    return _contours(_headneck_shapes(), grid)


def headneck_analytic_volumes_cc() -> dict[str, float]:
    """Exact volumes (cm³) of the mock head-and-neck structures."""
    g = TG119_HEADNECK_MM
    a, b = g["body_semi_x"] - g["skin_margin"], g["body_semi_y"] - g["skin_margin"]
    rc, yc = g["cord_radius"], g["cord_y"]
    h = yc + rc
    ptv_area = _ellipse_area_below(a, b, h) - _disc_area_below(rc + g["cord_ptv_gap"], h - yc)
    parotid = _ellipsoid_cc((g["parotid_semi_x"], g["parotid_semi_y"], g["parotid_semi_z"]))
    return {
        "PTV": ptv_area * 2 * g["ptv_half_length"] / 1000.0,
        "SpinalCord": math.pi * rc**2 * 2 * g["cord_half_length"] / 1000.0,
        "Parotid_L": parotid,
        "Parotid_R": parotid,
        "BODY": math.pi * g["body_semi_x"] * g["body_semi_y"] * 2 * g["body_half_length"] / 1000.0,
    }


def headneck_phantom(spacing_mm: Spacing = DEFAULT_SPACING_MM) -> Study:
    """The TG-119 mock head and neck: a horseshoe PTV round the spinal cord and two parotids in
    an elliptical water neck (see the module docstring)."""
    g = TG119_HEADNECK_MM
    grid = phantom_grid(g["body_semi_x"], g["body_semi_y"], g["body_half_length"], spacing_mm)
    kinds = {
        "PTV": StructureKind.target,
        "SpinalCord": StructureKind.organ,
        "Parotid_L": StructureKind.organ,
        "Parotid_R": StructureKind.organ,
        "BODY": StructureKind.external,
    }
    return water_study(
        grid,
        headneck_contours(grid),
        kinds,
        _COLOURS,
        "TG119HN",
        "TG119^HeadNeck",
        "rayrt TG-119 mock head-and-neck phantom",
    )


def headneck_goal_order() -> MedicalOrder:
    """TG-119 mock head and neck: 50 Gy in 25 fractions to the PTV, normalised to PTV D90 = 100 %
    (the report prescribes to D90). Goals (Gy): PTV D90 >= 50, D99 >= 46.5, D20 <= 55; spinal
    cord max <= 40 (rank 1); each parotid D50 <= 20."""
    return MedicalOrder(
        name="TG-119 mock head and neck",
        prescription=Prescription(
            target="PTV",
            total_dose_gy=50.0,
            fractions=25,
            normalization=Normalization(metric="D90", structure="PTV", value_pct=100.0),
        ),
        goals=[
            _goal("SpinalCord", "max", "<=", 40.0, 1),
            _goal("PTV", "D90", ">=", 50.0, 2),
            _goal("PTV", "D99", ">=", 46.5, 2),
            _goal("PTV", "D20", "<=", 55.0, 3),
            _goal("Parotid_L", "D50", "<=", 20.0, 3),
            _goal("Parotid_R", "D50", "<=", 20.0, 3),
        ],
        notes="AAPM TG-119 mock head and neck (Ezzell et al., Med Phys 36:5359, 2009), goals from the report's Table.",
    )


# -------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class TG119Case:
    """One TG-119 test: its phantom builder (spacing in mm -> :class:`Study`), the analytic
    polygons on a grid (written to the RTSTRUCT), its goal order and its analytic volumes (cm³)."""

    name: str
    title: str
    phantom: Callable[[Spacing], Study]
    contours: Callable[[Grid], dict[str, list[np.ndarray]]]
    order: Callable[[], MedicalOrder]
    analytic_volumes_cc: Callable[[], dict[str, float]]


TG119_CASES: dict[str, TG119Case] = {
    "cshape": TG119Case(
        "cshape", "C-shape (easy goals)", tg119_phantom, tg119_contours, cshape_goal_order, tg119_analytic_volumes_cc
    ),
    "cshape_hard": TG119Case(
        "cshape_hard",
        "C-shape (hard goals)",
        tg119_phantom,
        tg119_contours,
        cshape_hard_goal_order,
        tg119_analytic_volumes_cc,
    ),
    "multitarget": TG119Case(
        "multitarget",
        "multitarget",
        multitarget_phantom,
        multitarget_contours,
        multitarget_goal_order,
        multitarget_analytic_volumes_cc,
    ),
    "prostate": TG119Case(
        "prostate",
        "mock prostate",
        prostate_phantom,
        prostate_contours,
        prostate_goal_order,
        prostate_analytic_volumes_cc,
    ),
    "headneck": TG119Case(
        "headneck",
        "mock head and neck",
        headneck_phantom,
        headneck_contours,
        headneck_goal_order,
        headneck_analytic_volumes_cc,
    ),
}
"""The TG-119 tests by name: cshape, cshape_hard, multitarget, prostate, headneck."""


def _case(name: str) -> TG119Case:
    case = TG119_CASES.get(name)
    if case is None:
        raise InputError(
            f"unknown TG-119 case {name!r}: use one of {', '.join(TG119_CASES)}", kind="phantom", field="case"
        )
    return case


def tg119_case(name: str, spacing_mm: Spacing = DEFAULT_SPACING_MM) -> tuple[Study, MedicalOrder]:
    """The phantom (``spacing_mm`` (x, y, z) or one number) and the goal order of a TG-119 test."""
    case = _case(name)
    return case.phantom(spacing_mm), case.order()


def write_tg119_case(name: str, out_dir: str | Path, spacing_mm: Spacing = DEFAULT_SPACING_MM) -> Path:
    """Write a TG-119 test as DICOM (``CT/`` series + ``RS.dcm`` with the analytic polygons) and
    its goal order (``order.yaml``) into ``out_dir``, as :func:`rayrt.imaging.phantoms.write_tg119`."""
    import yaml

    case = _case(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = case.phantom(spacing_mm)
    write_study(study, out, contours=case.contours(study.primary.grid))
    order = case.order()
    (out / "order.yaml").write_text(yaml.safe_dump(order.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    return out
