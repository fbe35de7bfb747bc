"""DiTi / PDAE on a frozen DM: coefficients, frozen params, learning, pipeline stages."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffrep import config as config_lib
from jdiffrep import diffusion
from jdiffrep import methods
from jdiffrep import run
from jdiffrep import timestep_features
from jdiffrep import train
from jdiffrep.data import pipeline
from jdiffrep.evaluate.evaluators import counterfactual as counterfactual_evaluator
from jdiffrep.methods import diti
from tests.conftest import small_config


@pytest.fixture
def diti_config(tiny_config):
  return tiny_config


@pytest.fixture(scope='module')
def run_root(shapes_data_dir, tmp_path_factory):
  """A directory whose 'ddpm' sub-directory holds a finished (tiny) DM run."""
  root = tmp_path_factory.mktemp('diti_run')
  train.train_and_evaluate(small_config(shapes_data_dir), str(root / 'ddpm'))
  return str(root)


def _method(config, workdir, name='diti'):
  config = config.copy_and_resolve_references()
  config.method = name
  return methods.make_method(config, (32, 32, 3), workdir=workdir)


def test_shift_coefficient_and_weight_match_the_official_values():
  schedule = diffusion.make_schedule('linear', 1000)
  s = np.asarray(diti.shift_coefficient(schedule))
  w = np.asarray(diffusion.pdae_loss_weight(schedule))
  assert s[0] == 0.0 and np.all(s[1:] < 0)
  np.testing.assert_allclose(w[0], 2.5e-4, rtol=0.01)
  np.testing.assert_allclose(w[999], 0.364, rtol=0.01)
  assert abs(int(np.argmax(w)) - 475) <= 2
  np.testing.assert_allclose(w.max(), 0.722, rtol=0.01)
  # Independent formula in float64 for a few t.
  betas = np.linspace(1e-4, 0.02, 1000)
  abar = np.cumprod(1 - betas)
  for t in (1, 10, 500, 999):
    want = -np.sqrt(1 - betas[t]) * (1 - abar[t - 1]) / np.sqrt(1 - abar[t])
    np.testing.assert_allclose(s[t], want, rtol=1e-3)


def test_sampling_shift_is_the_training_one_or_the_official_one(tiny_config):
  schedule = diffusion.make_schedule('linear', 1000)
  training = np.asarray(diti.sampling_shift_coefficient(schedule, 'training'))
  official = np.asarray(diti.sampling_shift_coefficient(schedule, 'official'))
  np.testing.assert_array_equal(training, np.asarray(diti.shift_coefficient(schedule)))
  abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
  np.testing.assert_allclose(official, -np.sqrt(1 - abar), rtol=1e-4)
  # The same at large t, apart at small t (s_0 = 0 against -sqrt(beta_0) = -0.01).
  np.testing.assert_allclose(training[500:], official[500:], rtol=0.02)
  assert training[0] == 0.0 and official[0] == pytest.approx(-0.01, rel=1e-3)
  with pytest.raises(ValueError, match='sampling_shift'):
    diti.sampling_shift_coefficient(schedule, 'mine')
  # The config fields reach the method; the real-data configs take the official choices.
  config_lib.paper_scale_pipeline(tiny_config, num_train_steps=8, representation_steps=8)
  method = _method(tiny_config, '')
  assert (method.sampling_shift, method.invert_eps_at) == ('official', 'source')


@pytest.mark.slow
def test_branch_starts_at_zero_so_the_prediction_is_the_frozen_dm(diti_config, run_root):
  method = _method(diti_config, os.path.join(run_root, 'diti'))
  params = method.init_params(jax.random.PRNGKey(0))
  frozen = method.load_frozen()
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  t = jnp.array([0, 10, 500, 999])
  z = jax.random.normal(jax.random.PRNGKey(2), (4, 32))
  want = diffusion.eps_from_prediction(method.schedule, method.dm_prediction, x, t,
                                       method.dm.apply({'params': frozen['dm']}, x, t))
  np.testing.assert_array_equal(method.predict_eps(params, frozen, x, t, z), want)
  # The preview grid: a row of originals, then the row of their reconstructions (padded to 8).
  images = jnp.clip(x, -1, 1)
  preview = method.preview(params, frozen, None, images)
  assert preview.shape == (16, 32, 32, 3)
  np.testing.assert_array_equal(preview[:4], images)
  np.testing.assert_array_equal(preview[4:8], 1.0)
  np.testing.assert_allclose(preview[8:12], jnp.clip(method.reconstruct(
      params, frozen, images, num_steps=method.reconstruction_steps), -1, 1), atol=1e-5)


@pytest.mark.slow
def test_frozen_dm_never_changes_and_is_not_optimised(diti_config, run_root):
  method = _method(diti_config, os.path.join(run_root, 'diti'))
  tx, lr = train.make_optimizer(diti_config.optim)
  state = train.init_train_state(method, tx, jax.random.PRNGKey(0))
  frozen = method.load_frozen()
  before = jax.tree.map(np.array, frozen)
  assert set(state.params) == {'encoder', 'branch'}
  opt_leaves = sum(x.size for x in jax.tree.leaves(state.opt_state))
  param_leaves = sum(x.size for x in jax.tree.leaves(state.params))
  dm_leaves = sum(x.size for x in jax.tree.leaves(frozen))
  # Adam keeps two moments per trainable parameter (plus step counters), none for the DM.
  assert 2 * param_leaves <= opt_leaves < 2 * param_leaves + 16
  assert dm_leaves > 0
  step = jax.jit(lambda s, f, b: train.train_step(s, f, b, method=method, tx=tx,
                                                  learning_rate=lr, ema_decay=0.9))
  it = pipeline.make_train_iterator(diti_config.dataset, global_batch_size=16, seed=0)
  for _ in range(3):
    new_state, _ = step(state, frozen, {'image': jnp.asarray(next(it)['image'])})
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params))]
    state = new_state
  assert any(changed)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(frozen)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('gradient_mode', ['base', 'stop_grad'])
@pytest.mark.slow
def test_loss_falls_and_the_encoder_learns(diti_config, run_root, gradient_mode):
  diti_config.diti.gradient_mode = gradient_mode
  method = _method(diti_config, os.path.join(run_root, 'diti'))
  diti_config.optim.learning_rate = 2e-3
  tx, lr = train.make_optimizer(diti_config.optim)
  state = train.init_train_state(method, tx, jax.random.PRNGKey(0))
  frozen = method.load_frozen()
  it = pipeline.make_train_iterator(diti_config.dataset, global_batch_size=16, seed=0)
  held_out = {'image': jnp.asarray(next(it)['image'])}
  fixed_loss = jax.jit(lambda p: method.loss(p, frozen, held_out, jax.random.PRNGKey(5))[0])
  grads = jax.grad(lambda p: method.loss(p, frozen, held_out, jax.random.PRNGKey(5))[0])(
      state.params)
  assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads['branch']))) > 0
  step = jax.jit(lambda s, b: train.train_step(s, frozen, b, method=method, tx=tx,
                                               learning_rate=lr, ema_decay=0.9))
  before = float(fixed_loss(state.params))
  for _ in range(30):
    state, _ = step(state, {'image': jnp.asarray(next(it)['image'])})
  after = float(fixed_loss(state.params))
  assert after < 0.9 * before, (before, after)
  encoder_grads = jax.grad(lambda p: method.loss(p, frozen, held_out, jax.random.PRNGKey(5))[0])(
      state.params)['encoder']
  assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(encoder_grads))) > 0


@pytest.mark.parametrize('gamma', [0.1, -1.0])
@pytest.mark.slow
def test_loss_is_the_eps_error_weighted_by_snr_to_the_gamma(diti_config, run_root, gamma):
  diti_config.diti.loss_weight_gamma = gamma
  method = _method(diti_config, os.path.join(run_root, 'diti'))
  params, frozen = method.init_params(jax.random.PRNGKey(0)), method.load_frozen()
  # Nudge the branch so that its zero-initialised output layer gives a non-zero correction.
  leaves, treedef = jax.tree.flatten(params['branch'])
  keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
  params['branch'] = jax.tree.unflatten(treedef, [p + 0.02 * jax.random.normal(k, p.shape)
                                                  for p, k in zip(leaves, keys)])
  x0 = jax.random.uniform(jax.random.PRNGKey(3), (8, 32, 32, 3), minval=-1, maxval=1)
  rng = jax.random.PRNGKey(5)
  # Redraw the loss's t and eps (same key split); weigh the errors in float64 numpy.
  t_rng, eps_rng = jax.random.split(rng)
  t = jax.random.randint(t_rng, (8,), 0, method.schedule.num_timesteps)
  eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
  z = method.encode(params, x0)
  masks = timestep_features.mask_tables(method.partition)
  eps_pred = method.predict_eps(params, frozen, diffusion.q_sample(method.schedule, x0, t, eps),
                                t, timestep_features.mask_condition(z, t, masks))
  mse = np.mean((np.asarray(eps_pred, np.float64) - np.asarray(eps, np.float64)) ** 2, (1, 2, 3))
  abar = np.cumprod(1 - np.asarray(method.schedule.betas, np.float64))
  snr = abar / (1 - abar)
  want = np.mean(snr[t] ** gamma / (1 + snr[t]) * mse)
  np.testing.assert_allclose(method.loss(params, frozen, {'image': x0}, rng)[0], want, rtol=1e-4)
  if gamma == -1.0:  # on the x0 error (eps error = snr x0 error) the weight is 1 / (1 + snr)
    x0_weight = np.asarray(diffusion.pdae_loss_weight(method.schedule, gamma), np.float64) * snr
    np.testing.assert_allclose(x0_weight, 1 / (1 + snr), rtol=1e-3)  # float32 1 - abar near 0


def test_loss_weight_gamma_must_be_a_number_in_range(diti_config, tmp_path):
  for bad in (3.0, -2.5, float('nan')):
    diti_config.diti.loss_weight_gamma = bad
    with pytest.raises(ValueError, match='config.diti.loss_weight_gamma'):
      _method(diti_config, str(tmp_path))


def test_conv_encoder_attention_sits_where_the_config_says(diti_config, tmp_path):
  for side, block in ((16, 'attn_0'), (8, 'attn_1')):  # 32x32 input: stage 0 gives 16x16
    diti_config.diti.encoder_attention_resolution = side
    encoder = _method(diti_config, str(tmp_path / 'diti')).abstract_params()['encoder']
    assert [name for name in encoder if name.startswith('attn')] == [block]


def test_pdae_sees_every_dim_at_every_step(diti_config, tmp_path):
  method = _method(diti_config, str(tmp_path / 'pdae'), name='pdae')
  assert method.partition.num_subsets == 1
  assert np.all(method.partition.cumulative_masks() == 1)


def test_missing_dm_checkpoint_says_what_to_do(diti_config, tmp_path):
  method = _method(diti_config, str(tmp_path / 'diti'))
  with pytest.raises(FileNotFoundError, match='dm_workdir'):
    method.load_frozen()


@pytest.mark.slow
def test_dm_that_predicts_something_else_is_rejected(diti_config, run_root):
  with open(os.path.join(run_root, 'ddpm', 'config.json')) as f:
    trained_as = json.load(f)['diffusion']['prediction']
  diti_config.diffusion.prediction = next(p for p in ('eps', 'x0') if p != trained_as)
  method = _method(diti_config, os.path.join(run_root, 'diti'))
  with pytest.raises(ValueError, match=f"predicts '{trained_as}'.*config.diti.dm_workdir"):
    method.load_frozen()


@pytest.mark.slow
def test_dm_checkpoint_of_another_model_is_rejected(diti_config, run_root):
  diti_config.model.name = 'XXS/4'  # the DM was trained as XXS/8
  method = _method(diti_config, os.path.join(run_root, 'diti'))
  with pytest.raises(ValueError, match='config.model'):
    method.load_frozen()


@pytest.mark.slow
def test_pipeline_runs_every_stage_and_reuses_finished_ones(diti_config, tmp_path):
  diti_config.pipeline = ('ddpm', 'diti', 'pdae', 'sdae', 'evaluate')
  diti_config.sdae.latent_dim = 16
  diti_config.evaluate.embedding_timesteps = (0, 100)
  diti_config.evaluate.dm_feature_timesteps = (0, 100)
  diti_config.stage_overrides = {'ddpm': {'num_train_steps': 4}}
  diti_config.evaluate.probe_epochs = 2
  diti_config.evaluate.eval_limit = 48  # of the 64 validation and test images
  diti_config.evaluate.reconstruction_images = 4
  diti_config.evaluate.counterfactual_pairs = 4
  diti_config.evaluate.counterfactual_noise_alpha = 0.5  # also inverts B and slerps the noises
  diti_config.evaluate.classifier_train_images = 256
  diti_config.evaluate.classifier_steps = 20
  diti_config.evaluate.random_encoder_baselines = False  # test_real_pipelines' CelebA has them
  workdir = str(tmp_path / 'run')
  results = run.run(diti_config, workdir)
  stages = results['stages']
  assert stages['ddpm']['steps'] == 4 and stages['diti']['steps'] == 8
  assert stages['diti']['method'] == 'diti' and stages['pdae']['method'] == 'pdae'
  assert stages['sdae']['method'] == 'sdae'
  for stage in ('ddpm', 'diti', 'pdae', 'sdae', 'evaluate'):
    assert os.path.exists(os.path.join(workdir, stage, 'results.json'))
  evaluation = stages['evaluate']
  # Every representation gets the attribute probe; sdae and the DM at each t of their sweeps.
  assert set(evaluation['attribute_probe']) == {'pixels', 'diti', 'pdae', 'sdae_t0', 'sdae_t100',
                                                'sdae_mean_t', 'dm_t0', 'dm_t100'}
  attribute_summary = evaluation['attribute_probe_summary']
  for family in ('sdae', 'dm'):
    chosen = attribute_summary[f'{family}_best_t']
    assert chosen['validation_mean_ap'] == max(
        evaluation['attribute_probe'][f'{family}_t{t}']['validation_mean_ap'] for t in (0, 100))
    assert chosen['test_mean_ap'] == evaluation['attribute_probe'][
        f"{family}_t{chosen['t']}"]['test_mean_ap']
  assert evaluation['num_examples'] == {'train': 512, 'validation': 48, 'test': 48}
  for probe_result in evaluation['attribute_probe'].values():
    assert 0.0 < probe_result['test_mean_ap'] <= 1.0
    assert len(probe_result['per_attribute_ap']) == 17
  assert len(evaluation['timestep_probe']) == 4  # one per subset group of k = 4
  assert set(evaluation['timestep_probe_random_rotation']) == set(evaluation['timestep_probe'])
  assert os.path.exists(os.path.join(workdir, 'evaluate', 'timestep_probe_random_rotation.png'))
  # One counterfactual row per probed group, plus the control that swaps all of z.
  assert set(evaluation['counterfactual']['change_rates']) == (
      set(evaluation['timestep_probe']) | {counterfactual_evaluator.ALL_SUBSETS_LABEL})
  assert evaluation['counterfactual']['groups'][counterfactual_evaluator.ALL_SUBSETS_LABEL] == [0, 4]
  assert (evaluation['counterfactual']['alpha'], evaluation['counterfactual']['noise_alpha']) == (
      1.0, 0.5)
  # Every representation is read by the same categorical probes; sdae and the DM along t.
  categorical = evaluation['categorical_probe']
  assert set(categorical) == {'pixels', 'diti', 'pdae', 'sdae_t0', 'sdae_t100', 'sdae_mean_t',
                              'dm_t0', 'dm_t100'}
  for reading in categorical.values():
    assert set(reading['linear']['per_attribute']) == {
        'background', 'position', 'size', 'shape', 'shade', 'texture'}
    assert 0.0 < reading['linear']['mean'] <= 1.0 and 0.0 < reading['knn']['mean'] <= 1.0
  summary = evaluation['categorical_probe_summary']
  assert summary['sdae_best_t']['t'] in (0, 100) and summary['dm_best_t']['t'] in (0, 100)
  assert summary['sdae_best_t']['validation'] == max(
      categorical['sdae_t0']['linear']['validation'],
      categorical['sdae_t100']['linear']['validation'])
  assert summary['sdae_best_t']['linear'] == categorical[
      f"sdae_t{summary['sdae_best_t']['t']}"]['linear']['mean']
  for name in ('timestep_probe.png', 'counterfactuals.png', 'reconstruction_diti.png',
               'accuracy_vs_t.png', 'attribute_ap_vs_t.png'):
    assert os.path.getsize(os.path.join(workdir, 'evaluate', name)) > 0
  assert os.path.exists(os.path.join(workdir, 'results.json'))
  # The same command again: training stages are finished, so each returns its saved results.
  diti_config.pipeline = ('ddpm', 'diti', 'pdae')
  again = run.run(diti_config, workdir)['stages']
  for stage in ('ddpm', 'diti', 'pdae'):
    assert again[stage] == stages[stage]
