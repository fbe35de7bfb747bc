"""PDAE / DiTi gradient-estimator branch G(x_t, t, z) for a frozen DiT (SPEC section 3).

The branch reads the frozen DM's token features after its middle block, runs its own stack of
trainable DiT blocks conditioned on t and the (masked) representation z, and maps back to image
space with a zero-initialised final layer, so G = 0 (the frozen DM alone) at the start.

Two ways for z to enter (a config choice):
  'add':      c = time_emb(t) + Linear(z); blocks use adaLN on c (as DiT's class embedding).
  'modulate': the official U-Net's scheme: z modulates *around* the time modulation,
              h = (1 + scale_z) * (LN(h) * (1 + scale_t) + shift_t) + shift_z.
"""

from __future__ import annotations

from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp

from jdiffrep.models import dit

CONDITION_MODES = ('add', 'modulate')


class ZModulatedBlock(nn.Module):
  """DiT block whose adaLN output is modulated again by z. x: [B, L, D], c_t, z: [B, .]."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, c_t: jax.Array, z: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    zeros = nn.initializers.zeros
    t_mod = nn.Dense(6 * dim, kernel_init=zeros, bias_init=zeros, dtype=self.dtype,
                     name='adaLN_modulation')(nn.silu(c_t))
    z_mod = nn.Dense(4 * dim, kernel_init=zeros, bias_init=zeros, dtype=self.dtype,
                     name='z_modulation')(z)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(t_mod, 6, -1)
    zshift_msa, zscale_msa, zshift_mlp, zscale_mlp = jnp.split(z_mod, 4, -1)

    def modulated(h, shift, scale, zshift, zscale):
      return dit.modulate(dit.modulate(h, shift, scale), zshift, zscale)

    attn = dit.Attention(self.num_heads, dtype=self.dtype, attention_impl=self.attention_impl,
                         name='attn')
    mlp = dit.Mlp(int(dim * self.mlp_ratio), dtype=self.dtype, name='mlp')
    norm = lambda name: dit.layer_norm_without_affine(self.dtype, name)
    x = x + gate_msa[:, None] * attn(
        modulated(norm('norm1')(x), shift_msa, scale_msa, zshift_msa, zscale_msa))
    x = x + gate_mlp[:, None] * mlp(
        modulated(norm('norm2')(x), shift_mlp, scale_mlp, zshift_mlp, zscale_mlp))
    return x


class GradientEstimator(nn.Module):
  """G: DM tokens [B, L, D] (after the frozen DM's middle block), t [B], z [B, d] -> [B, H, W, C].

  `grid` is the (H/p, W/p) token grid of the frozen DM, needed to unpatchify.
  """
  depth: int
  num_heads: int
  patch_size: int
  out_channels: int
  condition_mode: str = 'add'
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, tokens: jax.Array, t: jax.Array, z: jax.Array,
               grid: tuple[int, int]) -> jax.Array:
    if self.condition_mode not in CONDITION_MODES:
      raise ValueError(f'condition_mode={self.condition_mode!r}; valid: {CONDITION_MODES}.')
    dim = tokens.shape[-1]
    c_t = dit.TimestepEmbedder(dim, dtype=self.dtype, name='t_embedder')(t)
    z = z.astype(self.dtype)
    h = tokens.astype(self.dtype)
    if self.condition_mode == 'add':
      c = c_t + nn.Dense(dim, dtype=self.dtype, name='z_embedder')(z)
      for i in range(self.depth):
        h = dit.DiTBlock(self.num_heads, self.mlp_ratio, dtype=self.dtype,
                         attention_impl=self.attention_impl, name=f'blocks_{i}')(h, c)
    else:
      c = c_t
      for i in range(self.depth):
        h = ZModulatedBlock(self.num_heads, self.mlp_ratio, dtype=self.dtype,
                            attention_impl=self.attention_impl, name=f'blocks_{i}')(h, c_t, z)
    out = dit.FinalLayer(self.patch_size, self.out_channels, dtype=self.dtype,
                         name='final_layer')(h, c)
    return dit.unpatchify(out, grid[0], grid[1], self.patch_size,
                          self.out_channels).astype(jnp.float32)
