#!/usr/bin/env bash
# Installs rayrt into ./.venv if needed, then runs the default test suite (slow tests excluded).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
exec python -m pytest -q "$@"
