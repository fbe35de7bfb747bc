"""Image encoders E(x0) -> z in R^d for DiTi / PDAE.

Both take clean images x: [B, H, W, 3] in [-1, 1] (NHWC) and return z: [B, latent_dim] float32.
Parameters live in `param_dtype`, activations are computed in `dtype`. Neither has dropout or
batch statistics, so there is no train/eval switch.

- `ConvEncoder`: the official PDAE/DiTi encoders (`model/representation/encoder/celeba64.py`,
  `ffhq.py`, `bedroom.py` of yue-zhongqi/diti): stride-2 3x3 convs, each followed by GroupNorm +
  SiLU, one self-attention block (4 heads, zero-initialised output) right after the conv of one
  resolution, flatten, Linear to d. CelebA-64 uses channels (64, 128, 128, 128), FFHQ and
  Bedroom at 128x128 (64, 128, 256, 256, 256); both end at 4x4.
- `ViTEncoder`: DiT-style patchify + fixed 2-D sin-cos positions + plain pre-LN transformer
  blocks, mean-pooled tokens, Linear to d.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdiffrep.models import attention
from jdiffrep.models.dit import Attention, Mlp, PatchEmbed, sincos_pos_embed_2d


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
  """The largest number of groups <= max_groups that divides `channels` (32 for 64 or 128)."""
  return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def _group_norm(channels: int, dtype: Any, param_dtype: Any, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=group_norm_groups(channels), epsilon=1e-5, dtype=dtype,
                      param_dtype=param_dtype, name=name)


class SpatialAttentionBlock(nn.Module):
  """x + proj_out(MultiHeadAttention(qkv(GroupNorm(x)))) over the H*W positions.

  [B, H, W, C] -> [B, H, W, C]. The guided-diffusion `AttentionBlock` the official encoders use:
  qkv and proj_out are 1x1 convolutions with bias (Dense layers here), proj_out starts at zero so
  the block starts as the identity, attention is softmax(q k^T / sqrt(C / heads)) v per head.
  """
  num_heads: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    if channels % self.num_heads:
      raise ValueError(f'SpatialAttentionBlock: {channels} channels do not split into '
                       f'{self.num_heads} heads; choose encoder channels divisible by num_heads.')
    dense = lambda features, name, **kw: nn.Dense(features, dtype=self.dtype,
                                                  param_dtype=self.param_dtype, name=name, **kw)
    h = _group_norm(channels, self.dtype, self.param_dtype, 'norm')(x)
    qkv = dense(3 * channels, 'qkv')(h.reshape(batch, height * width, channels))
    h = attention.self_attention(qkv, self.num_heads, self.attention_impl)
    h = dense(channels, 'proj_out', kernel_init=nn.initializers.zeros)(h)
    return x + h.reshape(x.shape)


class ConvEncoder(nn.Module):
  """Stride-2 conv stages + one attention block + flatten + Dense. [B, H, W, 3] -> [B, latent_dim].

  Stage i is conv_i (3x3, stride 2, padding 1) -> [attn_i] -> norm_i (GroupNorm) -> SiLU,
  halving H and W; `attn_i` sits in the stage whose conv outputs `attention_resolution` (none if
  no stage does), between its conv and its norm as in the official encoders. H = W must be
  divisible by 2 ** len(channels).
  """
  latent_dim: int = 512
  channels: tuple[int, ...] = (64, 128, 128, 128)
  attention_resolution: int = 16
  num_heads: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    self._check_input(x)
    h = x.astype(self.dtype)
    for i, features in enumerate(self.channels):
      h = nn.Conv(features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                  param_dtype=self.param_dtype, name=f'conv_{i}')(h)
      if h.shape[1] == self.attention_resolution:
        h = SpatialAttentionBlock(self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                                  attention_impl=self.attention_impl, name=f'attn_{i}')(h)
      h = nn.silu(_group_norm(features, self.dtype, self.param_dtype, f'norm_{i}')(h))
    z = nn.Dense(self.latent_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                 name='to_latent')(h.reshape(h.shape[0], -1))
    return z.astype(jnp.float32)

  def _check_input(self, x: jax.Array) -> None:
    """Raise ValueError on images this encoder cannot take."""
    if x.ndim != 4:
      raise ValueError(f'ConvEncoder expects images [B, H, W, C], got shape {x.shape}.')
    height, width = x.shape[1:3]
    stride = 2 ** len(self.channels)
    if height != width or height % stride:
      raise ValueError(f'ConvEncoder needs square images with side divisible by {stride} '
                       f'({len(self.channels)} stride-2 stages), got {height}x{width}.')


class ViTBlock(nn.Module):
  """Pre-LN transformer block: x + Attn(LN(x)), then x + Mlp(LN(x)). [B, L, D] -> [B, L, D]."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    layer_norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype,
                                           param_dtype=self.param_dtype, name=name)
    x = x + Attention(self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                      attention_impl=self.attention_impl, name='attn')(layer_norm('norm1')(x))
    x = x + Mlp(int(x.shape[-1] * self.mlp_ratio), dtype=self.dtype, param_dtype=self.param_dtype,
                name='mlp')(layer_norm('norm2')(x))
    return x


class ViTEncoder(nn.Module):
  """Patchify + sin-cos positions + `depth` ViT blocks + LN + mean-pool + Dense.

  x: [B, H, W, 3] with H, W divisible by `patch_size` -> z: [B, latent_dim] float32.
  """
  latent_dim: int = 512
  patch_size: int = 4
  hidden_size: int = 256
  depth: int = 4
  num_heads: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    self._check_input(x)
    grid_h, grid_w = x.shape[1] // self.patch_size, x.shape[2] // self.patch_size
    tokens = PatchEmbed(self.patch_size, self.hidden_size, dtype=self.dtype,
                        param_dtype=self.param_dtype, name='patch_embed')(x.astype(self.dtype))
    pos_embed = jnp.asarray(sincos_pos_embed_2d(self.hidden_size, grid_h, grid_w), self.dtype)
    tokens = tokens + pos_embed[None]
    for i in range(self.depth):
      tokens = ViTBlock(self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                        attention_impl=self.attention_impl, name=f'blocks_{i}')(tokens)
    tokens = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype,
                          name='norm_final')(tokens)
    pooled = tokens.astype(jnp.float32).mean(axis=1)
    z = nn.Dense(self.latent_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                 name='to_latent')(pooled)
    return z.astype(jnp.float32)

  def _check_input(self, x: jax.Array) -> None:
    """Raise ValueError on images or sizes this encoder cannot take."""
    if x.ndim != 4:
      raise ValueError(f'ViTEncoder expects images [B, H, W, C], got shape {x.shape}.')
    height, width = x.shape[1:3]
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f'Image size {height}x{width} is not divisible by patch size {self.patch_size}.')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}.')


ENCODERS: dict[str, type[nn.Module]] = {'conv': ConvEncoder, 'vit': ViTEncoder}


def make_encoder(name: str, latent_dim: int, **kwargs) -> nn.Module:
  """'conv' or 'vit' (+ that encoder's fields as keyword arguments) -> encoder module."""
  if name not in ENCODERS:
    raise ValueError(f'Unknown encoder {name!r}; valid names: {sorted(ENCODERS)}.')
  return ENCODERS[name](latent_dim=latent_dim, **kwargs)
