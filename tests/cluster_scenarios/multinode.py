"""Scenario: a three-node Ray cluster on one machine (ray.cluster_utils.Cluster).

Head: 1 CPU + resource ``head``; two workers: 1 CPU + resource ``worker`` each. Shows
  * CPU tasks spread over the nodes,
  * MachineQueue actors pinned to the head by the ``head`` resource,
  * ConversionWorker actors routed to worker nodes by the ``worker`` resource, converting a small
    planned phantom's standard plan with rayrt.convert (for ``standard_twin``: the reuse mode).
Prints ``RESULT {json}``. Run: ``python tests/cluster_scenarios/multinode.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import ray
from _common import emit
from ray.cluster_utils import Cluster


def main() -> None:
    t0 = time.perf_counter()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "resources": {"head": 1},
            "object_store_memory": 96 * 2**20,
            "include_dashboard": False,
        },
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, resources={"worker": 1}, object_store_memory=96 * 2**20)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        t_up = time.perf_counter() - t0
        kinds = {}
        for n in ray.nodes():
            if n["Alive"]:
                kinds[n["NodeID"]] = (
                    "head" if "head" in n["Resources"] else ("worker" if "worker" in n["Resources"] else "other")
                )

        @ray.remote(num_cpus=1)
        def where(i: int) -> str:
            time.sleep(0.3)
            return ray.get_runtime_context().get_node_id()

        task_nodes = ray.get([where.options(scheduling_strategy="SPREAD").remote(i) for i in range(6)])

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package
        from helpers.planning import FAST_PLANNING
        from helpers.study import SMALL_ORDER, make_small_study

        from rayrt.domain.order import parse_order
        from rayrt.domain.planning import planning_request
        from rayrt.pipeline import run_recipe
        from rayrt.service.conversion import ConversionPools
        from rayrt.service.machine_queues import MachineRegistry

        # placement comes from the settings, as from configs/service.yaml on a cluster
        reg = MachineRegistry(["TB1", "VHD1"], settings={"actor_options": {"resources": {"head": 0.01}}})

        queue_nodes = [ray.get(reg.queue(name).info.remote())["node_id"] for name in reg.names()]
        reg.book("TB1", "j1", "p1", 5, plan_id="x")
        moved = reg.set_status("TB1", "down", "maintenance", "scenario").moved

        order = parse_order(SMALL_ORDER)
        res = run_recipe(
            make_small_study(with_dose=False),
            order,
            planning_request(FAST_PLANNING, []),
            until="normalize",
        )
        std, geo = ray.put(res["standard_plan"]), ray.put(res["geometry"])
        pools = ConversionPools(
            ["standard_twin"],
            settings={"default_size": 2, "max_size": 2, "actor_options": {"num_cpus": 0, "resources": {"worker": 0.5}}},
        )
        results = ray.get([pools.submit("standard_twin", std, geo) for _ in range(4)], timeout=300)
        info = pools.worker_info("standard_twin")
        emit(
            {
                "startup_s": round(t_up, 2),
                "total_s": round(time.perf_counter() - t0, 2),
                "node_kinds": kinds,
                "task_node_kinds": [kinds.get(n, "?") for n in task_nodes],
                "task_distinct_nodes": len(set(task_nodes)),
                "queue_node_kinds": [kinds.get(n, "?") for n in queue_nodes],
                "moved_to": [b.moved_to for b in moved],
                "conversion_node_kinds": [kinds.get(i["node_id"], "?") for i in info],
                "conversion_calls": [i["calls"] for i in info],
                "converted": [[r.machine, r.mode, r.status] for r in results],
            }
        )
        pools.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
