#!/usr/bin/env bash
# Runs a command (e.g. `python -m pytest -q`) in .venv-newest/: Python 3.12 from pyenv (or on
# PATH) with this project and the newest jax release, built or upgraded first. Without a
# Python 3.12 it says so and exits 0. Part of the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
newest=$(ls -d "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1 || true)
[ -n "$newest" ] || newest=$(command -v python3.12 || true)
if [ -z "$newest" ]; then
  echo "tests/with_newest_jax.sh: no Python 3.12 found; skipped: $*" >&2
  exit 0
fi
[ -x .venv-newest/bin/python ] || "$newest" -m venv .venv-newest
.venv-newest/bin/python -m pip install -q --upgrade pip
.venv-newest/bin/python -m pip install -q --upgrade -e '.[test]' jax jaxlib
.venv-newest/bin/python -c 'import sys, jax; print(f"Python {sys.version.split()[0]}, jax {jax.__version__}")'
exec .venv-newest/bin/"$@"
