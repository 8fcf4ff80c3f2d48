"""Several Ray nodes on one machine, in subprocesses (a pytest process can join only one Ray
cluster, and the other tests share a session-wide local Ray).

* multinode: head (1 CPU, resource "head") + 2 workers (1 CPU, resource "worker"): tasks spread
  over nodes; MachineQueue actors land on the head, ConversionWorkers on worker nodes.
* serve_cluster (slow): deploy/serve_config.yaml applied on a head-0-CPU cluster: the app runs,
  the ingress and proxy sit on the head, the config's env vars reach the app.
* autoscale (slow): fake multi-node autoscaler adds worker nodes for queued tasks and removes
  them when idle.
"""

import os
import subprocess
import sys

import pytest
from helpers.paths import REPO, TESTS

SCENARIOS = TESTS / "cluster_scenarios"
sys.path.insert(0, str(SCENARIOS))

from _common import parse_result  # noqa: E402  (the scenarios' own module: importable only after the insert)


def run_scenario(name: str, *args: str, timeout_s: float = 400) -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(SCENARIOS / f"{name}.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == 0, f"{name} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return parse_result(proc.stdout)


@pytest.mark.ray
def test_multinode_spread_and_resource_routing():
    r = run_scenario("multinode")
    assert sorted(r["node_kinds"].values()) == ["head", "worker", "worker"]
    # 6 one-CPU tasks with SPREAD on three 1-CPU nodes: more than one node used, workers included
    assert r["task_distinct_nodes"] >= 2 and "worker" in r["task_node_kinds"]
    # control actors pinned to the head, conversion actors to workers, by custom resources
    assert r["queue_node_kinds"] == ["head", "head"]
    assert r["conversion_node_kinds"] == ["worker", "worker"]
    assert sum(r["conversion_calls"]) == 4 and {tuple(c[:2]) for c in r["converted"]} == {("standard_twin", "reuse")}
    assert r["moved_to"] == ["VHD1"]


@pytest.mark.slow
@pytest.mark.ray
def test_serve_config_deploys_on_a_head_zero_cpu_cluster():
    r = run_scenario("serve_cluster")
    assert r["status"] == "RUNNING", r.get("message")
    assert r["health"]["code"] == 200 and r["health"]["body"]["ok"] is True
    assert r["health"]["body"] == {"ok": True}, "the public health answer says nothing about the store"
    assert r["store"] == r["data_dir"], "runtime_env env_vars of the config must reach the app"
    placed = r["placed"]
    assert placed["rayrt-ingress"] == ["head"] and set(placed["ProxyActor"]) == {"head"}


@pytest.mark.slow
@pytest.mark.ray
def test_fake_multinode_autoscaler_scales_up_and_down():
    r = run_scenario("autoscale", "--tasks", "4", "--task-s", "4", "--max-workers", "3")
    assert r["first_worker_node_s"] is not None, "no worker node was added for the queued tasks"
    assert r["max_worker_nodes"] >= 2
    assert r["all_tasks_done_s"] is not None and r["distinct_task_nodes"] >= 2
    assert r["scaled_to_zero_s"] is not None and r["scaled_to_zero_s"] > r["all_tasks_done_s"]
    assert r["left_over_pids"] == 0
