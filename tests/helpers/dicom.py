"""DICOM validation with dicom3tools' ``dciodvfy`` (tests that use it skip when it is not installed).

dicom3tools (Debian 1.00~20220618) does not know the dual-layer MLC device types that Varian
Halcyon RTPLANs use (MLCX1 distal, MLCX2 proximal); its only complaint about them is this one,
exactly for those two values (see rayrt.imaging.rtplan). Every other error still fails.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

DUAL_LAYER_ENUM = ("Unrecognized enumerated value = <MLCX1>", "Unrecognized enumerated value = <MLCX2>")


def dciodvfy_errors(path: Path, *, allow_dual_layer_types: bool = False) -> list[str]:
    """The ``Error`` lines of ``dciodvfy -new path`` (optionally without the dual-layer device-type ones)."""
    proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    if allow_dual_layer_types:
        errors = [
            ln for ln in errors if not (ln.endswith(DUAL_LAYER_ENUM) and "RTBeamLimitingDeviceType(300a,00b8)" in ln)
        ]
    return errors
