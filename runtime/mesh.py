"""The device mesh (`data`, `fsdp`, `tensor`) from the config, and the config's
logical-to-mesh rules checked and applied (the table's semantics are `hope.sharding`'s)."""
import math

from absl import logging
import jax
from jax.sharding import AxisType, PartitionSpec as P

from hope import sharding
from runtime.errors import UsageError

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(sizes: dict, num_devices: int, field: str = "config.mesh") -> tuple[int, ...]:
  """Resolves {data, fsdp, tensor} sizes (one may be -1: the rest) against the device count."""
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise UsageError(f"{field}: unknown axes {sorted(unknown)}; the axes are {list(MESH_AXES)}")
  shape = [sizes.get(name, 1) for name in MESH_AXES]
  for name, size in zip(MESH_AXES, shape):
    if not isinstance(size, int) or (size <= 0 and size != -1):
      raise UsageError(f"{field}.{name} must be a positive integer or -1 (the rest), got {size!r}")
  if shape.count(-1) > 1:
    raise UsageError(f"{field}: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise UsageError(f"{field}: {dict(zip(MESH_AXES, shape))} does not divide the "
                       f"{num_devices} available devices")
    shape[shape.index(-1)] = num_devices // known
  needed = math.prod(shape)
  if needed > num_devices:
    raise UsageError(f"{field}: {dict(zip(MESH_AXES, shape))} asks for {needed} devices, "
                     f"but only {num_devices} exist")
  if num_devices % needed:
    raise UsageError(f"{field}: {dict(zip(MESH_AXES, shape))} ({needed} devices) does not "
                     f"divide the {num_devices} available devices")
  return tuple(shape)


def make_mesh(sizes: dict, field: str = "config.mesh") -> jax.sharding.Mesh:
  """A mesh over the first prod(sizes) devices (all of them when an axis is -1)."""
  shape = mesh_shape(dict(sizes), jax.device_count(), field)
  devices = jax.devices()[:math.prod(shape)]
  if len(devices) < jax.device_count():
    logging.warning("%s uses %d of the %d devices", field, len(devices), jax.device_count())
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def check_rules(rules: dict, field: str = "config.axis_rules") -> dict:
  """Validates a {logical axis: mesh axis | tuple of mesh axes | None} table."""
  for logical, target in rules.items():
    targets = target if isinstance(target, (tuple, list)) else (target,)
    for t in targets:
      if t is not None and t not in MESH_AXES:
        raise UsageError(f"{field}.{logical} names unknown mesh axis {t!r}; "
                         f"use one of {list(MESH_AXES)} or None")
  return dict(rules)


def _table(rules: dict, logical_names, field: str) -> dict:
  missing = [n for n in logical_names if n is not None and n not in rules]
  if missing:
    raise UsageError(f"{field} has no entry for logical axis {missing[0]!r}; "
                     f"add --{field}.{missing[0]}=<mesh axis or None>")
  return rules


def logical_to_mesh(spec: P, rules: dict, field: str = "config.axis_rules") -> P:
  """Maps a PartitionSpec of logical names to one of mesh axes (`hope.sharding`)."""
  return sharding.logical_to_mesh_spec(spec, _table(rules, spec, field), MESH_AXES)


def shardings(abstract_tree, logical_specs, rules: dict, mesh: jax.sharding.Mesh,
              field: str = "config.axis_rules"):
  """NamedShardings for a pytree of arrays (shapes) and its pytree of logical PartitionSpecs
  (`hope.sharding.named_shardings`: a dimension its mesh axes do not divide is replicated)."""
  used = {n for spec in jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, P))
          for n in spec}
  return sharding.named_shardings(abstract_tree, logical_specs, _table(rules, used, field), mesh)
