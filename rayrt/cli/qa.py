"""QA commands: ``rayrt gamma`` (3-D gamma between two doses)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rayrt.cli.app import app


@app.command("gamma")
def gamma_cmd(
    reference: Path = typer.Argument(
        ..., help="reference dose: RTDOSE file or .npy with <name>.grid.json / <name>_grid.json"
    ),
    evaluated: Path = typer.Argument(..., help="evaluated dose (may be on another grid; it is interpolated)"),
    dd: float = typer.Option(3.0, "--dd", help="dose-difference criterion in %"),
    dta: float = typer.Option(2.0, "--dta", help="distance-to-agreement criterion in mm"),
    cutoff: float = typer.Option(10.0, "--cutoff", help="low-dose cutoff in % of the normalisation dose"),
    local: bool = typer.Option(False, "--local", help="local dose difference (default: global)"),
    norm: Optional[float] = typer.Option(
        None, "--norm", help="global normalisation dose in Gy (default: reference maximum)"
    ),
    max_gamma: float = typer.Option(3.0, "--max-gamma", help="search radius in units of DTA"),
    interp_fraction: int = typer.Option(10, "--interp-fraction", help="search step = DTA / this"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the gamma map as .npy (+ .grid.json)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """3-D gamma index (Low et al. 1998) of EVALUATED against REFERENCE: pass rate, mean, 95th percentile."""
    import json

    from rayrt.domain.errors import InputError
    from rayrt.qa.gamma import GammaCriteria, gamma_index, load_dose, save_dose_npy

    try:
        crit = GammaCriteria(
            dose_pct=dd,
            dta_mm=dta,
            cutoff_pct=cutoff,
            local=local,
            normalization_gy=norm,
            max_gamma=max_gamma,
            interp_fraction=interp_fraction,
        )
    except ValueError as exc:
        raise InputError(f"invalid gamma criteria: {str(exc).splitlines()[-2:]}", kind="gamma") from None
    ref = load_dose(reference)
    ev = load_dose(evaluated)
    res = gamma_index(ref, ev, crit)
    s = res.summary
    if out is not None:
        save_dose_npy(res.volume, out)
    if as_json:
        typer.echo(json.dumps(s.model_dump(mode="json"), indent=2))
        return
    typer.echo(f"gamma {crit.label()}")
    typer.echo(f"  evaluated voxels : {s.n_evaluated} (>= {crit.cutoff_pct:g} % of {s.normalization_gy:.4g} Gy)")
    typer.echo(f"  pass rate        : {s.pass_rate_pct:.2f} %")
    typer.echo(f"  mean gamma       : {s.mean_gamma:.3f}")
    typer.echo(f"  95th pct gamma   : {s.p95_gamma:.3f}")
    typer.echo(f"  max gamma        : {s.max_gamma:.3f}")
    typer.echo(f"  time             : {s.seconds:.2f} s")
