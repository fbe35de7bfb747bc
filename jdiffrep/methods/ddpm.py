"""Plain diffusion model (stage 1 of DiTi): a DiT trained with the eps loss, uniform t.

A method bundles what the trainer needs and nothing else: `init_params` (trainable),
`warm_start_params` (trained params that replace part of that init before step 0),
`load_frozen` (parameters that are inputs but never trained), `loss` and `preview` (images to
look at). Everything method-specific lives in its module, so `train.py` never branches on it.
"""

from __future__ import annotations

import dataclasses
import json

from absl import logging
import jax
import jax.numpy as jnp

from jdiffrep import diffusion
from jdiffrep import paths
from jdiffrep.methods import representation
from jdiffrep.models import dit

FEATURE_FAMILY = 'dm'  # the DM's features are named f'dm_t{t}'


def dm_workdir(explicit: str | None, stage_workdir: str) -> str:
  """The workdir of a trained DM run: `explicit` if given, else the sibling 'ddpm' of a stage.

  The pipeline puts each stage in <workdir>/<stage>, so the DM of a pipeline run is found next
  to the stage that reads it.
  """
  return explicit or str(paths.absolute(stage_workdir).parent / 'ddpm')


def check_dm_prediction(dm_workdir: str, prediction: str, *, config_section: str) -> None:
  """Raises ValueError if the DM run's config.json says it predicts something else than
  `prediction` (its output would be converted to eps the wrong way); warns if there is none."""
  path = paths.absolute(dm_workdir) / 'config.json'
  if not path.exists():
    logging.warning('%s is missing; cannot check what the DM predicts.', path)
    return
  dm_prediction = json.loads(path.read_text()).get('diffusion', {}).get('prediction')
  if dm_prediction != prediction:
    raise ValueError(
        f'The DM in {dm_workdir} predicts {dm_prediction!r} but config.diffusion.prediction is '
        f'{prediction!r}: the DM\'s output would be read as the wrong quantity. Set '
        'config.diffusion.prediction to match, or config.'
        f'{config_section}.dm_workdir to another DM.')


def load_trained_dm(dm_workdir: str, expected, *, prediction: str, config_section: str,
                    alternative: str = ''):
  """The EMA params of the DM run in `dm_workdir`, checked against `expected` (shape structs)
  and against `prediction` (what the caller will read its output as).

  A missing checkpoint raises FileNotFoundError naming `config.<config_section>.dm_workdir` (and
  `alternative`, if given) as the fix.
  """
  from jdiffrep import checkpoint  # pylint: disable=g-import-not-at-top
  check_dm_prediction(dm_workdir, prediction, config_section=config_section)
  try:
    return checkpoint.load_trained_params(paths.absolute(dm_workdir) / 'checkpoints', expected,
                                          what='diffusion model')
  except FileNotFoundError as error:
    raise FileNotFoundError(
        f"{error} Train it first (the 'ddpm' stage of config.pipeline does) or set "
        f'config.{config_section}.dm_workdir to the workdir of a finished DM run with the same '
        f'config.model{alternative}.') from error


@dataclasses.dataclass(frozen=True)
class DDPM:
  """An unconditional DiT denoiser on images of `image_shape` = (H, W, C)."""
  model: dit.DiT
  schedule: diffusion.Schedule
  image_shape: tuple[int, int, int]
  prediction: str = 'eps'  # what the network outputs: 'eps' or 'v' (see diffusion.PREDICTIONS)
  num_preview: int = 64  # samples per preview grid
  preview_steps: int = 50  # DDIM steps of the preview samples
  clip_x0: bool = True  # clamp each DDIM step's predicted x0 to [-1, 1]
  preview_eta: float = 0.0

  @classmethod
  def from_config(cls, config, image_shape, *, workdir: str = '') -> 'DDPM':
    del workdir  # a DM needs nothing from other runs
    model = dit.dit_from_name(config.model.name, dtype=jnp.dtype(config.model.dtype),
                              attention_impl=config.model.attention_impl)
    schedule = diffusion.make_schedule(
        config.diffusion.schedule, config.diffusion.num_timesteps,
        config.diffusion.beta_start, config.diffusion.beta_end)
    return cls(model=model, schedule=schedule, image_shape=tuple(image_shape),
               prediction=config.diffusion.prediction,
               num_preview=config.sample.num_images, preview_steps=config.sample.ddim_steps,
               clip_x0=config.sample.clip_x0,
               preview_eta=config.sample.eta)

  def init_params(self, rng: jax.Array):
    x = jnp.zeros((1, *self.image_shape), jnp.float32)
    return self.model.init(rng, x, jnp.zeros((1,), jnp.int32))['params']

  def load_frozen(self) -> dict:
    return {}

  def warm_start_params(self) -> dict:
    """A DM trains from its random init: nothing replaces it before step 0."""
    return {}

  def abstract_frozen(self) -> dict:
    """ShapeDtypeStructs of `load_frozen`'s output (to compile without loading anything)."""
    return {}

  def abstract_params(self):
    """ShapeDtypeStructs of `init_params`' output, to check restored checkpoints against."""
    return jax.eval_shape(self.init_params, jax.random.PRNGKey(0))

  @property
  def feature_block(self) -> int:
    """The middle block, whose tokens DDAE-style features are read from."""
    return max(self.model.depth // 2 - 1, 0)

  def mid_features(self, params, x0: jax.Array, t: int, rng: jax.Array) -> jax.Array:
    """DDAE-style features [B, hidden]: the middle block's tokens on x_t, mean-pooled (float32).

    x0: [B, H, W, C] clean images, noised to step t with noise from `rng`.
    """
    t_batch = jnp.full((x0.shape[0],), t, jnp.int32)
    x_t = diffusion.q_sample(self.schedule, x0, t_batch,
                             jax.random.normal(rng, x0.shape, jnp.float32))
    tokens = self.model.apply({'params': params}, x_t, t_batch, capture_block=self.feature_block,
                              tokens_only=True)
    return jnp.mean(tokens.astype(jnp.float32), axis=1)

  def representation(self, stage: str, eval_config, seed: int
                     ) -> representation.Representation | None:
    """The DDAE-style baseline: `mid_features` at each t of `eval_config.dm_feature_timesteps`,
    named f'dm_t{t}' (noise from fold_in(key(seed), t)); None without time-steps."""
    del stage  # one DM per pipeline; its features are 'dm_t...' whatever the stage is called
    timesteps = tuple(eval_config.dm_feature_timesteps)
    if not timesteps:
      return None
    key = jax.random.key(seed)

    def features(params, x0):
      return {f'{FEATURE_FAMILY}_t{t}': self.mid_features(params, x0, t,
                                                          jax.random.fold_in(key, t))
              for t in timesteps}

    return representation.Representation(features=features, sweep_family=FEATURE_FAMILY,
                                         sweep_label='DM mid-block')

  def loss(self, params, frozen, batch: dict, rng: jax.Array):
    """MSE of the network's target (eps, or v) on `batch['image']` [B, H, W, C] at uniform t."""
    del frozen
    x0 = batch['image']
    t_rng, eps_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, (x0.shape[0],), 0, self.schedule.num_timesteps)
    eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
    x_t = diffusion.q_sample(self.schedule, x0, t, eps)
    output = self.model.apply({'params': params}, x_t, t)
    target = diffusion.prediction_target(self.schedule, self.prediction, x0, t, eps)
    return diffusion.eps_loss(output, target), {}

  def eps_fn(self, params):
    """(x_t, t) -> eps whatever the network predicts, for DDIM."""
    return lambda x, t: diffusion.eps_from_prediction(
        self.schedule, self.prediction, x, t, self.model.apply({'params': params}, x, t))

  def sample(self, params, rng: jax.Array, num_images: int, *, ddim_steps: int,
             eta: float = 0.0) -> jax.Array:
    """DDIM samples [num_images, H, W, C] in [-1, 1] (clipped)."""
    noise_rng, ddim_rng = jax.random.split(rng)
    x_T = jax.random.normal(noise_rng, (num_images, *self.image_shape), jnp.float32)
    x0 = diffusion.ddim_sample(self.eps_fn(params), self.schedule, x_T, num_steps=ddim_steps,
                               eta=eta, rng=ddim_rng, clip_x0=self.clip_x0)
    return jnp.clip(x0, -1.0, 1.0)

  def preview(self, params, frozen, rng: jax.Array, images: jax.Array) -> jax.Array:
    """Samples to look at: [num_preview, H, W, C] in [-1, 1] (`images` is not needed)."""
    del frozen, images
    return self.sample(params, rng, self.num_preview, ddim_steps=self.preview_steps,
                       eta=self.preview_eta)
