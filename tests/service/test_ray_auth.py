"""The control plane is closed: the Ray rayrt starts (and the one the tests share) runs with token
authentication, a driver without the token is refused, rayrt never turns authentication off, and
the token file is its owner's alone. The deployment files' side is in test_cluster_config.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rayrt.domain.errors import InputError
from rayrt.service.process import ensure_ray_token, ray_env_defaults

CONNECT = (
    "import ray, sys\n"
    "ray.init(address=sys.argv[1], log_to_driver=False)\n"
    "print('connected', ray.cluster_resources().get('CPU'))\n"
)


def _connect(gcs: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    full.update(env)
    full.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-c", CONNECT, gcs], env=full, capture_output=True, text=True, timeout=120)


@pytest.mark.ray
def test_a_driver_without_the_token_is_refused(ray_session):
    import ray

    gcs = ray.get_runtime_context().gcs_address
    ok = _connect(gcs, RAY_AUTH_MODE="token")  # the token file every process of this user reads
    assert ok.returncode == 0 and "connected" in ok.stdout, ok.stderr[-2000:]
    wrong = _connect(gcs, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    assert wrong.returncode != 0 and "connected" not in wrong.stdout
    assert "auth" in (wrong.stderr + wrong.stdout).lower()


def test_rayrt_never_turns_ray_authentication_off(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(InputError, match="token authentication only") as e:
        ray_env_defaults()
    assert e.value.field == "RAY_AUTH_MODE"
    monkeypatch.delenv("RAY_AUTH_MODE")
    ray_env_defaults()
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_the_token_file_is_created_private(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    path = tmp_path / "ray" / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert ensure_ray_token() == path
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) > 0
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)  # e.g. written by `ray get-auth-token --generate` under a 022 umask
    assert ensure_ray_token() == path and path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == token  # never replaced
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 32)
    assert ensure_ray_token() is None


def test_without_a_writable_home_the_token_lives_in_the_environment(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("HOME", str(blocker))  # ~/.ray cannot be created under a file (even as root)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    assert ensure_ray_token() is None
    token = os.environ["RAY_AUTH_TOKEN"]
    assert len(token) == 64 and ensure_ray_token() is None and os.environ["RAY_AUTH_TOKEN"] == token
