"""Titans mag: memory as a gate: sliding-window attention and the memory in parallel, gated (Titans sec. 4.2).

Sizes: tiny, small, 340m, 760m, 1.3b (the paper-scale shapes are for accelerators).
  python -m experiments.pretrain --config=experiments/configs/titans_mag.py:tiny --workdir=DIR
"""
from experiments.configs.titans_base import titans_config


def get_config(arg: str | None = None):
  return titans_config("mag", arg)
