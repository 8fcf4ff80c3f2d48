"""Service settings: where the durable store lives, how Ray and the HTTP ingress start.

Precedence (last wins): built-in defaults < settings file < environment < explicit arguments
(the CLI's ``--data``/``--port``/``--address``).

* settings file: ``$RAYRT_CONFIG`` if set, else ``configs/service.yaml`` in the current
  directory if it exists (a missing default file is not an error; a missing ``$RAYRT_CONFIG``
  file is).
* environment: ``RAYRT_DATA_DIR`` (alias ``RAYRT_DATA_URI``; a local directory or a pyarrow.fs URI such as
  ``file:///srv/rayrt``, ``s3://bucket/prefix``, ``gs://bucket/prefix``), ``RAYRT_PORT``,
  ``RAYRT_HOST``, ``RAYRT_RAY_ADDRESS``.

This module imports neither Ray nor HTTP code: the CLI reads it before deciding to start Ray.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rayrt.domain.errors import InputError, first_error
from rayrt.service.policies import ConversionPoolSettings, MachineQueueSettings

DEFAULT_DATA_DIR = "./rayrt-data"
DEFAULT_CONFIG = Path("configs") / "service.yaml"
DEFAULT_SERVER = "http://127.0.0.1:8000"

SCHEDULER_NAME = "rayrt-scheduler"
RAY_NAMESPACE = "rayrt"


class ServiceSettings(BaseModel):
    """Settings of one rayrt service deployment."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str = Field(
        default=DEFAULT_DATA_DIR, description="durable store: local directory or pyarrow.fs URI (file://, s3://, gs://)"
    )
    host: str = Field(default="127.0.0.1", description="address the HTTP ingress binds to")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port of the ingress (0 = any free port)")
    trusted_hosts: list[str] = Field(
        default_factory=list,
        description="host names the HTTP API answers to (Host header; '*' any, '.example.org' a domain); empty: "
        "localhost, 127.0.0.1 and ::1 on a loopback bind, any host otherwise (rayrt.service.http_guard)",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="other browser origins (scheme://host[:port]) allowed to send state-changing requests",
    )
    auth: bool = Field(
        default=True,
        description="bearer-token authentication and roles (rayrt.service.auth); false only on a loopback "
        "bind (every request is then the local admin)",
    )
    tls_certfile: str | None = Field(
        default=None, description="PEM certificate: Serve's proxy answers HTTPS (with tls_keyfile)"
    )
    tls_keyfile: str | None = Field(default=None, description="PEM private key of tls_certfile")
    ray_address: str = Field(
        default="local", description="'local' starts an embedded Ray; 'auto' or ray://host:port joins a cluster"
    )
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of the embedded Ray (None = all)")
    object_store_memory_mb: int | None = Field(
        default=None, ge=64, description="object store size of the embedded Ray in MiB"
    )
    controlled_computers: int = Field(default=1, ge=1, description="number of ControlledComputer actors that run jobs")
    controlled_computer_cpus: float = Field(
        default=1.0, ge=0, description="CPUs reserved by each ControlledComputer actor"
    )
    max_upload_files: int = Field(default=20000, ge=1, description="most files accepted in one patient upload")
    import_options: dict = Field(
        default_factory=lambda: {"num_cpus": 0},
        description="Ray options of the task that imports an upload (rayrt.service.import_task); on a "
        "cluster keep it off the head node, e.g. {num_cpus: 0, resources: {worker: 0.001}}",
    )
    max_body_mb: float = Field(
        default=512.0,
        gt=0,
        description="largest HTTP request body accepted (MiB; an upload above it answers 413; a planning CT of 300 "
        "512 x 512 slices is ~160 MiB: raise it for 4D CT)",
    )
    progress_interval_s: float = Field(
        default=0.5, ge=0, description="least time between two progress writes of one job"
    )
    max_concurrent_requests: int = Field(
        default=128, ge=1, description="requests in progress per replica; beyond: 429 (rayrt.service.admission)"
    )
    max_event_streams: int = Field(
        default=256, ge=1, description="open progress streams (GET /jobs/{id}/events) per replica; beyond it 429"
    )
    request_timeout_s: float = Field(
        default=600.0, gt=0, description="a request not answered within this is stopped with 503 (streams excepted)"
    )
    viewer_cache_mb: float = Field(
        default=1024.0,
        gt=0,
        description="memory per ingress replica for the image viewer's loaded volumes, masks and encoded slices "
        "(MiB; least recently used dropped first; a 512 x 512 x 200 CT takes 100 MiB; rayrt.service.viewer)",
    )
    scheduler_name: str = Field(
        default=SCHEDULER_NAME,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="name of the scheduler actor (namespace 'rayrt'); "
        "its computers are named <scheduler_name>-cc-<slot>-<n><incarnation>",
    )
    heartbeat_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="how often the scheduler asks every controlled computer for a heartbeat "
        "(and re-checks the queue's admission)",
    )
    heartbeat_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="a controlled computer that has not answered a heartbeat for this long is killed and replaced; "
        "its job is re-queued",
    )
    job_cpus: float = Field(
        default=1.0,
        ge=0,
        description="free cluster CPUs (ray.available_resources, besides the computers' own) needed to start one more "
        "job; one job always runs when none does",
    )
    machine_queues: MachineQueueSettings = Field(
        default_factory=MachineQueueSettings,
        description="treatment-machine queues: slot minutes, default policy, Ray actor options "
        "(rayrt.service.machine_queues)",
    )
    conversion_pool: ConversionPoolSettings = Field(
        default_factory=ConversionPoolSettings,
        description="conversion actor pools: initial size per machine, maximum, Ray actor options "
        "(rayrt.service.conversion)",
    )
    stage_modules: list[str] = Field(
        default_factory=list,
        description="extra pipeline stages: modules (dotted names or .py files) that each export "
        "STAGES, a list of rayrt.pipeline.Stage (rayrt.pipeline.stage_of); every "
        "controlled computer loads them and runs them after each job's recipe",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ServiceSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together: give both or neither")
        return self

    @property
    def ray_namespace(self) -> str:
        return RAY_NAMESPACE


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"settings file {path} is not valid YAML: {exc}", kind="settings", field=str(path)) from None
    if not isinstance(data, dict):
        raise InputError(f"settings file {path} must be a mapping of setting: value", kind="settings", field=str(path))
    return data


def load_settings(path: str | Path | None = None, **overrides: object) -> ServiceSettings:
    """Read the settings file (see module doc), apply the environment, then ``overrides``.

    ``overrides`` whose value is None are ignored, so CLI options can be passed straight through.
    Raises :class:`InputError` naming the offending setting on bad values.
    """
    data: dict = {}
    if path is None and os.environ.get("RAYRT_CONFIG"):
        path = os.environ["RAYRT_CONFIG"]
        if not Path(path).is_file():
            raise InputError(f"RAYRT_CONFIG names {path}, which does not exist", kind="settings", field="RAYRT_CONFIG")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"settings file not found: {p}", kind="settings", field="config")
        data.update(_read_yaml(p))
    elif DEFAULT_CONFIG.is_file():
        data.update(_read_yaml(DEFAULT_CONFIG))
    env = {
        "data_dir": os.environ.get("RAYRT_DATA_DIR") or os.environ.get("RAYRT_DATA_URI"),
        "port": os.environ.get("RAYRT_PORT"),
        "host": os.environ.get("RAYRT_HOST"),
        "ray_address": os.environ.get("RAYRT_RAY_ADDRESS"),
    }
    data.update({k: v for k, v in env.items() if v})
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServiceSettings.model_validate(data)
    except ValidationError as exc:
        loc, msg = first_error(exc)
        loc = loc or "(root)"
        raise InputError(f"invalid service setting '{loc}': {msg}", kind="settings", field=loc) from None


def server_url(explicit: str | None = None) -> str:
    """The URL of a running rayrt server: ``explicit``, else ``$RAYRT_SERVER``, else the default."""
    return (explicit or os.environ.get("RAYRT_SERVER") or DEFAULT_SERVER).rstrip("/")
