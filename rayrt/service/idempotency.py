"""Idempotency keys: a client that retries ``POST /patients`` or ``POST /jobs`` after a lost answer
gets the first answer again instead of a second patient or job.

A request that carries ``Idempotency-Key: <key>`` (1-200 printable ASCII characters, chosen by
the client, e.g. a UUID) is remembered, once it succeeded, under ``idempotency/<sha256(user, route,
key)>.json`` in the store with the SHA-256 of the request (the JSON body, or the uploaded files'
bytes) and the answer. The same user sending the same key to the same route again gets that
answer (with ``Idempotent-Replayed: true``) and nothing is created; the same key with a different
request is refused (422). Keys are per user and per route. Failed requests are not remembered: a
retry runs again. Plain Python over the :class:`rayrt.service.store.Store`; no HTTP here.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field

from rayrt.domain.errors import InputError

__all__ = ["HEADER", "IdempotencyRecord", "IdempotencyStore", "check_key"]

HEADER = "Idempotency-Key"


class IdempotencyRecord(BaseModel):
    request_sha256: str
    status: int
    body: Any
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


def check_key(key: str | None) -> str | None:
    """The key, or None when the request has none; InputError 422 for a malformed one."""
    if key is None:
        return None
    if not 1 <= len(key) <= 200 or not all(33 <= ord(c) <= 126 for c in key):
        raise InputError(
            f"{HEADER} must be 1-200 printable ASCII characters without spaces (e.g. a UUID)",
            kind="request",
            field=HEADER,
            status=422,
        )
    return key


class IdempotencyStore:
    def __init__(self, store: object):
        self.store = store

    @staticmethod
    def _rel(user: str, route: str, key: str) -> str:
        digest = hashlib.sha256("\0".join((user, route, key)).encode("utf-8")).hexdigest()
        return f"idempotency/{digest}.json"

    def replay(self, user: str, route: str, key: str, request_sha256: str) -> IdempotencyRecord | None:
        """The remembered answer to this key, or None; 422 when the key was used for another request."""
        try:
            rec = self.store.read_model(self._rel(user, route, key), IdempotencyRecord)  # type: ignore[attr-defined]
        except FileNotFoundError:
            return None
        if rec.request_sha256 != request_sha256:
            raise InputError(
                f"this {HEADER} was used for a different request to {route}: use a new key for a new request",
                kind="request",
                field=HEADER,
                status=422,
            )
        return rec

    def remember(self, user: str, route: str, key: str, request_sha256: str, status: int, body: Any) -> None:
        rec = IdempotencyRecord(request_sha256=request_sha256, status=status, body=body)
        self.store.write_json(self._rel(user, route, key), rec)  # type: ignore[attr-defined]
