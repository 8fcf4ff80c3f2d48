#!/usr/bin/env bash
# Installs rayrt into ./.venv if needed, then checks the code: ruff (lint, import order, line
# length <= 120, formatting) on rayrt/, tests/ and scripts/, and mypy on the core packages
# (the `files` list of [tool.mypy] in pyproject.toml). Exit non-zero on any finding.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
ruff check rayrt tests scripts
ruff format --check rayrt tests scripts
mypy
