"""Titans lmm: the neural memory alone as the sequence mixer (Titans sec. 4, 'LMM').

Sizes: tiny, small, 340m, 760m, 1.3b (the paper-scale shapes are for accelerators).
  python -m experiments.pretrain --config=experiments/configs/titans_lmm.py:tiny --workdir=DIR
"""
from experiments.configs import common

# Memory and attention settings; the chunk size is the memory's mini-batch b (sec. 3.2).
MODEL = dict(name="titans", variant="lmm", head_dim=0, window=64, segment_len=64,
             persistent_tokens=4, memory_depth=2, memory_expansion=2, chunk_size=16,
             momentum=True, decay=True, max_lr=0.1)
SIZES = {"tiny": dict(window=32, segment_len=32), "small": dict(window=128, segment_len=128),
         "340m": dict(window=512, segment_len=512, chunk_size=64),
         "760m": dict(window=512, segment_len=512, chunk_size=64),
         "1.3b": dict(window=512, segment_len=512, chunk_size=64)}


def get_config(arg: str | None = None):
  return common.lm_config(arg, MODEL, SIZES)
