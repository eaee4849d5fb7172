"""Titans mal: memory as a layer: the memory, then sliding-window attention (Titans sec. 4.3).

Sizes: tiny, small, 340m, 760m, 1.3b (the paper-scale shapes are for accelerators).
  python -m experiments.pretrain --config=experiments/configs/titans_mal.py:tiny --workdir=DIR
"""
from experiments.configs.titans_base import titans_config


def get_config(arg: str | None = None):
  return titans_config("mal", arg)
