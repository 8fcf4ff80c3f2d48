"""The audit trail's one writer: a detached Ray actor per service (``<scheduler name>-audit``).

Every ingress replica sends its records here (:meth:`AuditLog.record`), so the chain of
:class:`rayrt.service.audit.AuditTrail` has a single, ordered writer however many replicas run.
The actor verifies the whole chain when it starts (the service's start) and logs an error when it
is broken; ``GET /audit`` and ``rayrt audit --verify`` report the same check.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from rayrt.service.audit import AuditCheck, AuditEntry, AuditQuery, AuditRecord, AuditTrail
from rayrt.service.process import named_actor_options
from rayrt.service.settings import ServiceSettings
from rayrt.service.store import Store

log = logging.getLogger("rayrt.service")

__all__ = ["AuditLog", "audit_log_name", "get_or_create_audit_log"]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class AuditLog:
    """Appends to, queries and verifies one store's audit trail (calls run one at a time)."""

    def __init__(self, data_dir: str):
        self.trail = AuditTrail(Store(data_dir))
        self.check = self.trail.verify()
        if self.check.ok:
            log.info("audit trail verified: %d records", self.check.records)
        else:
            log.error("audit trail BROKEN: %s (%d records verified)", self.check.problem, self.check.records)

    def ready(self) -> AuditCheck:
        return self.check

    def record(self, entries: list[AuditEntry]) -> int:
        """Chain and store the entries; returns the last record's number."""
        return self.trail.append(entries)[-1].seq if entries else 0

    def query(self, q: AuditQuery) -> list[AuditRecord]:
        return self.trail.query(q)

    def verify(self) -> AuditCheck:
        self.check = self.trail.verify()
        return self.check


def audit_log_name(settings: ServiceSettings) -> str:
    return f"{settings.scheduler_name}-audit"


def get_or_create_audit_log(settings: ServiceSettings) -> Any:
    """The service's audit actor (detached, created on first use); waits until its check is done."""
    handle = AuditLog.options(  # type: ignore[attr-defined]
        **named_actor_options(audit_log_name(settings), settings.ray_namespace, "detached")
    ).remote(settings.data_dir)
    ray.get(handle.ready.remote())
    return handle
