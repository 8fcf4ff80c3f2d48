"""``rayrt serve | submit | status | results | watch | machines``: run the service, and talk to it over HTTP.

``serve`` starts a local Ray (or joins ``--address``), Ray Serve and the ingress, then blocks.
The client commands speak HTTP (httpx) to ``--server`` / ``$RAYRT_SERVER`` /
http://127.0.0.1:8000. A 4xx answer becomes one ``error: ...`` line and exit code 2; an
unreachable server exit code 1. Ray and httpx are imported inside the commands.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from rayrt.cli.app import app
from rayrt.domain.errors import InputError, RayrtError

_SERVER_HELP = "server URL (default: $RAYRT_SERVER or http://127.0.0.1:8000)"


# ---------------------------------------------------------------------------- HTTP helpers
def _client(server: Optional[str], token: Optional[str] = None):
    """An HTTP client for the server, sending ``token`` or the one rayrt.service.credentials finds for it."""
    import httpx

    from rayrt.service.credentials import token_for
    from rayrt.service.settings import server_url

    url = server_url(server)
    token = token or token_for(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(30.0, read=600.0))


def _call(client, method: str, path: str, **kwargs: Any):
    """One request; 4xx/5xx JSON errors become InputError/RayrtError with the server's message."""
    import httpx

    try:
        r = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise RayrtError(
            f"cannot reach the rayrt server at {client.base_url} ({type(exc).__name__}); "
            "start it with `rayrt serve` or set --server / RAYRT_SERVER"
        ) from None
    if r.status_code >= 400:
        try:
            body = r.json()
            message = body.get("message") or str(body)
            field = body.get("field")
        except ValueError:
            message, field = r.text.strip()[:300] or r.reason_phrase, None
        if r.status_code < 500:
            raise InputError(message, kind="http", field=field, status=r.status_code)
        raise RayrtError(f"server error {r.status_code}: {message}")
    return r


def _zip_folder(folder: Path):
    """The folder as a zip in a temporary file (one upload part instead of thousands)."""
    import tempfile
    import zipfile

    tmp = tempfile.TemporaryFile()
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink():
                z.write(p, p.relative_to(folder).as_posix())
    tmp.seek(0)
    return tmp


def upload_patient(client, path: Path) -> dict:
    """POST a DICOM folder (zipped on the fly), a zip or a single DICOM file; returns the summary."""
    if not path.exists():
        raise InputError(
            f"{path} does not exist: give a DICOM folder or a .zip", kind="upload", field="path", status=404
        )
    if path.is_dir():
        with _zip_folder(path) as fh:
            return _call(
                client, "POST", "/patients", files=[("files", (f"{path.name or 'study'}.zip", fh, "application/zip"))]
            ).json()
    with open(path, "rb") as fh:
        media = "application/zip" if path.suffix.lower() == ".zip" else "application/dicom"
        return _call(client, "POST", "/patients", files=[("files", (path.name, fh, media))]).json()


def _wait(client, job_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = _call(client, "GET", f"/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.25)


def _format_job(job: dict) -> str:
    lines = [
        f"job {job['id']}  patient {job['patient_id']}  {job['state']}  {job['progress']:.0f}%"
        f"  priority {job['priority']}" + (f"  on {job['worker']}" if job.get("worker") else "")
    ]
    for s in job.get("stages", []):
        tasks = f" {s['tasks_done']}/{s['tasks_total']}" if s.get("tasks_total") else ""
        msg = f"  {s['message']}" if s.get("message") else ""
        lines.append(f"  {s['name']:<12} {s['state']:<10} {s['percent']:5.1f}%{tasks}{msg}")
    for e in job.get("errors", []):
        lines.append(f"  error: {e}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- commands
@app.command("serve")
def serve_cmd(
    port: Optional[int] = typer.Option(None, "--port", help="HTTP port (default 8000; 0 = any free port)"),
    data: Optional[str] = typer.Option(
        None,
        "--data",
        help="store: a directory or URI (file://, s3://, gs://); default $RAYRT_DATA_DIR or ./rayrt-data",
    ),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (default: start a local Ray)"),
    host: Optional[str] = typer.Option(None, "--host", help="address to bind (default 127.0.0.1)"),
    config: Optional[Path] = typer.Option(
        None, "--config", help="settings file (default $RAYRT_CONFIG or configs/service.yaml)"
    ),
) -> None:
    """Start the planning service (Ray + Serve ingress) and block until Ctrl-C."""
    import signal

    from rayrt.service import runtime
    from rayrt.service.settings import load_settings

    settings = load_settings(config, data_dir=data, port=port, ray_address=address, host=host)
    url = runtime.start(settings, announce=lambda line: typer.echo(f"rayrt: {line}", err=True))
    typer.echo(f"rayrt serving on {url}  (store: {settings.data_dir}); Ctrl-C stops", err=True)
    stop = {"now": False}

    def _stop(signum, frame):  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # also when started in the background with SIGINT ignored
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo("rayrt: shutting down", err=True)
        runtime.stop(settings)
        import ray

        ray.shutdown()


@app.command("submit")
def submit_cmd(
    path: Path = typer.Argument(..., help="the patient's DICOM folder or a .zip of it"),
    order: Optional[Path] = typer.Option(None, "--order", help="medical order (.yaml or .json)"),
    priority: int = typer.Option(0, "--priority", help="higher runs first"),
    machines: Optional[str] = typer.Option(None, "--machines", help="comma-separated treatment machines, e.g. a,b"),
    server: Optional[str] = typer.Option(None, "--server", help=_SERVER_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the created job as JSON"),
    plan: bool = typer.Option(
        False, "--plan", help="plan the patient (standard plan, conversion to --machines, QA, export); needs --order"
    ),
    options: Optional[Path] = typer.Option(
        None, "--options", help="planning options, JSON or YAML (PlanningRequest fields); implies --plan"
    ),
    settings: Optional[list[str]] = typer.Option(
        None, "--set", help="one planning option, KEY=VALUE (repeatable), e.g. --set num_beams=7; implies --plan"
    ),
) -> None:
    """Upload a patient, create a job for it (analysis only, or planning with --plan), print the job id."""
    from rayrt.cli.planning_options import read_options
    from rayrt.domain.order import load_order
    from rayrt.service.models import JobRequest

    order_json = load_order(order).model_dump(mode="json") if order is not None else None  # fail early, locally
    machine_list = [m.strip() for m in (machines or "").split(",") if m.strip()]
    planning: dict | None = None
    if plan or options is not None or settings:
        if order_json is None:
            raise InputError("--plan needs a medical order: give --order FILE", field="order")
        planning = read_options(options, settings)
    with _client(server) as client:
        patient = upload_patient(client, path)
        for w in patient.get("warnings", []):
            typer.echo(f"warning: {w}", err=True)
        body = JobRequest(
            patient_id=patient["id"], order=order_json, priority=priority, machines=machine_list, options=planning
        )
        job = _call(client, "POST", "/jobs", json=body.model_dump(mode="json")).json()
    typer.echo(json.dumps(job, indent=2) if as_json else job["id"])


@app.command("status")
def status_cmd(
    job_id: str = typer.Argument(..., help="job id (printed by rayrt submit)"),
    as_json: bool = typer.Option(False, "--json", help="print the job as JSON"),
    wait: bool = typer.Option(False, "--wait", help="wait until the job has finished"),
    timeout: float = typer.Option(3600.0, "--timeout", help="seconds to wait at most with --wait"),
    server: Optional[str] = typer.Option(None, "--server", help=_SERVER_HELP),
) -> None:
    """Show a job's state, current stage, per-stage progress and errors (exit 1 if it failed)."""
    with _client(server) as client:
        job = _wait(client, job_id, timeout) if wait else _call(client, "GET", f"/jobs/{job_id}").json()
    typer.echo(json.dumps(job, indent=2) if as_json else _format_job(job))
    if job["state"] in ("failed", "cancelled"):
        raise typer.Exit(1)


@app.command("results")
def results_cmd(
    job_id: str = typer.Argument(..., help="job id"),
    out: Path = typer.Option(..., "--out", help="folder to download the result files into"),
    deidentify: bool = typer.Option(
        False, "--deidentify", help="de-identified files (DICOM PS3.15 Basic Profile, UIDs remapped consistently)"
    ),
    server: Optional[str] = typer.Option(None, "--server", help=_SERVER_HELP),
) -> None:
    """Download every result file of a job into OUT/<stage>/<file>."""
    with _client(server) as client:
        listing = _call(client, "GET", f"/jobs/{job_id}/results").json()
        if not listing["files"]:
            typer.echo(f"job {job_id} is {listing['state']} and has no result files yet", err=True)
        out = out.resolve()
        for f in listing["files"]:
            target = (out / f["path"]).resolve()
            if out not in target.parents:  # the server names files; never write outside OUT
                raise RayrtError(f"server sent an unsafe result path {f['path']!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            params = {"deidentify": "true"} if deidentify else None
            data = _call(client, "GET", f"/jobs/{job_id}/results/{f['path']}", params=params).content
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(data)
            tmp.replace(target)
            typer.echo(str(target))


# ---------------------------------------------------------------------------- watch / machines
def _bar(percent: float, width: int = 24) -> str:
    n = int(round(width * max(0.0, min(100.0, percent)) / 100.0))
    return "#" * n + "-" * (width - n)


def render_job(job: dict) -> list[str]:
    """Progress bars: the job, then one per stage (tasks done / total, message)."""
    lines = [
        f"job {job['id']}  {job['state']:<9} [{_bar(job.get('progress', 0.0), 30)}] {job.get('progress', 0.0):5.1f}%"
        + (f"  machines: {', '.join(job['machines'])}" if job.get("machines") else "")
    ]
    for s in job.get("stages", []):
        tasks = f" {s['tasks_done']}/{s['tasks_total']}" if s.get("tasks_total", 0) > 1 else ""
        msg = (s.get("message") or "")[:60]
        lines.append(
            f"  {s['name']:<11} {s['state']:<9} [{_bar(s['percent'])}] {s['percent']:5.1f}%{tasks:<8} {msg}".rstrip()
        )
    for e in job.get("errors", []):
        lines.append(f"  error: {e}")
    return lines


def _sse(client, path: str):
    """(event, data) pairs of a server-sent-event stream."""
    import httpx

    try:
        with client.stream("GET", path) as r:
            if r.status_code >= 400:
                r.read()
                _call(client, "GET", path)  # turns the error body into InputError / RayrtError
            kind = "message"
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:].strip()
                elif line.startswith("data: "):
                    yield kind, json.loads(line[6:])
    except httpx.TransportError as exc:
        raise RayrtError(f"cannot reach the rayrt server at {client.base_url} ({type(exc).__name__})") from None


@app.command("watch")
def watch_cmd(
    job_id: str = typer.Argument(..., help="job id"),
    server: Optional[str] = typer.Option(None, "--server", help=_SERVER_HELP),
) -> None:
    """Follow a job live (progress bars per stage), then show each machine's plan and QA verdict;
    exit 1 if it failed."""
    import sys

    live = sys.stdout.isatty()
    shown = 0
    job: dict = {}
    with _client(server) as client:
        for kind, data in _sse(client, f"/jobs/{job_id}/events"):
            if kind != "job":
                continue
            job = data
            lines = render_job(job)
            if live:
                if shown:
                    sys.stdout.write(f"\x1b[{shown}F\x1b[J")
                sys.stdout.write("\n".join(lines) + "\n")
                sys.stdout.flush()
                shown = len(lines)
            else:
                typer.echo(
                    lines[0]
                    + "  "
                    + "  ".join(
                        f"{s['name']}:{s['percent']:.0f}%" for s in job.get("stages", []) if s["state"] == "running"
                    )
                )
        if not live and job:
            typer.echo("\n".join(render_job(job)))
        if job.get("state") == "succeeded" and job.get("planning") is not None:
            try:
                plans = _call(client, "GET", f"/jobs/{job_id}/plans").json()
            except InputError:
                plans = {"machines": []}
            for m in plans["machines"]:
                typer.echo(plan_line(m))
    if job.get("state") in ("failed", "cancelled"):
        raise typer.Exit(1)


def plan_line(m: dict) -> str:
    """One machine's line of ``rayrt watch``'s summary (an entry of ``GET /jobs/{id}/plans``): QA
    verdict, MU per fraction and every goal's value ('!' where missed); a plan not released says why
    instead."""
    if m.get("verdict") == "not released":
        why = "; ".join(m.get("failed_checks", [])[:2]) or "no plan"
        return f"  {m['machine']:<16} NOT RELEASED  {why[:240]}"
    goals = "  ".join(
        f"{g['structure']} {g['metric']} {g['value_gy']:.1f}{'' if g['met'] else '!'}" for g in m.get("goals", [])
    )
    verdict = str(m.get("verdict")).upper()
    return f"  {m['machine']:<16} QA {verdict:<7} {m['total_mu_per_fraction']:7.1f} MU/fx  {goals}"


@app.command("machines")
def machines_cmd(
    set_: Optional[str] = typer.Option(
        None, "--set", help="change a status: NAME=available|busy|down[:malfunction|maintenance]"
    ),
    reason: str = typer.Option("", "--reason", help="why (with --set)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    server: Optional[str] = typer.Option(None, "--server", help=_SERVER_HELP),
) -> None:
    """List the treatment machines (status, bookings, wait) or change one's status (down re-plans its patients)."""
    with _client(server) as client:
        if set_:
            name, sep, value = set_.partition("=")
            state, _, cause = value.partition(":")
            if not sep or not name.strip() or not state.strip():
                raise InputError("--set takes NAME=STATE[:CAUSE], e.g. truebeam_m120=down:malfunction", field="set")
            body = {"state": state.strip(), "cause": cause.strip() or None, "reason": reason}
            res = _call(client, "POST", f"/machines/{name.strip()}/status", json=body).json()
            if as_json:
                typer.echo(json.dumps(res, indent=2))
                return
            st = res["status"]
            typer.echo(f"{res['machine']}: {st['state']}" + (f" ({st['cause']})" if st.get("cause") else ""))
            for b in res.get("moved", []):
                typer.echo(
                    f"  moved job {b['job_id']} (patient {b['patient_id']}, {b['fractions']} fx) -> "
                    f"{b.get('moved_to') or 'no usable machine'}: re-planning"
                )
            for b in res.get("placed", []):
                typer.echo(f"  placed job {b['job_id']} on {b['machine']}")
            return
        ms = _call(client, "GET", "/machines").json()["machines"]
    if as_json:
        typer.echo(json.dumps(ms, indent=2))
        return
    typer.echo(f"{'machine':<16} {'state':<10} {'cause':<12} {'bookings':>8} {'fractions':>9} {'wait min':>9}")
    for m in ms:
        st = m["status"]
        wait = m["estimated_wait_min"]
        typer.echo(
            f"{m['name']:<16} {st['state']:<10} {st.get('cause') or '':<12} {m['bookings']:>8} "
            f"{m['pending_fractions']:>9} {wait:>9.0f}"
        )
