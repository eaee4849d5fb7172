"""Checkpoints of a training run, with orbax-checkpoint's CheckpointManager.

One step's checkpoint is a folder `checkpoints/<step>/` with four orbax items:
  params       the model parameters (a plain nested dict of arrays);
  train_state  the optimizer state, the step and the PRNG key;
  data         the grain iterator's position (one small JSON per process);
  config       the run's config (JSON).
Saves are asynchronous and atomic (orbax writes to a temporary folder and renames it when
complete), the last `keep` are kept, and restore places arrays onto any target mesh.

Replicated arrays. Unless JAX_PLATFORMS names a GPU, orbax saves an array replicated over R
devices "replica-parallel": each replica writes 1/R of it, cut off with one dispatched slice
op per replica and shard, which for a small array costs more than the writing it shares out.
Here an array is written that way only where each replica's part is at least
MIN_REPLICA_SLICE_BYTES; a smaller one is written whole by its first replica. Either way it
restores to the same array.

Integrity: as a save is finalized, process 0 writes `<step>/sha256sums.json`, the SHA-256
of every file of the step's items, inside orbax's temporary folder before its rename. `problem(step)` re-hashes the files and names the first one that
is missing or changed (orbax itself restores flipped bytes without complaint). A step with
no manifest (written by other code) is trusted only if it restores.
`quarantine(step)` moves a bad step out of the way, to `<workdir>/corrupt_checkpoints/`,
so it is kept for inspection but never restored or overwritten.

Restoring the parameters with orbax alone:
  import orbax.checkpoint as ocp
  params = ocp.StandardCheckpointer().restore(f"{workdir}/checkpoints/{step}/params")
"""
import hashlib
import json
import shutil
import time
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store  # the default handler's store
from absl import logging

from hope.optimizers.tree_paths import named_leaves

MANIFEST = "sha256sums.json"
MIN_REPLICA_SLICE_BYTES = 1 << 20  # see "Replicated arrays" above
# What a restore of damaged files raises (tensorstore: ValueError; a missing file: OSError).
RESTORE_ERRORS = (ValueError, OSError)


def _array_tree_handler() -> ocp.PyTreeCheckpointHandler:
  """orbax's handler of array trees, with jax.Array saved as the module docstring says."""
  registry = ocp.type_handlers.create_type_handler_registry(
      *((t, ocp.type_handlers.get_type_handler(t)) for t in (int, float, bytes, np.number,
                                                              np.ndarray, str)),
      (jax.Array, ocp.type_handlers.ArrayHandler(
          min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES,
          array_metadata_store=array_metadata_store.Store())))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _handlers():
  return dict(params=_array_tree_handler(), train_state=_array_tree_handler(),
              data=grain.checkpoint.CheckpointHandler(), config=ocp.JsonCheckpointHandler())


def _restore_args(target):
  """PyTreeRestore onto `target`, a tree of ShapeDtypeStructs with shardings."""
  return ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(
      target))


class Checkpoints:
  """The checkpoints under `directory`; `read_only` opens them without creating anything."""

  def __init__(self, directory: str | Path, *, keep: int = 3, read_only: bool = False):
    self.directory = Path(directory)
    self._saving = None  # the step whose save is in flight
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=not read_only, create=not read_only,
        read_only=read_only, cleanup_tmp_directories=not read_only,  # a killed save's leftovers
        async_options=None if read_only else ocp.AsyncOptions(
            post_finalization_callback=self._write_manifest))
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=_handlers())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, *, params, train_state, data_iterator, config: dict) -> None:
    """Starts an asynchronous save; arrays are copied off the devices before it returns."""
    self.manager.wait_until_finished()  # the previous save's manifest is written first
    self._saving = step
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.PyTreeSave(params),
        train_state=ocp.args.PyTreeSave(train_state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config)))

  def restore(self, step: int, *, params, train_state, data_iterator):
    """Restores onto abstract targets (ShapeDtypeStructs with shardings); sets the iterator."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=_restore_args(params),
        train_state=_restore_args(train_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored.params, restored.train_state

  def restore_params(self, step: int, params):
    return self.manager.restore(step, args=ocp.args.Composite(
        params=_restore_args(params))).params

  def config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config

  def param_shapes(self, step: int) -> dict:
    """{path: shape} of the saved parameters, read from metadata (no arrays are loaded)."""
    meta = self.manager.item_metadata(step)["params"]
    return {name: tuple(x.shape) for name, x in named_leaves(dict(meta))}

  def latest_intact(self, check=None) -> tuple[int | None, dict]:
    """(step, corrupt): the newest step whose files match their checksums and for which
    `check(step)` raises none of RESTORE_ERRORS (a step without checksums whose metadata is
    damaged), or None; and {step: what is wrong} for each newer step passed over."""
    corrupt = {}
    for step in sorted(self.all_steps(), reverse=True):
      problem = self.problem(step)
      if problem is None and check is not None:
        try:
          check(step)
        except RESTORE_ERRORS as e:
          problem = does_not_restore(e)
      if problem is None:
        return step, corrupt
      corrupt[step] = problem
    return None, corrupt

  def _write_manifest(self) -> None:
    step, self._saving = self._saving, None
    if step is None or jax.process_index() != 0:
      return
    # Orbax calls this just before it renames the step's temporary folder to its final name,
    # so the manifest becomes visible atomically with the checkpoint.
    step_dir, = [d for d in self.directory.iterdir()
                 if d.name == str(step) or d.name.startswith(f"{step}.")]
    (step_dir / MANIFEST).write_text(json.dumps(_digests(step_dir), indent=0, sort_keys=True))

  def problem(self, step: int) -> str | None:
    """What is wrong with step's files against its manifest, or None (intact, or no manifest)."""
    step_dir = self.directory / str(step)
    manifest = step_dir / MANIFEST
    if not manifest.exists():
      return None
    try:
      expected = json.loads(manifest.read_text())
    except ValueError:
      return f"{manifest} is unreadable"
    actual = _digests(step_dir)
    for name, digest in sorted(expected.items()):
      if name not in actual:
        return f"{step_dir / name} is missing"
      if actual[name] != digest:
        return f"{step_dir / name} does not match its checksum"
    return None

  def quarantine(self, step: int, reason: str) -> Path:
    """Moves step's folder to <workdir>/corrupt_checkpoints/ (process 0) and forgets it."""
    target = self.directory.parent / "corrupt_checkpoints" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0:
      target.parent.mkdir(exist_ok=True)
      shutil.move(self.directory / str(step), target)
    logging.warning("checkpoint step %d in %s is corrupt (%s); moved it to %s", step,
                    self.directory, reason, target)
    _sync(f"quarantine_{step}")
    self.manager.reload()
    return target

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def does_not_restore(e: Exception) -> str:
  """What is wrong with a step whose restore raised `e` (one of RESTORE_ERRORS)."""
  return f"it does not restore: {' '.join(str(e).split())[:300]}"


def _digests(step_dir: Path) -> dict:
  """{relative path: SHA-256} of every file of the step's items (params, train_state, data,
  config); orbax's own step metadata at the top is rewritten after the rename, so left out."""
  digests = {}
  for path in sorted(p for p in step_dir.glob("*/**/*") if p.is_file()):
    with open(path, "rb") as f:
      digests[str(path.relative_to(step_dir))] = hashlib.file_digest(f, "sha256").hexdigest()
  return digests


def directory_exists(directory: Path) -> bool:
  """Whether `directory` exists, as process 0 sees it: every process takes the same branch
  (one that another process creates meanwhile would otherwise split them onto different
  orbax barriers)."""
  exists = Path(directory).exists()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    exists = bool(multihost_utils.broadcast_one_to_all(np.bool_(exists)))
  return exists


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
