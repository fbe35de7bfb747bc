"""The trainer on the built-in dataset: learning, checkpoint/resume, artifacts, the CLI."""

import io
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from jdiffrep import checkpoint
from jdiffrep import methods
from jdiffrep import sharding
from jdiffrep import train
from jdiffrep.data import pipeline

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params_of_run(workdir):
  """The params of the newest checkpoint in `workdir`, as NumPy arrays."""
  manager = checkpoint.make_manager(os.path.join(workdir, 'checkpoints'), max_to_keep=10)
  step = manager.latest_step()
  restored = manager.restore(step, args=checkpoint.ocp.args.Composite(
      state=checkpoint.ocp.args.StandardRestore()))
  manager.close()
  return step, jax.tree.map(np.asarray, restored.state['params'])


@pytest.mark.slow
def test_loss_falls_on_shapes(tiny_config):
  """40 AdamW steps on real shapes batches cut the eps loss of a fixed held-out batch."""
  config = tiny_config
  config.diffusion.prediction = 'eps'  # so the loss at init is E[eps^2] = 1
  config.optim.learning_rate = 2e-3
  mesh = sharding.make_mesh(config.mesh)
  method = methods.make_method(config, (32, 32, 3))
  tx, lr = train.make_optimizer(config.optim)
  state = train.init_train_state(method, tx, jax.random.PRNGKey(0))
  it = pipeline.make_train_iterator(config.dataset, global_batch_size=16, seed=0)
  held_out = sharding.global_batch(next(it), mesh)
  fixed_loss = jax.jit(lambda p: method.loss(p, {}, held_out, jax.random.PRNGKey(7))[0])
  step = jax.jit(lambda s, b: train.train_step(s, {}, b, method=method, tx=tx, learning_rate=lr,
                                               ema_decay=0.9))
  before = float(fixed_loss(state.params))
  np.testing.assert_allclose(before, 1.0, atol=0.1)  # adaLN-Zero: predicts eps = 0 at init
  for _ in range(40):
    state, metrics = step(state, sharding.global_batch(next(it), mesh))
  after = float(fixed_loss(state.params))
  assert int(state.step) == 40
  assert np.isfinite(float(metrics['grad_norm']))
  assert after < 0.8 * before, (before, after)


@pytest.mark.slow
def test_ema_follows_params(tiny_config):
  method = methods.make_method(tiny_config, (32, 32, 3))
  tx, lr = train.make_optimizer(tiny_config.optim)
  state = train.init_train_state(method, tx, jax.random.PRNGKey(0))
  batch = {'image': jnp.zeros((4, 32, 32, 3))}
  new, _ = train.train_step(state, {}, batch, method=method, tx=tx, learning_rate=lr,
                            ema_decay=0.75)
  for p_old, p_new, ema in zip(*map(jax.tree.leaves, (state.params, new.params, new.ema_params))):
    np.testing.assert_allclose(ema, 0.75 * p_old + 0.25 * p_new, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_run_writes_results_samples_and_checkpoints(tiny_config, tmp_path):
  results = train.train_and_evaluate(tiny_config, str(tmp_path))
  on_disk = json.loads((tmp_path / 'results.json').read_text())
  assert on_disk['steps'] == results['steps'] == 8
  assert np.isfinite(on_disk['final_loss']) and on_disk['images_per_sec'] > 0
  assert on_disk['config_name'] == 'shapes' and on_disk['num_params'] > 0
  for path in on_disk['artifacts']['samples']:
    assert os.path.getsize(path) > 0
  assert os.path.exists(tmp_path / 'samples' / 'step_0000008.png')
  assert checkpoint.make_manager(str(tmp_path / 'checkpoints'),
                                 max_to_keep=3).all_steps() == [4, 8]
  # TensorBoard's own reader loads what the TF-free writer wrote: scalars every 4 steps (the
  # last equal to results.json's final loss), the sample grid, the hparams.
  events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={'tensors': 0})
  events.Reload()
  assert {'loss', 'grad_norm', 'images_per_sec', 'step_time_ms'} <= set(
      events.PluginTagToContent('scalars'))
  losses = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors('loss')}
  assert sorted(losses) == [4, 8]
  np.testing.assert_allclose(losses[8], on_disk['final_loss'], rtol=1e-6)
  (grid,) = events.Tensors('samples')
  width, height, png = tensor_util.make_ndarray(grid.tensor_proto)
  with Image.open(tmp_path / 'samples' / 'step_0000008.png') as on_disk_grid:
    assert (int(width), int(height)) == on_disk_grid.size
  with Image.open(io.BytesIO(png)) as logged_grid:
    assert logged_grid.size == on_disk_grid.size
  session = plugin_data_pb2.HParamsPluginData.FromString(
      events.PluginTagToContent('hparams')['_hparams_/session_start_info']).session_start_info
  assert session.hparams['batch_size'].number_value == tiny_config.batch_size == 16
  assert session.hparams['method'].string_value == 'ddpm'


@pytest.mark.slow
def test_resumed_run_is_bit_identical_to_uninterrupted(tiny_config, tmp_path):
  """8 steps in one go == 4 steps, stop, same command for 8 steps (resumes at 4)."""
  whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
  train.train_and_evaluate(tiny_config, whole)
  first_half = tiny_config.copy_and_resolve_references()
  first_half.num_train_steps = 4
  assert train.train_and_evaluate(first_half, split)['steps'] == 4
  resumed = train.train_and_evaluate(tiny_config, split)
  assert resumed['start_step'] == 4 and resumed['steps'] == 8
  (step_a, params_a), (step_b, params_b) = _params_of_run(whole), _params_of_run(split)
  assert step_a == step_b == 8
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_array_equal(a, b)


def test_checkpoint_restores_state_and_the_next_batch(tiny_config, tmp_path):
  method = methods.make_method(tiny_config, (32, 32, 3))
  tx, _ = train.make_optimizer(tiny_config.optim)
  state = train.init_train_state(method, tx, jax.random.PRNGKey(3))
  it = pipeline.make_train_iterator(tiny_config.dataset, global_batch_size=16, seed=0)
  for _ in range(3):
    next(it)
  manager = checkpoint.make_manager(str(tmp_path), max_to_keep=2)
  checkpoint.save(manager, 3, state, it)
  manager.wait_until_finished()
  expected_batch = next(it)['image']

  fresh_state = train.init_train_state(method, tx, jax.random.PRNGKey(99))
  fresh_it = pipeline.make_train_iterator(tiny_config.dataset, global_batch_size=16, seed=0)
  restored = checkpoint.restore_latest(manager, fresh_state, fresh_it)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(next(fresh_it)['image'], expected_batch)


@pytest.mark.slow
def test_cli_runs_with_overrides(shapes_data_dir, tmp_path):
  workdir = tmp_path / 'run'
  cmd = [sys.executable, '-m', 'jdiffrep.main', '--config=configs/shapes.py:ddpm',
         f'--workdir={workdir}', f'--config.dataset.data_dir={shapes_data_dir}',
         '--config.dataset.tfds_config=32_small',
         '--config.model.name=XXS/8', '--config.batch_size=8', '--config.num_train_steps=3',
         '--config.log_every_steps=1', '--config.sample.num_images=4',
         '--config.sample.ddim_steps=2']
  proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())['stages']['ddpm']
  assert results == json.loads((workdir / 'ddpm' / 'results.json').read_text())
  assert results['steps'] == 3 and results['batch_size'] == 8 and results['model'] == 'XXS/8'
  assert 'Compiled train step' in proc.stderr


def test_missing_dataset_stops_before_compiling_with_a_clear_message(tmp_path):
  from configs import celeba  # pylint: disable=g-import-not-at-top
  from jdiffrep.data import registry  # pylint: disable=g-import-not-at-top
  config = celeba.get_config()
  config.dataset.data_dir = str(tmp_path / 'empty')
  with pytest.raises(registry.DatasetNotPreparedError) as error:
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  message = str(error.value)
  assert "'celeba'" in message and str(tmp_path / 'empty') in message
  assert 'python -m jdiffrep.prepare --dataset=celeba' in message
