"""Planning split over Ray: the OpenKBP patients planned from their clinical goals with 1 and with 2
Ray workers, side by side in the same run, and the one-process path (``rayrt plan``) beside them.

    .venv/bin/python scripts/bench/parallel_planning.py [--patients pt_201,pt_202] [--set KEY=VALUE ...]
        [--out parallel_planning.json]

Each patient is planned three ways, each in a fresh process (the order of the three alternates
from patient to patient, so a slow phase of the shared machine does not hit one side only):

* ``ray-1`` / ``ray-2``: the recipe on an embedded local Ray with 1 or 2 CPUs for tasks, through
  :class:`rayrt.service.controlled.RayExecutor` as a service job runs it (1 CPU and 1 numba
  thread per task; the stage bodies run in the calling process with 1 numba thread, as in a
  controlled computer). The independent pieces run as tasks: the beams' bixel grids, the Dij
  chunks, and automatic planning's candidate solves (one task per candidate re-weighting, the
  problem put into the object store once, :mod:`rayrt.optimize.candidates`) or, with
  ``beam_angle_alternatives``, the beam-angle sets (one task per set, ``beam_set`` stage);
* ``local``: the same recipe in one process (numba uses every core inside each call).

The same order and settings give the same plan on every path (the table shows MU per fraction
and goals met for each). Prints per patient the seconds of the parallel stages (dij, fmo) and of
the whole recipe to the standard plan, the speed-up of 2 workers over 1, and writes
scripts/bench/results/parallel_planning.json. Timings on the shared 2-core machine are under load
(the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info, print_table, run_measured, shared_data_dir, write_json  # noqa: E402

CONFIGS = ("ray-1", "ray-2", "local")


def run_one(folder: Path, config: str, overrides: dict) -> dict:
    """Plan one patient with one configuration in this process; stage seconds, MU, goals met."""
    from plan_quality import order_from_goals

    from rayrt.domain.planning import planning_request
    from rayrt.pipeline import run_recipe

    executor = None
    if config.startswith("ray-"):
        import ray

        from rayrt.optimize._threads import set_threads
        from rayrt.service.controlled import RayExecutor

        ray.init(
            address="local",
            num_cpus=int(config.split("-")[1]),
            include_dashboard=False,
            object_store_memory=2 * 2**30,
            log_to_driver=False,
        )
        set_threads(1)  # the stage bodies run as in a controlled computer: one CPU, one numba thread
        executor = RayExecutor(num_cpus_per_task=1.0)
    goals = json.loads((folder / "goals.json").read_text())
    started: dict[str, float] = {}
    seconds: dict[str, float] = {}

    def on_event(e) -> None:
        if e.kind == "started":
            started[e.stage] = e.time
        elif e.kind == "finished" and e.stage in started:
            seconds[e.stage] = e.time - started[e.stage]

    t = time.perf_counter()
    res = run_recipe(
        str(folder),
        order_from_goals(goals),
        planning_request(overrides, []),
        until="normalize",
        executor=executor,
        on_event=on_event,
    )
    total = time.perf_counter() - t
    std = res["standard_plan"]
    return {
        "case": folder.name,
        "config": config,
        "seconds": total,
        "stage_seconds": seconds,
        "mu_per_fraction": std.plan.total_mu,
        "goals_met": sum(g.met for g in std.goals),
        "goals": len(std.goals),
        "tasks": getattr(executor, "tasks_submitted", None),
    }


def _opt(run: dict) -> float:
    """Seconds of the optimisation stages that fan out: the beam-angle sets (if any) and fmo."""
    st = run["stage_seconds"]
    return st.get("beam_set", 0.0) + st["fmo"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", default=None, help="comma list of OpenKBP patients (default: all)")
    ap.add_argument("--set", dest="settings", action="append", default=[], help="planning option KEY=VALUE")
    ap.add_argument("--out", default="parallel_planning.json", help="results file name in scripts/bench/results")
    ap.add_argument("--child", nargs=3, metavar=("PATIENT_DIR", "CONFIG", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    from rayrt.cli.planning_options import read_options

    overrides = read_options(None, a.settings)
    if a.child:
        folder, config, out = a.child
        Path(out).write_text(json.dumps(run_one(Path(folder), config, overrides)))
        return 0
    data = shared_data_dir()
    if data is None or not (data / "openkbp").is_dir():
        raise SystemExit("shared data (openkbp) not found; set RAYRT_SHARED")
    wanted = set(a.patients.split(",")) if a.patients else None
    cases = [p for p in sorted((data / "openkbp").iterdir()) if p.is_dir() and (wanted is None or p.name in wanted)]
    env = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    runs: list[dict] = []
    start = machine_info()
    for n, folder in enumerate(cases):
        order = CONFIGS if n % 2 == 0 else tuple(reversed(CONFIGS))
        for config in order:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "run.json"
                cmd = [sys.executable, __file__, "--child", str(folder), config, str(out)]
                cmd += [x for s in a.settings for x in ("--set", s)]
                m = run_measured(cmd, env={**env, "PYTHONWARNINGS": "ignore"}, cwd=os.getcwd())
                if m.returncode != 0 or not out.exists():
                    raise SystemExit(f"{folder.name} {config} failed:\n{m.stderr[-3000:]}")
                r = json.loads(out.read_text())
            r["process_seconds"] = m.wall_s
            r["peak_rss_mib"] = m.peak_rss_mib
            runs.append(r)
            print(f"{folder.name} {config}: {r['seconds']:.1f} s", flush=True)
    by = {(r["case"], r["config"]): r for r in runs}
    rows, summary = [], []
    for folder in cases:
        one, two, loc = (by[(folder.name, c)] for c in CONFIGS)
        speedup = one["seconds"] / two["seconds"]
        fmo_speedup = _opt(one) / _opt(two)
        summary.append({"case": folder.name, "speedup": speedup, "fmo_speedup": fmo_speedup})
        rows.append(
            [
                folder.name,
                one["stage_seconds"]["dij"],
                two["stage_seconds"]["dij"],
                _opt(one),
                _opt(two),
                one["seconds"],
                two["seconds"],
                speedup,
                loc["seconds"],
                f"{one['mu_per_fraction']:.0f}/{two['mu_per_fraction']:.0f}/{loc['mu_per_fraction']:.0f}",
                f"{one['goals_met']}/{two['goals_met']}/{loc['goals_met']} of {one['goals']}",
            ]
        )
    print_table(
        [
            "case",
            "dij 1w",
            "dij 2w",
            "opt 1w",
            "opt 2w",
            "total 1w",
            "total 2w",
            "speed-up",
            "one process",
            "MU/fx 1w/2w/local",
            "goals met 1w/2w/local",
        ],
        rows,
        title="Planning to the standard plan on Ray with 1 and 2 workers, and in one process (seconds)",
    )
    speedups = sorted(s["speedup"] for s in summary)
    print(f"speed-up of 2 workers over 1 (whole recipe): {speedups[0]:.2f}-{speedups[-1]:.2f}")
    write_json(
        RESULTS_DIR / a.out,
        {"overrides": overrides, "runs": runs, "summary": summary, "machine_start": start, "machine": machine_info()},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
