"""Collapse diagnostics of a learned embedding, the standard ones of the SSL literature.

- Per-dimension standard deviation of the L2-normalised embedding over a batch (SimSiam, Chen &
  He 2021, Fig. 2): about 1/sqrt(d) when the embeddings spread over the sphere, 0 when they
  collapse to a point; `std_min` finds single dead dimensions.
- Effective rank (Roy & Vetterli 2007; RankMe, Garrido et al. 2023): exp of the entropy of the
  normalised singular values of the centred embedding matrix; from 1 (all embeddings on a line)
  to min(B, d) (every direction used alike). A dimensional collapse shows here while the std
  still looks healthy.
- For a method whose denoiser is conditioned on its own embedding (sdae), `z_reliance`: the
  denoising loss with another image's z over the loss with the image's own z. Near 1 the
  denoiser ignores z, and the loss no longer asks the encoder to tell images apart.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def effective_rank(z: jax.Array, eps: float = 1e-12) -> jax.Array:
  """z [B, d] -> scalar in [1, min(B, d)]: exp(entropy of sigma / sum(sigma)), z centred."""
  z = z.astype(jnp.float32)
  singular = jnp.linalg.svd(z - jnp.mean(z, axis=0), compute_uv=False)
  p = singular / (jnp.sum(singular) + eps)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, eps)), 0.0)))


def embedding_health(z: jax.Array) -> dict[str, jax.Array]:
  """z [B, d] -> {'std_mean', 'std_min', 'std_reference' (1/sqrt(d)), 'effective_rank'}."""
  z = z.astype(jnp.float32)
  normalized = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-8)
  std = jnp.std(normalized, axis=0)
  return {'std_mean': jnp.mean(std), 'std_min': jnp.min(std),
          'std_reference': jnp.asarray(1.0 / z.shape[-1] ** 0.5, jnp.float32),
          'effective_rank': effective_rank(z)}


def method_health(method, params, images: jax.Array) -> dict[str, jax.Array]:
  """`embedding_health` of `method.embedding(params, images)`, plus `z_reliance` for a method
  that has one (sdae: `SDAE.z_reliance`)."""
  out = embedding_health(method.embedding(params, images))
  if hasattr(method, 'z_reliance'):
    out['z_reliance'] = method.z_reliance(params, images)
  return out


# Below this z_reliance the denoiser hardly reads z (`health_warnings`). Measured: the sdae runs
# on MNIST whose denoiser started from scratch stayed at 1.002-1.009; runs whose z beat the DM's
# own features reached 1.16 (MNIST) and 97 (`shapes_long`). benchmarks/README.md, "A labelled folder that is not shapes".
LOW_Z_RELIANCE = 1.05


def health_warnings(health: dict[str, float]) -> list[str]:
  """What a user should hear about a finished stage's last health values (`method_health`'s
  'health_ema/...' keys): [] when nothing looks wrong."""
  reliance = health.get('health_ema/z_reliance')
  if reliance is None or reliance >= LOW_Z_RELIANCE:
    return []
  return [f'sdae\'s denoiser hardly uses its embedding: with another image\'s z its loss '
          f'changes by a factor {reliance:.3f} (z_reliance, below {LOW_Z_RELIANCE}), so nothing '
          'asked the encoder to tell images apart and z is likely collapsed (see '
          'health_ema/std_mean against std_reference). What made z matter on MNIST and shapes: '
          '--config.sdae.encoder_input=x_0 --config.sdae.loss_weight=pdae '
          '--config.sdae.denoiser_init=dm (README, "Semantic embeddings").']
