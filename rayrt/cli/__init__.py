"""The ``rayrt`` command line (Typer).

Each area registers its commands in its own module of this package; modules import heavy
libraries (numpy, pydicom, ray) inside the command functions so that ``rayrt --help`` is fast.
Every :class:`~rayrt.domain.errors.InputError` ends the command with exit code 2 and one
readable line on stderr.
"""

from __future__ import annotations

import sys

from rayrt.cli import commands as _commands  # noqa: F401  (registers every command)
from rayrt.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    from rayrt.cli.app import run

    sys.exit(run())
