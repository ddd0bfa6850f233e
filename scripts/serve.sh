#!/usr/bin/env bash
# Install cutfarm into ./.venv and start the service (Ray, the HTTP API, the dashboard).
# Usage: ./scripts/serve.sh [--media-root DIR] [--host H] [--port P] [--token T]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/cutfarm serve "$@"
