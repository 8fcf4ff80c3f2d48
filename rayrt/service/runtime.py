"""Starting and stopping the service: the embedded (or joined) Ray, Serve, scheduler, ingress.

``start(settings)`` is what ``rayrt serve`` and the test fixtures call::

    url = start(load_settings(port=8123, data_dir="/tmp/rt"))   # http://127.0.0.1:8123
    ...
    stop()

With ``ray_address="local"`` (the default) it starts a private single-node Ray in this process
(never attaching to another cluster by accident); any other address (``auto``,
``ray://head:10001``) joins that cluster. If Ray is already initialised in this process (a test
session), it is reused. Never calls ``ray stop``.
"""

from __future__ import annotations

import logging
import os
import time

import ray
from ray import serve

from rayrt.domain.errors import InputError
from rayrt.service.app import build_app
from rayrt.service.process import free_port, port_is_free, ray_env_defaults
from rayrt.service.scheduler import get_or_create_scheduler, get_scheduler
from rayrt.service.settings import ServiceSettings
from rayrt.service.store import Store

log = logging.getLogger("rayrt.service")

APP_NAME = "rayrt"


def init_ray(settings: ServiceSettings) -> bool:
    """Initialise Ray for ``settings`` unless it already is; True if this call started it."""
    if ray.is_initialized():
        return False
    ray_env_defaults()
    kwargs: dict = {"namespace": settings.ray_namespace, "include_dashboard": False, "log_to_driver": True}
    if settings.ray_address == "local":
        kwargs["address"] = "local"
        if settings.num_cpus:
            kwargs["num_cpus"] = settings.num_cpus
        if settings.object_store_memory_mb:
            kwargs["object_store_memory"] = settings.object_store_memory_mb * 2**20
    else:
        kwargs["address"] = settings.ray_address
        kwargs.pop("include_dashboard")
    ray.init(**kwargs)
    return True


def start(settings: ServiceSettings) -> str:
    """Start Serve (HTTP on ``settings.host:port``), the scheduler and the ingress; return the URL.

    Port 0 picks a free port. Leftovers of interrupted writes in the store are cleaned first.
    """
    if settings.port == 0:
        settings = settings.model_copy(update={"port": free_port(settings.host)})
    elif not port_is_free(settings.host, settings.port):
        raise InputError(
            f"port {settings.port} on {settings.host} is in use; choose another with --port (0 = any free port)",
            kind="settings",
            field="port",
        )
    if "://" not in settings.data_dir:  # actors may run in another working directory
        settings = settings.model_copy(update={"data_dir": os.path.abspath(settings.data_dir)})
    store = Store(settings.data_dir)
    removed = store.cleanup()
    if removed:
        log.info("store: removed %d leftovers of interrupted writes", removed)
    init_ray(settings)
    t0 = time.monotonic()
    serve.start(http_options={"host": settings.host, "port": settings.port})
    get_or_create_scheduler(settings)
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    log.info("rayrt service up in %.1f s", time.monotonic() - t0)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


def stop(settings: ServiceSettings | None = None, *, shutdown_serve: bool = True) -> None:
    """Remove the app, kill the scheduler (and with it its computers), optionally stop Serve."""
    settings = settings or ServiceSettings()
    if not ray.is_initialized():
        return
    try:
        serve.delete(APP_NAME)
    except Exception:
        log.debug("serve.delete failed", exc_info=True)
    try:
        ray.kill(get_scheduler(settings), no_restart=True)
    except ValueError:
        pass
    if shutdown_serve:
        serve.shutdown()
