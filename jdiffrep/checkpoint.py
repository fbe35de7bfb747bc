"""Orbax checkpoints that hold the train state *and* the grain iterator state together.

Restoring both means a resumed run continues with exactly the batch it would have seen next.
Each checkpoint also stores a fingerprint of the state, so a restore that reads damaged bytes
is caught; an unreadable or damaged newest checkpoint is set aside and the previous one used.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Iterator

from absl import logging
from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jdiffrep import paths

CORRUPT_DIR_NAME = 'corrupt_checkpoints'


def make_manager(directory: epath.PathLike, *, max_to_keep: int, create: bool = True
                 ) -> ocp.CheckpointManager:
  """A manager for `directory`; the trainer decides when to save (see `save`).

  With `create`, leftovers of a save that was killed before it committed (orbax writes into a
  temporary directory and renames it when complete) are deleted; they are never restored.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         cleanup_tmp_directories=create)
  return ocp.CheckpointManager(paths.absolute(directory), options=options,
                               item_names=('state', 'data', 'fingerprint'))


def _leaf_as_uint32(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 values (one per element; 8-byte types give two)."""
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  if x.dtype.itemsize == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _row_major_positions(shape: tuple[int, ...]) -> jax.Array:
  """uint32 `shape`: each element's row-major index (mod 2**32), built without a reshape so
  a sharded leaf keeps its sharding."""
  positions = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for dim in reversed(range(len(shape))):
    positions += jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride % 2**32)
    stride *= shape[dim]
  return positions


@jax.jit
def state_fingerprint(state) -> jax.Array:
  """uint32 [num_leaves]: per leaf, the sum of its bits weighted by odd position numbers.

  Any change of one element changes its leaf's number (the weights are odd, hence invertible
  mod 2**32), which is what a damaged file does. Computed on device, so sharded state works.
  """
  def leaf_fingerprint(x):
    bits = _leaf_as_uint32(jnp.asarray(x))
    weights = 2 * _row_major_positions(bits.shape) + 1
    return jnp.sum(bits * weights, dtype=jnp.uint32)
  return jnp.stack([leaf_fingerprint(x) for x in jax.tree.leaves(state)])


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
  """Starts an asynchronous save of `state`, the iterator position and a fingerprint as `step`."""
  fingerprint = np.asarray(jax.device_get(state_fingerprint(state))).tolist()
  manager.save(step, force=True, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator),
      fingerprint=ocp.args.JsonSave({'leaves': fingerprint})))


class CorruptCheckpointError(ValueError):
  """A checkpoint read without error but differs from the fingerprint saved with it."""


def _restore_step(manager: ocp.CheckpointManager, step: int, abstract, data_iterator):
  """Restores checkpoint `step` and checks it against its fingerprint; raises if it differs."""
  has_fingerprint = (epath.Path(manager.directory) / str(step) / 'fingerprint').exists()
  items = dict(state=ocp.args.StandardRestore(abstract),
               data=grain.checkpoint.CheckpointRestore(data_iterator))
  if has_fingerprint:
    items['fingerprint'] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if has_fingerprint:
    saved = np.asarray(restored.fingerprint['leaves'], np.uint32)
    found = np.asarray(jax.device_get(state_fingerprint(restored.state)))
    if saved.shape != found.shape or np.any(saved != found):
      leaf_paths = [jax.tree_util.keystr(path)
                    for path, _ in jax.tree_util.tree_leaves_with_path(restored.state)]
      differing = [p for p, a, b in zip(leaf_paths, saved, found) if a != b] or ['(leaf count)']
      raise CorruptCheckpointError(
          f'{len(differing)} array(s) differ from the fingerprint saved with them, e.g. '
          f'{", ".join(differing[:3])}')
  return restored.state


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves checkpoint `step` to `<parent>/corrupt_checkpoints/` (kept for inspection)."""
  source = epath.Path(manager.directory) / str(step)
  target = epath.Path(manager.directory).parent / CORRUPT_DIR_NAME / f'{step}-{int(time.time())}'
  if jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'jdiffrep_set_aside_checkpoint_{step}')
  return str(target)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iterator):
  """Restores the newest readable checkpoint into `abstract_state`'s structure and shardings.

  `data_iterator` is advanced in place to the saved position. Returns the restored state, or
  None when the directory holds no checkpoint. A checkpoint that fails to restore (truncated or
  unreadable files) or differs from its fingerprint is reported with the reason, and the
  previous one is tried; once one restores, the bad newer ones are moved to
  `corrupt_checkpoints/` next to the checkpoint directory, so later saves can reuse their steps.
  When none restores, raises ValueError listing each step's reason and moves nothing.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  failures: list[tuple[int, str]] = []
  for step in sorted(manager.all_steps(), reverse=True):
    logging.info('Restoring checkpoint of step %d from %s', step, manager.directory)
    try:
      state = _restore_step(manager, step, abstract, data_iterator)
    except Exception as error:  # pylint: disable=broad-except  (tensorstore raises Exception)
      reason = f'{type(error).__name__}: {str(error).splitlines()[0][:300]}'
      logging.warning('Checkpoint of step %d in %s is truncated or corrupt and will not be '
                      'used (%s). Trying the previous checkpoint.', step, manager.directory,
                      reason)
      failures.append((step, reason))
      continue
    for bad_step, _ in failures:
      moved_to = _set_aside(manager, bad_step)
      logging.warning('Moved the corrupt checkpoint of step %d to %s; resuming from step %d.',
                      bad_step, moved_to, step)
    if failures:
      manager.reload()
    return state
  if failures:
    listing = '; '.join(f'step {s}: {r}' for s, r in failures)
    raise ValueError(
        f'No checkpoint in {manager.directory} could be restored ({listing}). If the config '
        'changed since they were written, use the old config or a new --workdir; to start '
        'over, move that directory away.')
  return None


@contextlib.contextmanager
def sigterm_requests_stop() -> Iterator[threading.Event]:
  """Within the block, SIGTERM sets the yielded event instead of ending the process.

  The trainer then saves a checkpoint at the next step boundary and returns. Installed only in
  the main thread of a single-process run: with several processes, JAX's preemption service
  (`jax.distributed.initialize`) already turns SIGTERM into a step that every process agrees to
  save at, seen through `CheckpointManager.reached_preemption`. The previous handler is put
  back on exit.
  """
  requested = threading.Event()
  if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
    yield requested
    return
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: requested.set())
  try:
    yield requested
  finally:
    signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def check_tree_matches(loaded, expected, *, what: str):
  """Returns `loaded` as float arrays after checking it has `expected`'s structure and shapes.

  `expected` is a pytree of arrays or ShapeDtypeStructs. Files from elsewhere are untrusted:
  a mismatch raises ValueError naming the first differing path, before anything is jitted.
  """
  loaded_paths = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(loaded)}
  expected_paths = {jax.tree_util.keystr(k): v
                    for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  missing = sorted(set(expected_paths) - set(loaded_paths))
  extra = sorted(set(loaded_paths) - set(expected_paths))
  if missing or extra:
    raise ValueError(f'{what} does not match the model: missing {missing[:5]}, unexpected '
                     f'{extra[:5]}. Was it trained with the same config.model?')
  for path, want in expected_paths.items():
    got = loaded_paths[path]
    if tuple(got.shape) != tuple(want.shape):
      raise ValueError(f'{what}: parameter {path} has shape {tuple(got.shape)}, the model '
                       f'expects {tuple(want.shape)}. Was it trained with the same config.model?')
    if not jax.numpy.issubdtype(got.dtype, jax.numpy.floating):
      raise ValueError(f'{what}: parameter {path} has dtype {got.dtype}, expected a float.')
  return jax.tree.map(lambda x, want: jax.numpy.asarray(x, want.dtype), loaded, expected)


def latest_step(directory: epath.PathLike) -> int | None:
  """The step of the newest finished checkpoint in `directory`, None when there is none."""
  manager = make_manager(directory, max_to_keep=1, create=False)
  step = manager.latest_step()
  manager.close()
  return step


def load_trained_params(directory: str, expected, *, what: str, key: str = 'ema_params'):
  """The EMA (or `key`) params of the newest checkpoint in `directory`, checked against `expected`.

  Raises FileNotFoundError when there is no checkpoint, ValueError when shapes differ.
  """
  manager = make_manager(directory, max_to_keep=1, create=False)
  step = manager.latest_step()
  if step is None:
    manager.close()
    raise FileNotFoundError(f'No checkpoint of the {what} in {directory}.')
  logging.info('Loading %s params of the %s from %s, step %d.', key, what, directory, step)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return check_tree_matches(restored.state[key], expected, what=f'{what} checkpoint {directory}/{step}')
