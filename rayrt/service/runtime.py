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
from pathlib import Path
from typing import Callable

import ray
from ray import serve

from rayrt.domain.errors import InputError
from rayrt.service.app import build_app
from rayrt.service.audit_log import audit_log_name
from rayrt.service.auth import check_bind
from rayrt.service.credentials import save_token
from rayrt.service.local_files import write_atomic
from rayrt.service.process import free_port, port_is_free, ray_env_defaults
from rayrt.service.scheduler import get_or_create_scheduler
from rayrt.service.settings import ServiceSettings
from rayrt.service.store import Store
from rayrt.service.users import Role, UserStore

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


def bootstrap_admin(store: Store, url: str) -> str | None:
    """On a service's first start (a store with no active users) create the ``admin`` user and put its
    token where this machine's CLI finds it (:func:`rayrt.service.credentials.save_token`; with no
    writable config directory, ``auth/admin-token`` in a local store, 0600). Returns a line saying
    where the token is, or None when the store has users already."""
    users = UserStore(store)
    if users.read().active():
        return None
    _, token = users.add("admin", Role.admin)
    try:
        where = save_token(url, token)
    except OSError:
        if not store.local:
            raise
        where = Path(store.path("auth", "admin-token"))
        write_atomic(where, (token + "\n").encode())  # 0600
    return (
        f"first start: created the admin user; its token is in {where} (the CLI on this machine uses it; "
        "give others their own with `rayrt users add NAME --role clinician|physicist|admin`)"
    )


def start(settings: ServiceSettings, announce: Callable[[str], None] | None = None) -> str:
    """Start Serve (HTTP on ``settings.host:port``), the scheduler and the ingress; return the URL.

    Port 0 picks a free port. Leftovers of interrupted writes in the store are cleaned first.
    Refuses a non-loopback bind with authentication off. On the first start of a store with
    authentication on, the admin user is created and ``announce`` (default: the log) told where
    its token is.
    """
    check_bind(settings.host, settings.auth)
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
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"{'https' if settings.tls_certfile else 'http'}://{host}:{settings.port}"
    if settings.auth:  # before the service answers: its first caller finds the token in place
        said = bootstrap_admin(store, url)
        if said:
            (announce or log.warning)(said)
    init_ray(settings)
    t0 = time.monotonic()
    http: dict = {"host": settings.host, "port": settings.port}
    if settings.tls_certfile:
        http.update(ssl_certfile=settings.tls_certfile, ssl_keyfile=settings.tls_keyfile)
    serve.start(http_options=http)
    get_or_create_scheduler(settings)
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    log.info("rayrt service up in %.1f s", time.monotonic() - t0)
    return url


def stop(settings: ServiceSettings | None = None, *, shutdown_serve: bool = True, app_name: str = APP_NAME) -> None:
    """Remove the Serve app ``app_name``, kill the settings' scheduler (and with it its computers)
    and audit actor, optionally stop Serve."""
    settings = settings or ServiceSettings()
    if not ray.is_initialized():
        return
    try:
        serve.delete(app_name)
    except Exception:
        log.debug("serve.delete failed", exc_info=True)
    for name in (settings.scheduler_name, audit_log_name(settings)):
        try:
            ray.kill(ray.get_actor(name, namespace=settings.ray_namespace), no_restart=True)
        except ValueError:  # not running
            pass
    if shutdown_serve:
        serve.shutdown()
