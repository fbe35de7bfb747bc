"""Orbax checkpoints that hold the train state *and* the grain iterator state together.

Restoring both means a resumed run continues with exactly the batch it would have seen next.
"""

from __future__ import annotations

import os

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp


def make_manager(directory: str, *, max_to_keep: int) -> ocp.CheckpointManager:
  """A manager for `directory`; the trainer decides when to save (see `save`)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
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
