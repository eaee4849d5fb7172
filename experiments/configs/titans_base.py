"""What the four Titans configs (titans_lmm, titans_mac, titans_mag, titans_mal) share."""
from experiments.configs import common

# Memory and attention settings; the chunk size is the memory's mini-batch b (sec. 3.2).
# max_lr 0.01 (not 0.1): see hope/neural_memory.py; tests/experiments/test_configs_train.py
# checks that the forward pass stays finite on real text at the tiny size. kernel="pallas"
# runs the memory's chunks as Pallas kernels (for GPU and TPU; interpreted, slowly, on CPU).
MODEL = dict(name="titans", head_dim=0, window=64, segment_len=64, persistent_tokens=4,
             memory_depth=2, memory_expansion=2, chunk_size=16, momentum=True, decay=True,
             max_lr=0.01, max_grad_norm=1.0, kernel="xla")
SIZES = {"tiny": dict(window=32, segment_len=32), "small": dict(window=128, segment_len=128),
         "340m": dict(window=512, segment_len=512, chunk_size=64),
         "760m": dict(window=512, segment_len=512, chunk_size=64),
         "1.3b": dict(window=512, segment_len=512, chunk_size=64)}


def titans_config(variant: str, arg: str | None):
  return common.lm_config(arg, dict(MODEL, variant=variant), SIZES)
