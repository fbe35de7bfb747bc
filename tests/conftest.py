"""Shared test set-up: two fake CPU devices, and a small `shapes` dataset the tests write."""

import os

# Must happen before JAX initialises its backend: two host devices make every train test shard
# its batch for real.
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=2').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


# A JAX compilation cache shared by this run's test processes, fresh for each run: many tests
# compile the same small programs (the tiny DM's train step, the probes), and on 2 cores
# compiling is most of the suite's time; with the cache a repeated compile is a file read. The
# process that makes it (xdist's controller, or a plain run) removes it at the end; xdist's
# workers and the subprocesses tests start inherit it through the environment.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import tempfile  # pylint: disable=g-import-not-at-top
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='jdiffrep-test-jax-cache-')
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  _OWNS_COMPILATION_CACHE = True
else:
  _OWNS_COMPILATION_CACHE = False

import pytest  # pylint: disable=g-import-not-at-top


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
  """The run that made the compilation cache (xdist's controller, or a plain run) removes it."""
  if _OWNS_COMPILATION_CACHE:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)


@pytest.fixture(scope='session')
def shapes_data_dir(tmp_path_factory) -> str:
  """A fresh data dir holding `shapes/32_small` (512 / 64 / 64 examples), prepared for real."""
  from jdiffrep.data import shapes_builder  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  shapes_builder.prepare_shapes(data_dir, '32_small')
  return data_dir


def small_config(data_dir: str):
  """The default shapes config, shrunk so a run takes seconds on 2 CPU cores."""
  from configs import shapes  # pylint: disable=g-import-not-at-top
  config = shapes.get_config('ddpm')
  config.pipeline = ()  # tests call the trainer directly unless they set a pipeline
  config.stage_overrides = {}
  config.dataset.data_dir = data_dir
  config.dataset.tfds_config = '32_small'
  config.dataset.read_threads = 2
  config.model.name = 'XXS/8'
  config.batch_size = 16
  config.num_train_steps = 8
  config.log_every_steps = 4
  config.checkpoint_every_steps = 4
  config.sample_every_steps = 0
  config.sample.num_images = 4
  config.sample.ddim_steps = 4
  config.diti.latent_dim = 32
  config.diti.num_subsets = 4
  return config


@pytest.fixture
def tiny_config(shapes_data_dir):
  return small_config(shapes_data_dir)


def run_evaluators(config, tmp_path, stages):
  """The evaluate stage's evaluators on loaded `stages`, writing into <tmp_path>/evaluate."""
  from jdiffrep import paths  # pylint: disable=g-import-not-at-top
  from jdiffrep.evaluate import pipeline_eval  # pylint: disable=g-import-not-at-top
  from jdiffrep.evaluate.evaluators import base  # pylint: disable=g-import-not-at-top
  out_dir = paths.absolute(str(tmp_path / 'evaluate'))
  out_dir.mkdir(parents=True, exist_ok=True)
  context = base.Context(config, out_dir, str(tmp_path), stages)
  try:
    return pipeline_eval.run_evaluators(context)
  finally:
    context.close()
