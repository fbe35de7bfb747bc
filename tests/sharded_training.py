"""Run by tests/test_multidevice.py in a subprocess with 8 fake CPU devices (not a test itself).

  python -m tests.sharded_training DATA_DIR OUT_DIR

Writes a (randomly initialised) DM checkpoint for DiTi to freeze, then, for the steps of
`SHARDED_METHODS`, runs the same few train steps from the same initial state on three meshes:
1 device, 8-way data parallel (8x1) and 2x4 data x fsdp, with the trainer's own sharded step
(`train.make_sharded_step`). Writes, per method and mesh, the losses, gradient norms, final
params and which arrays were split to OUT_DIR/<method>_<mesh>.npz.
"""

import os
import sys
import time

import jax
import numpy as np

from jdiffrep import checkpoint
from jdiffrep import methods
from jdiffrep import sharding
from jdiffrep import train
from jdiffrep.data import pipeline
from tests.conftest import small_config

NUM_STEPS = 3
# SimCLR's negatives and SimSiam's batch norm span the global batch, split over devices here.
SHARDED_METHODS = ('ddpm', 'diti', 'sdae', 'simclr', 'simsiam')
MESHES = {'1dev': ({'data': 1, 'fsdp': 1}, 1), '8x1': ({'data': 8, 'fsdp': 1}, 8),
          '2x4': ({'data': 2, 'fsdp': 4}, 8)}


def meshes_of(method: str) -> tuple[str, ...]:
  """The meshes `method` runs on: the SSL baselines skip 8x1 (2x4 splits their batch too) to
  save CI time."""
  return ('1dev', '2x4') if method in ('simclr', 'simsiam') else tuple(MESHES)


def _config(data_dir, method, mesh_axes):
  config = small_config(data_dir)
  config.method = method
  config.sdae.latent_dim = 16
  config.mesh.data, config.mesh.fsdp = mesh_axes['data'], mesh_axes['fsdp']
  config.mesh.fsdp_min_size = 4096  # XXS/8 matrices are split, biases and norms replicated
  config.optim.warmup_steps = 0  # full-size updates from the first step
  # The official 0.01 puts some SSL gradients near Adam's eps, where float32 noise of a
  # cross-device sum moves an update visibly; the sharding under test is the same at 1.
  config.simclr.loss_weight = config.simsiam.loss_weight = 1.0
  return config


def initial_state(config, workdir):
  """The trainer's initial state of `config` (host arrays) and its frozen params."""
  method = methods.make_method(config, (32, 32, 3), workdir=workdir)
  tx, _ = train.method_optimizer(config, method)
  state = jax.jit(lambda rng: train.init_train_state(method, tx, rng))(
      jax.random.PRNGKey(config.seed))
  return jax.device_get(state), jax.device_get(method.load_frozen())


def run_steps(config, workdir, devices, state, frozen):
  """NUM_STEPS train steps of `config` on `devices` from `state`.

  Returns the losses and gradient norms [S], the final params and which arrays were split.
  """
  mesh = train.make_checked_mesh(config, devices)
  method = methods.make_method(config, (32, 32, 3), workdir=workdir)
  tx, learning_rate = train.method_optimizer(config, method)
  step_fn, state_sharding, frozen_sharding = train.make_sharded_step(
      config, method, tx, learning_rate, mesh)
  state = jax.device_put(state, state_sharding)
  frozen = jax.device_put(frozen, frozen_sharding)
  train_iter = pipeline.make_train_iterator(config.dataset, global_batch_size=config.batch_size,
                                            seed=config.seed)
  losses, grad_norms = [], []
  for _ in range(NUM_STEPS):
    state, metrics = step_fn(state, frozen, sharding.global_batch(next(train_iter), mesh))
    losses.append(float(metrics['loss']))
    grad_norms.append(float(metrics['grad_norm']))
  split = lambda tree: [x.sharding.spec != jax.P() for x in jax.tree.leaves(tree)]
  return (np.array(losses), np.array(grad_norms),
          [np.asarray(x) for x in jax.tree.leaves(state.params)],
          split(state.params) + split(state.opt_state) + split(frozen))


def write_dm_checkpoint(config, workdir):
  """A DM checkpoint as the trainer writes it (random init, EMA = params), for DiTi to load."""
  method = methods.make_method(config, (32, 32, 3))
  tx, _ = train.make_optimizer(config.optim)
  state = train.init_train_state(method, tx, jax.random.PRNGKey(1))
  train_iter = pipeline.make_train_iterator(config.dataset, global_batch_size=config.batch_size,
                                            seed=config.seed)
  manager = checkpoint.make_manager(os.path.join(workdir, 'checkpoints'), max_to_keep=1)
  checkpoint.save(manager, 1, state, train_iter)
  manager.wait_until_finished()
  manager.close()


def main(data_dir, out_dir):
  assert jax.device_count() == 8, jax.devices()
  root = os.path.join(out_dir, 'run')
  write_dm_checkpoint(_config(data_dir, 'ddpm', MESHES['1dev'][0]), os.path.join(root, 'ddpm'))
  start = time.time()
  for method in SHARDED_METHODS:
    workdir = os.path.join(root, method)
    state, frozen = initial_state(_config(data_dir, method, MESHES['1dev'][0]), workdir)
    for name, (mesh_axes, num_devices) in MESHES.items():
      if name not in meshes_of(method):
        continue
      config = _config(data_dir, method, mesh_axes)
      losses, grad_norms, params, split = run_steps(config, workdir, jax.devices()[:num_devices],
                                                    state, frozen)
      np.savez(os.path.join(out_dir, f'{method}_{name}.npz'), losses=losses,
               grad_norms=grad_norms, split=split,
               **{f'param_{i}': p for i, p in enumerate(params)})
      print(f'{method} {name} ({time.time() - start:.0f} s): losses {losses.tolist()}, '
            f'{sum(split)} of {len(split)} arrays split', flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:])
