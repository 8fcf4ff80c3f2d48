"""Patient intake: uploaded files (a zip or DICOM files) -> imported study -> durable store.

Uploads land in a private temporary folder (never in the store); zips are extracted with the
zip-slip-safe :func:`rayrt.imaging.archive.safe_extract_zip`; the folder is imported with
:func:`rayrt.imaging.study.load_study`, which raises :class:`InputError` for anything wrong
with the images (no DICOM, a missing slice, a foreign frame of reference ...). Only a study
that imports cleanly is stored, through :meth:`Store.put_study` (staging folder + rename), so a
bad upload never changes what is stored.

Plain Python: the ingress calls it in a worker thread; tests call it directly.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterable

from rayrt.domain.errors import InputError
from rayrt.imaging.archive import safe_extract_zip
from rayrt.imaging.study import load_study
from rayrt.service.models import PatientSummary
from rayrt.service.store import Store, _safe_name

log = logging.getLogger("rayrt.service")

_CHUNK = 1 << 20


def _is_zip(path: Path) -> bool:
    """A zip archive (starts with a local-file or empty-archive header), not a DICOM file whose
    pixel data happens to contain an end-of-central-directory signature."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head in (b"PK\x03\x04", b"PK\x05\x06") and zipfile.is_zipfile(path)


def save_uploads(files: Iterable[tuple[str, BinaryIO]], dest: Path, max_files: int = 20000) -> Path:
    """Write uploaded ``(filename, stream)`` pairs under ``dest/files``; extract zips in place.

    File names are reduced to a safe base name with a numeric prefix (no client path is ever
    used). Returns the folder to import. Raises InputError for an empty upload, and 413 for more
    than ``max_files`` files, the members of its zips included (counted before any is extracted).
    """
    root = dest / "files"
    root.mkdir(parents=True)
    count, total = 0, 0
    for n, (name, stream) in enumerate(files):
        if n >= max_files:
            raise InputError(
                f"too many files in one upload (more than {max_files}); send a zip instead",
                kind="upload",
                field="files",
                status=413,
            )
        slot = root / f"{n:05d}"  # one folder per upload keeps the client's base name, never its path
        slot.mkdir()
        target = slot / _safe_name(name or "upload")
        with open(target, "wb") as out:
            size = 0
            while chunk := stream.read(_CHUNK):
                out.write(chunk)
                size += len(chunk)
        count += 1
        total += size
        if size == 0:
            target.unlink()
            continue
        if _is_zip(target):  # its members count against the upload's file limit, checked before extracting
            extracted = safe_extract_zip(target, slot / "unzipped", max_files=max(max_files - count, 0))
            count += len(extracted)
            target.unlink()
    if count == 0 or total == 0 or not any(p.is_file() for p in root.rglob("*")):
        raise InputError(
            "the upload is empty: send a zip of the patient's DICOM folder or the DICOM files themselves "
            "(multipart field 'files')",
            kind="upload",
            field="files",
            status=400,
        )
    return root


def upload_digest(files: Iterable[tuple[str, BinaryIO]]) -> str:
    """SHA-256 over the uploaded files' names and bytes (each file left at its start): what an
    idempotency key's request is compared by (rayrt.service.idempotency)."""
    h = hashlib.sha256()
    for name, fh in files:
        h.update(name.encode("utf-8", "replace") + b"\0")
        fh.seek(0)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
        fh.seek(0)
        h.update(b"\0")
    return h.hexdigest()


def import_upload(
    store: Store, files: Iterable[tuple[str, BinaryIO]], max_files: int = 20000, patient_id: str | None = None
) -> PatientSummary:
    """Import uploaded DICOM (files or zips) and store it as a new patient; returns its summary."""
    tmp = Path(tempfile.mkdtemp(prefix="rayrt-upload-"))
    try:
        folder = save_uploads(files, tmp, max_files)
        try:
            study = load_study(folder)
        except InputError as exc:
            if exc.field and str(tmp) in exc.field:  # name the client's file, not our temp path
                exc.field = Path(exc.field).name
            raise
        except Exception as exc:  # a reader that choked on client data: still the client's input
            log.warning("import failed on unexpected error", exc_info=True)
            raise InputError(
                f"could not import the upload as a DICOM study: {type(exc).__name__}: {exc}",
                kind="dicom",
                field="files",
                status=422,
            ) from None
        return store.put_study(study, patient_id=patient_id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def import_path(store: Store, path: str | Path) -> PatientSummary:
    """Import a local DICOM folder or zip (``rayrt`` local use and tests)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist", kind="upload", field="path", status=404)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())

        def streams():
            for p in files:
                with open(p, "rb") as h:
                    yield str(p.relative_to(path)), h

        return import_upload(store, streams(), max_files=max(20000, len(files) + 1))
    with open(path, "rb") as h:
        return import_upload(store, [(path.name, h)])
