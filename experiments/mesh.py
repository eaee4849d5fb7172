"""The device mesh (`data`, `fsdp`, `tensor`) and the logical-to-mesh sharding rules."""
import math

from absl import logging
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from experiments.cli import UsageError

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


def logical_to_mesh(spec: P, rules: dict, field: str = "config.axis_rules") -> P:
  """Maps a PartitionSpec of logical names to one of mesh axes; a mesh axis is used once."""
  used, out = set(), []
  for logical in spec:
    if logical is None:
      out.append(None)
      continue
    if logical not in rules:
      raise UsageError(f"{field} has no entry for logical axis {logical!r}; "
                       f"add --{field}.{logical}=<mesh axis or None>")
    target = rules[logical]
    targets = tuple(target) if isinstance(target, (tuple, list)) else (target,)
    targets = tuple(t for t in targets if t is not None and t not in used)
    used.update(targets)
    out.append(targets[0] if len(targets) == 1 else (targets or None))
  return P(*out)


def shardings(abstract_tree, logical_specs, rules: dict, mesh: jax.sharding.Mesh):
  """NamedShardings for a pytree of arrays (shapes) and its pytree of logical PartitionSpecs.

  A dimension that its mesh axes do not divide evenly is replicated instead (with a warning),
  so odd sizes such as a vocabulary of 257 still run on any mesh.
  """
  def one(x, spec):
    mesh_spec = logical_to_mesh(spec, rules)
    dims = []
    for size, axes in zip(x.shape, tuple(mesh_spec) + (None,) * (len(x.shape) - len(mesh_spec))):
      names = axes if isinstance(axes, tuple) else (axes,)
      n = math.prod(mesh.shape[a] for a in names if a is not None)
      if size % n:
        logging.warning("dimension of size %d (logical %s) does not divide over mesh axes %s; "
                        "replicating it", size, spec, axes)
        axes = None
      dims.append(axes)
    return NamedSharding(mesh, P(*dims))

  return jax.tree.map(one, abstract_tree, logical_specs)
