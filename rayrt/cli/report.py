"""``rayrt report JOB --out report.pdf``: download a job's plan review as a PDF from the service.

The service renders it (``GET /jobs/{id}/report``: patient, prescription, release decisions and
reviews, plan summary, goals, DVHs, dose planes through the target, QA per machine). Errors as in
``rayrt results``: a 4xx answer is one ``error: ...`` line and exit code 2 (an unknown job, a job
not exported yet), an unreachable server exit code 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rayrt.cli.app import app
from rayrt.cli.service import _SERVER_HELP, _call, _client
from rayrt.domain.errors import InputError


@app.command("report")
def report_cmd(
    job_id: str = typer.Argument(..., help="job id"),
    out: Path = typer.Option(..., "--out", help="the PDF file to write, e.g. report.pdf"),
    server: Optional[str] = typer.Option(None, "--server", help=_SERVER_HELP),
) -> None:
    """Download the plan review of a job as a PDF: DVHs, dose slices, goals, QA, reviews."""
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give the PDF file to write", kind="cli", field="out")
    with _client(server) as client:
        data = _call(client, "GET", f"/jobs/{job_id}/report").content
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    typer.echo(f"{out} ({len(data) / 1024:.0f} KiB)")
