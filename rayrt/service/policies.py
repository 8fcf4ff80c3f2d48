"""Treatment-machine queues as data, and the policies that pick target machines for a job.

Pure code: no Ray import. The :class:`~rayrt.service.machine_queues.MachineQueue` actors keep the
state described here; the scheduler/ingress asks them for :class:`MachineSnapshot` objects and
hands those to :func:`select_machines`.

Terms
-----
* **state** of a machine: ``available`` (can take a patient now), ``busy`` (treating a patient
  right now; it still accepts bookings), ``down`` (malfunction or maintenance; accepts nothing,
  its pending bookings are moved to other machines).
* **pending fractions**: fractions booked on a machine and not yet delivered.
* **estimated wait** (minutes) = pending fractions x the machine's treatment slot length
  (``slot_minutes``, from the service config; see :class:`MachineQueueSettings`).
* **idle**: available and nothing pending.

Policies are plain functions registered by name in :data:`POLICIES`; add one with
``@register_policy("name")``. Every policy gets only usable machines (not down, and restricted
to the user's list when one is given) and returns them best first.

The settings models of the machine queues (:class:`MachineQueueSettings`, service config key
``machine_queues``) and of the conversion pools (:class:`ConversionPoolSettings`, key
``conversion_pool``) live here too, so that ``rayrt.service.settings`` can import them without
importing Ray.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from rayrt.domain.errors import InputError


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class MachineState(str, Enum):
    available = "available"
    busy = "busy"
    down = "down"


class DownCause(str, Enum):
    malfunction = "malfunction"
    maintenance = "maintenance"


class MachineStatus(BaseModel):
    """Operational status of one treatment machine, with why and since when."""

    model_config = ConfigDict(extra="forbid")

    state: MachineState = MachineState.available
    cause: DownCause | None = Field(default=None, description="why a machine is down (required when state is 'down')")
    reason: str = Field(default="", description="free text: what happened")
    changed_by: str = Field(default="", description="the user who set this status")
    since: datetime = Field(default_factory=utcnow)

    @property
    def usable(self) -> bool:
        return self.state is not MachineState.down


class BookingState(str, Enum):
    converting = "converting"  # slot reserved; the plan for this machine is being converted
    booked = "booked"  # on the queue, plan converted for this machine
    not_released = "not_released"  # the plan converted for this machine failed QA: nothing to deliver (see history)
    moved = "moved"  # moved out of this machine (see move_reason / moved_to)
    unplaced = "unplaced"  # moved out, but no usable machine was found
    completed = "completed"  # all fractions delivered
    cancelled = "cancelled"


class Booking(BaseModel):
    """Treatment fractions of one job's plan reserved on one machine."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(min_length=1)
    patient_id: str = Field(min_length=1)
    plan_id: str | None = Field(
        default=None, description="the machine-specific plan; None while it is being (re)converted"
    )
    machine: str = Field(default="", description="the machine this booking is (or was) on")
    fractions: int = Field(ge=1, description="fractions booked on this machine")
    fractions_delivered: int = Field(default=0, ge=0)
    booked_at: datetime = Field(default_factory=utcnow)
    booked_by: str = Field(default="", description="the user who booked it (moves keep it)")
    state: BookingState = BookingState.booked
    moved_from: str | None = Field(default=None, description="machine this booking was moved from")
    moved_to: str | None = Field(
        default=None, description="machine this booking was moved to (set on the moved-out copy)"
    )
    move_reason: str | None = Field(default=None, description="why the booking was moved")
    history: list[str] = Field(default_factory=list, description="timestamped log of what happened to the booking")

    @property
    def pending_fractions(self) -> int:
        return max(0, self.fractions - self.fractions_delivered)

    @property
    def active(self) -> bool:
        return self.state in (BookingState.booked, BookingState.converting, BookingState.not_released)

    def log(self, message: str) -> None:
        self.history.append(f"{utcnow().isoformat(timespec='seconds')} {message}")


class MachineSnapshot(BaseModel):
    """What a policy sees of one machine at one instant."""

    model_config = ConfigDict(extra="forbid")

    name: str
    status: MachineStatus
    bookings: int = Field(default=0, ge=0, description="active bookings on the queue")
    pending_fractions: int = Field(default=0, ge=0)
    slot_minutes: float = Field(gt=0, description="treatment slot length of one fraction (minutes)")
    estimated_wait_min: float = Field(ge=0, description="pending fractions x slot minutes; inf when down")

    @property
    def usable(self) -> bool:
        return self.status.usable

    @property
    def idle(self) -> bool:
        return self.status.state is MachineState.available and self.pending_fractions == 0


def estimated_wait_minutes(status: MachineStatus, pending_fractions: int, slot_minutes: float) -> float:
    """Minutes until a newly booked fraction could start: pending fractions x slot length.

    A down machine has no estimate (``inf``).
    """
    if not status.usable:
        return math.inf
    return float(pending_fractions) * float(slot_minutes)


class MachineQueueSettings(BaseModel):
    """Machine-queue settings; service config key ``machine_queues`` (all optional).

    ``slot_minutes`` is the time one fraction occupies the machine (set-up, imaging, beam-on,
    exit), per machine by name, ``default_slot_minutes`` for the others.
    """

    model_config = ConfigDict(extra="forbid")

    default_slot_minutes: float = Field(default=15.0, gt=0)
    slot_minutes: dict[str, float] = Field(default_factory=dict)
    default_policy: str = Field(
        default="prefer_idle", description="policy used when a request names none, and for re-routing"
    )
    actor_options: dict = Field(
        default_factory=dict,
        description="Ray options of the MachineQueue actors; "
        "on a cluster {resources: {head: 0.01}} pins them to the head",
    )

    def slot_for(self, machine: str) -> float:
        value = self.slot_minutes.get(machine, self.default_slot_minutes)
        if value <= 0:
            raise InputError(
                f"machine_queues.slot_minutes.{machine} must be > 0 minutes",
                kind="settings",
                field=f"machine_queues.slot_minutes.{machine}",
            )
        return float(value)


class ConversionPoolSettings(BaseModel):
    """Service config key ``conversion_pool``.

    ``sizes`` gives the initial actor count per machine name (``default_size`` for others);
    a pool grows on demand up to ``max(max_size, its initial size)``.
    """

    model_config = ConfigDict(extra="forbid")

    default_size: int = Field(default=1, ge=1)
    max_size: int = Field(default=2, ge=1)
    sizes: dict[str, int] = Field(default_factory=dict)
    actor_options: dict = Field(
        default_factory=lambda: {"num_cpus": 0},
        description="Ray options of the ConversionWorker actors. "
        "An actor holds its CPU reservation for its whole life, so the "
        "default 0 lets one pool per machine live on a small node beside the Dij/QA tasks (each conversion then runs "
        "one numba thread); on a cluster give them CPUs and a node type: {num_cpus: 1, resources: {worker: 0.01}}",
    )

    def initial(self, machine: str) -> int:
        n = self.sizes.get(machine, self.default_size)
        if n < 1:
            raise InputError(
                f"conversion_pool.sizes.{machine} must be >= 1",
                kind="settings",
                field=f"conversion_pool.sizes.{machine}",
            )
        return n

    def maximum(self, machine: str) -> int:
        return max(self.max_size, self.initial(machine))


# --------------------------------------------------------------------------------------------
# policies

Policy = Callable[[Sequence[MachineSnapshot], Sequence[str] | None], list[MachineSnapshot]]
"""A policy orders usable machines best first: ``policy(usable_snapshots, user_list)``."""

POLICIES: dict[str, Policy] = {}


def register_policy(name: str) -> Callable[[Policy], Policy]:
    """Decorator: register a target-selection policy under ``name``."""

    def deco(fn: Policy) -> Policy:
        POLICIES[name] = fn
        return fn

    return deco


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise InputError(
            f"unknown machine selection policy '{name}'; use one of: {', '.join(sorted(POLICIES))}",
            kind="policy",
            field="policy",
        ) from None


@register_policy("prefer_idle")
def prefer_idle(snapshots: Sequence[MachineSnapshot], user_list: Sequence[str] | None = None) -> list[MachineSnapshot]:
    """Idle machines first; then the shortest queue (pending fractions), available before busy."""
    return sorted(
        snapshots,
        key=lambda s: (
            not s.idle,
            s.pending_fractions,
            s.status.state is MachineState.busy,
            s.estimated_wait_min,
            s.name,
        ),
    )


@register_policy("fewest_pending")
def fewest_pending(
    snapshots: Sequence[MachineSnapshot], user_list: Sequence[str] | None = None
) -> list[MachineSnapshot]:
    """Fewest pending fractions first (ties: fewer bookings, then name)."""
    return sorted(snapshots, key=lambda s: (s.pending_fractions, s.bookings, s.name))


@register_policy("shortest_wait")
def shortest_wait(
    snapshots: Sequence[MachineSnapshot], user_list: Sequence[str] | None = None
) -> list[MachineSnapshot]:
    """Shortest estimated wait in minutes (pending fractions x slot length) first."""
    return sorted(snapshots, key=lambda s: (s.estimated_wait_min, s.pending_fractions, s.name))


@register_policy("user_list")
def user_list_policy(
    snapshots: Sequence[MachineSnapshot], user_list: Sequence[str] | None = None
) -> list[MachineSnapshot]:
    """The user's ordered list of machines, as given (down machines were already skipped)."""
    if not user_list:
        raise InputError(
            "policy 'user_list' needs a list of machines, e.g. machines: [TrueBeam1, VersaHD1]",
            kind="policy",
            field="machines",
        )
    by_name = {s.name: s for s in snapshots}
    return [by_name[n] for n in user_list if n in by_name]


def select_machines(
    policy: str,
    snapshots: Sequence[MachineSnapshot],
    count: int = 1,
    user_list: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> list[str]:
    """Choose up to ``count`` distinct target machines for one job, best first.

    * Machines that are down and machines in ``exclude`` are never chosen.
    * ``user_list`` (the user's ordered machine names): with policy ``user_list`` it is the
      order of preference; with any other policy it restricts the candidates to those names.
      Unknown names are an error.
    * Returns fewer than ``count`` names when fewer machines are usable; raises
      :class:`InputError` (409) when none is.
    """
    if count < 1:
        raise InputError(f"machine count must be at least 1, got {count}", kind="policy", field="count")
    fn = get_policy(policy)
    known = {s.name for s in snapshots}
    if user_list:
        unknown = [n for n in user_list if n not in known]
        if unknown:
            raise InputError(
                f"unknown treatment machine(s) {', '.join(unknown)}; "
                f"configured: {', '.join(sorted(known)) or '(none)'}",
                kind="machine",
                field="machines",
                status=404,
            )
        if len(set(user_list)) != len(user_list):
            raise InputError("the machine list names a machine twice", kind="machine", field="machines")
    excluded = set(exclude)
    candidates = [s for s in snapshots if s.usable and s.name not in excluded]
    if user_list:
        wanted = set(user_list)
        candidates = [s for s in candidates if s.name in wanted]
    ordered = fn(candidates, list(user_list) if user_list else None)
    chosen = [s.name for s in ordered][:count]
    if not chosen:
        scope = f"of {', '.join(user_list)}" if user_list else "configured"
        down = [s.name for s in snapshots if not s.usable and (not user_list or s.name in user_list)]
        detail = f" (down: {', '.join(down)})" if down else ""
        raise InputError(
            f"no usable treatment machine {scope}{detail}; choose another machine or wait until one is back",
            kind="machine",
            field="machines",
            status=409,
        )
    return chosen
