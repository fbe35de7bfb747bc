"""Self-conditional DiT ('sdae'): the encoder, joint training, embeddings, probes along t."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import stage_health
from jdiffrep import diffusion
from jdiffrep import checkpoint
from jdiffrep import methods
from jdiffrep import train
from jdiffrep.data import pipeline
from jdiffrep.evaluate import embedding_probe
from jdiffrep.methods import sdae
from jdiffrep.models import sdae as sdae_model
from tests.conftest import small_config


def _method(config, workdir='', **sdae_fields):
  config = config.copy_and_resolve_references()
  config.method = 'sdae'
  config.sdae.latent_dim = 16
  config.sdae.update(sdae_fields)
  return methods.make_method(config, (32, 32, 3), workdir=workdir)


@pytest.fixture(scope='module')
def dm_root(shapes_data_dir, tmp_path_factory):
  """A directory whose 'ddpm' sub-directory holds a finished (tiny, 4-step) DM run."""
  root = tmp_path_factory.mktemp('sdae_run')
  config = small_config(shapes_data_dir)
  config.num_train_steps = 4
  train.train_and_evaluate(config, str(root / 'ddpm'))
  return str(root)


def _images(seed=0, n=4):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, 32, 32, 3), minval=-1.0, maxval=1.0)


@pytest.mark.slow
def test_encoder_gives_unit_vectors_that_depend_on_the_image():
  encoder = sdae_model.TimestepEncoder(depth=1, hidden_size=32, num_heads=2, patch_size=8,
                                       latent_dim=8)
  x, t = _images(), jnp.array([0, 10, 500, 999])
  params = encoder.init(jax.random.PRNGKey(1), x, t)
  z = encoder.apply(params, x, t)
  assert z.shape == (4, 8) and z.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)
  assert float(jnp.abs(z[0] - z[1]).max()) > 1e-3  # different images, different z
  raw = sdae_model.TimestepEncoder(depth=1, hidden_size=32, num_heads=2, patch_size=8,
                                   latent_dim=8, normalize=False).apply(params, x, t)
  np.testing.assert_allclose(z, raw / np.linalg.norm(raw, axis=-1, keepdims=True), rtol=1e-5)


def test_parameters_are_encoder_projection_and_a_plain_dit(tiny_config):
  method = _method(tiny_config, encoder_depth=1)
  params = method.init_params(jax.random.PRNGKey(0))
  assert set(params) == {'encoder', 'z_proj', 'denoiser'}
  assert params['z_proj']['kernel'].shape == (16, 128)
  # The denoiser is an ordinary DiT tree: XXS has 4 blocks; the encoder has the asked-for 1.
  assert {k for k in params['denoiser'] if k.startswith('blocks_')} == {f'blocks_{i}'
                                                                        for i in range(4)}
  assert {k for k in params['encoder'] if k.startswith('blocks_')} == {'blocks_0'}
  assert params['encoder']['x_embedder']['proj']['kernel'].shape == (
      params['denoiser']['x_embedder']['proj']['kernel'].shape)


@pytest.mark.slow
def test_joint_training_lowers_the_loss_and_trains_both_networks(tiny_config):
  tiny_config.optim.learning_rate = 2e-3
  method = _method(tiny_config)
  tx, lr = train.make_optimizer(tiny_config.optim)
  state = train.init_train_state(method, tx, jax.random.PRNGKey(0))
  initial = jax.tree.map(np.asarray, state.params)
  it = pipeline.make_train_iterator(tiny_config.dataset, global_batch_size=16, seed=0)
  held_out = {'image': jnp.asarray(next(it)['image'])}
  fixed_loss = jax.jit(lambda p: method.loss(p, {}, held_out, jax.random.PRNGKey(5))[0])
  step = jax.jit(lambda s, b: train.train_step(s, {}, b, method=method, tx=tx, learning_rate=lr,
                                               ema_decay=0.9))
  before = float(fixed_loss(state.params))
  for _ in range(30):
    state, _ = step(state, {'image': jnp.asarray(next(it)['image'])})
  assert float(fixed_loss(state.params)) < 0.8 * before
  for part in ('encoder', 'z_proj', 'denoiser'):
    moved = [float(np.abs(np.asarray(a) - b).max()) for a, b in
             zip(jax.tree.leaves(state.params[part]), jax.tree.leaves(initial[part]))]
    assert max(moved) > 0, part
  # The denoising loss reaches the encoder: its gradient is non-zero once the adaLN layers that
  # read z (zero at init) have moved.
  grads = jax.grad(lambda p: method.loss(p, {}, held_out, jax.random.PRNGKey(5))[0])(state.params)
  assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads['encoder']))) > 0


@pytest.mark.slow
def test_the_consistency_term_is_one_minus_cosine_of_neighbouring_embeddings(tiny_config):
  a = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
  b = jnp.array([[2.0, 0.0], [1.0, 0.0], [-3.0, -4.0]])
  np.testing.assert_allclose(sdae.cosine_similarity(a, b), [1.0, 0.0, -1.0], atol=1e-6)
  plain = _method(tiny_config)
  with_term = _method(tiny_config, consistency_weight=0.5, consistency_max_gap=5)
  params = plain.init_params(jax.random.PRNGKey(0))
  batch, rng = {'image': _images(n=8)}, jax.random.PRNGKey(3)
  loss, metrics = with_term.loss(params, {}, batch, rng)
  assert 0.0 <= float(metrics['consistency_loss']) <= 2.0
  np.testing.assert_allclose(loss, metrics['denoising_loss'] + 0.5 * metrics['consistency_loss'],
                             rtol=1e-6)
  plain_loss, plain_metrics = plain.loss(params, {}, batch, rng)
  assert 'consistency_loss' not in plain_metrics
  np.testing.assert_allclose(plain_loss, metrics['denoising_loss'], rtol=1e-6)


@pytest.mark.slow
def test_embeddings_read_x_t_or_x_0(tiny_config):
  x0 = _images(n=2)
  on_chain = _method(tiny_config, encoder_input='x_t')
  params = on_chain.init_params(jax.random.PRNGKey(0))
  key_a, key_b = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  z_a = on_chain.embed(params, x0, 300, key_a)
  np.testing.assert_array_equal(z_a, on_chain.embed(params, x0, 300, key_a))  # deterministic
  assert float(jnp.abs(z_a - on_chain.embed(params, x0, 300, key_b)).max()) > 1e-4  # x_t noise
  # The embedding is E(q_sample(x0, t, eps), t) with eps drawn from the key.
  eps = jax.random.normal(key_a, x0.shape)
  t = jnp.full((2,), 300)
  np.testing.assert_allclose(
      z_a, on_chain.encode(params, diffusion.q_sample(on_chain.schedule, x0, t, eps), t),
      atol=1e-5)
  clean = _method(tiny_config, encoder_input='x_0')
  np.testing.assert_array_equal(clean.embed(params, x0, 300, key_a),
                                clean.embed(params, x0, 300, key_b))


@pytest.mark.slow
def test_pdae_loss_weight_is_the_weighted_eps_error_of_the_prediction(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.diffusion.prediction = 'x0'
  uniform = _method(config, loss_weight='uniform', encoder_input='x_t')
  weighted = _method(config, loss_weight='pdae', encoder_input='x_t')
  params = uniform.init_params(jax.random.PRNGKey(0))
  # Nudge every parameter so the zero-initialised output layer gives a non-zero prediction.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
  params = jax.tree.unflatten(treedef, [p + 0.02 * jax.random.normal(k, p.shape)
                                        for p, k in zip(leaves, keys)])
  batch, rng = {'image': _images(n=8)}, jax.random.PRNGKey(5)
  # Redraw the loss's t and eps (same key split) and recompute it in float64 numpy.
  t_rng, eps_rng, _ = jax.random.split(rng, 3)
  x0 = np.asarray(batch['image'], np.float64)
  t = np.asarray(jax.random.randint(t_rng, (8,), 0, uniform.schedule.num_timesteps))
  eps = np.asarray(jax.random.normal(eps_rng, x0.shape, jnp.float32), np.float64)
  abar = np.asarray(uniform.schedule.alphas_cumprod, np.float64)[t][:, None, None, None]
  x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
  x_t32 = jnp.asarray(x_t, jnp.float32)  # the default encoder reads x_t
  output, _ = uniform.model.apply({'params': params}, x_t32, jnp.asarray(t), x_t32)
  x0_pred = np.asarray(output, np.float64)
  eps_pred = (x_t - np.sqrt(abar) * x0_pred) / np.sqrt(1 - abar)
  snr = abar[:, 0, 0, 0] / (1 - abar[:, 0, 0, 0])
  want_weighted = np.mean(snr ** 0.1 / (1 + snr) * np.mean((eps_pred - eps) ** 2, (1, 2, 3)))
  want_uniform = np.mean((x0_pred - x0) ** 2)
  np.testing.assert_allclose(uniform.loss(params, {}, batch, rng)[0], want_uniform, rtol=2e-3)
  np.testing.assert_allclose(weighted.loss(params, {}, batch, rng)[0], want_weighted, rtol=2e-3)


def test_bad_sdae_config_names_the_field(tiny_config):
  with pytest.raises(ValueError, match='config.sdae.encoder_input'):
    _method(tiny_config, encoder_input='noise')
  with pytest.raises(ValueError, match='config.sdae.loss_weight'):
    _method(tiny_config, loss_weight='snr')
  with pytest.raises(ValueError, match='consistency_weight'):
    _method(tiny_config, consistency_weight=-1.0)


@pytest.mark.slow
def test_warm_started_denoiser_is_the_dm_and_the_encoder_stays_random(tiny_config, dm_root):
  method = _method(tiny_config, os.path.join(dm_root, 'sdae'), denoiser_init='dm')
  assert method.dm_workdir == os.path.join(dm_root, 'ddpm')
  dm = methods.make_method(tiny_config, (32, 32, 3))
  dm_ema = checkpoint.load_trained_params(os.path.join(dm_root, 'ddpm', 'checkpoints'),
                                          dm.abstract_params(), what='DM')
  tx, _ = train.make_optimizer(tiny_config.optim)
  fresh = train.init_train_state(method, tx, jax.random.PRNGKey(0))
  state = train.warm_start(fresh, method.warm_start_params(),
                           jax.tree.map(lambda x: x.sharding, fresh))
  jax.tree.map(np.testing.assert_array_equal, state.params['denoiser'], dm_ema)
  jax.tree.map(np.testing.assert_array_equal, state.ema_params, state.params)
  for part in ('encoder', 'z_proj'):
    jax.tree.map(np.testing.assert_array_equal, state.params[part], fresh.params[part])
  # With z_proj at zero the denoiser computes exactly the DM: c = time_emb + 0.
  params = {**state.params, 'z_proj': jax.tree.map(jnp.zeros_like, state.params['z_proj'])}
  x, t = _images(1), jnp.array([0, 10, 500, 999])
  z = method.encode(params, x, t)
  np.testing.assert_allclose(
      method.model.apply({'params': params}, x, t, z, method=method.model.denoise),
      dm.model.apply({'params': dm_ema}, x, t), atol=1e-6)
  # Scratch init loads nothing.
  scratch = _method(tiny_config, os.path.join(dm_root, 'sdae'), denoiser_init='scratch')
  assert scratch.warm_start_params() == {}
  with pytest.raises(ValueError, match='not in the model'):
    train.warm_start(fresh, {'branch': {}}, jax.tree.map(lambda x: x.sharding, fresh))


@pytest.mark.slow
def test_trainer_warm_starts_once_and_resumes_from_its_checkpoint(tiny_config, dm_root):
  tiny_config.method = 'sdae'
  tiny_config.sdae.latent_dim = 16
  tiny_config.sdae.denoiser_init = 'dm'
  tiny_config.optim.learning_rate = 0.0  # the checkpoint after step 1 holds the initial params
  tiny_config.num_train_steps = 1
  tiny_config.checkpoint_every_steps = 1
  workdir = os.path.join(dm_root, 'sdae')
  train.train_and_evaluate(tiny_config, workdir)
  method = methods.make_method(tiny_config, (32, 32, 3), workdir=workdir)
  warm = method.warm_start_params()['denoiser']
  saved = checkpoint.load_trained_params(os.path.join(workdir, 'checkpoints'),
                                         method.abstract_params(), what='sdae', key='params')
  jax.tree.map(np.testing.assert_array_equal, saved['denoiser'], warm)
  # A resumed run continues from its own checkpoint; the DM is not loaded over it again.
  tiny_config.optim.learning_rate = 1e-3
  tiny_config.num_train_steps = 3
  tiny_config.log_every_steps = 3
  results = train.train_and_evaluate(tiny_config, workdir)
  # the health sdae logs includes how much its denoiser uses z
  assert {'health/z_reliance', 'health_ema/z_reliance'} <= set(results['embedding_health'])
  assert np.isfinite(results['embedding_health']['health/z_reliance'])
  # 3 steps from a small z projection: the denoiser ignores z, and the results say so
  assert results['embedding_health']['health_ema/z_reliance'] < 1.01
  assert len(results['warnings']) == 1 and 'z_reliance' in results['warnings'][0]
  # benchmarks.stage_health reads the same health back from the finished stage's checkpoint
  read_back = stage_health.stage_health(workdir)
  assert read_back['step'] == 3
  for name in ('z_reliance', 'std_mean', 'effective_rank'):
    assert read_back[name] == pytest.approx(results['embedding_health'][f'health_ema/{name}'],
                                            rel=1e-5)
  with pytest.raises(FileNotFoundError, match='one training stage'):
    stage_health.stage_health(dm_root)
  moved = checkpoint.load_trained_params(os.path.join(workdir, 'checkpoints'),
                                         method.abstract_params(), what='sdae', key='params')
  assert max(float(np.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(moved['denoiser']), jax.tree.leaves(warm))) > 0


def test_z_reliance_is_one_exactly_when_another_images_z_changes_nothing(tiny_config):
  x0 = _images(n=4)
  method = _method(tiny_config, encoder_input='x_0')
  params = method.init_params(jax.random.PRNGKey(0))
  # DiT's output layer starts at zero (adaLN-zero): perturb every weight so the output moves
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  # and make z's projection large, so that z moves the condition as much as t does
  params['z_proj']['kernel'] = params['z_proj']['kernel'] * 100
  ratio = float(method.z_reliance(params, x0))
  assert np.isfinite(ratio) and abs(ratio - 1.0) > 1e-4  # the denoiser reads z
  # a denoiser whose z projection is zero ignores z: the ratio is 1
  deaf = dict(params, z_proj=dict(params['z_proj'],
                                  kernel=jnp.zeros_like(params['z_proj']['kernel'])))
  assert float(method.z_reliance(deaf, x0)) == pytest.approx(1.0, abs=1e-6)
  # the x_0 encoder on a batch of one image repeated: the next image's z is the image's own
  same = jnp.broadcast_to(x0[:1], x0.shape)
  assert float(method.z_reliance(params, same)) == pytest.approx(1.0, abs=1e-6)
  # the x_t encoder reads the next image's own x_t, whose noise differs: not 1
  on_chain = _method(tiny_config, encoder_input='x_t')
  assert abs(float(on_chain.z_reliance(params, same)) - 1.0) > 1e-4


@pytest.mark.slow
def test_warm_start_errors_say_what_to_do(tiny_config, dm_root, tmp_path):
  with pytest.raises(FileNotFoundError, match='config.sdae.dm_workdir'):
    _method(tiny_config, str(tmp_path / 'sdae'), denoiser_init='dm').warm_start_params()
  with open(os.path.join(dm_root, 'ddpm', 'config.json')) as f:
    assert json.load(f)['diffusion']['prediction'] == 'x0'
  tiny_config.diffusion.prediction = 'eps'
  with pytest.raises(ValueError, match='predicts \'x0\'.*config.diffusion.prediction'):
    _method(tiny_config, os.path.join(dm_root, 'sdae'), denoiser_init='dm').warm_start_params()
  with pytest.raises(ValueError, match='config.sdae.denoiser_init'):
    _method(tiny_config, denoiser_init='pretrained')


def test_sweep_summary_chooses_t_on_validation_not_test():
  """Test accuracy peaks at t = 100, validation at t = 25: the summary reports t = 25 (issue 16)."""
  linear = lambda test, validation: {'mean': test, 'validation': validation}
  results = {
      'sdae_t0': {'linear': linear(0.7, 0.70), 'knn': {'mean': 0.6}},
      'sdae_t100': {'linear': linear(0.9, 0.80), 'knn': {'mean': 0.8}},
      'sdae_t25': {'linear': linear(0.8, 0.85), 'knn': {'mean': 0.85}},
      'dm_t0': {'linear': linear(0.5, 0.6), 'knn': {'mean': 0.4}},
      'dm_t10': {'linear': linear(0.5, 0.6), 'knn': {'mean': 0.4}},
      'pixels': {'linear': linear(0.75, 0.7), 'knn': {'mean': 0.7}},
  }
  assert embedding_probe.sweep_curve(results, 'sdae') == [(0, 0.7), (25, 0.8), (100, 0.9)]
  assert embedding_probe.sweep_curve(results, 'sdae', 'knn') == [(0, 0.6), (25, 0.85), (100, 0.8)]
  summary = embedding_probe.summarize(results, ['sdae', 'dm'])
  assert summary['sdae_best_t'] == {'t': 25, 'validation': 0.85, 'linear': 0.8, 'knn': 0.85}
  assert summary['dm_best_t']['t'] == 0  # ties go to the smaller t
  assert summary['pixels'] == {'validation': 0.7, 'linear': 0.75, 'knn': 0.7}
  attribute = {'sdae_t0': {'test_mean_ap': 0.9, 'validation_mean_ap': 0.6},
               'sdae_t50': {'test_mean_ap': 0.7, 'validation_mean_ap': 0.8},
               'pixels': {'test_mean_ap': 0.8, 'validation_mean_ap': 0.8}}
  attribute_summary = embedding_probe.summarize_attribute_probe(attribute, ['sdae', 'dm'])
  assert attribute_summary['sdae_best_t'] == {'t': 50, 'validation_mean_ap': 0.8,
                                              'test_mean_ap': 0.7}
  assert attribute_summary['pixels'] == {'validation_mean_ap': 0.8, 'test_mean_ap': 0.8}
