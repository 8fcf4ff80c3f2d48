"""The machine library: one validated :class:`~rayrt.domain.machine.MachineModel` per YAML file
of ``configs/machines`` (or ``$RAYRT_CONFIG_DIR/machines``), scanned, loaded and cached here for
the physics core, the service and the CLI alike.

* :mod:`rayrt.machines.loader` -- ``load_machine(path)``: one YAML file -> MachineModel
* :mod:`rayrt.machines.library` -- ``config_dir()``, ``machine_files()``, ``list_machines()``,
  ``get_machine(name)``, ``standard_machine_name()``, ``treatment_machine_names()``
"""

from rayrt.machines.library import (
    config_dir,
    get_machine,
    list_machines,
    machine_files,
    machines_dir,
    standard_machine_name,
    treatment_machine_names,
)
from rayrt.machines.loader import load_machine

__all__ = [
    "config_dir",
    "machines_dir",
    "machine_files",
    "list_machines",
    "get_machine",
    "standard_machine_name",
    "treatment_machine_names",
    "load_machine",
]
