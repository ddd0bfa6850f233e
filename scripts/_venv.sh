# Sourced by the other scripts: make ./.venv and install the project into it.
# $1: the pip requirement for this repo ("." or ".[test]").
# pip runs again only when pyproject.toml changed since the last install of that
# requirement (or of ".[test]", which holds everything "." does): a start takes no 4 s.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
_cutfarm_want="$1 $(sha256sum pyproject.toml | cut -d' ' -f1)"
_cutfarm_full=".[test] ${_cutfarm_want#* }"
_cutfarm_have=$(cat .venv/.cutfarm-installed 2>/dev/null || true)
if [ "$_cutfarm_have" != "$_cutfarm_want" ] && [ "$_cutfarm_have" != "$_cutfarm_full" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e "$1"
  echo "$_cutfarm_want" > .venv/.cutfarm-installed
fi
unset _cutfarm_want _cutfarm_full _cutfarm_have
