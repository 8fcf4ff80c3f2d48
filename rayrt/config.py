"""Where rayrt's configuration lives: ``$RAYRT_CONFIG_DIR`` if set, else the repository's
``configs/`` (machines, planning and conversion defaults, service settings). No rayrt imports:
every package may read it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["config_dir"]


def config_dir() -> Path:
    """``$RAYRT_CONFIG_DIR`` if set, else ``<repo>/configs``."""
    env = os.environ.get("RAYRT_CONFIG_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "configs"
