"""``rayrt demo``: the whole service end to end on an embedded local Ray, in about a minute.

    rayrt demo [--out ./demo-out] [--machines truebeam_m120,versahd_agility,synergy_mlci2]
               [--options FILE] [--set KEY=VALUE ...] [--spacing-mm 4] [--timeout 600] [--data DIR]

The job is planned like any other: the planning defaults of configs/planning.yaml (the same
recipe and settings as `rayrt plan` and every `POST /jobs`), overridden only by ``--options`` /
``--set`` when given.

1. starts a private local Ray and the Serve ingress on a free port (rayrt.service.runtime);
2. writes the AAPM TG-119 C-shape phantom as DICOM (CT series + RTSTRUCT) and its order
   (50 Gy in 25 fractions; PTV D95 >= 50, D10 <= 55; Core D10 <= 25 Gy);
3. uploads it over HTTP (``POST /patients``) and submits one planning job for the target
   machines (``POST /jobs``), then follows its per-stage progress (``GET /jobs/{id}``);
4. downloads the results (RTSTRUCT, RTPLAN + RTDOSE per machine, dvh.csv, QA reports,
   summary.json) into ``--out``;
5. prints plan quality against the TG-119 goals and the QA verdict per machine, the time of
   every stage, and where the files are; then shuts Ray down.

Exit code 0 when the job succeeded (QA verdicts are reported, not enforced), 1 when the job or
the service failed, 2 on bad options. Ray, Serve and httpx are imported inside the command.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import typer

from rayrt.cli.app import app
from rayrt.domain.errors import InputError, RayrtError

DEFAULT_MACHINES = "truebeam_m120,versahd_agility,synergy_mlci2"


def _warm_worker() -> int:
    """Import the planning core (numba kernels from cache) in a Ray worker; returns its pid."""
    import os

    import rayrt.pipeline  # noqa: F401  (the stages, the dose engine and the optimisers)

    return os.getpid()


def _ts(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None


def stage_seconds(job: dict) -> dict[str, float]:
    """Wall seconds per stage from the job's ``started_at``/``finished_at``."""
    out = {}
    for s in job.get("stages", []):
        a, b = _ts(s.get("started_at")), _ts(s.get("finished_at"))
        if a and b:
            out[s["name"]] = (b - a).total_seconds()
    return out


class ProgressPrinter:
    """Prints one line per stage as it finishes (and a live line for the running one on a TTY)."""

    def __init__(self, echo: Callable[[str], None], live: bool):
        self.echo = echo
        self.live = live
        self.done: set[str] = set()
        self._live_len = 0

    def _clear(self) -> None:
        if self.live and self._live_len:
            sys.stderr.write("\r" + " " * self._live_len + "\r")
            sys.stderr.flush()
            self._live_len = 0

    def update(self, job: dict) -> None:
        secs = stage_seconds(job)
        for s in job.get("stages", []):
            if s["name"] in self.done or s["state"] not in ("succeeded", "failed"):
                continue
            self.done.add(s["name"])
            self._clear()
            tasks = f"  {s['tasks_done']}/{s['tasks_total']} tasks" if s.get("tasks_total", 0) > 1 else ""
            mark = "ok  " if s["state"] == "succeeded" else "FAIL"
            t = f"{secs[s['name']]:6.1f} s" if s["name"] in secs else "        "
            msg = s.get("message") or ""
            if tasks and msg.strip() == tasks.strip():
                msg = ""
            self.echo(f"  [{mark}] {s['name']:<11} {t}{tasks}  {msg}".rstrip())
        if self.live and job.get("state") == "running":
            cur = next((s for s in job.get("stages", []) if s["state"] == "running"), None)
            if cur:
                line = f"  [....] {cur['name']:<11} {cur['percent']:5.1f}%  job {job.get('progress', 0):5.1f}%"
                self._clear()
                sys.stderr.write(line)
                sys.stderr.flush()
                self._live_len = len(line)

    def close(self) -> None:
        self._clear()


def run_demo_job(
    url: str,
    case_dir: Path,
    order: dict,
    machines: list[str],
    planning: dict,
    out_dir: Path,
    *,
    timeout_s: float = 600.0,
    echo: Callable[[str], None] = print,
    live: bool = False,
    token: str | None = None,
) -> dict:
    """Upload ``case_dir`` to the service at ``url``, plan it for ``machines``, wait, download.

    Returns ``{"job", "patient", "stage_seconds", "files", "summary", "http_seconds"}``; raises
    RayrtError when the job fails (its errors in the message) or does not finish in time.
    """
    from rayrt.cli.service import _call, _client, upload_patient

    t0 = time.perf_counter()
    with _client(url, token) as client:
        patient = upload_patient(client, case_dir)
        echo(
            f"uploaded patient {patient['id']}: {len(patient.get('structures', []))} structures "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        body = {"patient_id": patient["id"], "order": order, "machines": machines, "options": planning}
        job = _call(client, "POST", "/jobs", json=body).json()
        echo(f"job {job['id']} submitted: plan on the standard machine, convert for {', '.join(machines) or '(none)'}")
        printer = ProgressPrinter(echo, live)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                job = _call(client, "GET", f"/jobs/{job['id']}").json()
                printer.update(job)
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    break
                if time.monotonic() > deadline:
                    raise RayrtError(
                        f"job {job['id']} still {job['state']} (stage {job.get('stage')}) after {timeout_s:.0f} s"
                    )
                time.sleep(0.25)
        finally:
            printer.close()
        if job["state"] != "succeeded":
            raise RayrtError(
                f"job {job['id']} {job['state']}: " + ("; ".join(job.get("errors", [])) or "no reason recorded")
            )
        listing = _call(client, "GET", f"/jobs/{job['id']}/results").json()
        out_dir = out_dir.resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for f in listing["files"]:
            if f["stage"] not in ("export", "qa") or f["path"].endswith("/result.json"):
                continue  # the stages' own records stay on the server; summary.json says it all
            name = f["path"].split("/", 1)[1]
            target = (out_dir / name).resolve()
            if target.parent != out_dir:
                raise RayrtError(f"server sent an unsafe result path {f['path']!r}")
            data = _call(client, "GET", f"/jobs/{job['id']}/results/{f['path']}").content
            target.write_bytes(data)
            files.append(target)
        summary_path = out_dir / "summary.json"
        if not summary_path.is_file():
            raise RayrtError(
                f"job {job['id']} finished without export/summary.json; "
                f"its files: {[f['path'] for f in listing['files']]}"
            )
        summary = json.loads(summary_path.read_text())
        conversion = []
        if machines:  # how rayrt.convert converted each machine (mode, attempts, seconds): the convert stage's record
            rec = _call(client, "GET", f"/jobs/{job['id']}/results/convert/result.json").json()
            conversion = [
                {
                    "machine": p["machine"],
                    "status": p["status"],
                    "mode": p.get("mode"),
                    "coincidence": p.get("coincidence"),
                    "seconds": p["seconds"],
                    "attempts": len(p.get("attempts", [])),
                    "reasons": p.get("reasons", [])[:2],
                }
                for p in rec["plans"]
            ]
    return {
        "job": job,
        "patient": patient,
        "stage_seconds": stage_seconds(job),
        "files": files,
        "summary": summary,
        "conversion": conversion,
        "http_seconds": time.perf_counter() - t0,
    }


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo-out"), "--out", help="folder for the downloaded results"),
    machines: str = typer.Option(
        DEFAULT_MACHINES, "--machines", help="comma-separated target machines (configs/machines)"
    ),
    options: Optional[Path] = typer.Option(
        None,
        "--options",
        help="planning options, JSON or YAML (PlanningRequest fields); default: configs/planning.yaml",
    ),
    settings: Optional[list[str]] = typer.Option(
        None, "--set", help="one planning option, KEY=VALUE (repeatable), e.g. --set num_beams=7"
    ),
    spacing_mm: float = typer.Option(4.0, "--spacing-mm", help="CT voxel size of the generated TG-119 phantom (mm)"),
    num_cpus: Optional[int] = typer.Option(None, "--cpus", help="CPUs of the embedded Ray (default: all)"),
    timeout: float = typer.Option(600.0, "--timeout", help="seconds to wait for the job"),
    data: Optional[Path] = typer.Option(
        None, "--data", help="store folder (default: a temporary folder, removed at the end)"
    ),
) -> None:
    """Start a local Ray + the HTTP service, plan the TG-119 phantom for three machines, download and summarise."""
    import logging
    import os
    import shutil
    import tempfile

    t_start = time.perf_counter()
    machine_list = [m.strip() for m in machines.split(",") if m.strip()]
    if spacing_mm <= 0:
        raise InputError("--spacing-mm must be > 0", field="spacing_mm")
    from rayrt.cli.planning_options import format_summary, read_options
    from rayrt.domain.planning import planning_request
    from rayrt.pipeline import check_request

    planning = read_options(options, settings)  # the job's overrides; the service lays them over configs/planning.yaml
    req = planning_request(planning, machine_list, field_prefix="")
    check_request(req)  # unknown machines, bad options: an error before starting anything
    work = Path(tempfile.mkdtemp(prefix="rayrt-demo-"))
    data_dir = data or (work / "data")
    echo = typer.echo
    timings: dict[str, float] = {}
    ray_started = False
    settings = None
    demo_users = None
    try:
        from rayrt.service.store import Store
        from rayrt.service.users import Role, UserStore

        # the demo signs in as a clinician of its own, revoked at the end (no token outlives the demo)
        demo_users = UserStore(Store(str(data_dir)))
        demo_user, demo_token = demo_users.add(f"demo-{os.getpid()}", Role.clinician)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        for name in ("ray", "ray.serve", "rayrt.service"):
            logging.getLogger(name).setLevel(logging.WARNING)
        echo(
            f"rayrt demo: TG-119 C-shape, {len(req.angles())} beams, {req.dose_grid_mm:g} mm dose grid, "
            f"machines {', '.join(machine_list)}"
        )
        t = time.perf_counter()
        import ray

        from rayrt.service import runtime
        from rayrt.service.settings import ServiceSettings

        settings = ServiceSettings(
            data_dir=str(data_dir),
            host="127.0.0.1",
            port=0,
            num_cpus=num_cpus,
            object_store_memory_mb=1024,
            controlled_computers=1,
            controlled_computer_cpus=0.0,
            progress_interval_s=0.2,
            scheduler_name=f"rayrt-demo-{os.getpid()}",
        )
        if not ray.is_initialized():
            tmp = tempfile.mkdtemp(prefix="rd", dir="/tmp")  # short: Unix socket paths <= 107 bytes
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                object_store_memory=1024 * 2**20,
                log_to_driver=False,
                namespace=settings.ray_namespace,
                _temp_dir=tmp,
                logging_level=logging.WARNING,
            )
            ray_started = True
            # import rayrt + numba in one worker per CPU while Serve starts (the first Dij tasks then start warm)
            warm = ray.remote(num_cpus=1)(_warm_worker)
            _ = [warm.remote() for _ in range(int(ray.cluster_resources().get("CPU", 1)))]
        timings["ray start"] = time.perf_counter() - t
        t = time.perf_counter()
        url = runtime.start(settings)
        settings = settings.model_copy(update={"port": int(url.rsplit(":", 1)[1])})
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve configures its logger on start
        timings["serve start"] = time.perf_counter() - t
        cpus = int(ray.cluster_resources().get("CPU", 0))
        echo(
            f"service up at {url} ({cpus} CPUs; Ray {timings['ray start']:.1f} s, Serve {timings['serve start']:.1f} s)"
        )

        t = time.perf_counter()
        from rayrt.imaging.phantoms import tg119_order, write_tg119

        case = write_tg119(work / "tg119", spacing_mm)
        order = tg119_order().model_dump(mode="json")
        timings["phantom"] = time.perf_counter() - t
        res = run_demo_job(
            url,
            case,
            order,
            machine_list,
            planning,
            out,
            timeout_s=timeout,
            echo=echo,
            live=sys.stderr.isatty(),
            token=demo_token,
        )
        timings["job (HTTP)"] = res["http_seconds"]
    except (InputError, RayrtError):
        raise
    except Exception as exc:  # Ray / Serve failed to start, or something unexpected: one readable line, exit 1
        raise RayrtError(f"demo failed: {type(exc).__name__}: {exc}") from exc
    finally:
        t = time.perf_counter()
        try:
            if settings is not None:
                from rayrt.service import runtime

                runtime.stop(settings, shutdown_serve=not ray_started)  # our private Ray goes down whole just below
        except Exception as exc:  # report, but keep shutting down
            echo(f"warning: service shutdown: {exc}", err=True)
        if ray_started:
            import ray

            ray.shutdown()
        if demo_users is not None and data is not None:
            demo_users.revoke(demo_user.name)
        timings["shutdown"] = time.perf_counter() - t
        if data is None:
            shutil.rmtree(work, ignore_errors=True)

    echo("")
    echo("plan quality vs the TG-119 goals (course doses) and QA verdicts:")
    for line in format_summary(res["summary"]):
        echo(line)
    if res.get("conversion"):
        echo("")
        echo("conversions (rayrt.convert on each machine's conversion actor pool):")
        for c in res["conversion"]:
            echo(
                f"  {c['machine']:<16} {c['status']:<9} mode {c['mode'] or '-':<9} "
                f"coincidence {c['coincidence'] or '-':<12} "
                f"{c['attempts']} attempt(s) {c['seconds']:6.1f} s"
            )
    echo("")
    echo("time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in res["stage_seconds"].items()))
    echo(
        "time overall (s):   "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
        + f", total {time.perf_counter() - t_start:.1f}"
    )
    echo(f"results in {out.resolve()}: " + ", ".join(sorted(p.name for p in res["files"])))
