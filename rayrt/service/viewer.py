"""The image viewer's data: slices of a patient's images, structure masks and doses, as compact
binary answers for the web page (``rayrt/web/static/viewer.js``), never a whole volume as JSON.

What the routes of :mod:`rayrt.service.app` answer (section ``viewer``):

* :meth:`Viewer.patient_info` / :meth:`Viewer.job_info`: a :class:`ViewerInfo` (JSON) with the
  primary grid, each plane's picture geometry (:mod:`rayrt.imaging.slices`), the image series with
  window presets, the structures (index, name, colour, kind) and the viewable doses (uploaded
  RTDOSEs; for a job also the standard plan and every released converted plan, with the
  prescription dose for isodoses in %).
* :meth:`Viewer.image_slice`, :meth:`Viewer.mask_slice`, :meth:`Viewer.uploaded_dose_slice`,
  :meth:`Viewer.plan_dose_slice`: a :class:`SliceAnswer`, one picture on the primary image's plane
  (every overlay on the same pixels), little-endian, row-major ``[rows, cols]``, gzip-compressed
  (level 1, ``Content-Encoding: gzip``: browsers decompress it themselves) unless that would save
  less than a fifth of the bytes (noisy floats: sent as they are, compressing them costs more time
  than it saves):

  ========== ================================================================================
  image      int16 HU for a CT series, float32 otherwise (MR signal, PET SUV / Bq/ml); a
             series other than the primary is trilinearly resampled onto the primary plane
  masks      bits (``np.packbits``, most significant bit first) of a bool array
             ``[n_structures, rows, cols]``, structures in the order of ``ViewerInfo.structures``
  dose       float32 Gy, trilinearly resampled from the dose's own grid; 0 outside it
  ========== ================================================================================

  headers ``X-Rows``, ``X-Cols``, ``X-Dtype`` (``int16``, ``float32`` or ``bits``), ``X-Plane``,
  ``X-Index`` and for masks ``X-Structures`` (count) and ``X-Structure-Key``.
* :meth:`Viewer.view`: the image, masks and chosen doses of one slice in one answer
  (:func:`bundle`): what the web page asks for per slice change, one request instead of three
  (each request through the Serve proxy costs ~10 ms of the 100 ms a slice change may take).

Freshness. Loaded volumes, masks and encoded answers are kept in one :class:`ByteLRU` per ingress
replica, bounded by bytes (``ServiceSettings.viewer_cache_mb``). Every key names the stored
content it was made from: images and uploaded doses never change once stored (a patient is
written once); the masks' key is a digest of ``structures.json`` (read on every request, the
commit point of every structure edit, :mod:`rayrt.service.structures`), so an edit is seen by the
very next request; a plan dose's key is a digest of the job's ``export/summary.json`` and the
RTDOSE file's size and time, so a re-planned job (a machine marked down) is never shown stale.

Masks are kept compact: each structure as bits packed along ``i`` inside its bounding box (a
512 x 512 x 200 External of 5 cm³ ... 5 l costs at most 6.5 MB, a small organ a few kB).

Plain Python (numpy, pydicom through rayrt.imaging): no Ray, no HTTP.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, TypeVar

import numpy as np
import pyarrow.fs as pafs
from pydantic import BaseModel, Field

from rayrt.domain.errors import InputError
from rayrt.domain.patient import Structure
from rayrt.imaging.dicom_io import read_rtdose, read_rtdose_bytes
from rayrt.imaging.slices import (
    PLANES,
    Plane,
    check_plane,
    plane_axes,
    plane_image,
    plane_index_range,
    plane_pixel_mm,
    plane_position_mm,
    plane_shape,
    resample_on_plane,
)
from rayrt.imaging.volume import Grid, Volume
from rayrt.pipeline.export import NOT_RELEASED, ExportResult, rtdose_result
from rayrt.service.store import Store, StoredMask, StoredVolume, StudyManifest, check_id

__all__ = [
    "ByteLRU",
    "DoseEntry",
    "PackedMask",
    "PlaneInfo",
    "SeriesInfo",
    "SliceAnswer",
    "StructureInfo",
    "Viewer",
    "ViewerInfo",
    "WindowPreset",
    "CT_WINDOWS",
]

T = TypeVar("T")

#: gzip level of the slice answers: 1 is several times faster than the default 9 and, on CT and
#: dose pictures, within a few percent of its size
GZIP_LEVEL = 1

#: an answer is sent gzip-compressed only when that saves at least this fraction of its bytes
MIN_SAVING = 0.2
PROBE_BYTES = 64 * 1024

#: the first bytes of a view answer (:func:`bundle`)
VIEW_MAGIC = b"RRTV"
#: most doses one view answer carries
MAX_VIEW_DOSES = 4
#: other slices one view answer may carry (a click in one view moves the other two)
MAX_VIEW_ALSO = 2

#: CT window presets (width, level) in HU
CT_WINDOWS: tuple[tuple[str, float, float], ...] = (
    ("soft tissue", 400.0, 40.0),
    ("lung", 1500.0, -600.0),
    ("bone", 1800.0, 400.0),
    ("brain", 80.0, 40.0),
)


# ---------------------------------------------------------------------------- the answers (JSON)
class PlaneInfo(BaseModel):
    """One plane's pictures on the primary grid (rayrt.imaging.slices conventions)."""

    plane: str = Field(description="axial | coronal | sagittal")
    axis: str = Field(description="the array axis the slice index runs along: k, j or i")
    count: int = Field(description="number of slices: valid indices are 0 .. count - 1")
    rows: int
    cols: int
    row_mm: float = Field(description="pixel height in mm")
    col_mm: float = Field(description="pixel width in mm")
    row_axis: str = Field(description="the array axis picture rows run along (k, j or i)")
    col_axis: str = Field(description="the array axis picture columns run along")
    row_flip: bool = Field(description="picture row r is array index count_of(row_axis) - 1 - r")
    col_flip: bool = Field(description="picture column c is array index count_of(col_axis) - 1 - c")
    positions_mm: list[float] = Field(description="LPS coordinate of each slice (z axial, y coronal, x sagittal)")


class WindowPreset(BaseModel):
    name: str
    width: float = Field(description="window width in the series' units")
    level: float = Field(description="window centre in the series' units")


class SeriesInfo(BaseModel):
    key: str = Field(description="series instance UID: the ?series= of the slice route")
    modality: str = Field(description="CT, MR or PT")
    units: str = Field(description="HU, MR (arbitrary), SUV / BQML ...")
    description: str = ""
    primary: bool
    dtype: str = Field(description="int16 (CT) or float32: the slice answers' values")
    windows: list[WindowPreset]


class StructureInfo(BaseModel):
    index: int = Field(description="position in the mask answers' first axis")
    name: str
    colour: tuple[int, int, int] = Field(description="display colour, RGB 0-255")
    kind: str
    volume_cc: float | None = None
    box: tuple[int, int, int, int, int, int] | None = Field(
        default=None, description="bounding box of the mask on the primary grid: k0, k1, j0, j1, i0, i1 (half-open)"
    )


class DoseEntry(BaseModel):
    id: str = Field(description="plan:<machine> or upload:<n>")
    label: str
    kind: str = Field(description="plan (a job's released plan) or uploaded (an RTDOSE uploaded with the patient)")
    machine: str | None = None
    index: int | None = Field(default=None, description="the uploaded dose's number")
    standard: bool = False
    max_gy: float
    grid: Grid
    slices: str = Field(description="route prefix: append /{plane}/{index} for a float32 Gy slice")


class ViewerInfo(BaseModel):
    """``GET /patients/{id}/viewer`` and ``GET /jobs/{id}/viewer``."""

    patient_id: str
    patient_name: str = ""
    job_id: str | None = None
    grid: Grid = Field(description="the primary image grid: every slice answer is on one of its planes")
    planes: list[PlaneInfo]
    series: list[SeriesInfo]
    structures: list[StructureInfo]
    structure_version: int
    structure_key: str = Field(description="digest of the stored structure set: the masks' X-Structure-Key")
    doses: list[DoseEntry]
    prescription_gy: float | None = Field(default=None, description="the job order's prescription dose (100 %)")
    prescription_target: str | None = None
    dose_levels: dict[str, float] = Field(default_factory=dict, description="the order's dose levels (Gy)")


@dataclass(frozen=True)
class SliceAnswer:
    """One binary slice: its body (gzip-compressed when ``gzip``) and headers."""

    body: bytes
    headers: dict[str, str]
    gzip: bool = True

    def content(self) -> bytes:
        """The uncompressed bytes."""
        return gzip.decompress(self.body) if self.gzip else self.body

    @property
    def nbytes(self) -> int:
        return len(self.body) + 200


# ---------------------------------------------------------------------------- the cache
class ByteLRU:
    """A thread-safe least-recently-used cache bounded by the bytes of its values.

    :meth:`get` loads a missing key once even when many threads ask for it at the same time (the
    others wait for that load: the first slices of a new patient load its CT once). A value larger
    than the whole budget is returned but not kept.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[Any, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Any) -> bool:
        with self._lock:
            return key in self._items

    def _lookup(self, key: Any) -> tuple[bool, Any]:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return False, None
            self._items.move_to_end(key)
            self.hits += 1
            return True, item[0]

    def get(self, key: Any, load: Callable[[], T], size: Callable[[T], int]) -> T:
        found, value = self._lookup(key)
        if found:
            return value
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            found, value = self._lookup(key)
            if found:
                return value
            try:
                value = load()
                self.put(key, value, size(value))  # before the gate goes: a later caller finds it
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self.misses += 1
            return value

    def put(self, key: Any, value: Any, nbytes: int) -> None:
        nbytes = max(int(nbytes), 1)
        if nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes and self._items:
                _, (_, n) = self._items.popitem(last=False)
                self._bytes -= n

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


# ---------------------------------------------------------------------------- compact masks
@dataclass(frozen=True)
class PackedMask:
    """A structure's mask ``[k, j, i]`` as bits packed along ``i`` inside its bounding box.

    ``box`` = (k0, k1, j0, j1, i0, i1), half-open; ``bits`` has shape ``(k1-k0, j1-j0,
    ceil((i1-i0)/8))``. An empty mask has an empty box.
    """

    structure: Structure
    shape: tuple[int, int, int]
    box: tuple[int, int, int, int, int, int]
    bits: np.ndarray

    @classmethod
    def of(cls, structure: Structure, mask: np.ndarray) -> "PackedMask":
        m = np.asarray(mask, dtype=bool)
        shape = (int(m.shape[0]), int(m.shape[1]), int(m.shape[2]))
        ks, js, is_ = (np.flatnonzero(m.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
        if ks.size == 0:
            return cls(structure, shape, (0, 0, 0, 0, 0, 0), np.zeros((0, 0, 0), np.uint8))
        box = (int(ks[0]), int(ks[-1]) + 1, int(js[0]), int(js[-1]) + 1, int(is_[0]), int(is_[-1]) + 1)
        crop = m[box[0] : box[1], box[2] : box[3], box[4] : box[5]]
        return cls(structure, shape, box, np.packbits(crop, axis=2))

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes) + 512

    def full(self) -> np.ndarray:
        """The whole bool mask ``[k, j, i]`` (for tests and reports; the viewer never needs it)."""
        out = np.zeros(self.shape, dtype=bool)
        k0, k1, j0, j1, i0, i1 = self.box
        if k1 > k0:
            out[k0:k1, j0:j1, i0:i1] = np.unpackbits(self.bits, axis=2, count=i1 - i0).astype(bool)
        return out

    def cut(self, axis: int, index: int) -> np.ndarray:
        """The mask's slice ``index`` along array ``axis`` (0 = k, 1 = j, 2 = i), in array order
        (axial ``[j, i]``, coronal ``[k, i]``, sagittal ``[k, j]``), bool."""
        dims = [d for a, d in enumerate(self.shape) if a != axis]
        out = np.zeros(dims, dtype=bool)
        k0, k1, j0, j1, i0, i1 = self.box
        lo, hi = self.box[2 * axis], self.box[2 * axis + 1]
        if not lo <= index < hi:
            return out
        t = index - lo
        if axis == 0:
            out[j0:j1, i0:i1] = np.unpackbits(self.bits[t], axis=1, count=i1 - i0).view(bool)
        elif axis == 1:
            out[k0:k1, i0:i1] = np.unpackbits(self.bits[:, t, :], axis=1, count=i1 - i0).view(bool)
        else:
            byte = self.bits[:, :, t >> 3]
            out[k0:k1, j0:j1] = ((byte >> (7 - (t & 7))) & 1).astype(bool)
        return out


@dataclass
class _MaskSet:
    key: str
    masks: list[PackedMask] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.masks) + 1024


# ---------------------------------------------------------------------------- helpers
def _gzip(data: bytes) -> bytes | None:
    """``data`` gzip-compressed, or None when it would not shrink by at least :data:`MIN_SAVING`
    (noisy float doses, noisy CT): a 64 KiB probe from the middle decides, so that 1 MB of
    incompressible floats costs 2 ms, not 30, and is sent as it is."""
    if len(data) > 4 * PROBE_BYTES:
        mid = len(data) // 2
        probe = data[mid - PROBE_BYTES // 2 : mid + PROBE_BYTES // 2]
        if len(zlib.compress(probe, GZIP_LEVEL)) > (1.0 - MIN_SAVING) * len(probe):
            return None
    out = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
    return out if len(out) <= (1.0 - MIN_SAVING) * len(data) else None


def _index(value: Any, plane: Plane, count: int) -> int:
    try:
        i = int(value)
    except (TypeError, ValueError):
        i = -1
    if not 0 <= i < count or str(value).strip() != str(i):
        raise InputError(
            f"{plane} slice index {value!r} is out of range: 0 to {count - 1}",
            kind="request",
            field="index",
            status=422,
        )
    return i


def _modality(sv: StoredVolume) -> str:
    m = str(sv.meta.get("modality") or "").upper()
    if m:
        return "PT" if m == "PET" else m
    return {"HU": "CT", "PET": "PT", "SUV": "PT"}.get(
        sv.quantity.upper(), "MR" if sv.quantity.upper() == "MR" else "OT"
    )


def _units(sv: StoredVolume) -> str:
    if _modality(sv) == "CT":
        return "HU"
    return str(sv.meta.get("units") or sv.quantity or "")


def _as_int16(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.int16:
        return a
    return np.clip(np.rint(a), -32768, 32767).astype(np.int16)


def _windows(sv: StoredVolume, array: np.ndarray) -> list[WindowPreset]:
    """CT: the fixed presets; MR / PET: from percentiles of a strided sample of the volume."""
    if _modality(sv) == "CT":
        return [WindowPreset(name=n, width=w, level=c) for n, w, c in CT_WINDOWS]
    sample = np.asarray(array[:: max(1, array.shape[0] // 32), ::4, ::4], dtype=np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return [WindowPreset(name="auto", width=1.0, level=0.5)]
    if _modality(sv) == "PT":
        hi = float(np.percentile(sample, 99.5))
        hi = hi if hi > 0 else float(sample.max()) or 1.0
        return [
            WindowPreset(name="auto (0 to 99.5th percentile)", width=hi, level=hi / 2),
            WindowPreset(
                name="full range", width=float(sample.max() - sample.min()) or 1.0, level=float(sample.mean())
            ),
        ]
    lo, hi = (float(v) for v in np.percentile(sample, [1.0, 99.0]))
    if hi <= lo:
        hi = lo + 1.0
    full_lo, full_hi = float(sample.min()), float(sample.max())
    return [
        WindowPreset(name="auto (1st to 99th percentile)", width=hi - lo, level=(hi + lo) / 2),
        WindowPreset(name="full range", width=max(full_hi - full_lo, 1.0), level=(full_hi + full_lo) / 2),
    ]


def bundle(parts: list[tuple[str, SliceAnswer]]) -> bytes:
    """Several slice answers in one body (one request per slice change instead of three):
    ``b"RRTV"``, the length of a JSON header (uint32, little-endian), the header
    ``{"parts": [{"name", "offset", "length", "gzip", "headers"}]}`` (offsets from the end of the
    header), then the parts' bodies as cached: each gzip-compressed or not, as its ``gzip`` says."""
    entries, offset = [], 0
    for name, a in parts:
        entries.append({"name": name, "offset": offset, "length": len(a.body), "gzip": a.gzip, "headers": a.headers})
        offset += len(a.body)
    head = json.dumps({"parts": entries}, separators=(",", ":")).encode("utf-8")
    return b"".join([VIEW_MAGIC, len(head).to_bytes(4, "little"), head, *(a.body for _, a in parts)])


def unbundle(data: bytes) -> dict[str, tuple[dict[str, str], bytes]]:
    """The parts of a :func:`bundle` by name: (headers, uncompressed bytes) (tests, clients)."""
    if data[:4] != VIEW_MAGIC:
        raise ValueError("not a rayrt view answer")
    n = int.from_bytes(data[4:8], "little")
    head = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for e in head["parts"]:
        raw = body[e["offset"] : e["offset"] + e["length"]]
        out[e["name"]] = (e["headers"], gzip.decompress(raw) if e["gzip"] else raw)
    return out


# ---------------------------------------------------------------------------- the viewer
class Viewer:
    """The viewer's data for one ingress replica: ``store`` read through a :class:`ByteLRU` of
    ``cache_mb`` MiB. Every method is safe to call from many threads at once."""

    def __init__(self, store: Store, cache_mb: float = 1024.0):
        self.store = store
        self.cache = ByteLRU(int(cache_mb * 2**20))
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rayrt-viewer")

    # ------------------------------------------------------------------ stored things, cached
    def _manifest(self, pid: str) -> StudyManifest:
        pid = check_id(pid, "patient")

        def load() -> StudyManifest:
            self.store.get_patient(pid)  # 404 for an unknown patient
            return self.store.read_model(f"patients/{pid}/study.json", StudyManifest)

        return self.cache.get(("manifest", pid), load, lambda m: 4096 + 200 * len(m.images))

    def _primary_sv(self, pid: str) -> StoredVolume:
        m = self._manifest(pid)
        if not m.images:
            raise InputError(f"patient {pid} has no image", kind="not_found", field="patient_id", status=404)
        return next((s for s in m.images if s.key == m.primary_series_uid), m.images[0])

    def _series_sv(self, pid: str, key: str | None) -> StoredVolume:
        if key is None or key == "":
            return self._primary_sv(pid)
        m = self._manifest(pid)
        for sv in m.images:
            if sv.key == key:
                return sv
        raise InputError(
            f"patient {pid} has no image series {key!r}; GET /patients/{pid}/viewer lists them",
            kind="not_found",
            field="series",
            status=404,
        )

    def _image(self, pid: str, sv: StoredVolume) -> Volume:
        """An image volume (a CT kept as int16 HU: half the memory, the same values after rounding)."""

        def load() -> Volume:
            a = self.store.read_array(f"patients/{pid}/{sv.file}")
            if _modality(sv) == "CT":
                a = _as_int16(a)
            return Volume(a, sv.grid, sv.quantity, {})

        return self.cache.get(("image", pid, sv.file), load, lambda v: int(v.array.nbytes))

    def _primary_grid(self, pid: str) -> Grid:
        g = self._primary_sv(pid).grid
        plane_axes(g, "axial")  # 422 for an oblique primary grid
        return g

    def _structures_key(self, pid: str) -> tuple[str, list[StoredMask]]:
        """(digest of structures.json, its entries): read on every call (the commit point of edits)."""
        raw = self.store.read_bytes(f"patients/{pid}/structures.json")
        digest = hashlib.sha1(raw).hexdigest()[:16]
        return digest, [StoredMask.model_validate(d) for d in json.loads(raw)]

    def _masks(self, pid: str) -> _MaskSet:
        pid = check_id(pid, "patient")
        self._manifest(pid)
        digest, stored = self._structures_key(pid)

        def load() -> _MaskSet:
            out = _MaskSet(key=digest)
            for sm in stored:  # one structure unpacked at a time: a 512 x 512 x 200 bool is 52 MB
                n = int(np.prod(sm.shape))
                bits = self.store.read_array(f"patients/{pid}/{sm.file}")
                full = np.unpackbits(bits, count=n).view(bool).reshape(sm.shape)
                out.masks.append(PackedMask.of(sm.structure, full))
            return out

        return self.cache.get(("masks", pid, digest), load, lambda s: s.nbytes)

    def _uploaded_dose(self, pid: str, n: int) -> tuple[StoredVolume, Volume]:
        m = self._manifest(pid)
        if not 0 <= n < len(m.doses):
            raise InputError(
                f"patient {pid} has no uploaded dose {n} (it has {len(m.doses)})",
                kind="not_found",
                field="dose",
                status=404,
            )
        sv = m.doses[n]

        def load() -> Volume:
            a = np.asarray(self.store.read_array(f"patients/{pid}/{sv.file}"), dtype=np.float32)
            return Volume(a, sv.grid, "dose_gy", {})

        return sv, self.cache.get(("udose", pid, sv.file), load, lambda v: int(v.array.nbytes))

    def _export(self, job_id: str) -> tuple[Any, ExportResult, str]:
        """(job, export summary, digest of summary.json); 409 while the job has no plans."""
        job = self.store.get_job(job_id)
        rel = self.store.stage_path(job.id, "export", "summary.json")
        try:
            raw = self.store.read_bytes(rel)
        except FileNotFoundError:
            raise InputError(
                f"job {job.id} is {job.state.value} and has no plans yet (export stage not finished)",
                kind="conflict",
                field="job_id",
                status=409,
            ) from None
        return job, ExportResult.model_validate_json(raw), hashlib.sha1(raw).hexdigest()[:16]

    def _plan_dose_file(self, job_id: str, summary: ExportResult, machine: str) -> str:
        """The job-relative result path of a released plan's RTDOSE; 404 for another machine."""
        for m in summary.machines:
            if m.machine != machine:
                continue
            if m.verdict == NOT_RELEASED:
                raise InputError(
                    f"the plan for {machine} was not released: it has no dose to show",
                    kind="not_found",
                    field="machine",
                    status=404,
                )
            return rtdose_result(machine)
        known = ", ".join(m.machine for m in summary.machines)
        raise InputError(
            f"job {job_id} has no plan for machine {machine!r} (plans: {known})",
            kind="not_found",
            field="machine",
            status=404,
        )

    def _plan_dose(self, job_id: str, machine: str) -> tuple[str, Volume]:
        """(cache key of the dose, the plan's RTDOSE as a Volume in Gy)."""
        job, summary, digest = self._export(job_id)
        rel = self._plan_dose_file(job.id, summary, machine)
        full = self.store.path("jobs", job.id, "stages", rel)
        info = self.store.fs.get_file_info(full)
        if info.type != pafs.FileType.File:
            raise InputError(f"job {job.id} has no result file {rel!r}", kind="not_found", field="machine", status=404)
        stamp = f"{digest}-{info.size}-{info.mtime_ns or 0}"

        def load() -> Volume:
            vol = read_rtdose(full) if self.store.local else read_rtdose_bytes(self.store.read_result(job.id, rel))
            return Volume(np.asarray(vol.array, dtype=np.float32), vol.grid, "dose_gy", {})

        key = f"{job.id}/{machine}/{stamp}"
        return key, self.cache.get(("pdose", key), load, lambda v: int(v.array.nbytes))

    # ------------------------------------------------------------------ JSON
    def _plane_infos(self, grid: Grid) -> list[PlaneInfo]:
        out = []
        for p in PLANES:
            ax = plane_axes(grid, p)
            rows, cols = plane_shape(grid, p)
            rmm, cmm = plane_pixel_mm(grid, p)
            n, r, c = ax.names
            out.append(
                PlaneInfo(
                    plane=p,
                    axis=n,
                    count=len(plane_index_range(grid, p)),
                    rows=rows,
                    cols=cols,
                    row_mm=rmm,
                    col_mm=cmm,
                    row_axis=r,
                    col_axis=c,
                    row_flip=ax.row_flip,
                    col_flip=ax.col_flip,
                    positions_mm=[round(plane_position_mm(grid, p, i), 3) for i in plane_index_range(grid, p)],
                )
            )
        return out

    def _series_info(self, pid: str, sv: StoredVolume, primary: bool) -> SeriesInfo:
        def load() -> list[WindowPreset]:
            return _windows(sv, self._image(pid, sv).array)

        windows = (
            [WindowPreset(name=n, width=w, level=c) for n, w, c in CT_WINDOWS]
            if _modality(sv) == "CT"
            else self.cache.get(("windows", pid, sv.file), load, lambda w: 1024)
        )
        return SeriesInfo(
            key=sv.key,
            modality=_modality(sv),
            units=_units(sv),
            description=str(sv.meta.get("series_description") or ""),
            primary=primary,
            dtype="int16" if _modality(sv) == "CT" else "float32",
            windows=windows,
        )

    def patient_info(self, patient_id: str) -> ViewerInfo:
        """The viewer's description of a stored patient (uploaded doses only)."""
        pid = check_id(patient_id, "patient")
        summary = self.store.get_patient(pid)
        grid = self._primary_grid(pid)
        primary = self._primary_sv(pid)
        m = self._manifest(pid)
        ms = self._masks(pid)  # the structures and their key from one reading of structures.json
        doses = []
        for n, sv in enumerate(m.doses):
            _, vol = self._uploaded_dose(pid, n)
            doses.append(
                DoseEntry(
                    id=f"upload:{n}",
                    label=str(sv.meta.get("description") or f"uploaded dose {n + 1}"),
                    kind="uploaded",
                    index=n,
                    max_gy=float(np.max(vol.array)) if vol.array.size else 0.0,
                    grid=sv.grid,
                    slices=f"/patients/{pid}/doses/{n}",
                )
            )
        return ViewerInfo(
            patient_id=pid,
            patient_name=summary.patient_name,
            grid=grid,
            planes=self._plane_infos(grid),
            series=[self._series_info(pid, sv, sv is primary) for sv in m.images],
            structures=[
                StructureInfo(
                    index=n,
                    name=pm.structure.name,
                    colour=pm.structure.colour,
                    kind=pm.structure.kind.value,
                    volume_cc=pm.structure.volume_cc,
                    box=pm.box if pm.box[1] > pm.box[0] else None,
                )
                for n, pm in enumerate(ms.masks)
            ],
            structure_version=summary.structure_version,
            structure_key=ms.key,
            doses=doses,
        )

    def job_info(self, job_id: str) -> ViewerInfo:
        """The patient's viewer description plus the job's plans' doses (standard first, then every
        released converted plan) and the order's prescription and dose levels."""
        job, summary, _ = self._export(job_id)
        info = self.patient_info(job.patient_id)
        plans = []
        for n, m in enumerate(summary.machines):
            if m.verdict == NOT_RELEASED or not any(f.startswith("RD") for f in m.files):
                continue
            _, vol = self._plan_dose(job.id, m.machine)
            plans.append(
                DoseEntry(
                    id=f"plan:{m.machine}",
                    label=("standard plan" if n == 0 else m.machine) + (f" ({m.verdict})" if m.verdict else ""),
                    kind="plan",
                    machine=m.machine,
                    standard=n == 0,
                    max_gy=float(np.max(vol.array)) if vol.array.size else 0.0,
                    grid=vol.grid,
                    slices=f"/jobs/{job.id}/plans/{m.machine}/dose",
                )
            )
        rx = job.order.prescription if job.order is not None else None
        return info.model_copy(
            update={
                "job_id": job.id,
                "doses": plans + info.doses,
                "prescription_gy": rx.total_dose_gy if rx else None,
                "prescription_target": rx.target if rx else None,
                "dose_levels": dict(job.order.dose_levels) if job.order is not None else {},
            }
        )

    # ------------------------------------------------------------------ binary slices
    def _answer(self, key: tuple, make: Callable[[], tuple[np.ndarray, str, dict[str, str]]]) -> SliceAnswer:
        """The cached gzip answer of ``key``; ``make()`` gives the picture ``[rows, cols]`` (or the
        bool stack ``[n, rows, cols]`` of a ``bits`` answer), its X-Dtype and extra headers."""

        def load() -> SliceAnswer:
            arr, dtype, extra = make()
            rows, cols = arr.shape[-2:]
            if dtype == "bits":
                raw = np.packbits(np.asarray(arr, dtype=bool).ravel()).tobytes()
            else:
                raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            headers = {"X-Rows": str(rows), "X-Cols": str(cols), "X-Dtype": dtype, **extra}
            packed = _gzip(raw)
            return SliceAnswer(packed, headers) if packed is not None else SliceAnswer(raw, headers, gzip=False)

        return self.cache.get(("answer", *key), load, lambda a: a.nbytes)

    def _plane_index(self, grid: Grid, plane: str, index: Any) -> tuple[Plane, int]:
        p = check_plane(plane)
        return p, _index(index, p, len(plane_index_range(grid, p)))

    def image_slice(self, patient_id: str, plane: str, index: Any, series: str | None = None) -> SliceAnswer:
        """Slice ``index`` of ``plane`` of an image series on the primary grid (int16 HU for CT)."""
        pid = check_id(patient_id, "patient")
        grid = self._primary_grid(pid)
        p, i = self._plane_index(grid, plane, index)
        sv = self._series_sv(pid, series)
        primary = self._primary_sv(pid)

        def make() -> tuple[np.ndarray, str, dict[str, str]]:
            vol = self._image(pid, sv)
            if sv.file == primary.file:
                a = plane_image(vol, p, i)
            else:
                a = resample_on_plane(vol, grid, p, i, fill=-1000.0 if _modality(sv) == "CT" else 0.0)
            ct = _modality(sv) == "CT"
            out = _as_int16(a) if ct else np.asarray(a, dtype=np.float32)
            return out, "int16" if ct else "float32", {"X-Plane": p, "X-Index": str(i), "X-Units": _units(sv)}

        return self._answer(("image", pid, sv.file, p, i), make)

    def mask_slice(self, patient_id: str, plane: str, index: Any) -> SliceAnswer:
        """Every structure's mask on slice ``index`` of ``plane``: bits of ``[n, rows, cols]``."""
        pid = check_id(patient_id, "patient")
        grid = self._primary_grid(pid)
        p, i = self._plane_index(grid, plane, index)
        ms = self._masks(pid)
        ax = plane_axes(grid, p)

        def make() -> tuple[np.ndarray, str, dict[str, str]]:
            rows, cols = plane_shape(grid, p)
            stack = np.zeros((len(ms.masks), rows, cols), dtype=bool)
            for n, pm in enumerate(ms.masks):
                if pm.shape != tuple(grid.shape):
                    continue  # a mask on another grid cannot be shown (never stored so)
                cut = pm.cut(ax.normal, i)
                stack[n] = cut[:: -1 if ax.row_flip else 1, :: -1 if ax.col_flip else 1]
            headers = {
                "X-Plane": p,
                "X-Index": str(i),
                "X-Structures": str(len(ms.masks)),
                "X-Structure-Key": ms.key,
            }
            return stack, "bits", headers

        return self._answer(("masks", pid, ms.key, p, i), make)

    def _dose_answer(self, key: str, vol: Volume, grid: Grid, p: Plane, i: int) -> SliceAnswer:
        def make() -> tuple[np.ndarray, str, dict[str, str]]:
            a = resample_on_plane(vol, grid, p, i, fill=0.0)
            return a, "float32", {"X-Plane": p, "X-Index": str(i), "X-Units": "Gy"}

        return self._answer(("dose", key, p, i), make)

    def uploaded_dose_slice(self, patient_id: str, n: Any, plane: str, index: Any) -> SliceAnswer:
        """An uploaded RTDOSE on slice ``index`` of ``plane`` of the primary grid (float32 Gy)."""
        pid = check_id(patient_id, "patient")
        grid = self._primary_grid(pid)
        p, i = self._plane_index(grid, plane, index)
        try:
            num = int(n)
        except (TypeError, ValueError):
            num = -1
        sv, vol = self._uploaded_dose(pid, num)
        return self._dose_answer(f"{pid}/{sv.file}", vol, grid, p, i)

    def plan_dose_slice(self, job_id: str, machine: str, plane: str, index: Any) -> SliceAnswer:
        """A job's plan dose (its exported RTDOSE) on slice ``index`` of ``plane`` (float32 Gy)."""
        job = self.store.get_job(job_id)
        grid = self._primary_grid(job.patient_id)
        p, i = self._plane_index(grid, plane, index)
        key, vol = self._plan_dose(job.id, machine)
        return self._dose_answer(key, vol, grid, p, i)

    def view(
        self,
        patient_id: str | None,
        plane: str,
        index: Any,
        series: str | None = None,
        doses: Any = (),
        job_id: str | None = None,
        also: Any = (),
    ) -> bytes:
        """One slice change in one answer (:func:`bundle`): parts ``image``, ``masks`` and one
        ``dose:<id>`` per entry of ``doses`` (``DoseEntry.id``: ``upload:<n>``, or with ``job_id``
        ``plan:<machine>``), the same bytes as the separate slice answers. ``also``: other slices
        changed by the same action (``"<plane>:<index>"``, e.g. a click in one view that moves the
        other two), their parts named ``<plane>@<index>/image`` ..., computed alongside."""
        if job_id is not None:
            patient_id = self.store.get_job(job_id).patient_id
        assert patient_id is not None
        ids = list(doses or [])
        if len(ids) > MAX_VIEW_DOSES:
            raise InputError(
                f"at most {MAX_VIEW_DOSES} doses in one view, got {len(ids)}", kind="request", field="dose", status=422
            )
        extra = [str(a) for a in (also or [])]
        if len(extra) > MAX_VIEW_ALSO or any(":" not in a for a in extra):
            raise InputError(
                f"'also' takes at most {MAX_VIEW_ALSO} slices written <plane>:<index>, got {extra}",
                kind="request",
                field="also",
                status=422,
            )
        pid: str = patient_id
        makers: list[tuple[str, Callable[[], SliceAnswer]]] = []
        for prefix, pl, ix in [("", plane, index)] + [(f"{a}/".replace(":", "@", 1), *a.split(":", 1)) for a in extra]:
            self._plane_index(self._primary_grid(pid), pl, ix)  # a bad plane or index: 422 before any work
            makers += self._view_makers(prefix, pid, pl, ix, series, ids, job_id)
        # the parts at once: resampling, packing and zlib release the GIL (a cold 512 x 512 slice
        # with a dose then takes about the time of its slowest part, not of all three)
        futures = [(name, self._pool.submit(make)) for name, make in makers]
        return bundle([(name, f.result()) for name, f in futures])

    def _view_makers(
        self, prefix: str, pid: str, plane: str, index: Any, series: str | None, ids: list, job_id: str | None
    ) -> list[tuple[str, Callable[[], SliceAnswer]]]:
        """The parts of one slice of a view answer, as (name, function making it)."""
        makers: list[tuple[str, Callable[[], SliceAnswer]]] = [
            (f"{prefix}image", partial(self.image_slice, pid, plane, index, series)),
            (f"{prefix}masks", partial(self.mask_slice, pid, plane, index)),
        ]
        for d in ids:
            kind, _, ref = str(d).partition(":")
            if kind == "upload":
                makers.append((f"{prefix}dose:{d}", partial(self.uploaded_dose_slice, pid, ref, plane, index)))
            elif kind == "plan" and job_id is not None:
                makers.append((f"{prefix}dose:{d}", partial(self.plan_dose_slice, job_id, ref, plane, index)))
            else:
                where = "GET /jobs/{id}/viewer" if job_id else "GET /patients/{id}/viewer"
                raise InputError(
                    f"unknown dose {d!r}: give the id of one of the doses {where} lists",
                    kind="not_found",
                    field="dose",
                    status=404,
                )
        return makers

    def masks_full(self, patient_id: str) -> list[tuple[Structure, np.ndarray]]:
        """Every structure's whole mask as the viewer holds it (tests, reports)."""
        return [(pm.structure, pm.full()) for pm in self._masks(patient_id).masks]
