"""Orbax checkpoints that hold the train state *and* the grain iterator state together.

Restoring both means a resumed run continues with exactly the batch it would have seen next.
"""

from __future__ import annotations

import os

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp


def make_manager(directory: str, *, max_to_keep: int, create: bool = True
                 ) -> ocp.CheckpointManager:
  """A manager for `directory`; the trainer decides when to save (see `save`)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=('state', 'data'))


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
  """Starts an asynchronous save of `state` and the iterator position as checkpoint `step`."""
  manager.save(step, force=True, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator)))


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iterator):
  """Restores the newest checkpoint into `abstract_state`'s structure and shardings.

  `data_iterator` is advanced in place to the saved position. Returns the restored state, or
  None when the directory holds no checkpoint.
  """
  step = manager.latest_step()
  if step is None:
    return None
  logging.info('Restoring checkpoint of step %d from %s', step, manager.directory)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  return restored.state


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
