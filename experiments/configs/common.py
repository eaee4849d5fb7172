"""Fields shared by every pretraining config; each model's file fills in `config.model`.

The training contract (keys users override with --config.KEY=VALUE):
  seed, steps, batch_size (global, in sequences), seq_len, learning_rate, warmup_steps,
  weight_decay, grad_clip, log_every, checkpoint_every, keep_checkpoints, async_checkpoints,
  eval_batches, on_nonfinite ('stop' or 'skip'), max_consecutive_skips,
  optimizer.* (runtime/optimizers.py), mesh.{data,fsdp,tensor} (-1: the remaining devices),
  axis_rules.<logical> (mesh axis, tuple of mesh axes, or None),
  data.{source,validation_percent,workers}.
"""
import ml_collections


def optimizer_config() -> ml_collections.ConfigDict:
  """`config.optimizer` (fields in runtime/optimizers.py): AdamW (b1 = 0.9, b2 = 0.95) for
  every parameter, updated every step."""
  return ml_collections.ConfigDict(dict(
      rule="adamw", kwargs=dict(b1=0.9, b2=0.95), every=1, accumulate="sum", groups={},
      value_lr_multiplier=1.0, sparse_value_updates=False))


def layered_optimizer_config(num_layers: int, every: list[int]) -> ml_collections.ConfigDict:
  """`optimizer_config()` with one group per block, block i updated every every[i % len]
  steps (embeddings and the head every step)."""
  c = optimizer_config()
  c.groups = {f"layer{i}": dict(patterns=(f"blocks/{i}/*",), every=every[i % len(every)])
              for i in range(num_layers)}
  return c


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.steps = 200
  c.batch_size = 8
  c.seq_len = 128
  c.learning_rate = 3e-3
  c.warmup_steps = 20
  c.weight_decay = 0.1
  c.grad_clip = 1.0
  c.log_every = 20
  c.checkpoint_every = 100
  c.keep_checkpoints = 3
  # Asynchronous saves overlap writing with training; a crash then redoes fewer than
  # 2 * checkpoint_every steps (at most checkpoint_every with synchronous saves).
  c.async_checkpoints = True
  c.eval_batches = 16
  # A step whose loss, gradients or updated parameters are not finite keeps the previous
  # state; then 'stop' ends the run (exit status 3), 'skip' goes on, up to
  # max_consecutive_skips such steps in a row.
  c.on_nonfinite = "stop"
  c.max_consecutive_skips = 10

  # The outer optimizer: a rule (AdamW by default, b2 = 0.95) per parameter group, each at
  # its own period; see runtime/optimizers.py.
  c.optimizer = optimizer_config()

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical parameter/activation axes -> mesh axes (a name, a tuple of names, or None).
  c.axis_rules = ml_collections.ConfigDict(dict(
      batch=("data", "fsdp"), embed="fsdp", vocab="tensor", heads="tensor", head_dim=None,
      mlp="tensor", slots="fsdp", value="tensor"))

  # `stdlib`: the Python standard library's own source; `c_headers` (/usr/include) and
  # `man_de` (German manual pages): other built-in text; a path to a text file/folder; or a
  # directory of token shards written by experiments.prepare_data (its tokenizer replaces
  # the byte default model.vocab_size = 256). workers: grain worker processes making the batches (0: in process).
  c.data = ml_collections.ConfigDict(dict(source="stdlib", validation_percent=5, workers=0))
  return c


def select(sizes: dict, arg: str | None) -> dict:
  """The size variant named by `--config=FILE:arg`, with an error that lists the choices."""
  name = arg or "tiny"
  if name not in sizes:
    raise ValueError(f"unknown config size {name!r}; choose from {sorted(sizes)}")
  return sizes[name]


# Training settings per size, shared by every architecture so that they compare at equal
# token budgets. The paper-scale sizes follow the shapes of the Titans / Nested Learning
# papers (24 layers; widths 1024, 1536, 2048) for users with accelerators.
TRAINING = {
    "tiny": dict(steps=600, batch_size=16, seq_len=128, log_every=50, checkpoint_every=200),
    "small": dict(steps=2000, batch_size=16, seq_len=512, learning_rate=1e-3,
                  checkpoint_every=500, log_every=50),
    "340m": dict(steps=30_000, batch_size=256, seq_len=2048, learning_rate=4e-4,
                 warmup_steps=2000, checkpoint_every=1000, log_every=100),
    "760m": dict(steps=60_000, batch_size=256, seq_len=2048, learning_rate=4e-4,
                 warmup_steps=2000, checkpoint_every=1000, log_every=100),
    "1.3b": dict(steps=200_000, batch_size=256, seq_len=2048, learning_rate=4e-4,
                 warmup_steps=2000, checkpoint_every=1000, log_every=100),
}
SHAPES = {
    "tiny": dict(dim=128, num_layers=4, num_heads=4, mlp_dim=384),
    "small": dict(dim=256, num_layers=6, num_heads=8, mlp_dim=1024),
    "340m": dict(dim=1024, num_layers=24, num_heads=16, mlp_dim=2816, dtype="bfloat16"),
    "760m": dict(dim=1536, num_layers=24, num_heads=24, mlp_dim=4096, dtype="bfloat16"),
    "1.3b": dict(dim=2048, num_layers=24, num_heads=32, mlp_dim=5632, dtype="bfloat16"),
}


def lm_config(arg: str | None, model: dict, sizes: dict | None = None) -> ml_collections.ConfigDict:
  """A pretraining config: the base fields, the size's training settings and shape, then
  `model` (the architecture's own fields) and any per-size `sizes[arg]` model overrides."""
  name = arg or "tiny"
  select(TRAINING, name)
  config = base_config()
  config.update(TRAINING[name])
  config.model = ml_collections.ConfigDict(dict(vocab_size=256, dropout_rate=0.0, dtype="float32"))
  config.model.update(SHAPES[name])
  config.model.update(model)
  config.model.update((sizes or {}).get(name, {}))
  return config
