"""The audit trail: an append-only, hash-chained record of who read or changed what, and how it went.

Each :class:`AuditRecord` is one request to the HTTP API (or one CLI action on the store): when,
which user (``anonymous`` when none signed in), the route and the patient, job, machine or user it
touched, the HTTP status and its outcome (``ok``, ``refused`` 4xx, ``denied`` 401/403, ``error``
5xx). Records are numbered from 1 and chained: ``hash = sha256(prev_hash + canonical JSON of the
record without its hash)``, the first ``prev_hash`` being 64 zeros. Changing, removing or
reordering any record breaks every hash after it, which :meth:`AuditTrail.verify` finds.

Storage: ``audit/<first seq, 12 digits>.jsonl`` segments of :data:`SEGMENT_SIZE` records in the
service's store, each rewritten whole and atomically when a record is added (one code path for a
local folder and an object store, which cannot append). One writer at a time: the service's
``AuditLog`` actor (:mod:`rayrt.service.audit_log`); this module knows nothing of Ray or HTTP.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Iterator, Literal

from pydantic import BaseModel, Field

__all__ = [
    "GENESIS",
    "SEGMENT_SIZE",
    "AuditCheck",
    "AuditEntry",
    "AuditQuery",
    "AuditRecord",
    "AuditTrail",
    "outcome_of",
]

GENESIS = "0" * 64
SEGMENT_SIZE = 500
AUDIT_DIR = "audit"

Outcome = Literal["ok", "refused", "denied", "error"]


def outcome_of(status: int) -> Outcome:
    if status in (401, 403):
        return "denied"
    if status >= 500:
        return "error"
    return "refused" if status >= 400 else "ok"


class AuditEntry(BaseModel):
    """What happened (before it is numbered and chained)."""

    time: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    user: str = Field(description="the user name, 'anonymous' without a valid token, 'cli:<login>' on the store")
    role: str | None = None
    action: str = Field(description="method and route template, e.g. 'GET /patients/{patient_id}'")
    patient_id: str | None = None
    job_id: str | None = None
    machine: str | None = None
    target_user: str | None = None
    status: int = Field(description="HTTP status of the answer (200 for a CLI action that succeeded)")
    outcome: Outcome


class AuditRecord(AuditEntry):
    """An entry in the chain."""

    seq: int = Field(ge=1)
    prev_hash: str
    hash: str

    @staticmethod
    def digest(entry: AuditEntry, seq: int, prev_hash: str) -> str:
        body = {**entry.model_dump(mode="json"), "seq": seq, "prev_hash": prev_hash}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


class AuditCheck(BaseModel):
    """The result of verifying the chain."""

    ok: bool
    records: int
    last_hash: str
    problem: str | None = Field(default=None, description="where and how the chain is broken")


class AuditQuery(BaseModel):
    """A filter over the trail (every field optional); the newest ``limit`` matches are returned."""

    user: str | None = None
    patient_id: str | None = None
    job_id: str | None = None
    after_seq: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=10000)

    def matches(self, r: AuditRecord) -> bool:
        return (
            r.seq > self.after_seq
            and (self.user is None or r.user == self.user)
            and (self.patient_id is None or r.patient_id == self.patient_id)
            and (self.job_id is None or r.job_id == self.job_id)
        )


class AuditTrail:
    """The chain in a :class:`rayrt.service.store.Store`: append (one writer), read, verify."""

    def __init__(self, store: object, segment_size: int = SEGMENT_SIZE):
        self.store = store
        self.segment_size = segment_size
        self._tail: list[AuditRecord] | None = None  # the records of the last segment
        self._tail_first = 1
        self._last: AuditRecord | None = None

    def _segments(self) -> list[str]:
        files = self.store.list_files(AUDIT_DIR, recursive=False)  # type: ignore[attr-defined]
        return sorted(n.rsplit("/", 1)[-1] for n, _ in files if n.endswith(".jsonl"))

    def _read_segment(self, name: str) -> list[AuditRecord]:
        text = self.store.read_bytes(f"{AUDIT_DIR}/{name}").decode("utf-8")  # type: ignore[attr-defined]
        return [AuditRecord.model_validate_json(line) for line in text.splitlines() if line.strip()]

    def _load_tail(self) -> None:
        segs = self._segments()
        if not segs:
            self._tail, self._tail_first = [], 1
            return
        self._tail_first = int(segs[-1].split(".", 1)[0])
        self._tail = self._read_segment(segs[-1])
        self._last = self._tail[-1] if self._tail else None

    def _write_tail(self) -> None:
        assert self._tail is not None
        data = "".join(r.model_dump_json() + "\n" for r in self._tail).encode("utf-8")
        self.store.write_bytes(f"{AUDIT_DIR}/{self._tail_first:012d}.jsonl", data)  # type: ignore[attr-defined]

    def append(self, entries: list[AuditEntry]) -> list[AuditRecord]:
        """Number, chain and store ``entries`` (in order); returns their records."""
        if self._tail is None:
            self._load_tail()
        assert self._tail is not None
        out = []
        for e in entries:
            seq = self._last.seq + 1 if self._last else 1
            prev = self._last.hash if self._last else GENESIS
            if seq - self._tail_first >= self.segment_size:  # the segment is full: a new one
                self._write_tail()
                self._tail, self._tail_first = [], seq
            rec = AuditRecord(**e.model_dump(), seq=seq, prev_hash=prev, hash=AuditRecord.digest(e, seq, prev))
            self._tail.append(rec)
            self._last = rec
            out.append(rec)
        self._write_tail()
        return out

    def __iter__(self) -> Iterator[AuditRecord]:
        for name in self._segments():
            yield from self._read_segment(name)

    def query(self, q: AuditQuery) -> list[AuditRecord]:
        found = [r for r in self if q.matches(r)]
        return found[-q.limit :]

    def verify(self) -> AuditCheck:
        """Recompute every hash in order: the first record whose number, link or hash is wrong
        (or a segment that cannot be read) is reported."""
        prev, expected, n = GENESIS, 1, 0
        try:
            for r in self:
                if r.seq != expected:
                    return AuditCheck(ok=False, records=n, last_hash=prev, problem=f"record {expected} is missing")
                entry = AuditEntry(**r.model_dump(include=set(AuditEntry.model_fields)))
                if r.prev_hash != prev or r.hash != AuditRecord.digest(entry, r.seq, prev):
                    return AuditCheck(
                        ok=False, records=n, last_hash=prev, problem=f"record {r.seq} was changed (its hash)"
                    )
                prev, expected, n = r.hash, expected + 1, n + 1
        except (ValueError, OSError) as exc:
            return AuditCheck(
                ok=False, records=n, last_hash=prev, problem=f"unreadable after record {n}: {str(exc)[:200]}"
            )
        return AuditCheck(ok=True, records=n, last_hash=prev)
