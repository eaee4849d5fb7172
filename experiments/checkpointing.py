"""Checkpoints of a training run, with orbax-checkpoint's CheckpointManager.

One step's checkpoint is a folder `checkpoints/<step>/` with four orbax items:
  params       the model parameters (a plain nested dict of arrays);
  train_state  the optimizer state, the step and the PRNG key;
  data         the grain iterator's position (one small JSON per process);
  config       the run's config (JSON).
Saves are asynchronous and atomic (orbax writes to a temporary folder and renames it when
complete), the last `keep` are kept, and restore places arrays onto any target mesh.

Restoring the parameters with orbax alone:
  import orbax.checkpoint as ocp
  params = ocp.StandardCheckpointer().restore(f"{workdir}/checkpoints/{step}/params")
"""
from pathlib import Path

import grain
import orbax.checkpoint as ocp

def _handlers():
  return dict(params=ocp.StandardCheckpointHandler(), train_state=ocp.StandardCheckpointHandler(),
              data=grain.checkpoint.CheckpointHandler(), config=ocp.JsonCheckpointHandler())


class Checkpoints:
  """The checkpoints under `directory`; `read_only` opens them without creating anything."""

  def __init__(self, directory: str | Path, *, keep: int = 3, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=not read_only, create=not read_only,
        read_only=read_only)
    self.directory = Path(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=_handlers())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, *, params, train_state, data_iterator, config: dict) -> None:
    """Starts an asynchronous save; arrays are copied off the devices before it returns."""
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        train_state=ocp.args.StandardSave(train_state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config)))

  def restore(self, step: int, *, params, train_state, data_iterator):
    """Restores onto abstract targets (ShapeDtypeStructs with shardings); sets the iterator."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(params),
        train_state=ocp.args.StandardRestore(train_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored.params, restored.train_state

  def restore_params(self, step: int, params):
    return self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(params))).params

  def config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config

  def param_shapes(self, step: int) -> dict:
    """{path: shape} of the saved parameters, read from metadata (no arrays are loaded)."""
    meta = self.manager.item_metadata(step)["params"]
    flat = {}

    def walk(node, prefix):
      if isinstance(node, dict):
        for k, v in node.items():
          walk(v, f"{prefix}/{k}" if prefix else str(k))
      else:
        flat[prefix] = tuple(node.shape)

    walk(dict(meta), "")
    return flat

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
