"""Self-conditional DiT (SPEC section 4): a time-step-dependent encoder feeding a DiT denoiser.

`TimestepEncoder` E(x, t) -> z_t is a small DiT-style stack with the denoiser's patchify and
2-D sin-cos position scheme, adaLN conditioned on t only, mean-pooled tokens, Linear to d and
L2-normalised ("directional vectors"). `SelfConditionedDiT` wires it to a DiT denoiser whose
adaLN condition is `time_emb(t) + Linear(z_t)`; both are trained together by the denoising loss.

Parameter tree: {'encoder': ..., 'z_proj': Dense(d -> D), 'denoiser': a plain DiT tree}.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdiffrep.models import dit

L2_EPSILON = 1e-6  # keeps the L2 normalisation finite for an all-zero pre-embedding


def l2_normalize(z: jax.Array) -> jax.Array:
  """Rows of z [B, d] scaled to unit norm (float32)."""
  z = z.astype(jnp.float32)
  return z / jnp.sqrt(jnp.sum(jnp.square(z), axis=-1, keepdims=True) + L2_EPSILON)


class TimestepEncoder(nn.Module):
  """E(x, t): x [B, H, W, C], t [B] -> z_t [B, latent_dim] float32 (unit rows if `normalize`)."""

  depth: int
  hidden_size: int
  num_heads: int
  patch_size: int
  latent_dim: int
  normalize: bool = True
  dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    batch, height, width, _ = x.shape
    grid_h, grid_w = height // self.patch_size, width // self.patch_size
    tokens = dit.PatchEmbed(self.patch_size, self.hidden_size, dtype=self.dtype,
                            name='x_embedder')(x.astype(self.dtype))
    pos_embed = dit.sincos_pos_embed_2d(self.hidden_size, grid_h, grid_w)
    tokens = tokens + jnp.asarray(pos_embed, self.dtype)[None]
    c = dit.TimestepEmbedder(self.hidden_size, dtype=self.dtype, name='t_embedder')(
        jnp.broadcast_to(jnp.asarray(t), (batch,)))
    for i in range(self.depth):
      tokens = dit.DiTBlock(self.num_heads, dtype=self.dtype, attention_impl=self.attention_impl,
                            name=f'blocks_{i}')(tokens, c)
    pooled = jnp.mean(dit.layer_norm_without_affine(self.dtype, 'norm_final')(tokens), axis=1)
    z = nn.Dense(self.latent_dim, dtype=jnp.float32, name='head')(pooled.astype(jnp.float32))
    return l2_normalize(z) if self.normalize else z


class SelfConditionedDiT(nn.Module):
  """A DiT denoiser conditioned on its own encoder's embedding: D(x_t, t, E(x_enc, t)).

  `__call__(x_t, t, x_enc)` -> (model output [B, H, W, C] float32, z_t [B, latent_dim]); the
  encoder reads `x_enc` (x_t itself or the clean x_0, a method choice made by the caller).
  """

  depth: int
  hidden_size: int
  num_heads: int
  patch_size: int
  encoder_depth: int
  latent_dim: int
  normalize: bool = True
  dtype: Any = jnp.float32
  attention_impl: str | None = None

  def setup(self):
    self.encoder = TimestepEncoder(self.encoder_depth, self.hidden_size, self.num_heads,
                                   self.patch_size, self.latent_dim, self.normalize,
                                   dtype=self.dtype, attention_impl=self.attention_impl)
    self.z_proj = nn.Dense(self.hidden_size, kernel_init=nn.initializers.normal(0.02),
                           dtype=self.dtype)
    self.denoiser = dit.DiT(self.depth, self.hidden_size, self.num_heads, self.patch_size,
                            dtype=self.dtype, attention_impl=self.attention_impl)

  def encode(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """z_t [B, latent_dim] float32."""
    return self.encoder(x, t)

  def denoise(self, x_t: jax.Array, t: jax.Array, z: jax.Array) -> jax.Array:
    """The DiT's output [B, H, W, C] float32 with c = time_emb(t) + Linear(z)."""
    return self.denoiser(x_t, t, cond=self.z_proj(z.astype(self.dtype)))

  def __call__(self, x_t: jax.Array, t: jax.Array, x_enc: jax.Array):
    z = self.encode(x_enc, t)
    return self.denoise(x_t, t, z), z

  @classmethod
  def from_name(cls, name: str, *, encoder_depth: int, latent_dim: int, **kwargs):
    """'XXS/4' names the denoiser; the encoder shares its patch, width and heads."""
    depth, hidden_size, num_heads, patch_size = dit.parse_model_name(name)
    if encoder_depth < 0:
      encoder_depth = max(depth // 2, 1)
    return cls(depth=depth, hidden_size=hidden_size, num_heads=num_heads, patch_size=patch_size,
               encoder_depth=encoder_depth, latent_dim=latent_dim, **kwargs)
