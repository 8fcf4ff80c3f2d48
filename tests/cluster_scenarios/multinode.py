"""Scenario: a three-node Ray cluster on one machine (ray.cluster_utils.Cluster).

Head: 1 CPU + resource ``head``; two workers: 1 CPU + resource ``worker`` each. Shows
  * CPU tasks spread over the nodes,
  * MachineQueue actors pinned to the head by the ``head`` resource,
  * ConversionWorker actors routed to worker nodes by the ``worker`` resource (and converting).
Prints ``RESULT {json}``. Run: ``python tests/cluster_scenarios/multinode.py``.
"""

from __future__ import annotations

import time

from _common import AGILITY_MM, MILLENNIUM_MM, demo_machine, demo_plan, emit

import ray
from ray.cluster_utils import Cluster


def main() -> None:
    t0 = time.perf_counter()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"head": 1}, "object_store_memory": 96 * 2**20, "include_dashboard": False},
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
                kinds[n["NodeID"]] = "head" if "head" in n["Resources"] else ("worker" if "worker" in n["Resources"] else "other")

        @ray.remote(num_cpus=1)
        def where(i: int) -> str:
            time.sleep(0.3)
            return ray.get_runtime_context().get_node_id()

        task_nodes = ray.get([where.options(scheduling_strategy="SPREAD").remote(i) for i in range(6)])

        from rayrt.service.conversion import ConversionPools, LeafResampleRequest
        from rayrt.service.machines import MachineRegistry

        # placement comes from the settings, as from configs/service.yaml on a cluster
        reg = MachineRegistry(["TB1", "VHD1"], settings={"actor_options": {"resources": {"head": 0.01}}})

        queue_nodes = [ray.get(reg.queue(name).info.remote())["node_id"] for name in reg.names()]
        reg.book("TB1", "j1", "p1", 5, plan_id="x")
        moved = reg.set_status("TB1", "down", "maintenance", "scenario").moved

        pools = ConversionPools(
            {"Agility1": demo_machine("Agility1", AGILITY_MM, jaw_x=False)},
            settings={"default_size": 2, "max_size": 2, "actor_options": {"num_cpus": 0, "resources": {"worker": 0.5}}},
        )
        req = LeafResampleRequest(plan=demo_plan(), source_leaf_boundaries_mm=MILLENNIUM_MM.tolist())
        results = pools.map("Agility1", [req] * 4, timeout_s=120)
        info = pools.worker_info("Agility1")
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
                "converted_pairs": [len(r.plan.beams[0].segments[0].x1_mm) for r in results],
            }
        )
        pools.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
