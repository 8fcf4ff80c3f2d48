"""A small analytic test case for the optimiser: a TG-119-like C-shape in a water cylinder with
an analytic pencil-beam Dij (exponential attenuation x error-function penumbra), and simple MLCs.

Used by tests and benchmarks of :mod:`rayrt.optimize` so that they do not depend on the full dose
engine; it is real (if simplified) physics, not a mock: dose per beamlet (Gy per unit weight)
    D(voxel) = k * exp(-mu * depth) * Px(x_bev) * Py(y_bev),
with depth the water-equivalent path from the cylinder surface along the beam, and P the profile
of a bixel of width w blurred by a Gaussian penumbra sigma (erf difference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import erf

from rayrt.domain.machine import JawModel, MachineLimits, MachineModel, MLCModel
from rayrt.domain.order import MedicalOrder, ObjectiveKind, ObjectiveSpec, Prescription
from rayrt.optimize.layout import BeamletLayout

__all__ = ["SyntheticCase", "c_shape_case", "synthetic_machine", "tg119_like_order"]


@dataclass
class SyntheticCase:
    dij: sp.csc_matrix  # voxels x beamlets (all beams)
    masks: dict[str, np.ndarray]  # bool (nk, nj, ni)
    layouts: list[BeamletLayout]
    beam_slices: list[slice]
    gantry_deg: list[float]
    spacing_mm: float
    shape: tuple[int, int, int]


def c_shape_case(
    gantry_deg=(0, 40, 80, 120, 160, 200, 240, 280, 320),
    spacing_mm: float = 5.0,
    bixel_mm: float = 5.0,
    n_slices: int = 6,
    half_width_mm: float = 100.0,
    body_radius_mm: float = 90.0,
    mu_per_mm: float = 0.005,
    sigma_mm: float = 3.5,
) -> SyntheticCase:
    n = int(round(2 * half_width_mm / spacing_mm))
    c = (np.arange(n) - (n - 1) / 2) * spacing_mm
    z = (np.arange(n_slices) - (n_slices - 1) / 2) * spacing_mm
    Z, Yp, X = np.meshgrid(z, c, c, indexing="ij")
    r = np.hypot(X, Yp)
    body = r <= body_radius_mm
    core = (r <= 15.0) & (np.abs(Z) <= (n_slices / 2 - 1) * spacing_mm)
    ang = np.degrees(np.arctan2(Yp, X))
    ptv = (r >= 22.0) & (r <= 40.0) & ~((ang > -45) & (ang < 45)) & (np.abs(Z) <= (n_slices / 2 - 1) * spacing_mm)
    masks = {"PTV": ptv, "Core": core, "BODY": body}
    pts = np.stack([X[body], Yp[body], Z[body]], axis=1)
    vox = np.flatnonzero(body.ravel())
    tz = Z[ptv]
    t_xy = np.stack([X[ptv], Yp[ptv]], axis=1)
    cols, rows, vals = [], [], []
    layouts, slices = [], []
    off = 0
    for g in gantry_deg:
        th = np.radians(g)
        src = np.array([np.sin(th), -np.cos(th)])  # direction from isocenter to source (IEC gantry, LPS-like)
        lat = np.array([np.cos(th), np.sin(th)])  # BEV X
        x_bev = pts[:, :2] @ lat
        s = -(pts[:, :2] @ src)  # distance downstream of the isocenter plane
        entry = -np.sqrt(np.maximum(body_radius_mm**2 - x_bev**2, 0.0))
        depth = np.maximum(s - entry, 0.0)
        # beamlet grid covering the target projection + margin
        tx = t_xy @ lat
        x0 = np.floor((tx.min() - 5.0) / bixel_mm) * bixel_mm
        x1 = np.ceil((tx.max() + 5.0) / bixel_mm) * bixel_mm
        col_e = np.arange(x0, x1 + 1e-6, bixel_mm)
        row_e = np.arange(
            np.floor(tz.min() / bixel_mm - 0.5) * bixel_mm,
            np.ceil(tz.max() / bixel_mm + 0.5) * bixel_mm + 1e-6,
            bixel_mm,
        )
        R, C = row_e.size - 1, col_e.size - 1
        idx = np.arange(R * C).reshape(R, C)
        layouts.append(BeamletLayout(row_e, col_e, idx))
        att = np.exp(-mu_per_mm * depth)
        k = 1.0 / np.sqrt(2) / sigma_mm
        for rr in range(R):  # loop over beamlet rows of one beam (few)
            py = 0.5 * (erf((row_e[rr + 1] - pts[:, 2]) * k) - erf((row_e[rr] - pts[:, 2]) * k))
            sel_y = py > 1e-3
            for cc in range(C):
                px = 0.5 * (erf((col_e[cc + 1] - x_bev[sel_y]) * k) - erf((col_e[cc] - x_bev[sel_y]) * k))
                v = 0.01 * att[sel_y] * py[sel_y] * px
                keep = v > 1e-5
                rows.append(vox[sel_y][keep])
                cols.append(np.full(int(keep.sum()), off + idx[rr, cc]))
                vals.append(v[keep])
        slices.append(slice(off, off + R * C))
        off += R * C
    dij = sp.csc_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))), shape=(body.size, off)
    )
    return SyntheticCase(dij, masks, layouts, slices, list(map(float, gantry_deg)), spacing_mm, body.shape)


def tg119_like_order(rx_gy: float = 50.0, core_gy: float = 25.0, hard_core_max_gy: float | None = None) -> MedicalOrder:
    objs = [
        ObjectiveSpec(structure="PTV", kind=ObjectiveKind.squared_deviation, dose_gy=rx_gy, priority=1000),
        ObjectiveSpec(structure="Core", kind=ObjectiveKind.squared_overdose, dose_gy=core_gy, priority=300),
        ObjectiveSpec(structure="BODY", kind=ObjectiveKind.squared_overdose, dose_gy=0.6 * rx_gy, priority=100),
    ]
    if hard_core_max_gy is not None:
        objs.append(ObjectiveSpec(structure="Core", kind=ObjectiveKind.max_dose, dose_gy=hard_core_max_gy, hard=True))
    return MedicalOrder(
        name="c-shape", prescription=Prescription(target="PTV", total_dose_gy=rx_gy, fractions=25), objectives=objs
    )


def synthetic_machine(
    leaf_width_mm: float = 5.0,
    num_pairs: int = 60,
    interdigitation: bool = True,
    min_gap_mm: float = 1.0,
    span_mm: float = 150.0,
    jaws: bool = True,
    name: str | None = None,
) -> MachineModel:
    """A machine with a uniform MLC (no beam model: for sequencing / DAO / deliverability tests)."""
    b = list((np.arange(num_pairs + 1) - num_pairs / 2) * leaf_width_mm)
    mlc = MLCModel(
        name=f"uniform {leaf_width_mm} mm",
        leaf_boundaries_mm=b,
        interdigitation=interdigitation,
        min_gap_mm=min_gap_mm,
        max_leaf_span_mm=span_mm,
    )
    return MachineModel.model_construct(
        name=name or f"synthetic-{leaf_width_mm:g}mm{'' if interdigitation else '-noid'}",
        vendor="",
        model="",
        description="",
        radiation_type="PHOTON",
        nominal_energy_mv=6.0,
        fff=False,
        sad_mm=1000.0,
        beam=None,
        mlc=mlc,
        jaw_x=JawModel(min_mm=-200, max_mm=200, dicom_type="ASYMX") if jaws else None,
        jaw_y=JawModel(min_mm=-200, max_mm=200, dicom_type="ASYMY"),
        limits=MachineLimits(min_mu_per_segment=1.0, max_segments_per_beam=20),
        standard=False,
    )
