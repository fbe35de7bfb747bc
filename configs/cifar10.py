"""CIFAR-10 32x32, DiT-S/2 denoiser (256 tokens), global batch 128: semantic embeddings (sdae).

The pipeline trains the plain DM (the DDAE-style feature baseline), the self-conditional DiT
('sdae', SPEC section 4) and the SimCLR and SimSiam baselines, and evaluates them with the linear
probe and kNN on the 10 classes (the DM's and sdae's at a sweep of t, top-1 per t,
`evaluate/accuracy_vs_t.png`), next to raw pixels and randomly initialised encoders.

Needs CIFAR-10 prepared once from the python batches (`python -m jdiffrep.prepare
--dataset=cifar10 --source=DIR`); without it the run stops before compiling and prints that command.
"""

from jdiffrep import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.name = 'cifar10'
  config.dataset.name = 'cifar10'
  config.dataset.resolution = 32
  config.model.name = 'S/2'
  config.model.dtype = 'bfloat16'
  config.batch_size = 128
  config.num_train_steps = 400_000
  config.sample_every_steps = 10_000
  config.checkpoint_every_steps = 5_000
  config.pipeline = ('ddpm', 'sdae', 'simclr', 'simsiam', 'evaluate')
  config.sdae.latent_dim = 256
  # The SSL baselines train DiTi's conv encoder (config.diti) at sdae's d, its attention after
  # the 2nd stride-2 stage (8x8 at 32x32), SimCLR at the official SSL batch of 512.
  config.diti.latent_dim = 256
  config.diti.encoder_attention_resolution = 8
  config.stage_overrides = {'simclr': {'batch_size': 512}}
  return config
