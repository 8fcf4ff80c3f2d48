"""Machine coincidence: how alike two treatment machines are, to decide how a plan converts.

This module holds the MLC comparison (:func:`compare_mlc`): the collimator decides whether a
plan's segments can be carried over to another machine (identical or finer leaves), must be
resampled (different boundaries), or must be re-optimised (coarser leaves, lost interdigitation,
larger minimum gap) -- or cannot be delivered at all (field too small).

Aspects, each scored 0..1 (1 = the target is at least as capable as the source):

* ``geometry``  -- half: the share of the source's leaf boundaries (inside the target's leaf
  bank) that coincide with a target boundary within ``boundary_tolerance_mm``; half: the mean,
  over the source's leaf pairs, of min(1, source width / width of the target leaf at that
  position) (0 where the target has no leaf). Identical boundaries score 1.
* ``field``     -- the share of the source's maximum field area the target can open. Field in X
  = min(max_field_x_mm, X-jaw range or the leaf travel range); in Y = min(max_field_y_mm, the leaf
  bank extent, the Y-jaw range).
* ``interdigitation`` -- 0 when the source allows interdigitation and the target does not.
* ``min_gap``   -- 1 - max(0, target min gap - source min gap) / ``min_gap_scale_mm``.
* ``span``      -- min(1, target max leaf span / source max leaf span).

Score = weighted mean (weights in ``configs/conversion.yaml``, section ``mlc``). Verdict:
``identical`` (same boundaries, every aspect 1), ``compatible`` (score >= compatible
threshold), ``convertible`` (>= convertible threshold), else ``incompatible``; a field coverage
below ``min_field_coverage`` is ``incompatible`` whatever the score, and so is a target that
cannot open the field a given plan needs (``required_field_mm``, :func:`plan_field_mm`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayrt.config import config_dir
from rayrt.domain.errors import InputError, first_error
from rayrt.domain.machine import MachineModel
from rayrt.domain.plan import Plan

MLCVerdict = Literal["identical", "compatible", "convertible", "incompatible"]


class MLCWeights(BaseModel):
    model_config = ConfigDict(extra="forbid")

    geometry: float = Field(default=0.40, ge=0)
    field: float = Field(default=0.25, ge=0)
    interdigitation: float = Field(default=0.15, ge=0)
    min_gap: float = Field(default=0.10, ge=0)
    span: float = Field(default=0.10, ge=0)


class MLCThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    compatible: float = Field(default=0.85, ge=0, le=1)
    convertible: float = Field(default=0.50, ge=0, le=1)


class MLCCoincidenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    boundary_tolerance_mm: float = Field(default=0.05, gt=0)
    weights: MLCWeights = Field(default_factory=MLCWeights)
    min_gap_scale_mm: float = Field(default=5.0, gt=0)
    thresholds: MLCThresholds = Field(default_factory=MLCThresholds)
    min_field_coverage: float = Field(default=0.25, ge=0, le=1)


class ConversionConfig(BaseModel):
    """``configs/conversion.yaml``; sections other modules own are kept as given."""

    model_config = ConfigDict(extra="allow")

    mlc: MLCCoincidenceConfig = Field(default_factory=MLCCoincidenceConfig)


def load_conversion_config(path: str | Path | None = None) -> ConversionConfig:
    """Read ``configs/conversion.yaml`` (or ``path``); defaults when the file is absent."""
    if path is None:
        path = config_dir() / "conversion.yaml"
    path = Path(path)
    if not path.is_file():
        return ConversionConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return ConversionConfig.model_validate(data)
    except yaml.YAMLError as exc:
        raise InputError(f"{path.name} is not valid YAML: {exc}", kind="config", field=path.name) from None
    except ValidationError as exc:
        loc, msg = first_error(exc)
        raise InputError(f"invalid {path.name}: field '{loc}': {msg}", kind="config", field=loc) from None


class MLCComparison(BaseModel):
    """The MLC of ``target`` compared with the MLC of ``source`` (mm at the isocenter)."""

    source: str
    target: str
    source_pairs: int
    target_pairs: int
    same_pair_count: bool
    same_leaf_widths: bool = Field(description="the same sequence of leaf widths")
    same_boundaries: bool = Field(description="every boundary coincides within the tolerance")
    max_boundary_diff_mm: float | None = Field(
        default=None, description="largest boundary difference when the pair counts agree"
    )
    source_min_width_mm: float
    target_min_width_mm: float
    source_field_mm: tuple[float, float] = Field(description="maximum field (X, Y) the source can open")
    target_field_mm: tuple[float, float]
    interdigitation: Literal["same", "lost", "gained"]
    min_gap_diff_mm: float = Field(description="target minus source minimum leaf gap")
    span_ratio: float = Field(description="target / source maximum leaf span")
    scores: dict[str, float] = Field(description="per aspect, 0..1")
    score: float = Field(ge=0, le=1)
    verdict: MLCVerdict
    reasons: list[str] = Field(default_factory=list, description="what keeps the score below 1")


def max_field_mm(machine: MachineModel) -> tuple[float, float]:
    """Largest field (X, Y) in mm at the isocenter the machine can open (jaws, leaves, limits)."""
    mlc = machine.mlc
    fx = mlc.max_position_mm - mlc.min_position_mm
    if machine.jaw_x is not None:
        fx = min(fx, machine.jaw_x.max_mm - machine.jaw_x.min_mm)
    fx = min(fx, machine.limits.max_field_x_mm)
    fy = mlc.leaf_boundaries_mm[-1] - mlc.leaf_boundaries_mm[0]
    if machine.jaw_y is not None:
        fy = min(fy, machine.jaw_y.max_mm - machine.jaw_y.min_mm)
    fy = min(fy, machine.limits.max_field_y_mm)
    return float(fx), float(fy)


def _geometry_score(src: np.ndarray, tgt: np.ndarray, tol: float) -> tuple[float, list[str]]:
    reasons: list[str] = []
    inside = (src >= tgt[0] - tol) & (src <= tgt[-1] + tol)
    if inside.any():
        d = np.abs(src[inside][:, None] - tgt[None, :]).min(axis=1)
        coincide = float(np.mean(d <= tol))
    else:
        coincide = 0.0
    centres = 0.5 * (src[:-1] + src[1:])
    widths = np.diff(src)
    idx = np.searchsorted(tgt, centres, side="right") - 1
    has = (idx >= 0) & (idx < tgt.size - 1)
    tw = np.where(has, np.diff(tgt)[np.clip(idx, 0, tgt.size - 2)], np.inf)
    res = np.where(has, np.minimum(1.0, widths / tw), 0.0)
    resolution = float(res.mean())
    if coincide < 1.0:
        reasons.append(f"{100 * (1 - coincide):.0f} % of the source leaf boundaries have no matching target boundary")
    if (~has).any():
        reasons.append(f"{int((~has).sum())} source leaf pair(s) lie outside the target's leaf bank")
    coarser = has & (widths < tw - tol)
    if coarser.any():
        reasons.append(
            f"{int(coarser.sum())} source leaf pair(s) fall on wider target leaves "
            f"(up to {float(tw[coarser].max()):g} mm vs {float(widths[coarser].min()):g} mm)"
        )
    return 0.5 * coincide + 0.5 * resolution, reasons


def plan_field_mm(plan: Plan, machine: MachineModel) -> tuple[float, float]:
    """The largest field (X, Y) in mm that ``plan``'s segments open on ``machine``: the extent of
    the open leaf tips in X and of the open leaf pairs' boundaries in Y (within the Y jaws), over
    all segments. A pair is open when its gap exceeds the MLC's minimum gap."""
    b = machine.mlc.boundaries
    lo_x, hi_x, lo_y, hi_y = np.inf, -np.inf, np.inf, -np.inf
    for beam in plan.beams:
        for s in beam.segments:
            x1, x2 = np.asarray(s.x1_mm, float), np.asarray(s.x2_mm, float)
            open_ = x2 - x1 > machine.mlc.min_gap_mm + 1e-2  # closed pairs are parked at the minimum gap
            if s.jaw_y_mm is not None and x1.size == b.size - 1:
                open_ &= (b[1:] > s.jaw_y_mm[0]) & (b[:-1] < s.jaw_y_mm[1])
            if not open_.any():
                continue
            lo_x, hi_x = min(lo_x, float(x1[open_].min())), max(hi_x, float(x2[open_].max()))
            idx = np.nonzero(open_)[0]
            if x1.size == b.size - 1:
                lo_y, hi_y = min(lo_y, float(b[idx[0]])), max(hi_y, float(b[idx[-1] + 1]))
    if not np.isfinite(lo_x):
        return 0.0, 0.0
    return hi_x - lo_x, (hi_y - lo_y) if np.isfinite(lo_y) else 0.0


def compare_mlc(
    source: MachineModel,
    target: MachineModel,
    config: ConversionConfig | MLCCoincidenceConfig | None = None,
    *,
    required_field_mm: tuple[float, float] | None = None,
) -> MLCComparison:
    """Compare the target machine's MLC with the source's (see the module docstring).

    ``required_field_mm``: the field (X, Y) a particular plan opens (:func:`plan_field_mm`); the
    field aspect then measures the share of *that* field the target can open, and a target that
    cannot open all of it is ``incompatible`` (the plan is not deliverable there).
    """
    if config is None:
        config = load_conversion_config()
    cfg = config.mlc if isinstance(config, ConversionConfig) else config
    tol = cfg.boundary_tolerance_mm
    sm, tm = source.mlc, target.mlc
    sb, tb = sm.boundaries, tm.boundaries
    same_n = sm.num_pairs == tm.num_pairs
    max_diff = float(np.abs(sb - tb).max()) if same_n else None
    same_b = bool(same_n and max_diff is not None and max_diff <= tol)
    same_w = bool(same_n and np.allclose(sm.leaf_widths_mm, tm.leaf_widths_mm, atol=tol))

    reasons: list[str] = []
    geometry, r = (1.0, []) if same_b else _geometry_score(sb, tb, tol)
    reasons += r
    sf, tf = max_field_mm(source), max_field_mm(target)
    if required_field_mm is None:
        need = sf
    else:
        need = (max(float(required_field_mm[0]), 1e-6), max(float(required_field_mm[1]), 1e-6))
    field = float(min(1.0, (min(need[0], tf[0]) * min(need[1], tf[1])) / (need[0] * need[1])))
    if field < 1.0:
        what = "the plan's field" if required_field_mm is not None else "the source's maximum field"
        reasons.append(f"target field {tf[0]:g} x {tf[1]:g} mm is smaller than {what} {need[0]:g} x {need[1]:g} mm")
    idig: Literal["same", "lost", "gained"]
    if sm.interdigitation and not tm.interdigitation:
        inter, idig = 0.0, "lost"
        reasons.append(f"{tm.name} forbids interdigitation, which {sm.name} allows")
    else:
        inter, idig = 1.0, ("same" if sm.interdigitation == tm.interdigitation else "gained")
    gap_diff = float(tm.min_gap_mm - sm.min_gap_mm)
    gap = float(np.clip(1.0 - max(0.0, gap_diff) / cfg.min_gap_scale_mm, 0.0, 1.0))
    if gap_diff > 1e-9:
        reasons.append(f"target minimum leaf gap {tm.min_gap_mm:g} mm > source {sm.min_gap_mm:g} mm")
    span_ratio = float(tm.max_leaf_span_mm / sm.max_leaf_span_mm)
    span = min(1.0, span_ratio)
    if span < 1.0:
        reasons.append(f"target maximum leaf span {tm.max_leaf_span_mm:g} mm < source {sm.max_leaf_span_mm:g} mm")

    scores = {
        "geometry": round(geometry, 6),
        "field": round(field, 6),
        "interdigitation": inter,
        "min_gap": round(gap, 6),
        "span": round(span, 6),
    }
    w = cfg.weights.model_dump()
    wsum = sum(w.values())
    if wsum <= 0:
        raise InputError("conversion.yaml: the mlc weights must not all be zero", kind="config", field="mlc.weights")
    score = float(sum(scores[k] * w[k] for k in scores) / wsum)
    score = min(1.0, max(0.0, score))
    if same_b and all(v >= 1.0 for v in scores.values()):
        verdict: MLCVerdict = "identical"
    elif required_field_mm is not None and field < 1.0 - 1e-9:
        verdict = "incompatible"
        reasons.append("the plan opens a larger field than the target machine can")
    elif field < cfg.min_field_coverage:
        verdict = "incompatible"
        reasons.append(
            f"the target opens only {100 * field:.0f} % of the source's field "
            f"(minimum {100 * cfg.min_field_coverage:.0f} %)"
        )
    elif score >= cfg.thresholds.compatible:
        verdict = "compatible"
    elif score >= cfg.thresholds.convertible:
        verdict = "convertible"
    else:
        verdict = "incompatible"
    return MLCComparison(
        source=source.name,
        target=target.name,
        source_pairs=sm.num_pairs,
        target_pairs=tm.num_pairs,
        same_pair_count=same_n,
        same_leaf_widths=same_w,
        same_boundaries=same_b,
        max_boundary_diff_mm=max_diff,
        source_min_width_mm=float(sm.leaf_widths_mm.min()),
        target_min_width_mm=float(tm.leaf_widths_mm.min()),
        source_field_mm=sf,
        target_field_mm=tf,
        interdigitation=idig,
        min_gap_diff_mm=gap_diff,
        span_ratio=span_ratio,
        scores=scores,
        score=round(score, 6),
        verdict=verdict,
        reasons=reasons,
    )
