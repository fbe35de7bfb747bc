"""CelebA 64x64 (DiTi / PDAE crop), paper-scale DiT-B/4 denoiser, global batch 128.

Needs the prepared TFDS `celeb_a` dataset; without it the run stops and says how to prepare it.
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
  return config
