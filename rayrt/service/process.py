"""This process and its Ray: CPU niceness, ports, the Ray environment, named-actor options.

The lowest layer of the service: imported by the modules that start Ray (``runtime``), run
compute (``controlled``, ``conversion``), answer HTTP (``app``) or keep actors
(``machine_queues``), and importing none of them (nor Ray itself).
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from rayrt.domain.errors import InputError


def named_actor_options(
    name: str, namespace: str | None = None, lifetime: str | None = None, base: dict | None = None
) -> dict:
    """Ray actor options for a named actor that is re-attached when one with that name is alive
    (``get_if_exists``): ``base`` options plus name, and namespace / lifetime when given."""
    opts = dict(base or {})
    opts.update(name=name, get_if_exists=True)
    if namespace:
        opts["namespace"] = namespace
    if lifetime:
        opts["lifetime"] = lifetime
    return opts


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """True if nothing listens on ``host:port``. SO_REUSEADDR (as the HTTP server itself uses)
    ignores connections of a killed previous server still in TIME_WAIT, so a service restarted
    right after a crash can take its port back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


#: CPU niceness of rayrt's compute (stage tasks, controlled computers, conversion actors). Ray starts
#: every worker at niceness 15, the Serve proxy and the ingress replica included; compute at 19 gives
#: the HTTP path about 2.4x its CPU share (Linux CFS weights 36 : 15) while jobs saturate the CPUs,
#: so status calls stay fast under load. Batch work loses little: it runs whenever the proxy idles.
#: ``RAYRT_COMPUTE_NICENESS`` (in the environment of the Ray workers) changes it; 15 = Ray's default.
COMPUTE_NICENESS = int(os.environ.get("RAYRT_COMPUTE_NICENESS", "19"))


def lower_priority(niceness: int = COMPUTE_NICENESS) -> None:
    """Raise this process' niceness to ``niceness`` (never lowers it; best effort)."""
    try:
        cur = os.nice(0)
        if cur < niceness:
            os.nice(niceness - cur)
    except (OSError, AttributeError):  # not permitted / not POSIX: priority is an optimisation only
        pass


def interactive_priority() -> list[int]:
    """Give this process (the ingress replica) and the Serve HTTP proxy of its node CPU niceness 0
    (Ray starts every worker at 15): status calls then keep their CPU share beside compute at 19
    and beside other programs on the machine. The proxy is found as a sibling of this worker (same
    raylet parent, title ``ray::ProxyActor``), so only this node's Ray is touched. Best effort:
    without the privilege to lower niceness nothing changes. Returns the PIDs changed."""
    changed: list[int] = []
    if os.environ.get("RAYRT_INTERACTIVE_RENICE", "1") == "0":  # switched off (e.g. to compare)
        return changed
    me, parent = os.getpid(), os.getppid()
    pids = [me]
    try:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == parent and (entry / "cmdline").read_bytes().startswith(b"ray::ProxyActor"):
                    pids.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    except OSError:
        pass
    for pid in pids:
        try:
            if os.getpriority(os.PRIO_PROCESS, pid) > 0:
                os.setpriority(os.PRIO_PROCESS, pid, 0)
                changed.append(pid)
        except (OSError, AttributeError):
            pass
    return changed


#: Ray Serve settings of the HTTP path, read from the environment by the Serve proxy and replica
#: processes (which inherit it from the raylet, i.e. from the process that starts Ray):
#:
#: * ``RAY_SERVE_PROXY_USE_GRPC=1``: the proxy hands each request to the ingress replica over the
#:   replica's gRPC server instead of a Ray actor call (no object-ref generator, no named-actor
#:   lookup by the replica per request). Measured on 2 cores: the proxy's and the replica's CPU per
#:   ``GET /jobs/{id}`` fall from about 3.0 + 2.8 ms to 1.8 + 1.7 ms, the saturated status throughput
#:   rises about 1.5x (scripts/bench/service.py, part c).
#: * ``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH=2147483647``: on that path the proxy refuses a
#:   message from the replica over gRPC's default 4 MiB, and the replica sends an answer's queued
#:   body pieces as one message: without it a 15 MB result file (a Dij) or a large RTDOSE answered
#:   500. gRPC's largest message (2 GiB - 1) instead.
#:
#: :func:`init_ray` applies them (unless already set) when it starts the embedded Ray; a cluster
#: that rayrt joins (``ray_address`` not ``local``) needs them in its nodes' environment.
SERVE_ENV_DEFAULTS: dict[str, str] = {
    "RAY_SERVE_PROXY_USE_GRPC": "1",
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": "2147483647",
}


def ray_env_defaults() -> None:
    """Environment of the Ray rayrt starts or joins: token authentication on (``RAY_AUTH_MODE=token``,
    the token made private by :func:`ensure_ray_token`), no usage stats, and the Serve HTTP path
    lean (:data:`SERVE_ENV_DEFAULTS`); values already set are kept, except that authentication is
    never turned off here: a ``disabled`` mode in the environment is refused."""
    mode = os.environ.setdefault("RAY_AUTH_MODE", "token")
    if mode.lower() != "token":
        raise InputError(
            f"RAY_AUTH_MODE={mode}: rayrt runs Ray with token authentication only (an unauthenticated Ray "
            "control plane lets anyone who reaches it run code); unset it or set it to 'token'",
            kind="settings",
            field="RAY_AUTH_MODE",
        )
    ensure_ray_token()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for key, value in SERVE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def ensure_ray_token() -> Path | None:
    """The Ray token file (``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), created with a random
    256-bit token when missing, readable by its owner only (0600; Ray itself would write it with
    the umask's permissions). None when the token comes from ``RAY_AUTH_TOKEN``, which is set here
    to a fresh token (for this process and the ones it starts) when no home directory is writable."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        elif path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except FileExistsError:  # another process created it meanwhile
        pass
    except OSError:
        if "RAY_AUTH_TOKEN_PATH" in os.environ:
            raise
        # no writable home: a token for this process and the processes it starts
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        return None
    return path
