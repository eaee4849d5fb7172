"""HOPE: self-modifying Titans memory + Continuum Memory System (Nested Learning sec. 8.3).

Sizes: tiny, small, 340m, 760m, 1.3b (the paper-scale shapes are for accelerators).
  python -m experiments.pretrain --config=experiments/configs/hope.py:tiny --workdir=DIR
"""
from experiments.configs import common

# Two chunk sizes for the self-modifying memories (sec. 8.2); CMS levels from high to low
# frequency, the last (None) changing only in the outer loop. The self-modifying memories'
# inner rule is DGD ('gd': plain gradient descent) with weight decay (inner_decay); the CMS
# levels learn from their own associative objective ('teach': the next-token gradient).
# kernel="pallas" runs the memories' chunk updates as Pallas kernels (for GPU and TPU;
# interpreted, slowly, on CPU).
MODEL = dict(name="hope", mixer="self_modifying", head_dim=0, chunk_size_memory=16,
             chunk_size_other=16, cms_chunk_sizes=(16, 64, None), cms_hidden=0,
             cms_inner_lr=1e-2, max_grad_norm=1.0, cms_max_grad_norm=8.0, window=0,
             rope_base=10_000.0, inner_rule="dgd", inner_decay=True, cms_signal="associative",
             kernel="xla")
SIZES = {
    "small": dict(cms_chunk_sizes=(32, 256, None)),
    "340m": dict(chunk_size_memory=64, cms_chunk_sizes=(64, 512, 2048, None)),
    "760m": dict(chunk_size_memory=64, cms_chunk_sizes=(64, 512, 2048, None)),
    "1.3b": dict(chunk_size_memory=64, cms_chunk_sizes=(64, 512, 2048, None)),
}


def get_config(arg: str | None = None):
  return common.lm_config(arg, MODEL, SIZES)
