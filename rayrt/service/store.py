"""The durable store: patients, orders, jobs and stage results that survive a restart.

Everything lives under one root on a :class:`pyarrow.fs.FileSystem`: a local directory by
default (``LocalFileSystem``), or any URI that ``pyarrow.fs.FileSystem.from_uri`` understands
(``file:///srv/rayrt``, ``s3://bucket/prefix``, ``gs://bucket/prefix``), so that a cluster that
spans machines swaps the embedded directory for object storage without another code path.

Layout under the root::

    patients/<pid>/patient.json            PatientSummary (written last: the commit record)
    patients/<pid>/study.json              primary series, import warnings
    patients/<pid>/images/<n>.npy|.json    image arrays [k, j, i] + Grid/quantity/meta
    patients/<pid>/structures.json         [{structure, file, shape}] on the primary grid
    patients/<pid>/masks/<n>.npy           np.packbits of the flattened bool mask
    patients/<pid>/doses/<n>.npy|.json     dose arrays (Gy) + Grid
    patients/<pid>/plans/<n>-<name>        RTPLAN files as received
    jobs/<jid>/job.json                    the Job: its MedicalOrder and PlanningRequest, state, stage,
                                           progress, errors, times
    jobs/<jid>/stages/<stage>/...          each stage's results (JSON, .npy, CSV ...)
    quarantine/jobs/<jid>-<time>/          a job whose job.json could not be read, moved aside by the
                                           scheduler's recovery, with quarantine.json (why)
    staging/<token>/                       new patients being written (renamed into place)

Atomicity. On a local filesystem every file is written to ``.tmp-*`` beside its target,
fsync'ed, renamed over the target (``rename(2)`` is atomic) and the directory is fsync'ed, so a
reader sees either the old or the new complete file, never a partial one, even when the writer
is killed. On object storage a PUT becomes visible only when it completes, which gives the same
guarantee without the rename. A new patient is written whole into ``staging/`` and moved into
``patients/`` only on success (a directory rename locally; on object storage the files are
copied with ``patient.json`` last, and a patient exists only once its ``patient.json`` does), so
a failed import never changes anything already stored.

This module is plain Python (numpy, pyarrow, pydantic): no Ray, no HTTP.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import posixpath
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
import pyarrow.fs as pafs
from pydantic import BaseModel, Field, ValidationError

from rayrt.domain.errors import InputError
from rayrt.domain.job import Job
from rayrt.domain.patient import Structure
from rayrt.imaging.study import StructureMask, Study
from rayrt.imaging.volume import Grid, Volume
from rayrt.service.models import DoseInfo, PatientSummary, ResultFile, UnreadableJob
from rayrt.service.settings import load_settings

log = logging.getLogger("rayrt.service")

M = TypeVar("M", bound=BaseModel)

TMP_PREFIX = ".tmp-"
#: where unreadable job records are moved (:meth:`Store.quarantine_job`), and the note beside each
QUARANTINE = "quarantine/jobs"
QUARANTINE_NOTE = "quarantine.json"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# ---------------------------------------------------------------------------- manifests
class StoredVolume(BaseModel):
    """Sidecar JSON of one stored array volume."""

    file: str = Field(description="the .npy file, relative to the patient")
    key: str = Field(default="", description="series instance UID of an image, or a dose label")
    grid: Grid
    quantity: str = ""
    dtype: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)


class StoredMask(BaseModel):
    """One structure's packed voxel mask on the primary image grid."""

    structure: Structure
    file: str = Field(description="packed .npy file, relative to the patient")
    shape: tuple[int, int, int]


class StudyManifest(BaseModel):
    primary_series_uid: str | None = None
    study_instance_uid: str | None = None
    images: list[StoredVolume] = Field(default_factory=list)
    doses: list[StoredVolume] = Field(default_factory=list)
    plan_files: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------- helpers
def new_id() -> str:
    """A fresh 12-hex-digit id for patients (jobs use :class:`Job`'s own default)."""
    return uuid.uuid4().hex[:12]


def check_id(value: str, what: str) -> str:
    """Reject ids that could escape their folder (``..``, slashes) with a 404-style error."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or ".." in value:
        raise InputError(
            f"{what} id {value!r} is not a valid id (letters, digits, '-', '_', '.')",
            kind="not_found",
            field=f"{what}_id",
            status=404,
        )
    return value


def _json_safe(meta: dict) -> dict:
    """Keep only the metadata entries that survive a JSON round trip."""
    out = {}
    for k, v in (meta or {}).items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[str(k)] = v
    return out


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _fsync_path(path: str, directory: bool = False) -> None:
    """fsync a file or a directory (its entries). Any failure raises (the data may not be on disk),
    except a filesystem that does not support fsync on a directory at all (EINVAL)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (directory and exc.errno == errno.EINVAL):
            raise
    finally:
        os.close(fd)


def _make_dirs_durable(path: str) -> None:
    """Create ``path`` and any missing parents, each new directory fsynced into its parent
    (a directory that exists only in the page cache vanishes with its files on a power loss)."""
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:  # made meanwhile by another writer
            continue
        _fsync_path(os.path.dirname(d), directory=True)


def _safe_name(name: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name).strip("._") or "file"
    return base[:100]


# ---------------------------------------------------------------------------- the store
class Store:
    """Durable store rooted at a local directory or a pyarrow.fs URI.

    ``Store("./rayrt-data")``, ``Store("file:///srv/rayrt")``, ``Store("s3://bucket/rayrt")``, or
    ``Store(path, filesystem=fs)`` with an explicit :class:`pyarrow.fs.FileSystem`. A Store is
    cheap to create and picklable (it re-opens its filesystem), so actors receive it by value.
    """

    def __init__(self, location: str | os.PathLike, filesystem: pafs.FileSystem | None = None):
        location = os.fspath(location)
        if filesystem is not None:
            fs, root = filesystem, location
        elif "://" in location:
            try:
                fs, root = pafs.FileSystem.from_uri(location)
            except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for bad or unreachable URIs
                raise InputError(
                    f"cannot open store URI {location!r}: {exc}", kind="settings", field="data_dir"
                ) from None
        else:
            fs, root = pafs.LocalFileSystem(), os.path.abspath(location)
        self.location = location
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.local = isinstance(fs, pafs.LocalFileSystem)
        self.fs.create_dir(self.root, recursive=True)

    def __reduce__(self):
        return (Store, (self.location, self.fs))

    def __repr__(self) -> str:
        return f"Store({self.location!r})"

    # ------------------------------------------------------------------ low-level I/O
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` atomically (see module doc)."""
        self.write_stream(rel, io.BytesIO(data))

    def write_stream(self, rel: str, stream: BinaryIO, chunk_bytes: int = 1 << 20) -> None:
        """Copy a readable binary stream to ``rel`` atomically, ``chunk_bytes`` at a time (an upload
        is never held in memory whole)."""
        full = self.path(rel)
        parent = posixpath.dirname(full)

        def copy(out: Any) -> None:
            while chunk := stream.read(chunk_bytes):
                out.write(chunk)

        if not self.local:
            self.fs.create_dir(parent, recursive=True)
            with self.fs.open_output_stream(full) as out:  # object stores publish on close
                copy(out)
            return
        _make_dirs_durable(parent)
        tmp = posixpath.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(full)}")
        try:
            with self.fs.open_output_stream(tmp) as out:
                copy(out)
            _fsync_path(tmp)
            self.fs.move(tmp, full)  # rename(2): atomic replace
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except Exception:
                pass
            raise
        _fsync_path(parent, directory=True)

    def open_stream(self, rel: str) -> Any:
        """A readable binary stream of ``rel`` (``read(n)``, ``close()``; a context manager)."""
        return self.fs.open_input_stream(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            if not self.exists(rel):
                raise FileNotFoundError(rel) from None
            raise exc

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def write_json(self, rel: str, value: BaseModel | dict | list) -> None:
        if isinstance(value, BaseModel):
            text = value.model_dump_json(indent=1)
        else:
            text = json.dumps(value, indent=1, default=str)
        self.write_bytes(rel, text.encode("utf-8"))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_model(self, rel: str, model: type[M]) -> M:
        return model.model_validate_json(self.read_bytes(rel))

    def write_array(self, rel: str, array: np.ndarray) -> None:
        """Store an array as ``.npy`` (no pickles)."""
        self.write_bytes(rel, _npy_bytes(np.asarray(array)))

    def read_array(self, rel: str) -> np.ndarray:
        return np.load(io.BytesIO(self.read_bytes(rel)), allow_pickle=False)

    def list_files(self, rel: str, recursive: bool = True) -> list[tuple[str, int]]:
        """Files under ``rel`` as (path relative to ``rel``, size in bytes), temp files excluded."""
        base = self.path(rel)
        sel = pafs.FileSelector(base, recursive=recursive, allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.File or info.base_name.startswith(TMP_PREFIX):
                continue
            out.append((posixpath.relpath(info.path, base), int(info.size or 0)))
        return sorted(out)

    def list_dirs(self, rel: str) -> list[str]:
        sel = pafs.FileSelector(self.path(rel), recursive=False, allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory)

    def delete_dir(self, rel: str) -> None:
        try:
            self.fs.delete_dir(self.path(rel))
        except FileNotFoundError:
            pass

    def cleanup(self) -> int:
        """Remove leftovers of interrupted writes (``.tmp-*`` files, abandoned staging folders).

        Call it at service start, when no import is in flight. Returns how many were removed.
        """
        removed = 0
        for d in self.list_dirs("staging"):
            self.delete_dir(f"staging/{d}")
            removed += 1
        sel = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        for info in self.fs.get_file_info(sel):
            if info.type == pafs.FileType.File and info.base_name.startswith(TMP_PREFIX):
                self.fs.delete_file(info.path)
                removed += 1
        return removed

    # ------------------------------------------------------------------ patients
    def put_study(self, study: Any, patient_id: str | None = None) -> PatientSummary:
        """Store an imported study as a new patient and return its summary.

        ``study`` is a :class:`rayrt.imaging.study.Study`. Structure masks are stored on the
        primary image grid; volumes in cm³ are computed from the mask (voxel count x voxel
        volume) when the importer did not provide them. All files go to ``staging/`` first and
        move into ``patients/<id>`` only when complete.
        """
        pid = check_id(patient_id or new_id(), "patient")
        if self.exists(f"patients/{pid}/patient.json"):
            raise InputError(f"patient {pid} already exists", kind="conflict", field="patient_id", status=409)
        stage = f"staging/{pid}-{uuid.uuid4().hex[:8]}"
        try:
            summary = self._write_study(stage, pid, study)
            self._commit_dir(stage, f"patients/{pid}", last="patient.json")
        except BaseException:
            self.delete_dir(stage)
            raise
        return summary

    def _write_study(self, base: str, pid: str, study: Any) -> PatientSummary:
        primary: Volume = study.primary
        grid = primary.grid
        manifest = StudyManifest(
            warnings=list(getattr(study, "warnings", []) or []),
            study_instance_uid=getattr(study, "study_instance_uid", None),
        )
        images = dict(getattr(study, "images", {}) or {})
        primary_uid = getattr(study, "primary_uid", None) or next(
            (uid for uid, v in images.items() if v is primary), None
        )
        if primary_uid not in images:
            primary_uid = None
        if primary_uid is None:
            primary_uid = primary.meta.get("series_instance_uid") or (
                study.series[0].series_instance_uid if study.series else "primary"
            )
            images = {primary_uid: primary, **images}
        manifest.primary_series_uid = primary_uid
        for n, (uid, vol) in enumerate(images.items()):
            f = f"images/{n}.npy"
            self.write_array(f"{base}/{f}", vol.array)
            manifest.images.append(
                StoredVolume(
                    file=f,
                    key=str(uid),
                    grid=vol.grid,
                    quantity=vol.quantity,
                    dtype=str(vol.array.dtype),
                    meta=_json_safe(vol.meta),
                )
            )

        structures: list[Structure] = []
        masks: list[StoredMask] = []
        for n, sm in enumerate(getattr(study, "structures", []) or []):
            mask = np.asarray(sm.mask, dtype=bool)
            if mask.shape != tuple(grid.shape):
                raise InputError(
                    f"structure {sm.structure.name!r} mask shape {mask.shape} "
                    f"differs from the primary image {grid.shape}",
                    kind="dicom",
                    field="structures",
                    status=422,
                )
            nvox = int(np.count_nonzero(mask))
            s = sm.structure.model_copy(
                update={
                    "num_voxels": nvox,
                    "volume_cc": sm.structure.volume_cc
                    if sm.structure.volume_cc is not None
                    else nvox * grid.voxel_volume_cc,
                }
            )
            f = f"masks/{n}.npy"
            self.write_array(f"{base}/{f}", np.packbits(mask.ravel()))
            masks.append(StoredMask(structure=s, file=f, shape=mask.shape))
            structures.append(s)
        self.write_json(f"{base}/structures.json", [m.model_dump(mode="json") for m in masks])

        doses: list[DoseInfo] = []
        for n, dose in enumerate(getattr(study, "doses", []) or []):
            f = f"doses/{n}.npy"
            arr = np.asarray(dose.array, dtype=np.float32)
            self.write_array(f"{base}/{f}", arr)
            manifest.doses.append(
                StoredVolume(
                    file=f,
                    key=str(dose.meta.get("sop_instance_uid", n)),
                    grid=dose.grid,
                    quantity=dose.quantity or "dose_gy",
                    dtype=str(arr.dtype),
                    meta=_json_safe(dose.meta),
                )
            )
            doses.append(
                DoseInfo(
                    index=n,
                    grid=dose.grid,
                    max_dose_gy=float(arr.max()) if arr.size else 0.0,
                    description=str(dose.meta.get("description", "")),
                )
            )

        for n, pf in enumerate(getattr(study, "plan_files", []) or []):
            p = Path(pf)
            if p.is_file():
                f = f"plans/{n}-{_safe_name(p.name)}"
                self.write_bytes(f"{base}/{f}", p.read_bytes())
                manifest.plan_files.append(f)
        self.write_json(f"{base}/study.json", manifest)

        summary = PatientSummary(
            id=pid,
            patient_id=str(getattr(study, "patient_id", "") or ""),
            patient_name=str(getattr(study, "patient_name", "") or ""),
            frame_of_reference_uid=getattr(study, "frame_of_reference_uid", None),
            series=list(getattr(study, "series", []) or []),
            structures=structures,
            primary_series_uid=primary_uid,
            doses=doses,
            plan_files=manifest.plan_files,
            warnings=manifest.warnings,
        )
        self.write_json(f"{base}/patient.json", summary)
        return summary

    def _commit_dir(self, src: str, dest: str, last: str) -> None:
        """Move a fully written folder into place; on object storage copy it with ``last`` last."""
        if self.exists(dest):
            raise InputError(f"{dest} already exists in the store", kind="conflict", status=409)
        if self.local:
            _make_dirs_durable(posixpath.dirname(self.path(dest)))
            self.fs.move(self.path(src), self.path(dest))
            _fsync_path(posixpath.dirname(self.path(dest)), directory=True)
            return
        files = [f for f, _ in self.list_files(src)]
        for f in sorted(files, key=lambda f: f == last):
            self.fs.copy_file(self.path(src, f), self.path(dest, f))
        self.delete_dir(src)

    def list_patients(self) -> list[str]:
        return [p for p in self.list_dirs("patients") if self.exists(f"patients/{p}/patient.json")]

    def get_patient(self, patient_id: str) -> PatientSummary:
        pid = check_id(patient_id, "patient")
        try:
            return self.read_model(f"patients/{pid}/patient.json", PatientSummary)
        except FileNotFoundError:
            raise InputError(
                f"no patient with id {pid!r}; upload it first with POST /patients (rayrt submit)",
                kind="not_found",
                field="patient_id",
                status=404,
            ) from None

    def _manifest(self, pid: str) -> StudyManifest:
        self.get_patient(pid)
        return self.read_model(f"patients/{pid}/study.json", StudyManifest)

    def _volume(self, pid: str, sv: StoredVolume) -> Volume:
        return Volume(self.read_array(f"patients/{pid}/{sv.file}"), sv.grid, sv.quantity, sv.meta)

    def load_images(self, patient_id: str) -> dict[str, Volume]:
        """All image volumes by series instance UID (the primary first)."""
        m = self._manifest(patient_id)
        return {sv.key: self._volume(patient_id, sv) for sv in m.images}

    def load_primary(self, patient_id: str) -> Volume:
        m = self._manifest(patient_id)
        sv = next((s for s in m.images if s.key == m.primary_series_uid), m.images[0])
        return self._volume(patient_id, sv)

    def load_masks(self, patient_id: str) -> list[tuple[Structure, np.ndarray]]:
        """Every structure with its bool mask ``[k, j, i]`` on the primary grid."""
        pid = check_id(patient_id, "patient")
        stored = [StoredMask.model_validate(d) for d in self.read_json(f"patients/{pid}/structures.json")]
        out = []
        for sm in stored:
            n = int(np.prod(sm.shape))
            bits = self.read_array(f"patients/{pid}/{sm.file}")
            out.append((sm.structure, np.unpackbits(bits, count=n).astype(bool).reshape(sm.shape)))
        return out

    def load_doses(self, patient_id: str) -> list[Volume]:
        m = self._manifest(patient_id)
        return [self._volume(patient_id, sv) for sv in m.doses]

    def load_study(self, patient_id: str) -> Study:
        """Rebuild the :class:`rayrt.imaging.study.Study` of a stored patient."""
        summary = self.get_patient(patient_id)
        m = self._manifest(patient_id)
        images = self.load_images(patient_id)
        primary_uid = m.primary_series_uid if m.primary_series_uid in images else next(iter(images))
        return Study(
            patient_id=summary.patient_id,
            patient_name=summary.patient_name,
            study_instance_uid=m.study_instance_uid,
            frame_of_reference_uid=summary.frame_of_reference_uid,
            series=list(summary.series),
            images=images,
            primary_uid=primary_uid,
            structures=[StructureMask(structure=s, mask=mask) for s, mask in self.load_masks(patient_id)],
            doses=self.load_doses(patient_id),
            plan_files=[Path(self.path("patients", patient_id, f)) for f in m.plan_files] if self.local else [],
            warnings=list(m.warnings),
            source=None,
        )

    # ------------------------------------------------------------------ jobs
    def create_job(self, job: Job) -> Job:
        """Store a new job: ``job.json`` (with its order and planning request); the job exists once that does."""
        jid = check_id(job.id, "job")
        if self.exists(f"jobs/{jid}/job.json"):
            raise InputError(f"job {jid} already exists", kind="conflict", field="job_id", status=409)
        self.write_json(f"jobs/{jid}/job.json", job)
        return job

    def save_job(self, job: Job) -> None:
        self.write_json(f"jobs/{check_id(job.id, 'job')}/job.json", job)

    def get_job(self, job_id: str) -> Job:
        jid = check_id(job_id, "job")
        try:
            return self.read_model(f"jobs/{jid}/job.json", Job)
        except FileNotFoundError:
            raise InputError(f"no job with id {jid!r}", kind="not_found", field="job_id", status=404) from None

    def scan_jobs(self) -> tuple[list[Job], list[UnreadableJob]]:
        """Every readable job, oldest first, and every job record that could not be read (a damaged
        or unreadable ``job.json``, or one written by an incompatible rayrt) with the reason; the
        quarantined ones (:meth:`quarantine_job`) are listed too. A folder without ``job.json``
        (creation interrupted) is neither."""
        jobs, bad = [], []
        for jid in self.list_dirs("jobs"):
            try:
                jobs.append(self.get_job(jid))
            except InputError:
                continue
            except (ValidationError, ValueError, OSError) as exc:
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                log.warning("store: jobs/%s/job.json is not a readable job: %s", jid, reason)
                bad.append(UnreadableJob(job_id=jid, reason=reason))
        for name in self.list_dirs(QUARANTINE):
            try:
                bad.append(self.read_model(f"{QUARANTINE}/{name}/{QUARANTINE_NOTE}", UnreadableJob))
            except (ValidationError, ValueError, OSError):
                bad.append(UnreadableJob(job_id=name, reason="quarantined", quarantined_to=f"{QUARANTINE}/{name}"))
        return sorted(jobs, key=lambda j: j.created_at), bad

    def list_jobs(self) -> list[Job]:
        """Every readable job, oldest first (:meth:`scan_jobs` also names the unreadable ones)."""
        return self.scan_jobs()[0]

    def quarantine_job(self, bad: UnreadableJob) -> UnreadableJob:
        """Move an unreadable job's folder out of ``jobs/`` into ``quarantine/jobs/<id>-<time>/`` with
        a note of why, so that it never blocks recovery again and nothing of it is lost."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        dest = f"{QUARANTINE}/{check_id(bad.job_id, 'job')}-{stamp}"
        note = bad.model_copy(update={"quarantined_to": dest})
        if self.local:
            _make_dirs_durable(self.path(QUARANTINE))
            self.fs.move(self.path("jobs", bad.job_id), self.path(dest))
            _fsync_path(self.path(QUARANTINE), directory=True)
        else:
            for f, _ in self.list_files(f"jobs/{bad.job_id}"):
                self.fs.copy_file(self.path("jobs", bad.job_id, f), self.path(dest, f))
            self.delete_dir(f"jobs/{bad.job_id}")
        self.write_json(f"{dest}/{QUARANTINE_NOTE}", note)
        log.error("store: job %s quarantined to %s: %s", bad.job_id, dest, bad.reason)
        return note

    # ------------------------------------------------------------------ stage results
    def stage_path(self, job_id: str, stage: str, name: str = "") -> str:
        check_id(job_id, "job")
        if not _ID_RE.fullmatch(stage):
            raise ValueError(f"bad stage name {stage!r}")
        return (
            posixpath.join("jobs", job_id, "stages", stage, name)
            if name
            else posixpath.join("jobs", job_id, "stages", stage)
        )

    def put_stage_json(self, job_id: str, stage: str, name: str, value: BaseModel | dict | list) -> None:
        self.write_json(self.stage_path(job_id, stage, name), value)

    def put_stage_array(self, job_id: str, stage: str, name: str, array: np.ndarray) -> None:
        self.write_array(self.stage_path(job_id, stage, name), array)

    def put_stage_bytes(self, job_id: str, stage: str, name: str, data: bytes) -> None:
        self.write_bytes(self.stage_path(job_id, stage, name), data)

    def get_stage_json(self, job_id: str, stage: str, name: str) -> Any:
        return self.read_json(self.stage_path(job_id, stage, name))

    def get_stage_model(self, job_id: str, stage: str, name: str, model: type[M]) -> M:
        """A stage's stored JSON file read back as its pydantic model."""
        return self.read_model(self.stage_path(job_id, stage, name), model)

    def has_stage_file(self, job_id: str, stage: str, name: str) -> bool:
        return self.exists(self.stage_path(job_id, stage, name))

    def list_results(self, job_id: str) -> list[ResultFile]:
        self.get_job(job_id)
        out = []
        for rel, size in self.list_files(f"jobs/{job_id}/stages"):
            stage = rel.split("/", 1)[0]
            out.append(ResultFile(stage=stage, path=rel, size_bytes=size, url=f"/jobs/{job_id}/results/{rel}"))
        return out

    def read_result(self, job_id: str, rel: str) -> bytes:
        """Bytes of one result file; ``rel`` as listed by :meth:`list_results` (no escaping the job)."""
        self.get_job(job_id)
        parts = [p for p in rel.split("/") if p]
        if not parts or any(p in {".", ".."} or p.startswith(TMP_PREFIX) for p in parts):
            raise InputError(f"bad result path {rel!r}", kind="not_found", field="path", status=404)
        try:
            return self.read_bytes(posixpath.join("jobs", job_id, "stages", *parts))
        except (FileNotFoundError, IsADirectoryError):
            raise InputError(
                f"job {job_id} has no result file {rel!r}; list them with GET /jobs/{job_id}/results",
                kind="not_found",
                field="path",
                status=404,
            ) from None
        except OSError:
            raise InputError(
                f"job {job_id} has no result file {rel!r}", kind="not_found", field="path", status=404
            ) from None


def open_store(location: str | os.PathLike | None = None) -> Store:
    """The store of the current settings (``$RAYRT_DATA_DIR``, configs/service.yaml, ./rayrt-data)."""
    if location is None:
        location = load_settings().data_dir
    return Store(location)
