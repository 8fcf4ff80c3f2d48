"""Treatment-machine queues: one ``MachineQueue`` Ray actor per configured treatment machine.

Each queue keeps its machine's :class:`~rayrt.service.policies.MachineStatus` (available / busy /
down for malfunction or maintenance, with reason and since), its :class:`Booking` list and the
estimated wait (pending fractions x slot minutes). Every change is written through a small
store interface *before* the call returns, so queues survive a service restart (and an actor
restart: the actor reloads its record in ``__init__``).

:class:`MachineRegistry` owns the queue handles: it answers snapshots, selects targets with a
policy (:mod:`rayrt.service.policies`), books, and when a machine goes down moves its pending
bookings to the best usable machines and calls ``replan_callback`` so the scheduler converts
the plan for the new machine. It is a plain class (usable in-process) and a Ray actor
(:data:`MachineRegistryActor`, or :func:`get_or_create_registry` for a named, shared one).

Store interface (duck-typed), any of:
  * the service's :class:`rayrt.service.store.Store` (``write_json(rel, model)`` /
    ``read_model(rel, cls)``; files ``machines/<name>.json`` under its root),
  * any object with ``save_json(key, model)`` and ``load_json(key, model_cls) -> model | None``
    (missing keys may also raise ``KeyError`` / ``FileNotFoundError``), or a Ray actor handle
    with those two methods,
  * :class:`JsonFileStore` (self-contained: local directory with atomic replace, or a
    pyarrow.fs URI), which ``data_dir=`` creates.
Keys used: ``machines/<name>`` (:class:`MachineQueueRecord`), ``machines/_registry``
(:class:`RegistryRecord`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pyarrow.fs as pafs
import ray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayrt.domain.errors import InputError, first_error
from rayrt.machines import treatment_machine_names
from rayrt.service.local_files import write_atomic
from rayrt.service.policies import (
    Booking,
    BookingState,
    DownCause,
    MachineQueueSettings,
    MachineSnapshot,
    MachineState,
    MachineStatus,
    estimated_wait_minutes,
    select_machines,
    utcnow,
)
from rayrt.service.process import named_actor_options

__all__ = [
    "Booking",
    "BookingState",
    "DownCause",
    "JsonFileStore",
    "LocalMachineQueue",
    "MachineQueue",
    "MachineQueueRecord",
    "MachineQueueSettings",
    "MachineRegistry",
    "MachineRegistryActor",
    "MachineSnapshot",
    "MachineState",
    "MachineStatus",
    "ReplanRequest",
    "StatusChange",
    "get_or_create_registry",
]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

MOVED_LOG_LIMIT = 200


# --------------------------------------------------------------------------------------------
# persistence


class JsonStore(Protocol):
    def save_json(self, key: str, model: BaseModel) -> None: ...

    def load_json(self, key: str, model_cls: type[M]) -> M | None: ...


class JsonFileStore:
    """Pydantic models as JSON files under a root: a local directory or a pyarrow.fs URI.

    Local writes go to a temporary file in the same directory, are fsync'ed, then
    ``os.replace``'d over the target, so a reader never sees a half-written file. Object
    stores (``s3://``, ``gs://``) publish an object atomically when its upload completes.
    Picklable (it holds only the root string), so it can be handed to actors.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = str(root)

    def _is_local(self) -> bool:
        return "://" not in self.root or self.root.startswith("file://")

    def _local_path(self, key: str) -> Path:
        root = self.root[len("file://") :] if self.root.startswith("file://") else self.root
        return Path(root) / f"{key}.json"

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        fs, base = pafs.FileSystem.from_uri(self.root)
        return fs, base.rstrip("/")

    def save_json(self, key: str, model: BaseModel) -> None:
        data = model.model_dump_json(indent=1).encode()
        if self._is_local():
            write_atomic(self._local_path(key), data)
            return
        fs, base = self._fs()
        with fs.open_output_stream(f"{base}/{key}.json") as out:
            out.write(data)

    def load_json(self, key: str, model_cls: type[M]) -> M | None:
        if self._is_local():
            path = self._local_path(key)
            if not path.is_file():
                return None
            return model_cls.model_validate_json(path.read_bytes())
        fs, base = self._fs()
        target = f"{base}/{key}.json"
        if fs.get_file_info(target).type == pafs.FileType.NotFound:
            return None
        with fs.open_input_stream(target) as fh:
            return model_cls.model_validate_json(fh.read())


def _store_save(store: Any, key: str, model: BaseModel) -> None:
    if store is None:
        return
    if isinstance(store, ray.actor.ActorHandle):
        ray.get(store.save_json.remote(key, model))
    elif hasattr(store, "save_json"):
        store.save_json(key, model)
    else:  # rayrt.service.store.Store: write_json(rel, model), atomic
        store.write_json(f"{key}.json", model)


def _store_load(store: Any, key: str, model_cls: type[M]) -> M | None:
    if store is None:
        return None
    try:
        if isinstance(store, ray.actor.ActorHandle):
            value = ray.get(store.load_json.remote(key, model_cls))
        elif hasattr(store, "load_json"):
            value = store.load_json(key, model_cls)
        else:  # rayrt.service.store.Store: read_model(rel, cls), FileNotFoundError when absent
            value = store.read_model(f"{key}.json", model_cls)
    except (KeyError, FileNotFoundError):
        return None
    except InputError as exc:
        if exc.status == 404:
            return None
        raise
    if value is None or isinstance(value, model_cls):
        return value
    return model_cls.model_validate(value)


# --------------------------------------------------------------------------------------------
# one queue


class MachineQueueRecord(BaseModel):
    """What a queue persists under ``machines/<name>``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    status: MachineStatus = Field(default_factory=MachineStatus)
    bookings: list[Booking] = Field(default_factory=list, description="active bookings, oldest first")
    moved_out: list[Booking] = Field(default_factory=list, description="recent bookings moved off this machine")
    completed: int = Field(default=0, ge=0, description="bookings whose fractions were all delivered")


class LocalMachineQueue:
    """The state and rules of one treatment machine's queue (the body of :data:`MachineQueue`).

    Not thread-safe by itself; as a Ray actor its methods run one at a time.
    """

    def __init__(self, name: str, slot_minutes: float = 15.0, store: Any = None, data_dir: str | None = None):
        if slot_minutes <= 0:
            raise InputError(f"slot_minutes of machine {name} must be > 0", kind="settings", field="slot_minutes")
        self.name = name
        self.slot_minutes = float(slot_minutes)
        self._store = store if store is not None else (JsonFileStore(data_dir) if data_dir else None)
        self._key = f"machines/{name}"
        rec = _store_load(self._store, self._key, MachineQueueRecord)
        self._rec = rec if rec is not None else MachineQueueRecord(name=name)

    # -- persistence
    def _save(self) -> None:
        _store_save(self._store, self._key, self._rec)

    # -- queries
    def status(self) -> MachineStatus:
        return self._rec.status

    def bookings(self) -> list[Booking]:
        return list(self._rec.bookings)

    def moved_out(self) -> list[Booking]:
        return list(self._rec.moved_out)

    def pending_fractions(self) -> int:
        return sum(b.pending_fractions for b in self._rec.bookings)

    def estimated_wait_minutes(self) -> float:
        return estimated_wait_minutes(self._rec.status, self.pending_fractions(), self.slot_minutes)

    def snapshot(self) -> MachineSnapshot:
        return MachineSnapshot(
            name=self.name,
            status=self._rec.status,
            bookings=len(self._rec.bookings),
            pending_fractions=self.pending_fractions(),
            slot_minutes=self.slot_minutes,
            estimated_wait_min=self.estimated_wait_minutes(),
        )

    def record(self) -> MachineQueueRecord:
        return self._rec

    def info(self) -> dict:
        """Where this queue runs (pid, Ray node id) - for operations and placement checks."""
        ctx = ray.get_runtime_context() if ray.is_initialized() else None
        return {"machine": self.name, "pid": os.getpid(), "node_id": ctx.get_node_id() if ctx else None}

    # -- changes
    def set_status(
        self, state: MachineState | str, cause: DownCause | str | None = None, reason: str = "", by: str = ""
    ) -> MachineStatus:
        """Change the machine state (``by``: the user). ``down`` needs a cause (malfunction or maintenance)."""
        state = MachineState(state)
        cause = DownCause(cause) if cause else None
        if state is MachineState.down and cause is None:
            raise InputError(
                "a machine marked down needs a cause: malfunction or maintenance", kind="machine", field="cause"
            )
        if state is not MachineState.down:
            cause = None
        old = self._rec.status
        if old.state is state and old.cause == cause and old.reason == reason:
            return old
        self._rec.status = MachineStatus(state=state, cause=cause, reason=reason, changed_by=by)
        self._save()
        return self._rec.status

    def _find(self, job_id: str) -> Booking:
        for b in self._rec.bookings:
            if b.job_id == job_id:
                return b
        raise InputError(
            f"job {job_id} has no booking on machine {self.name}", kind="booking", field="job_id", status=404
        )

    def book(self, booking: Booking) -> Booking:
        """Append a booking (one per job per machine). Refused while the machine is down."""
        if not self._rec.status.usable:
            st = self._rec.status
            raise InputError(
                f"machine {self.name} is down ({st.cause.value if st.cause else 'down'}: "
                f"{st.reason or 'no reason given'}); book another machine",
                kind="machine",
                field="machine",
                status=409,
            )
        if any(b.job_id == booking.job_id for b in self._rec.bookings):
            raise InputError(
                f"job {booking.job_id} is already booked on {self.name}", kind="booking", field="job_id", status=409
            )
        b = booking.model_copy(deep=True)
        b.machine = self.name
        b.state = BookingState.booked if b.plan_id else BookingState.converting
        b.log(f"booked on {self.name}: {b.pending_fractions} fraction(s)")
        self._rec.bookings.append(b)
        self._save()
        return b

    def attach_plan(self, job_id: str, plan_id: str) -> Booking:
        """The plan for this machine is ready: the booking becomes ``booked``."""
        b = self._find(job_id)
        b.plan_id = plan_id
        b.state = BookingState.booked
        b.log(f"plan {plan_id} attached")
        self._save()
        return b

    def plan_not_released(self, job_id: str, reasons: list[str]) -> Booking:
        """The plan converted for this machine failed QA: the booking holds no plan and cannot be
        delivered; its history says why (re-plan the job or move the booking)."""
        b = self._find(job_id)
        b.plan_id = None
        b.state = BookingState.not_released
        b.log("converted plan not released by QA: " + ("; ".join(reasons) or "no reason recorded"))
        self._save()
        return b

    def record_fraction(self, job_id: str, count: int = 1) -> Booking:
        """``count`` fractions of the job were delivered; a booking with none left completes."""
        if count < 1:
            raise InputError("delivered fraction count must be >= 1", kind="booking", field="count")
        b = self._find(job_id)
        if b.state is not BookingState.booked:
            raise InputError(
                f"job {job_id} on {self.name} has no converted plan yet (state {b.state.value})",
                kind="booking",
                status=409,
            )
        if count > b.pending_fractions:
            raise InputError(
                f"job {job_id} has only {b.pending_fractions} fraction(s) left on {self.name}",
                kind="booking",
                field="count",
                status=409,
            )
        b.fractions_delivered += count
        b.log(f"{count} fraction(s) delivered, {b.pending_fractions} left")
        if b.pending_fractions == 0:
            b.state = BookingState.completed
            self._rec.bookings.remove(b)
            self._rec.completed += 1
        self._save()
        return b

    def cancel(self, job_id: str, reason: str = "cancelled") -> Booking | None:
        for b in self._rec.bookings:
            if b.job_id == job_id:
                self._rec.bookings.remove(b)
                b.state = BookingState.cancelled
                b.log(reason)
                self._save()
                return b
        return None

    def take(self, job_id: str, reason: str) -> Booking | None:
        """Remove the job's active booking for re-planning elsewhere (None when it has none, e.g.
        taken already). It is marked ``moved`` with ``move_reason``; a copy is kept in
        ``moved_out`` (the last few hundred) so the queue can say where its patients went."""
        for i, b in enumerate(self._rec.bookings):
            if b.job_id == job_id:
                b.state = BookingState.moved
                b.move_reason = reason
                b.log(f"moved off {self.name}: {reason}")
                del self._rec.bookings[i]
                self._rec.moved_out = (self._rec.moved_out + [b])[-MOVED_LOG_LIMIT:]
                self._save()
                return b
        return None

    def take_pending(self, reason: str) -> list[Booking]:
        """Remove every active booking (oldest first) for re-planning elsewhere (:meth:`take`)."""
        return [t for b in list(self._rec.bookings) if (t := self.take(b.job_id, reason)) is not None]

    def note_moved(self, job_id: str, moved_to: str | None) -> None:
        """Record where a moved-out booking went (``None``: nowhere usable)."""
        for b in reversed(self._rec.moved_out):
            if b.job_id == job_id:
                b.moved_to = moved_to
                if moved_to is None:
                    b.state = BookingState.unplaced
                b.log(f"re-routed to {moved_to}" if moved_to else "no usable machine to re-route to")
                self._save()
                return


MachineQueue = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)(LocalMachineQueue)
"""The Ray actor: ``MachineQueue.options(...).remote(name, slot_minutes, store=..., data_dir=...)``."""


# --------------------------------------------------------------------------------------------
# registry


class ReplanRequest(BaseModel):
    """What the registry asks the scheduler to do when a booking moves to another machine."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    patient_id: str
    from_machine: str
    to_machine: str | None = Field(
        description="new target (already booked, state 'converting'); None when no machine is usable"
    )
    fractions: int = Field(ge=0, description="fractions still to deliver")
    source_plan_id: str | None = Field(description="the plan that was booked on the machine that went down")
    reason: str
    needs_conversion: bool = Field(
        default=True, description="False when the booking went back to its own machine with its plan"
    )


class StatusChange(BaseModel):
    machine: str
    status: MachineStatus
    moved: list[Booking] = Field(
        default_factory=list, description="bookings moved out (each with moved_to and move_reason)"
    )
    placed: list[Booking] = Field(
        default_factory=list, description="waiting (unplaced) bookings placed now that a machine is usable"
    )


class PlannedMove(BaseModel):
    """A booking to move off a down machine, written before the move is made (write-ahead)."""

    model_config = ConfigDict(extra="forbid")

    source: str
    job_id: str
    target: str | None = Field(description="the machine chosen for it; None: no usable machine")
    reason: str


class RegistryRecord(BaseModel):
    """What the registry persists under ``machines/_registry``."""

    model_config = ConfigDict(extra="forbid")

    moves: list[PlannedMove] = Field(
        default_factory=list, description="moves decided but not yet done: replayed when the registry starts"
    )
    unplaced: list[Booking] = Field(default_factory=list, description="moved bookings no usable machine could take")
    replan_errors: list[str] = Field(default_factory=list)


ReplanCallback = Callable[[ReplanRequest], Any]


class MachineRegistry:
    """Owns one :data:`MachineQueue` actor per treatment machine.

    Args:
        machines: machine names (default :func:`rayrt.machines.treatment_machine_names`).
        settings: :class:`MachineQueueSettings` or its dict (service config ``machine_queues``).
        store: the service :class:`~rayrt.service.store.Store`, or any object with
            ``save_json``/``load_json`` (or an actor handle with them); see the module doc.
        data_dir: used when ``store`` is None: a :class:`JsonFileStore` root. Neither: no persistence.
        replan_callback: ``callback(ReplanRequest)`` called for every booking moved off a
            machine that went down (after the new slot is booked). Must be picklable when the
            registry runs as an actor. Its exceptions are logged and recorded, never raised.
        actor_options: Ray options for the queue actors, e.g. ``{"resources": {"head": 0.01}}``
            (default: ``settings.actor_options``).
        actor_name_prefix: name queue actors ``<prefix><machine>`` (get-if-exists), so a
            restarted registry re-attaches to live queues. None: anonymous actors.
        namespace / lifetime: passed with named actors (``lifetime="detached"`` to outlive
            the creating process).
    """

    def __init__(
        self,
        machines: Sequence[str] | None = None,
        settings: MachineQueueSettings | dict | None = None,
        store: Any = None,
        data_dir: str | None = None,
        replan_callback: ReplanCallback | None = None,
        actor_options: dict | None = None,
        actor_name_prefix: str | None = None,
        namespace: str | None = None,
        lifetime: str | None = None,
    ):
        self.settings = (
            settings
            if isinstance(settings, MachineQueueSettings)
            else MachineQueueSettings.model_validate(settings or {})
        )
        names = list(machines) if machines is not None else treatment_machine_names()
        if not names:
            raise InputError("no treatment machines configured (configs/machines/*.yaml)", kind="machine")
        if len(set(names)) != len(names):
            raise InputError("machine names must be unique", kind="machine")
        self._store = store if store is not None else (JsonFileStore(data_dir) if data_dir else None)
        self._callback = replan_callback
        self._queues: dict[str, Any] = {}
        for name in names:
            opts = dict(actor_options if actor_options is not None else self.settings.actor_options)
            if actor_name_prefix is not None:
                opts = named_actor_options(f"{actor_name_prefix}{name}", namespace, lifetime, opts)
            self._queues[name] = MachineQueue.options(**opts).remote(
                name, self.settings.slot_for(name), store=self._store
            )
        self._rec = _store_load(self._store, "machines/_registry", RegistryRecord) or RegistryRecord()
        for move in list(self._rec.moves):  # a registry that stopped in the middle of moving bookings
            try:
                self._carry_out(move)
            except Exception:
                log.exception("machine registry: replaying the move of job %s off %s failed", move.job_id, move.source)

    # -- plumbing
    def set_replan_callback(self, callback: ReplanCallback | None) -> None:
        self._callback = callback

    def _queue(self, name: str):
        try:
            return self._queues[name]
        except KeyError:
            raise InputError(
                f"unknown treatment machine '{name}'; configured: {', '.join(sorted(self._queues))}",
                kind="machine",
                field="machine",
                status=404,
            ) from None

    def _save(self) -> None:
        _store_save(self._store, "machines/_registry", self._rec)

    def queue(self, name: str):
        """The actor handle of one machine's queue."""
        return self._queue(name)

    # -- queries
    def names(self) -> list[str]:
        return list(self._queues)

    def snapshots(self) -> list[MachineSnapshot]:
        return ray.get([q.snapshot.remote() for q in self._queues.values()])

    def snapshot(self, name: str) -> MachineSnapshot:
        return ray.get(self._queue(name).snapshot.remote())

    def bookings(self, name: str) -> list[Booking]:
        return ray.get(self._queue(name).bookings.remote())

    def bookings_of(self, job_id: str) -> list[Booking]:
        """Active bookings of one job, on every machine."""
        all_b = ray.get([q.bookings.remote() for q in self._queues.values()])
        return [b for bs in all_b for b in bs if b.job_id == job_id]

    def unplaced(self) -> list[Booking]:
        return list(self._rec.unplaced)

    def select(
        self,
        policy: str | None = None,
        count: int = 1,
        user_list: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
    ) -> list[str]:
        """Target machines for a job by policy (default ``settings.default_policy``)."""
        return select_machines(policy or self.settings.default_policy, self.snapshots(), count, user_list, exclude)

    # -- changes
    def book(
        self,
        machine: str,
        job_id: str,
        patient_id: str,
        fractions: int,
        plan_id: str | None = None,
        booked_by: str = "",
    ) -> Booking:
        """Reserve ``fractions`` on ``machine`` (state ``converting`` until a plan is attached)."""
        try:
            booking = Booking(
                job_id=job_id,
                patient_id=patient_id,
                plan_id=plan_id,
                fractions=fractions,
                machine=machine,
                booked_by=booked_by,
            )
        except ValidationError as exc:
            loc, msg = first_error(exc)
            raise InputError(f"invalid booking: field '{loc}': {msg}", kind="booking", field=loc) from None
        return ray.get(self._queue(machine).book.remote(booking))

    def select_and_book(
        self,
        job_id: str,
        patient_id: str,
        fractions: int,
        policy: str | None = None,
        count: int = 1,
        user_list: Sequence[str] | None = None,
    ) -> list[Booking]:
        """Choose ``count`` machines by policy and reserve the job's fractions on each."""
        chosen = self.select(policy, count, user_list)
        return [self.book(m, job_id, patient_id, fractions) for m in chosen]

    def attach_plan(self, machine: str, job_id: str, plan_id: str) -> Booking:
        return ray.get(self._queue(machine).attach_plan.remote(job_id, plan_id))

    def plan_not_released(self, machine: str, job_id: str, reasons: list[str]) -> Booking:
        return ray.get(self._queue(machine).plan_not_released.remote(job_id, reasons))

    def record_fraction(self, machine: str, job_id: str, count: int = 1) -> Booking:
        return ray.get(self._queue(machine).record_fraction.remote(job_id, count))

    def cancel(self, job_id: str, reason: str = "cancelled") -> list[Booking]:
        """Cancel the job's bookings on every machine."""
        out = ray.get([q.cancel.remote(job_id, reason) for q in self._queues.values()])
        return [b for b in out if b is not None]

    def set_status(
        self,
        machine: str,
        state: MachineState | str,
        cause: DownCause | str | None = None,
        reason: str = "",
        by: str = "",
    ) -> StatusChange:
        """Change a machine's status.

        Marking it down moves its pending bookings away (:meth:`on_machine_down`); marking it
        usable places bookings that were waiting for a usable machine (:meth:`place_unplaced`).
        """
        status = ray.get(self._queue(machine).set_status.remote(state, cause, reason, by))
        if status.state is MachineState.down:
            return StatusChange(machine=machine, status=status, moved=self.on_machine_down(machine))
        placed = self.place_unplaced() if self._rec.unplaced else []
        return StatusChange(machine=machine, status=status, placed=placed)

    def on_machine_down(self, name: str) -> list[Booking]:
        """Move every pending booking of a down machine to the best usable machine.

        For each booking, oldest first: pick a target by ``settings.default_policy`` among
        usable machines that do not already hold a booking of the same job, reserve the
        remaining fractions there (state ``converting``, ``moved_from``/``move_reason`` set),
        and call ``replan_callback(ReplanRequest)`` so the plan is converted for the new
        machine (then call :meth:`attach_plan`). Bookings no machine can take are kept in
        :meth:`unplaced` and reported to the callback with ``to_machine=None``.

        Each move is written to the registry's record (:class:`PlannedMove`) before it is made and
        dropped once done: a registry that stops in between replays it when it starts again.

        Returns the moved-out bookings, each with ``moved_to`` (None when unplaced) and
        ``move_reason``. Calling it again for the same machine moves nothing new.
        """
        q = self._queue(name)
        status: MachineStatus = ray.get(q.status.remote())
        if status.usable:
            raise InputError(
                f"machine {name} is {status.state.value}, not down; "
                "mark it down (with a cause) before moving its bookings",
                kind="machine",
                field="machine",
                status=409,
            )
        what = status.cause.value if status.cause else status.state.value
        detail = f"{what}: {status.reason}" if status.reason else what
        reason = f"machine {name} {status.state.value} ({detail}) since {status.since.isoformat(timespec='seconds')}"
        pending: list[Booking] = ray.get(q.bookings.remote())
        moved: list[Booking] = []
        for b in sorted(pending, key=lambda b: b.booked_at):
            holders = {x.machine for x in self.bookings_of(b.job_id)}
            target: str | None
            try:
                target = self.select(None, 1, None, exclude=sorted(holders | {name}))[0]
            except InputError:
                target = None
            move = PlannedMove(source=name, job_id=b.job_id, target=target, reason=reason)
            self._rec.moves.append(move)
            self._save()  # the decision is durable before anything moves: a restart replays it
            old = self._carry_out(move)
            if old is not None:
                moved.append(old)
        return moved

    def _carry_out(self, move: PlannedMove) -> Booking | None:
        """Make one planned move (idempotent, so that a restart can replay it): take the booking off
        the source, book its remaining fractions on the target (state ``converting``, ``moved_from``
        set), record where it went, ask for the re-plan, then drop the move from the record."""
        q = self._queue(move.source)
        old: Booking | None = ray.get(q.take.remote(move.job_id, move.reason))
        if old is None:  # taken before a restart: the source's moved-out copy
            old = next((b for b in reversed(ray.get(q.moved_out.remote())) if b.job_id == move.job_id), None)
        target = move.target
        if old is not None and target is not None:
            new = old.model_copy(deep=True)
            new.fractions = old.pending_fractions
            new.fractions_delivered = 0
            new.plan_id = None
            new.state = BookingState.converting
            new.moved_from = move.source
            new.moved_to = None
            new.booked_at = utcnow()
            new.log(f"re-routed from {move.source}: {move.reason}")
            try:
                ray.get(self._queue(target).book.remote(new))
            except InputError as exc:
                if exc.kind != "booking":  # the target went down meanwhile (booked already: a replay)
                    target = None
        ray.get(q.note_moved.remote(move.job_id, target))
        if old is not None:
            old.moved_to = target
            if target is None and all(u.job_id != old.job_id for u in self._rec.unplaced):
                old.state = BookingState.unplaced
                old.log("no usable machine to re-route to")
                self._rec.unplaced.append(old)
            self._notify(
                ReplanRequest(
                    job_id=old.job_id,
                    patient_id=old.patient_id,
                    from_machine=move.source,
                    to_machine=target,
                    fractions=old.pending_fractions,
                    source_plan_id=old.plan_id,
                    reason=move.reason,
                )
            )
        self._rec.moves = [m for m in self._rec.moves if m != move]
        self._save()
        return old

    def place_unplaced(self) -> list[Booking]:
        """Retry bookings that found no usable machine (runs when a machine becomes usable).

        A booking that returns to the machine it was moved off keeps its converted plan (state
        ``booked``, ``ReplanRequest.needs_conversion`` False); otherwise it is ``converting``.
        """
        waiting, self._rec.unplaced = self._rec.unplaced, []
        placed = []
        for old in waiting:
            holders = {b.machine for b in self.bookings_of(old.job_id)}
            try:
                target = self.select(None, 1, None, exclude=sorted(holders))[0]
            except InputError:
                self._rec.unplaced.append(old)
                continue
            same = target == old.machine
            keep_plan = same and old.plan_id is not None  # back on its own machine with a converted plan
            new = old.model_copy(deep=True)
            new.fractions, new.fractions_delivered = old.pending_fractions, 0
            new.plan_id = old.plan_id if keep_plan else None
            new.moved_from, new.moved_to, new.booked_at = (None if same else old.machine), None, utcnow()
            new.log(f"placed on {target} after waiting for a usable machine")
            try:
                booked = ray.get(self._queue(target).book.remote(new))
            except InputError:  # went down again meanwhile
                self._rec.unplaced.append(old)
                continue
            placed.append(booked)
            self._notify(
                ReplanRequest(
                    job_id=old.job_id,
                    patient_id=old.patient_id,
                    from_machine=old.machine,
                    to_machine=target,
                    fractions=new.fractions,
                    source_plan_id=old.plan_id,
                    reason=old.move_reason or "re-placed",
                    needs_conversion=not keep_plan,
                )
            )
        self._save()
        return placed

    def _notify(self, req: ReplanRequest) -> None:
        if self._callback is None:
            return
        try:
            self._callback(req)
        except Exception as exc:  # the registry must keep working if the scheduler hiccups
            msg = (
                f"{utcnow().isoformat(timespec='seconds')} replan callback failed for job {req.job_id} "
                f"({req.from_machine} -> {req.to_machine}): {exc!r}"
            )
            log.warning(msg)
            self._rec.replan_errors = (self._rec.replan_errors + [msg])[-MOVED_LOG_LIMIT:]
            self._save()


MachineRegistryActor = ray.remote(num_cpus=0, max_restarts=-1)(MachineRegistry)
"""``MachineRegistry`` as a Ray actor (all methods block inside the actor; call with ``.remote``)."""

REGISTRY_NAME = "rayrt-machines"


def get_or_create_registry(
    name: str = REGISTRY_NAME,
    namespace: str | None = None,
    detached: bool = True,
    actor_options: dict | None = None,
    **kwargs: Any,
):
    """A named :data:`MachineRegistryActor` shared by all ingress replicas and the scheduler.

    Re-attaches when one with this name is alive (``kwargs`` are then ignored). Queue actors
    are named ``<name>/<machine>`` in the same namespace, so a restarted registry finds them.
    """
    opts = named_actor_options(name, namespace, "detached" if detached else None, actor_options)
    kwargs.setdefault("actor_name_prefix", f"{name}/")
    kwargs.setdefault("namespace", namespace)
    kwargs.setdefault("lifetime", "detached" if detached else None)
    return MachineRegistryActor.options(**opts).remote(**kwargs)
