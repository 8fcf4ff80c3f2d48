"""Backpressure: a bounded number of requests in progress per ingress replica, answered 429 beyond it.

An overloaded service must say so at once (``429 Too Many Requests`` with ``Retry-After``) rather
than queue without bound until clients time out or the replica runs out of memory, and the
long-lived progress streams (``GET /jobs/{id}/events``, server-sent events) must never take the
places that short requests need. :class:`AdmissionMiddleware` (plain ASGI) keeps two counts per
replica:

* requests in progress, at most :attr:`AdmissionPolicy.max_requests`; each must be answered
  within :attr:`AdmissionPolicy.request_timeout_s` (else 503, when no answer has started);
* open progress streams, at most :attr:`AdmissionPolicy.max_streams`, counted apart and never
  timed out (a stream ends with its job).

``GET /health`` is always admitted and never counted: monitoring must see an overloaded service
answer. Serve's own per-replica limit (``max_ongoing_requests``) is set above the sum of both, so
that the replica, not Serve's queue, decides. The policy in force is module state set by the
ingress replica (:func:`set_policy`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from rayrt.service.http_guard import send_error

__all__ = ["AdmissionMiddleware", "AdmissionPolicy", "is_stream", "set_policy"]

#: what a 429 asks the client to do
RETRY = {"Retry-After": "1"}


@dataclass(frozen=True)
class AdmissionPolicy:
    max_requests: int = 128
    max_streams: int = 256
    request_timeout_s: float = 600.0

    @classmethod
    def of(cls, settings: Any) -> AdmissionPolicy:
        """The policy of a :class:`rayrt.service.settings.ServiceSettings`."""
        return cls(settings.max_concurrent_requests, settings.max_event_streams, settings.request_timeout_s)

    @property
    def serve_max_ongoing(self) -> int:
        """Serve's ``max_ongoing_requests`` for the replica: room for both counts and the health checks."""
        return self.max_requests + self.max_streams + 16


_POLICY: list[AdmissionPolicy] = [AdmissionPolicy()]


def set_policy(policy: AdmissionPolicy) -> None:
    _POLICY[0] = policy


def is_stream(method: str, path: str) -> bool:
    return method == "GET" and path.startswith("/jobs/") and path.endswith("/events")


class AdmissionMiddleware:
    """ASGI: the two bounded counts of the module doc; 429 ``{"error": "busy"}`` beyond them."""

    def __init__(self, app: Any):
        self.app = app
        self.requests = 0
        self.streams = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == "/health":
            await self.app(scope, receive, send)
            return
        policy = _POLICY[0]
        if is_stream(scope.get("method", ""), scope.get("path", "")):
            if self.streams >= policy.max_streams:
                message = f"{self.streams} progress streams are open: poll GET /jobs/{{id}}"
                await send_error(send, 429, "busy", message, RETRY)
                return
            self.streams += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.streams -= 1
            return
        if self.requests >= policy.max_requests:
            message = f"the service is busy ({self.requests} requests in progress): retry"
            await send_error(send, 429, "busy", message, RETRY)
            return
        self.requests += 1
        started = False

        async def send_tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, send_tracked), policy.request_timeout_s)
        except asyncio.TimeoutError:
            if not started:
                message = f"the request took longer than {policy.request_timeout_s:g} s and was stopped"
                await send_error(send, 503, "timeout", message)
        finally:
            self.requests -= 1
