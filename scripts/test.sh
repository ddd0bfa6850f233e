#!/usr/bin/env bash
# Install cutfarm with its test extras into ./.venv and run lint, types and the test suite.
# Usage: ./scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/ruff check render cluster serve_app tests
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
