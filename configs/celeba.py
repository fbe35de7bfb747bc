"""CelebA 64x64 (DiTi / PDAE crop), paper-scale DiT-B/4 denoiser, global batch 128.

Needs CelebA prepared once (`python -m jdiffrep.prepare --dataset=celeba --source=DIR`); without
it the run stops before compiling and prints that command.
"""

from jdiffrep import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.name = 'celeba'
  config.dataset.name = 'celeba'
  config.dataset.resolution = 64
  config.model.name = 'B/4'  # 256 tokens at 64x64
  config.model.dtype = 'bfloat16'
  config.batch_size = 128
  config.num_train_steps = 300_000
  config.sample_every_steps = 10_000
  config.checkpoint_every_steps = 5_000
  # DiTi, the paper's CelebA setting: d = 512, k = 64, uneven split by stages (SPEC section 3).
  config.pipeline = ('ddpm', 'diti', 'pdae', 'evaluate')
  config.diti.latent_dim = 512
  config.diti.num_subsets = 64
  config.diti.stage_boundaries = (50, 100, 300, 500, 1000)
  config.diti.stage_dims = (10, 25, 327, 100, 50)
  config.diti.gradient_mode = 'base'
  config.stage_overrides = {'diti': {'num_train_steps': 297_000},
                            'pdae': {'num_train_steps': 297_000}}
  return config
