"""Prescription normalisation of the final plan: scale all MU so the order's metric equals the
prescription (e.g. PTV D95 = 100 % of Rx). Dose is linear in MU, so the dose scales the same."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rayrt.domain.errors import InputError
from rayrt.domain.order import MedicalOrder
from rayrt.domain.plan import Plan

__all__ = ["metric_weights", "normalization_factor", "scale_plan", "normalize_plan", "NORMALISATION_HEADROOM"]

NORMALISATION_HEADROOM = 1e-6
"""The normalisation lifts its factor by this hair so that 'D95 >= Rx' criteria of a normalised
plan do not fail on round-off (standard and converted plans alike)."""


def _dose_at_volume(values: np.ndarray, volume_pct: float) -> float:
    from rayrt.qa.dvh import dose_at_volume

    return float(dose_at_volume(values, volume_pct))


def metric_weights(d: np.ndarray, volume_pct: float | None) -> tuple[float, np.ndarray, np.ndarray]:
    """The normalisation metric of doses ``d`` (Gy) and its gradient as (value, voxel positions,
    weights): ``Dx`` by the mid-rank interpolation of :func:`rayrt.qa.dvh.dose_at_volume` (two
    voxels), or the mean (``volume_pct`` None)."""
    n = d.size
    if volume_pct is None:
        return float(d.mean()), np.arange(n), np.full(n, 1.0 / n)
    order = np.argsort(-d, kind="stable")
    p = volume_pct / 100.0 * n + 0.5 - 1.0  # 0-based fractional rank of the Dx point
    if p <= 0:
        return float(d[order[0]]), order[:1], np.ones(1)
    if p >= n - 1:
        return float(d[order[-1]]), order[-1:], np.ones(1)
    r0 = int(np.floor(p))
    f = p - r0
    idx = order[[r0, r0 + 1]]
    wts = np.array([1.0 - f, f])
    return float(wts @ d[idx]), idx, wts


def normalization_factor(target_dose_gy: np.ndarray, order: MedicalOrder) -> float:
    """Factor for the MU (and dose) so that the normalisation metric on ``target_dose_gy`` (the
    dose values in the normalisation structure, Gy) equals ``value_pct`` % of the prescription."""
    norm = order.prescription.normalization
    if norm.metric == "none":
        return 1.0
    v = np.asarray(target_dose_gy, dtype=float)
    if v.size == 0:
        raise InputError(
            "the normalisation structure has no voxel on the dose grid", kind="order", field="normalization.structure"
        )
    if norm.metric == "mean":
        current = float(np.mean(v))
    else:
        volume_pct = norm.volume_pct
        if volume_pct is None:
            raise InputError(
                f"normalisation metric {norm.metric!r} must be 'D<vol%>', 'mean' or 'none'",
                kind="order",
                field="normalization.metric",
            )
        current = _dose_at_volume(v, volume_pct)
    if not np.isfinite(current) or current <= 0:
        raise InputError(
            f"cannot normalise: {norm.metric} of the target is {current} Gy", kind="order", field="normalization"
        )
    return order.prescription.total_dose_gy * norm.value_pct / 100.0 / current


def scale_plan(plan: Plan, factor: float) -> Plan:
    """A copy of ``plan`` with every segment's MU multiplied by ``factor``."""
    p = plan.model_copy(deep=True)
    for b in p.beams:
        for s in b.segments:
            s.mu = float(s.mu * factor)
    return p


def normalize_plan(
    plan: Plan,
    dose_fn: Callable[[Plan], np.ndarray],
    masks: dict[str, np.ndarray],
    order: MedicalOrder,
    min_mu_per_segment: float,
    headroom: float = NORMALISATION_HEADROOM,
) -> tuple[Plan, np.ndarray, float, int]:
    """Scale ``plan`` so the order's normalisation metric equals the prescription, then raise every
    segment below ``min_mu_per_segment`` (MU per fraction) to it and recompute the dose.

    ``dose_fn(plan)`` is the flat course dose (Gy) on the grid of ``masks``; ``headroom`` lifts the
    factor a hair (:data:`NORMALISATION_HEADROOM`) so that 'D95 >= Rx' criteria do not fail on round-off. Returns
    (plan, flat dose Gy, factor, number of segments raised)."""
    dose = dose_fn(plan)
    nstruct = order.prescription.normalization.structure or order.prescription.target
    f = normalization_factor(dose[masks[nstruct].ravel()], order) * (1.0 + headroom)
    plan = scale_plan(plan, f)
    dose = dose * f
    low = [s for b in plan.beams for s in b.segments if s.mu < min_mu_per_segment]
    for s in low:
        s.mu = min_mu_per_segment
    if low:
        dose = dose_fn(plan)
    return plan, dose, f, len(low)
