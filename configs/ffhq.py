"""FFHQ 128x128, paper-scale DiT-B/4 denoiser, global batch 128.

Both papers (ddpm, diti, pdae, sdae, evaluate) with the official encoder of 128x128 images. No
labels: the evaluation reports reconstructions and label-free counterfactual distances
(`config_lib.paper_scale_pipeline`).

Needs FFHQ prepared once (`python -m jdiffrep.prepare --dataset=ffhq --source=DIR`); without it
the run stops before compiling and prints that command.
"""

from jdiffrep import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.name = 'ffhq'
  config.dataset.name = 'ffhq'
  config.dataset.resolution = 128
  config.model.name = 'B/4'  # 1024 tokens at 128x128
  config.model.dtype = 'bfloat16'
  config.batch_size = 128
  config.sample_every_steps = 10_000
  config.checkpoint_every_steps = 5_000
  # DiTi, the paper's "balanced" FFHQ setting: d = 512, k = 64 (8 dims each), stop_grad.
  config.diti.latent_dim = 512
  config.diti.num_subsets = 64
  config.diti.gradient_mode = 'stop_grad'
  # The official 128x128 encoder: five stride-2 stages to 4x4x256, attention at 16x16.
  config.diti.encoder_channels = (64, 128, 256, 256, 256)
  config_lib.paper_scale_pipeline(config, num_train_steps=500_000, representation_steps=500_000)
  return config
