"""Cross-site and host checks of the HTTP API, and the headers every answer carries.

A rayrt service on a workstation is reachable from the browser that runs on it: a page on any web
site could otherwise post a contour edit or a cancel to ``http://127.0.0.1:8000`` (a cross-site
request the browser sends without asking), or reach it under a name of its own that resolves to
127.0.0.1 (DNS rebinding: the browser then treats the service as that site and reads its answers).
Three checks close this, before any route runs:

* **Host**: the ``Host`` header must name a trusted host (:attr:`GuardPolicy.trusted_hosts`; a
  service bound to loopback trusts ``localhost``, ``127.0.0.1`` and ``::1`` only). 400 otherwise.
* **Origin**: a state-changing request (POST, PUT, PATCH, DELETE) that a browser sends from
  another origin is refused (403): its ``Origin`` must name the service's own host and port (the
  ``Host`` header; either scheme, for a TLS proxy in front) or be one of
  :attr:`GuardPolicy.allowed_origins`; ``Origin: null`` (sandboxed frames,
  files) is refused; without ``Origin``, ``Sec-Fetch-Site: cross-site`` / ``same-site`` is
  refused. Clients that are not browsers (the CLI, scripts) send neither header and pass.
* **Body size**: a body larger than :attr:`GuardPolicy.max_body_bytes` is refused (413) from its
  declared ``Content-Length`` before it is read, or as soon as a streamed body passes the limit;
  a body without a declared length (``Transfer-Encoding: chunked``) is refused (411): Serve's
  HTTP proxy reads such a body into memory as fast as it arrives (a 600 MB one grew the proxy
  and the replica by 700-800 MB before the limit stopped it). Every HTTP client sends the length
  of an upload (httpx, browsers' fetch with FormData).
* **JSON bodies**: a route that parses a body as JSON refuses any other content type (415,
  :func:`require_json`): a cross-site form can send ``text/plain`` but never ``application/json``
  without the browser asking the service first (a CORS pre-flight, which it answers with no
  ``Access-Control-Allow-Origin``).

Every answer carries ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
``X-Frame-Options: DENY`` and, unless the route set its own, ``Cache-Control: no-store`` (patient
data is not kept in browser caches). :class:`GuardMiddleware` applies all of it as plain ASGI
middleware (streamed answers pass through untouched); no Ray, no FastAPI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from rayrt.domain.errors import InputError

__all__ = [
    "BodyTooLarge",
    "current_policy",
    "set_policy",
    "GuardMiddleware",
    "GuardPolicy",
    "LOOPBACK_HOSTS",
    "SECURITY_HEADERS",
    "STATE_CHANGING",
    "check_request",
    "host_name",
    "is_loopback",
    "scope_headers",
    "send_error",
    "require_json",
]

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

#: headers every answer carries (``Cache-Control`` only where the route set none)
SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class GuardPolicy:
    """Which ``Host`` names and which other origins the service accepts.

    ``trusted_hosts``: host names without port (``*``: any; ``.example.org``: that domain and its
    sub-domains); ``allowed_origins``: ``scheme://host[:port]`` origins besides the service's own
    that may send state-changing requests (e.g. a hospital portal embedding the review page)."""

    trusted_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    allowed_origins: tuple[str, ...] = ()
    #: the largest request body accepted (bytes; None: no limit): a larger declared Content-Length
    #: is refused before the body is read, a longer streamed body as soon as it passes the limit
    max_body_bytes: int | None = None

    @classmethod
    def for_bind(
        cls,
        bind_host: str,
        trusted_hosts: list[str] | None = None,
        allowed_origins: list[str] | None = None,
        max_body_bytes: int | None = None,
    ) -> GuardPolicy:
        """The policy of a service bound to ``bind_host``: the configured trusted hosts, or by default
        the loopback names (plus the bound address) for a loopback bind and any host otherwise
        (a cluster ingress behind its own load balancer: set ``trusted_hosts`` to its names)."""
        if trusted_hosts:
            hosts = tuple(h.strip().lower() for h in trusted_hosts)
        elif is_loopback(bind_host):
            hosts = tuple(dict.fromkeys([*LOOPBACK_HOSTS, bind_host.strip("[]").lower()]))
        else:
            hosts = ("*",)
        origins = tuple(o.rstrip("/").lower() for o in (allowed_origins or []))
        return cls(trusted_hosts=hosts, allowed_origins=origins, max_body_bytes=max_body_bytes)


def is_loopback(host: str) -> bool:
    h = host.strip("[]").lower()
    return h in LOOPBACK_HOSTS or h.startswith("127.")


def host_name(host_header: str) -> str:
    """The host name of a ``Host`` header (lower case, without port or IPv6 brackets)."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:].split("]", 1)[0]
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _host_trusted(policy: GuardPolicy, host_header: str) -> bool:
    name = host_name(host_header)
    for t in policy.trusted_hosts:
        if t == "*" or name == t or (t.startswith(".") and (name.endswith(t) or name == t[1:])):
            return True
    return False


def check_request(policy: GuardPolicy, method: str, headers: Mapping[str, str]) -> tuple[int, str, str] | None:
    """Why a request must be refused, as (HTTP status, error kind, message), or None when it may
    proceed. ``headers``: the request's headers, names in lower case."""
    host = headers.get("host", "")
    if not host or not _host_trusted(policy, host):
        return 400, "host", f"host {host_name(host) or '(none)'!r} is not a trusted host of this service"
    declared = headers.get("content-length", "")
    if policy.max_body_bytes is not None and declared.isdigit() and int(declared) > policy.max_body_bytes:
        return 413, "too_large", _too_large(policy.max_body_bytes)
    if not declared and "chunked" in headers.get("transfer-encoding", "").lower():
        return (
            411,
            "length_required",
            (
                "send the request body with its Content-Length: a body of unstated length is refused "
                "(Serve's HTTP proxy would buffer it whole before any limit applies)"
            ),
        )
    if method.upper() not in STATE_CHANGING:
        return None
    origin = headers.get("origin")
    if origin is not None:  # the service's own origin: the same host and port (either scheme, behind TLS)
        o = origin.strip().rstrip("/").lower()
        if o == "null" or (o not in policy.allowed_origins and urlsplit(o).netloc != host.lower()):
            return 403, "origin", f"cross-site {method.upper()} refused: origin {origin!r} is not this service's"
        return None
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return 403, "origin", f"cross-site {method.upper()} refused (Sec-Fetch-Site: {site})"
    return None


def _too_large(limit: int) -> str:
    return f"the request body is larger than this service accepts ({limit / 2**20:,.0f} MiB)"


class BodyTooLarge(Exception):
    """A streamed body passed the policy's limit (raised from ``receive``; a route that catches
    errors of its body parser must let it through, to be answered 413)."""


def require_json(content_type: str | None) -> None:
    """InputError 415 unless the body is declared JSON (``application/json`` or ``+json``)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise InputError(
            f"the body must be JSON (Content-Type: application/json), not {media or 'unstated'!r}",
            kind="content_type",
            field="Content-Type",
            status=415,
        )


#: the policy in force in this process (:func:`set_policy`; a one-element list, so that code
#: shipped by value to a Serve replica still changes this module's state, never a copy of it)
_POLICY: list[GuardPolicy] = [GuardPolicy()]


def set_policy(policy: GuardPolicy) -> None:
    """Make ``policy`` the one :class:`GuardMiddleware` applies in this process (the ingress
    replica sets it from the service settings when it starts)."""
    _POLICY[0] = policy


def current_policy() -> GuardPolicy:
    return _POLICY[0]


class GuardMiddleware:
    """ASGI middleware: :func:`check_request` before the app (a refusal answers JSON ``{"error",
    "message"}``), the body-size limit while the body streams, :data:`SECURITY_HEADERS` and
    ``Cache-Control: no-store`` (unless set) on every answer. ``policy()`` gives the policy in
    force, read per request (default: :func:`current_policy`)."""

    def __init__(self, app: Any, policy: Callable[[], GuardPolicy] = current_policy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = check_request(self.policy(), scope["method"], scope_headers(scope))

        async def send_guarded(message: dict) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                present = {k.decode("latin-1").lower() for k, _ in raw}
                extra = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
                raw += [(k.lower().encode(), v.encode()) for k, v in extra.items() if k.lower() not in present]
                message = {**message, "headers": raw}
            await send(message)

        if refused is not None:
            await send_error(send_guarded, *refused)
            return
        limit = self.policy().max_body_bytes
        started = False
        received = 0

        async def receive_counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit is not None and received > limit:
                    raise BodyTooLarge
            return message

        async def send_tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_guarded(message)

        try:
            await self.app(scope, receive_counted, send_tracked)
        except BodyTooLarge:
            if started:
                raise
            await send_error(send_guarded, 413, "too_large", _too_large(int(limit or 0)))


def scope_headers(scope: dict) -> dict[str, str]:
    """An ASGI request's headers, names in lower case."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def send_error(send: Any, status: int, kind: str, text: str, headers: dict[str, str] | None = None) -> None:
    """Answer an ASGI request from a middleware with the API's error JSON ``{"error", "message"}``."""
    body = json.dumps({"error": kind, "message": text}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
