#!/usr/bin/env bash
# Install cutfarm into ./.venv and start the service (Ray, the HTTP API, the dashboard).
# Usage: ./scripts/serve.sh [--media-root DIR] [--host H] [--port P] [--token T]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh "."
exec .venv/bin/cutfarm serve "$@"
