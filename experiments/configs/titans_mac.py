"""Titans mac: memory as context: segments; retrieve, attend over [persistent | retrieved | segment], write, gate (Titans sec. 4.1).

Sizes: tiny, small, 340m, 760m, 1.3b (the paper-scale shapes are for accelerators).
  python -m experiments.pretrain --config=experiments/configs/titans_mac.py:tiny --workdir=DIR
"""
from experiments.configs.titans_base import titans_config


def get_config(arg: str | None = None):
  return titans_config("mac", arg)
