#!/usr/bin/env bash
# Downloads, into .whl/, the wheels that the GPU machine's image lacks (it has Python 3.12,
# jax 0.11.2, flax, optax, orbax-checkpoint, chex and absl-py, not grain nor ml_collections).
# Run it here (it needs PyPI); then on the GPU machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
#     && PYTHONPATH=/tmp/site python3 -m experiments.accelerator_check --out=accelerator.json
set -euo pipefail
cd "$(dirname "$0")/.."
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl \
  grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 portpicker==1.6.0
ls .whl
