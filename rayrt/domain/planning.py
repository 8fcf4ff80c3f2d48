"""The planning request: what to plan (target machines) and how (beams, grids, optimisation,
conversion and QA settings). Doses in Gy, lengths in mm, angles IEC 61217.

One set of defaults serves every way in (``rayrt plan``, ``POST /jobs``, ``rayrt demo``): the
``planning`` section of ``configs/planning.yaml`` (:func:`planning_defaults`), over which a job's
own options are laid (:func:`planning_request`). The request is validated once, where it enters
(the HTTP ingress, the CLI); a :class:`~rayrt.domain.job.Job` then carries it whole, so the job
records exactly the settings it ran with.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rayrt.config import config_dir
from rayrt.domain.errors import InputError, first_error

__all__ = [
    "PlanningRequest",
    "AutoPlanOptions",
    "gantry_key",
    "ConversionMode",
    "planning_defaults",
    "planning_request",
    "PLANNING_CONFIG",
]

ConversionMode = Literal["reuse", "dose_only", "mu_refit", "fluence", "dao"]

PLANNING_CONFIG = "planning.yaml"
"""File in the config dir whose ``planning`` section holds the defaults of every field."""


class AutoPlanOptions(BaseModel):
    """How an order's clinical goals become an optimisation (rayrt.optimize.autoplan). Doses in Gy,
    lengths in mm, shares in % of a target's dose level."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(default=6, ge=1, le=30, description="re-weighting rounds (one warm-started solve each)")
    iterations_per_round: int = Field(default=40, ge=5, le=1000, description="L-BFGS-B iterations per round")
    sib_gap_mm: float = Field(
        default=5.0, ge=0, le=30, description="a lower-level target is optimised this far away from higher ones"
    )
    organ_gap_mm: float = Field(
        default=5.0, ge=0, le=30, description="organ objectives act on the organ minus the targets grown by this"
    )
    skin_crop_mm: float = Field(
        default=5.0, ge=0, le=20, description="targets are optimised this far inside the external contour"
    )
    target_hot_pct: float = Field(
        default=104.0, ge=100, le=130, description="squared over-dose of each target above this % of its level"
    )
    falloff_end_pct: float = Field(
        default=30.0, ge=0, le=100, description="normal-tissue fall-off: the limit far from the targets, % of level"
    )
    falloff_length_mm: float = Field(default=10.0, gt=0, le=100, description="normal-tissue fall-off length (1/e)")
    falloff_weight: float = Field(default=5.0, ge=0, description="weight of the normal-tissue fall-off")
    coverage_weight: float = Field(default=100.0, gt=0, description="initial weight of each target's coverage terms")
    hot_weight: float = Field(default=30.0, ge=0, description="initial weight of each target's hot-spot terms")
    organ_weight: float = Field(default=10.0, gt=0, description="initial weight of an organ goal's term")
    push_pct: float = Field(
        default=4.0,
        ge=0,
        le=50,
        description="a met organ goal's aim is lowered to its achieved value minus this % of the prescription "
        "each round, while no higher-ranked goal is lost",
    )
    hard_ranks: int = Field(
        default=0, ge=0, le=10, description="organ goals of this rank or higher priority are also hard constraints"
    )
    hard_margin_pct: float = Field(
        default=1.0, ge=0, le=20, description="hard constraints sit this % of the prescription inside their goal"
    )
    robust_pct: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="during the rounds a goal counts as met only this % of the prescription inside it (percentage "
        "points for a V<x>Gy goal): the margin leaf sequencing and DAO take back",
    )
    weight_step: float = Field(default=2.0, gt=1, le=10, description="factor on an unmet goal's weights per round")
    max_weight_factor: float = Field(
        default=64.0, ge=1, description="an unmet goal's weights grow at most this factor over their start"
    )
    candidate_steps: list[float] = Field(
        default_factory=lambda: [1.0, 2.0],
        min_length=1,
        max_length=8,
        description="each round's candidate re-weightings, solved independently (one Ray task each in the "
        "service): the candidate with step s pushes met organ goals s x push_pct and multiplies unmet goals' "
        "weights by weight_step^s; the round goes on from the candidate that meets the goals best",
    )

    @field_validator("candidate_steps")
    @classmethod
    def _positive_steps(cls, v: list[float]) -> list[float]:
        if any(not (0.0 < s <= 4.0) for s in v):
            raise ValueError("every candidate step must be > 0 and <= 4")
        return v


class PlanningRequest(BaseModel):
    """What to plan: target machines and the planning settings (doses in Gy, lengths in mm)."""

    model_config = ConfigDict(extra="forbid")

    machines: list[str] = Field(
        default_factory=list,
        description="target treatment machines (configs/machines names); empty = standard plan only",
    )
    standard_machine: str | None = Field(
        default=None, description="machine the standard plan is optimised on (default: the library's standard machine)"
    )
    gantry_deg: list[float] | None = Field(
        default=None, description="IEC 61217 gantry angles; default num_beams equispaced from 0"
    )
    num_beams: int = Field(default=9, ge=1, le=72)
    beam_angle_alternatives: list[list[float]] = Field(
        default_factory=list,
        max_length=7,
        description="other IEC 61217 gantry-angle sets the planner may choose instead of gantry_deg / num_beams: "
        "each set's fluence is optimised (one Ray task per set in the service) and the set whose plan meets the "
        "order's goals best is kept (ties: the first); empty = plan the one set",
    )
    dose_grid_mm: float = Field(default=5.0, gt=0, le=20)
    bixel_mm: float = Field(default=5.0, gt=0, le=20)
    margin_mm: float = Field(default=5.0, ge=0, le=30)
    bixel_columns: Literal["edge", "isocenter"] = Field(
        default="edge",
        description="alignment of the bixel columns along the leaf-travel direction (rows are always the leaf pairs): "
        "'edge' = column edges at multiples of bixel_mm from the central axis; 'isocenter' = bixels centred "
        "on it (centres at multiples of bixel_mm, as matRad/pyRadPlan)",
    )
    dij_cutoff_mm: float = Field(default=50.0, gt=0, description="lateral kernel cut-off of the pencil beams")
    dij_threshold: float = Field(default=1e-4, ge=0, lt=1, description="relative Dij entries below this are dropped")
    chunks_per_cpu: int = Field(
        default=2, ge=1, le=64, description="Dij tasks per free CPU (load balance vs per-chunk depth overhead)"
    )
    max_segments: int = Field(
        default=12,
        ge=1,
        le=100,
        description="segments per beam of the standard plan (the machine's max_segments_per_beam caps it)",
    )
    min_segment_area_cm2: float = Field(
        default=2.0,
        ge=0,
        le=100,
        description="planning policy: smallest open area of a segment at the isocenter plane (cm²); the effective "
        "limit is the stricter of this and the machine's min_segment_area_cm2 (standard plan and conversions)",
    )
    min_segment_mu: float = Field(
        default=2.0,
        ge=0,
        le=100,
        description="planning policy: smallest MU of a segment, MU per fraction; the effective limit is the "
        "stricter of this and the machine's min_mu_per_segment",
    )
    sequencer: str = Field(
        default="sweep", description="leaf sequencer (rayrt.optimize.sequencing registry: sweep, xia_verhey)"
    )
    fmo_iterations: int = Field(default=200, ge=1, description="L-BFGS-B iterations of the fluence-map optimisation")
    fmo_normalization_passes: int = Field(
        default=2,
        ge=1,
        le=5,
        description="the fluence optimisation runs in this many passes; after each but the last, the prescription "
        "target's aims are raised by the factor the final normalisation would apply (at most x1.25), so the organ "
        "objectives act on the dose scale of the normalised plan (1: one pass, no re-aiming)",
    )
    organ_aim_margin_pct: float = Field(
        default=10.0,
        ge=0,
        le=50,
        description="soft upper-bound objectives of every organ with a clinical goal are aimed this % of the "
        "prescription below the goal (rayrt.optimize.problem.organ_aims); QA and the export still judge the goal",
    )
    fluence_smoothing: float = Field(
        default=0.05,
        ge=0,
        description="smoothing of each beam's fluence (rayrt.optimize.regularize): weight of the mean squared "
        "relative difference of neighbouring beamlets, in units of the prescription squared",
    )
    max_beamlet_weight: float | None = Field(
        default=4.0,
        gt=0,
        description="no beamlet above this multiple of the open-field weight (the uniform weight giving the "
        "prescription as mean target dose); None: unbounded",
    )
    fluence_mu_cap: float | None = Field(
        default=3.0,
        gt=0,
        description="the fluence's MU as a unidirectional sweep would deliver it, above this multiple of the "
        "open-field MU, is penalised (rayrt.optimize.regularize.SweepMU); None: no MU term",
    )
    max_mu_factor: float | None = Field(
        default=4.0,
        gt=1,
        description="no plan above this multiple of the open-field MU (the plan's MU after prescription "
        "normalisation; DAO and the conversions' MU refit hold it, rayrt.optimize.mu_bound); None: unbounded",
    )
    fluence_mu_weight: float = Field(
        default=0.01,
        ge=0,
        description="weight of the MU term: an excess of one open-field MU above the cap costs this x Rx^2 "
        "(commensurate with the dose objectives, mean squared Gy)",
    )
    autoplan: AutoPlanOptions = Field(
        default_factory=AutoPlanOptions, description="automatic planning from clinical goals (orders with goals)"
    )
    dao_rounds: int = Field(default=2, ge=1, description="direct-aperture-optimisation rounds")
    dao_iterations: int = Field(default=30, ge=1, description="iterations per DAO round")
    conversion_mode: ConversionMode | None = Field(
        default=None,
        description="force the recompute mode of each conversion's first attempt "
        "(None: rayrt.convert's policy from the coincidence verdict)",
    )
    conversion_options: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of rayrt.convert.policy.ConversionOptions "
        "(configs/conversion.yaml, section conversion), e.g. {max_attempts: 1, fmo_iterations: 60}; "
        "checked where the request enters (rayrt.pipeline.check_request)",
    )
    qa_independent_dose: bool = Field(
        default=True, description="recompute each plan's dose with the aperture engine (rayrt.dose.aperture)"
    )
    qa_grid_mm: float | None = Field(
        default=None, gt=0, description="grid of the independent dose (default: the dose grid)"
    )
    qa_bixel_mm: float = Field(
        default=2.5, gt=0, le=20, description="bixel width of the independent aperture dose engine"
    )
    qa_figures: bool = Field(default=False, description="also render qa_<machine>.png (matplotlib, ~1 s per machine)")

    @field_validator("gantry_deg")
    @classmethod
    def _distinct_angles(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            _check_angle_set(v)
        return v

    @field_validator("beam_angle_alternatives")
    @classmethod
    def _distinct_sets(cls, v: list[list[float]]) -> list[list[float]]:
        for angles in v:
            _check_angle_set(angles)
        return v

    def angles(self) -> list[float]:
        """Gantry angles (degrees, IEC 61217): ``gantry_deg`` or ``num_beams`` equispaced from 0."""
        if self.gantry_deg:
            return [float(a) % 360.0 for a in self.gantry_deg]
        return [round(i * 360.0 / self.num_beams, 6) for i in range(self.num_beams)]

    def angle_sets(self) -> list[list[float]]:
        """The beam-angle sets to choose from (degrees, IEC 61217): :meth:`angles` first, then each
        of ``beam_angle_alternatives`` that differs from every set before it (as a set of angles)."""
        out = [self.angles()]
        for angles in self.beam_angle_alternatives:
            s = [float(a) % 360.0 for a in angles]
            if all(_angle_key(s) != _angle_key(o) for o in out):
                out.append(s)
        return out

    def all_angles(self) -> list[float]:
        """Every distinct gantry angle of :meth:`angle_sets`, in first-appearance order: the beams
        whose bixels and Dij are computed (one set: exactly :meth:`angles`)."""
        seen: dict[float, float] = {}
        for s in self.angle_sets():
            for a in s:
                seen.setdefault(gantry_key(a), a)
        return list(seen.values())


def gantry_key(angle_deg: float) -> float:
    """A gantry angle as beams are compared: to 0.001 degree, 360 = 0."""
    return round(float(angle_deg) % 360.0, 3) % 360.0


def _angle_key(angles: list[float]) -> frozenset[float]:
    """A set of gantry angles compared as :func:`gantry_key` compares one."""
    return frozenset(gantry_key(a) for a in angles)


def _check_angle_set(angles: list[float]) -> None:
    if not 1 <= len(angles) <= 72:
        raise ValueError("a gantry-angle set has 1 to 72 angles")
    if len(_angle_key(angles)) != len(angles):
        raise ValueError(f"the gantry angles {list(angles)} repeat a beam (angles are compared modulo 360)")


def _first_error(exc: ValidationError, prefix: str, kind: str) -> InputError:
    loc, msg = first_error(exc)
    return InputError(f"invalid planning option '{loc}': {msg}", kind=kind, field=f"{prefix}{loc}", status=422)


@lru_cache(maxsize=8)
def _defaults(path: str, mtime: float) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{PLANNING_CONFIG} is not valid YAML: {exc}", kind="config", field=PLANNING_CONFIG) from None
    section = data.get("planning", {}) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise InputError(
            f"{PLANNING_CONFIG}: 'planning' must be a mapping of PlanningRequest fields",
            kind="config",
            field="planning",
        )
    try:
        PlanningRequest.model_validate(section)
    except ValidationError as exc:
        raise _first_error(exc, "planning.", "config") from None
    return section


def planning_defaults(path: str | Path | None = None) -> dict[str, Any]:
    """The ``planning`` section of ``configs/planning.yaml`` (or ``path``): the default of every
    PlanningRequest field for every job. An absent file leaves the model's own defaults."""
    p = Path(path) if path is not None else config_dir() / PLANNING_CONFIG
    if not p.is_file():
        return {}
    return dict(_defaults(str(p), p.stat().st_mtime))


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``; nested sections (e.g. ``autoplan``) merged field by field."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def planning_request(
    options: Mapping[str, Any] | None = None,
    machines: list[str] | None = None,
    *,
    defaults_path: str | Path | None = None,
    field_prefix: str = "options.",
) -> PlanningRequest:
    """A PlanningRequest: the configured defaults, then ``options`` (a job's or the CLI's overrides),
    then ``machines`` when given. InputError 422 naming the first bad field."""
    data = _merged(planning_defaults(defaults_path), dict(options or {}))
    if machines is not None:
        data["machines"] = list(machines)
    try:
        return PlanningRequest.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, field_prefix, "options") from None
