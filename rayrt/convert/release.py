"""QA of a converted plan before release, on top of :func:`rayrt.qa.report.qa_plan`.

Checks (all in the one :class:`~rayrt.qa.report.QAReport`):

* ``qa_plan``: gamma of the converted dose against the standard plan's dose (global 3 %/2 mm,
  10 % cutoff; TG-218 tolerance >= 95 %, action <= 90 %), the DVH criteria of the medical order
  (plus QA-only criteria of :attr:`ConversionOptions.qa_criteria`), deliverability on the target
  machine (:mod:`rayrt.qa.deliverability`);
* the **independent dose check**: the final segments recomputed with the aperture-dose path
  (:func:`rayrt.dose.aperture.aperture_dose`, 2.5 mm bixels, its own Dij) on a finer grid
  (``independent_spacing_factor`` x the dose grid, cropped to the region above 10 % of the
  standard dose plus 10 mm), compared by gamma (3 %/3 mm) and by the target mean dose
  (:func:`rayrt.qa.checks.independent_dose_check`);
* **agreement with the standard plan** (category ``conversion``): every target-like structure's
  D95 within ``dvh_agreement_gy`` of the standard's, every other structure's D10 at most
  ``dvh_agreement_gy`` above the standard's.

Release rule (:func:`release_decision`): a plan is released when no check fails, the gamma
against the standard plan and the independent dose check pass, and every conversion check
passes. A *soft* order criterion that only warns blocks release when the standard plan meets it
(the conversion made it worse); when the standard plan misses it as well, it stays a warning
(verdict ``review``) and is noted. A clinical goal of the order (:func:`rayrt.qa.checks.dvh_criteria_checks`
judges it against the standard dose) blocks release when the standard plan meets it and the
conversion misses it by more than ``GOAL_LOSS_TOLERANCE_PCT`` % of the prescription; a smaller
loss warns (``review``) without blocking.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rayrt.convert.fluence import segments_fluence_on_bixels
from rayrt.convert.policy import ConversionOptions
from rayrt.domain.machine import MachineModel
from rayrt.domain.order import MedicalOrder
from rayrt.domain.plan import Plan
from rayrt.dose.aperture import field_extent_mm
from rayrt.dose.dij import compute_dij
from rayrt.dose.geometry import BeamletGrid, beamlet_grid_for_field
from rayrt.imaging.volume import Grid, Volume
from rayrt.qa.checks import QACheck, aperture_recompute, dvh_criteria_checks, independent_dose_check
from rayrt.qa.dvh import dose_at_volume
from rayrt.qa.report import QAResult, qa_plan

__all__ = [
    "qa_converted_plan",
    "release_decision",
    "release_blocking",
    "independent_grid",
    "agreement_checks",
    "agreement_metrics",
    "agreement_excess_gy",
    "subrow_recompute",
    "jaws_trim_leaves",
]


def independent_grid(
    dose_gy: np.ndarray,
    grid: Grid,
    factor: float = 0.5,
    min_spacing_mm: float = 2.0,
    cutoff_pct: float = 10.0,
    margin_mm: float = 10.0,
    max_spacing_mm: float = 4.0,
) -> Grid:
    """A finer grid (spacing x ``factor``, between ``min_spacing_mm`` and ``max_spacing_mm``) over
    the bounding box of the dose above ``cutoff_pct`` % of its maximum plus ``margin_mm``."""
    d = np.asarray(dose_gy)
    sel = np.argwhere(d >= cutoff_pct / 100.0 * float(d.max())) if d.max() > 0 else np.argwhere(np.ones_like(d, bool))
    lo = sel.min(axis=0).astype(float)
    hi = sel.max(axis=0).astype(float)
    sp_kji = grid.spacing[::-1]
    pad = margin_mm / sp_kji
    lo = np.maximum(lo - pad, 0.0)
    hi = np.minimum(hi + pad, np.asarray(grid.shape, float) - 1)
    fine = np.minimum(grid.spacing * factor, max_spacing_mm)
    new_sp = np.maximum(fine, min(min_spacing_mm, float(grid.spacing.min())))  # (x, y, z)
    origin = grid.index_to_world(lo)
    ext_mm = (hi - lo) * sp_kji  # (k, j, i)
    n_kji = np.floor(ext_mm / new_sp[::-1] + 1e-9).astype(int) + 1
    return Grid(
        shape=(int(n_kji[0]), int(n_kji[1]), int(n_kji[2])),
        spacing_mm=(float(new_sp[0]), float(new_sp[1]), float(new_sp[2])),
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=grid.direction,
    )


def agreement_metrics(
    dose: np.ndarray,
    standard_dose: np.ndarray,
    masks: dict[str, np.ndarray],
    targets: list[str],
    skip: set[str] | None = None,
) -> list[tuple[str, bool, float, float]]:
    """(structure, is target, converted Gy, standard Gy) of the agreement with the standard plan:
    D95 for targets, D10 for the other structures (empty and ``skip`` structures left out)."""
    out = []
    for name, m in masks.items():
        if skip and name in skip or not m.any():
            continue
        a = np.asarray(dose)[m].astype(np.float64)
        b = np.asarray(standard_dose)[m].astype(np.float64)
        pct = 95.0 if name in targets else 10.0
        out.append((name, name in targets, float(dose_at_volume(a, pct)), float(dose_at_volume(b, pct))))
    return out


def agreement_excess_gy(metrics: list[tuple[str, bool, float, float]], tol_gy: float) -> float:
    """Worst excess (Gy) of :func:`agreement_metrics` over the agreement limit: target D95 within
    ``tol_gy`` of the standard plan, other structures' D10 at most ``tol_gy`` above it; <= 0 when
    every agreement check passes."""
    return max(((abs(va - vb) if is_target else va - vb) - tol_gy for _, is_target, va, vb in metrics), default=0.0)


def agreement_checks(
    dose: np.ndarray,
    standard_dose: np.ndarray,
    masks: dict[str, np.ndarray],
    targets: list[str],
    tol_gy: float,
    skip: set[str] | None = None,
) -> list[QACheck]:
    """Targets: |D95 - D95_standard| <= tol; other structures: D10 <= D10_standard + tol (Gy)."""
    out = []
    for name, is_target, va, vb in agreement_metrics(dose, standard_dose, masks, targets, skip):
        diff = va - vb
        if is_target:
            out.append(
                QACheck(
                    name=f"{name} D95 within {tol_gy:g} Gy of the standard plan",
                    category="conversion",
                    status="pass" if abs(diff) <= tol_gy else "fail",
                    value=round(diff, 4),
                    limit=tol_gy,
                    unit="Gy",
                    detail=f"converted {va:.3f} Gy, standard {vb:.3f} Gy",
                )
            )
        else:
            out.append(
                QACheck(
                    name=f"{name} D10 at most {tol_gy:g} Gy above the standard plan",
                    category="conversion",
                    status="pass" if diff <= tol_gy else "fail",
                    value=round(diff, 4),
                    limit=tol_gy,
                    unit="Gy",
                    detail=f"converted {va:.3f} Gy, standard {vb:.3f} Gy",
                )
            )
    return out


def qa_converted_plan(
    plan: Plan,
    machine: MachineModel,
    dose_gy: np.ndarray,
    dose_grid: Grid,
    *,
    standard_dose_gy: np.ndarray,
    masks: dict[str, np.ndarray],
    order: MedicalOrder,
    targets: list[str],
    density: Volume | None,
    options: ConversionOptions,
    attempt: int = 1,
    standard_plan_id: str | None = None,
    derived_masks: set[str] | None = None,
) -> QAResult:
    """Every release check of one converted plan (see the module docstring); doses are course doses in Gy."""
    dose_vol = Volume(np.asarray(dose_gy, dtype=np.float32).reshape(dose_grid.shape), dose_grid, "dose_gy")
    std_vol = Volume(np.asarray(standard_dose_gy, dtype=np.float32).reshape(dose_grid.shape), dose_grid, "dose_gy")
    qa_order = order
    if options.qa_criteria:
        qa_order = order.model_copy(update={"objectives": list(order.objectives) + list(options.qa_criteria)})
    res = qa_plan(
        plan,
        machine,
        dose_vol,
        standard_dose=std_vol,
        masks=masks,
        order=qa_order,
        density=None,
        recompute=None,
        tolerance_pct=options.gamma_tolerance_pct,
        action_pct=options.gamma_action_pct,
        attempts=attempt,
        standard_plan_id=standard_plan_id,
    )
    rep = res.report
    rep.notes = [n for n in rep.notes if "independent dose check skipped" not in n]
    # agreement with the standard plan
    rep.checks += agreement_checks(
        dose_vol.array, std_vol.array, masks, targets, options.dvh_agreement_gy, skip=derived_masks
    )
    # soft criteria the standard plan misses as well
    std_status = {c.name: c for c in dvh_criteria_checks(std_vol, masks, qa_order)}
    for c in rep.checks:
        if c.category == "dvh" and c.status == "warn" and c.blocks_release is not False:
            s = std_status.get(c.name)
            if s is not None and s.status != "pass":
                c.detail += f"; the standard plan misses it too ({s.value} Gy): not blocking"
                c.blocks_release = False
    # independent dose: aperture-dose path on a finer, cropped grid -- the costliest check, run only
    # for a candidate that every other release check lets through (a failing one is regenerated anyway)
    blocking = release_blocking(rep.checks)
    if options.independent_check and density is not None and blocking and options.independent_check_only_if_passing:
        failing = "; ".join(b.split(":")[0] for b in blocking[:3])
        rep.notes.append(f"independent dose check not run: the candidate already fails {failing}")
    elif options.independent_check and density is not None:
        g = independent_grid(
            std_vol.array,
            dose_grid,
            options.independent_spacing_factor,
            options.independent_min_spacing_mm,
            max_spacing_mm=options.independent_max_spacing_mm,
        )
        tm = masks.get(qa_order.prescription.target)
        trims = jaws_trim_leaves(plan, machine) or any(
            sg.x1_proximal_mm is not None for b in plan.beams for sg in b.segments
        )
        recompute = subrow_recompute(density) if trims else aperture_recompute(density)
        checks, indep = independent_dose_check(plan, machine, dose_vol, recompute, grid=g, target_mask=tm)
        rep.checks = checks + rep.checks
        res.independent_dose = indep
        how = (
            "sub-leaf rows at the Y-jaw / proximal-layer edges (they trim wide leaf pairs), rows <= 5 mm, 2.5 mm bixels"
            if trims
            else "aperture_dose"
        )
        rep.notes.append(f"independent dose: {how}, {g.shape} grid, {float(g.spacing.min()):g} mm")
    else:
        rep.notes.append("independent dose check not run")
    rep.verdict = rep.verdict_of(rep.checks)
    return res


def jaws_trim_leaves(plan: Plan, machine: MachineModel) -> bool:
    """Whether some segment's Y jaw ends part-way across a leaf pair (trimming a wide leaf)."""
    if machine.jaw_y is None:
        return False
    b = machine.mlc.boundaries
    for beam in plan.beams:
        for s in beam.segments:
            if s.jaw_y_mm is None:
                continue
            for y in s.jaw_y_mm:
                if b[0] < y < b[-1] and np.min(np.abs(b - y)) > 1e-3:
                    return True
    return False


def subrow_recompute(
    density: Volume, bixel_width_mm: float = 2.5, max_row_mm: float = 5.0, pad_mm: float = 10.0
) -> Callable[[Plan, MachineModel, Grid], Volume]:
    """Independent dose engine for plans whose Y jaws trim leaf pairs part-way: per beam, bixels of
    ``bixel_width_mm`` over the field (:func:`rayrt.dose.aperture.field_extent_mm`) in rows that
    split every leaf pair at each Y-jaw edge and into rows of at most ``max_row_mm``, their own Dij
    (:func:`rayrt.dose.dij.compute_dij`) and the exact bixel-averaged collimator transmission
    (:func:`rayrt.convert.fluence.segments_fluence_on_bixels`). Course dose in Gy."""

    def recompute(plan: Plan, machine: MachineModel, grid: Grid) -> Volume:
        total = np.zeros(grid.num_voxels, dtype=np.float64)
        for beam in plan.beams:
            segs = [s for s in beam.segments if s.mu > 0]
            if not segs:
                continue
            (xa, xb), (ya, yb) = field_extent_mm(segs, machine, pad_mm)
            bg = beamlet_grid_for_field(beam, machine, (xa, xb), (ya, yb), bixel_width_mm)
            e = np.asarray(bg.row_edges_mm, float)
            r0, r1 = int(bg.rows.min()), int(bg.rows.max()) + 1
            cuts = [e[r0 : r1 + 1]] + [np.asarray(s.jaw_y_mm, float) for s in segs if s.jaw_y_mm is not None]
            edges = np.unique(np.round(np.concatenate(cuts), 6))
            edges = edges[(edges >= e[r0] - 1e-9) & (edges <= e[r1] + 1e-9)]
            pieces = [edges[:1]]
            for a, z in zip(edges[:-1], edges[1:]):
                n = max(1, int(np.ceil((z - a) / max_row_mm - 1e-9)))
                pieces.append(np.linspace(a, z, n + 1)[1:])
            fine = np.concatenate(pieces)
            cols = np.unique(bg.cols)
            R, Cn = fine.size - 1, cols.size
            rows = np.repeat(np.arange(R), Cn)
            cc = np.tile(cols, R)
            g2 = BeamletGrid(
                beam,
                machine.name,
                bg.bixel_width_mm,
                fine,
                rows.astype(np.int64),
                cc.astype(np.int64),
                bg.patient_position,
                column_offset_mm=bg.column_offset_mm,
            )
            flu = segments_fluence_on_bixels(segs, machine, g2)
            dij = compute_dij(density, grid, g2, machine)
            total += dij @ flu
        return Volume((total * plan.fractions).reshape(grid.shape).astype(np.float32), grid, "dose_gy")

    return recompute


def release_blocking(checks: list[QACheck]) -> list[str]:
    """Blocking reasons among QA checks (see :func:`release_decision`)."""
    reasons = []
    for c in checks:
        blocking = c.status == "fail"
        if c.status == "warn" and (
            c.category in ("gamma", "dose_check", "conversion", "deliverability")
            or (c.category == "dvh" and c.blocks_release is not False)
        ):
            blocking = True
        if blocking:
            value = c.value if c.value is not None else "-"
            reasons.append(f"{c.name}: {c.status} ({value} {c.unit}, limit {c.limit}) {c.detail[:160]}".strip())
    return reasons


def release_decision(res: QAResult) -> tuple[bool, list[str]]:
    """(released, blocking reasons) for a QA result of :func:`qa_converted_plan`."""
    reasons = release_blocking(res.report.checks)
    return not reasons, reasons
