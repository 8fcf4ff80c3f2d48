"""De-identified downloads (``?deidentify=true``, ``rayrt results --deidentify``): the key and the files.

Every file of one patient (each job's RTPLAN, RTDOSE, RTSTRUCT and JSON results, and the patient's
RTSTRUCT) is de-identified with one key, ``HMAC-SHA256(service secret, "patient:" + id)``
(:mod:`rayrt.imaging.deidentify`): the UIDs and the pseudonym agree across files and downloads of
that patient, and nothing links them to another patient's or to the originals without the
service's secret (``auth/deidentify.key`` in the store, 32 random bytes made on first use).
DICOM files get the PS3.15 Basic Profile; rayrt's JSON results their patient ids, names and UIDs
replaced the same way; other files (DVH CSV: structure names and doses) are returned as they are.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

from rayrt.imaging.deidentify import deidentify_bytes, deidentify_json

__all__ = ["deidentify_file", "patient_key"]

SECRET_FILE = "auth/deidentify.key"


def _secret(store: object) -> bytes:
    try:
        return bytes.fromhex(store.read_bytes(SECRET_FILE).decode("ascii").strip())  # type: ignore[attr-defined]
    except FileNotFoundError:
        store.write_bytes(SECRET_FILE, secrets.token_hex(32).encode("ascii"))  # type: ignore[attr-defined]
        return bytes.fromhex(store.read_bytes(SECRET_FILE).decode("ascii").strip())  # type: ignore[attr-defined]


def patient_key(store: object, patient_id: str) -> bytes:
    """The de-identification key of one patient's files."""
    return hmac.new(_secret(store), f"patient:{patient_id}".encode("utf-8"), hashlib.sha256).digest()


def deidentify_file(name: str, data: bytes, key: bytes) -> bytes:
    """One result file, de-identified by its kind (``.dcm``: DICOM; ``.json``: rayrt JSON; else as is)."""
    lower = name.lower()
    if lower.endswith(".dcm"):
        return deidentify_bytes(data, key)
    if lower.endswith(".json"):
        return json.dumps(deidentify_json(json.loads(data), key), indent=1).encode("utf-8")
    return data
