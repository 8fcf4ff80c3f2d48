#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs rayrt with its dev extras into it when pyproject.toml
# changed since the last install, then warms numba's kernel caches (`rayrt warmup`). Sourced by
# scripts/demo.sh and scripts/test.sh.
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
    # compile every numba kernel a plan uses into its cache (__pycache__ beside the sources), so the
    # first demo or job after installing is as fast as the second (rayrt.warmup); if it fails, the
    # install stands and the first run compiles the kernels instead
    "$ROOT/.venv/bin/rayrt" warmup || echo "warning: rayrt warmup failed; the first run compiles the numba kernels" >&2
    touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
