"""Gaussian diffusion: noise schedules, q_sample, the eps loss, DDIM sampling and DDIM inversion.

Time-steps are integers t in [0, T-1]; `abar_t` is the cumulative product of `1 - beta_t`.
DDIM works on `num_steps` levels: level i (0..S-1) is time-step `ddim_timesteps(T, S)[i]`, level -1
is the clean image (abar = 1). `ddim_sample` walks levels S-1 -> -1, `ddim_invert` walks -1 -> S-1.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SCHEDULE_KINDS = ('linear', 'cosine')
EpsFn = Callable[
    [jax.Array, jax.Array], jax.Array
]  # (x [B, H, W, C], t [B] int32) -> eps [B, H, W, C]


@struct.dataclass
class Schedule:
  """Per-step coefficients, each float32 [T]. alphas_cumprod_prev[0] = 1."""

  betas: jax.Array
  alphas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def _linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float32)


def _cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal 2021: abar(u) = cos^2((u + s) / (1 + s) * pi / 2), u = t / T."""
  abar = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  betas = [
      min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), max_beta)
      for i in range(num_timesteps)
  ]
  return np.asarray(betas, dtype=np.float32)


def make_schedule(
    kind: str = 'linear',
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> Schedule:
  """Build a schedule in float32. 'linear': betas from beta_start to beta_end; 'cosine': Nichol &
  Dhariwal (s = 0.008, betas clipped at 0.999; beta_start/beta_end unused)."""
  if kind == 'linear':
    betas = _linear_betas(num_timesteps, beta_start, beta_end)
  elif kind == 'cosine':
    betas = _cosine_betas(num_timesteps)
  else:
    raise ValueError(f'Unknown schedule kind {kind!r}; valid kinds: {list(SCHEDULE_KINDS)}.')
  alphas = (np.float32(1) - betas).astype(np.float32)
  alphas_cumprod = np.cumprod(alphas, dtype=np.float32)
  alphas_cumprod_prev = np.concatenate([np.ones(1, np.float32), alphas_cumprod[:-1]])
  return Schedule(
      betas=jnp.asarray(betas),
      alphas=jnp.asarray(alphas),
      alphas_cumprod=jnp.asarray(alphas_cumprod),
      alphas_cumprod_prev=jnp.asarray(alphas_cumprod_prev),
  )


def _per_example(values: jax.Array, ndim: int) -> jax.Array:
  """[B] -> [B, 1, ..., 1] with `ndim` dims, for broadcasting against images."""
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. x0, eps: [B, H, W, C]; t: [B] int."""
  abar = _per_example(schedule.alphas_cumprod[t], x0.ndim)
  return (jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * eps).astype(x0.dtype)


PREDICTIONS = ('eps', 'v', 'x0')


def prediction_target(schedule: Schedule, prediction: str, x0: jax.Array, t: jax.Array,
                      eps: jax.Array) -> jax.Array:
  """What the network regresses: eps, x0, or v = sqrt(abar) eps - sqrt(1 - abar) x0."""
  if prediction == 'eps':
    return eps
  if prediction == 'x0':
    return x0
  if prediction == 'v':
    abar = _per_example(schedule.alphas_cumprod[t], x0.ndim)
    return jnp.sqrt(abar) * eps - jnp.sqrt(1 - abar) * x0
  raise ValueError(f'prediction={prediction!r}; valid: {PREDICTIONS}.')


def eps_from_prediction(schedule: Schedule, prediction: str, x_t: jax.Array, t: jax.Array,
                        output: jax.Array) -> jax.Array:
  """The network output as eps: eps = sqrt(abar) v + sqrt(1 - abar) x_t for v-prediction,
  (x_t - sqrt(abar) x0) / sqrt(1 - abar) for x0-prediction."""
  if prediction == 'eps':
    return output
  if prediction == 'x0':
    abar = _per_example(schedule.alphas_cumprod[t], x_t.ndim)
    return (x_t - jnp.sqrt(abar) * output) / jnp.sqrt(1 - abar)
  if prediction == 'v':
    abar = _per_example(schedule.alphas_cumprod[t], x_t.ndim)
    return jnp.sqrt(abar) * output + jnp.sqrt(1 - abar) * x_t
  raise ValueError(f'prediction={prediction!r}; valid: {PREDICTIONS}.')


PDAE_GAMMA = 0.1  # PDAE's (and DiTi's) gamma


def pdae_loss_weight(schedule: Schedule, gamma: float = PDAE_GAMMA) -> jax.Array:
  """PDAE's weight on the eps MSE, w_t = snr_t^gamma / (1 + snr_t), snr_t = abar_t / (1 - abar_t).

  PDAE writes it (1 / (1 + snr))^(1 - gamma) (snr / (1 + snr))^gamma and uses gamma = 0.1. On the
  x0 error it is snr^(1 + gamma) / (1 + snr). With gamma = 0.1 on the linear 1000-step schedule:
  2.5 at t = 0, 1.0 at t = 125, 0.21 at t = 375, 0.002 at t = 750, 2e-4 at t = 875. gamma = -1
  weighs the x0 error by 1 / (1 + snr): 0.16 at t = 125, 0.76 at t = 375, 1.0 from t = 750 on.
  [T] float32.
  """
  snr = schedule.alphas_cumprod / (1.0 - schedule.alphas_cumprod)
  return snr ** gamma / (1.0 + snr)


def pdae_weighted_eps_loss(schedule: Schedule, eps_pred: jax.Array, eps: jax.Array,
                           t: jax.Array, gamma: float = PDAE_GAMMA
                           ) -> tuple[jax.Array, jax.Array]:
  """PDAE's loss mean_b(w_t * MSE_b(eps_pred, eps)) (scalar) and the per-example MSE [B]."""
  per_example = jnp.mean(jnp.square(eps - eps_pred), axis=tuple(range(1, eps.ndim)))
  return jnp.mean(pdae_loss_weight(schedule, gamma)[t] * per_example), per_example


def eps_loss(eps_pred: jax.Array, eps: jax.Array) -> jax.Array:
  """Mean squared error over all elements, in float32. Returns a scalar."""
  return jnp.mean(jnp.square(eps_pred.astype(jnp.float32) - eps.astype(jnp.float32)))


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """Ascending, unique int32 [num_steps] time-steps evenly spaced over [0, T-1], both ends included.

  num_steps = 1 gives [T-1] (the level that pure noise x_T lives at).
  """
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f'num_steps must be in [1, {num_timesteps}], got {num_steps}.')
  if num_steps == 1:
    return np.array([num_timesteps - 1], np.int32)
  return np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int32)


def _ddim_levels(schedule: Schedule, num_steps: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Time-steps [S] int32, abar at each level [S], and abar at the level below [S] (1 below level 0)."""
  ts = jnp.asarray(ddim_timesteps(schedule.num_timesteps, num_steps))
  abar = schedule.alphas_cumprod[ts]
  abar_below = jnp.concatenate([jnp.ones(1, abar.dtype), abar[:-1]])
  return ts, abar, abar_below


def _predict_x0(x: jax.Array, eps: jax.Array, abar: jax.Array) -> jax.Array:
  """x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)."""
  return (x - jnp.sqrt(1 - abar) * eps) / jnp.sqrt(abar)


def _x0_and_eps(x: jax.Array, eps: jax.Array, abar: jax.Array,
                clip_x0: bool) -> tuple[jax.Array, jax.Array]:
  """The predicted x0 of level abar and the eps that goes with it (both [B, H, W, C]).

  With clip_x0 the x0 is clamped to [-1, 1] and eps re-derived from it, as the official DiTi /
  PDAE / guided-diffusion DDIM steps do in both directions. At abar = 1 (the clean level) x0 is
  x itself and eps is kept.
  """
  x0 = _predict_x0(x, eps, abar)
  if not clip_x0:
    return x0, eps
  x0 = jnp.clip(x0, -1.0, 1.0)
  noisy = abar < 1
  eps = jnp.where(noisy, (x - jnp.sqrt(abar) * x0) / jnp.sqrt(jnp.where(noisy, 1 - abar, 1.0)),
                  eps)
  return x0, eps


def ddim_sample(
    eps_fn: EpsFn,
    schedule: Schedule,
    x_T: jax.Array,
    *,
    num_steps: int,
    eta: float = 0.0,
    rng: jax.Array | None = None,
    clip_x0: bool = False,
) -> jax.Array:
  """DDIM sampling from level S-1 (time-step T-1) down to the clean image. Jittable.

  x_T: [B, H, W, C]; eps_fn(x, t [B] int32) -> eps. `num_steps`, `eta` and `clip_x0` are static
  Python values; `rng` is required when eta > 0. With eta = 0 this is the exact inverse of
  `ddim_invert` (same num_steps) whenever eps_fn does not depend on x. Returns x0 [B, H, W, C] float32.
  """
  if eta < 0:
    raise ValueError(f'eta must be >= 0, got {eta}.')
  if eta > 0 and rng is None:
    raise ValueError('ddim_sample with eta > 0 needs an rng key for the added noise.')
  ts, abar, abar_below = _ddim_levels(schedule, num_steps)
  batch = x_T.shape[0]
  noise_keys = jax.random.split(rng, num_steps) if eta > 0 else None

  def step(j, x):
    i = num_steps - 1 - j
    a, a_prev = abar[i], abar_below[i]
    eps = eps_fn(x, jnp.full((batch,), ts[i], jnp.int32)).astype(jnp.float32)
    x0_pred, eps = _x0_and_eps(x, eps, a, clip_x0)
    x_next = jnp.sqrt(a_prev) * x0_pred
    if eta > 0:
      sigma = eta * jnp.sqrt((1 - a_prev) / (1 - a)) * jnp.sqrt(1 - a / a_prev)
      noise = jax.random.normal(noise_keys[i], x.shape, jnp.float32)
      x_next = x_next + jnp.sqrt(jnp.maximum(1 - a_prev - sigma**2, 0.0)) * eps + sigma * noise
    else:
      x_next = x_next + jnp.sqrt(1 - a_prev) * eps
    return x_next

  return jax.lax.fori_loop(0, num_steps, step, x_T.astype(jnp.float32))


INVERT_EPS_AT = ('target', 'source')


def ddim_invert(eps_fn: EpsFn, schedule: Schedule, x0: jax.Array, *, num_steps: int,
                clip_x0: bool = False, eps_at: str = 'target') -> jax.Array:
  """Deterministic DDIM encoding x0 -> x_T, the reverse of `ddim_sample` with eta = 0. Jittable.

  Step i = 0..S-1 goes from level i-1 to level i. With eps_at='target' it uses eps_fn(x, ts[i]),
  the time-step of the level it reaches, as the matching sampling step does, so sampling with the
  same num_steps undoes it exactly when eps_fn does not depend on x (and, with clip_x0, no
  predicted x0 leaves [-1, 1]). With eps_at='source' it uses eps_fn(x, ts[i - 1]), the level it
  leaves (ts[0] for the first step), as the official DiTi / PDAE encoders do
  (`shift_ddim_encode`). clip_x0 (static) clamps each step's predicted x0 as `ddim_sample` does.
  x0: [B, H, W, C]. Returns x_T [B, H, W, C] float32.
  """
  if eps_at not in INVERT_EPS_AT:
    raise ValueError(f'eps_at={eps_at!r}; valid: {INVERT_EPS_AT}.')
  ts, abar, abar_below = _ddim_levels(schedule, num_steps)
  eps_ts = ts if eps_at == 'target' else jnp.concatenate([ts[:1], ts[:-1]])
  batch = x0.shape[0]

  def step(i, x):
    a_next, a = abar[i], abar_below[i]
    eps = eps_fn(x, jnp.full((batch,), eps_ts[i], jnp.int32)).astype(jnp.float32)
    x0_pred, eps = _x0_and_eps(x, eps, a, clip_x0)
    return jnp.sqrt(a_next) * x0_pred + jnp.sqrt(1 - a_next) * eps

  return jax.lax.fori_loop(0, num_steps, step, x0.astype(jnp.float32))
