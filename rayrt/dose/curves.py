"""Commissioning curves ("dose measurement characteristic data") of a machine, computed by the engine.

What a physicist measures in a water tank when commissioning a linac, computed here with the
same dose engine that plans are computed with (:func:`rayrt.dose.aperture.aperture_dose` of a
jaw/MLC field on a voxelised density phantom), so a machine's curves are exactly what its plans
will see:

* **PDD** (percentage depth dose) on the central axis of square fields (default 3x3, 5x5, 10x10,
  20x20 cm² at the surface), SSD 100 cm (source-surface distance 1000 mm: the isocenter lies on
  the water surface), 100 % at the depth of maximum dose ``dmax`` of each field;
* **lateral profiles** (crossline, along the leaf-travel axis X of the beam-limiting device) at
  several depths (default dmax, 50, 100, 200 mm), 100 % on the central axis;
* the same in two **slab phantoms**: water with a lung-density (relative electron density 0.25)
  or bone-density (1.8) slab between ``slab_mm`` depths (default 30-80 mm);
* **TPR20,10** (tissue-phantom ratio, IAEA TRS-398 beam-quality index) computed directly in the
  SAD set-up: the dose on the axis of a 10 x 10 cm² field (at the isocenter) with the isocenter at
  20 cm depth over the dose with it at 10 cm depth. The TRS-398 empirical conversion from
  PDD20,10, TPR20,10 = 1.2661 PDD20,10 - 0.0595, is reported alongside as a cross-check.

Geometry (DICOM LPS, head-first supine, IEC 61217): gantry 0, collimator 0, couch 0; the beam
travels along +y (anterior -> posterior), so depth is y; the crossline axis is x; the water
surface is the plane y = 0 through the isocenter at the origin. The dose is scored on a 2-D plane
(x, depth) at z = 0 with voxel centres at depth k * resolution_mm (k = 1, 2, ...) and at lateral
positions i * resolution_mm (i = -N..N): every machine's curves computed with the same
``resolution_mm`` and extent share the same depth and position grids, so two machines can be
compared point by point (gamma) without resampling.

All doses are computed per MU and then normalised; the absolute dose at dmax (Gy/MU) of each
field is kept (``dmax_gy_per_mu``), i.e. the output factors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rayrt.domain.errors import InputError
from rayrt.domain.machine import MachineModel

#: densities of the slab phantoms (relative electron density)
LUNG_DENSITY = 0.25
BONE_DENSITY = 1.8
DEFAULT_FIELDS_MM = (30.0, 50.0, 100.0, 200.0)
DEFAULT_DEPTHS_MM: tuple[float | str, ...] = ("dmax", 50.0, 100.0, 200.0)
SSD_MM = 1000.0
REFERENCE_FIELD_MM = 100.0


# --------------------------------------------------------------------------- models
class DepthDose(BaseModel):
    """Central-axis depth dose of one square field on the curves' shared depth grid."""

    model_config = ConfigDict(extra="forbid")
    field_mm: float = Field(description="side of the square field at the surface (= isocenter plane, SSD setup), mm")
    dose_pct: list[float] = Field(description="dose in % of the maximum, one value per CommissioningCurves.depths_mm")
    dmax_mm: float = Field(description="depth of maximum dose (mm), parabolic refinement around the maximum")
    dmax_gy_per_mu: float = Field(description="absolute dose at dmax (Gy per MU): the field's output")
    depths_mm: list[float] = Field(default_factory=list, exclude=True, repr=False)

    def pdd_at(self, depth_mm: float) -> float:
        """PDD (%) at any depth inside the grid (linear interpolation)."""
        return float(np.interp(depth_mm, self.depths_mm, self.dose_pct))


class LateralProfile(BaseModel):
    """Crossline profile of one square field at one depth on the shared position grid."""

    model_config = ConfigDict(extra="forbid")
    field_mm: float
    depth_label: str = Field(description="the requested depth: 'dmax' or the depth in mm as text")
    depth_mm: float = Field(description="the actual depth of the profile (mm)")
    dose_pct: list[float] = Field(
        description="dose in % of the central-axis dose, one value per CommissioningCurves.positions_mm"
    )
    cax_gy_per_mu: float = Field(description="absolute central-axis dose at this depth (Gy per MU)")


class PhantomCurves(BaseModel):
    """PDDs and profiles in one phantom (water, or water with a slab)."""

    model_config = ConfigDict(extra="forbid")
    phantom: str = Field(description="'water', 'lung_slab' or 'bone_slab'")
    slab_density: float | None = Field(default=None, description="relative electron density of the slab")
    slab_start_mm: float | None = None
    slab_end_mm: float | None = None
    pdds: list[DepthDose]
    profiles: list[LateralProfile]

    def pdd(self, field_mm: float) -> DepthDose:
        for p in self.pdds:
            if abs(p.field_mm - field_mm) < 1e-6:
                return p
        raise KeyError(
            f"no PDD for a {field_mm:g} mm field in {self.phantom}; fields: {[p.field_mm for p in self.pdds]}"
        )

    def profile(self, field_mm: float, depth: float | str) -> LateralProfile:
        label = _depth_label(depth)
        for p in self.profiles:
            if abs(p.field_mm - field_mm) < 1e-6 and p.depth_label == label:
                return p
        raise KeyError(f"no profile for a {field_mm:g} mm field at depth {label} in {self.phantom}")


class CommissioningCurves(BaseModel):
    """A machine's commissioning data on shared depth / position grids (see the module doc)."""

    model_config = ConfigDict(extra="forbid")
    machine: str
    nominal_energy_mv: float
    fff: bool = False
    ssd_mm: float = SSD_MM
    resolution_mm: float
    depths_mm: list[float] = Field(description="depths (mm) of every PDD value: k * resolution_mm, k = 1, 2, ...")
    positions_mm: list[float] = Field(
        description="crossline positions (mm at the profile depth) of every profile value"
    )
    fields_mm: list[float]
    profile_depths: list[str] = Field(description="requested profile depths: 'dmax' or mm as text")
    water: PhantomCurves
    slabs: list[PhantomCurves] = Field(default_factory=list)
    tpr2010: float | None = Field(default=None, description="TPR20,10 of the 10 x 10 field computed in the SAD setup")
    seconds: float = 0.0

    def model_post_init(self, __context) -> None:  # give every PDD its depth axis (not serialised twice)
        for ph in [self.water, *self.slabs]:
            for p in ph.pdds:
                p.depths_mm = self.depths_mm

    def phantom(self, name: str) -> PhantomCurves:
        for ph in [self.water, *self.slabs]:
            if ph.phantom == name:
                return ph
        raise KeyError(f"no phantom {name!r}; have {[p.phantom for p in [self.water, *self.slabs]]}")


class BeamQuality(BaseModel):
    """Beam-quality summary of the reference (10 x 10 cm², SSD 100 cm) field."""

    model_config = ConfigDict(extra="forbid")
    reference_field_mm: float
    dmax_mm: float
    pdd10_pct: float
    pdd20_pct: float
    tpr2010: float = Field(description="computed in the SAD setup (isocenter at 10 and 20 cm depth)")
    tpr2010_from_pdd: float = Field(description="TRS-398: 1.2661 * PDD20/PDD10 - 0.0595")
    penumbra_80_20_mm: float | None = Field(description="80-20 % penumbra at 10 cm depth, mean of both edges (mm)")


# --------------------------------------------------------------------------- helpers
def _depth_label(depth: float | str) -> str:
    if isinstance(depth, str):
        if depth.strip().lower() != "dmax":
            try:
                return f"{float(depth):g}"
            except ValueError:
                raise InputError(
                    f"profile depth must be a number (mm) or 'dmax', got {depth!r}", field="depths_mm"
                ) from None
        return "dmax"
    return f"{float(depth):g}"


def refine_maximum(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Position and value of the maximum of sampled y(x), refined by a parabola through 3 points."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    i = int(np.argmax(y))
    if 0 < i < y.size - 1:
        y0, y1, y2 = y[i - 1], y[i], y[i + 1]
        den = y0 - 2 * y1 + y2
        if den < 0:
            t = 0.5 * (y0 - y2) / den  # in samples, within (-0.5, 0.5)
            t = float(np.clip(t, -0.5, 0.5))
            h = x[i + 1] - x[i]
            return float(x[i] + t * h), float(y1 - 0.25 * (y0 - y2) * t)
    return float(x[i]), float(y[i])


def penumbra_80_20(positions_mm: Sequence[float], profile_pct: Sequence[float]) -> float:
    """Mean 80 %-20 % penumbra width (mm) of both edges of a profile normalised to 100 % on the axis.

    Each edge is the distance between the outermost crossings of 80 % and 20 % (linear
    interpolation between samples), searched outwards from the central axis.
    """
    x = np.asarray(positions_mm, float)
    p = np.asarray(profile_pct, float)
    widths = []
    for side in (1, -1):
        sel = (x * side) >= 0
        xs = x[sel] * side
        order = np.argsort(xs)
        xs, ps = xs[order], p[sel][order]
        w = []
        for level in (80.0, 20.0):
            below = np.nonzero(ps < level)[0]
            if below.size == 0 or below[0] == 0:
                raise InputError(f"profile never falls below {level:g} % on one side; widen the lateral extent")
            j = int(below[0])
            x0, x1, p0, p1 = xs[j - 1], xs[j], ps[j - 1], ps[j]
            w.append(x0 + (p0 - level) / (p0 - p1) * (x1 - x0))
        widths.append(w[1] - w[0])
    return float(np.mean(widths))


def _fields(fields_mm: Sequence[float]) -> list[float]:
    out = sorted({float(f) for f in fields_mm})
    if not out:
        raise InputError("give at least one field size", field="fields_mm")
    for f in out:
        if not (5.0 <= f <= 400.0) or not math.isfinite(f):
            raise InputError(
                f"field size {f:g} mm is outside 5..400 mm (square side at the surface)", field="fields_mm"
            )
    return out


def _check_machine_field(machine: MachineModel, field_mm: float) -> None:
    lim = machine.limits
    if field_mm > lim.max_field_x_mm + 1e-6 or field_mm > lim.max_field_y_mm + 1e-6:
        raise InputError(
            f"a {field_mm:g} mm field exceeds machine {machine.name}'s maximum field "
            f"{lim.max_field_x_mm:g} x {lim.max_field_y_mm:g} mm",
            field="fields_mm",
        )


# --------------------------------------------------------------------------- the engine call
def _water_box(
    resolution_mm: float,
    x_half_mm: float,
    depth_mm: float,
    z_half_mm: float,
    surface_y_mm: float,
    slab: tuple[float, float, float] | None,
):
    """Relative-electron-density box: air (0) above the surface y = surface_y_mm, water below.

    Voxel edges (not centres) lie on the surface and on the slab faces, so the density steps are
    where they should be. ``slab`` = (density, start depth, end depth) in mm below the surface.
    """
    from rayrt.dose.phantom import DENSITY
    from rayrt.imaging.volume import Grid, Volume

    h = float(resolution_mm)
    nx = 2 * int(math.ceil(x_half_mm / h)) + 1
    nz = 2 * int(math.ceil(z_half_mm / h)) + 1
    n_air = 2
    ny = n_air + int(math.ceil(depth_mm / h)) + 1
    # voxel j spans [surface + (j - n_air) h, surface + (j - n_air + 1) h]
    y_centres = surface_y_mm + (np.arange(ny) - n_air + 0.5) * h
    depth = y_centres - surface_y_mm
    rho_y = np.where(depth > 0, 1.0, 0.0).astype(np.float32)
    if slab is not None:
        dens, a, b = slab
        rho_y[(depth > a) & (depth < b)] = dens
    arr = np.broadcast_to(rho_y[None, :, None], (nz, ny, nx)).copy()
    origin = (-(nx // 2) * h, float(y_centres[0]), -(nz // 2) * h)
    grid = Grid(shape=(nz, ny, nx), spacing_mm=(h, h, h), origin_mm=origin)
    return Volume(arr, grid, DENSITY, {"phantom": "water_box" if slab is None else f"slab_{slab[0]:g}"})


def _field_beam(machine: MachineModel, field_mm: float, isocenter_mm: tuple[float, float, float]):
    """A gantry-0 beam with one segment: a square field of side ``field_mm`` at the isocenter plane.

    The field is shaped by the jaws where the machine has them, and by the MLC (leaves open to the
    field edge on every pair that overlaps it, closed at the field's centre line elsewhere); with no
    X jaws the MLC alone defines X (Agility-like), with no jaws at all the MLC defines both
    (Halcyon-like; the Y edge then falls on the nearest leaf boundary outside the field).
    """
    from rayrt.domain.plan import Beam, Segment

    half = field_mm / 2.0
    b = machine.mlc.boundaries
    n = machine.mlc.num_pairs
    open_pair = (b[1:] > -half + 1e-6) & (b[:-1] < half - 1e-6)
    x1 = np.where(open_pair, -half, 0.0)
    x2 = np.where(open_pair, half, 0.0)
    if not open_pair.any():
        raise InputError(f"a {field_mm:g} mm field opens no leaf pair of machine {machine.name}", field="fields_mm")
    seg = Segment(
        x1_mm=[float(v) for v in x1],
        x2_mm=[float(v) for v in x2],
        jaw_x_mm=None if machine.jaw_x is None else (-half, half),
        jaw_y_mm=None if machine.jaw_y is None else (-half, half),
        mu=1.0,
    )
    assert len(seg.x1_mm) == n
    return Beam(
        name=f"{field_mm:g}mm",
        number=1,
        gantry_deg=0.0,
        collimator_deg=0.0,
        couch_deg=0.0,
        isocenter_mm=isocenter_mm,
        segments=[seg],
    )


def _plane_dose(machine: MachineModel, density, beam, dose_grid, engine_options: dict | None = None) -> np.ndarray:
    """Dose (Gy per MU) of the beam's segments on ``dose_grid``: the engine's aperture dose
    (:func:`rayrt.dose.aperture.aperture_dose`, Dij of a bixel grid over the field times the
    aperture fluence, head scatter included)."""
    from rayrt.dose.aperture import aperture_dose

    arr = aperture_dose(density, dose_grid, beam, None, machine, **(engine_options or {}))
    return np.asarray(arr, dtype=np.float64).reshape(dose_grid.shape)


def _phantom_curves(
    machine: MachineModel,
    name: str,
    slab: tuple[float, float, float] | None,
    fields: list[float],
    depth_labels: list[str],
    resolution_mm: float,
    depths: np.ndarray,
    positions: np.ndarray,
    x_half_box: float,
    z_half_box: float,
    engine_options: dict | None = None,
) -> PhantomCurves:
    from rayrt.imaging.volume import Grid

    h = resolution_mm
    max_depth = float(depths[-1])
    plane = Grid(
        shape=(1, depths.size, positions.size),
        spacing_mm=(h, h, h),
        origin_mm=(float(positions[0]), float(depths[0]), 0.0),
    )
    density = _water_box(h, x_half_box, max_depth + 2 * h, z_half_box, 0.0, slab)
    pdds, profiles = [], []
    for f in fields:
        beam = _field_beam(machine, f, (0.0, 0.0, 0.0))
        dose = _plane_dose(machine, density, beam, plane, engine_options)[0]  # [depth, x]
        ic = int(np.argmin(np.abs(positions)))
        cax = dose[:, ic]
        dmax, dmax_val = refine_maximum(depths, cax)
        if dmax_val <= 0:
            raise InputError(f"machine {machine.name}: the {f:g} mm field gives no dose on the axis", field="machine")
        pdds.append(
            DepthDose(field_mm=f, dose_pct=(100.0 * cax / dmax_val).tolist(), dmax_mm=dmax, dmax_gy_per_mu=dmax_val)
        )
        for label in depth_labels:
            d = dmax if label == "dmax" else float(label)
            # linear interpolation between the two depth rows around d
            t = (d - depths[0]) / h
            k0 = int(np.clip(np.floor(t), 0, depths.size - 2))
            w = t - k0
            row = (1 - w) * dose[k0] + w * dose[k0 + 1]
            c = float((1 - w) * cax[k0] + w * cax[k0 + 1])
            if c <= 0:
                raise InputError(f"no dose on the axis of the {f:g} mm field at {d:g} mm", field="depths_mm")
            profiles.append(
                LateralProfile(
                    field_mm=f, depth_label=label, depth_mm=d, dose_pct=(100.0 * row / c).tolist(), cax_gy_per_mu=c
                )
            )
    if slab is None:
        return PhantomCurves(phantom=name, pdds=pdds, profiles=profiles)
    return PhantomCurves(
        phantom=name, slab_density=slab[0], slab_start_mm=slab[1], slab_end_mm=slab[2], pdds=pdds, profiles=profiles
    )


def tpr20_10(
    machine: MachineModel,
    resolution_mm: float = 2.0,
    field_mm: float = REFERENCE_FIELD_MM,
    engine_options: dict | None = None,
) -> float:
    """TPR20,10 in the SAD setup: D(isocenter at 20 cm depth) / D(isocenter at 10 cm depth), field at the isocenter."""
    from rayrt.imaging.volume import Grid

    h = float(resolution_mm)
    vals = []
    for depth in (200.0, 100.0):
        density = _water_box(h, field_mm / 2 + 60.0, depth + 60.0, field_mm / 2 + 60.0, -depth, None)
        beam = _field_beam(machine, field_mm, (0.0, 0.0, 0.0))
        point = Grid(shape=(1, 1, 1), spacing_mm=(h, h, h), origin_mm=(0.0, 0.0, 0.0))
        vals.append(float(_plane_dose(machine, density, beam, point, engine_options).ravel()[0]))
    if vals[1] <= 0:
        raise InputError(f"machine {machine.name}: no dose at 10 cm depth in the TPR setup", field="machine")
    return vals[0] / vals[1]


def commissioning_curves(
    machine: MachineModel,
    *,
    fields_mm: Sequence[float] = DEFAULT_FIELDS_MM,
    depths_mm: Sequence[float | str] = DEFAULT_DEPTHS_MM,
    slab: bool = True,
    slab_mm: tuple[float, float] = (30.0, 80.0),
    resolution_mm: float = 2.0,
    max_depth_mm: float = 300.0,
    lateral_margin_mm: float = 40.0,
    tpr: bool = True,
    engine_options: dict | None = None,
) -> CommissioningCurves:
    """PDDs and crossline profiles of square fields at SSD 100 cm in water (and slab phantoms).

    ``fields_mm``: square field sides (mm at the surface = isocenter plane); ``depths_mm``: profile
    depths in mm or ``"dmax"`` (each field's own depth of maximum); ``slab``: also compute the
    lung (0.25) and bone (1.8) slab phantoms with the slab between ``slab_mm`` depths;
    ``resolution_mm``: spacing of the shared depth/position grids; ``max_depth_mm``: PDD depth
    range; positions extend ``lateral_margin_mm`` beyond the geometric edge of the largest field
    at the deepest profile depth. ``tpr``: also compute TPR20,10 (SAD setup). ``engine_options``:
    keyword arguments for :func:`rayrt.dose.aperture.aperture_dose` (``bixel_width_mm``,
    ``cutoff_mm``, ``threshold``...); default: the engine's defaults, i.e. what plans see.
    """
    import time

    t0 = time.perf_counter()
    h = float(resolution_mm)
    if not (0.25 <= h <= 10.0):
        raise InputError(f"resolution_mm must be 0.25..10 mm, got {h:g}", field="resolution_mm")
    fields = _fields(fields_mm)
    for f in fields:
        _check_machine_field(machine, f)
    labels = list(dict.fromkeys(_depth_label(d) for d in depths_mm))
    num_depths = [float(lb) for lb in labels if lb != "dmax"]
    if any(d <= 0 or d > 400 for d in num_depths):
        raise InputError(f"profile depths must be in (0, 400] mm, got {num_depths}", field="depths_mm")
    max_depth = max([float(max_depth_mm)] + [d + 2 * h for d in num_depths])
    nd = int(math.ceil(max_depth / h))
    depths = np.arange(1, nd + 1) * h  # depth 0 (the surface plane itself) is not scored
    deepest = max(num_depths + [50.0])
    x_edge = max(fields) / 2 * (SSD_MM + deepest) / machine.sad_mm
    nx = int(math.ceil((x_edge + lateral_margin_mm) / h))
    positions = np.arange(-nx, nx + 1) * h
    # density box: wide enough for the lateral scatter reach of the kernels around the plane
    x_half_box = float(positions[-1]) + 2 * h
    z_half_box = max(fields) / 2 * (SSD_MM + max_depth) / machine.sad_mm + 2 * h
    phantoms: list[tuple[str, tuple[float, float, float] | None]] = [("water", None)]
    if slab:
        a, b = float(slab_mm[0]), float(slab_mm[1])
        if not (0 <= a < b < max_depth):
            raise InputError(
                f"slab_mm must satisfy 0 <= start < end < {max_depth:g} mm, got {slab_mm}", field="slab_mm"
            )
        phantoms += [("lung_slab", (LUNG_DENSITY, a, b)), ("bone_slab", (BONE_DENSITY, a, b))]
    results = [
        _phantom_curves(machine, name, sl, fields, labels, h, depths, positions, x_half_box, z_half_box, engine_options)
        for name, sl in phantoms
    ]
    tpr_val = tpr20_10(machine, resolution_mm=h, engine_options=engine_options) if tpr else None
    return CommissioningCurves(
        machine=machine.name,
        nominal_energy_mv=machine.nominal_energy_mv,
        fff=machine.fff,
        ssd_mm=SSD_MM,
        resolution_mm=h,
        depths_mm=depths.tolist(),
        positions_mm=positions.tolist(),
        fields_mm=fields,
        profile_depths=labels,
        water=results[0],
        slabs=results[1:],
        tpr2010=tpr_val,
        seconds=time.perf_counter() - t0,
    )


def beam_quality(curves: CommissioningCurves, reference_field_mm: float = REFERENCE_FIELD_MM) -> BeamQuality:
    """dmax, PDD(10 cm), PDD(20 cm), TPR20,10 and 80-20 % penumbra at 10 cm of the reference field.

    The reference field is the 10 x 10 cm² field, or the computed field closest to it.
    """
    fields = [p.field_mm for p in curves.water.pdds]
    ref = min(fields, key=lambda f: abs(f - reference_field_mm))
    pdd = curves.water.pdd(ref)
    p10, p20 = pdd.pdd_at(100.0), pdd.pdd_at(200.0)
    tpr_pdd = 1.2661 * (p20 / p10) - 0.0595
    pen = None
    try:
        prof = curves.water.profile(ref, 100.0)
        pen = penumbra_80_20(curves.positions_mm, prof.dose_pct)
    except KeyError:
        pass
    return BeamQuality(
        reference_field_mm=ref,
        dmax_mm=pdd.dmax_mm,
        pdd10_pct=p10,
        pdd20_pct=p20,
        tpr2010=curves.tpr2010 if curves.tpr2010 is not None else tpr_pdd,
        tpr2010_from_pdd=tpr_pdd,
        penumbra_80_20_mm=pen,
    )


def plot_curves(curves: CommissioningCurves, path: str | Path) -> Path:
    """A PNG with water PDDs, water profiles (per depth) and slab PDDs of the reference field."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"--plot must name a .png file, got {path.name}", field="plot")
    path.parent.mkdir(parents=True, exist_ok=True)
    depths = np.asarray(curves.depths_mm) / 10.0
    pos = np.asarray(curves.positions_mm) / 10.0
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    ax = axes[0]
    for p in curves.water.pdds:
        ax.plot(depths, p.dose_pct, label=f"{p.field_mm / 10:g}x{p.field_mm / 10:g} cm²")
    ax.set(xlabel="depth (cm)", ylabel="PDD (%)", title=f"{curves.machine}: PDD, water, SSD {curves.ssd_mm / 10:g} cm")
    ax.grid(alpha=0.3)
    ax.legend()
    ax = axes[1]
    styles = ["-", "--", "-.", ":"]
    for i, prof in enumerate(curves.water.profiles):
        j = curves.profile_depths.index(prof.depth_label) if prof.depth_label in curves.profile_depths else 0
        ax.plot(
            pos,
            prof.dose_pct,
            styles[j % len(styles)],
            color=f"C{curves.fields_mm.index(prof.field_mm)}",
            lw=1,
            label=f"{prof.field_mm / 10:g} cm @ {prof.depth_mm / 10:.1f} cm" if i < 40 else None,
        )
    ax.set(xlabel="crossline position (cm)", ylabel="dose (% of axis)", title="profiles, water")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    ax = axes[2]
    ref = min(curves.fields_mm, key=lambda f: abs(f - REFERENCE_FIELD_MM))
    ax.plot(depths, curves.water.pdd(ref).dose_pct, "k", label="water")
    for s in curves.slabs:
        ax.plot(depths, s.pdd(ref).dose_pct, label=f"{s.phantom} ({s.slab_density:g})")
        if s.slab_start_mm is not None and s.slab_end_mm is not None:  # always set on a slab phantom
            ax.axvspan(s.slab_start_mm / 10, s.slab_end_mm / 10, color="0.9")
    ax.set(xlabel="depth (cm)", ylabel="PDD (%)", title=f"slab phantoms, {ref / 10:g}x{ref / 10:g} cm²")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
