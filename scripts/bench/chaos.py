"""Chaos (issue 15, "Measured: chaos"): jobs planned while every part of the service is killed at
random moments and one job file is corrupted; then every job must be accounted for.

    .venv/bin/python scripts/bench/chaos.py [--jobs 20] [--planning 4] [--seed 7] [--out chaos.json]

``rayrt serve`` runs in its own process group with its own Ray (as a clinic runs it; the
ServiceProcess of tests/helpers/faults.py), signed in with the admin token its first start wrote.
The TG-119 phantom (8 mm) is uploaded; ``--jobs`` jobs are submitted (``--planning`` of them plan
for TrueBeam M120 with the tests' fast settings, the others run the analysis stages), each with an
Idempotency-Key and retried through outages; the first released plan is booked. Meanwhile, at
seeded random moments, in a seeded random order: a controlled computer, the Serve ingress replica,
the scheduler, the machine registry and the audit actor are SIGKILLed (Ray restarts them), one
finished job's ``job.json`` is overwritten with garbage, and the whole service (process group: the
driver, its Ray, every worker) is SIGKILLed and started again.

Then: every submitted job finished (succeeded, or failed with a reason) or, the corrupted one, is
reported unreadable and quarantined; none lost, none duplicated; the booking is still held; the
store's job records scan clean but for the corrupted one; the audit chain verifies. Prints a table
and writes scripts/bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, RESULTS_DIR, machine_info, print_table, write_json, zip_folder  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "tests"))
from helpers.faults import ServiceProcess  # noqa: E402
from helpers.planning import FAST_PLANNING  # noqa: E402

ACTORS = {
    "controlled computer": b"ray::ControlledComputer",
    "ingress replica": b"ray::ServeReplica:rayrt:rayrt-ingress",
    "scheduler": b"ray::Scheduler",
    "machine registry": b"ray::MachineRegistry",
    "audit log": b"ray::AuditLog",
}
FINISHED = ("succeeded", "failed", "cancelled")


def _pids(svc: ServiceProcess, prefix: bytes) -> list[int]:
    """Processes of this service whose command line starts with ``prefix``: its own processes (the
    driver's group, its Ray's daemons) and the workers those daemons started (their own sessions)."""
    own = set(svc._own_pids())
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if (int(d.name) in own or ppid in own) and (d / "cmdline").read_bytes().startswith(prefix):
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--planning", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="chaos.json")
    args = ap.parse_args()

    import httpx

    from rayrt.imaging.phantoms import tg119_order, write_tg119
    from rayrt.service.audit import AuditTrail
    from rayrt.service.credentials import token_for
    from rayrt.service.process import free_port
    from rayrt.service.store import Store

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="rayrt-chaos-"))
    os.environ["RAYRT_TOKEN_FILE"] = str(work / "client" / "tokens.json")
    case = write_tg119(work / "tg119", 8.0)
    data = work / "data"
    cfg = work / "service.yaml"
    cfg.write_text(
        "num_cpus: 2\nobject_store_memory_mb: 256\ncontrolled_computers: 2\ncontrolled_computer_cpus: 0\n"
        "progress_interval_s: 0.2\nheartbeat_interval_s: 0.5\n"
    )
    svc = ServiceProcess(data, free_port(), cfg, work / "serve.log")
    events: list[dict] = []
    t0 = time.monotonic()

    def note(what: str, detail: str = "") -> None:
        events.append({"t_s": round(time.monotonic() - t0, 1), "event": what, "detail": detail})
        print(f"{events[-1]['t_s']:7.1f} s  {what}  {detail}", flush=True)

    def call(method: str, path: str, **kw) -> httpx.Response:
        """One request, retried through the outages the chaos makes (same Idempotency-Key)."""
        deadline = time.monotonic() + 600
        while True:
            try:
                auth = {"Authorization": f"Bearer {token_for(svc.url)}"}
                with httpx.Client(base_url=svc.url, headers=auth, timeout=120) as c:
                    r = c.request(method, path, **kw)
                json_answer = r.headers.get("content-type", "").startswith("application/json")
                if r.status_code < 500 and r.status_code != 429 and json_answer:  # else: Serve (re)deploying
                    return r
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method} {path}: no answer for 600 s")
            time.sleep(1.0)

    try:
        svc.start()
        svc.wait_healthy()
        note("service up", svc.url)
        body = zip_folder(case)
        r = call("POST", "/patients", files=[("files", ("tg.zip", body, "application/zip"))])
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        assert call("GET", "/machines").status_code == 200  # the machine registry exists from here on
        order = tg119_order().model_dump(mode="json")
        submitted: list[str] = []
        for i in range(args.jobs):
            req = {"patient_id": pid, "priority": i % 3}
            if i < args.planning:
                req.update(order=order, machines=["truebeam_m120"], options=FAST_PLANNING)
            key = uuid.uuid4().hex
            r = call("POST", "/jobs", json=req, headers={"Idempotency-Key": key})
            assert r.status_code == 201, r.text
            submitted.append(r.json()["id"])
        note("submitted", f"{len(submitted)} jobs ({args.planning} planning)")

        actions = [*ACTORS, "corrupt a job file", "whole service"]
        rng.shuffle(actions)
        if actions.index("corrupt a job file") > actions.index("whole service"):  # the restart must meet it
            a, b = actions.index("corrupt a job file"), actions.index("whole service")
            actions[a], actions[b] = actions[b], actions[a]
        start = time.monotonic() - t0
        due = sorted(start + rng.uniform(2.0, 90.0) for _ in actions)
        schedule = list(zip(due, actions))
        corrupted: str | None = None
        booked: dict | None = None
        deadline = time.monotonic() + 1800
        while True:
            now = time.monotonic() - t0
            while schedule and schedule[0][0] <= now:
                _, action = schedule.pop(0)
                if action in ACTORS:
                    victims = _pids(svc, ACTORS[action])
                    if victims:
                        victim = rng.choice(victims)
                        os.kill(victim, signal.SIGKILL)
                        note(f"killed the {action}", f"pid {victim}")
                    else:
                        note(f"no {action} running to kill")
                elif action == "corrupt a job file":
                    jobs = {j["id"]: j for j in call("GET", "/jobs", params={"limit": 1000}).json()["jobs"]}
                    done = [j for j in submitted if jobs.get(j, {}).get("state") in FINISHED]
                    corrupted = rng.choice(done or submitted)
                    torn = b'{"id": "' + corrupted.encode() + b'", "pa'  # a write cut short
                    (data / "jobs" / corrupted / "job.json").write_bytes(torn)
                    note("corrupted a job file", f"{corrupted} ({jobs.get(corrupted, {}).get('state')})")
                else:
                    stragglers = svc.kill()
                    note("killed the whole service", f"{stragglers} straggler(s)")
                    svc.start()
                    svc.wait_healthy()
                    note("service restarted")
            page = call("GET", "/jobs", params={"limit": 1000}).json()
            states = {j["id"]: j for j in page["jobs"]}
            unreadable = {u["job_id"] for u in page["unreadable"]}
            call("GET", "/machines")  # as the web page polls it (and so the registry runs after a restart)
            if booked is None:
                planned = [j for j in submitted[: args.planning] if states.get(j, {}).get("state") == "succeeded"]
                for jid in planned:
                    r = call("POST", f"/jobs/{jid}/book", json={"machine": "truebeam_m120"})
                    if r.status_code == 201:
                        booked = r.json()
                        note("booked", f"job {jid} on truebeam_m120")
                        break
            open_jobs = [j for j in submitted if j not in unreadable and states.get(j, {}).get("state") not in FINISHED]
            if not schedule and not open_jobs:
                break
            if time.monotonic() > deadline:
                note("deadline", f"{len(open_jobs)} jobs still open")
                break
            time.sleep(1.0)
        note("all jobs accounted for")

        page = call("GET", "/jobs", params={"limit": 1000}).json()
        listed = [j["id"] for j in page["jobs"]]
        states = {j["id"]: j for j in page["jobs"]}
        unreadable = {u["job_id"]: u for u in page["unreadable"]}
        lost = [j for j in submitted if j not in states and j not in unreadable]
        failed_without_reason = [
            j for j in submitted if states.get(j, {}).get("state") == "failed" and not states[j]["errors"]
        ]
        bookings = call("GET", "/machines/truebeam_m120/bookings").json()["bookings"] if booked else []
        booking_held = booked is None or any(b["job_id"] == booked["job_id"] for b in bookings)
        audit_http = call("GET", "/audit", params={"limit": 1}).json()["check"]
    finally:
        svc.cleanup()
    store = Store(data)
    jobs_after, bad_after = store.scan_jobs()
    patients_unreadable = []
    for p in store.list_patients():
        try:
            store.load_study(p)  # summary, manifest, every image and mask
        except Exception as exc:
            patients_unreadable.append(f"{p}: {type(exc).__name__}")
    audit = AuditTrail(store).verify()
    res = {
        "machine": machine_info(),
        "seed": args.seed,
        "jobs": args.jobs,
        "planning_jobs": args.planning,
        "events": events,
        "job_states": {s: sum(1 for j in submitted if states.get(j, {}).get("state") == s) for s in FINISHED},
        "corrupted": corrupted,
        "unreadable_reported": sorted(unreadable),
        "quarantined": [b.job_id for b in bad_after if b.quarantined_to],
        "lost": lost,
        "duplicates": len(listed) - len(set(listed)) + sum(1 for j in listed if j not in submitted),
        "failed_without_reason": failed_without_reason,
        "booking_held": booking_held,
        "store_unreadable_after": [b.job_id for b in bad_after],
        "store_jobs_after": len(jobs_after),
        "store_patients_unreadable": patients_unreadable,
        "audit_http": audit_http,
        "audit_records": audit.records,
        "audit_ok": audit.ok,
        "seconds": round(time.monotonic() - t0, 1),
    }
    print_table(
        ["check", "result"],
        [
            ["jobs (planning)", f"{args.jobs} ({args.planning})"],
            ["chaos", ", ".join(e["event"] for e in events if e["event"].startswith(("killed", "corrupted")))],
            ["job states", res["job_states"]],
            [
                "corrupted -> reported / quarantined",
                f"{corrupted} -> {res['unreadable_reported']} / {res['quarantined']}",
            ],
            [
                "lost / duplicated / failed without a reason",
                f"{len(lost)} / {res['duplicates']} / {len(failed_without_reason)}",
            ],
            ["booking held", booking_held],
            [
                "store: unreadable job records / patients after",
                f"{res['store_unreadable_after']} / {patients_unreadable}",
            ],
            ["audit chain", f"{'verifies' if audit.ok else 'BROKEN: ' + str(audit.problem)} ({audit.records} records)"],
            ["total time (s)", res["seconds"]],
        ],
        title="chaos: every part of the service killed at random moments, one job file corrupted",
    )
    print("wrote", write_json(RESULTS_DIR / args.out, res))


if __name__ == "__main__":
    main()
