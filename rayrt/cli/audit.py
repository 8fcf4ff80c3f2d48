"""``rayrt audit``: read and verify a service's audit trail on its store (rayrt.service.audit).

Reads the store directly (``--data``, as ``rayrt serve``), so it works with the service stopped
and needs no token: whoever runs it can read the store anyway. ``--verify`` recomputes the whole
hash chain and exits 1 when it is broken, naming the first bad record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rayrt.cli.app import app


@app.command("audit")
def audit_cmd(
    data: Optional[str] = typer.Option(None, "--data", help="the service's store (default: as rayrt serve)"),
    config: Optional[Path] = typer.Option(None, "--config", help="settings file"),
    user: Optional[str] = typer.Option(None, "--user", help="only this user's records"),
    patient: Optional[str] = typer.Option(None, "--patient", help="only records of this patient id"),
    job: Optional[str] = typer.Option(None, "--job", help="only records of this job id"),
    limit: int = typer.Option(50, "--limit", min=1, max=10000, help="the newest N matching records"),
    verify: bool = typer.Option(False, "--verify", help="check the whole hash chain (exit 1 if broken)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON record per line"),
) -> None:
    """Who read or changed which patient, job, machine or user, when, and how it went."""
    from rayrt.service.audit import AuditQuery, AuditTrail
    from rayrt.service.settings import load_settings
    from rayrt.service.store import Store

    trail = AuditTrail(Store(load_settings(config, data_dir=data).data_dir))
    if verify:
        check = trail.verify()
        if not check.ok:
            typer.echo(f"error: audit trail broken: {check.problem} ({check.records} records verified)", err=True)
            raise typer.Exit(1)
        typer.echo(f"audit trail intact: {check.records} records, last hash {check.last_hash[:16]}...")
        return
    for r in trail.query(AuditQuery(user=user, patient_id=patient, job_id=job, limit=limit)):
        if as_json:
            typer.echo(r.model_dump_json())
            continue
        what = " ".join(
            f"{k}={v}"
            for k, v in (("patient", r.patient_id), ("job", r.job_id), ("machine", r.machine), ("user", r.target_user))
            if v
        )
        typer.echo(
            f"{r.seq:>7} {r.time.isoformat(timespec='seconds')} {r.user:<16} {r.outcome:<7} {r.status} "
            f"{r.action} {what}".rstrip()
        )
