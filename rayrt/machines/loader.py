"""One machine YAML file -> a validated :class:`~rayrt.domain.machine.MachineModel`."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from rayrt.domain.errors import InputError, first_error
from rayrt.domain.machine import MachineModel

__all__ = ["load_machine", "read_machine_name"]


def load_machine(path: str | Path) -> MachineModel:
    """Load and validate one machine YAML file (InputError naming the first bad field)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(
            f"machine file {path.name} is not valid YAML: {exc}", kind="machine", field=path.name
        ) from None
    try:
        return MachineModel.model_validate(data)
    except ValidationError as exc:
        loc, msg = first_error(exc)
        raise InputError(f"invalid machine file {path.name}: field '{loc}': {msg}", kind="machine", field=loc) from None


def read_machine_name(path: str | Path) -> tuple[str, bool]:
    """``(name, standard)`` of one machine YAML without validating it: the ``name`` field (the
    file stem when absent) and the ``standard`` flag."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"machine file {p.name} is not valid YAML: {exc}", kind="machine", field=p.name) from None
    if not isinstance(data, dict):
        raise InputError(f"machine file {p.name} is not a mapping", kind="machine", field=p.name)
    return str(data.get("name", p.stem)), bool(data.get("standard", False))
