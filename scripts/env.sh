#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs rayrt with its dev extras into it when pyproject.toml
# changed since the last install. Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    "$PY" -m venv "$ROOT/.venv"
fi
STAMP="$ROOT/.venv/.rayrt-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip
    "$ROOT/.venv/bin/python" -m pip install -q -e "$ROOT[dev]"
    touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
