"""Plain diffusion model (stage 1 of DiTi): a DiT trained with the eps loss, uniform t.

A method bundles what the trainer needs and nothing else: `init_params`, `loss` and `sample`.
Everything method-specific lives here, so `train.py` never branches on the method.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdiffrep import diffusion
from jdiffrep.models import dit


@dataclasses.dataclass(frozen=True)
class DDPM:
  """An unconditional DiT denoiser on images of `image_shape` = (H, W, C)."""
  model: dit.DiT
  schedule: diffusion.Schedule
  image_shape: tuple[int, int, int]

  @classmethod
  def from_config(cls, config, image_shape) -> 'DDPM':
    model = dit.dit_from_name(config.model.name, dtype=jnp.dtype(config.model.dtype),
                              attention_impl=config.model.attention_impl)
    schedule = diffusion.make_schedule(
        config.diffusion.schedule, config.diffusion.num_timesteps,
        config.diffusion.beta_start, config.diffusion.beta_end)
    return cls(model=model, schedule=schedule, image_shape=tuple(image_shape))

  def init_params(self, rng: jax.Array):
    x = jnp.zeros((1, *self.image_shape), jnp.float32)
    return self.model.init(rng, x, jnp.zeros((1,), jnp.int32))['params']

  def loss(self, params, batch: dict, rng: jax.Array):
    """Eps-prediction MSE on `batch['image']` [B, H, W, C] in [-1, 1] at uniform t."""
    x0 = batch['image']
    t_rng, eps_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, (x0.shape[0],), 0, self.schedule.num_timesteps)
    eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
    x_t = diffusion.q_sample(self.schedule, x0, t, eps)
    eps_pred = self.model.apply({'params': params}, x_t, t)
    return diffusion.eps_loss(eps_pred, eps), {}

  def eps_fn(self, params):
    return lambda x, t: self.model.apply({'params': params}, x, t)

  def sample(self, params, rng: jax.Array, num_images: int, *, ddim_steps: int,
             eta: float = 0.0) -> jax.Array:
    """DDIM samples [num_images, H, W, C] in [-1, 1] (clipped)."""
    noise_rng, ddim_rng = jax.random.split(rng)
    x_T = jax.random.normal(noise_rng, (num_images, *self.image_shape), jnp.float32)
    x0 = diffusion.ddim_sample(self.eps_fn(params), self.schedule, x_T, num_steps=ddim_steps,
                               eta=eta, rng=ddim_rng, clip_x0=True)
    return jnp.clip(x0, -1.0, 1.0)
