"""Delineation on a stored patient: the store keeps structures and their log; bad requests change nothing."""

import numpy as np
import pytest

from rayrt.domain.errors import InputError
from rayrt.imaging.phantoms import tg119_phantom
from rayrt.service.store import Store
from rayrt.service.structures import apply_structure_request, structure_log


@pytest.fixture()
def stored(tmp_path):
    store = Store(tmp_path / "data")
    summary = store.put_study(tg119_phantom(spacing_mm=(4.0, 4.0, 4.0)))
    return store, summary.id


def test_margin_is_stored_with_its_log_and_survives_restart(stored, tmp_path):
    store, pid = stored
    res = apply_structure_request(
        store, pid, {"method": "margin", "source": "Core", "name": "Core_PRV", "margin_mm": 5}
    )
    assert [c["name"] for c in res.changed] == ["Core_PRV"]
    again = Store(tmp_path / "data")  # a new process reads the same data
    masks = dict((s.name, m) for s, m in again.load_masks(pid))
    assert masks["Core_PRV"].sum() > masks["Core"].sum()
    assert np.all(masks["Core_PRV"][masks["Core"]])
    assert "Core_PRV" in again.get_patient(pid).structure_names
    ops = structure_log(again, pid, "Core_PRV")["operations"]
    assert ops[-1]["method"] == "margin" and ops[-1]["inputs"] == ["Core"]


def test_bad_request_changes_nothing(stored):
    store, pid = stored
    before = store.read_json(f"patients/{pid}/structures.json")
    with pytest.raises(InputError):
        apply_structure_request(store, pid, {"method": "margin", "source": "NoSuch", "name": "X", "margin_mm": 5})
    with pytest.raises(InputError):
        apply_structure_request(store, pid, {"method": "teleport"})
    assert store.read_json(f"patients/{pid}/structures.json") == before
