"""Semantic embeddings for DDMs by self-conditional diffusion learning (SPEC section 4).

A time-step-dependent encoder E(x, t) -> z_t and a DiT denoiser conditioned on it are trained
together by one loss, `|| target - D(x_t, t, E(x_enc, t)) ||^2` at uniform t, gradients into both;
`x_enc` is x_t (default: the embedding lives on the Markov chain) or x_0 (`config.sdae.encoder_input`).
An optional adjacent-step consistency term `lambda (1 - cos(z_t, sg(z_t')))`, |t - t'| <= gap,
pulls the embeddings of neighbouring noise levels together. `loss_weight = 'pdae'` replaces the
plain MSE by the eps MSE weighted by PDAE's w_t, as DiTi trains (`diffusion.pdae_loss_weight`).
The embedding of an image at step t is z_t of its forward-diffused x_t (fixed noise per call), or
of x_0 itself.

With `encoder_input = 'x_t'` the whole model is a function of (x_t, t), so it samples like any DM.
With `denoiser_init = 'dm'` the denoiser starts from a trained DM's EMA params instead of random
init (`warm_start_params`); both networks still train.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdiffrep import diffusion
from jdiffrep import images as images_lib
from jdiffrep.methods import ddpm
from jdiffrep.methods import representation
from jdiffrep.models import sdae as sdae_model

ENCODER_INPUTS = ('x_t', 'x_0')
DENOISER_INITS = ('scratch', 'dm')
LOSS_WEIGHTS = ('uniform', 'pdae')
MEAN_SUFFIX = '_mean_t'  # the feature set of z_t averaged over the sweep


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
  """Row-wise cosine similarity of a, b [B, d] -> [B]."""
  a, b = sdae_model.l2_normalize(a), sdae_model.l2_normalize(b)
  return jnp.sum(a * b, axis=-1)


@dataclasses.dataclass(frozen=True)
class SDAE:
  """Self-conditional DiT: encoder + denoiser trained jointly on images of `image_shape`."""
  model: sdae_model.SelfConditionedDiT
  schedule: diffusion.Schedule
  image_shape: tuple[int, int, int]
  prediction: str = 'eps'
  encoder_input: str = 'x_t'
  consistency_weight: float = 0.0
  consistency_max_gap: int = 10
  num_preview: int = 64
  preview_steps: int = 50
  clip_x0: bool = True  # clamp each DDIM step's predicted x0 to [-1, 1]
  denoiser_init: str = 'scratch'
  loss_weight: str = 'uniform'
  dm_workdir: str = ''  # the DM run `denoiser_init = 'dm'` starts from

  @classmethod
  def from_config(cls, config, image_shape, *, workdir: str = '') -> 'SDAE':
    c = config.sdae
    if c.encoder_input not in ENCODER_INPUTS:
      raise ValueError(f'config.sdae.encoder_input={c.encoder_input!r}; valid: {ENCODER_INPUTS}.')
    if c.denoiser_init not in DENOISER_INITS:
      raise ValueError(f'config.sdae.denoiser_init={c.denoiser_init!r}; valid: {DENOISER_INITS}.')
    if c.loss_weight not in LOSS_WEIGHTS:
      raise ValueError(f'config.sdae.loss_weight={c.loss_weight!r}; valid: {LOSS_WEIGHTS}.')
    if c.consistency_weight < 0 or c.consistency_max_gap < 1:
      raise ValueError('config.sdae.consistency_weight must be >= 0 and consistency_max_gap >= 1, '
                       f'got {c.consistency_weight} and {c.consistency_max_gap}.')
    model = sdae_model.SelfConditionedDiT.from_name(
        config.model.name, encoder_depth=c.encoder_depth, latent_dim=c.latent_dim,
        normalize=c.normalize, dtype=jnp.dtype(config.model.dtype),
        attention_impl=config.model.attention_impl)
    schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps,
                                       config.diffusion.beta_start, config.diffusion.beta_end)
    return cls(model=model, schedule=schedule, image_shape=tuple(image_shape),
               prediction=config.diffusion.prediction, encoder_input=c.encoder_input,
               consistency_weight=float(c.consistency_weight),
               consistency_max_gap=int(c.consistency_max_gap),
               num_preview=config.sample.num_images, preview_steps=config.sample.ddim_steps,
               clip_x0=config.sample.clip_x0,
               denoiser_init=c.denoiser_init, loss_weight=c.loss_weight,
               dm_workdir=(ddpm.dm_workdir(c.dm_workdir, workdir) if c.denoiser_init == 'dm'
                           else ''))

  # -------------------------------------------------------------- parameters
  def init_params(self, rng: jax.Array) -> dict:
    x = jnp.zeros((1, *self.image_shape), jnp.float32)
    return self.model.init(rng, x, jnp.zeros((1,), jnp.int32), x)['params']

  def load_frozen(self) -> dict:
    return {}

  def warm_start_params(self) -> dict:
    """{'denoiser': a trained DM's EMA params} for `denoiser_init = 'dm'`, else {}.

    The encoder and z_proj keep their random init; z_proj's small init (std 0.02) makes the warm
    denoiser start as the DM with a small z-dependent shift of its adaLN condition.
    """
    if self.denoiser_init == 'scratch':
      return {}
    return {'denoiser': ddpm.load_trained_dm(
        self.dm_workdir, self.abstract_params()['denoiser'], prediction=self.prediction,
        config_section='sdae',
        alternative=", or set config.sdae.denoiser_init='scratch'")}

  def abstract_frozen(self) -> dict:
    """ShapeDtypeStructs of `load_frozen`'s output (to compile without loading anything)."""
    return {}

  def abstract_params(self):
    """ShapeDtypeStructs of `init_params`' output, to check restored checkpoints against."""
    return jax.eval_shape(self.init_params, jax.random.PRNGKey(0))

  # -------------------------------------------------------------- the model
  def _encoder_view(self, x0: jax.Array, x_t: jax.Array) -> jax.Array:
    return x_t if self.encoder_input == 'x_t' else x0

  def encode(self, params, x: jax.Array, t: jax.Array) -> jax.Array:
    """E(x, t): x [B, H, W, C] (already noised if the encoder reads x_t), t [B] -> z_t [B, d]."""
    return self.model.apply({'params': params}, x, t, method=self.model.encode)

  def embed(self, params, x0: jax.Array, t: int, rng: jax.Array) -> jax.Array:
    """The embedding z_t [B, d] of clean images x0 [B, H, W, C] at step t (noise from `rng`)."""
    t_batch = jnp.full((x0.shape[0],), t, jnp.int32)
    eps = jax.random.normal(rng, x0.shape, jnp.float32)
    x_t = diffusion.q_sample(self.schedule, x0, t_batch, eps)
    return self.encode(params, self._encoder_view(x0, x_t), t_batch)

  def representation(self, stage: str, eval_config, seed: int
                     ) -> representation.Representation | None:
    """z_t at each t of `eval_config.embedding_timesteps`, named f'{stage}_t{t}', and their
    L2-normalised mean f'{stage}_mean_t'; None without time-steps.

    The forward-diffusion noise of step t is drawn from fold_in(key(seed), t), the same for every
    batch, so the features are a deterministic function of the images.
    """
    timesteps = tuple(eval_config.embedding_timesteps)
    if not timesteps:
      return None
    key = jax.random.key(seed)

    def features(params, x0):
      embeddings = [self.embed(params, x0, t, jax.random.fold_in(key, t)) for t in timesteps]
      out = {f'{stage}_t{t}': z for t, z in zip(timesteps, embeddings)}
      out[f'{stage}{MEAN_SUFFIX}'] = sdae_model.l2_normalize(jnp.mean(jnp.stack(embeddings),
                                                                      axis=0))
      return out

    return representation.Representation(features=features, sweep_family=stage,
                                         sweep_label=f'{stage} z_t', architecture=repr(self.model))

  def embedding(self, params, x0: jax.Array) -> jax.Array:
    """The embedding whose health training logs (`jdiffrep.health`): z_0, fixed noise."""
    return self.embed(params, x0, 0, jax.random.PRNGKey(0))

  def z_reliance(self, params, x0: jax.Array) -> jax.Array:
    """How much the denoiser uses z: its loss on x0 [B, H, W, C] when each image is denoised
    with the next image's z_t (same t, that image's own x_t), over its loss with its own z_t.

    t is spread evenly over [0, T) across the batch, the noise fixed. About 1 when the denoiser
    ignores z: then the loss gives the encoder no reason to tell images apart, and its embedding
    collapses (`jdiffrep.health`). An x_t encoder sees nothing the denoiser does not, so only
    what z adds to the denoiser's own computation keeps it above 1.
    """
    n = x0.shape[0]
    t = (jnp.arange(n) * self.schedule.num_timesteps // n).astype(jnp.int32)
    eps = jax.random.normal(jax.random.PRNGKey(0), x0.shape, jnp.float32)
    x_t = diffusion.q_sample(self.schedule, x0, t, eps)
    x0_next, eps_next = jnp.roll(x0, -1, axis=0), jnp.roll(eps, -1, axis=0)
    x_t_next = diffusion.q_sample(self.schedule, x0_next, t, eps_next)
    z_own = self.encode(params, self._encoder_view(x0, x_t), t)
    z_next = self.encode(params, self._encoder_view(x0_next, x_t_next), t)

    def loss_with(z):
      output = self.model.apply({'params': params}, x_t, t, z, method=self.model.denoise)
      return self._denoising_loss(output, x0, x_t, t, eps)

    return loss_with(z_next) / loss_with(z_own)

  def _denoising_loss(self, output, x0, x_t, t, eps) -> jax.Array:
    """'uniform': MSE on the prediction target. 'pdae': eps MSE times PDAE's w_t (as DiTi)."""
    if self.loss_weight == 'uniform':
      target = diffusion.prediction_target(self.schedule, self.prediction, x0, t, eps)
      return diffusion.eps_loss(output, target)
    eps_pred = diffusion.eps_from_prediction(self.schedule, self.prediction, x_t, t, output)
    return diffusion.pdae_weighted_eps_loss(self.schedule, eps_pred, eps, t)[0]

  def loss(self, params, frozen, batch: dict, rng: jax.Array):
    """Denoising loss through encoder and denoiser (+ optional consistency term)."""
    del frozen
    x0 = batch['image']
    t_rng, eps_rng, gap_rng = jax.random.split(rng, 3)
    t = jax.random.randint(t_rng, (x0.shape[0],), 0, self.schedule.num_timesteps)
    eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
    x_t = diffusion.q_sample(self.schedule, x0, t, eps)
    output, z = self.model.apply({'params': params}, x_t, t, self._encoder_view(x0, x_t))
    denoising = self._denoising_loss(output, x0, x_t, t, eps)
    metrics = {'denoising_loss': denoising}
    if not self.consistency_weight:
      return denoising, metrics
    gap = jax.random.randint(gap_rng, t.shape, -self.consistency_max_gap,
                             self.consistency_max_gap + 1)
    t_near = jnp.clip(t + gap, 0, self.schedule.num_timesteps - 1)
    x_near = diffusion.q_sample(self.schedule, x0, t_near, eps)
    z_near = jax.lax.stop_gradient(self.encode(params, self._encoder_view(x0, x_near), t_near))
    consistency = jnp.mean(1.0 - cosine_similarity(z, z_near))
    metrics['consistency_loss'] = consistency
    return denoising + self.consistency_weight * consistency, metrics

  def eps_fn(self, params, x0: jax.Array | None = None):
    """(x_t, t) -> eps for DDIM; z_t = E(x_t, t), or E(x0, t) for the x_0 encoder."""

    def fn(x, t):
      t_batch = jnp.broadcast_to(t, (x.shape[0],))
      z = self.encode(params, x if x0 is None else x0, t_batch)
      output = self.model.apply({'params': params}, x, t_batch, z, method=self.model.denoise)
      return diffusion.eps_from_prediction(self.schedule, self.prediction, x, t_batch, output)

    return fn

  def preview(self, params, frozen, rng: jax.Array, images: jax.Array) -> jax.Array:
    """x_t encoder: DDIM samples [num_preview, ...]. x_0 encoder: originals / decodes from noise."""
    del frozen
    if self.encoder_input == 'x_t':
      x_T = jax.random.normal(rng, (self.num_preview, *self.image_shape), jnp.float32)
      samples = diffusion.ddim_sample(self.eps_fn(params), self.schedule, x_T,
                                      num_steps=self.preview_steps, clip_x0=self.clip_x0)
      return jnp.clip(samples, -1.0, 1.0)
    x_T = jax.random.normal(rng, images.shape, jnp.float32)
    decoded = diffusion.ddim_sample(self.eps_fn(params, images), self.schedule, x_T,
                                    num_steps=self.preview_steps, clip_x0=self.clip_x0)
    return images_lib.interleave_rows(images, jnp.clip(decoded, -1.0, 1.0))
