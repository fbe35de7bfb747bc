"""DiT denoiser (Peebles & Xie 2023), a flax.linen port of facebookresearch/DiT `models.py`.

Images are NHWC. The model predicts eps; `c = time_emb(t) + cond` drives adaLN in every block.

Parameter tree (for weight converters; PyTorch DiT name -> ours):
    x_embedder.proj                  -> x_embedder/proj          (Conv, kernel [p, p, C, D])
    t_embedder.mlp.0 / mlp.2         -> t_embedder/mlp_0, mlp_2
    y_embedder.embedding_table       -> y_embedder/embedding_table (only with num_classes; row
                                        num_classes is the null class of classifier-free guidance)
    blocks.i.attn.qkv / attn.proj    -> blocks_i/attn/qkv, proj  (qkv output ordered (3, heads, head_dim))
    blocks.i.mlp.fc1 / mlp.fc2       -> blocks_i/mlp/fc1, fc2
    blocks.i.adaLN_modulation.1      -> blocks_i/adaLN_modulation
    final_layer.adaLN_modulation.1   -> final_layer/adaLN_modulation
    final_layer.linear               -> final_layer/linear
Dense kernels are [in, out] (the transpose of torch's Linear weight). LayerNorms have no parameters.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jdiffrep.models import attention
from jdiffrep.models import linear

# name -> (depth, hidden_size, num_heads)
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    'XXS': (4, 128, 4),
    'XS': (6, 256, 4),
    'S': (12, 384, 6),
    'B': (12, 768, 12),
    'L': (24, 1024, 16),
    'XL': (28, 1152, 16),
}
PATCH_SIZES: tuple[int, ...] = (2, 4, 8)
TIME_FREQUENCY_DIM = 256

_zeros = nn.initializers.zeros
_xavier_uniform = nn.initializers.xavier_uniform()
_time_mlp_init = nn.initializers.normal(stddev=0.02)
# torch's xavier_uniform_ on w.view(D, -1): fan_in = p*p*C, fan_out = D.
_patch_conv_init = nn.initializers.variance_scaling(
    1.0, 'fan_avg', 'uniform', in_axis=(0, 1, 2), out_axis=-1
)


# ----------------------------------------------------------------------------- pure helpers


def parse_model_name(name: str) -> tuple[int, int, int, int]:
  """'S/2' -> (depth, hidden_size, num_heads, patch_size)."""
  valid = f"valid sizes: {sorted(DIT_SIZES)}; valid patches: {list(PATCH_SIZES)} (e.g. 'S/2')"
  size, sep, patch = str(name).partition('/')
  if not sep or size not in DIT_SIZES or not patch.isdigit() or int(patch) not in PATCH_SIZES:
    raise ValueError(f'Bad DiT model name {name!r}; {valid}.')
  depth, hidden, heads = DIT_SIZES[size]
  return depth, hidden, heads, int(patch)


def timestep_embedding(
    t: jax.Array, dim: int = TIME_FREQUENCY_DIM, max_period: float = 10000,
    frequency_shift: float = 0.0,
) -> jax.Array:
  """Sinusoidal embedding of time-steps, DiT order [cos, sin].

  Frequencies are max_period^(-i / (dim/2 - frequency_shift)), i < dim/2: shift 0 is
  facebookresearch/DiT, shift 1 is diffusers' DiT (`downscale_freq_shift=1`).
  t: [B] int or float. Returns [B, dim] float32 (zero-padded by one column if dim is odd).
  """
  half = dim // 2
  freqs = jnp.exp(
      -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - frequency_shift)
  )
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    embedding = jnp.concatenate([embedding, jnp.zeros_like(embedding[:, :1])], axis=-1)
  return embedding


def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
  """pos: [M] -> [M, embed_dim] as concat[sin(pos * omega), cos(pos * omega)]."""
  omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
  omega = 1.0 / 10000**omega
  out = np.einsum('m,d->md', pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_2d(embed_dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding, DiT's get_2d_sincos_pos_embed for any grid.

  Returns [grid_h * grid_w, embed_dim] float32, tokens row-major over (h, w). As in DiT, the
  first half of the channels encodes the w (column) coordinate, the second half the h (row) one.
  """
  if embed_dim % 4:
    raise ValueError(
        f'embed_dim must be divisible by 4 for a 2-D sin-cos embedding, got {embed_dim}.'
    )
  grid = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))
  emb_first = _sincos_1d(embed_dim // 2, grid[0])  # grid[0][r, c] = c
  emb_second = _sincos_1d(embed_dim // 2, grid[1])  # grid[1][r, c] = r
  return np.concatenate([emb_first, emb_second], axis=1).astype(np.float32)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x: [B, L, D], shift/scale: [B, D] -> x * (1 + scale) + shift."""
  return x * (1 + scale[:, None]) + shift[:, None]


def unpatchify(x: jax.Array, grid_h: int, grid_w: int, patch_size: int, channels: int) -> jax.Array:
  """[B, h*w, p*p*C] (per-token order (p, q, c)) -> [B, h*p, w*p, C], as DiT's unpatchify."""
  p = patch_size
  x = x.reshape(x.shape[0], grid_h, grid_w, p, p, channels)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(x.shape[0], grid_h * p, grid_w * p, channels)


def layer_norm_without_affine(dtype: Any, name: str) -> nn.LayerNorm:
  """LayerNorm without affine parameters, eps 1e-6."""
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype, name=name)


def _dense(module: nn.Module, features: int, kernel_init, name: str) -> linear.Linear:
  """A dense layer (Dense's parameters; `linear.Linear`'s backward pass) with zero bias in
  `module`'s compute and parameter dtypes."""
  return linear.Linear(features, kernel_init=kernel_init, bias_init=_zeros, dtype=module.dtype,
                       param_dtype=module.param_dtype, name=name)


# ----------------------------------------------------------------------------- modules


class PatchEmbed(nn.Module):
  """[B, H, W, C] -> tokens [B, (H/p)*(W/p), D] via a conv with kernel = stride = p."""

  patch_size: int
  hidden_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch_size
    x = nn.Conv(
        self.hidden_size,
        (p, p),
        strides=(p, p),
        padding='VALID',
        kernel_init=_patch_conv_init,
        bias_init=_zeros,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='proj',
    )(x)
    return x.reshape(x.shape[0], -1, self.hidden_size)


class TimestepEmbedder(nn.Module):
  """t: [B] -> [B, D]: sinusoidal(256) -> Linear -> SiLU -> Linear, weights N(0, 0.02)."""

  hidden_size: int
  frequency_dim: int = TIME_FREQUENCY_DIM
  frequency_shift: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    dense = lambda name: _dense(self, self.hidden_size, _time_mlp_init, name)
    h = dense('mlp_0')(
        timestep_embedding(t, self.frequency_dim, frequency_shift=self.frequency_shift)
    )
    return dense('mlp_2')(nn.silu(h))


class LabelEmbedder(nn.Module):
  """Class labels [B] int in [0, num_classes] -> [B, D]; label num_classes is the null class.

  The table has num_classes + 1 rows, N(0, 0.02), as DiT's LabelEmbedder with label dropout.
  Dropping labels for classifier-free guidance is the caller's job (pass num_classes).
  """

  num_classes: int
  hidden_size: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, labels: jax.Array) -> jax.Array:
    table = self.param('embedding_table', _time_mlp_init, (self.num_classes + 1, self.hidden_size),
                       self.param_dtype)
    return jnp.take(table, labels, axis=0)


class Attention(nn.Module):
  """Multi-head self-attention with fused qkv (bias) and output projection. [B, L, D] -> [B, L, D]."""

  num_heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    qkv = _dense(self, 3 * dim, _xavier_uniform, 'qkv')(x)
    out = attention.self_attention(qkv, self.num_heads, self.attention_impl)
    return _dense(self, dim, _xavier_uniform, 'proj')(out)


class Mlp(nn.Module):
  """fc1 -> GELU(tanh) -> fc2. [B, L, D] -> [B, L, D]."""

  hidden_features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda features, name: _dense(self, features, _xavier_uniform, name)
    h = nn.gelu(dense(self.hidden_features, 'fc1')(x), approximate=True)
    return dense(x.shape[-1], 'fc2')(h)


class DiTBlock(nn.Module):
  """adaLN-Zero transformer block. x: [B, L, D], c: [B, D] -> [B, L, D]."""

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    modulation = _dense(self, 6 * dim, _zeros, 'adaLN_modulation')(nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(
        modulation, 6, axis=-1
    )
    attn = Attention(
        self.num_heads,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        attention_impl=self.attention_impl,
        name='attn',
    )
    mlp = Mlp(int(dim * self.mlp_ratio), dtype=self.dtype, param_dtype=self.param_dtype, name='mlp')
    x = x + gate_msa[:, None] * attn(
        modulate(layer_norm_without_affine(self.dtype, 'norm1')(x), shift_msa, scale_msa)
    )
    x = x + gate_mlp[:, None] * mlp(
        modulate(layer_norm_without_affine(self.dtype, 'norm2')(x), shift_mlp, scale_mlp)
    )
    return x


class FinalLayer(nn.Module):
  """LN -> adaLN (shift, scale) -> Linear(D -> p*p*C_out), zero-initialised. [B, L, D] -> [B, L, p*p*C_out]."""

  patch_size: int
  out_channels: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    modulation = _dense(self, 2 * dim, _zeros, 'adaLN_modulation')(nn.silu(c))
    shift, scale = jnp.split(modulation, 2, axis=-1)
    x = modulate(layer_norm_without_affine(self.dtype, 'norm_final')(x), shift, scale)
    return _dense(self, self.patch_size**2 * self.out_channels, _zeros, 'linear')(x)


class DiT(nn.Module):
  """Diffusion Transformer predicting eps.

  Params live in `param_dtype`; activations are computed in `dtype`; the output is float32.
  `attention_impl` picks the attention kernel (`jdiffrep.models.attention`: None/'auto' is
  'cpu_fused' (float32) or 'head_major' on CPU and XLA's elsewhere; 'xla'; 'cudnn' on GPU). `num_classes` adds DiT's class-label embedding (then
  `labels` are required); `time_frequency_shift` is 1 for weights from diffusers (see
  `timestep_embedding`).
  """

  depth: int
  hidden_size: int
  num_heads: int
  patch_size: int
  out_channels: int | None = None
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None
  num_classes: int | None = None
  time_frequency_shift: float = 0.0

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      t: jax.Array,
      cond: jax.Array | None = None,
      capture_block: int | None = None,
      tokens_only: bool = False,
      labels: jax.Array | None = None,
  ):
    """x: [B, H, W, C]; t: [B] (or scalar) time-steps; cond: optional [B, hidden_size] added to
    the time embedding; labels: [B] int class labels, needed exactly when `num_classes` is set.

    Returns eps: [B, H, W, out_channels] float32, or (eps, tokens) when `capture_block` is i,
    with tokens: [B, (H/p)*(W/p), hidden_size] the output of block i (0-based), in `dtype`.
    With `tokens_only`, stops after block i and returns the tokens alone (features are cheaper).
    """
    self._check_inputs(x, cond, capture_block, tokens_only, labels)
    batch, height, width, channels = x.shape
    p = self.patch_size
    grid_h, grid_w = height // p, width // p
    out_channels = channels if self.out_channels is None else self.out_channels
    t = jnp.broadcast_to(jnp.asarray(t), (batch,))

    tokens = PatchEmbed(
        p, self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype, name='x_embedder'
    )(x.astype(self.dtype))
    pos_embed = jnp.asarray(sincos_pos_embed_2d(self.hidden_size, grid_h, grid_w), self.dtype)
    tokens = tokens + pos_embed[None]

    c = TimestepEmbedder(
        self.hidden_size,
        frequency_shift=self.time_frequency_shift,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='t_embedder',
    )(t)
    if self.num_classes is not None:
      c = c + LabelEmbedder(
          self.num_classes, self.hidden_size, param_dtype=self.param_dtype, name='y_embedder'
      )(labels).astype(c.dtype)
    if cond is not None:
      c = c + cond.astype(c.dtype)

    captured = None
    for i in range(self.depth):
      tokens = DiTBlock(
          self.num_heads,
          self.mlp_ratio,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          attention_impl=self.attention_impl,
          name=f'blocks_{i}',
      )(tokens, c)
      if i == capture_block:
        captured = tokens
        if tokens_only:
          return captured

    out = FinalLayer(
        p, out_channels, dtype=self.dtype, param_dtype=self.param_dtype, name='final_layer'
    )(tokens, c)
    eps = unpatchify(out, grid_h, grid_w, p, out_channels).astype(jnp.float32)
    return eps if capture_block is None else (eps, captured)

  def _check_inputs(self, x, cond, capture_block, tokens_only=False, labels=None) -> None:
    """Raise ValueError on inputs the model cannot handle."""
    if (labels is None) != (self.num_classes is None):
      raise ValueError(
          'Class labels [B] are needed exactly when DiT.num_classes is set; got '
          f'num_classes={self.num_classes} and labels {"None" if labels is None else "given"}.'
      )
    if labels is not None and labels.shape != (x.shape[0],):
      raise ValueError(f'labels must have shape [B] = {(x.shape[0],)}, got {labels.shape}.')
    if x.ndim != 4:
      raise ValueError(f'DiT expects images [B, H, W, C], got shape {x.shape}.')
    height, width = x.shape[1:3]
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(
          f'Image size {height}x{width} is not divisible by patch size {self.patch_size}.'
      )
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f'hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}.'
      )
    if cond is not None and cond.shape != (x.shape[0], self.hidden_size):
      raise ValueError(
          f'cond must have shape [B, hidden_size] = {(x.shape[0], self.hidden_size)}, '
          f'got {cond.shape}.'
      )
    if tokens_only and capture_block is None:
      raise ValueError('tokens_only needs capture_block: the block whose tokens to return.')
    if capture_block is not None and not 0 <= capture_block < self.depth:
      raise ValueError(f'capture_block must be in [0, {self.depth}), got {capture_block}.')

  @classmethod
  def from_name(cls, name: str, **kwargs) -> 'DiT':
    """DiT.from_name('S/2', out_channels=8) -> DiT of that size and patch."""
    depth, hidden_size, num_heads, patch_size = parse_model_name(name)
    return cls(
        depth=depth, hidden_size=hidden_size, num_heads=num_heads, patch_size=patch_size, **kwargs
    )


def dit_from_name(name: str, **kwargs) -> DiT:
  """'S/2' (+ DiT fields as keyword arguments) -> DiT."""
  return DiT.from_name(name, **kwargs)
