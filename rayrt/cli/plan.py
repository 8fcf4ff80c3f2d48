"""``rayrt plan``: the whole single-process standard-plan pipeline.

    rayrt plan DIR --order FILE --machine NAME --out OUT [--beams 0,40,80,...] [--dose-grid-mm 5]
               [--bixel-mm 5] [--max-segments 15] [--sequencer sweep]

DIR is a DICOM folder / .zip (CT + RTSTRUCT), a matRad/CORT ``.mat`` phantom, or ``tg119`` for
the built-in TG-119 C-shape phantom. Without ``--order`` an ``order.yaml`` next to the data (or
the TG-119 order for TG-119 phantoms) is used. Writes OUT/plan.json (beams, segments, MU per
fraction), OUT/dose.npy (course dose in Gy, float32, array [k, j, i]) with OUT/dose_grid.json
(its Grid), and OUT/report.json (DVH metrics per structure, objective values, constraint
violation, deliverability, each stage's time and peak RSS).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from rayrt.cli.app import app


def _angles(text: str | None, n_default: int = 9) -> list[float]:
    from rayrt.domain.errors import InputError

    if not text:
        return [i * 360.0 / n_default for i in range(n_default)]
    try:
        vals = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--beams must be comma-separated gantry angles in degrees, got {text!r}", field="beams") from None
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


def default_machine_name() -> str:
    from rayrt.domain.errors import InputError
    from rayrt.machines import get_machine, list_machines

    names = list_machines()
    for n in names:
        if get_machine(n).standard:
            return n
    if not names:
        raise InputError("no machines in configs/machines; give --machine", field="machine")
    return names[0]


@app.command("plan")
def plan_cmd(
    data: str = typer.Argument(..., help="DICOM folder/.zip, a .mat phantom, or 'tg119'"),
    order: Optional[str] = typer.Option(None, "--order", help="medical order (.yaml/.json)"),
    machine: Optional[str] = typer.Option(None, "--machine", help="machine name (default: the standard machine)"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    beams: Optional[str] = typer.Option(None, "--beams", help="gantry angles in degrees, e.g. 0,40,80 (default: 9 equispaced)"),
    dose_grid_mm: float = typer.Option(5.0, "--dose-grid-mm", help="dose grid spacing (mm)"),
    bixel_mm: float = typer.Option(5.0, "--bixel-mm", help="beamlet width along leaf travel (mm)"),
    max_segments: int = typer.Option(15, "--max-segments", help="maximum segments per beam"),
    sequencer: str = typer.Option("sweep", "--sequencer", help="leaf sequencer (sweep, xia_verhey)"),
    fmo_iterations: int = typer.Option(400, "--fmo-iterations", help="L-BFGS-B iterations of the fluence optimisation"),
    dao_rounds: int = typer.Option(4, "--dao-rounds", help="direct-aperture-optimisation rounds (60 iterations each)"),
    machines: Optional[str] = typer.Option(
        None, "--machines", help="also convert the plan to these treatment machines (comma list); writes OUT/<machine>/ "
        "rtplan.dcm, rtdose.dcm, rtstruct.dcm, qa.json and OUT/standard/"),
    mode: Optional[str] = typer.Option(None, "--mode", help="force a conversion mode: reuse, dose_only, mu_refit, fluence or dao (default: policy)"),
    workers: int = typer.Option(1, "--workers", min=1, help="conversions run in this many processes"),
) -> None:
    """Plan a case end to end on one machine and write plan, dose and report."""
    import numpy as np

    from rayrt.machines import get_machine
    from rayrt.optimize.planner import PlanningOptions, plan_standard
    from rayrt.optimize.sequencing import get_sequencer

    get_sequencer(sequencer)
    study, med_order = load_case(data, order)
    m = get_machine(machine or default_machine_name())
    if machines is not None:  # unknown target machines fail before any planning work
        for name in machines.split(","):
            if name.strip():
                get_machine(name.strip())
    opts = PlanningOptions(dose_grid_mm=dose_grid_mm, bixel_mm=bixel_mm, max_segments=max_segments, sequencer=sequencer,
                           fmo_iterations=fmo_iterations, dao_rounds=dao_rounds)
    res = plan_standard(study, med_order, m, _angles(beams), opts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(res.plan.model_dump_json(indent=1), encoding="utf-8")
    np.save(out / "dose.npy", res.dose_gy.astype(np.float32))
    (out / "dose_grid.json").write_text(res.dose_grid.model_dump_json(indent=1), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(res.report, indent=1, default=float), encoding="utf-8")
    tgt = med_order.prescription.target
    d = res.report["dvh"]
    typer.echo(f"plan {res.plan.id} for {m.name}: {len(res.plan.beams)} beams, {res.report['num_segments']} segments, "
               f"{res.plan.total_mu:.1f} MU/fraction, deliverable={res.report['deliverability']['deliverable']}")
    for n, met in d.items():
        typer.echo(f"  {n:12s} D95 {met['d95_gy']:6.2f}  D10 {met['d10_gy']:6.2f}  mean {met['mean_gy']:6.2f}  max {met['max_gy']:6.2f} Gy"
                   + ("  (target)" if n == tgt else ""))
    typer.echo("  stages: " + ", ".join(f"{s['name']} {s['seconds']:.1f}s/{s['peak_rss_mib']:.0f}MiB" for s in res.report["stages"]))
    typer.echo(f"wrote {out}/plan.json, dose.npy, dose_grid.json, report.json")
    if machines is not None:
        from rayrt.convert.outputs import convert_and_write

        typer.echo(f"converting to {machines} ...")
        for line in convert_and_write(out, study, med_order, m, res, machines, mode=mode, workers=workers):
            typer.echo(line)
        typer.echo(f"wrote {out}/standard/ and {out}/<machine>/ (rtplan.dcm, rtdose.dcm, rtstruct.dcm, qa.json)")
