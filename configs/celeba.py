"""CelebA 64x64 (DiTi / PDAE crop), paper-scale DiT-B/4 denoiser, global batch 128.

Both papers (ddpm, diti, pdae, sdae, evaluate), evaluated as the official DiTi code does:
the 40-attribute probe of every representation, the time-step probe and counterfactuals read
by an attribute classifier (`config_lib.paper_scale_pipeline`; README: "Where the evaluation
follows the official DiTi code"), and the paper's transfer test: every representation regresses
LFW's 73 attribute scores (`config.evaluate.evals.attribute_regression`, LFW read at the same
resolution from the same data dir; skipped with the prepare command until
`python -m jdiffrep.prepare --dataset=lfw --source=DIR` has run).

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
  config.sample_every_steps = 10_000
  config.checkpoint_every_steps = 5_000
  # DiTi, the paper's CelebA setting: d = 512, k = 64, uneven split by stages (SPEC section 3).
  config.diti.latent_dim = 512
  config.diti.num_subsets = 64
  config.diti.stage_boundaries = (50, 100, 300, 500, 1000)
  config.diti.stage_dims = (10, 25, 327, 100, 50)
  config.diti.gradient_mode = 'base'
  config_lib.paper_scale_pipeline(config, num_train_steps=300_000, representation_steps=297_000)
  config.evaluate.evals.attribute_regression.enabled = True  # the transfer test on LFW
  return config
