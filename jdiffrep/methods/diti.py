"""DiTi (Yue et al., ICLR 2024) and PDAE (Zhang et al., NeurIPS 2022) on a frozen DiT.

An encoder maps the clean image to z in R^d, split into k subsets, subset i owning the steps
with floor(t k / T) = i. At step t the gradient-estimator branch G sees only the subsets
0..idx(t) (the cumulative mask), and the prediction eps_theta(x_t, t) + s_t G(x_t, t, z_t) is
trained with the weighted eps loss; only the encoder and G train, the DM stays frozen (its
params are passed in as `frozen`, never to the optimiser). PDAE is the same with k = 1.

Sampling and DDIM inversion use the coefficient s_t that training used (the official samplers
use sqrt(1 - abar_t) instead; with s_t the decoder is the one the loss fitted).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdiffrep import diffusion
from jdiffrep import images as images_lib
from jdiffrep import timestep_features
from jdiffrep.methods import ddpm
from jdiffrep.methods import representation
from jdiffrep.models import dit
from jdiffrep.models import encoders
from jdiffrep.models import gradient_estimator


def shift_coefficient(schedule: diffusion.Schedule) -> jax.Array:
  """s_t = -sqrt(alpha_t) (1 - abar_{t-1}) / sqrt(1 - abar_t), abar_{-1} = 1 (so s_0 = 0). [T]."""
  return (-jnp.sqrt(schedule.alphas) * (1.0 - schedule.alphas_cumprod_prev)
          / jnp.sqrt(1.0 - schedule.alphas_cumprod))


SAMPLING_SHIFTS = ('training', 'official')


def sampling_shift_coefficient(schedule: diffusion.Schedule, kind: str) -> jax.Array:
  """The [T] coefficient of G in DDIM sampling and inversion: 'training' the s_t the branch was
  trained with (`shift_coefficient`); 'official' -sqrt(1 - abar_t), what the official DiTi /
  PDAE samplers use (`shift_ddim_sample`, `shift_ddim_encode`). They agree at large t and differ
  most at small t (s_0 = 0 against -sqrt(beta_0))."""
  if kind not in SAMPLING_SHIFTS:
    raise ValueError(f'config.diti.sampling_shift={kind!r}; valid: {SAMPLING_SHIFTS}.')
  if kind == 'training':
    return shift_coefficient(schedule)
  return -jnp.sqrt(1.0 - schedule.alphas_cumprod)


def make_encoder(config) -> encoders.nn.Module:
  """The image encoder `config.diti` describes (kind, widths, d): DiTi's and PDAE's, and the one
  the SimCLR / SimSiam baselines train, so that every method ranks the same architecture."""
  c = config.diti
  encoder_fields = ({'attention_resolution': c.encoder_attention_resolution,
                     'channels': tuple(c.encoder_channels),
                     'num_heads': c.encoder_num_heads}
                    if c.encoder == 'conv' else {})
  return encoders.make_encoder(c.encoder, c.latent_dim, dtype=jnp.dtype(config.model.dtype),
                               **encoder_fields)


@dataclasses.dataclass(frozen=True)
class DiTi:
  """Encoder + gradient estimator on a frozen DiT; `num_subsets = 1` is PDAE."""
  dm: dit.DiT
  encoder: encoders.nn.Module
  branch: gradient_estimator.GradientEstimator
  schedule: diffusion.Schedule
  partition: timestep_features.TimestepPartition
  gradient_mode: str
  image_shape: tuple[int, int, int]
  dm_workdir: str  # the frozen DM's run
  dm_prediction: str = 'eps'  # what the frozen DM outputs (converted to eps)
  loss_weight_gamma: float = diffusion.PDAE_GAMMA  # w_t = snr^gamma / (1 + snr)
  reconstruction_steps: int = 50
  clip_x0: bool = True  # clamp each DDIM step's predicted x0 to [-1, 1], both ways (official)
  sampling_shift: str = 'training'  # the coefficient of G when sampling (SAMPLING_SHIFTS)
  invert_eps_at: str = 'target'  # the level DDIM inversion evaluates eps at (diffusion.py)

  @classmethod
  def from_config(cls, config, image_shape, *, workdir: str = '', pdae: bool = False) -> 'DiTi':
    c = config.diti
    dtype = jnp.dtype(config.model.dtype)
    dm = dit.dit_from_name(config.model.name, dtype=dtype,
                           attention_impl=config.model.attention_impl)
    if pdae:
      partition = timestep_features.make_partition(c.latent_dim, 1,
                                                   config.diffusion.num_timesteps)
    else:
      partition = timestep_features.make_partition(
          c.latent_dim, c.num_subsets, config.diffusion.num_timesteps,
          c.stage_boundaries, c.stage_dims)
    if c.gradient_mode not in timestep_features.GRADIENT_MODES:
      raise ValueError(f'config.diti.gradient_mode={c.gradient_mode!r}; valid: '
                       f'{timestep_features.GRADIENT_MODES}.')
    gamma = c.loss_weight_gamma
    if not -2.0 <= gamma <= 1.0:  # also false for NaN
      raise ValueError(f'config.diti.loss_weight_gamma={gamma!r}: need a number in [-2, 1] '
                       f'(PDAE and DiTi use {diffusion.PDAE_GAMMA}; -1 weighs the x0 error by '
                       '1 / (1 + snr)).')
    branch_depth = c.branch_depth if c.branch_depth > 0 else max(dm.depth // 2, 1)
    branch = gradient_estimator.GradientEstimator(
        depth=branch_depth, num_heads=dm.num_heads, patch_size=dm.patch_size,
        out_channels=image_shape[-1], condition_mode=c.condition_mode, dtype=dtype,
        attention_impl=config.model.attention_impl)
    encoder = make_encoder(config)
    schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps,
                                       config.diffusion.beta_start, config.diffusion.beta_end)
    return cls(dm=dm, encoder=encoder, branch=branch, schedule=schedule, partition=partition,
               gradient_mode='base' if pdae else c.gradient_mode,
               image_shape=tuple(image_shape),
               dm_workdir=ddpm.dm_workdir(c.dm_workdir, workdir),
               dm_prediction=config.diffusion.prediction,
               loss_weight_gamma=float(gamma),
               reconstruction_steps=config.sample.ddim_steps,
               clip_x0=config.sample.clip_x0,
               sampling_shift=c.sampling_shift,
               invert_eps_at=config.sample.invert_eps_at)

  # -------------------------------------------------------------- shapes of things
  @property
  def capture_block(self) -> int:
    """The frozen DM block whose output tokens the branch reads: the middle one."""
    return self.dm.depth // 2 - 1 if self.dm.depth > 1 else 0

  @property
  def grid(self) -> tuple[int, int]:
    return (self.image_shape[0] // self.dm.patch_size, self.image_shape[1] // self.dm.patch_size)

  def _dm_inputs(self, batch_size: int = 1):
    return (jnp.zeros((batch_size, *self.image_shape), jnp.float32),
            jnp.zeros((batch_size,), jnp.int32))

  # -------------------------------------------------------------- parameters
  def init_params(self, rng: jax.Array) -> dict:
    enc_rng, branch_rng = jax.random.split(rng)
    x, t = self._dm_inputs()
    tokens = jnp.zeros((1, self.grid[0] * self.grid[1], self.dm.hidden_size), jnp.float32)
    z = jnp.zeros((1, self.partition.latent_dim), jnp.float32)
    return {'encoder': self.encoder.init(enc_rng, x)['params'],
            'branch': self.branch.init(branch_rng, tokens, t, z, self.grid)['params']}

  def load_frozen(self) -> dict:
    """The frozen DM's EMA params from its training run, checked against this DiT's shapes."""
    return {'dm': ddpm.load_trained_dm(self.dm_workdir, self.abstract_frozen()['dm'],
                                       prediction=self.dm_prediction, config_section='diti')}

  def warm_start_params(self) -> dict:
    """The encoder and branch train from their random init (the DM is frozen, not warm-started)."""
    return {}

  def abstract_frozen(self) -> dict:
    """ShapeDtypeStructs of `load_frozen`'s output: the DM's params, found without a checkpoint."""
    return {'dm': jax.eval_shape(
        lambda: self.dm.init(jax.random.PRNGKey(0), *self._dm_inputs()))['params']}

  def abstract_params(self):
    """ShapeDtypeStructs of `init_params`' output, to check restored checkpoints against."""
    return jax.eval_shape(self.init_params, jax.random.PRNGKey(0))

  # -------------------------------------------------------------- the model
  def encode(self, params, x0: jax.Array) -> jax.Array:
    """x0 [B, H, W, C] in [-1, 1] -> z [B, d] float32."""
    return self.encoder.apply({'params': params['encoder']}, x0)

  def representation(self, stage: str, eval_config, seed: int) -> representation.Representation:
    """z of the clean image, named `stage`; decoded by DDIM; its subsets when there are several."""
    del eval_config, seed  # z is a deterministic function of x0
    return representation.Representation(
        features=lambda params, x0: {stage: self.encode(params, x0)},
        partition=self.partition if self.partition.num_subsets > 1 else None,
        reconstructs=True, architecture=repr(self.encoder))

  def embedding(self, params, x0: jax.Array) -> jax.Array:
    """The embedding whose health training logs (`jdiffrep.health`): z."""
    return self.encode(params, x0)

  def predict_eps(self, params, frozen, x_t, t, z_masked, shift=None) -> jax.Array:
    """eps_theta(x_t, t) + s_t G(x_t, t, z_masked); all [B, ...], t [B] int.

    shift: the [T] coefficient table s; None: the training one (`shift_coefficient`).
    """
    output, tokens = self.dm.apply({'params': frozen['dm']}, x_t, t,
                                   capture_block=self.capture_block)
    eps_dm = diffusion.eps_from_prediction(self.schedule, self.dm_prediction, x_t, t, output)
    eps_dm, tokens = jax.lax.stop_gradient((eps_dm, tokens))
    g = self.branch.apply({'params': params['branch']}, tokens, t, z_masked, self.grid)
    s = (shift_coefficient(self.schedule) if shift is None else shift)[t]
    return eps_dm + s[:, None, None, None] * g

  def loss(self, params, frozen, batch: dict, rng: jax.Array):
    """SNR-weighted eps loss of the corrected prediction, uniform t. Scalar, plus metrics."""
    x0 = batch['image']
    t_rng, eps_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, (x0.shape[0],), 0, self.schedule.num_timesteps)
    eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
    x_t = diffusion.q_sample(self.schedule, x0, t, eps)
    z = self.encode(params, x0)
    masks = timestep_features.mask_tables(self.partition)
    z_t = timestep_features.mask_condition(z, t, masks, self.gradient_mode)
    eps_pred = self.predict_eps(params, frozen, x_t, t, z_t)
    loss, per_example = diffusion.pdae_weighted_eps_loss(self.schedule, eps_pred, eps, t,
                                                         self.loss_weight_gamma)
    return loss, {'unweighted_mse': jnp.mean(per_example),
                  'z_norm': jnp.mean(jnp.linalg.norm(z, axis=-1))}

  def conditioned_eps_fn(self, params, frozen, z: jax.Array):
    """eps_fn(x, t) for DDIM with z masked by m(t) at every step (inversion and generation)."""
    masks = timestep_features.mask_tables(self.partition)
    shift = sampling_shift_coefficient(self.schedule, self.sampling_shift)
    return lambda x, t: self.predict_eps(params, frozen, x, t,
                                         timestep_features.mask_condition(z, t, masks), shift)

  def reconstruct(self, params, frozen, x0: jax.Array, *, num_steps: int) -> jax.Array:
    """DDIM-invert x0 with its own z, then decode: the autoencoder's output [B, H, W, C]."""
    eps_fn = self.conditioned_eps_fn(params, frozen, self.encode(params, x0))
    x_T = diffusion.ddim_invert(eps_fn, self.schedule, x0, num_steps=num_steps,
                                clip_x0=self.clip_x0, eps_at=self.invert_eps_at)
    return diffusion.ddim_sample(eps_fn, self.schedule, x_T, num_steps=num_steps,
                                 clip_x0=self.clip_x0)

  def preview(self, params, frozen, rng: jax.Array, images: jax.Array) -> jax.Array:
    """Rows of 8 originals, each followed by the row of their reconstructions. [2N, H, W, C]."""
    del rng
    recon = jnp.clip(self.reconstruct(params, frozen, images,
                                      num_steps=self.reconstruction_steps), -1.0, 1.0)
    return images_lib.interleave_rows(images, recon)
