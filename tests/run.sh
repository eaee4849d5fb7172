#!/usr/bin/env bash
# The whole test suite, twice: on python3 (3.11, jax 0.10.2, the newest jax for 3.11) and on
# Python 3.12 with the newest jax release, in the virtual environment .venv-newest/.
# Installs what the tests need first (Debian's Fashion-MNIST package, as root). CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 \
  || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)
python3 -m pip install -q -e '.[test]'
status=0
python3 -m pytest -q "$@" || status=$?

newest=$(ls -d "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1 || true)
[ -n "$newest" ] || newest=$(command -v python3.12 || true)
if [ -z "$newest" ]; then
  echo "tests/run.sh: no Python 3.12 found; the run with the newest jax is skipped" >&2
  exit "$status"
fi
[ -x .venv-newest/bin/python ] || "$newest" -m venv .venv-newest
.venv-newest/bin/python -m pip install -q --upgrade pip
.venv-newest/bin/python -m pip install -q --upgrade -e '.[test]' jax jaxlib
.venv-newest/bin/python -c 'import sys, jax; print(f"Python {sys.version.split()[0]}, jax {jax.__version__}")'
.venv-newest/bin/python -m pytest -q "$@" || status=$?
exit "$status"
