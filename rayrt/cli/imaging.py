"""Patient-data commands: ``rayrt inspect``, ``rayrt dvh``, ``rayrt phantom tg119|mat``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rayrt.cli.app import app

phantom_app = typer.Typer(help="Write phantoms as DICOM (CT series + RTSTRUCT).", no_args_is_help=True)
app.add_typer(phantom_app, name="phantom")


def _console():
    import shutil

    from rich.console import Console

    con = Console(highlight=False)
    if not con.is_terminal:  # piped: do not squeeze tables into 80 columns
        con = Console(highlight=False, width=max(140, shutil.get_terminal_size((140, 40)).columns))
    return con


def _fmt(v: float | None, nd: int = 2) -> str:
    import math

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}"


@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="a DICOM folder, a .zip of one, or a single DICOM file"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Summarise what a folder or zip holds: series, structures (with volumes), plans, doses."""
    from rayrt.imaging.inspect import inspect_path

    report = inspect_path(path)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    from rich.table import Table

    con = _console()
    con.print(f"[bold]{report.path}[/bold]: patient [bold]{report.patient_id}[/bold] ({report.patient_name or '-'})")
    con.print(f"frame of reference {report.frame_of_reference_uid or '-'}")
    if report.series:
        t = Table(title="image series", title_justify="left")
        for col in ("", "modality", "description", "columns x rows x slices", "spacing mm", "files", "values"):
            t.add_column(col, no_wrap=col != "description")
        for s in report.series:
            t.add_row(
                "*" if s.primary else "",
                s.modality,
                s.description or "-",
                "x".join(str(n) for n in s.dims_ijk),
                "x".join(f"{v:g}" for v in s.spacing_mm),
                str(s.num_files),
                f"{s.min_value:g}..{s.max_value:g} {s.quantity}",
            )
        con.print(t)
    if report.structures:
        t = Table(title=f"structures ({report.structures_on})", title_justify="left")
        for col in ("ROI", "name", "kind", "volume cc", "voxels", "contours"):
            t.add_column(
                col,
                justify="right" if col in ("ROI", "volume cc", "voxels", "contours") else "left",
                no_wrap=col != "name",
            )
        for s in report.structures:
            t.add_row(
                str(s.roi_number or "-"),
                s.name,
                s.kind,
                _fmt(s.volume_cc, 2),
                str(s.num_voxels if s.num_voxels is not None else "-"),
                str(s.num_contours if s.num_contours is not None else "-"),
            )
        con.print(t)
    if report.plans:
        t = Table(title="plans", title_justify="left")
        for col in ("file", "label", "beams", "fractions", "machines"):
            t.add_column(col)
        for p in report.plans:
            t.add_row(p.file, p.label or "-", str(p.num_beams), str(p.fractions or "-"), ", ".join(p.machines) or "-")
        con.print(t)
    if report.doses:
        t = Table(title="doses", title_justify="left")
        for col in ("file", "columns x rows x frames", "spacing mm", "max Gy", "summation", "plan"):
            t.add_column(col, no_wrap=col != "file")
        for d in report.doses:
            t.add_row(
                d.file,
                "x".join(str(n) for n in d.dims_ijk),
                "x".join(f"{v:g}" for v in d.spacing_mm),
                _fmt(d.max_gy, 2),
                d.summation_type or "-",
                "..." + d.referenced_plan_uid[-12:] if d.referenced_plan_uid else "-",
            )
        con.print(t)
    for w in report.warnings:
        con.print(f"[yellow]warning:[/yellow] {w}")


@app.command("dvh")
def dvh_cmd(
    rtstruct: Path = typer.Option(..., "--rtstruct", help="RT Structure Set file"),
    rtdose: Path = typer.Option(..., "--rtdose", help="RT Dose file (grid dose in Gy)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list, one object per ROI"),
    roi: Optional[list[str]] = typer.Option(None, "--roi", help="only these ROI names (repeatable)"),
    subvoxel: int = typer.Option(
        4, "--subvoxel", min=1, max=8, help="sub-voxels per dose voxel and axis for small structures"
    ),
    small_cc: float = typer.Option(
        5.0, "--small-cc", min=0.0, help="structures below this volume (cc) are supersampled; 0 = never"
    ),
) -> None:
    """Dose-volume metrics of every ROI of an RTSTRUCT on an RTDOSE (structures rasterised on the dose grid)."""
    import json

    from rayrt.domain.errors import InputError
    from rayrt.imaging.dicom_io import check_frame_of_reference, read_rtdose, read_rtstruct
    from rayrt.qa.dvh import structure_dvh_metrics

    for p, what in ((rtstruct, "--rtstruct"), (rtdose, "--rtdose")):
        if not p.is_file():
            raise InputError(f"{what} file not found: {p}", kind="dicom", status=404)
    rs = read_rtstruct(rtstruct)
    dose = read_rtdose(rtdose)
    check_frame_of_reference(
        f"structure set {rtstruct.name}",
        rs.frame_of_reference_uid,
        dose.meta.get("frame_of_reference_uid"),
        f"dose {rtdose.name}",
    )
    rois = rs.rois
    if roi:
        names = {r.name for r in rois}
        missing = [n for n in roi if n not in names]
        if missing:
            raise InputError(
                f"no ROI named {', '.join(repr(m) for m in missing)} in {rtstruct.name}; "
                f"it has: {', '.join(sorted(names))}",
                kind="rtstruct",
            )
        rois = [r for r in rois if r.name in set(roi)]
    results = [
        structure_dvh_metrics(dose, r.contours, r.name, subvoxel=subvoxel if small_cc > 0 else 1, small_cc=small_cc)
        for r in rois
    ]
    if as_json:
        typer.echo(json.dumps([json.loads(m.model_dump_json()) for m in results], indent=2))
        return
    from rich.table import Table

    con = _console()
    t = Table(
        title=f"DVH metrics: {rtstruct.name} on {rtdose.name} (dose max {float(dose.array.max()):.2f} Gy)",
        title_justify="left",
    )
    for col in ("ROI", "volume cc", "min", "mean", "max", "D2", "D5", "D50", "D95", "D98", "method"):
        t.add_column(col, justify="left" if col in ("ROI", "method") else "right")
    for m in results:
        t.add_row(
            m.name,
            _fmt(m.volume_cc),
            _fmt(m.min_gy),
            _fmt(m.mean_gy),
            _fmt(m.max_gy),
            _fmt(m.d2_gy),
            _fmt(m.d5_gy),
            _fmt(m.d50_gy),
            _fmt(m.d95_gy),
            _fmt(m.d98_gy),
            m.method.split(":")[0],
        )
    con.print(t)
    if not results:
        con.print("no ROI in the structure set")
    con.print("doses in Gy; Dx = minimum dose received by the hottest x % of the volume")
    for method in dict.fromkeys(m.method for m in results):
        con.print(f"method {method}")
    for w in rs.warnings:
        con.print(f"[yellow]warning:[/yellow] {w}")


@phantom_app.command("tg119")
def phantom_tg119(
    out: Path = typer.Option(..., "--out", help="folder to write CT/, RS.dcm and order.yaml into"),
    spacing_mm: float = typer.Option(3.0, "--spacing-mm", min=0.5, max=10.0, help="in-plane voxel size (mm)"),
    slice_mm: float = typer.Option(2.5, "--slice-mm", min=0.5, max=10.0, help="slice spacing (mm)"),
    case: str = typer.Option(
        "cshape", "--case", help="TG-119 test: cshape (default), cshape_hard, multitarget, prostate or headneck"
    ),
) -> None:
    """Write an AAPM TG-119 phantom (DICOM CT + RTSTRUCT) and its planning order (default: the C-shape)."""
    from rayrt.imaging.phantoms import tg119_analytic_volumes_cc, write_tg119

    if case != "cshape":  # the other tests write their clinical-goal order (rayrt.imaging.tg119_cases)
        from rayrt.imaging.tg119_cases import TG119_CASES, write_tg119_case

        path = write_tg119_case(case, out, (spacing_mm, spacing_mm, slice_mm))
        analytic = ", ".join(f"{k} {v:.1f} cc" for k, v in TG119_CASES[case].analytic_volumes_cc().items())
        n = len(list((path / "CT").glob("*.dcm")))
        typer.echo(f"wrote {n} CT slices, RS.dcm ({analytic} analytic) and order.yaml to {path}")
        return
    path = write_tg119(out, (spacing_mm, spacing_mm, slice_mm))
    n = len(list((path / "CT").glob("*.dcm")))
    vols = tg119_analytic_volumes_cc()
    typer.echo(
        f"wrote {n} CT slices, RS.dcm (PTV {vols['PTV']:.1f} cc, Core {vols['Core']:.1f} cc, "
        f"BODY {vols['BODY']:.0f} cc analytic) "
        f"and order.yaml to {path}"
    )


@phantom_app.command("mat")
def phantom_mat(
    path: Path = typer.Argument(..., help="a CORT / matRad .mat phantom (e.g. TG119.mat)"),
    out: Path = typer.Option(..., "--out", help="folder to write CT/ and RS.dcm into"),
) -> None:
    """Convert a CORT / matRad .mat phantom to DICOM (CT series + RTSTRUCT)."""
    from rayrt.imaging.export import write_study
    from rayrt.imaging.phantoms import load_mat_phantom

    study = load_mat_phantom(path)
    written = write_study(study, out)
    typer.echo(
        f"wrote {len(written['ct'])} CT slices and {len(study.structures)} structures "
        f"({', '.join(study.structure_names)}) to {out}"
    )
    for w in study.warnings:
        typer.echo(f"note: {w}")
