"""Machine queues: booking rules, persistence, and re-routing when a machine goes down.

The first half runs the queue logic in-process (no Ray); the second half runs real
``MachineQueue`` actors on the test session's local Ray.
"""

import json
import uuid

import pytest

from rayrt.domain.errors import InputError
from rayrt.machines import treatment_machine_names
from rayrt.service.machine_queues import (
    Booking,
    BookingState,
    JsonFileStore,
    LocalMachineQueue,
    MachineQueueRecord,
    MachineState,
)

# ------------------------------------------------------------------ pure queue logic


def test_booking_wait_and_fraction_delivery(tmp_path):
    q = LocalMachineQueue("TB1", slot_minutes=12.0, data_dir=str(tmp_path))
    assert q.snapshot().idle and q.estimated_wait_minutes() == 0
    q.book(Booking(job_id="j1", patient_id="p1", plan_id="plan1", fractions=5))
    b2 = q.book(Booking(job_id="j2", patient_id="p2", fractions=3))
    assert b2.state is BookingState.converting and b2.machine == "TB1"
    s = q.snapshot()
    assert (s.bookings, s.pending_fractions, s.estimated_wait_min) == (2, 8, 96.0)
    assert not s.idle
    with pytest.raises(InputError, match="no converted plan"):
        q.record_fraction("j2")
    q.attach_plan("j2", "plan2")
    q.record_fraction("j1", 4)
    assert q.snapshot().pending_fractions == 4
    with pytest.raises(InputError, match="only 1"):
        q.record_fraction("j1", 2)
    done = q.record_fraction("j1")
    assert done.state is BookingState.completed and [b.job_id for b in q.bookings()] == ["j2"]
    with pytest.raises(InputError, match="already booked"):
        q.book(Booking(job_id="j2", patient_id="p2", fractions=1))


def test_plan_not_released_by_qa_is_never_deliverable(tmp_path):
    q = LocalMachineQueue("TB1", data_dir=str(tmp_path))
    q.book(Booking(job_id="j1", patient_id="p1", fractions=5))
    b = q.plan_not_released("j1", ["gamma vs standard: fail (88.0 %)"])
    assert b.state is BookingState.not_released and b.plan_id is None and b.active
    assert "not released by QA: gamma vs standard" in b.history[-1]
    with pytest.raises(InputError, match="no converted plan"):
        q.record_fraction("j1")
    assert q.attach_plan("j1", "plan2").state is BookingState.booked  # a later re-plan that passes QA


def test_down_needs_cause_and_refuses_bookings(tmp_path):
    q = LocalMachineQueue("TB1", data_dir=str(tmp_path))
    with pytest.raises(InputError, match="malfunction or maintenance"):
        q.set_status("down")
    st = q.set_status("down", "maintenance", "annual QA")
    assert st.state is MachineState.down and st.reason == "annual QA"
    with pytest.raises(InputError) as e:
        q.book(Booking(job_id="j", patient_id="p", fractions=1))
    assert e.value.status == 409 and "annual QA" in e.value.message
    back = q.set_status("available")
    assert back.cause is None and back.since >= st.since


def test_take_pending_marks_moved_with_reason(tmp_path):
    q = LocalMachineQueue("TB1", data_dir=str(tmp_path))
    for j in ("a", "b"):
        q.book(Booking(job_id=j, patient_id="p", plan_id="x", fractions=2))
    taken = q.take_pending("MLC interlock")
    assert [b.state for b in taken] == [BookingState.moved] * 2
    assert all(b.move_reason == "MLC interlock" and "moved off TB1" in b.history[-1] for b in taken)
    assert q.bookings() == [] and len(q.moved_out()) == 2


def test_queue_state_survives_restart_via_store(tmp_path):
    store = JsonFileStore(tmp_path)
    q = LocalMachineQueue("VHD", store=store)
    q.book(Booking(job_id="j1", patient_id="p1", plan_id="pl", fractions=20))
    q.record_fraction("j1", 3)
    q.set_status("busy", reason="treating p1")
    again = LocalMachineQueue("VHD", store=JsonFileStore(tmp_path))
    assert again.status().state is MachineState.busy
    (b,) = again.bookings()
    assert (b.job_id, b.pending_fractions, b.plan_id) == ("j1", 17, "pl")
    # atomic write: the file is complete JSON and no temporary files are left behind
    files = sorted(p.name for p in (tmp_path / "machines").iterdir())
    assert files == ["VHD.json"]
    MachineQueueRecord.model_validate(json.loads((tmp_path / "machines" / "VHD.json").read_text()))


def test_queue_persists_through_the_service_store(tmp_path):
    from rayrt.service.store import Store

    q = LocalMachineQueue("HAL1", slot_minutes=10, store=Store(tmp_path))
    q.book(Booking(job_id="j1", patient_id="p1", plan_id="pl", fractions=3))
    q.set_status("down", "maintenance", "couch service")
    assert (tmp_path / "machines" / "HAL1.json").is_file()
    again = LocalMachineQueue("HAL1", slot_minutes=10, store=Store(tmp_path))
    assert again.status().reason == "couch service" and again.snapshot().pending_fractions == 3
    assert LocalMachineQueue("NEW", store=Store(tmp_path)).bookings() == []


def test_file_store_uri_form(tmp_path):
    store = JsonFileStore(f"file://{tmp_path}")
    rec = MachineQueueRecord(name="X")
    store.save_json("machines/X", rec)
    assert store.load_json("machines/X", MachineQueueRecord) == rec
    assert store.load_json("machines/missing", MachineQueueRecord) is None


def test_machine_queues_are_the_library_treatment_machines():
    from rayrt.machines import get_machine, list_machines

    names = treatment_machine_names()
    assert names, "configs/machines has no treatment machine"
    assert all(not get_machine(n).standard for n in names)
    assert set(list_machines()) - set(names) == {n for n in list_machines() if get_machine(n).standard}
    assert treatment_machine_names(include_standard=True) == sorted(list_machines())


def test_machine_names_from_yaml_skip_standard(tmp_path):
    (tmp_path / "a.yaml").write_text("name: TrueBeam1\nnominal_energy_mv: 6\n")
    (tmp_path / "b.yaml").write_text("name: Standard\nstandard: true\n")
    (tmp_path / "c.yml").write_text("name: VersaHD1\n")
    assert treatment_machine_names(tmp_path) == ["TrueBeam1", "VersaHD1"]
    assert treatment_machine_names(tmp_path, include_standard=True) == ["Standard", "TrueBeam1", "VersaHD1"]
    (tmp_path / "d.yaml").write_text("vendor: x\n")  # no name: the library names it by its file stem
    assert treatment_machine_names(tmp_path) == ["TrueBeam1", "VersaHD1", "d"]
    (tmp_path / "e.yaml").write_text("- not\n- a mapping\n")
    with pytest.raises(InputError, match="e.yaml"):
        treatment_machine_names(tmp_path)


# ------------------------------------------------------------------ real actors


@pytest.fixture(scope="module")
def ray_ready(ray_session):
    """The session's local Ray (tests/conftest.py)."""
    return ray_session


@pytest.mark.ray
def test_registry_moves_bookings_when_machine_goes_down(ray_ready, tmp_path):
    from rayrt.service.machine_queues import MachineRegistry

    calls = []
    reg = MachineRegistry(
        ["TB1", "TB2", "VHD"],
        settings={"default_slot_minutes": 10, "slot_minutes": {"VHD": 20}},
        data_dir=str(tmp_path),
        replan_callback=calls.append,
    )
    # job A wants two machines; job B one
    a = reg.select_and_book("jobA", "pA", 25, policy="user_list", count=2, user_list=["TB1", "TB2"])
    assert [b.machine for b in a] == ["TB1", "TB2"]
    reg.attach_plan("TB1", "jobA", "planA-TB1")
    reg.book("TB1", "jobB", "pB", 5, plan_id="planB")
    reg.record_fraction("TB1", "jobB", 2)
    with pytest.raises(InputError, match="not down"):
        reg.on_machine_down("TB1")
    snaps = {s.name: s for s in reg.snapshots()}
    assert snaps["TB1"].pending_fractions == 28 and snaps["TB1"].estimated_wait_min == 280
    assert snaps["VHD"].idle

    change = reg.set_status("TB1", "down", "malfunction", "MLC motor fault")
    assert change.status.state is MachineState.down
    moved = {b.job_id: b for b in change.moved}
    # jobA already holds TB2, so it must go to VHD; jobB (3 fractions left) goes to the best other machine
    assert moved["jobA"].moved_to == "VHD"
    assert moved["jobB"].moved_to in {"TB2", "VHD"}
    assert all("MLC motor fault" in b.move_reason and "malfunction" in b.move_reason for b in moved.values())
    assert reg.bookings("TB1") == []
    new_b = {b.job_id: b for b in reg.bookings(moved["jobB"].moved_to)}["jobB"]
    assert new_b.fractions == 3 and new_b.state is BookingState.converting and new_b.moved_from == "TB1"
    assert "MLC motor fault" in new_b.move_reason
    assert {(c.job_id, c.from_machine, c.to_machine) for c in calls} == {
        ("jobA", "TB1", "VHD"),
        ("jobB", "TB1", moved["jobB"].moved_to),
    }
    assert {c.job_id: c.source_plan_id for c in calls} == {"jobA": "planA-TB1", "jobB": "planB"}
    # a second notice for the same machine moves nothing
    assert reg.on_machine_down("TB1") == []
    # down machines are never selected; booking them directly is refused
    assert "TB1" not in reg.select("prefer_idle", count=3)
    with pytest.raises(InputError):
        reg.book("TB1", "jobC", "pC", 1)
    with pytest.raises(InputError, match="fractions"):
        reg.book("TB2", "jobC", "pC", 0)

    # restart: a fresh registry over the same data dir sees the same state
    for name in reg.names():
        ray_ready.kill(reg.queue(name))
    reg2 = MachineRegistry(["TB1", "TB2", "VHD"], settings={"default_slot_minutes": 10}, data_dir=str(tmp_path))
    assert reg2.snapshot("TB1").status.state is MachineState.down
    assert {b.job_id for b in reg2.bookings_of("jobA")} == {"jobA"} and len(reg2.bookings_of("jobA")) == 2
    for name in reg2.names():
        ray_ready.kill(reg2.queue(name))


@pytest.mark.ray
def test_moves_decided_before_a_restart_are_replayed(ray_ready, tmp_path):
    """A registry that stopped after writing its moves and before (or while) making them makes
    them when it starts again: none lost, none made twice, each re-plan asked for."""
    from rayrt.service.machine_queues import JsonFileStore, MachineRegistry, PlannedMove, RegistryRecord

    reg = MachineRegistry(["TB1", "TB2", "VHD"], settings={"default_slot_minutes": 10}, data_dir=str(tmp_path))
    reg.book("TB1", "jobA", "pA", 10, plan_id="planA")
    reg.book("TB1", "jobB", "pB", 5, plan_id="planB")
    reg.queue("TB1").set_status.remote("down", "malfunction", "power supply")  # the queue knows; nothing moved
    ray_ready.get(reg.queue("TB1").take.remote("jobB", "machine TB1 down"))  # jobB's move was half made
    reason = "machine TB1 down (malfunction: power supply)"
    JsonFileStore(str(tmp_path)).save_json(
        "machines/_registry",
        RegistryRecord(
            moves=[
                PlannedMove(source="TB1", job_id="jobA", target="TB2", reason=reason),
                PlannedMove(source="TB1", job_id="jobB", target="VHD", reason=reason),
            ]
        ),
    )
    for name in reg.names():
        ray_ready.kill(reg.queue(name))

    calls = []
    slots = {"default_slot_minutes": 10}
    reg2 = MachineRegistry(["TB1", "TB2", "VHD"], settings=slots, data_dir=str(tmp_path), replan_callback=calls.append)
    try:
        assert reg2.bookings("TB1") == []
        assert [(b.job_id, b.fractions, b.moved_from) for b in reg2.bookings("TB2")] == [("jobA", 10, "TB1")]
        assert [(b.job_id, b.fractions, b.moved_from) for b in reg2.bookings("VHD")] == [("jobB", 5, "TB1")]
        assert sorted((c.job_id, c.to_machine, c.source_plan_id) for c in calls) == [
            ("jobA", "TB2", "planA"),
            ("jobB", "VHD", "planB"),
        ]
        assert JsonFileStore(str(tmp_path)).load_json("machines/_registry", RegistryRecord).moves == []
        reg3 = MachineRegistry(["TB1", "TB2", "VHD"], settings={"default_slot_minutes": 10}, data_dir=str(tmp_path))
        assert len(reg3.bookings("TB2")) == 1 and len(reg3.bookings("VHD")) == 1, "nothing replayed twice"
    finally:
        for name in reg2.names():
            ray_ready.kill(reg2.queue(name))


@pytest.mark.ray
def test_unplaced_bookings_wait_for_a_machine(ray_ready, tmp_path):
    from rayrt.service.machine_queues import MachineRegistry

    calls = []
    reg = MachineRegistry(["M1", "M2"], data_dir=str(tmp_path), replan_callback=calls.append)
    reg.set_status("M2", "down", "maintenance", "service")
    reg.book("M1", "j", "p", 4, plan_id="pl")
    moved = reg.set_status("M1", "down", "malfunction").moved
    assert moved[0].moved_to is None and moved[0].state is BookingState.unplaced
    assert calls[-1].to_machine is None and [b.job_id for b in reg.unplaced()] == ["j"]
    change = reg.set_status("M2", "available", reason="service done")  # places waiting bookings
    placed = change.placed
    assert [(b.job_id, b.machine, b.fractions) for b in placed] == [("j", "M2", 4)]
    assert placed[0].moved_from == "M1" and "malfunction" in placed[0].move_reason
    assert reg.unplaced() == [] and calls[-1].to_machine == "M2" and calls[-1].needs_conversion
    # a booking that waits for its own machine goes back with its plan, no conversion
    reg.book("M2", "k", "p", 2, plan_id="plan-k")
    reg.set_status("M1", "down", "maintenance")  # still down; M2 now goes down too
    assert [b.moved_to for b in reg.set_status("M2", "down", "malfunction").moved] == [None, None]
    back = reg.set_status("M2", "available").placed
    assert {(b.job_id, b.machine, b.state.value, b.plan_id) for b in back} == {
        ("j", "M2", "converting", None),
        ("k", "M2", "booked", "plan-k"),
    }
    assert {c.job_id: c.needs_conversion for c in calls[-2:]} == {"j": True, "k": False}
    for name in reg.names():
        ray_ready.kill(reg.queue(name))


@pytest.mark.ray
def test_registry_actor_with_callback_into_another_actor(ray_ready, tmp_path):
    import ray

    from rayrt.service.machine_queues import MachineRegistryActor, ReplanRequest

    @ray.remote(num_cpus=0)
    class Inbox:
        def __init__(self):
            self.items = []

        def put(self, req: ReplanRequest):
            self.items.append(req)

        def get(self):
            return self.items

    inbox = Inbox.remote()

    def callback(req, inbox=inbox):
        inbox.put.remote(req)

    reg = MachineRegistryActor.remote(["A", "B"], data_dir=str(tmp_path), replan_callback=callback)
    ray.get(reg.book.remote("A", "j1", "p1", 10, "plan1"))
    change = ray.get(reg.set_status.remote("A", "down", "malfunction", "beam steering"))
    assert [b.moved_to for b in change.moved] == ["B"]
    items = []
    for _ in range(50):
        items = ray.get(inbox.get.remote())
        if items:
            break
    assert [(i.job_id, i.to_machine, i.fractions) for i in items] == [("j1", "B", 10)]
    with pytest.raises(InputError) as e:
        ray.get(reg.book.remote("Nope", "j", "p", 1))
    assert e.value.status == 404
    for name in ray.get(reg.names.remote()):
        ray.kill(ray.get(reg.queue.remote(name)))
    ray.kill(reg)
    ray.kill(inbox)


@pytest.mark.ray
def test_named_registry_is_shared_and_reattaches(ray_ready, tmp_path):
    import ray

    from rayrt.service.machine_queues import get_or_create_registry

    name = f"test-machines-{uuid.uuid4().hex[:6]}"
    a = get_or_create_registry(name=name, detached=False, machines=["X1", "X2"], data_dir=str(tmp_path))
    ray.get(a.book.remote("X1", "j1", "p1", 2))
    b = get_or_create_registry(name=name, detached=False)  # e.g. a second ingress replica
    assert [bk.job_id for bk in ray.get(b.bookings.remote("X1"))] == ["j1"]
    # the queue actors are named, so a new registry (after a registry crash) finds the live ones
    q = ray.get_actor(f"{name}/X1")
    assert ray.get(q.snapshot.remote()).pending_fractions == 2
    for m in ("X1", "X2"):
        ray.kill(ray.get_actor(f"{name}/{m}"))
    ray.kill(a)
