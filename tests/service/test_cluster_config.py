"""Deployment files validate offline: cluster.yaml (Ray cluster launcher), the Serve config and
the KubeRay RayService, the same way `ray up` / `serve deploy` / the KubeRay operator read them."""

import copy
import importlib
import importlib.util

import pytest
import yaml
from helpers.paths import REPO

APP_IMPORT_PATH = "rayrt.service.app:app_builder"


@pytest.fixture(scope="module")
def cluster_cfg():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_up_validation(cluster_cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(cluster_cfg))
    validate_config(cfg)
    assert cfg["provider"]["type"] == "aws"


def test_cluster_yaml_validation_would_catch_a_typo(cluster_cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(cluster_cfg)
    bad["available_node_types"]["cpu_worker"]["max_worker"] = 3
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(cluster_cfg)
    bad["head_node_type"] = "nope"
    with pytest.raises(ValueError):
        validate_config(prepare_config(bad))


def test_cluster_layout_head_zero_cpu_workers_autoscale(cluster_cfg):
    types = cluster_cfg["available_node_types"]
    head = types[cluster_cfg["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["resources"]["head"] == 1
    start = " ".join(cluster_cfg["head_start_ray_commands"])
    assert "--num-cpus=0" in start and '"head": 1' in start and "--autoscaling-config" in start
    cpu = types["cpu_worker"]
    assert cpu["min_workers"] == 0 and cpu["max_workers"] >= 2 and cpu["resources"]["worker"] == 1
    assert cpu["node_config"]["InstanceType"].startswith("c7i")
    gpu = types["gpu_worker"]
    assert gpu["min_workers"] == 0 and "worker" not in gpu["resources"]
    assert any("pip install" in c and "rayrt" in c for c in cluster_cfg["setup_commands"])
    assert cluster_cfg["max_workers"] >= cpu["max_workers"] + gpu["max_workers"]


def _serve_schema(data):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(data)


def test_serve_config_validates():
    schema = _serve_schema(yaml.safe_load((REPO / "deploy" / "serve_config.yaml").read_text()))
    (app,) = schema.applications
    assert app.import_path == APP_IMPORT_PATH and app.route_prefix == "/"
    assert app.runtime_env["env_vars"]["RAYRT_DATA_URI"].startswith("s3://")


def test_kuberay_rayservice_validates_and_matches_serve_config():
    docs = list(yaml.safe_load_all((REPO / "deploy" / "kuberay" / "rayservice.yaml").read_text()))
    (svc,) = [d for d in docs if d["kind"] == "RayService"]
    assert svc["apiVersion"] == "ray.io/v1"
    serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    schema = _serve_schema(serve_cfg)
    assert schema.applications[0].import_path == APP_IMPORT_PATH
    plain = yaml.safe_load((REPO / "deploy" / "serve_config.yaml").read_text())
    assert serve_cfg["applications"] == plain["applications"], "keep serveConfigV2 and deploy/serve_config.yaml in step"
    rc = svc["spec"]["rayClusterConfig"]
    assert rc["rayVersion"] == "2.60.0" and rc["enableInTreeAutoscaling"] is True
    head = rc["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0" and yaml.safe_load(yaml.safe_load(head["resources"])) == {"head": 1}
    groups = {g["groupName"]: g for g in rc["workerGroupSpecs"]}
    assert groups["cpu-workers"]["minReplicas"] == 0 and groups["cpu-workers"]["maxReplicas"] >= 2
    assert yaml.safe_load(yaml.safe_load(groups["cpu-workers"]["rayStartParams"]["resources"])) == {"worker": 1}
    gpu = groups["gpu-workers"]
    assert gpu["minReplicas"] == 0
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_serve_config_rejects_bad_import_path():
    with pytest.raises(Exception, match="import path"):
        _serve_schema({"applications": [{"name": "x", "import_path": "nocolon"}]})


def test_app_builder_exists_when_the_app_module_does():
    module, attr = APP_IMPORT_PATH.split(":")
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not written yet; deploy files expect {APP_IMPORT_PATH}")
    mod = importlib.import_module(module)
    assert callable(getattr(mod, attr, None)), f"deploy files import {APP_IMPORT_PATH}: define {attr}(args) in {module}"
    # deployment overrides in the config must name deployments the app defines
    from ray.serve import Deployment

    defined = {v.name for v in vars(mod).values() if isinstance(v, Deployment)}
    cfg = yaml.safe_load((REPO / "deploy" / "serve_config.yaml").read_text())
    named = {d["name"] for app in cfg["applications"] for d in app.get("deployments", [])}
    assert named <= defined, f"serve_config.yaml overrides {named - defined}, the app defines {defined}"


def test_cluster_yaml_control_plane_is_closed(cluster_cfg):
    """Token authentication on every node, the dashboard on the head's loopback, the token file
    distributed to the nodes, nothing that turns authentication off."""
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cluster_cfg[key] if "ray start" in c]
        assert start, key
        for c in start:
            assert "RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN_PATH=/home/ray/.ray/auth_token" in c, c
    head = " ".join(cluster_cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert cluster_cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"


def test_kuberay_control_plane_is_closed():
    docs = [d for d in yaml.safe_load_all((REPO / "deploy/kuberay/rayservice.yaml").read_text()) if d]
    svc = next(d for d in docs if d["kind"] == "RayService")
    rc = svc["spec"]["rayClusterConfig"]
    assert rc["authOptions"] == {"mode": "token"}
    assert tuple(int(x) for x in rc["rayVersion"].split(".")[:2]) >= (2, 52)  # token auth needs Ray >= 2.52
    head = rc["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["containerPort"] for p in head.get("ports", [])}
    assert 10001 not in ports  # the Ray client port is not opened
    groups = [rc["headGroupSpec"], *rc["workerGroupSpecs"]]
    for g in groups:
        for c in g["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                assert not (e["name"] == "RAY_AUTH_MODE" and e.get("value") != "token"), e
    assert all(d.get("spec", {}).get("type") != "LoadBalancer" for d in docs if d["kind"] == "Service")
    text = (REPO / "deploy/kuberay/rayservice.yaml").read_text()
    assert "disabled" not in text


def test_no_rayrt_file_turns_ray_authentication_off():
    """No product, script or config file sets RAY_AUTH_MODE to anything but token."""
    import re

    offenders = []
    self_tests = {"test_cluster_config.py", "test_ray_auth.py"}  # they write the refused values on purpose
    for path in [
        *REPO.glob("rayrt/**/*.py"),
        *REPO.glob("scripts/**/*"),
        *REPO.glob("deploy/**/*"),
        *REPO.glob("configs/**/*"),
        *REPO.glob("tests/**/*.py"),
        REPO / "cluster.yaml",
    ]:
        if not path.is_file() or path.suffix in {".json", ".npz", ".npy"} or path.name in self_tests:
            continue
        text = path.read_text(errors="ignore")
        for m in re.finditer(r"RAY_AUTH_MODE[\"']?\s*[:=,]\s*[\"']?(\w+)", text):
            if m.group(1) not in {"token", "mode"}:
                offenders.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert not offenders, offenders
