"""``rayrt machine``: the machine library and its commissioning tools.

* ``rayrt machine list`` — machines in configs/machines (name, vendor, energy, MLC);
* ``rayrt machine show NAME [--json]`` — one machine's model (YAML-like summary or JSON);
* ``rayrt machine curves NAME [--json] [--plot FILE.png]`` — dose measurement characteristic
  data computed with the dose engine in water (and lung/bone slab phantoms): dmax, PDD(10 cm),
  PDD(20 cm), TPR20,10 and the 80-20 % penumbra of a 10 x 10 cm² field at 10 cm;
* ``rayrt machine fit --pdd F.csv --profiles F.csv --base NAME --out NEW.yaml`` — fit the
  beam-model parameters to measured curves (formats: :mod:`rayrt.dose.fit`) and report the
  residuals before and after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from rayrt.cli.app import app

machine_app = typer.Typer(
    help="Treatment machines: list, show, commissioning curves, commissioning fit.", no_args_is_help=True
)
app.add_typer(machine_app, name="machine")


def _parse_list(text: str, what: str) -> list[float]:
    from rayrt.domain.errors import InputError

    try:
        vals = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError(
            f"--{what} must be a comma-separated list of numbers in mm, got {text!r}", field=what
        ) from None
    if not vals:
        raise InputError(f"--{what} is empty", field=what)
    return vals


def _parse_depths(text: str) -> list[float | str]:
    from rayrt.domain.errors import InputError

    out: list[float | str] = []
    for v in text.replace(";", ",").split(","):
        v = v.strip()
        if not v:
            continue
        if v.lower() == "dmax":
            out.append("dmax")
            continue
        try:
            out.append(float(v))
        except ValueError:
            raise InputError(f"--depths takes numbers in mm or 'dmax', got {v!r}", field="depths") from None
    if not out:
        raise InputError("--depths is empty", field="depths")
    return out


@machine_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the machines of the library (configs/machines/*.yaml)."""
    from rayrt.machines import get_machine, list_machines

    rows = []
    for name in list_machines():
        m = get_machine(name)
        rows.append(
            {
                "name": m.name,
                "vendor": m.vendor,
                "model": m.model,
                "energy_mv": m.nominal_energy_mv,
                "fff": m.fff,
                "mlc": m.mlc.name,
                "leaf_pairs": m.mlc.num_pairs,
                "standard": m.standard,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no machines (configs/machines/*.yaml is empty)")
        return
    table = [
        (
            r["name"],
            r["vendor"],
            r["model"],
            f"{r['energy_mv']:g} MV{' FFF' if r['fff'] else ''}",
            f"{r['mlc']} ({r['leaf_pairs']} pairs)" + ("  [standard]" if r["standard"] else ""),
        )
        for r in rows
    ]
    widths = [max(len(t[i]) for t in table) for i in range(4)]
    for t in table:
        typer.echo("  ".join(v.ljust(widths[i]) for i, v in enumerate(t[:4])) + "  " + t[4])


@machine_app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="machine name (see `rayrt machine list`)"),
    as_json: bool = typer.Option(False, "--json", help="the full MachineModel as JSON"),
) -> None:
    """Show one machine's model: geometry, MLC, jaws, limits and beam-model summary."""
    from rayrt.machines import get_machine

    m = get_machine(name)
    if as_json:
        typer.echo(m.model_dump_json(indent=2))
        return
    b = m.beam
    lines = [
        f"name:        {m.name}",
        f"vendor:      {m.vendor} {m.model}".rstrip(),
        f"beam:        {m.radiation_type} {m.nominal_energy_mv:g} MV{' FFF' if m.fff else ''}, SAD {m.sad_mm:g} mm",
        f"MLC:         {m.mlc.name}: {m.mlc.num_pairs} pairs, "
        f"widths {sorted(set(round(float(w), 2) for w in m.mlc.leaf_widths_mm))} mm, "
        f"interdigitation {'yes' if m.mlc.interdigitation else 'no'}, transmission {100 * m.mlc.transmission:.2g} %"
        + (", dual layer" if m.mlc.dual_layer else ""),
        f"jaws:        X {'none' if m.jaw_x is None else f'[{m.jaw_x.min_mm:g}, {m.jaw_x.max_mm:g}] mm'}, "
        f"Y {'none' if m.jaw_y is None else f'[{m.jaw_y.min_mm:g}, {m.jaw_y.max_mm:g}] mm'}",
        f"limits:      max field {m.limits.max_field_x_mm:g} x {m.limits.max_field_y_mm:g} mm, "
        f"dose rate {m.limits.dose_rate_mu_min:g} MU/min, min {m.limits.min_mu_per_segment:g} MU/segment",
        f"pencil beam: m {b.attenuation_per_mm:.5g} /mm, betas {', '.join(f'{v:.4g}' for v in b.betas_per_mm)} /mm, "
        f"focal-spot sigma {b.source_sigma_mm:.3g} mm, calibration {b.calibration_gy_per_mu:g} Gy/MU "
        f"({b.calibration_field_mm:g} mm field, SSD {b.calibration_ssd_mm:g} mm)",
    ]
    if m.description:
        lines.append(f"description: {m.description}")
    if b.attribution:
        lines.append(f"kernels:     {b.attribution}")
    typer.echo("\n".join(lines))


@machine_app.command("curves")
def curves_cmd(
    name: str = typer.Argument(..., help="machine name (see `rayrt machine list`)"),
    as_json: bool = typer.Option(
        False, "--json", help="print the full curves (CommissioningCurves) and beam quality as JSON"
    ),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a PNG with PDDs, profiles and slab PDDs"),
    fields: str = typer.Option("30,50,100,200", help="square field sides in mm (comma-separated)"),
    depths: str = typer.Option("dmax,50,100,200", help="profile depths in mm or 'dmax' (comma-separated)"),
    resolution: float = typer.Option(2.0, "--resolution", help="dose-grid spacing in mm (depth and lateral)"),
    slab: bool = typer.Option(
        True, "--slab/--no-slab", help="also compute the lung (0.25) and bone (1.8) slab phantoms"
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the curves JSON to this file"),
) -> None:
    """Commissioning curves (PDDs, profiles, slab PDDs) and beam quality of a machine (SSD 100 cm, water)."""
    from rayrt.dose.curves import beam_quality, commissioning_curves, plot_curves
    from rayrt.machines import get_machine

    m = get_machine(name)
    curves = commissioning_curves(
        m, fields_mm=_parse_list(fields, "fields"), depths_mm=_parse_depths(depths), slab=slab, resolution_mm=resolution
    )
    q = beam_quality(curves)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(curves.model_dump_json(indent=1), encoding="utf-8")
    if plot is not None:
        plot_curves(curves, plot)
    if as_json:
        typer.echo(
            json.dumps({"machine": m.name, "beam_quality": q.model_dump(), "curves": curves.model_dump()}, indent=1)
        )
        return
    typer.echo(
        f"machine {m.name}: {m.nominal_energy_mv:g} MV{' FFF' if m.fff else ''}, SSD {curves.ssd_mm / 10:g} cm, water, "
        f"{curves.resolution_mm:g} mm grid, "
        f"reference field {q.reference_field_mm / 10:g} x {q.reference_field_mm / 10:g} cm²"
    )
    typer.echo(f"  dmax            {q.dmax_mm:6.1f} mm")
    typer.echo(f"  PDD(10 cm)      {q.pdd10_pct:6.1f} %")
    typer.echo(f"  PDD(20 cm)      {q.pdd20_pct:6.1f} %")
    typer.echo(f"  TPR20,10        {q.tpr2010:6.3f}   (from PDD20,10 by TRS-398: {q.tpr2010_from_pdd:.3f})")
    pen = "n/a" if q.penumbra_80_20_mm is None else f"{q.penumbra_80_20_mm:6.1f} mm"
    typer.echo(f"  penumbra 80-20  {pen}   (at 10 cm depth)")
    typer.echo(
        "  PDD at 10 cm by field:  "
        + ", ".join(f"{p.field_mm / 10:g}x{p.field_mm / 10:g}: {p.pdd_at(100.0):.1f} %" for p in curves.water.pdds)
    )
    for s in curves.slabs:
        ref = s.pdd(q.reference_field_mm)
        typer.echo(
            f"  {s.phantom} (density {s.slab_density:g}, {s.slab_start_mm:g}-{s.slab_end_mm:g} mm): "
            f"dose at 10 cm {ref.pdd_at(100.0):.1f} % of its max "
            f"(water {curves.water.pdd(q.reference_field_mm).pdd_at(100.0):.1f} %)"
        )
    if plot is not None:
        typer.echo(f"  plot: {plot}")


@machine_app.command("fit")
def fit_cmd(
    pdd: Optional[Path] = typer.Option(None, "--pdd", help="measured depth doses (CSV: depth_mm,dose[,field_mm])"),
    profiles: Optional[Path] = typer.Option(
        None, "--profiles", help="measured profiles (CSV: field_mm,depth_mm,position_mm,dose)"
    ),
    base: str = typer.Option(..., "--base", help="machine to start from (see `rayrt machine list`)"),
    out: Path = typer.Option(..., "--out", help="the fitted machine YAML to write"),
    name: Optional[str] = typer.Option(None, "--name", help="name of the fitted machine (default: BASE-fit)"),
    resolution: float = typer.Option(2.5, "--resolution", help="dose-grid spacing of the model curves (mm)"),
    max_evaluations: int = typer.Option(60, "--max-evaluations", help="limit on model evaluations"),
    as_json: bool = typer.Option(False, "--json", help="print the fit report as JSON"),
) -> None:
    """Fit a machine's beam model to measured PDDs and profiles; write the new machine YAML."""
    from rayrt.dose.fit import fit_machine, read_measurements, write_machine_yaml
    from rayrt.machines import get_machine

    meas = read_measurements(pdd, profiles)
    base_m = get_machine(base)
    result = fit_machine(
        base_m, meas, resolution_mm=resolution, max_evaluations=max_evaluations, name=name or f"{base_m.name}-fit"
    )
    write_machine_yaml(result.machine, out)
    if as_json:
        typer.echo(result.report.model_dump_json(indent=2))
        return
    rep = result.report
    typer.echo(
        f"fit of {base_m.name} to {len(meas.pdds)} PDD(s) and {len(meas.profiles)} profile(s): "
        f"{rep.evaluations} model evaluations, {rep.seconds:.1f} s"
    )
    typer.echo(f"  {'':<10}{'PDD RMS':>9}{'PDD max':>9}{'prof RMS':>10}{'prof max':>10}   (% of normalisation)")
    for label, r in (("before", rep.before), ("after", rep.after)):
        typer.echo(
            f"  {label:<10}{r.pdd_rms_pct:9.2f}{r.pdd_max_pct:9.2f}{r.profile_rms_pct:10.2f}{r.profile_max_pct:10.2f}"
        )
    nw = max(len(p.name) for p in rep.parameters)
    for p in rep.parameters:
        typer.echo(f"  {p.name:<{nw}}  {p.before:.5g} -> {p.after:.5g} {p.unit}")
    typer.echo(f"wrote {out} (machine {result.machine.name})")
