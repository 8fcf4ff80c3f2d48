"""Beam geometry: IEC 61217 angles -> DICOM patient coordinates (LPS), and the beamlet grid.

Coordinate systems (all right-handed, mm):

* DICOM patient (LPS): x to the patient's left, y posterior, z superior (head).
* IEC 61217 fixed system f (origin at the isocenter): +Xf to the right of an observer who stands
  at the foot of the couch facing the gantry, +Yf horizontally towards the gantry, +Zf up.
* For a head-first-supine (HFS) patient: the patient's left is on that observer's right, the head
  points to the gantry and the face is up, so

      Xf = x,   Yf = z,   Zf = -y        (``PATIENT_TO_FIXED["HFS"]``)

  (HFP: Xf=-x, Yf=z, Zf=y; FFS: Xf=-x, Yf=-z, Zf=-y; FFP: Xf=x, Yf=-z, Zf=y.)
* Patient support (couch) rotation psi about +Zf (counter-clockwise seen from above): a point with
  fixed-frame coordinates c on the table top moves to Rz(psi) c. The patient frame is attached to
  the table top.
* Gantry system g: rotation theta about +Yf, right-handed, i.e. clockwise for the observer at the
  foot of the couch. Zg points from the isocenter to the source: Zg = (sin t, 0, cos t) in f;
  Xg = (cos t, 0, -sin t); Yg = Yf. At gantry 0 the source is above the patient (beam travels
  anterior -> posterior, +y in LPS for HFS); at gantry 90 the source is on the observer's right
  = the patient's left (HFS), the beam travels towards -x (to the patient's right).
* Beam-limiting-device system b: rotation phi about +Zg (counter-clockwise seen from the source).
  Xb is the direction of leaf travel (MLCX), Yb runs across the leaf pairs. At collimator 0,
  gantry 0, HFS: Xb = +x (patient left), Yb = +z (superior).

So the coordinates of an LPS point p in the beam-limiting-device frame are

    b = Rz(phi)^T  Ry(theta)^T  Rz(psi)  M_pos  (p - isocenter)

and its projection onto the isocenter plane (the plane through the isocenter normal to the
central axis) is (u, v) = (bx, by) * SAD / (SAD - bz); SAD - bz is its depth along the central
axis measured from the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from rayrt.domain.errors import InputError
from rayrt.domain.machine import MachineModel
from rayrt.domain.plan import Beam
from rayrt.imaging.volume import Grid

#: rows: fixed-system axes (Xf, Yf, Zf) in LPS components, per DICOM PatientPosition
PATIENT_TO_FIXED: dict[str, np.ndarray] = {
    "HFS": np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]),
    "HFP": np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]),
    "FFS": np.array([[-1.0, 0, 0], [0, 0, -1.0], [0, -1.0, 0]]),
    "FFP": np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]),
}


def _rz(a_deg: float) -> np.ndarray:
    a = np.deg2rad(a_deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _ry(a_deg: float) -> np.ndarray:
    a = np.deg2rad(a_deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass(frozen=True)
class BeamGeometry:
    """A beam's frame: ``rotation`` maps LPS offsets from the isocenter to the BLD frame (Xb, Yb, Zb)."""

    isocenter_mm: np.ndarray
    rotation: np.ndarray  # (3, 3): b = rotation @ (p - iso)
    sad_mm: float

    @classmethod
    def from_angles(
        cls,
        isocenter_mm,
        gantry_deg: float,
        collimator_deg: float = 0.0,
        couch_deg: float = 0.0,
        sad_mm: float = 1000.0,
        patient_position: str = "HFS",
    ) -> "BeamGeometry":
        pos = patient_position.upper()
        if pos not in PATIENT_TO_FIXED:
            raise InputError(
                f"patient position {patient_position!r} is not supported; use one of {sorted(PATIENT_TO_FIXED)}",
                field="patient_position",
            )
        rot = _rz(collimator_deg).T @ _ry(gantry_deg).T @ _rz(couch_deg) @ PATIENT_TO_FIXED[pos]
        return cls(np.asarray(isocenter_mm, dtype=float), rot, float(sad_mm))

    @classmethod
    def of(cls, beam: Beam, machine: MachineModel, patient_position: str = "HFS") -> "BeamGeometry":
        return cls.from_angles(
            beam.isocenter_mm, beam.gantry_deg, beam.collimator_deg, beam.couch_deg, machine.sad_mm, patient_position
        )

    @property
    def source_mm(self) -> np.ndarray:
        """Source position in LPS (mm)."""
        return self.isocenter_mm + self.rotation.T @ np.array([0.0, 0.0, self.sad_mm])

    @property
    def direction(self) -> np.ndarray:
        """Unit LPS vector of the central axis, from the source towards the isocenter."""
        return -self.rotation[2]

    def to_bld(self, xyz_mm: np.ndarray) -> np.ndarray:
        """BLD-frame coordinates (..., 3) of LPS points (..., 3)."""
        return (np.asarray(xyz_mm, dtype=float) - self.isocenter_mm) @ self.rotation.T

    def project(self, xyz_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u, v, s): isocenter-plane projection (mm) and depth from the source along the axis (mm)."""
        b = self.to_bld(xyz_mm)
        s = self.sad_mm - b[..., 2]
        scale = self.sad_mm / s
        return b[..., 0] * scale, b[..., 1] * scale, s

    def point_at_iso_plane(self, u_mm: np.ndarray, v_mm: np.ndarray) -> np.ndarray:
        """LPS position of isocenter-plane points (u, v)."""
        b = np.stack(
            np.broadcast_arrays(np.asarray(u_mm, float), np.asarray(v_mm, float), np.zeros(np.shape(u_mm))), axis=-1
        )
        return self.isocenter_mm + b @ self.rotation


def row_edges_mm(machine: MachineModel) -> np.ndarray:
    """Bixel row edges (mm, along Yb at the isocenter plane): the leaf-pair boundaries; halved for dual-layer MLCs."""
    b = machine.mlc.boundaries
    if machine.mlc.dual_layer:
        mids = 0.5 * (b[:-1] + b[1:])
        b = np.sort(np.concatenate([b, mids]))
    return b


def row_leaf_pair(machine: MachineModel) -> np.ndarray:
    """Leaf-pair index (into the MLC's pairs) of every bixel row."""
    n = machine.mlc.num_pairs
    return np.repeat(np.arange(n), 2) if machine.mlc.dual_layer else np.arange(n)


#: column alignments of a beamlet grid: "edge" = column edges at multiples of the bixel width w
#: (offset 0), "isocenter" = bixel centres at multiples of w (offset -w/2, matRad / pyRadPlan)
BixelColumns = Literal["edge", "isocenter"]
BIXEL_COLUMNS: tuple[str, ...] = ("edge", "isocenter")

#: how ``beamlet_grid`` applies its margin: "projection" = a 2-D distance around the target's
#: projection at the isocenter plane (plus half a projected voxel diagonal), every bixel touching it;
#: "volume" = a 3-D box margin around the target voxels, the bixels hit by a dilated voxel centre
MarginMode = Literal["projection", "volume"]
MARGIN_MODES: tuple[str, ...] = ("projection", "volume")


def column_offset_for(alignment: str, bixel_width_mm: float) -> float:
    """Column offset (mm) of an alignment: ``"edge"`` -> 0, ``"isocenter"`` -> -w/2."""
    if alignment == "edge":
        return 0.0
    if alignment == "isocenter":
        return -0.5 * float(bixel_width_mm)
    raise InputError(
        f"unknown bixel column alignment {alignment!r}; use one of {list(BIXEL_COLUMNS)}", field="bixel_columns"
    )


def column_alignment_of(column_offset_mm: float, bixel_width_mm: float) -> str:
    """Name of the alignment an offset realises (modulo the width): "edge", "isocenter" or "custom"."""
    w = float(bixel_width_mm)
    f = (float(column_offset_mm) / w) % 1.0
    if min(f, 1.0 - f) < 1e-9:
        return "edge"
    if abs(f - 0.5) < 1e-9:
        return "isocenter"
    return "custom"


def _check_offset(column_offset_mm: float) -> float:
    o = float(column_offset_mm)
    if not np.isfinite(o):
        raise InputError(
            f"column_offset_mm must be a finite number of mm, got {column_offset_mm}", field="column_offset_mm"
        )
    return o


@dataclass
class BeamletGrid:
    """The bixels of one beam at the isocenter plane.

    Rows are the machine's leaf pairs (``row_edges_mm``, exact for any leaf width; halved for a
    dual-layer MLC), columns have width ``bixel_width_mm`` = w along Xb, shifted by
    ``column_offset_mm`` = o: column c spans [o + c*w, o + (c+1)*w] (c may be negative). o = 0
    (``"edge"`` alignment, the default) puts column edges at multiples of w; o = -w/2
    (``"isocenter"``, :func:`column_offset_for`) centres the bixels on the central axis, centres at
    c*w as in matRad/pyRadPlan. ``rows``/``cols`` list the active bixels in Dij column order (sorted
    by row, then column). Code that needs column positions must use :meth:`column_edge_mm`,
    :attr:`u_lo_mm`/:attr:`u_hi_mm`/:attr:`u_mm` or :meth:`column_of`, never ``cols * w``.
    """

    beam: Beam
    machine_name: str
    bixel_width_mm: float
    row_edges_mm: np.ndarray
    rows: np.ndarray  # (n,) int: bixel row = index into row_edges intervals
    cols: np.ndarray  # (n,) int: bixel column number (edge at cols * width)
    patient_position: str = "HFS"
    meta: dict = field(default_factory=dict)
    column_offset_mm: float = 0.0  # column c spans [offset + c*w, offset + (c+1)*w] along Xb (mm)

    @property
    def num_bixels(self) -> int:
        return int(self.rows.size)

    @property
    def column_alignment(self) -> str:
        """``"edge"`` (offset 0), ``"isocenter"`` (offset -w/2, modulo w) or ``"custom"``."""
        return column_alignment_of(self.column_offset_mm, self.bixel_width_mm)

    def column_edge_mm(self, c) -> np.ndarray:
        """Xb position (mm, isocenter plane) of the lower edge of column number(s) ``c``; ``c + 1`` gives
        the upper edge."""
        return self.column_offset_mm + np.asarray(c, dtype=float) * self.bixel_width_mm

    def column_of(self, u_mm) -> np.ndarray:
        """Column number(s) containing the isocenter-plane Xb position(s) ``u_mm`` (edges belong to the
        upper column)."""
        return np.floor((np.asarray(u_mm, dtype=float) - self.column_offset_mm) / self.bixel_width_mm).astype(np.int64)

    @property
    def column_edges_mm(self) -> np.ndarray:
        """Edges (mm) of the contiguous columns from the lowest to the highest active one: (ncols + 1,)."""
        if self.num_bixels == 0:
            return np.zeros(0)
        c = np.asarray(self.cols)
        return self.column_edge_mm(np.arange(int(c.min()), int(c.max()) + 2))

    @property
    def u_lo_mm(self) -> np.ndarray:
        """Lower Xb edge of every bixel at the isocenter plane (mm)."""
        return self.column_edge_mm(self.cols)

    @property
    def u_hi_mm(self) -> np.ndarray:
        """Upper Xb edge of every bixel at the isocenter plane (mm)."""
        return self.column_edge_mm(np.asarray(self.cols) + 1)

    @property
    def u_mm(self) -> np.ndarray:
        """Bixel centres along Xb at the isocenter plane (mm)."""
        return self.column_edge_mm(np.asarray(self.cols) + 0.5)

    @property
    def v_mm(self) -> np.ndarray:
        """Bixel centres along Yb at the isocenter plane (mm)."""
        e = self.row_edges_mm
        return 0.5 * (e[self.rows] + e[self.rows + 1])

    @property
    def height_mm(self) -> np.ndarray:
        e = self.row_edges_mm
        return e[self.rows + 1] - e[self.rows]

    @property
    def width_mm(self) -> np.ndarray:
        return np.full(self.num_bixels, self.bixel_width_mm)

    def geometry(self, machine: MachineModel) -> BeamGeometry:
        return BeamGeometry.of(self.beam, machine, self.patient_position)

    def subset(self, start: int, stop: int) -> "BeamletGrid":
        return BeamletGrid(
            self.beam,
            self.machine_name,
            self.bixel_width_mm,
            self.row_edges_mm,
            self.rows[start:stop],
            self.cols[start:stop],
            self.patient_position,
            dict(self.meta),
            self.column_offset_mm,
        )


def _check_beam(beam: Beam, machine: MachineModel) -> None:
    lim = machine.limits
    for what, angle, rng in (
        ("gantry", beam.gantry_deg, lim.gantry),
        ("collimator", beam.collimator_deg, lim.collimator),
        ("couch", beam.couch_deg, lim.couch),
    ):
        if not rng.contains(angle):
            raise InputError(
                f"beam {beam.name or beam.number}: {what} angle {angle} deg is outside machine {machine.name}'s "
                f"range [{rng.min_deg}, {rng.max_deg}]",
                field=f"{what}_deg",
            )


def beamlet_grid_from_columns(
    beam: Beam,
    machine: MachineModel,
    active: np.ndarray,
    col0: int,
    bixel_width_mm: float,
    patient_position: str = "HFS",
    column_offset_mm: float = 0.0,
) -> BeamletGrid:
    """A grid from a boolean (rows x columns) activity map whose first column is number ``col0``
    (column c spans [column_offset_mm + c*w, column_offset_mm + (c+1)*w])."""
    r, c = np.nonzero(active)
    return BeamletGrid(
        beam,
        machine.name,
        float(bixel_width_mm),
        row_edges_mm(machine),
        r.astype(np.int64),
        (c + col0).astype(np.int64),
        patient_position,
        column_offset_mm=_check_offset(column_offset_mm),
    )


def _column_limits(machine: MachineModel, w: float, column_offset_mm: float = 0.0) -> tuple[int, int]:
    """Column numbers [c_lo, c_hi) whose whole width is reachable by the leaves, the X jaws and the field-size limit."""
    lo, hi = machine.mlc.min_position_mm, machine.mlc.max_position_mm
    if machine.jaw_x is not None:
        lo, hi = max(lo, machine.jaw_x.min_mm), min(hi, machine.jaw_x.max_mm)
    half = machine.limits.max_field_x_mm / 2
    lo, hi = max(lo, -half) - column_offset_mm, min(hi, half) - column_offset_mm
    return int(np.ceil(lo / w - 1e-9)), int(np.floor(hi / w + 1e-9))


def beamlet_grid(
    beam: Beam,
    machine: MachineModel,
    target_mask: np.ndarray,
    grid: Grid,
    bixel_width_mm: float = 5.0,
    margin_mm: float = 5.0,
    patient_position: str = "HFS",
    column_offset_mm: float = 0.0,
    margin_mode: MarginMode = "projection",
) -> BeamletGrid:
    """Bixels covering the target's beam's-eye-view projection plus ``margin_mm`` (isocenter plane).

    ``margin_mode="projection"`` (default): the target voxels (mask on ``grid``) are projected
    through the source onto the isocenter plane and drawn on a 0.5 mm raster; the raster is dilated
    by the margin plus half a voxel diagonal (projected). Every bixel whose rectangle touches the
    dilated projection is active.

    ``margin_mode="volume"``: the target mask is first dilated in 3-D by a box of
    ceil(margin_mm / spacing) voxels along each axis (the margin rounded up to whole voxels, per
    axis; matRad grows by at least one voxel, which equals this whenever margin_mm >= the spacing),
    then the centre of every dilated voxel is projected onto the isocenter plane and each bixel
    containing such a point is active (no further reach). This is matRad's / pyRadPlan's
    photon IMRT rule (target grown by ``pbMargin`` = the bixel width, rays at the projected voxel
    centres rounded to the bixel lattice), e.g. for benchmarks against them with
    ``column_offset_mm = column_offset_for("isocenter", w)``.

    Columns are offset by ``column_offset_mm`` (:class:`BeamletGrid`; :func:`column_offset_for`
    gives the offsets of the "edge" and "isocenter" alignments); rows are the machine's leaf pairs.
    """
    if bixel_width_mm <= 0:
        raise InputError(f"bixel_width_mm must be > 0, got {bixel_width_mm}", field="bixel_width_mm")
    if margin_mode not in MARGIN_MODES:
        raise InputError(f"unknown margin_mode {margin_mode!r}; use one of {list(MARGIN_MODES)}", field="margin_mode")
    if margin_mode == "volume" and not (np.isfinite(margin_mm) and margin_mm >= 0):
        raise InputError(
            f"margin_mm must be a finite number >= 0 with margin_mode='volume', got {margin_mm}", field="margin_mm"
        )
    off = _check_offset(column_offset_mm)
    mask = np.asarray(target_mask, dtype=bool)
    if mask.shape != tuple(grid.shape):
        raise InputError(f"target mask shape {mask.shape} does not match the grid {grid.shape}", field="target_mask")
    if not mask.any():
        raise InputError("the target mask is empty: no beamlets can be placed", field="target_mask")
    _check_beam(beam, machine)
    geo = BeamGeometry.of(beam, machine, patient_position)
    if margin_mode == "volume":
        return _beamlet_grid_volume_margin(
            beam, machine, mask, grid, geo, float(bixel_width_mm), float(margin_mm), patient_position, off
        )
    kji = np.argwhere(mask)
    u, v, s = geo.project(grid.index_to_world(kji.astype(float)))
    if np.any(s <= 0):
        raise InputError("part of the target lies behind the source; check the isocenter", field="isocenter_mm")
    half_diag = 0.5 * float(np.linalg.norm(grid.spacing)) * float(np.max(geo.sad_mm / s))
    reach = margin_mm + half_diag
    h = 0.5
    u0 = np.floor((u.min() - reach) / h) * h - h
    v0 = np.floor((v.min() - reach) / h) * h - h
    nu = int(np.ceil((u.max() + reach - u0) / h)) + 2
    nv = int(np.ceil((v.max() + reach - v0) / h)) + 2
    raster = np.zeros((nv, nu), dtype=bool)
    raster[np.round((v - v0) / h).astype(int), np.round((u - u0) / h).astype(int)] = True
    dist = ndimage.distance_transform_edt(~raster) * h
    covered = dist <= reach
    cov_v = v0 + h * np.arange(nv)
    cov_u = u0 + h * np.arange(nu)

    w = float(bixel_width_mm)
    edges = row_edges_mm(machine)
    c_lo, c_hi = _column_limits(machine, w, off)
    cmin = max(int(np.floor((cov_u[0] - off) / w)) - 1, c_lo)
    cmax = min(int(np.floor((cov_u[-1] - off) / w)) + 1, c_hi - 1)
    if cmax < cmin:
        raise InputError(f"the target projection lies outside machine {machine.name}'s field", field="target_mask")
    # for every raster pixel that is covered: which row and column it falls in
    vv, uu = np.nonzero(covered)
    pu, pv = cov_u[uu], cov_v[vv]
    row = np.searchsorted(edges, pv, side="right") - 1
    col = np.floor((pu - off) / w).astype(int)
    ok = (row >= 0) & (row < edges.size - 1) & (col >= cmin) & (col <= cmax)
    # also rows/cols whose rectangle only touches a covered pixel on its edge: pixels are 0.5 mm, fine enough
    active = np.zeros((edges.size - 1, cmax - cmin + 1), dtype=bool)
    active[row[ok], col[ok] - cmin] = True
    if not active.any():
        raise InputError(f"the target projection lies outside machine {machine.name}'s MLC", field="target_mask")
    return beamlet_grid_from_columns(beam, machine, active, cmin, w, patient_position, off)


def _box_dilate(mask: np.ndarray, radius_kji: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box dilation of a boolean [k, j, i] mask by ``radius_kji`` voxels per axis (separable: a 1-D
    maximum per axis) on the mask's bounding box grown by the radius; returns (dilated crop, crop origin index)."""
    nz = np.argwhere(mask)
    lo = np.maximum(nz.min(axis=0) - radius_kji, 0)
    hi = np.minimum(nz.max(axis=0) + radius_kji + 1, np.asarray(mask.shape))
    crop = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.uint8)
    for ax, r in enumerate(radius_kji):
        if r > 0:
            crop = ndimage.maximum_filter1d(crop, size=2 * int(r) + 1, axis=ax, mode="constant", cval=0)
    return crop.astype(bool), lo


def _beamlet_grid_volume_margin(
    beam: Beam,
    machine: MachineModel,
    mask: np.ndarray,
    grid: Grid,
    geo: BeamGeometry,
    w: float,
    margin_mm: float,
    patient_position: str,
    off: float,
) -> BeamletGrid:
    """``beamlet_grid(margin_mode="volume")``: 3-D box margin, bixels hit by projected voxel centres."""
    radius = np.ceil(margin_mm / grid.spacing[::-1] - 1e-9).astype(np.int64)  # voxels along (k, j, i)
    dil, lo = _box_dilate(mask, radius)
    kji = np.argwhere(dil) + lo
    u, v, s = geo.project(grid.index_to_world(kji.astype(float)))
    if np.any(s <= 0):
        raise InputError(
            "part of the target (with its margin) lies behind the source; check the isocenter", field="isocenter_mm"
        )
    edges = row_edges_mm(machine)
    c_lo, c_hi = _column_limits(machine, w, off)
    row = np.searchsorted(edges, v, side="right") - 1
    col = np.floor((u - off) / w).astype(np.int64)
    ok = (row >= 0) & (row < edges.size - 1) & (col >= c_lo) & (col < c_hi)
    if not ok.any():
        raise InputError(f"the target projection lies outside machine {machine.name}'s MLC", field="target_mask")
    cmin, cmax = int(col[ok].min()), int(col[ok].max())
    active = np.zeros((edges.size - 1, cmax - cmin + 1), dtype=bool)
    active[row[ok], col[ok] - cmin] = True
    return beamlet_grid_from_columns(beam, machine, active, cmin, w, patient_position, off)


def beamlet_grid_for_field(
    beam: Beam,
    machine: MachineModel,
    x_mm: tuple[float, float],
    y_mm: tuple[float, float],
    bixel_width_mm: float = 5.0,
    patient_position: str = "HFS",
    column_offset_mm: float = 0.0,
) -> BeamletGrid:
    """All bixels whose rectangles overlap the isocenter-plane rectangle ``x_mm`` x ``y_mm`` (open-field
    grids); columns offset by ``column_offset_mm`` (:class:`BeamletGrid`)."""
    _check_beam(beam, machine)
    w = float(bixel_width_mm)
    off = _check_offset(column_offset_mm)
    edges = row_edges_mm(machine)
    c_lo, c_hi = _column_limits(machine, w, off)
    cmin = max(int(np.floor((x_mm[0] - off) / w + 1e-9)), c_lo)
    cmax = min(int(np.ceil((x_mm[1] - off) / w - 1e-9)) - 1, c_hi - 1)
    rows = np.nonzero((edges[1:] > y_mm[0] + 1e-9) & (edges[:-1] < y_mm[1] - 1e-9))[0]
    if cmax < cmin or rows.size == 0:
        raise InputError(f"field x={x_mm} y={y_mm} mm has no bixels on machine {machine.name}", field="field")
    active = np.zeros((edges.size - 1, cmax - cmin + 1), dtype=bool)
    active[rows, :] = True
    return beamlet_grid_from_columns(beam, machine, active, cmin, w, patient_position, off)
