"""HOPE-Attention: softmax attention + Continuum Memory System (Nested Learning sec. 8.3).

The HOPE config (experiments/configs/hope.py) with attention as the sequence mixer.
Sizes: tiny, small, 340m, 760m, 1.3b (the paper-scale shapes are for accelerators).
  python -m experiments.pretrain --config=experiments/configs/hope_attention.py:tiny --workdir=DIR
"""
from experiments.configs import hope


def get_config(arg: str | None = None):
  config = hope.get_config(arg)
  config.model.mixer = "attention"
  return config
