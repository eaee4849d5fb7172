"""runtime.checkpoints: replicated arrays are cut into per-replica slices for saving only where
each replica's part reaches MIN_REPLICA_SLICE_BYTES, and either way restore to their values
on another mesh."""
import grain
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from runtime import checkpoints


def test_only_large_replicated_arrays_are_saved_in_slices(tmp_path, monkeypatch):
  monkeypatch.setattr(checkpoints, "MIN_REPLICA_SLICE_BYTES", 4096)
  slices = []
  slice_in_dim = jax.lax.slice_in_dim
  monkeypatch.setattr(jax.lax, "slice_in_dim", lambda x, *a, **k: (slices.append(x.shape),
                                                                    slice_in_dim(x, *a, **k))[1])
  replicated = NamedSharding(jax.make_mesh((8,), ("data",)), P())
  values = {"large": np.arange(8 * 1024, dtype=np.float32).reshape(8, 1024),  # 4 KiB a replica
            "small": np.arange(64, dtype=np.float32).reshape(8, 8)}
  ckpt = checkpoints.Checkpoints(tmp_path)
  data = iter(grain.MapDataset.range(4).to_iter_dataset())
  for step, names in ((1, ["small"]), (2, ["small", "large"])):
    slices.clear()
    ckpt.save(step, params={n: jax.device_put(values[n], replicated) for n in names},
              train_state={"step": jax.device_put(np.int32(step), replicated)},
              data_iterator=data, config={})
    ckpt.wait()
    assert slices == ([] if step == 1 else [(8, 1024)] * 8), (step, slices)
  other = NamedSharding(jax.make_mesh((4, 2), ("data", "fsdp")), P("fsdp"))
  target = {n: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=other) for n, v in values.items()}
  params = ckpt.restore_params(2, target)
  ckpt.close()
  for name, value in values.items():
    np.testing.assert_array_equal(params[name], value)
    assert params[name].sharding == other
