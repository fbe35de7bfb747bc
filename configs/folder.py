"""Your own images: any folder prepared with `jdiffrep.prepare --dataset=folder`, 64x64.

  python -m jdiffrep.prepare --dataset=folder --source=/data/mine --name=mine \
      [--labels_csv=/data/mine.csv]
  python -m jdiffrep.main --config=configs/folder.py:mine --workdir=runs/mine

The argument is the `--name` the folder was prepared with (default 'images'). With a CSV of
binary attributes the evaluate stage probes them; with class labels it also trains the
counterfactual reader. Without labels, add `--config.pipeline=ddpm,diti` (no evaluation).
sdae joins with `--config.pipeline=ddpm,diti,pdae,sdae,evaluate`: it reads x_0, trains with
PDAE's loss weight and starts its denoiser from the ddpm stage's DM, the settings that made its
denoiser use z on an MNIST folder (the paper's reading, the base config's, left z unused there).
"""

from jdiffrep import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.name = 'folder'
  config.dataset.name = 'folder'
  config.dataset.tfds_config = arg or 'images'
  config.dataset.resolution = 64
  config.model.name = 'S/4'  # 256 tokens at 64x64
  config.model.dtype = 'bfloat16'
  config.batch_size = 64
  config.num_train_steps = 100_000
  config.sample_every_steps = 10_000
  config.checkpoint_every_steps = 5_000
  config.pipeline = ('ddpm', 'diti', 'pdae', 'evaluate')
  config.diti.latent_dim = 128
  config.diti.num_subsets = 16
  config.diti.gradient_mode = 'stop_grad'
  config.sdae.encoder_input = 'x_0'
  config.sdae.loss_weight = 'pdae'
  config.sdae.denoiser_init = 'dm'
  return config
