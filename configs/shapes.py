"""Default: a small DiT on the built-in `shapes` dataset; finishes on a 2-core CPU in minutes.

Run: python -m jdiffrep.main --config=configs/shapes.py --workdir=runs/shapes
"""

from jdiffrep import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.name = 'shapes'
  config.dataset.name = 'shapes'
  config.dataset.resolution = 32
  config.dataset.random_flip = False  # a flip would swap the left/right position labels

  config.model.name = 'XS/4'
  config.batch_size = 64
  config.num_train_steps = 1500
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.optim.grad_clip_norm = 1.0
  config.optim.ema_decay = 0.995  # a short run: the paper's 0.9999 would average mostly init

  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.sample_every_steps = 500
  config.sample.ddim_steps = 50
  return config
