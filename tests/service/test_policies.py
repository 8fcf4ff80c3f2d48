"""Target-machine selection policies (pure code, no Ray)."""

import math

import pytest

from rayrt.domain.errors import InputError
from rayrt.service.policies import (
    POLICIES,
    DownCause,
    MachineQueueSettings,
    MachineSnapshot,
    MachineState,
    MachineStatus,
    estimated_wait_minutes,
    register_policy,
    select_machines,
)


def snap(name, state="available", pending=0, bookings=None, slot=15.0, cause=None):
    st = MachineStatus(state=MachineState(state), cause=DownCause(cause) if cause else None)
    return MachineSnapshot(
        name=name,
        status=st,
        bookings=bookings if bookings is not None else (1 if pending else 0),
        pending_fractions=pending,
        slot_minutes=slot,
        estimated_wait_min=estimated_wait_minutes(st, pending, slot),
    )


FLEET = [
    snap("TB1", pending=30, bookings=2),
    snap("TB2", state="busy", pending=0),  # treating now, nothing queued
    snap("VHD", pending=0),  # idle
    snap("HAL", state="down", cause="malfunction"),
    snap("SYN", pending=5, slot=20.0),
]


def test_registry_has_the_documented_policies():
    assert {"prefer_idle", "fewest_pending", "user_list", "shortest_wait"} <= set(POLICIES)


def test_prefer_idle_puts_idle_first_then_shortest_queue_and_skips_down():
    assert select_machines("prefer_idle", FLEET, count=4) == ["VHD", "TB2", "SYN", "TB1"]
    assert select_machines("prefer_idle", FLEET) == ["VHD"]


def test_fewest_pending_orders_by_pending_fractions():
    # TB2 and VHD tie on 0 pending fractions and 0 bookings -> by name
    assert select_machines("fewest_pending", FLEET, count=5) == ["TB2", "VHD", "SYN", "TB1"]


def test_shortest_wait_uses_slot_minutes():
    fleet = [snap("A", pending=4, slot=30.0), snap("B", pending=6, slot=12.0)]  # 120 vs 72 minutes
    assert select_machines("shortest_wait", fleet, count=2) == ["B", "A"]
    assert select_machines("fewest_pending", fleet, count=2) == ["A", "B"]


def test_user_list_keeps_user_order_and_skips_down():
    assert select_machines("user_list", FLEET, count=2, user_list=["HAL", "TB1", "SYN", "VHD"]) == ["TB1", "SYN"]


def test_user_list_all_down_is_an_error_naming_them():
    with pytest.raises(InputError) as e:
        select_machines("user_list", FLEET, count=1, user_list=["HAL"])
    assert e.value.status == 409 and "HAL" in e.value.message


def test_user_list_policy_needs_a_list():
    with pytest.raises(InputError, match="needs a list"):
        select_machines("user_list", FLEET, count=1)


def test_unknown_machine_and_unknown_policy_are_input_errors():
    with pytest.raises(InputError) as e:
        select_machines("prefer_idle", FLEET, user_list=["TB1", "Nope"])
    assert e.value.status == 404 and "Nope" in e.value.message and "TB1" in e.value.message
    with pytest.raises(InputError, match="prefer_idle"):
        select_machines("random", FLEET)
    with pytest.raises(InputError, match="at least 1"):
        select_machines("prefer_idle", FLEET, count=0)


def test_user_list_restricts_other_policies():
    assert select_machines("prefer_idle", FLEET, count=3, user_list=["TB1", "SYN"]) == ["SYN", "TB1"]


def test_several_targets_are_distinct_and_exclude_is_honoured():
    got = select_machines("prefer_idle", FLEET, count=3, exclude=["VHD"])
    assert got == ["TB2", "SYN", "TB1"] and len(set(got)) == 3


def test_fewer_usable_than_requested_returns_what_is_usable():
    fleet = [snap("A"), snap("B", state="down", cause="maintenance")]
    assert select_machines("prefer_idle", fleet, count=2) == ["A"]


def test_no_usable_machine_at_all():
    fleet = [snap("A", state="down", cause="maintenance")]
    with pytest.raises(InputError) as e:
        select_machines("fewest_pending", fleet)
    assert e.value.status == 409 and "A" in e.value.message


def test_custom_policy_can_be_registered():
    @register_policy("alphabetical_desc")
    def _desc(snapshots, user_list=None):
        return sorted(snapshots, key=lambda s: s.name, reverse=True)

    try:
        assert select_machines("alphabetical_desc", FLEET, count=2) == ["VHD", "TB2"]
    finally:
        POLICIES.pop("alphabetical_desc")


def test_estimated_wait_and_settings():
    up = MachineStatus()
    assert estimated_wait_minutes(up, 6, 12.5) == pytest.approx(75.0)
    assert math.isinf(estimated_wait_minutes(MachineStatus(state="down", cause="maintenance"), 6, 12.5))
    s = MachineQueueSettings.model_validate({"default_slot_minutes": 12, "slot_minutes": {"HAL": 10}})
    assert s.slot_for("HAL") == 10 and s.slot_for("TB1") == 12
