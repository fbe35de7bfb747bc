"""The evaluate stage's evaluators: entries checked, skipped with their reason, results reused."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffrep import config as config_lib
from jdiffrep import paths
from jdiffrep.evaluate import evaluators
from jdiffrep.evaluate import pipeline_eval
from jdiffrep.evaluate.evaluators import base
from jdiffrep.methods import representation
from tests.conftest import run_evaluators


def _projection_stage(name='toy', *, step=3, sweep=False, seed=0):
  """A stage whose 'encoder' is a fixed random projection of the pixels (params as an argument);
  with `sweep`, two feature sets f'{name}_t{t}' that differ by a scale, like a t sweep."""
  weights = jax.random.normal(jax.random.key(seed), (32 * 32 * 3, 24)) / 50.0

  def features(params, x0):
    z = x0.reshape(x0.shape[0], -1) @ params['w']
    return {f'{name}_t0': z, f'{name}_t5': jnp.tanh(z)} if sweep else {name: z}

  return base.Stage(name=name, method=None, params={'w': weights}, frozen=None,
                    representation=representation.Representation(
                        features=features, sweep_family=name if sweep else None,
                        sweep_label=f'{name} along t'),
                    step=step)


@pytest.fixture
def eval_config(tiny_config, tmp_path):
  tiny_config.evaluate.probe_epochs = 2
  tiny_config.evaluate.eval_limit = 48
  tiny_config.evaluate.train_limit = 256
  return tiny_config


def test_evaluators_run_what_applies_skip_the_rest_with_reasons_and_reuse_results(
    eval_config, tmp_path):
  stages = {'toy': _projection_stage(), 'walk': _projection_stage('walk', sweep=True, seed=1)}
  results = run_evaluators(eval_config, tmp_path, stages)
  status = results['evaluators']
  assert [k for k, v in status.items() if v.startswith('ran')] == [
      'attribute_probe', 'categorical_probe', 'accuracy_vs_t']  # the plot after the probes
  assert status['reconstruction'] == 'skipped: no stage decodes its z (DiTi, PDAE)'
  assert 'diti' in status['timestep_probe'] and 'skipped' in status['counterfactual']
  # Every declared feature set is probed, and the sweep is summarised at its validation-best t,
  # whatever the family is called.
  assert set(results['attribute_probe']) == {'pixels', 'toy', 'walk_t0', 'walk_t5'}
  best = results['attribute_probe_summary']['walk_best_t']
  assert best['validation_mean_ap'] == max(results['attribute_probe'][f'walk_t{t}'][
      'validation_mean_ap'] for t in (0, 5))
  assert set(results['attribute_probe_summary']) == {'walk_best_t', 'pixels', 'toy'}
  assert results['num_examples'] == {'train': 256, 'validation': 48, 'test': 48}
  assert (tmp_path / 'evaluate' / 'attribute_ap_vs_t.png').stat().st_size > 0
  stored = json.loads((tmp_path / 'evaluate' / 'results.json').read_text())
  assert stored['categorical_probe'] == results['categorical_probe']

  # The same settings and checkpoints: every finished evaluator is reused, results identical.
  again = run_evaluators(eval_config, tmp_path, stages)
  assert {k: v for k, v in again['evaluators'].items() if not v.startswith('skipped')} == {
      'attribute_probe': 'reused', 'categorical_probe': 'reused', 'accuracy_vs_t': 'reused'}
  assert again['attribute_probe'] == results['attribute_probe']

  # A newer checkpoint of one stage, or another probe setting, makes every probe run again;
  # disabling an entry leaves the others reusable.
  eval_config.evaluate.evals.accuracy_vs_t.enabled = False
  stages['toy'] = _projection_stage(step=4)
  rerun = run_evaluators(eval_config, tmp_path, stages)
  assert rerun['evaluators']['attribute_probe'].startswith('ran')
  assert 'accuracy_vs_t' not in rerun['evaluators']
  assert rerun['attribute_probe'] == results['attribute_probe']  # same weights: same numbers


def test_a_stage_cannot_shadow_another_feature_set(eval_config, tmp_path):
  stages = {'a': _projection_stage('pixels')}
  with pytest.raises(ValueError, match="declares the feature set 'pixels'"):
    run_evaluators(eval_config, tmp_path, stages)


@pytest.mark.parametrize('field, value, message', [
    ('type', 'linear_probe', "evals.attribute_probe.type='linear_probe' is not an evaluator"),
    ('stage', 'diti', r"fields \['stage'\] that a 'attribute_probe' evaluator does not read"),
])
def test_bad_entries_are_named_before_anything_runs(tiny_config, field, value, message):
  with tiny_config.evaluate.evals.attribute_probe.unlocked():
    tiny_config.evaluate.evals.attribute_probe[field] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate_config(tiny_config)


def test_entries_fill_option_defaults_and_leave_out_disabled_ones(tiny_config):
  evals = tiny_config.evaluate.evals
  evals.counterfactual.enabled = False
  with evals.timestep_probe.unlocked():
    del evals.timestep_probe['stage']
  listed = dict(pipeline_eval.entries(tiny_config.evaluate))
  assert 'counterfactual' not in listed and listed['timestep_probe'].stage == 'diti'
  assert list(listed) == ['attribute_probe', 'categorical_probe', 'reconstruction',
                          'timestep_probe', 'accuracy_vs_t']  # the plot reads the probes
  assert set(evaluators.EVALUATORS) == {entry.type for entry in evals.values()}


def test_methods_declare_their_representations(tiny_config):
  from jdiffrep import methods  # pylint: disable=g-import-not-at-top
  shape = (32, 32, 3)
  declared = {}
  for name in ('ddpm', 'diti', 'pdae', 'sdae', 'simclr', 'simsiam'):
    method = methods.make_method(config_lib.stage_config(tiny_config, name), shape)
    declared[name] = method.representation(name, tiny_config.evaluate, seed=0)
  # One conv encoder architecture for DiTi, PDAE and the SSL baselines; sdae's is its own; the
  # DM's features are not a learned embedding.
  architectures = {name: rep.architecture for name, rep in declared.items()}
  assert len({architectures[n] for n in ('diti', 'pdae', 'simclr', 'simsiam')}) == 1
  assert architectures['sdae'] not in (None, architectures['diti'])
  assert architectures['ddpm'] is None
  assert not declared['simclr'].reconstructs and declared['simclr'].partition is None
  assert declared['diti'].partition is not None and declared['pdae'].partition is None
  assert declared['diti'].reconstructs and declared['pdae'].reconstructs
  assert (declared['sdae'].sweep_family, declared['ddpm'].sweep_family) == ('sdae', 'dm')
  assert not declared['sdae'].reconstructs and declared['ddpm'].partition is None
  tiny_config.evaluate.dm_feature_timesteps = ()
  ddpm = methods.make_method(config_lib.stage_config(tiny_config, 'ddpm'), shape)
  assert ddpm.representation('ddpm', tiny_config.evaluate, seed=0) is None
  images = np.zeros((2, *shape), np.float32)
  sdae = methods.make_method(config_lib.stage_config(tiny_config, 'sdae'), shape)
  params = sdae.init_params(jax.random.key(0))
  out = declared['sdae'].features(params, images)
  assert set(out) == {f'sdae_t{t}' for t in tiny_config.evaluate.embedding_timesteps} | {
      'sdae_mean_t'}
  np.testing.assert_allclose(np.linalg.norm(out['sdae_mean_t'], axis=-1), 1.0, rtol=1e-5)


def test_flipping_probes_get_the_mirrored_train_images_features(eval_config, tmp_path):
  eval_config.evaluate.probe_train_flip = True
  eval_config.evaluate.train_limit = 64
  out_dir = paths.absolute(str(tmp_path))
  context = base.Context(eval_config, out_dir, str(tmp_path), {'toy': _projection_stage()})
  try:
    feature_sets = context.feature_sets
    pixels = feature_sets['train']['features']['pixels'].reshape(64, 32, 32, 3)
    mirrored = feature_sets['train_mirrored']['features']
    np.testing.assert_array_equal(mirrored['pixels'].reshape(64, 32, 32, 3), pixels[:, :, ::-1])
    assert mirrored['toy'].shape == (64, 24)
    assert context.extraction_info['num_examples'] == {'train': 64, 'validation': 48, 'test': 48}
  finally:
    context.close()
  # On shapes a flip moves 'position' (left <-> right): the config check refuses it.
  with pytest.raises(ValueError, match='probe_train_flip=True, but a horizontal flip changes'):
    config_lib.validate_config(eval_config)


def test_random_encoder_rows_are_one_per_architecture_at_random_init(tiny_config):
  from jdiffrep import methods  # pylint: disable=g-import-not-at-top
  shape = (32, 32, 3)
  stages = {}
  for seed, name in enumerate(('diti', 'simclr', 'sdae')):
    method = methods.make_method(config_lib.stage_config(tiny_config, name), shape)
    params = jax.jit(method.init_params)(jax.random.key(100 + seed))  # stands in for trained
    stages[name] = base.Stage(name=name, method=method, params=params, frozen={},
                              representation=method.representation(name, tiny_config.evaluate, 0),
                              step=7)
  random_stages = pipeline_eval.random_encoder_stages(stages, tiny_config.evaluate, seed=3)
  assert set(random_stages) == {'random_diti', 'random_sdae'}
  random_diti = random_stages['random_diti']
  assert random_diti.step == 0 and not random_diti.representation.reconstructs
  assert random_diti.representation.partition is None
  expected = jax.jit(stages['diti'].method.init_params)(jax.random.PRNGKey(3))
  for got, want in zip(jax.tree.leaves(random_diti.params), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(got, want)
  images = jax.random.uniform(jax.random.key(0), (2, *shape), minval=-1.0, maxval=1.0)
  random_z = random_diti.representation.features(random_diti.params, images)['random_diti']
  trained_z = stages['diti'].representation.features(stages['diti'].params, images)['diti']
  assert random_z.shape == trained_z.shape and not np.allclose(random_z, trained_z)
  assert set(jax.eval_shape(random_stages['random_sdae'].representation.features,
                            random_stages['random_sdae'].params, images)) == {
          f'random_sdae_t{t}' for t in tiny_config.evaluate.embedding_timesteps} | {
              'random_sdae_mean_t'}
