"""Phantoms: CORT / matRad ``.mat`` loader and a built-in AAPM TG-119 C-shape generator.

matRad format (see ``shared/data/README.md``): ``ct.cube{1}`` relative electron density and
``ct.cubeHU{1}`` Hounsfield units, arrays indexed ``[y, x, z]``; ``ct.resolution.x/y/z`` in mm;
``cst`` rows (index, name, type, linear voxel indices 1-based in Fortran order, ...).
The loaded grid is axis-aligned LPS with ``array[k, j, i] = cube[j, i, k]``; voxel centres
come from ``ct.x/y/z`` when stored, otherwise the cube is centred on the origin.

TG-119 C-shape (Ezzell et al., Med Phys 36, 2009), analytic definition used here, read off the
CORT TG119.mat phantom (its Core and OuterTarget):

* BODY: water cylinder (0 HU) of radius 100 mm along z, ``|z| <= 70`` mm, air (-1000 HU) around.
* Core: cylinder of radius 10 mm on the axis, ``|z| <= 50`` mm.
* PTV: annulus ``15 mm <= r <= 37 mm`` limited to ``y <= 5`` mm (a C open towards +y,
  posterior), ``|z| <= 40`` mm; a 5 mm gap separates it from the core.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rayrt.domain.errors import InputError
from rayrt.domain.order import MedicalOrder, Normalization, ObjectiveKind, ObjectiveSpec, Prescription
from rayrt.domain.patient import ImageSeriesInfo, Structure, StructureKind
from rayrt.imaging.export import write_study
from rayrt.imaging.hu import red_to_hu
from rayrt.imaging.polygons import rasterize_polygons
from rayrt.imaging.study import StructureMask, Study
from rayrt.imaging.volume import Grid, Volume, as_vec3

__all__ = [
    "load_mat_phantom",
    "tg119_phantom",
    "tg119_order",
    "write_tg119",
    "tg119_analytic_volumes_cc",
    "tg119_contours",
    "TG119_GEOMETRY_MM",
    "phantom_grid",
    "water_study",
]

TG119_GEOMETRY_MM = {
    "body_radius": 100.0,
    "body_half_length": 70.0,
    "core_radius": 10.0,
    "core_half_length": 50.0,
    "ptv_inner_radius": 15.0,
    "ptv_outer_radius": 37.0,
    "ptv_y_max": 5.0,
    "ptv_half_length": 40.0,
}

_COLOURS = {"PTV": (255, 0, 0), "Core": (0, 128, 255), "BODY": (0, 200, 0)}


def _mat_scalar(v) -> float:
    return float(np.asarray(v).ravel()[0])


def _mat_str(v) -> str:
    a = np.asarray(v).ravel()
    return str(a[0]) if a.size else ""


def load_mat_phantom(path: str | Path) -> Study:
    """Load a CORT / matRad phantom (.mat) as a :class:`Study` with a CT (HU) and its structures.

    Without ``cubeHU`` the HU are derived from the density cube with the inverse of the
    standard curve :data:`rayrt.imaging.hu.STANDARD_HU_TO_RED` (noted in ``warnings``). The
    density cube itself is kept in ``primary.meta['relative_electron_density']`` ([k, j, i]).
    """
    import scipy.io as sio
    from pydicom.uid import generate_uid

    path = Path(path)
    if not path.is_file():
        raise InputError(f"phantom file not found: {path}", kind="phantom", status=404)
    try:
        m = sio.loadmat(path)
    except Exception as exc:
        raise InputError(f"{path.name} is not a MATLAB 5 .mat file readable by scipy ({exc})", kind="phantom") from None
    if "ct" not in m or "cst" not in m:
        raise InputError(f"{path.name} has no 'ct' and 'cst' variables: not a matRad phantom", kind="phantom")
    ct = m["ct"][0, 0]
    names = ct.dtype.names or ()
    warnings: list[str] = []
    cube = np.asarray(ct["cube"].ravel()[0], dtype=np.float32) if "cube" in names else None
    hu = np.asarray(ct["cubeHU"].ravel()[0], dtype=np.float32) if "cubeHU" in names else None
    if hu is None:
        if cube is None:
            raise InputError(f"{path.name}: ct has neither cube nor cubeHU", kind="phantom")
        hu = red_to_hu(cube)
        warnings.append(
            "no HU cube in the phantom: HU derived from relative electron density with the inverse of the standard "
            "HU->density curve (rayrt.imaging.hu.STANDARD_HU_TO_RED)"
        )
    res = ct["resolution"][0, 0]
    spacing = (_mat_scalar(res["x"]), _mat_scalar(res["y"]), _mat_scalar(res["z"]))
    ny, nx, nz = hu.shape
    if all(n in names for n in ("x", "y", "z")):
        origin = (float(np.ravel(ct["x"])[0]), float(np.ravel(ct["y"])[0]), float(np.ravel(ct["z"])[0]))
    else:
        origin = (-(nx - 1) / 2 * spacing[0], -(ny - 1) / 2 * spacing[1], -(nz - 1) / 2 * spacing[2])
    grid = Grid(shape=(nz, ny, nx), spacing_mm=spacing, origin_mm=origin)
    hu_kji = np.ascontiguousarray(np.transpose(hu, (2, 0, 1)))
    study_uid, for_uid, series_uid = generate_uid(), generate_uid(), generate_uid()
    description = f"matRad phantom {path.name}"
    meta = dict(
        modality="CT",
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        frame_of_reference_uid=for_uid,
        patient_id=path.stem,
        patient_name=f"{path.stem}^Phantom",
        series_description=description,
        num_files=0,
        source=str(path),
    )
    if cube is not None:
        meta["relative_electron_density"] = np.ascontiguousarray(np.transpose(cube, (2, 0, 1)))
    image = Volume(hu_kji, grid, "HU", meta)
    structures: list[StructureMask] = []
    for n, row in enumerate(m["cst"], start=1):
        name = _mat_str(row[1]) or f"ROI_{n}"
        typ = _mat_str(row[2]).upper()
        idx = np.asarray(row[3].ravel()[0] if row[3].dtype == object else row[3], dtype=np.int64).ravel() - 1
        if idx.size and (idx.min() < 0 or idx.max() >= hu.size):
            raise InputError(f"{path.name}: structure '{name}' has voxel indices outside the cube", kind="phantom")
        yy, xx, zz = np.unravel_index(idx, (ny, nx, nz), order="F")
        mask = np.zeros(grid.shape, dtype=bool)
        mask[zz, yy, xx] = True
        kind = StructureKind.target if typ == "TARGET" else StructureKind.from_dicom("", name)
        if kind is not StructureKind.target and name.upper() not in ("BODY", "EXTERNAL", "SKIN"):
            kind = StructureKind.organ
        st = Structure(
            name=name,
            kind=kind,
            roi_number=n,
            num_voxels=int(idx.size),
            volume_cc=idx.size * grid.voxel_volume_cc,
            source="phantom",
            colour=_COLOURS.get(name, (255, 128, 0)),
        )
        structures.append(StructureMask(structure=st, mask=mask))
    info = ImageSeriesInfo(
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        frame_of_reference_uid=for_uid,
        modality="CT",
        description=description,
        shape=grid.shape,
        spacing_mm=grid.spacing_mm,
        origin_mm=grid.origin_mm,
        num_files=0,
        warnings=list(warnings),
    )
    return Study(
        patient_id=path.stem,
        patient_name=f"{path.stem}^Phantom",
        study_instance_uid=study_uid,
        frame_of_reference_uid=for_uid,
        series=[info],
        images={series_uid: image},
        primary_uid=series_uid,
        structures=structures,
        warnings=warnings,
        source=path.parent,
    )


def _disc_area_below(r: float, h: float) -> float:
    """Area (mm²) of the disc of radius r (centred at 0) where y <= h."""
    if h <= -r:
        return 0.0
    if h >= r:
        return math.pi * r * r
    return r * r * math.acos(-h / r) + h * math.sqrt(r * r - h * h)


def tg119_analytic_volumes_cc() -> dict[str, float]:
    """Exact volumes (cm³) of the analytic TG-119 structures (``PTV``, ``Core``, ``BODY``)."""
    g = TG119_GEOMETRY_MM
    ptv_area = _disc_area_below(g["ptv_outer_radius"], g["ptv_y_max"]) - _disc_area_below(
        g["ptv_inner_radius"], g["ptv_y_max"]
    )
    return {
        "PTV": ptv_area * 2 * g["ptv_half_length"] / 1000.0,
        "Core": math.pi * g["core_radius"] ** 2 * 2 * g["core_half_length"] / 1000.0,
        "BODY": math.pi * g["body_radius"] ** 2 * 2 * g["body_half_length"] / 1000.0,
    }


def _circle(r: float, n: int) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _c_shape(r_in: float, r_out: float, y_max: float, n: int) -> np.ndarray:
    """Closed polygon of {r_in <= r <= r_out, y <= y_max} (a C open towards +y)."""
    a_o = math.asin(y_max / r_out)
    a_i = math.asin(y_max / r_in)
    t_o = np.linspace(math.pi - a_o, 2 * math.pi + a_o, n)
    t_i = np.linspace(2 * math.pi + a_i, math.pi - a_i, max(16, int(n * r_in / r_out)))
    outer = np.stack([r_out * np.cos(t_o), r_out * np.sin(t_o)], axis=1)
    inner = np.stack([r_in * np.cos(t_i), r_in * np.sin(t_i)], axis=1)
    return np.concatenate([outer, inner])


def tg119_contours(grid: Grid) -> dict[str, list[np.ndarray]]:
    """Analytic TG-119 polygons (LPS mm) on every slice plane of ``grid`` inside each structure's z range.

    Circles have 0.5-degree vertices (inscribed-polygon area error below 0.01 %).
    """
    g = TG119_GEOMETRY_MM
    shapes = {
        "PTV": (_c_shape(g["ptv_inner_radius"], g["ptv_outer_radius"], g["ptv_y_max"], 540), g["ptv_half_length"]),
        "Core": (_circle(g["core_radius"], 720), g["core_half_length"]),
        "BODY": (_circle(g["body_radius"], 720), g["body_half_length"]),
    }
    nk = grid.shape[0]
    kji = np.zeros((nk, 3))
    kji[:, 0] = np.arange(nk)
    plane_z = grid.index_to_world(kji)[:, 2]
    out: dict[str, list[np.ndarray]] = {}
    for name, (xy, half) in shapes.items():
        polys = []
        for z in plane_z[np.abs(plane_z) <= half + 1e-9]:
            polys.append(np.column_stack([xy, np.full(xy.shape[0], z)]))
        out[name] = polys
    return out


def phantom_grid(
    half_x_mm: float, half_y_mm: float, half_z_mm: float, spacing_mm: tuple[float, float, float] | float
) -> Grid:
    """A grid centred on a phantom whose body spans +-half_x/y/z mm: an even number of voxels
    in-plane covering the body plus 10 mm, slices spanning exactly the body length. ``spacing_mm``
    is (x, y, z) in mm, or one number for an isotropic grid (each positive, at most 20 mm)."""
    if isinstance(spacing_mm, (int, float, np.integer, np.floating)):  # one number: isotropic
        values = [float(spacing_mm)] * 3
    else:
        values = [float(s) for s in spacing_mm]
    if len(values) != 3 or any(not s > 0 or s > 20 for s in values):
        raise InputError(f"phantom spacing must be three positive values up to 20 mm, got {spacing_mm}", kind="phantom")
    sp = as_vec3(values)

    def n_even(extent: float, s: float) -> int:
        n = int(math.ceil(extent / s - 1e-9))
        return max(2, n + (n % 2))

    nx, ny = n_even(2 * (half_x_mm + 10.0), sp[0]), n_even(2 * (half_y_mm + 10.0), sp[1])
    nz = max(1, int(round(2 * half_z_mm / sp[2])))
    origin = (-(nx - 1) / 2 * sp[0], -(ny - 1) / 2 * sp[1], -(nz - 1) / 2 * sp[2])
    return Grid(shape=(nz, ny, nx), spacing_mm=sp, origin_mm=origin)


def water_study(
    grid: Grid,
    contours: dict[str, list[np.ndarray]],
    kinds: dict[str, StructureKind],
    colours: dict[str, tuple[int, int, int]],
    patient_id: str,
    patient_name: str,
    description: str,
) -> Study:
    """A phantom :class:`Study`: a water CT (0 HU inside BODY, -1000 HU outside) and one structure
    per entry of ``kinds`` (in that order), rasterised from ``contours`` at voxel centres."""
    from pydicom.uid import generate_uid

    masks = {
        name: np.ascontiguousarray(
            np.broadcast_to(
                rasterize_polygons(contours[name], grid, plane_spacing_mm=float(grid.spacing[2])), grid.shape
            )
        )
        for name in kinds
    }
    hu = np.where(masks["BODY"], 0.0, -1000.0).astype(np.float32)
    study_uid, for_uid, series_uid = generate_uid(), generate_uid(), generate_uid()
    meta = dict(
        modality="CT",
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        frame_of_reference_uid=for_uid,
        patient_id=patient_id,
        patient_name=patient_name,
        series_description=description,
        num_files=0,
    )
    structures = []
    for n, (name, kind) in enumerate(kinds.items(), start=1):
        mask = masks[name]
        st = Structure(
            name=name,
            kind=kind,
            colour=colours.get(name, (255, 128, 0)),
            roi_number=n,
            num_voxels=int(mask.sum()),
            volume_cc=float(mask.sum()) * grid.voxel_volume_cc,
            source="phantom",
        )
        structures.append(StructureMask(structure=st, mask=mask))
    info = ImageSeriesInfo(
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        frame_of_reference_uid=for_uid,
        modality="CT",
        description=description,
        shape=grid.shape,
        spacing_mm=grid.spacing_mm,
        origin_mm=grid.origin_mm,
        num_files=0,
    )
    return Study(
        patient_id=patient_id,
        patient_name=patient_name,
        study_instance_uid=study_uid,
        frame_of_reference_uid=for_uid,
        series=[info],
        images={series_uid: Volume(hu, grid, "HU", meta)},
        primary_uid=series_uid,
        structures=structures,
    )


def tg119_phantom(spacing_mm: tuple[float, float, float] | float = (3.0, 3.0, 2.5)) -> Study:
    """The TG-119 C-shape phantom (water cylinder, C-shaped PTV around a core), no external data needed.

    ``spacing_mm`` is (x, y, z) in mm, or one number for an isotropic grid. The grid is centred
    on the phantom with an even number of voxels per axis, covers the body plus 10 mm in-plane
    and exactly its length along z; voxel membership is decided at voxel centres.
    """
    g = TG119_GEOMETRY_MM
    grid = phantom_grid(g["body_radius"], g["body_radius"], g["body_half_length"], spacing_mm)
    return water_study(
        grid,
        tg119_contours(grid),
        {"PTV": StructureKind.target, "Core": StructureKind.organ, "BODY": StructureKind.external},
        _COLOURS,
        "TG119",
        "TG119^CShape",
        "rayrt TG-119 C-shape phantom",
    )


def tg119_order() -> MedicalOrder:
    """The TG-119 C-shape planning goals as a medical order (50 Gy in 25 fractions, D95 normalisation)."""
    return MedicalOrder(
        name="TG-119 C-shape",
        prescription=Prescription(
            target="PTV",
            total_dose_gy=50.0,
            fractions=25,
            normalization=Normalization(metric="D95", structure="PTV", value_pct=100.0),
        ),
        objectives=[
            ObjectiveSpec(structure="PTV", kind=ObjectiveKind.squared_deviation, dose_gy=50.0, priority=1000.0),
            ObjectiveSpec(structure="PTV", kind=ObjectiveKind.min_dvh, dose_gy=50.0, volume_pct=95.0, priority=100.0),
            ObjectiveSpec(structure="PTV", kind=ObjectiveKind.max_dvh, dose_gy=55.0, volume_pct=10.0, priority=100.0),
            ObjectiveSpec(structure="Core", kind=ObjectiveKind.max_dvh, dose_gy=25.0, volume_pct=10.0, priority=100.0),
            ObjectiveSpec(structure="Core", kind=ObjectiveKind.squared_overdose, dose_gy=25.0, priority=300.0),
            ObjectiveSpec(structure="BODY", kind=ObjectiveKind.squared_overdose, dose_gy=30.0, priority=100.0),
        ],
        notes="AAPM TG-119 C-shape (Ezzell et al., Med Phys 36, 2009). Goals: PTV D95 >= 50 Gy, PTV D10 <= 55 Gy, "
        "core D10 <= 25 Gy (easy); the hard variant asks core D10 <= 10 Gy.",
    )


def write_tg119(out_dir: str | Path, spacing_mm: tuple[float, float, float] | float = (3.0, 3.0, 2.5)) -> Path:
    """Write the TG-119 phantom as DICOM (``CT/`` series + ``RS.dcm``) and its ``order.yaml`` into ``out_dir``."""
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = tg119_phantom(spacing_mm)
    write_study(study, out, contours=tg119_contours(study.primary.grid))
    order = tg119_order()
    (out / "order.yaml").write_text(yaml.safe_dump(order.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    return out
