"""Scenario: the Ray autoscaler adds worker nodes for queued work and removes them when idle.

Uses the fake multi-node provider (worker "nodes" are extra raylets on this machine): a head
with 0 CPUs (like cluster.yaml's head), worker type ``cpu_worker`` (1 CPU + resource
``worker`` each, 0..3 nodes, idle timeout 6 s). Submits ``--tasks`` 1-CPU tasks that each take
``--task-s`` seconds, and records when nodes join, when the work finishes, and when the
idle nodes are gone. Prints ``RESULT {json}``.

Starts the head with ``ray start --head --port=P --num-cpus=0 --autoscaling-config=CFG``
(env RAY_FAKE_CLUSTER=1 AUTOSCALER_UPDATE_INTERVAL_S=1) and stops every process of that
cluster by PID at the end (never ``ray stop``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
from _common import cluster_pids, emit, free_port, stop_pids


def fake_config(gcs_address: str, max_workers: int, idle_timeout_s: float) -> dict:
    return {
        "cluster_name": "rayrt-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0, "head": 1}, "node_config": {}, "max_workers": 0},
            "cpu_worker": {
                "resources": {"CPU": 1, "worker": 1, "object_store_memory": 80 * 2**20},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_workers,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def worker_nodes() -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and "worker" in n["Resources"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--task-s", type=float, default=4.0)
    ap.add_argument("--max-workers", type=int, default=3)
    ap.add_argument("--idle-timeout-s", type=float, default=6.0)
    ap.add_argument("--timeout-s", type=float, default=240.0)
    args = ap.parse_args()

    port = free_port()
    gcs = f"127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="rrtas", dir="/tmp"))
    cfg_path = tmp / "autoscale.yaml"
    cfg_path.write_text(json.dumps(fake_config(gcs, args.max_workers, args.idle_timeout_s)))
    env = dict(
        os.environ,
        RAY_FAKE_CLUSTER="1",
        AUTOSCALER_UPDATE_INTERVAL_S="1",
        RAY_AUTH_MODE="token",
        RAY_USAGE_STATS_ENABLED="0",
    )
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cmd = [
        ray_bin,
        "start",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=0",
        '--resources={"head": 1}',
        f"--autoscaling-config={cfg_path}",
        f"--temp-dir={tmp}",
        "--include-dashboard=false",
        f"--object-store-memory={80 * 2**20}",
        "--disable-usage-stats",
    ]
    timeline: list[tuple[float, int]] = []
    result: dict = {
        "tasks": args.tasks,
        "task_s": args.task_s,
        "max_workers": args.max_workers,
        "idle_timeout_s": args.idle_timeout_s,
    }
    t_start = time.perf_counter()
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
        result["head_start_s"] = round(time.perf_counter() - t_start, 2)
        ray.init(address=gcs, logging_level="WARNING")
        assert worker_nodes() == 0, "the fake cluster should start without worker nodes"

        @ray.remote(num_cpus=1)
        def work(seconds: float) -> str:
            time.sleep(seconds)
            return ray.get_runtime_context().get_node_id()

        t0 = time.perf_counter()
        refs = [work.remote(args.task_s) for _ in range(args.tasks)]
        pending = list(refs)
        first_node = max_nodes_at = done_at = down_at = None
        max_nodes = 0
        while time.perf_counter() - t0 < args.timeout_s:
            n = worker_nodes()
            now = time.perf_counter() - t0
            timeline.append((round(now, 2), n))
            if n and first_node is None:
                first_node = now
            if n > max_nodes:
                max_nodes, max_nodes_at = n, now
            if pending:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                if not pending:
                    done_at = now
            elif n == 0:
                down_at = now
                break
            time.sleep(0.5)
        nodes_used = len(set(ray.get(refs))) if done_at is not None else 0
        result.update(
            first_worker_node_s=None if first_node is None else round(first_node, 2),
            max_worker_nodes=max_nodes,
            max_worker_nodes_s=None if max_nodes_at is None else round(max_nodes_at, 2),
            all_tasks_done_s=None if done_at is None else round(done_at, 2),
            scaled_to_zero_s=None if down_at is None else round(down_at, 2),
            idle_removal_after_done_s=None if (down_at is None or done_at is None) else round(down_at - done_at, 2),
            distinct_task_nodes=nodes_used,
            timeline=timeline,
        )
    finally:
        try:
            ray.shutdown()
        finally:
            stopped: set[int] = set()
            for attempt in range(5):  # agents may outlive their raylet; slow exits under load
                pids = cluster_pids(port, str(tmp))
                if not pids:
                    break
                stopped.update(pids)
                stop_pids(pids, grace_s=5.0 if attempt == 0 else 2.0)
                time.sleep(1.0)
            result["stopped_pids"] = len(stopped)
            result["left_over_pids"] = len(cluster_pids(port, str(tmp)))
            shutil.rmtree(tmp, ignore_errors=True)
    result["total_s"] = round(time.perf_counter() - t_start, 2)
    emit(result)


if __name__ == "__main__":
    main()
