"""Transformer baseline. Sizes: tiny (CPU minutes), small, 340m, 760m, 1.3b.

  python -m experiments.pretrain --config=experiments/configs/transformer.py:tiny --workdir=DIR

model.window > 0 gives the sliding-window Transformer baseline.
"""
from experiments.configs import common


def get_config(arg: str | None = None):
  return common.lm_config(arg, dict(name="transformer", head_dim=0, window=0, rope_base=10_000.0))
