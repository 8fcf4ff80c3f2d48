"""Errors that carry a message a person can act on.

Every error raised because of *input* (files, orders, requests) is an :class:`InputError`: the
CLI prints its message on one line and exits non-zero; the HTTP API answers 4xx with
``{"error": kind, "message": ..., "field": ...}``.
"""

from __future__ import annotations

from pydantic import ValidationError


class RayrtError(Exception):
    """Base class of rayrt's own errors."""


class InputError(RayrtError, ValueError):
    """Bad input: says what is wrong and how to fix it.

    ``kind`` is a short machine-readable label (``"dicom"``, ``"order"``, ``"zip"``...),
    ``field`` optionally names the offending field or file, ``status`` is the HTTP status the
    service answers with (400 bad request, 404 not found, 409 conflict, 422 invalid content).
    """

    def __init__(self, message: str, *, kind: str = "input", field: str | None = None, status: int = 400):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.field = field
        self.status = status

    def to_json(self) -> dict:
        body = {"error": self.kind, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


def first_error(exc: ValidationError) -> tuple[str, str]:
    """``(location, message)`` of the first error of a pydantic validation: the field path joined
    with dots ("" at the root) and pydantic's message, for one readable InputError line."""
    errors = exc.errors()
    if not errors:
        return "", str(exc)
    first = errors[0]
    return ".".join(str(p) for p in first.get("loc", ())), str(first.get("msg", ""))
