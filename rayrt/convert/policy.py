"""Conversion settings, machine coincidence (source + MLC) and the recompute-mode policy.

Settings come from ``configs/conversion.yaml`` (:func:`load_conversion_options`): the section
``source`` (:class:`~rayrt.convert.source_match.SourceMatchConfig`: gamma criteria and
thresholds of the beam comparison), the section ``conversion`` (:class:`ConversionOptions`:
attempts, mimicking strengths, QA limits) and the QA developer's ``mlc`` section
(:func:`rayrt.convert.coincidence.compare_mlc`). Absent sections take the defaults below.

Recompute modes (:data:`Mode`), from cheapest to most thorough:

* ``reuse``     -- the standard plan itself, relabelled for the target machine, MU divided by
  the output ratio (target / source dose per MU). Only for a *matching* machine.
* ``dose_only`` -- the standard plan's fluence on the target MLC (segments copied and made
  deliverable when the leaf boundaries are the same, else the fluence re-sequenced), dose
  recomputed with the target beam model, MU renormalised.
* ``mu_refit``  -- the ``dose_only`` segments (leaves unchanged) with every segment's MU refitted
  on the target's exact segment doses to the terms that mimic the standard plan, evaluated on the
  prescription-normalised dose (:func:`rayrt.optimize.mu_refit.refit_segment_mu`): the standard
  plan's relative segment weights were fitted to the *standard* beam model, so a target whose
  beam differs (penumbra, scatter tails, transmission) needs them refitted, not just rescaled.
* ``fluence``   -- fluence-map re-optimisation on the target's beamlets with the medical order
  plus mimicking of the standard plan (dose per voxel, DVHs, isodose surfaces), sequencing, and a
  segment-MU refit.
* ``dao``       -- ``fluence`` followed by direct aperture optimisation of leaves and MU.

Policy (:func:`choose_modes`): the overall verdict of the coincidence decides the first mode and
the fall-backs, one per attempt, each later attempt with ``strength_factor`` times stronger
mimicking:

=================  ==========================================  =====================================
verdict            when                                        attempts
=================  ==========================================  =====================================
``matches``        source ``matches`` and MLC ``identical``    reuse, dose_only, mu_refit, fluence, dao
``same_leaves``    MLC ``identical`` / ``compatible``          mu_refit, dao, dao...
``convertible``    MLC ``convertible`` (or an ``incompatible``  dao, dao, dao...
                   score while the plan's field still fits)
``incompatible``   the target cannot open the plan's field     none: reported failed
=================  ==========================================  =====================================

Outside ``matches`` something that shapes the dose differs (beam curves, or leaf transmission and
leaf-end leakage of a different MLC even where the beams match): the segments are kept but their
MU refitted (``mu_refit``) rather than only rescaled (``dose_only``, which a 1 Gy shift of an
organ's D10 already fails). :func:`rayrt.convert.convert.convert_for_machine` puts ``mu_refit``
before a ``convertible`` target's attempts when the standard segments transfer exactly onto its
leaves. A forced mode (``ConversionOptions.mode`` or the ``mode`` argument) is
tried first; later attempts continue along reuse -> dose_only -> mu_refit -> fluence -> dao with
stronger mimicking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayrt.convert.coincidence import (
    ConversionConfig,
    MLCCoincidenceConfig,
    MLCComparison,
    compare_mlc,
    load_conversion_config,
    plan_field_mm,
)
from rayrt.convert.source_match import SourceComparison, SourceMatchConfig, compare_sources
from rayrt.domain.errors import InputError, first_error
from rayrt.domain.machine import MachineModel
from rayrt.domain.order import ObjectiveSpec
from rayrt.domain.plan import Plan

__all__ = [
    "Mode",
    "MODES",
    "ConversionOptions",
    "CoincidenceReport",
    "load_conversion_options",
    "machine_coincidence",
    "choose_modes",
]

Mode = Literal["reuse", "dose_only", "mu_refit", "fluence", "dao"]
MODES: tuple[Mode, ...] = ("reuse", "dose_only", "mu_refit", "fluence", "dao")
Verdict = Literal["matches", "same_leaves", "convertible", "incompatible"]


class ConversionOptions(BaseModel):
    """How one standard plan is converted for a target machine (section ``conversion`` of conversion.yaml)."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode | None = Field(
        default=None, description="force a recompute mode for the first attempt (None: the policy chooses)"
    )
    max_attempts: int = Field(
        default=3, ge=1, le=10, description="conversion attempts before the plan is reported failed"
    )
    strength_factor: float = Field(default=4.0, ge=1.0, description="mimicking weights grow by this factor per attempt")
    # beamlets / optimisation on the target machine
    bixel_mm: float = Field(default=5.0, gt=0, description="beamlet width along leaf travel (mm)")
    margin_mm: float = Field(default=5.0, ge=0, description="beamlets reach this far beyond the target projection (mm)")
    max_segments: int | None = Field(
        default=None,
        ge=1,
        description="segments per beam on MLCs with interdigitation (capped by the machine's limit); None: the "
        "planning default (configs/planning.yaml max_segments), the standard plan's own limit",
    )
    max_segments_no_interdigitation: int = Field(
        default=30,
        ge=1,
        description="segments per beam on MLCs without interdigitation (capped by the machine's "
        "limit): apertures are split into runs of consecutive open pairs there, so the same fluence needs more "
        "segments",
    )
    sequencer: str = "sweep"
    min_segment_area_cm2: float | None = Field(
        default=None,
        ge=0,
        description="planning policy: smallest segment open area at the isocenter (cm²) on the target machine; "
        "the stricter of this and the machine's min_segment_area_cm2 binds (None: the planning default, "
        "configs/planning.yaml)",
    )
    min_segment_mu: float | None = Field(
        default=None,
        ge=0,
        description="planning policy: smallest segment MU per fraction on the target machine; the stricter of "
        "this and the machine's min_mu_per_segment binds (None: the planning default, configs/planning.yaml)",
    )
    y_jaw_trim: bool = Field(
        default=True,
        description="Y jaws trim the end leaf pairs to the standard plan's field "
        "ends when the target's leaves are wider than the beamlets (MLCi2)",
    )
    y_trim_min_fraction: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="field ends for the Y-jaw trim: the "
        "outermost standard leaf pairs with at least this share of the beam's largest "
        "MU-weighted open width",
    )
    fmo_iterations: int = Field(default=150, ge=1)
    # fluence regularisation of the target machine's fluence-map optimisation (rayrt.optimize.regularize);
    # None: the planning default (configs/planning.yaml), as the standard plan had
    fluence_smoothing: float | None = Field(
        default=None, ge=0, description="smoothing weight of the conversion's fluence (None: the planning default)"
    )
    max_beamlet_weight: float | None = Field(
        default=None,
        gt=0,
        description="no beamlet above this x the open-field weight (None: the planning default)",
    )
    fluence_mu_cap: float | None = Field(
        default=None,
        gt=0,
        description="the fluence's sweep MU above this x the open-field MU is penalised (None: the planning default)",
    )
    fluence_mu_weight: float | None = Field(
        default=None, ge=0, description="weight of the sweep-MU penalty (None: the planning default)"
    )
    max_mu_factor: float | None = Field(
        default=None,
        gt=1,
        description="no converted plan above this x the standard plan's open-field MU, after normalisation "
        "(DAO and the MU refit hold it, rayrt.optimize.mu_bound; None: the planning default)",
    )
    dao_rounds: int = Field(default=2, ge=1)
    dao_iterations: int = Field(default=40, ge=1)
    mu_refit_iterations: int = Field(
        default=60,
        ge=1,
        description="exact segment-MU refit (mu_refit mode; after "
        "sequencing in fluence mode; after DAO when dao_mu_refit)",
    )
    dao_mu_refit: bool = Field(
        default=True, description="dao mode: finish with the exact segment-MU refit on the normalised dose"
    )
    # mimicking of the standard plan
    mimic_tolerance_pct: float = Field(
        default=2.0, ge=0, description="dose-mimicking tolerance per voxel, % of the prescription"
    )
    mimic_weight: float = Field(default=1000.0, ge=0, description="priority of the per-structure dose-mimicking terms")
    dvh_levels_target_pct: list[float] = Field(
        default_factory=lambda: [2.0, 10.0, 95.0, 98.0], description="volume levels of target DVH terms"
    )
    agreement_boost: float = Field(
        default=4.0,
        ge=1.0,
        description="a structure whose agreement with the standard plan (target D95, organ D10) comes within half "
        "of dvh_agreement_gy of failing, or fails, gets its DVH-mimicking weights multiplied by this in every "
        "later attempt (1: off); the global strength_factor leaves the balance of the mimicking terms unchanged",
    )
    agreement_refits: int = Field(
        default=3,
        ge=0,
        description="after a candidate's exact segment-MU refit, at most this many further refits while its DVH "
        "agreement with the standard plan fails, each with the DVH terms of the structures near or past the limit "
        "boosted by agreement_boost (the candidate agreeing best is kept)",
    )
    dvh_two_sided_target_pct: list[float] = Field(
        default_factory=lambda: [95.0],
        description="target DVH levels kept within the tolerance from above too (the release compares target "
        "D95 with the standard plan's both ways: a converted plan covering a lower dose level better fails it)",
    )
    dvh_levels_organ_pct: list[float] = Field(
        default_factory=lambda: [2.0, 10.0, 50.0], description="volume levels of organ DVH terms"
    )
    dvh_tolerance_gy: float = Field(
        default=0.3, ge=0, description="DVH terms: Dx within this of the standard plan's Dx"
    )
    dvh_weight: float = Field(default=300.0, ge=0)
    mimic_goal_margin_gy: float | None = Field(
        default=1.0,
        ge=0,
        description="a max-DVH mimicking term never aims above the order's soft max-DVH goal of the same structure "
        "and volume minus this (Gy): the converted plan keeps the margin the standard plan was planned with "
        "where the standard plan meets that goal (None: no cap)",
    )
    isodose_levels_pct: list[float] = Field(
        default_factory=lambda: [95.0, 80.0, 50.0, 20.0], description="isodose surfaces kept (% of Rx)"
    )
    isodose_tolerance_pct: float = Field(
        default=3.0, ge=0, description="band (relative, %) around each isodose surface left free"
    )
    isodose_weight: float = Field(default=300.0, ge=0)
    # QA before release
    gamma_tolerance_pct: float = Field(
        default=95.0, ge=0, le=100, description="TG-218 tolerance: gamma 3%/2mm vs standard >= this"
    )
    gamma_action_pct: float = Field(default=90.0, ge=0, le=100)
    dvh_agreement_gy: float = Field(
        default=1.0, gt=0, description="targets: D95 within, organs: D10 at most this above the standard's"
    )
    independent_check: bool = Field(
        default=True, description="recompute the segments with the aperture-dose path on a finer grid"
    )
    independent_spacing_factor: float = Field(
        default=0.5, gt=0, le=1, description="independent grid spacing = this x the dose grid's"
    )
    independent_min_spacing_mm: float = Field(default=2.0, gt=0)
    independent_max_spacing_mm: float = Field(
        default=4.0, gt=0, description="the independent grid is never coarser than this (mm)"
    )
    independent_check_only_if_passing: bool = Field(
        default=True,
        description="skip the (costly) independent dose check for a candidate that already fails another "
        "release check (it is regenerated or reported failed)",
    )
    qa_criteria: list[ObjectiveSpec] = Field(
        default_factory=list, description="extra DVH criteria checked in QA only (not optimised)"
    )
    source: SourceMatchConfig = Field(default_factory=SourceMatchConfig)


class CoincidenceReport(BaseModel):
    """Source + MLC comparison of the standard machine with a target, and the policy's decision."""

    source_machine: str
    target_machine: str
    source: SourceComparison
    mlc: MLCComparison
    verdict: Verdict
    output_ratio: float = Field(description="target / source dose per MU (reference field)")
    plan_field_mm: tuple[float, float] = Field(description="largest field (X, Y) the standard plan opens")
    modes: list[Mode] = Field(default_factory=list, description="recompute mode of each planned attempt")
    strengths: list[float] = Field(default_factory=list, description="mimicking strength of each planned attempt")
    reasons: list[str] = Field(default_factory=list)


def load_conversion_options(path: str | Path | None = None, **overrides) -> ConversionOptions:
    """:class:`ConversionOptions` from the ``conversion`` and ``source`` sections of conversion.yaml (defaults
    when absent), then ``overrides``; InputError naming the first invalid field."""
    cfg = load_conversion_config(path)
    extra = cfg.model_extra or {}
    data = dict(extra.get("conversion") or {})
    if extra.get("source") is not None:
        data["source"] = extra["source"]
    data.update(overrides)
    try:
        return ConversionOptions.model_validate(data)
    except ValidationError as exc:
        loc, msg = first_error(exc)
        raise InputError(f"invalid conversion settings: field '{loc}': {msg}", kind="config", field=loc) from None


def choose_modes(
    verdict: Verdict, options: ConversionOptions, forced: str | None = None
) -> tuple[list[Mode], list[float]]:
    """Recompute mode and mimicking strength of every attempt (see the module docstring)."""
    n = options.max_attempts
    k = options.strength_factor
    if forced is not None:
        if forced not in MODES:
            raise InputError(
                f"unknown recompute mode {forced!r}; use one of {', '.join(MODES)}", kind="conversion", field="mode"
            )
        start = MODES.index(forced)
        chain = list(MODES[start:])
        modes = [chain[min(i, len(chain) - 1)] for i in range(n)]
        # a repeated mode gets stronger mimicking; a new mode starts one step stronger too
        return modes, [k**i for i in range(n)]
    if verdict == "incompatible":
        return [], []
    seq: list[Mode]
    if verdict == "matches":
        seq = ["reuse", "dose_only", "mu_refit", "fluence", "dao"]
    elif verdict == "same_leaves":
        # the kept segments' MU refitted first; then leaves and MU re-optimised (dao = fluence + DAO:
        # a fluence attempt alone failed the organ agreement where the wider outer leaves of a
        # compatible MLC (TrueBeam M120's 10 mm) spread dose that only moving the leaves takes back)
        seq = ["mu_refit", "dao"]
    else:
        seq = ["dao"]
    modes = [seq[min(i, len(seq) - 1)] for i in range(n)]
    strengths, s, prev = [], 1.0, None
    for m in modes:
        if m == prev:
            s *= k
        strengths.append(s)
        prev = m
    return modes, strengths


def machine_coincidence(
    source: MachineModel,
    target: MachineModel,
    plan: Plan | None = None,
    options: ConversionOptions | None = None,
    mlc_config: ConversionConfig | MLCCoincidenceConfig | None = None,
    forced: str | None = None,
) -> CoincidenceReport:
    """Compare the target with the source machine (beam curves and MLC) and plan the attempts.

    With ``plan`` (made for ``source``) the MLC comparison also checks that the target can open
    the plan's field (:func:`rayrt.convert.coincidence.plan_field_mm`).
    """
    opts = options or ConversionOptions()
    src = compare_sources(source, target, opts.source)
    field = plan_field_mm(plan, source) if plan is not None else None
    mlc = compare_mlc(source, target, mlc_config, required_field_mm=field)
    reasons: list[str] = []
    if mlc.verdict == "incompatible" and field is not None and mlc.scores.get("field", 1.0) < 1.0 - 1e-9:
        verdict: Verdict = "incompatible"
        reasons += [r for r in mlc.reasons if "field" in r]
    elif src.verdict == "matches" and mlc.verdict == "identical":
        verdict = "matches"
        reasons.append(
            f"beam matches ({src.criteria}: {src.score_pct:.2f} %, max deviation "
            f"{src.max_deviation_pct:.2f} %) and the MLC is identical: the standard plan is reused"
        )
    elif mlc.verdict in ("identical", "compatible"):
        verdict = "same_leaves"
        reasons.append(
            f"MLC {mlc.verdict} (score {mlc.score:.3f}); beam {src.verdict} ({src.score_pct:.2f} % at {src.criteria})"
        )
    else:
        verdict = "convertible"
        reasons.append(f"MLC {mlc.verdict} (score {mlc.score:.3f}): re-optimise on the target's leaves")
        reasons += mlc.reasons[:3]
    if verdict != "matches" and src.verdict != "matches":
        reasons += src.reasons[:1]
    modes, strengths = choose_modes(verdict, opts, forced if forced is not None else opts.mode)
    if verdict == "incompatible" and (forced or opts.mode):
        reasons.append("a forced mode cannot deliver a field the machine cannot open: not attempted")
        modes, strengths = [], []
    return CoincidenceReport(
        source_machine=source.name,
        target_machine=target.name,
        source=src,
        mlc=mlc,
        verdict=verdict,
        output_ratio=src.output_ratio,
        plan_field_mm=field or (0.0, 0.0),
        modes=modes,
        strengths=strengths,
        reasons=reasons,
    )
