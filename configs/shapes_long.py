"""`shapes` with the representation stages trained for long (about 3 hours on 2 cores).

  python -m jdiffrep.main --config=configs/shapes_long.py --workdir=runs/shapes_long

The default pipeline (configs/shapes.py) plus the SimCLR and SimSiam baselines, with DiTi, PDAE,
SimCLR and SimSiam trained for 10,000 steps instead of 700, and sdae for 14,000 instead of 500.
On one DM, DiTi and sdae score above raw pixels in each of three seeds (README, "Longer runs";
every run in benchmarks/README.md, "The long DiTi stage re-measured").
The DM stage is the default one, so the `ddpm/` of a default run can be copied in and reused.
"""

import importlib.util
import os


def _shapes_config(arg):
  """configs/shapes.py's config, loaded by path (config files are not an installed package)."""
  spec = importlib.util.spec_from_file_location(
      'jdiffrep_shapes_config', os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             'shapes.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg: str | None = None):
  config = _shapes_config(arg)
  config.name = 'shapes_long'
  config.stage_overrides.diti.num_train_steps = 10_000
  config.stage_overrides.pdae.num_train_steps = 10_000
  config.stage_overrides.sdae.num_train_steps = 14_000
  if not arg:  # the whole pipeline: with the self-supervised baselines on DiTi's encoder
    config.pipeline = config.pipeline[:-1] + ('simclr', 'simsiam', 'evaluate')
  config.stage_overrides.simclr.num_train_steps = 10_000
  config.stage_overrides.simsiam.num_train_steps = 10_000
  config.checkpoint_every_steps = 1_000
  config.evaluate.counterfactual_pairs = 64
  # The sweeps and previews that the 20-minute default trims.
  config.evaluate.embedding_timesteps = (0, 100, 400)
  config.evaluate.dm_feature_timesteps = (0, 100)
  config.sample.num_images = 64
  return config
