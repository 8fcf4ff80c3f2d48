"""StructureSet: the structures of one patient image, their masks and their operations logs.

Every change goes through :meth:`StructureSet.apply`, which records a :class:`ContourOperation`
(method, parameters with defaults resolved, input and output structures, timestamp, user). Each
structure keeps the log of the operations that made and edited it; the set keeps the ordered
history of all operations. :meth:`StructureSet.replay` rebuilds the structures from the images,
the imported structures and the history, so a structure can be reproduced and audited.
The log travels with the patient as JSON (:class:`ContourLog`).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, JsonValue

from rayrt.contour.config import ContourConfig
from rayrt.contour.requests import CONTOUR_REQUEST_ADAPTER, StructureSummary, execute, parse_request
from rayrt.domain.errors import InputError
from rayrt.domain.patient import Structure
from rayrt.imaging.dicom_io import read_rtstruct
from rayrt.imaging.export import write_rtstruct
from rayrt.imaging.study import StructureMask, structure_masks_from_rtstruct
from rayrt.imaging.volume import Grid, Volume

IMPORT_METHOD = "import"


def _software() -> str:
    try:
        from importlib.metadata import version

        return f"rayrt {version('rayrt')}"
    except Exception:  # not installed as a distribution (source tree)
        return "rayrt"


class ContourOperation(BaseModel):
    """One delineation step, enough to reproduce it: method + parameters applied to the inputs."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    method: str = Field(
        description="auto, grow, interpolate, margin, boolean, ring, polygons, pet_threshold, edit or import"
    )
    parameters: dict[str, JsonValue] = Field(
        default_factory=dict, description="the request as applied, defaults resolved"
    )
    inputs: list[str] = Field(default_factory=list, description="structures read")
    outputs: list[str] = Field(default_factory=list, description="structures written (after the operation)")
    deleted: list[str] = Field(default_factory=list)
    timestamp: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    user: str = ""
    software: str = Field(default_factory=_software)
    notes: list[str] = Field(default_factory=list)

    def request(self) -> BaseModel:
        """The request this operation applies (InputError for an 'import')."""
        if self.method == IMPORT_METHOD:
            raise InputError(
                "an import operation has no request: its masks come from the imported file", kind="contour"
            )
        return CONTOUR_REQUEST_ADAPTER.validate_python({**self.parameters, "method": self.method})


class ContourLog(BaseModel):
    """The operations log of a structure set, stored with the patient (JSON)."""

    frame_of_reference_uid: str | None = None
    history: list[ContourOperation] = Field(default_factory=list)
    structures: dict[str, list[str]] = Field(
        default_factory=dict, description="structure name -> ids of its operations, in order"
    )

    def operations_of(self, name: str) -> list[ContourOperation]:
        by_id = {op.id: op for op in self.history}
        return [by_id[i] for i in self.structures.get(name, []) if i in by_id]


class StructureSet:
    """Structures (metadata + bool masks on the primary image grid) with their operations logs."""

    def __init__(
        self,
        image: Volume,
        modality: str | None = None,
        images: dict[str, Volume] | None = None,
        frame_of_reference_uid: str | None = None,
        config: ContourConfig | None = None,
    ):
        self.image = image
        self.grid: Grid = image.grid
        self.modality = (
            modality or image.meta.get("modality") or ("CT" if image.quantity == "HU" else "")
        ).upper() or "CT"
        self.images: dict[str, Volume] = dict(images or {})
        self.frame_of_reference_uid = frame_of_reference_uid or image.meta.get("frame_of_reference_uid")
        self.config = config or ContourConfig()
        self._structures: dict[str, Structure] = {}
        self._masks: dict[str, np.ndarray] = {}
        self.logs: dict[str, list[ContourOperation]] = {}
        self.history: list[ContourOperation] = []
        self._imported: dict[str, tuple[Structure, np.ndarray]] = {}

    # -------------------------------------------------------------------- construction
    @classmethod
    def from_study(cls, study: Any, config: ContourConfig | None = None) -> "StructureSet":
        """A structure set on a loaded study's primary image, with its structures as imports."""
        primary = getattr(study, "primary", None)
        if primary is None:
            raise InputError(
                "the study has no primary image series; load a folder with a CT (or MR/PET) series", kind="contour"
            )
        images = dict(getattr(study, "images", None) or {})
        ss = cls(
            primary, images=images, frame_of_reference_uid=getattr(study, "frame_of_reference_uid", None), config=config
        )
        for sm in getattr(study, "structures", None) or []:
            ss.add_imported(sm.structure, np.asarray(sm.mask, dtype=bool))
        return ss

    def add_imported(self, structure: Structure, mask: np.ndarray, source: str = "rtstruct", user: str = "") -> None:
        """Add a structure that comes from outside (an RTSTRUCT); logged as an 'import' operation."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != tuple(self.grid.shape):
            raise InputError(
                f"structure {structure.name!r}: mask shape {mask.shape} is not the image grid {self.grid.shape}",
                kind="contour",
            )
        st = self._with_stats(structure.model_copy(update={"source": structure.source or source}), mask)
        op = ContourOperation(method=IMPORT_METHOD, parameters={"source": source}, outputs=[st.name], user=user)
        self._structures[st.name] = st
        self._masks[st.name] = mask
        self.logs[st.name] = [op]
        self.history.append(op)
        self._imported[st.name] = (st, mask.copy())

    def import_rtstruct(self, path: str | Path, *, overwrite: bool = False, user: str = "") -> list[StructureSummary]:
        """Add every ROI of an RTSTRUCT file (rasterised on the primary grid) as imported structures.

        All-or-nothing: a frame of reference other than the image's, or a name that exists
        (without ``overwrite``), raises :class:`InputError` before anything is added.
        """
        rs = read_rtstruct(path)
        if (
            rs.frame_of_reference_uid
            and self.frame_of_reference_uid
            and rs.frame_of_reference_uid != self.frame_of_reference_uid
        ):
            raise InputError(
                f"{Path(path).name} is on another frame of reference than the image; it cannot be imported",
                kind="rtstruct",
                field=str(path),
            )
        items = structure_masks_from_rtstruct(rs, self.grid, plane_spacing_mm=float(self.grid.spacing[2]))
        clash = [sm.structure.name for sm in items if sm.structure.name in self]
        if clash and not overwrite:
            raise InputError(
                f"structures already exist: {', '.join(clash)}; set overwrite to replace them",
                kind="contour",
                status=409,
            )
        for sm in items:
            self.add_imported(sm.structure, sm.mask, source=f"rtstruct:{Path(path).name}", user=user)
        return [self.summary(sm.structure.name) for sm in items]

    # -------------------------------------------------------------------- access
    def __contains__(self, name: object) -> bool:
        return name in self._structures

    @property
    def names(self) -> list[str]:
        return list(self._structures)

    def structure(self, name: str) -> Structure:
        return self._structures[name]

    def mask(self, name: str) -> np.ndarray:
        """The mask of a structure (read-only view: change structures through :meth:`apply`)."""
        m = self._masks[name].view()
        m.flags.writeable = False
        return m

    def require(self, name: str) -> np.ndarray:
        """The mask of a structure, InputError (404) naming the known structures if unknown."""
        if name not in self._structures:
            known = ", ".join(self.names) or "none"
            raise InputError(
                f"unknown structure {name!r} (known: {known})", kind="contour", field="structure", status=404
            )
        return self.mask(name)

    def image_for(self, key: str | None) -> tuple[Volume, str]:
        """(image, modality) for a series key, default the primary image."""
        if key is None:
            return self.image, self.modality
        vol = self._find_image(key)
        return vol, str(vol.meta.get("modality") or ("PT" if vol.quantity in {"SUV", "PET"} else self.modality)).upper()

    def _find_image(self, key: str) -> Volume:
        if key in self.images:
            return self.images[key]
        for vol in self.images.values():
            m = vol.meta
            if key in (m.get("series_instance_uid"), m.get("modality"), m.get("series_description")):
                return vol
        raise InputError(
            f"no image series {key!r} in this study (known: {', '.join(self.images) or 'none'})",
            kind="contour",
            field="image",
            status=404,
        )

    def pet_image(self, key: str | None) -> Volume:
        """The PET volume (SUV) to threshold; checks it is in the structure set's frame of reference."""
        if key is not None:
            pet = self._find_image(key)
        else:
            pets = [
                v
                for v in list(self.images.values()) + [self.image]
                if str(v.meta.get("modality", "")).upper() in {"PT", "PET"} or v.quantity in {"SUV", "PET"}
            ]
            if not pets:
                raise InputError(
                    "no PET series in this study; load a PET series with the CT",
                    kind="contour",
                    field="image",
                    status=404,
                )
            pet = pets[0]
        for_pet = pet.meta.get("frame_of_reference_uid")
        if for_pet and self.frame_of_reference_uid and for_pet != self.frame_of_reference_uid:
            raise InputError(
                "the PET series is in another frame of reference than the planning image; register it to the CT first",
                kind="contour",
                field="image",
            )
        return pet

    def to_primary_grid(self, mask: np.ndarray, image: Volume) -> np.ndarray:
        """A mask drawn on another image of the same frame of reference, resampled (nearest) onto the primary grid."""
        return Volume(mask.astype(np.uint8), image.grid).resample(self.grid, order=0).array.astype(bool)

    def _with_stats(self, st: Structure, mask: np.ndarray) -> Structure:
        n = int(np.count_nonzero(mask))
        return st.model_copy(update={"num_voxels": n, "volume_cc": n * self.grid.voxel_volume_cc})

    def summary(self, name: str) -> StructureSummary:
        st = self._structures[name]
        return StructureSummary(
            name=st.name,
            kind=st.kind,
            volume_cc=float(st.volume_cc or 0.0),
            num_voxels=int(st.num_voxels or 0),
            colour=st.colour,
            source=st.source,
        )

    def summaries(self) -> list[StructureSummary]:
        return [self.summary(n) for n in self.names]

    # -------------------------------------------------------------------- changes
    def apply(self, operation: ContourOperation | BaseModel, *, user: str = "") -> list[StructureSummary]:
        """Apply a request (or replay a logged operation) atomically; returns the changed structures' summaries."""
        if isinstance(operation, ContourOperation):
            if operation.method == IMPORT_METHOD:
                raise InputError("import operations are replayed from the imported masks, not applied", kind="contour")
            request = operation.request()
            template = operation
        else:
            request = operation
            template = None
        ex = execute(self, request)  # raises before anything changes
        resolved = {k: v for k, v in (ex.resolved or {}).items() if k != "method"}
        op = ContourOperation(
            id=template.id if template else uuid.uuid4().hex[:12],
            method=str(getattr(request, "method")),  # execute() checked it is a known method
            parameters=resolved,
            inputs=sorted(set(ex.inputs)),
            outputs=[o.structure.name for o in ex.outputs],
            deleted=list(ex.deleted),
            timestamp=template.timestamp if template else datetime.now(timezone.utc),
            user=template.user if template else user,
            notes=list(ex.notes),
        )
        # commit (nothing below can fail on user input)
        changed: list[StructureSummary] = []
        for name in ex.deleted:
            st = self._structures.pop(name)
            self._masks.pop(name)
            self.logs.pop(name, None)
            changed.append(
                StructureSummary(
                    name=name, kind=st.kind, volume_cc=0.0, num_voxels=0, colour=st.colour, source="edit", deleted=True
                )
            )
        for out in ex.outputs:
            st = self._with_stats(out.structure, np.asarray(out.mask, dtype=bool))
            old_log: list[ContourOperation] = []
            if out.replaces is not None and out.replaces != st.name:
                self._structures.pop(out.replaces, None)
                self._masks.pop(out.replaces, None)
                old_log = self.logs.pop(out.replaces, [])
            elif not out.fresh:
                old_log = self.logs.get(st.name, [])
            mask = np.asarray(out.mask, dtype=bool)
            self._structures[st.name] = st
            self._masks[st.name] = mask if mask.flags.writeable else mask.copy()
            self.logs[st.name] = old_log + [op]
            changed.append(self.summary(st.name))
        self.history.append(op)
        return changed

    # -------------------------------------------------------------------- log and replay
    def log(self) -> ContourLog:
        return ContourLog(
            frame_of_reference_uid=self.frame_of_reference_uid,
            history=list(self.history),
            structures={n: [op.id for op in self.logs.get(n, [])] for n in self.names},
        )

    def save_log(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(self.log().model_dump_json(indent=2))
        return p

    @staticmethod
    def read_log(path: str | Path) -> ContourLog:
        try:
            return ContourLog.model_validate_json(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the contour log {path}: {exc}", kind="contour", field=str(path)) from exc

    def attach_log(self, log: ContourLog) -> None:
        """Carry an earlier session's log over: history first, then each known structure's operations."""
        by_id = {op.id: op for op in log.history}
        known = set(log.structures)
        # this session's import of a structure the log already explains is not a new step
        new_ops = [
            op
            for op in self.history
            if op.id not in by_id and not (op.method == IMPORT_METHOD and set(op.outputs) <= known)
        ]
        self.history = list(log.history) + new_ops
        for name in self.names:
            ids = log.structures.get(name)
            if ids:
                self.logs[name] = [by_id[i] for i in ids if i in by_id]
                if self.logs[name]:  # how it was made survives the RTSTRUCT round trip through the log
                    self._structures[name] = self._structures[name].model_copy(
                        update={"source": self.logs[name][-1].method}
                    )

    def replay(self, history: list[ContourOperation] | None = None) -> "StructureSet":
        """A new structure set rebuilt from the images, the imported masks and an operations history."""
        fresh = StructureSet(self.image, self.modality, self.images, self.frame_of_reference_uid, self.config)
        for op in history if history is not None else self.history:
            if op.method == IMPORT_METHOD:
                for name in op.outputs:
                    if name in self._imported:
                        st, m = self._imported[name]
                        fresh.add_imported(st, m, source=str(op.parameters.get("source", "rtstruct")), user=op.user)
                continue
            fresh.apply(op)
        return fresh

    def reproduce(self, name: str) -> np.ndarray:
        """Rebuild one structure from the history (replaying only the operations it depends on)."""
        needed: list[ContourOperation] = []
        wanted = {name}
        for op in reversed(self.history):
            if wanted & (set(op.outputs) | set(op.deleted)):
                needed.append(op)
                wanted |= set(op.inputs)
        return self.replay(list(reversed(needed))).require(name).copy()

    # -------------------------------------------------------------------- export
    def to_structure_masks(self) -> list[StructureMask]:
        """The structures as :class:`rayrt.imaging.study.StructureMask` items (for ``write_rtstruct``)."""
        return [StructureMask(structure=self._structures[n], mask=self._masks[n]) for n in self.names]

    def write_rtstruct(self, path: str | Path, **kwargs: Any) -> Path:
        """Write all structures as an RTSTRUCT on the primary image and the log beside it (``*.contour_log.json``)."""
        p = Path(path)
        out = write_rtstruct(self.to_structure_masks(), self.image, p, **kwargs)
        self.save_log(log_path_for(p))
        return out


def log_path_for(rtstruct_path: str | Path) -> Path:
    """Where the operations log of an RTSTRUCT written by rayrt lives: ``NAME.contour_log.json`` beside it."""
    p = Path(rtstruct_path)
    return p.with_name(p.stem + ".contour_log.json")


def dumps_summaries(summaries: list[StructureSummary]) -> str:
    return json.dumps([s.model_dump(mode="json") for s in summaries], indent=2)


def apply_request(target: Any, request: BaseModel | dict[str, Any] | str, *, user: str = "") -> list[StructureSummary]:
    """Apply one delineation request and return the summaries of the structures it made or changed.

    ``target`` is a :class:`~rayrt.contour.structureset.StructureSet` (kept and updated, with its
    operations log) or a ``Study`` from :func:`rayrt.imaging.study.load_study` (a structure set is
    built from it, and ``study.structures`` is replaced by the updated list). ``request`` is a
    ``ContourRequest`` model, or its JSON text / object. Raises :class:`InputError` on bad input,
    with nothing changed.
    """
    req = request if isinstance(request, BaseModel) else parse_request(request)
    if isinstance(target, StructureSet):
        return target.apply(req, user=user)
    ss = StructureSet.from_study(target)
    out = ss.apply(req, user=user)
    try:
        target.structures = ss.to_structure_masks()
    except (AttributeError, TypeError, ValueError):  # a frozen study: the caller keeps using ss
        pass
    return out
