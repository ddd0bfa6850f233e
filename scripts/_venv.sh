# Sourced by the other scripts: make ./.venv and install the project into it.
# $1: the pip requirement for this repo ("." or ".[test]").
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e "$1"
