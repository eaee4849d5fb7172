"""Fields shared by every pretraining config; each model's file fills in `config.model`.

The training contract (keys users override with --config.KEY=VALUE):
  seed, steps, batch_size (global, in sequences), seq_len, learning_rate, warmup_steps,
  weight_decay, grad_clip, log_every, checkpoint_every, keep_checkpoints, eval_batches,
  mesh.{data,fsdp,tensor} (-1: the remaining devices), axis_rules.<logical> (mesh axis,
  tuple of mesh axes, or None), data.{source,validation_percent}.
"""
import ml_collections


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
  c.eval_batches = 16

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical parameter/activation axes -> mesh axes (a name, a tuple of names, or None).
  c.axis_rules = ml_collections.ConfigDict(dict(
      batch=("data", "fsdp"), embed="fsdp", vocab="tensor", heads="tensor", head_dim=None,
      mlp="tensor"))

  # `stdlib`: the Python standard library's own source; or a path to a text file/folder.
  c.data = ml_collections.ConfigDict(dict(source="stdlib", validation_percent=5))
  return c


def select(sizes: dict, arg: str | None) -> dict:
  """The size variant named by `--config=FILE:arg`, with an error that lists the choices."""
  name = arg or "tiny"
  if name not in sizes:
    raise ValueError(f"unknown config size {name!r}; choose from {sorted(sizes)}")
  return sizes[name]
