"""Scenario: deploy/serve_config.yaml deployed on a multi-node cluster shaped like cluster.yaml.

Head: 0 CPUs + resource ``head`` (like cluster.yaml / the KubeRay head); two workers: 2 CPUs
+ resource ``worker``. The Serve config is applied the way ``serve deploy`` applies it (the
controller's ``deploy_apps`` with the validated ServeDeploySchema), with the store redirected
to a local folder and a free HTTP port. Checks the app runs, answers ``/health``, and where the
proxy, the ingress replica and the ControlledComputers were placed. Prints ``RESULT {json}``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import ray
import yaml
from _common import REPO, emit, free_port
from ray.cluster_utils import Cluster


def main() -> None:
    t0 = time.perf_counter()
    data = Path(tempfile.mkdtemp(prefix="rrtsv", dir="/tmp"))
    port = free_port()
    from rayrt.service.store import Store
    from rayrt.service.users import Role, UserStore

    _, token = UserStore(Store(str(data))).add("scenario-admin", Role.admin)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "resources": {"head": 1},
            "object_store_memory": 96 * 2**20,
            "include_dashboard": False,
        },
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2, resources={"worker": 1}, object_store_memory=96 * 2**20)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="rayrt")
        kinds = {n["NodeID"]: ("head" if "head" in n["Resources"] else "worker") for n in ray.nodes() if n["Alive"]}

        from ray import serve
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        cfg = yaml.safe_load((REPO / "deploy" / "serve_config.yaml").read_text())
        cfg["http_options"] = {"host": "127.0.0.1", "port": port}
        for app in cfg["applications"]:
            env = app["runtime_env"]["env_vars"]
            env["RAYRT_DATA_URI"] = env["RAYRT_DATA_DIR"] = str(data)
            app["args"]["controlled_computers"] = 2
        schema = ServeDeploySchema.model_validate(cfg)
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        _get_global_client().deploy_apps(schema)

        status = None
        deadline = time.time() + 240
        while time.time() < deadline:
            apps = serve.status().applications
            status = apps["rayrt"].status if "rayrt" in apps else None
            if status in ("RUNNING", "DEPLOY_FAILED"):
                break
            time.sleep(1.0)
        health = store = None
        if status == "RUNNING":
            import httpx

            for _ in range(60):
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
                    health = {"code": r.status_code, "body": r.json()}
                    break
                except httpx.HTTPError:
                    time.sleep(1.0)
            # where the app's store is (admin only): the settings of the config reached the replica
            r = httpx.get(f"http://127.0.0.1:{port}/cluster", headers={"Authorization": f"Bearer {token}"}, timeout=60)
            store = r.json().get("store") if r.status_code == 200 else f"{r.status_code}: {r.text[:200]}"
        placed: dict[str, list[str]] = {}
        for a in ray._private.state.actors().values():
            if a.get("State") != "ALIVE":
                continue
            cls = a.get("ActorClassName", "").split(".")[-1].replace("ServeReplica:rayrt:", "")
            node = kinds.get(a.get("Address", {}).get("NodeID"), "?")
            placed.setdefault(cls, []).append(node)
        emit(
            {
                "status": status,
                "message": serve.status().applications["rayrt"].message if status and status != "RUNNING" else "",
                "health": health,
                "store": store,
                "placed": {k: sorted(v) for k, v in placed.items()},
                "data_dir": str(data),
                "total_s": round(time.perf_counter() - t0, 2),
            }
        )
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
        import shutil

        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
