"""The machine library: configs/machines/*.yaml, one validated MachineModel per file (cached)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from rayrt.domain.errors import InputError
from rayrt.domain.machine import MachineModel, load_machine

__all__ = ["config_dir", "list_machines", "get_machine", "machine_files"]


def config_dir() -> Path:
    """``$RAYRT_CONFIG_DIR`` if set, else ``<repo>/configs``."""
    env = os.environ.get("RAYRT_CONFIG_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "configs"


@lru_cache(maxsize=256)
def _file_name(path: str, mtime: float) -> str:
    """The ``name`` field of one machine YAML (file stem as fallback), cached until the file changes:
    machine files carry kernel tables, so parsing all of them on every lookup costs ~50 ms each."""
    import yaml

    p = Path(path)
    try:
        return str((yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("name", p.stem))
    except yaml.YAMLError as exc:
        raise InputError(f"machine file {p.name} is not valid YAML: {exc}", kind="machine", field=p.name) from None


def machine_files() -> dict[str, Path]:
    """Machine name -> YAML file. The name is the file's ``name`` field (file stem as fallback)."""
    out: dict[str, Path] = {}
    d = config_dir() / "machines"
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.y*ml")):
        out[_file_name(str(p), p.stat().st_mtime)] = p
    return out


def list_machines() -> list[str]:
    """Names of all machines in the library, sorted."""
    return sorted(machine_files())


@lru_cache(maxsize=64)
def _load(path: str, mtime: float) -> MachineModel:
    return load_machine(path)


def get_machine(name: str) -> MachineModel:
    """The validated MachineModel called ``name`` (cached until its file changes)."""
    files = machine_files()
    if name not in files:
        raise InputError(
            f"unknown machine {name!r}; available machines: {', '.join(sorted(files)) or '(none: no configs/machines/*.yaml)'}",
            kind="machine",
            field="machine",
            status=404,
        )
    p = files[name]
    return _load(str(p), p.stat().st_mtime)
