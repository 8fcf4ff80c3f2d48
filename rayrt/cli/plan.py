"""``rayrt plan``: the planning recipe in this process, the same recipe and defaults a service job runs.

    rayrt plan DIR --out OUT [--order FILE] [--machines a,b] [--machine STANDARD] [--beams 0,40,80,...]
               [--mode MODE] [--options FILE] [--set KEY=VALUE ...]

DIR is a DICOM folder / .zip (CT + RTSTRUCT), a matRad/CORT ``.mat`` phantom, or ``tg119`` for
the built-in TG-119 C-shape phantom. Without ``--order`` an ``order.yaml`` next to the data (or
the TG-119 order for TG-119 phantoms) is used. The planning settings are ``configs/planning.yaml``
overlaid with ``--options`` (JSON/YAML PlanningRequest fields), then ``--set`` and the shortcut
flags. Writes every stage's result files to ``OUT/<stage>/`` under the names the service stores
(and ``rayrt results`` downloads): ``OUT/export/`` holds RS.dcm, RP_<machine>.dcm and
RD_<machine>.dcm per released plan (the standard plan first), dvh.csv and summary.json;
``OUT/qa/`` the QA reports; ``OUT/normalize/`` the standard plan (plan.json, dose.npy).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from rayrt.cli.app import app


def _angles(text: str) -> list[float]:
    from rayrt.domain.errors import InputError

    try:
        vals = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError(
            f"--beams must be comma-separated gantry angles in degrees, got {text!r}", field="beams"
        ) from None
    if not vals:
        raise InputError("--beams is empty", field="beams")
    return vals


def load_case(data: str, order_file: str | None):
    """(study, order) from a DICOM folder/zip, a .mat phantom or 'tg119'."""
    from rayrt.domain.errors import InputError
    from rayrt.domain.order import load_order

    p = Path(data)
    order = load_order(order_file) if order_file else None
    if data.lower() == "tg119":
        from rayrt.imaging.phantoms import tg119_order, tg119_phantom

        return tg119_phantom(), order or tg119_order()
    if p.is_file() and p.suffix.lower() == ".mat":
        from rayrt.imaging.phantoms import load_mat_phantom, tg119_order

        study = load_mat_phantom(p)
        if order is None:
            if p.stem.upper().startswith("TG119"):
                o = tg119_order()
                # the CORT file calls its target OuterTarget
                if "PTV" not in study.structure_names and "OuterTarget" in study.structure_names:
                    o = o.model_copy(deep=True)
                    o.prescription.target = "OuterTarget"
                    o.prescription.normalization.structure = "OuterTarget"
                    for s in o.objectives:
                        if s.structure == "PTV":
                            s.structure = "OuterTarget"
                order = o
            else:
                raise InputError(f"give --order for {p.name}", field="order")
        return study, order
    from rayrt.imaging.study import load_study

    study = load_study(p)
    if order is None:
        cand = (p if p.is_dir() else p.parent) / "order.yaml"
        if not cand.is_file():
            raise InputError(f"give --order FILE (no order.yaml in {cand.parent})", field="order")
        order = load_order(cand)
    return study, order


@app.command("plan")
def plan_cmd(
    data: str = typer.Argument(..., help="DICOM folder/.zip, a .mat phantom, or 'tg119'"),
    out: Path = typer.Option(..., "--out", help="output folder: OUT/<stage>/ files, as the service stores them"),
    order: Optional[str] = typer.Option(None, "--order", help="medical order (.yaml/.json)"),
    machines: Optional[str] = typer.Option(
        None, "--machines", help="convert the standard plan to these treatment machines (comma list)"
    ),
    machine: Optional[str] = typer.Option(
        None, "--machine", help="machine the standard plan is optimised on (default: the library's standard machine)"
    ),
    beams: Optional[str] = typer.Option(
        None, "--beams", help="gantry angles in degrees, e.g. 0,40,80 (default: num_beams equispaced)"
    ),
    mode: Optional[str] = typer.Option(
        None, "--mode", help="force a conversion mode: reuse, dose_only, mu_refit, fluence or dao (default: policy)"
    ),
    options: Optional[Path] = typer.Option(
        None, "--options", help="planning options, JSON or YAML (PlanningRequest fields; see rayrt schema planning)"
    ),
    settings: Optional[list[str]] = typer.Option(
        None, "--set", help="one planning option, KEY=VALUE (repeatable), e.g. --set num_beams=7"
    ),
) -> None:
    """Plan a case with the planning recipe: standard plan, conversions, QA and DICOM RT export."""
    from rayrt.cli.planning_options import format_summary, read_options
    from rayrt.domain.planning import planning_request
    from rayrt.pipeline import StageEvent, check_request, run_recipe

    over = read_options(options, settings)
    if machine is not None:
        over["standard_machine"] = machine
    if beams is not None:
        over["gantry_deg"] = _angles(beams)
    if mode is not None:
        over["conversion_mode"] = mode
    names = None if machines is None else [m.strip() for m in machines.split(",") if m.strip()]
    req = planning_request(over, names, field_prefix="")
    check_request(req)  # unknown machines, bad conversion options: before any planning work
    study, med_order = load_case(data, order)
    t0 = time.perf_counter()
    started: dict[str, float] = {}

    def on_event(ev: StageEvent) -> None:
        if ev.kind == "started":
            started[ev.stage] = time.perf_counter()
        elif ev.kind == "finished":
            note = f"  {ev.message}" if ev.message else ""
            typer.echo(f"  [ok] {ev.stage:<11} {time.perf_counter() - started.get(ev.stage, t0):6.1f} s{note}")

    res = run_recipe(study, med_order, req, out_dir=out, on_event=on_event)
    typer.echo(f"planned in {time.perf_counter() - t0:.1f} s; plan quality (course doses) and QA verdicts:")
    for line in format_summary(res["exports"]):
        typer.echo(line)
    typer.echo(
        f"wrote {out}/<stage>/ (export/: RS.dcm, RP_<machine>.dcm, RD_<machine>.dcm, dvh.csv, summary.json; "
        "qa/: QA reports)"
    )
