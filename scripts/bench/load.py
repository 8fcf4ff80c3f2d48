"""Load benchmark (issue 15, "Measured: load"): many uploads and jobs from concurrent clients while
progress streams are open, with /health measured all along.

    .venv/bin/python scripts/bench/load.py [--uploads 200] [--jobs 50] [--streams 40] [--clients 16]
        [--max-requests 128] [--out load.json]

A fresh local Ray + Serve + rayrt service (the product's settings, one ingress replica, two
controlled computers). Then, at once:

* ``--streams`` progress streams (``GET /jobs/{id}/events``) held open on jobs that wait in the queue;
* ``--uploads`` uploads of a small TG-119 phantom (8 mm, a zip) from ``--clients`` threads, each
  with its own ``Idempotency-Key``; a 429 is retried after its ``Retry-After`` with the same key;
* ``--jobs`` jobs (import + structures analysis) submitted the same way;
* ``/health`` called every 50 ms from another thread.

Checks: every upload and job created exactly once (the store holds ``uploads`` new patients and
``jobs`` + streams' jobs, no duplicates), every job finishes, no 5xx anywhere, overload answered
429 only. Reports /health p50/p99/max, the answers by status, requests/s, the ingress replica's
and proxy's memory growth. Prints a table and writes scripts/bench/results/load.json.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import service as svc  # noqa: E402  (the service start / stop and process helpers of the service benchmark)
from common import RESULTS_DIR, machine_info, print_table, rss_mib, write_json, zip_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--streams", type=int, default=40)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-requests", type=int, default=None, help="max_concurrent_requests (default: settings)")
    ap.add_argument("--out", default="load.json")
    args = ap.parse_args()

    import httpx

    from rayrt.imaging.phantoms import write_tg119

    work = Path(tempfile.mkdtemp(prefix="rayrt-load-"))
    case = write_tg119(work / "tg119", 8.0)
    data = zip_folder(case)
    overrides = {"max_concurrent_requests": args.max_requests} if args.max_requests else {}
    url, settings, _, _ = svc._start_service(work / "data", computers=2, **overrides)
    headers = svc._headers(url)
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    try:
        pids = svc._serve_pids()
        rss0 = {k: rss_mib(p) for k, p in pids.items()}
        with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
            seed = c.post("/patients", files=[("files", ("t.zip", data, "application/zip"))]).json()["id"]
            # the streams' jobs wait behind a long queue of the load's own jobs: open for the whole run
            stream_jobs = [
                c.post("/jobs", json={"patient_id": seed, "priority": -1}).json()["id"] for _ in range(args.streams)
            ]

        stop = threading.Event()
        health_ms: list[float] = []
        health_codes: collections.Counter = collections.Counter()

        def health() -> None:
            with httpx.Client(base_url=url, timeout=30) as h:
                while not stop.is_set():
                    t = time.perf_counter()
                    try:
                        code = h.get("/health").status_code
                    except httpx.HTTPError as exc:
                        code = type(exc).__name__
                    health_ms.append(1000 * (time.perf_counter() - t))
                    health_codes[code] += 1
                    time.sleep(0.05)

        stream_events: collections.Counter = collections.Counter()

        def stream(jid: str) -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=None) as s:
                with s.stream("GET", f"/jobs/{jid}/events") as r:
                    with lock:
                        statuses[("events", r.status_code)] += 1
                    for line in r.iter_lines():
                        if line.startswith("event: "):
                            stream_events[line[7:]] += 1

        def call(kind: str, do) -> str:
            key = uuid.uuid4().hex
            while True:
                r = do(key)
                with lock:
                    statuses[(kind, r.status_code)] += 1
                if r.status_code == 429:
                    time.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                if r.status_code != 201:
                    raise RuntimeError(f"{kind}: {r.status_code} {r.text[:300]}")
                return r.json()["id"]

        client_local = threading.local()

        def client() -> httpx.Client:
            if not hasattr(client_local, "c"):
                client_local.c = httpx.Client(base_url=url, headers=headers, timeout=300)
            return client_local.c

        def upload(_: int) -> str:
            return call(
                "upload",
                lambda k: client().post(
                    "/patients",
                    files=[("files", ("t.zip", data, "application/zip"))],
                    headers={"Idempotency-Key": k},
                ),
            )

        def submit(_: int) -> str:
            body = {"patient_id": seed}
            return call("job", lambda k: client().post("/jobs", json=body, headers={"Idempotency-Key": k}))

        hthread = threading.Thread(target=health, daemon=True)
        hthread.start()
        sthreads = [threading.Thread(target=stream, args=(j,), daemon=True) for j in stream_jobs]
        for t in sthreads:
            t.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            up = pool.map(upload, range(args.uploads))
            jb = pool.map(submit, range(args.jobs))
            uploaded, submitted = list(up), list(jb)
        t_load = time.perf_counter() - t0
        rss1 = {k: rss_mib(p) for k, p in pids.items()}

        deadline = time.monotonic() + 1800
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            while True:
                jobs = c.get("/jobs", params={"limit": 1000}).json()["jobs"]
                mine = [j for j in jobs if j["id"] in set(submitted) | set(stream_jobs)]
                if all(j["state"] in ("succeeded", "failed", "cancelled") for j in mine) or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            patients = c.get("/patients").json()["patients"]
        t_all = time.perf_counter() - t0
        for t in sthreads:
            t.join(timeout=60)
        stop.set()
        hthread.join(timeout=10)
    finally:
        svc._stop_service(settings)

    ms = np.array(health_ms)
    states = collections.Counter(j["state"] for j in mine)
    five_xx = sum(n for (k, code), n in statuses.items() if isinstance(code, int) and code >= 500)
    res = {
        "machine": machine_info(),
        "uploads": args.uploads,
        "jobs": args.jobs,
        "streams": args.streams,
        "clients": args.clients,
        "max_concurrent_requests": settings.max_concurrent_requests,
        "load_seconds": t_load,
        "until_all_finished_seconds": t_all,
        "uploads_per_s": args.uploads / t_load,
        "patients_created": len(set(uploaded)),
        "patients_in_store": len(patients) - 1,
        "duplicates": len(uploaded) - len(set(uploaded)) + len(submitted) - len(set(submitted)),
        "job_states": dict(states),
        "answers": {f"{k} {code}": n for (k, code), n in sorted(statuses.items(), key=str)},
        "answers_5xx": five_xx,
        "stream_events": dict(stream_events),
        "health_calls": int(ms.size),
        "health_codes": {str(k): v for k, v in health_codes.items()},
        "health_p50_ms": float(np.percentile(ms, 50)),
        "health_p99_ms": float(np.percentile(ms, 99)),
        "health_max_ms": float(ms.max()),
        "rss_mib_before": rss0,
        "rss_mib_after_load": rss1,
    }
    print_table(
        ["measure", "value"],
        [
            ["uploads / jobs / streams / clients", f"{args.uploads} / {args.jobs} / {args.streams} / {args.clients}"],
            ["load phase (s), uploads/s", f"{t_load:.1f}, {res['uploads_per_s']:.2f}"],
            ["patients created / in store (new)", f"{res['patients_created']} / {res['patients_in_store']}"],
            ["duplicates", res["duplicates"]],
            ["job states", dict(states)],
            ["answers", res["answers"]],
            ["5xx answers", five_xx],
            [
                "/health p50 / p99 / max (ms)",
                f"{res['health_p50_ms']:.1f} / {res['health_p99_ms']:.1f} / {res['health_max_ms']:.1f}",
            ],
            ["/health answers", res["health_codes"]],
            ["replica / proxy RSS before -> after (MiB)", {k: f"{rss0[k]:.0f} -> {rss1.get(k, 0):.0f}" for k in rss0}],
        ],
        title="rayrt under load (one ingress replica)",
    )
    print("wrote", write_json(RESULTS_DIR / args.out, res))


if __name__ == "__main__":
    main()
