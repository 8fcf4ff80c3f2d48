"""Delineation on a stored patient: apply one contour request and store the result atomically.

The structure masks of a patient are listed by ``patients/<id>/structures.json``; that file is
the commit point. New masks are written under fresh names first, then ``structures.json`` is
replaced atomically, then the operations log (``contour_log.json``) and the patient summary.
A request that fails (bad seed, unknown structure, empty result ...) raises
:class:`~rayrt.domain.errors.InputError` before anything is written, so nothing stored changes.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from rayrt.contour.requests import parse_request
from rayrt.contour.structureset import ContourLog, StructureSet
from rayrt.domain.errors import InputError
from rayrt.service.models import PatientSummary
from rayrt.service.store import Store, StoredMask, check_id

LOG_FILE = "contour_log.json"


class StructuresResponse(BaseModel):
    """What ``POST /patients/{id}/structures`` answers: the changed structures and the full list."""

    patient_id: str
    changed: list[Any] = Field(description="StructureSummary of every structure made, changed or deleted")
    structures: list[Any] = Field(description="every structure of the patient after the operation")
    operation_id: str
    structure_version: int = Field(description="the structure set's version after the operation")


def load_structure_set(store: Store, patient_id: str) -> StructureSet:
    """The patient's :class:`~rayrt.contour.structureset.StructureSet` with its stored operations log."""
    pid = check_id(patient_id, "patient")
    ss = StructureSet.from_study(store.load_study(pid))
    if store.exists(f"patients/{pid}/{LOG_FILE}"):
        ss.attach_log(ContourLog.model_validate(store.read_json(f"patients/{pid}/{LOG_FILE}")))
    return ss


def save_structure_set(store: Store, patient_id: str, ss: StructureSet, version: int | None = None) -> PatientSummary:
    """Write every structure of ``ss`` as the patient's structures (commit point: structures.json);
    ``version``: the structure version they get (default: one more than stored)."""
    pid = check_id(patient_id, "patient")
    batch = uuid.uuid4().hex[:8]
    stored: list[StoredMask] = []
    for n, name in enumerate(ss.names):
        mask = np.asarray(ss.mask(name), dtype=bool)
        f = f"masks/{batch}-{n}.npy"
        store.write_array(f"patients/{pid}/{f}", np.packbits(mask.ravel()))
        stored.append(StoredMask(structure=ss.structure(name), file=f, shape=mask.shape))
    old = {d["file"] for d in store.read_json(f"patients/{pid}/structures.json")}
    store.write_json(f"patients/{pid}/structures.json", [m.model_dump(mode="json") for m in stored])
    store.write_json(f"patients/{pid}/{LOG_FILE}", ss.log())
    before = store.get_patient(pid)
    version = before.structure_version + 1 if version is None else version
    summary = before.model_copy(update={"structures": [m.structure for m in stored], "structure_version": version})
    store.write_json(f"patients/{pid}/patient.json", summary)
    for f in old - {m.file for m in stored}:  # masks no longer listed anywhere
        try:
            store.fs.delete_file(store.path("patients", pid, f))
        except OSError:
            pass
    return summary


def apply_structure_request(
    store: Store, patient_id: str, request: Any, user: str = "", expected_version: int | None = None
) -> StructuresResponse:
    """Apply one delineation request (auto, grow, interpolate, margin, boolean, ring, polygons,
    pet_threshold, edit) to a stored patient and store the result. With ``expected_version``
    (the structure version the client edited from) a structure set changed since is refused (409)."""
    req = request if isinstance(request, BaseModel) else parse_request(request)  # 422 before any load
    current = store.get_patient(patient_id).structure_version
    if expected_version is not None and expected_version != current:
        raise InputError(
            f"the structures of patient {patient_id} changed since version {expected_version} (now "
            f"{current}): reload them and apply the edit again",
            kind="conflict",
            field="If-Match",
            status=409,
        )
    ss = load_structure_set(store, patient_id)
    changed = ss.apply(req, user=user)
    summary = save_structure_set(store, patient_id, ss, version=current + 1)
    return StructuresResponse(
        patient_id=patient_id,
        changed=[c.model_dump(mode="json") for c in changed],
        structures=[s.model_dump(mode="json") for s in ss.summaries()],
        operation_id=ss.history[-1].id,
        structure_version=summary.structure_version,
    )


def structure_log(store: Store, patient_id: str, name: str | None = None) -> dict:
    """The stored operations log (all of it, or one structure's operations)."""
    ss = load_structure_set(store, patient_id)
    log = ss.log()
    if name is None:
        return log.model_dump(mode="json")
    if name not in ss:
        raise InputError(
            f"no structure {name!r}; the patient has: {', '.join(ss.names)}", kind="not_found", field="name", status=404
        )
    return {"structure": name, "operations": [op.model_dump(mode="json") for op in log.operations_of(name)]}


def structures_rtstruct(store: Store, patient_id: str) -> bytes:
    """Every structure of the patient as RTSTRUCT bytes on its primary image (log kept in the store)."""
    ss = load_structure_set(store, patient_id)
    with tempfile.TemporaryDirectory(prefix="rayrt-rs-") as tmp:
        path = ss.write_rtstruct(Path(tmp) / "rtstruct.dcm")
        return Path(path).read_bytes()
