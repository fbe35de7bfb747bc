"""Default: the built-in `shapes` dataset, small enough for a 2-core CPU.

  python -m jdiffrep.main --config=configs/shapes.py --workdir=runs/shapes
      the whole pipeline: DM, then DiTi and PDAE on the frozen DM, then evaluation.
  python -m jdiffrep.main --config=configs/shapes.py:ddpm --workdir=runs/shapes_dm
      only the diffusion model (the 'ddpm' stage), about 7 minutes.
"""

from jdiffrep import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.name = 'shapes'
  config.pipeline = ('ddpm', 'diti', 'pdae', 'evaluate') if not arg else tuple(arg.split(','))
  config.method = config.pipeline[0]
  config.dataset.name = 'shapes'
  config.dataset.resolution = 32
  config.dataset.random_flip = False  # a flip would swap the left/right position labels

  # A pixel-space DiT this small learns x0-prediction far faster than eps-prediction: its eps
  # error at t ~ T is amplified by 1/sqrt(abar_t) when DDIM turns eps into x0 (README).
  config.model.name = 'XXS/4'
  config.diffusion.prediction = 'x0'
  config.batch_size = 32
  config.num_train_steps = 2400
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.optim.grad_clip_norm = 1.0
  config.optim.ema_decay = 0.995  # a short run: the paper's 0.9999 would average mostly init

  config.log_every_steps = 100
  config.checkpoint_every_steps = 400
  config.sample_every_steps = 800
  config.sample.num_images = 64
  config.sample.ddim_steps = 50

  # DiTi on 32x32 shapes: 64-dim z in 8 subsets of 8 dims (the paper: 512 / 64).
  config.diti.latent_dim = 64
  config.diti.num_subsets = 8
  config.stage_overrides = {
      'diti': {'num_train_steps': 1500, 'optim': {'ema_decay': 0.99}},
      'pdae': {'num_train_steps': 1500, 'optim': {'ema_decay': 0.99}},
      'sdae': {'num_train_steps': 1500, 'optim': {'ema_decay': 0.99}},
  }
  config.sdae.latent_dim = 128
  config.evaluate.train_limit = 20_000
  # Four points of the t sweep (the curve is flat below t = 25 and falls after t = 100 here):
  # each point is one more encoder / DM pass over every evaluated image.
  config.evaluate.embedding_timesteps = (0, 25, 100, 400)
  config.evaluate.dm_feature_timesteps = (0, 25, 100, 400)
  return config
