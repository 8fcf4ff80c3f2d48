"""The report's dose pages: axial, coronal and sagittal planes through the primary target's
centroid, for the standard plan and each converted plan with a dose.

Each plane shows the CT in grey (soft-tissue window, W 400 / L 40 HU), the dose (Gy, total course,
trilinearly resampled from its own grid onto the CT plane's pixel centres with
:func:`rayrt.imaging.slices.resample_on_plane`) as a colour wash from 10 % of the prescription
up, isodose lines in % of the prescription, and the structure outlines in their colours. Planes
are in the radiological convention of :mod:`rayrt.imaging.slices` (axial seen from the feet,
patient right on the left), with mm axes. Every plan is drawn on the same colour scale.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rayrt.imaging.slices import (
    Plane,
    mask_on_plane,
    plane_extent_mm,
    plane_image,
    plane_position_mm,
    resample_on_plane,
    slice_through,
)
from rayrt.imaging.volume import Grid
from rayrt.report.content import PlanData, ReportInput
from rayrt.report.layout import A4_PORTRAIT_IN, structure_colours

__all__ = ["ISODOSE_PCT", "WASH_FROM_PCT", "centre_mm", "dose_slice_pages"]

#: isodose lines drawn, % of the prescription, and their colours
ISODOSE_PCT = (30.0, 50.0, 70.0, 90.0, 95.0, 100.0, 105.0, 110.0)
_ISO_COLOURS = ("#1f4e9c", "#2ca0c8", "#29a85a", "#b5c800", "#f0c000", "#ff7f00", "#e0301e", "#a0006e")
#: the dose wash starts at this % of the prescription (below: CT only)
WASH_FROM_PCT = 10.0
#: CT window (HU): soft tissue, W 400 / L 40
CT_WINDOW_HU = (-160.0, 240.0)
#: margin (mm) around the body outline the planes are cropped to
CROP_MARGIN_MM = 15.0
_LABELS = {
    "axial": ("patient right  \u2192  left (x, mm)", "anterior  \u2192  posterior (y, mm)"),
    "coronal": ("patient right  \u2192  left (x, mm)", "z (mm)"),
    "sagittal": ("anterior  \u2192  posterior (y, mm)", "z (mm)"),
}


def centre_mm(data: ReportInput) -> tuple[np.ndarray, str]:
    """The LPS point (mm) the planes pass through and what it is: the primary target's centroid,
    else the centroid of the standard plan's dose above half its maximum, else the CT's centre."""
    grid = data.ct.grid
    t = data.target()
    if t is not None:
        return grid.index_to_world(np.argwhere(t.mask).mean(axis=0)), f"the centroid of {t.name}"
    d = data.standard.dose
    if d is not None and float(d.array.max()) > 0:
        hot = np.argwhere(d.array >= 0.5 * float(d.array.max())).mean(axis=0)
        return d.grid.index_to_world(hot), "the centroid of the standard plan's 50 % dose region"
    return grid.index_to_world((np.asarray(grid.shape, float) - 1) / 2), "the centre of the CT"


def _ct_window(data: ReportInput) -> tuple[float, float]:
    if data.ct.quantity.upper() == "HU" or str(data.ct.meta.get("modality", "")).upper() == "CT":
        return CT_WINDOW_HU
    lo, hi = np.percentile(data.ct.array, [1.0, 99.0])
    return float(lo), float(max(hi, lo + 1e-6))


def _body_region(data: ReportInput, plane: Plane, index: int) -> np.ndarray:
    """Where the patient is on the plane: the external structure, else CT above -500 HU."""
    ext = next((s for s in data.structures if s.structure.kind.value == "external" and s.mask.any()), None)
    if ext is not None:
        return mask_on_plane(ext.mask, plane, index, data.ct.grid)
    img = np.asarray(plane_image(data.ct, plane, index), dtype=float)
    return img > -500.0 if _ct_window(data) == CT_WINDOW_HU else np.ones(img.shape, bool)


def _crop(ax, region: np.ndarray, extent: tuple[float, float, float, float]) -> None:
    """Zoom ``ax`` to ``region``'s bounding box (picture pixels) plus a margin, in the extent's mm."""
    if not region.any():
        return
    rows, cols = region.shape
    r = np.flatnonzero(region.any(axis=1))
    c = np.flatnonzero(region.any(axis=0))
    left, right, bottom, top = extent
    dx, dy = (right - left) / cols, (bottom - top) / rows  # signed mm per pixel along columns / rows
    sx, sy = np.sign(dx) or 1.0, np.sign(dy) or 1.0
    x0 = max(min(left, right), min(left + c[0] * dx, left + (c[-1] + 1) * dx) - CROP_MARGIN_MM)
    x1 = min(max(left, right), max(left + c[0] * dx, left + (c[-1] + 1) * dx) + CROP_MARGIN_MM)
    y0 = max(min(top, bottom), min(top + r[0] * dy, top + (r[-1] + 1) * dy) - CROP_MARGIN_MM)
    y1 = min(max(top, bottom), max(top + r[0] * dy, top + (r[-1] + 1) * dy) + CROP_MARGIN_MM)
    ax.set_xlim(*((x0, x1) if sx > 0 else (x1, x0)))
    ax.set_ylim(*((y1, y0) if sy > 0 else (y0, y1)))  # rows run downwards on the page


def _draw_plane(
    ax,
    data: ReportInput,
    plan: PlanData,
    plane: Plane,
    index: int,
    vmax_gy: float,
    rx_gy: float,
    colours: dict,
):
    grid: Grid = data.ct.grid
    extent = plane_extent_mm(grid, plane)
    lo, hi = _ct_window(data)
    ct = np.asarray(plane_image(data.ct, plane, index), dtype=np.float32)
    ax.imshow(ct, cmap="gray", vmin=lo, vmax=hi, extent=extent, origin="upper", interpolation="nearest")
    im = None
    if plan.dose is not None:
        dose = resample_on_plane(plan.dose, grid, plane, index, fill=0.0)
        wash = np.ma.masked_less(dose, WASH_FROM_PCT / 100.0 * rx_gy)
        im = ax.imshow(
            wash, cmap="jet", vmin=0.0, vmax=vmax_gy, alpha=0.4, extent=extent, origin="upper", interpolation="bilinear"
        )
        top = float(dose.max())
        levels = [(p, c) for p, c in zip(ISODOSE_PCT, _ISO_COLOURS) if p / 100.0 * rx_gy < top]
        if levels:
            ax.contour(
                dose,
                levels=[p / 100.0 * rx_gy for p, _ in levels],
                colors=[c for _, c in levels],
                linewidths=0.9,
                extent=extent,
                origin="upper",
            )
    for s in data.structures:
        m = mask_on_plane(s.mask, plane, index, grid)
        if m.any() and not m.all():
            ax.contour(
                m.astype(np.float32),
                levels=[0.5],
                colors=[colours[s.name]],
                linewidths=1.2,
                extent=extent,
                origin="upper",
            )
    _crop(ax, _body_region(data, plane, index), extent)
    pos = plane_position_mm(grid, plane, index)
    axis = {"axial": "z", "coronal": "y", "sagittal": "x"}[plane]
    ax.set_title(f"{plane}, {axis} = {pos:.1f} mm", fontsize=8)
    xl, yl = _LABELS[plane]
    ax.set_xlabel(xl, fontsize=6.5)
    ax.set_ylabel(yl, fontsize=6.5)
    ax.tick_params(labelsize=6)
    return im


def _page(data: ReportInput, plan: PlanData, centre: np.ndarray, what: str, vmax_gy: float, rx_gy: float) -> Figure:
    fig = Figure(figsize=A4_PORTRAIT_IN, dpi=100)
    s = plan.summary
    fig.suptitle(
        f"Dose: {s.machine}" + (f" (plan {s.plan_id})" if s.plan_id else ""), fontsize=13, weight="bold", y=0.975
    )
    x, y, z = (float(v) for v in centre)
    fig.text(
        0.5,
        0.945,
        f"planes through {what}, ({x:.1f}, {y:.1f}, {z:.1f}) mm LPS; isodoses in % of {rx_gy:g} Gy",
        ha="center",
        fontsize=8,
    )
    gs = fig.add_gridspec(2, 2, left=0.09, right=0.9, top=0.92, bottom=0.12, height_ratios=[1.25, 1.0], hspace=0.22)
    colours = structure_colours([st.structure for st in data.structures])
    grid = data.ct.grid
    ims = []
    for plane, cell in (("axial", gs[0, :]), ("coronal", gs[1, 0]), ("sagittal", gs[1, 1])):
        ax = fig.add_subplot(cell)
        idx = slice_through(grid, plane, centre)  # type: ignore[arg-type]
        ims.append(_draw_plane(ax, data, plan, plane, idx, vmax_gy, rx_gy, colours))  # type: ignore[arg-type]
    im = next((i for i in ims if i is not None), None)
    if im is not None:
        cax = fig.add_axes((0.92, 0.56, 0.015, 0.36))
        cb = fig.colorbar(im, cax=cax)
        cb.set_label("dose (Gy, total course)", fontsize=7)
        cb.ax.tick_params(labelsize=6)
    handles = [Line2D([], [], color=c, lw=1.2, label=f"{p:g} %") for p, c in zip(ISODOSE_PCT, _ISO_COLOURS)] + [
        Line2D([], [], color=colours[st.name], lw=1.2, label=st.name) for st in data.structures if st.mask.any()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=8, fontsize=6.5, frameon=False, bbox_to_anchor=(0.5, 0.035))
    if plan.dose is None:
        fig.text(0.5, 0.5, "no dose exported for this plan", ha="center", fontsize=12, color="#c62828")
    return fig


def dose_slice_pages(data: ReportInput) -> list[Figure]:
    """One page per plan with a dose (standard first), all on one colour scale."""
    doses = [p for p in data.plans if p.dose is not None]
    if not doses:
        return []
    top = max(float(np.max(p.dose.array)) for p in doses if p.dose is not None)
    rx = data.prescription_gy or top or 1.0
    vmax = max(1.1 * rx, top)
    centre, what = centre_mm(data)
    return [_page(data, p, centre, what, vmax, rx) for p in doses]
