"""Transformer baseline. Sizes: tiny (CPU seconds), small (CPU minutes), 125m, 350m.

  python -m experiments.pretrain --config=experiments/configs/transformer.py:tiny --workdir=DIR
"""
import ml_collections

from experiments.configs import common

SIZES = {
    # name: (model fields, training overrides)
    "tiny": (dict(dim=128, num_layers=4, num_heads=4, mlp_dim=384),
             dict(steps=600, batch_size=16, seq_len=128, log_every=50, checkpoint_every=200)),
    "small": (dict(dim=256, num_layers=6, num_heads=8, mlp_dim=1024),
              dict(steps=2000, batch_size=16, seq_len=512, learning_rate=1e-3,
                   checkpoint_every=500, log_every=50)),
    "125m": (dict(dim=768, num_layers=12, num_heads=12, mlp_dim=2048, dtype="bfloat16"),
             dict(steps=50_000, batch_size=256, seq_len=2048, learning_rate=6e-4,
                  warmup_steps=2000, checkpoint_every=1000, log_every=100)),
    "350m": (dict(dim=1024, num_layers=24, num_heads=16, mlp_dim=2816, dtype="bfloat16"),
             dict(steps=100_000, batch_size=256, seq_len=2048, learning_rate=3e-4,
                  warmup_steps=2000, checkpoint_every=1000, log_every=100)),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  model, training = common.select(SIZES, arg)
  config = common.base_config()
  config.update(training)
  config.model = ml_collections.ConfigDict(dict(
      name="transformer", vocab_size=256, head_dim=0, window=0, rope_base=10_000.0,
      dropout_rate=0.0, dtype="float32"))
  config.model.update(model)
  return config
