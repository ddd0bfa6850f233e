#!/usr/bin/env bash
# Install cutfarm with its test extras into ./.venv and run lint, types and the test suite.
# Usage: ./scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh ".[test]"
.venv/bin/ruff check render cluster serve_app tests
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
