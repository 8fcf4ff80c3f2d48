#!/usr/bin/env bash
# Installs rayrt into ./.venv if needed (and, as root, the system packages some tests use:
# scripts/system_deps.sh), then runs the default test suite (slow tests excluded).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/system_deps.sh  # dicom3tools, chromium + chromium-driver (root with apt-get; else those tests skip)
exec python -m pytest -q "$@"
