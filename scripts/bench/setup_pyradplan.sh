#!/usr/bin/env bash
# Creates the separate benchmark environment ./.venv-bench holding pyRadPlan 0.5.0, the peer
# engine that scripts/bench/dose.py and scripts/bench/optimize.py compare rayrt against.
#
# pyRadPlan lives in its own venv so that its pins (pydantic==2.13.5, ...) never touch rayrt's
# .venv; the benchmark drives it through scripts/bench/pyradplan_runner.py in a subprocess with
# this venv's python, and each side writes JSON.
#
# Usage:  bash scripts/bench/setup_pyradplan.sh          (idempotent; ~1-2 min on first run)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv-bench"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.pyradplan-0.5.0-pymedphys-0.41.0-installed"
if [ ! -f "$STAMP" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # pyRadPlan 0.5.0 needs pydantic 2.13.5 (its model validators break on older 2.x).
    "$VENV/bin/python" -m pip install -q "pyradplan==0.5.0" "pydantic==2.13.5"
    # the peers of scripts/bench/gamma.py (pymedphys's gamma needs numba for speed)
    "$VENV/bin/python" -m pip install -q "pymedphys==0.41.0" numba
    "$VENV/bin/python" -c "import pyRadPlan, pydantic; print('pyRadPlan', getattr(pyRadPlan, '__version__', '0.5.0'), 'pydantic', pydantic.VERSION)"
    touch "$STAMP"
fi
echo "bench venv ready: $VENV/bin/python"
