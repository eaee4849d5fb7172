"""Memory-layer LM: the Transformer with product-key memories (Memory+) in place of chosen
blocks' MLPs. Sizes: tiny, small, 340m, 760m, 1.3b (the paper-scale sizes use 1024^2 slots,
4 heads, top-32, one value pool shared by three layers, for users with accelerators).

  python -m experiments.pretrain --config=experiments/configs/memory_lm.py:tiny --workdir=DIR
"""
from experiments.configs import common

MODEL = dict(name="memory_lm", head_dim=0, window=0, rope_base=10_000.0, memory_layers=(2,),
             num_slots=128 ** 2, memory_heads=4, key_dim=64, top_k=16, gated_output=True,
             query_norm=True, shared_values=True)
SIZES = {
    "small": dict(memory_layers=(3,), num_slots=256 ** 2, key_dim=128, top_k=32),
    "340m": dict(memory_layers=(4, 12, 20), num_slots=1024 ** 2, key_dim=512, top_k=32),
    "760m": dict(memory_layers=(4, 12, 20), num_slots=1024 ** 2, key_dim=512, top_k=32),
    "1.3b": dict(memory_layers=(4, 12, 20), num_slots=1024 ** 2, key_dim=512, top_k=32),
}


def get_config(arg: str | None = None):
  config = common.lm_config(arg, MODEL, SIZES)
  return config
