"""Autoscaling benchmark: how fast the Ray autoscaler adds worker nodes for queued work and
removes them when idle, on a fake multi-node cluster on this machine.

Runs ``tests/cluster_scenarios/autoscale.py`` (its own head with 0 CPUs, worker type
``cpu_worker`` with 1 CPU each, idle timeout 6 s) ``--repeats`` times, prints a table and writes
``scripts/bench/results/autoscale.json``. The fake provider starts real raylets on this machine,
so node start-up here is much faster than a cloud VM (minutes) and slower under load.

    .venv/bin/python scripts/bench/autoscale.py [--tasks 4] [--task-s 4] [--max-workers 3] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, RESULTS_DIR, machine_info, print_table, run_measured, write_json  # noqa: E402

SCENARIO = REPO_ROOT / "tests" / "cluster_scenarios" / "autoscale.py"
COLUMNS = [
    ("head_start_s", "head start s"),
    ("first_worker_node_s", "1st node s"),
    ("max_worker_nodes", "max nodes"),
    ("max_worker_nodes_s", "max nodes at s"),
    ("all_tasks_done_s", "work done s"),
    ("scaled_to_zero_s", "back to 0 s"),
    ("idle_removal_after_done_s", "idle removal s"),
    ("distinct_task_nodes", "nodes used"),
]


def main() -> int:
    sys.path.insert(0, str(SCENARIO.parent))
    from _common import parse_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--task-s", type=float, default=4.0)
    ap.add_argument("--max-workers", type=int, default=3)
    ap.add_argument("--idle-timeout-s", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "autoscale.json")
    args = ap.parse_args()

    before = machine_info()
    runs = []
    for i in range(args.repeats):
        m = run_measured(
            [
                sys.executable,
                str(SCENARIO),
                "--tasks",
                str(args.tasks),
                "--task-s",
                str(args.task_s),
                "--max-workers",
                str(args.max_workers),
                "--idle-timeout-s",
                str(args.idle_timeout_s),
            ],
            env={"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"},
            cwd=REPO_ROOT,
            timeout_s=600,
        )
        if m.returncode != 0:
            print(m.stdout[-2000:], m.stderr[-2000:], file=sys.stderr)
            print(f"run {i + 1} failed with exit code {m.returncode}", file=sys.stderr)
            return 1
        r = parse_result(m.stdout)
        r["wall_s"] = round(m.wall_s, 2)
        runs.append(r)

    rows = [[f"run {i + 1}"] + [r.get(k) for k, _ in COLUMNS] for i, r in enumerate(runs)]
    if len(runs) > 1:
        rows.append(
            ["median"]
            + [
                statistics.median(r[k] for r in runs) if all(r.get(k) is not None for r in runs) else None
                for k, _ in COLUMNS
            ]
        )
    print_table(
        ["run"] + [h for _, h in COLUMNS],
        rows,
        title=f"fake multi-node autoscaling: {args.tasks} x {args.task_s:g} s one-CPU tasks, "
        f"0..{args.max_workers} one-CPU workers "
        "(times from task submission; taken under load from other developers unless the machine was quiet)",
    )
    out = write_json(
        args.out,
        {
            "benchmark": "autoscale",
            "scenario": "tests/cluster_scenarios/autoscale.py "
            "(fake_multinode provider, head 0 CPU, cpu_worker 1 CPU + {worker: 1})",
            "params": {
                "tasks": args.tasks,
                "task_s": args.task_s,
                "max_workers": args.max_workers,
                "idle_timeout_s": args.idle_timeout_s,
            },
            "machine_before": before,
            "machine_after": machine_info(),
            "runs": runs,
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
