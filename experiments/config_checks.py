"""Validation of a pretraining config before anything is compiled or written.

Each error names the field and what it accepts.
"""
import numbers

from experiments.cli import UsageError

POSITIVE_INTS = ("steps", "batch_size", "seq_len", "log_every", "checkpoint_every",
                 "keep_checkpoints", "eval_batches", "max_consecutive_skips")
NON_NEGATIVE_INTS = ("seed", "warmup_steps")
POSITIVE_FLOATS = ("learning_rate",)
NON_NEGATIVE_FLOATS = ("weight_decay", "grad_clip")


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check(config) -> None:
  """Raises UsageError for the first invalid training field of `config`."""
  for name in POSITIVE_INTS:
    v = config.get(name)
    if not _is_int(v) or v <= 0:
      raise UsageError(f"config.{name} must be a positive integer, got {v!r}")
  for name in NON_NEGATIVE_INTS:
    v = config.get(name)
    if not _is_int(v) or v < 0:
      raise UsageError(f"config.{name} must be a non-negative integer, got {v!r}")
  for name in POSITIVE_FLOATS:
    v = config.get(name)
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or not v > 0:
      raise UsageError(f"config.{name} must be a positive number, got {v!r}")
  for name in NON_NEGATIVE_FLOATS:
    v = config.get(name)
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or not v >= 0:
      raise UsageError(f"config.{name} must be a number >= 0 (0: off), got {v!r}")
  if not isinstance(config.async_checkpoints, bool):
    raise UsageError(f"config.async_checkpoints must be True or False, got {config.async_checkpoints!r}")
  if config.on_nonfinite not in ("stop", "skip"):
    raise UsageError(f"config.on_nonfinite must be 'stop' or 'skip', got {config.on_nonfinite!r}")
  if config.warmup_steps > config.steps:
    raise UsageError(f"config.warmup_steps ({config.warmup_steps}) exceeds config.steps "
                     f"({config.steps})")
  if "model" not in config or "name" not in config.model:
    raise UsageError("config.model.name is missing: the config file must define the model")
