#!/usr/bin/env bash
# Installs rayrt into ./.venv if needed, then runs the end-to-end demo on an embedded local Ray.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
exec rayrt demo "$@"
