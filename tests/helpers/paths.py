"""Where things are, independent of how deep a test module sits under tests/.

* ``TESTS``: the tests/ folder; ``REPO``: the repository root (configs/, deploy/, rayrt/);
* ``SHARED``: the shared data folder, ``$RAYRT_SHARED`` or ``../shared`` next to the repository;
  tests that need it skip with a message when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
SHARED = Path(os.environ.get("RAYRT_SHARED") or REPO.parent / "shared")
