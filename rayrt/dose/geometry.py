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
            raise InputError(f"patient position {patient_position!r} is not supported; use one of {sorted(PATIENT_TO_FIXED)}", field="patient_position")
        rot = _rz(collimator_deg).T @ _ry(gantry_deg).T @ _rz(couch_deg) @ PATIENT_TO_FIXED[pos]
        return cls(np.asarray(isocenter_mm, dtype=float), rot, float(sad_mm))

    @classmethod
    def of(cls, beam: Beam, machine: MachineModel, patient_position: str = "HFS") -> "BeamGeometry":
        return cls.from_angles(beam.isocenter_mm, beam.gantry_deg, beam.collimator_deg, beam.couch_deg, machine.sad_mm, patient_position)

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
        b = np.stack(np.broadcast_arrays(np.asarray(u_mm, float), np.asarray(v_mm, float), np.zeros(np.shape(u_mm))), axis=-1)
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


@dataclass
class BeamletGrid:
    """The bixels of one beam at the isocenter plane.

    Rows are the machine's leaf pairs (``row_edges_mm``, exact for any leaf width; halved for a
    dual-layer MLC), columns have width ``bixel_width_mm`` along Xb with edges at integer multiples
    of the width (column c spans [c*w, (c+1)*w], c may be negative). ``rows``/``cols`` list the
    active bixels in Dij column order (sorted by row, then column).
    """

    beam: Beam
    machine_name: str
    bixel_width_mm: float
    row_edges_mm: np.ndarray
    rows: np.ndarray  # (n,) int: bixel row = index into row_edges intervals
    cols: np.ndarray  # (n,) int: bixel column number (edge at cols * width)
    patient_position: str = "HFS"
    meta: dict = field(default_factory=dict)

    @property
    def num_bixels(self) -> int:
        return int(self.rows.size)

    @property
    def u_mm(self) -> np.ndarray:
        """Bixel centres along Xb at the isocenter plane (mm)."""
        return (self.cols + 0.5) * self.bixel_width_mm

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
        return BeamletGrid(self.beam, self.machine_name, self.bixel_width_mm, self.row_edges_mm, self.rows[start:stop], self.cols[start:stop], self.patient_position, dict(self.meta))


def _check_beam(beam: Beam, machine: MachineModel) -> None:
    lim = machine.limits
    for what, angle, rng in (("gantry", beam.gantry_deg, lim.gantry), ("collimator", beam.collimator_deg, lim.collimator), ("couch", beam.couch_deg, lim.couch)):
        if not rng.contains(angle):
            raise InputError(
                f"beam {beam.name or beam.number}: {what} angle {angle} deg is outside machine {machine.name}'s range [{rng.min_deg}, {rng.max_deg}]",
                field=f"{what}_deg",
            )


def beamlet_grid_from_columns(
    beam: Beam, machine: MachineModel, active: np.ndarray, col0: int, bixel_width_mm: float, patient_position: str = "HFS"
) -> BeamletGrid:
    """A grid from a boolean (rows x columns) activity map whose first column is number ``col0``."""
    r, c = np.nonzero(active)
    return BeamletGrid(beam, machine.name, float(bixel_width_mm), row_edges_mm(machine), r.astype(np.int64), (c + col0).astype(np.int64), patient_position)


def _column_limits(machine: MachineModel, w: float) -> tuple[int, int]:
    """Column numbers [c_lo, c_hi) reachable by the leaves, the X jaws and the field-size limit."""
    lo, hi = machine.mlc.min_position_mm, machine.mlc.max_position_mm
    if machine.jaw_x is not None:
        lo, hi = max(lo, machine.jaw_x.min_mm), min(hi, machine.jaw_x.max_mm)
    half = machine.limits.max_field_x_mm / 2
    lo, hi = max(lo, -half), min(hi, half)
    return int(np.ceil(lo / w - 1e-9)), int(np.floor(hi / w + 1e-9))


def beamlet_grid(
    beam: Beam,
    machine: MachineModel,
    target_mask: np.ndarray,
    grid: Grid,
    bixel_width_mm: float = 5.0,
    margin_mm: float = 5.0,
    patient_position: str = "HFS",
) -> BeamletGrid:
    """Bixels covering the target's beam's-eye-view projection plus ``margin_mm`` (isocenter plane).

    The target voxels (mask on ``grid``) are projected through the source onto the isocenter
    plane and drawn on a 0.5 mm raster; the raster is dilated by the margin plus half a voxel
    diagonal (projected). Every bixel whose rectangle touches the dilated projection is active.
    """
    if bixel_width_mm <= 0:
        raise InputError(f"bixel_width_mm must be > 0, got {bixel_width_mm}", field="bixel_width_mm")
    mask = np.asarray(target_mask, dtype=bool)
    if mask.shape != tuple(grid.shape):
        raise InputError(f"target mask shape {mask.shape} does not match the grid {grid.shape}", field="target_mask")
    if not mask.any():
        raise InputError("the target mask is empty: no beamlets can be placed", field="target_mask")
    _check_beam(beam, machine)
    geo = BeamGeometry.of(beam, machine, patient_position)
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
    c_lo, c_hi = _column_limits(machine, w)
    cmin = max(int(np.floor(cov_u[0] / w)) - 1, c_lo)
    cmax = min(int(np.floor(cov_u[-1] / w)) + 1, c_hi - 1)
    if cmax < cmin:
        raise InputError(f"the target projection lies outside machine {machine.name}'s field", field="target_mask")
    # for every raster pixel that is covered: which row and column it falls in
    vv, uu = np.nonzero(covered)
    pu, pv = cov_u[uu], cov_v[vv]
    row = np.searchsorted(edges, pv, side="right") - 1
    col = np.floor(pu / w).astype(int)
    ok = (row >= 0) & (row < edges.size - 1) & (col >= cmin) & (col <= cmax)
    # also rows/cols whose rectangle only touches a covered pixel on its edge: pixels are 0.5 mm, fine enough
    active = np.zeros((edges.size - 1, cmax - cmin + 1), dtype=bool)
    active[row[ok], col[ok] - cmin] = True
    if not active.any():
        raise InputError(f"the target projection lies outside machine {machine.name}'s MLC", field="target_mask")
    return beamlet_grid_from_columns(beam, machine, active, cmin, w, patient_position)


def beamlet_grid_for_field(
    beam: Beam,
    machine: MachineModel,
    x_mm: tuple[float, float],
    y_mm: tuple[float, float],
    bixel_width_mm: float = 5.0,
    patient_position: str = "HFS",
) -> BeamletGrid:
    """All bixels whose rectangles overlap the isocenter-plane rectangle ``x_mm`` x ``y_mm`` (open-field grids)."""
    _check_beam(beam, machine)
    w = float(bixel_width_mm)
    edges = row_edges_mm(machine)
    c_lo, c_hi = _column_limits(machine, w)
    cmin = max(int(np.floor(x_mm[0] / w + 1e-9)), c_lo)
    cmax = min(int(np.ceil(x_mm[1] / w - 1e-9)) - 1, c_hi - 1)
    rows = np.nonzero((edges[1:] > y_mm[0] + 1e-9) & (edges[:-1] < y_mm[1] - 1e-9))[0]
    if cmax < cmin or rows.size == 0:
        raise InputError(f"field x={x_mm} y={y_mm} mm has no bixels on machine {machine.name}", field="field")
    active = np.zeros((edges.size - 1, cmax - cmin + 1), dtype=bool)
    active[rows, :] = True
    return beamlet_grid_from_columns(beam, machine, active, cmin, w, patient_position)
