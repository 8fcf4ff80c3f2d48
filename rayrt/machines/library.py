"""The machine library: ``<config dir>/machines/*.yaml`` scanned by name, each file parsed once
per version (cached on path and modification time: machine files carry kernel tables, so parsing
all of them on every lookup would cost ~50 ms each).

The config dir is ``$RAYRT_CONFIG_DIR`` if set, else the repository's ``configs/``. Every
function takes an optional ``folder`` (a machines folder) for a library kept elsewhere.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from rayrt.config import config_dir
from rayrt.domain.errors import InputError
from rayrt.domain.machine import MachineModel
from rayrt.machines.loader import load_machine, read_machine_name

__all__ = [
    "config_dir",
    "machines_dir",
    "machine_files",
    "list_machines",
    "get_machine",
    "standard_machine_name",
    "treatment_machine_names",
]


def machines_dir() -> Path:
    """The default machines folder: ``config_dir() / "machines"``."""
    return config_dir() / "machines"


@lru_cache(maxsize=256)
def _file_header(path: str, mtime: float) -> tuple[str, bool]:
    return read_machine_name(path)


def _headers(folder: str | os.PathLike | None) -> dict[str, tuple[Path, bool]]:
    d = Path(folder) if folder is not None else machines_dir()
    out: dict[str, tuple[Path, bool]] = {}
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.y*ml")):
        name, standard = _file_header(str(p), p.stat().st_mtime)
        out[name] = (p, standard)
    return out


def machine_files(folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """Machine name -> YAML file. The name is the file's ``name`` field (file stem as fallback)."""
    return {n: p for n, (p, _) in _headers(folder).items()}


def list_machines(folder: str | os.PathLike | None = None) -> list[str]:
    """Names of all machines in the library, sorted (the standard machine included)."""
    return sorted(_headers(folder))


def treatment_machine_names(folder: str | os.PathLike | None = None, include_standard: bool = False) -> list[str]:
    """Names of the treatment machines, sorted: the vendor-neutral standard machine is not one and
    is left out unless ``include_standard``."""
    return sorted(n for n, (_, standard) in _headers(folder).items() if include_standard or not standard)


@lru_cache(maxsize=64)
def _load(path: str, mtime: float) -> MachineModel:
    return load_machine(path)


def get_machine(name: str, folder: str | os.PathLike | None = None) -> MachineModel:
    """The validated MachineModel called ``name`` (cached until its file changes; InputError 404
    naming the available machines when there is none)."""
    files = machine_files(folder)
    if name not in files:
        raise InputError(
            f"unknown machine {name!r}; "
            f"available machines: {', '.join(sorted(files)) or '(none: no configs/machines/*.yaml)'}",
            kind="machine",
            field="machine",
            status=404,
        )
    p = files[name]
    return _load(str(p), p.stat().st_mtime)


def standard_machine_name(folder: str | os.PathLike | None = None) -> str:
    """The library's vendor-neutral standard machine (the one with ``standard: true``)."""
    for n, (_, standard) in sorted(_headers(folder).items()):
        if standard:
            return n
    raise InputError(
        "no standard machine in configs/machines (a MachineModel with standard: true); name one in standard_machine",
        kind="machine",
        field="standard_machine",
    )
