"""Configs: every shipped file loads and validates; overrides and bad input behave."""

import glob
import os

from absl import flags
from ml_collections import config_flags
import pytest

from jdiffrep import config as config_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(*args):
  """Parses a command line the way `jdiffrep.main` does (overrides are read from argv)."""
  argv = ['prog', f'--config={os.path.join(REPO_ROOT, "configs", "shapes.py")}', *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO_ROOT, 'configs', '[!_]*.py'))))
def test_every_shipped_config_is_valid(path):
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values)
  flag_values(['prog', f'--config={path}'])
  config_lib.validate_config(flag_values.config)
  assert flag_values.config.name == os.path.basename(path)[:-3]


def test_overrides_are_applied():
  config = _parse('--config.batch_size=24', '--config.model.name=S/2',
                  '--config.optim.learning_rate=0.5', '--config.dataset.data_dir=/x')
  assert config.batch_size == 24 and config.model.name == 'S/2'
  assert config.optim.learning_rate == 0.5 and config.dataset.data_dir == '/x'


@pytest.mark.parametrize('override', ['--config.pipeline=ddpm,sdae,evaluate',
                                      "--config.pipeline=('ddpm','sdae','evaluate')",
                                      '--config.pipeline=ddpm, sdae ,evaluate'])
def test_a_pipeline_given_on_the_command_line_names_its_stages(override):
  config = _parse(override)
  config.pipeline = config_lib.split_pipeline(config.pipeline)  # as jdiffrep.main does
  assert config.pipeline == ('ddpm', 'sdae', 'evaluate')
  config_lib.validate_config(config)
  assert config_lib.split_pipeline('diti') == ('diti',) and config_lib.split_pipeline(()) == ()


def test_unknown_key_is_an_error_that_names_it():
  with pytest.raises(Exception, match='batchsize'):
    _parse('--config.batchsize=24')


@pytest.mark.parametrize('field, value, fragment', [
    ('model.name', 'Q/3', 'S'),
    ('dataset.name', 'imagenet', 'celeba'),
    ('diffusion.schedule', 'sigmoid', 'cosine'),
    ('method', 'gan', 'ddpm'),
    ('batch_size', 0, 'positive'),
    ('optim.ema_decay', 1.5, 'ema_decay'),
    ('evaluate.counterfactual_alpha', 1.5, r'counterfactual_alpha=1.5 must be in \[0, 1\]'),
    ('evaluate.counterfactual_noise_alpha', -0.1, 'counterfactual_noise_alpha'),
    ('evaluate.eval_limit', 0, r'eval_limit=0 must be a positive integer or None'),
])
def test_bad_values_name_the_field_and_the_fix(field, value, fragment):
  config = _parse()
  node = config
  *parents, leaf = field.split('.')
  for part in parents:
    node = node[part]
  node[leaf] = value
  with pytest.raises(ValueError, match=fragment):
    config_lib.validate_config(config)
