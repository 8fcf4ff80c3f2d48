"""The planning recipe: one explicit, ordered list of stages that `rayrt plan`, every service job
and `rayrt demo` run, with one set of defaults (``configs/planning.yaml``).

    load -> structures -> dvh                                  (analysis: every job)
    geometry -> beamlets -> dij -> beam_set -> problem -> fmo
      -> sequence -> dao -> normalize                          (the standard plan)
    convert -> qa -> export                                    (target machines, QA, DICOM RT)

A run starts from three artefacts: ``source`` (where the study comes from:
:func:`~rayrt.pipeline.analysis.load_source`), ``order`` (a
:class:`~rayrt.domain.order.MedicalOrder` or None) and ``planning`` (a
:class:`~rayrt.domain.planning.PlanningRequest` or None). Without a planning request or an
order the planning stages are ``skipped`` with the reason, so an analysis-only job stays cheap.
The recipe runs in one process (:class:`~rayrt.pipeline.executor.LocalExecutor`) or on Ray
(:class:`rayrt.service.controlled.RayExecutor`): the same functions, the same results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from rayrt.convert.policy import ConversionOptions
from rayrt.domain.errors import InputError
from rayrt.domain.order import MedicalOrder, load_order, parse_order
from rayrt.domain.planning import PlanningRequest
from rayrt.machines import get_machine, standard_machine_name
from rayrt.optimize.sequencing import get_sequencer
from rayrt.pipeline import analysis, conversion, export, optimization, planning
from rayrt.pipeline.executor import Executor
from rayrt.pipeline.runner import Artefacts, PipelineResult, Stage, StageEvent, run_stages, stage_of, write_result_files

__all__ = ["RECIPE", "PLANNING_STAGES", "recipe", "run_recipe", "check_request", "validate_order", "as_order"]


def _no_plan(artefacts: Artefacts) -> str | None:
    if artefacts.get("planning") is None:
        return "no planning requested (no target machines / planning options)"
    if artefacts.get("order") is None:
        return "no medical order: nothing to plan"
    return None


def _after(name: str) -> Callable[[Artefacts], str | None]:
    """Skip when there is nothing to plan, or when the artefact ``name`` an earlier stage makes is missing."""

    def when(artefacts: Artefacts) -> str | None:
        return _no_plan(artefacts) or (None if artefacts.get(name) is not None else f"no {name}")

    return when


def _angle_sets(artefacts: Artefacts) -> str | None:
    """Skip ``beam_set`` unless the request has several beam-angle sets to choose from."""
    if reason := _after("dij")(artefacts):
        return reason
    req: PlanningRequest = artefacts["planning"]
    return None if len(req.angle_sets()) > 1 else "one beam-angle set: nothing to choose"


PLANNING_RECIPE: list[Stage] = [
    stage_of(planning.geometry, output="geometry", when=_no_plan),
    stage_of(planning.beamlets, output="beamlet_set", when=_after("geometry")),
    stage_of(planning.dij, output="dij", when=_after("beamlet_set")),
    stage_of(optimization.beam_set, output="beam_set", when=_angle_sets, updates=optimization.choose_beams),
    stage_of(optimization.problem, output="problem", when=_after("dij"), persist=False),
    stage_of(optimization.fmo, output="fluence", when=_after("dij")),
    stage_of(optimization.sequence, output="sequenced", when=_after("fluence")),
    stage_of(optimization.dao, output="apertures", when=_after("sequenced")),
    stage_of(optimization.normalize, output="standard_plan", when=_after("apertures")),
    stage_of(conversion.convert, output="converted", when=_after("standard_plan")),
    stage_of(conversion.qa, output="qa", when=_after("standard_plan")),
    stage_of(export.export, output="exports", when=_after("standard_plan")),
]

RECIPE: list[Stage] = [*analysis.ANALYSIS_STAGES, *PLANNING_RECIPE]
"""Every stage, in the order it runs."""

PLANNING_STAGES: list[str] = [st.name for st in PLANNING_RECIPE]


def recipe(names: Iterable[str] | None = None, plan: bool = True, until: str | None = None) -> list[Stage]:
    """The recipe's stages in order: all of them, or only ``names``, or those up to and including
    ``until`` (e.g. ``"normalize"``: the standard plan, no conversion); ``plan=False`` leaves the
    planning stages out (an analysis-only job)."""
    wanted = None if names is None else set(names)
    known = [st.name for st in RECIPE]
    asked = (wanted or set()) | ({until} if until is not None else set())
    if unknown := asked - set(known):
        raise InputError(f"unknown stage(s) {sorted(unknown)}; known: {known}", kind="pipeline", field="stages")
    last = known.index(until) if until is not None else len(known) - 1
    return [
        st
        for i, st in enumerate(RECIPE)
        if i <= last and (wanted is None or st.name in wanted) and (plan or st.name not in PLANNING_STAGES)
    ]


def as_order(order: MedicalOrder | dict | str | Path | None) -> MedicalOrder | None:
    """A MedicalOrder from itself, its JSON mapping, or a .yaml/.json file (None stays None)."""
    if order is None or isinstance(order, MedicalOrder):
        return order
    if isinstance(order, dict):
        return parse_order(order)
    return load_order(order)


def validate_order(order: dict | MedicalOrder, structure_names: Iterable[str]) -> MedicalOrder:
    """Parse an order and check every structure it names exists (InputError 422 otherwise)."""
    mo = order if isinstance(order, MedicalOrder) else parse_order(order, "in request")
    mo.check_structures(structure_names)
    return mo


def check_request(req: PlanningRequest) -> ConversionOptions:
    """Check a planning request where it enters (HTTP, CLI), before any work is queued: the
    standard and target machines exist, the leaf sequencer is known and the conversion overrides
    are valid ConversionOptions. Every problem is an InputError 422 naming the field
    (``machines``, ``options.sequencer``, ``options.conversion_options.<field>`` ...).
    Returns the conversion options the request converts with."""

    def bad(exc: InputError, field: str) -> InputError:
        return InputError(exc.message, kind="options", field=f"options.{field}", status=422)

    try:
        get_machine(req.standard_machine or standard_machine_name())
    except InputError as exc:
        raise bad(exc, "standard_machine") from None
    for m in req.machines:
        try:
            get_machine(m)
        except InputError as exc:
            raise InputError(exc.message, kind="options", field="machines", status=422) from None
    try:
        get_sequencer(req.sequencer)
    except InputError as exc:
        raise bad(exc, "sequencer") from None
    if "mode" in req.conversion_options:
        raise InputError(
            "give the recompute mode as conversion_mode, not conversion_options.mode",
            kind="options",
            field="options.conversion_options.mode",
            status=422,
        )
    try:
        return conversion.conversion_options(req)
    except InputError as exc:
        raise bad(exc, f"conversion_options.{exc.field}") from None


def run_recipe(
    source: Any,
    order: MedicalOrder | dict | str | Path | None,
    planning_request: PlanningRequest | None,
    *,
    executor: Executor | None = None,
    stages: Iterable[str] | None = None,
    until: str | None = None,
    extra: list[Stage] | None = None,
    out_dir: str | Path | None = None,
    on_event: Callable[[StageEvent], None] | None = None,
) -> PipelineResult:
    """Run the recipe on ``source`` (a DICOM folder or zip, a Study, or an object with ``load()``)
    in this process or on ``executor``. ``stages`` restricts it to those stages (still in recipe
    order), ``until`` stops after that stage, ``extra`` appends stages. With ``out_dir`` each
    persistent stage's files are written to ``out_dir/<stage>/`` under the names the service
    stores them with."""
    sink = None
    if out_dir is not None:
        root = Path(out_dir)

        def sink(st: Stage, out: Any) -> None:
            d = root / st.name
            d.mkdir(parents=True, exist_ok=True)
            for name, data in write_result_files(out).items():
                (d / name).write_bytes(data)

    artefacts: Artefacts = {"source": source, "order": as_order(order), "planning": planning_request}
    return run_stages(
        recipe(stages, until=until) + list(extra or []), artefacts, executor=executor, on_event=on_event, sink=sink
    )
