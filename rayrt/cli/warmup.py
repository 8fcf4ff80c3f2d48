"""``rayrt warmup``: compile every numba kernel a plan uses into numba's on-disk cache.

    rayrt warmup [--json]

Runs a tiny real plan (:func:`rayrt.warmup.warm_kernels`) so that the first ``rayrt demo``,
``rayrt plan`` or service job after an install loads the kernels from the cache instead of
compiling them (about a minute). ``scripts/env.sh`` runs it after every install; on a warm cache
it takes a few seconds. Prints one line per step with its wall time, or the report as JSON.
"""

from __future__ import annotations

import typer

from rayrt.cli.app import app


@app.command("warmup")
def warmup_cmd(as_json: bool = typer.Option(False, "--json", help="print the report as JSON")) -> None:
    """Compile (or load from numba's cache) every numba kernel specialisation a plan uses."""
    from rayrt.warmup import warm_kernels

    report = warm_kernels(echo=None if as_json else typer.echo)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        typer.echo(f"numba kernels warm in {report.total_seconds:.1f} s (cache: {report.cache_dir})")
