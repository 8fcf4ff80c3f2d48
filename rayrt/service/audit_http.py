"""Recording every API request in the audit trail (ASGI middleware; :mod:`rayrt.service.audit`).

:class:`AuditMiddleware` sits outside :class:`rayrt.service.auth.AuthMiddleware`: when a request
for a non-public route (or a sign-in) has been answered, it records who (the user the request
authenticated as, or ``anonymous``), the route template (the path itself for a request refused
before routing), the patient / job / machine / user the path names (and those a route adds with
:func:`note`, e.g. the new patient's id), the status and the outcome. Refused and denied requests are recorded too.

Reads that repeat (the same user, route and ids with a success status) are recorded once per
:data:`READ_REPEAT_S` per replica: a page that polls a job every few seconds is one record a
minute, not twenty. Every change (POST, PUT, PATCH, DELETE) and every failure is recorded each
time. The record is sent after the answer (an audit failure is logged, never turned into an error
for the caller). The sink in force is module state set by the ingress replica (:func:`set_sink`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

from rayrt.service.audit import AuditEntry, outcome_of
from rayrt.service.auth import is_public

log = logging.getLogger("rayrt.service")

__all__ = ["READ_REPEAT_S", "AuditMiddleware", "note", "set_sink"]

#: a successful read repeated by the same user within this many seconds is not recorded again
READ_REPEAT_S = 60.0

Sink = Callable[[AuditEntry], Awaitable[None]]
_SINK: list[Sink | None] = [None]


def set_sink(sink: Sink | None) -> None:
    _SINK[0] = sink


def note(scope_or_request: Any, **ids: str | None) -> None:
    """Add ids the path does not carry (``patient_id``, ``job_id``...) to this request's record."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    scope.setdefault("state", {}).setdefault("audit_ids", {}).update({k: v for k, v in ids.items() if v})


#: the path segment before an id -> the record's field (``/jobs/{id}/plans/{machine}``: a job, a machine)
_ID_AFTER = {
    "patients": "patient_id",
    "jobs": "job_id",
    "machines": "machine",
    "plans": "machine",
    "users": "target_user",
}


def _ids(path: str) -> dict[str, str]:
    """The ids a request path names (also for a request refused before routing)."""
    segs = [s for s in path.split("/") if s]
    return {_ID_AFTER[a]: b for a, b in zip(segs, segs[1:]) if a in _ID_AFTER}


class AuditMiddleware:
    """ASGI: one audit record per answered request (see the module doc)."""

    def __init__(self, app: Any, sink: Callable[[], Sink | None] = lambda: _SINK[0]):
        self.app = app
        self.sink = sink
        self._seen: dict[tuple, float] = {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        sink = self.sink()
        if not path or sink is None or (is_public(path) and path != "/session"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_seen(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            await self._record(scope, status, sink)

    async def _record(self, scope: dict, status: int, sink: Sink) -> None:
        state = scope.get("state") or {}
        user = state.get("rayrt_user")
        route = scope.get("route")
        template = getattr(route, "path", None) or scope.get("path", "")
        method = scope.get("method", "")
        ids = {**_ids(scope.get("path", "")), **state.get("audit_ids", {})}
        name = user.name if user is not None else state.get("audit_user", "anonymous")
        if method == "GET" and status < 400:
            key = (name, template, tuple(sorted(ids.items())), status)
            now = time.monotonic()
            if now - self._seen.get(key, -float("inf")) < READ_REPEAT_S:
                return
            self._seen[key] = now
            if len(self._seen) > 10000:  # forget the oldest half
                for k, _ in sorted(self._seen.items(), key=lambda kv: kv[1])[:5000]:
                    del self._seen[k]
        entry = AuditEntry(
            user=name,
            role=user.role.value if user is not None else None,
            action=f"{method} {template}",
            status=status,
            outcome=outcome_of(status),
            **ids,
        )
        try:
            await sink(entry)
        except Exception:
            log.exception("audit: could not record %s %s by %s", method, template, name)
