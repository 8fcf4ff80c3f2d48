"""Arrays as bytes for the result store: ``.npy`` (one array) and ``.npz`` (named arrays),
never pickled, so a stored result can be read back without trusting it to run code."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["npy_bytes", "from_npy", "npz_bytes", "from_npz", "safe_name"]


def npy_bytes(a: np.ndarray) -> bytes:
    """One array as ``.npy`` bytes (C order)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def from_npy(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """Named arrays as ``.npz`` bytes (uncompressed)."""
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)  # plain numeric arrays only, as from_npz reads them
    return buf.getvalue()


def from_npz(b: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(b), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def safe_name(name: str) -> str:
    """``name`` reduced to letters, digits, ``-`` and ``_`` (a file name for a machine or structure)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
