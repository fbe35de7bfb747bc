"""Device mesh and the shardings of batches and train state.

The mesh always has the axes ('data', 'fsdp'), even on one device, so the same jitted step runs
on a laptop CPU, one GPU or a pod slice. Batches are split over both axes. Parameters, their EMA,
the optimiser state and frozen parameters follow one rule (`fsdp_spec`): an array of at least
`min_size` elements is split over 'fsdp' along its largest axis that the fsdp size divides; smaller
arrays (biases, norms, counters) are replicated. With fsdp = 1 everything is replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp')
BATCH_AXES = ('data', 'fsdp')


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int]:
  """Resolves `{'data': -1, 'fsdp': 1}` (one -1 allowed) to concrete axis sizes."""
  sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh={dict(mesh_config)}: at most one axis may be -1.')
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f'config.mesh={dict(mesh_config)} does not divide {num_devices} devices.')
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f'config.mesh={dict(mesh_config)} uses {int(np.prod(sizes))} devices but '
                     f'{num_devices} are available; use -1 for one axis to take the rest.')
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  # Auto axes: shardings are given at the jit boundary and XLA propagates them inside.
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every mesh axis."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """The PartitionSpec of one array of `shape`: split over 'fsdp' or replicated.

  Splits the largest axis divisible by `fsdp_size` (the first of equal ones) when the array has
  at least `min_size` elements; replicated otherwise, or when no axis divides.
  """
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  divisible = [axis for axis, size in enumerate(shape) if size % fsdp_size == 0]
  if not divisible:
    return P()
  axis = max(divisible, key=lambda a: (shape[a], -a))
  return P(*([None] * axis), 'fsdp')


def tree_shardings(tree, mesh: Mesh, min_size: int):
  """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs) by `fsdp_spec`.

  Optimiser moments have their parameter's shape, so they are split exactly like it.
  """
  fsdp_size = mesh.shape['fsdp']
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp_size, min_size)), tree)


def num_batch_shards(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles each process's NumPy batch into one global jax.Array sharded over the batch axes.

  Only numeric leaves are transferred (strings and other host-only fields are dropped).
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      _numeric_leaves(local_batch))


def _numeric_leaves(tree: dict) -> dict:
  kept = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      kept[key] = _numeric_leaves(value)
    elif isinstance(value, np.ndarray) and value.dtype.kind in 'biuf':
      kept[key] = value
  return kept
