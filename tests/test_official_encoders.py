"""ConvEncoder is the official DiTi / PDAE encoder: same parameters, same function (issue 16, item 5).

The reference is written here in PyTorch from the official module definitions
(yue-zhongqi/diti `model/representation/encoder/celeba64.py`, `ffhq.py`, `bedroom.py` and
guided-diffusion's `AttentionBlock` with `QKVAttentionLegacy` in `model/module/module.py`):
  conv(3, c0, 3, stride 2, pad 1); then per later stage GroupNorm(32) -> SiLU -> conv(stride 2);
  the AttentionBlock(c, 4 heads) right after the conv whose output is 16x16; a final
  GroupNorm -> SiLU -> flatten (C, H, W order) -> Linear(4 * 4 * c_last, d).
The official CelebA file prints its own count, 1,487,104 at d = 512, which the test checks too.
The same random weights are copied into our Flax encoder and both must give the same z.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# CI (which sets CI=true) installs the 'test' extra: there a missing torch is a failure, not a skip.
if os.environ.get('CI', '').lower() in ('1', 'true') or os.environ.get('JDIFFREP_REQUIRE_PEER'):
  import torch  # pylint: disable=g-import-not-at-top
else:
  torch = pytest.importorskip('torch', reason="needs the 'peer' or 'test' extra (torch)")

from jdiffrep.models.encoders import ConvEncoder  # pylint: disable=g-import-not-at-top

CELEBA64 = dict(channels=(64, 128, 128, 128), size=64)
FFHQ128 = dict(channels=(64, 128, 256, 256, 256), size=128)  # also LSUN Bedroom
HEADS = 4


class _OfficialAttention(torch.nn.Module):
  """guided-diffusion AttentionBlock(channels, num_heads) with the legacy qkv order."""

  def __init__(self, channels: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.norm = torch.nn.GroupNorm(32, channels)
    self.qkv = torch.nn.Conv1d(channels, 3 * channels, 1)
    self.proj_out = torch.nn.Conv1d(channels, channels, 1)
    torch.nn.init.zeros_(self.proj_out.weight)
    torch.nn.init.zeros_(self.proj_out.bias)

  def forward(self, x):
    b, c, *spatial = x.shape
    x = x.reshape(b, c, -1)
    qkv = self.qkv(self.norm(x))
    length = qkv.shape[-1]
    head_channels = c // self.num_heads
    # QKVAttentionLegacy: split heads first, then q, k, v within each head.
    q, k, v = qkv.reshape(b * self.num_heads, 3 * head_channels, length).split(head_channels, 1)
    scale = 1 / math.sqrt(math.sqrt(head_channels))
    weight = torch.softmax(torch.einsum('bct,bcs->bts', q * scale, k * scale), dim=-1)
    h = torch.einsum('bts,bcs->bct', weight, v).reshape(b, -1, length)
    return (x + self.proj_out(h)).reshape(b, c, *spatial)


def official_encoder(channels, size, latent_dim):
  """The official encoder as an nn.Sequential (NCHW)."""
  layers, resolution, previous = [], size, 3
  for i, width in enumerate(channels):
    if i:
      layers += [torch.nn.GroupNorm(32, previous), torch.nn.SiLU()]
    layers.append(torch.nn.Conv2d(previous, width, 3, 2, 1))
    resolution //= 2
    if resolution == 16:
      layers.append(_OfficialAttention(width, HEADS))
    previous = width
  layers += [torch.nn.GroupNorm(32, previous), torch.nn.SiLU(), torch.nn.Flatten(),
             torch.nn.Linear(previous * resolution * resolution, latent_dim)]
  return torch.nn.Sequential(*layers)


def _np(tensor):
  return tensor.detach().numpy().astype(np.float32)


def flax_params_from_official(module, channels):
  """Our ConvEncoder's params holding the official module's weights."""
  params, stage = {}, -1  # stage: index of the last conv seen; its norm and attention follow it
  for layer in module:
    if isinstance(layer, torch.nn.Conv2d):
      stage += 1
      params[f'conv_{stage}'] = {'kernel': _np(layer.weight).transpose(2, 3, 1, 0),
                                 'bias': _np(layer.bias)}
    elif isinstance(layer, torch.nn.GroupNorm):
      params[f'norm_{stage}'] = {'scale': _np(layer.weight), 'bias': _np(layer.bias)}
    elif isinstance(layer, _OfficialAttention):
      c = channels[stage]
      # Legacy qkv output order is (head, q|k|v, channel); ours is (q|k|v, head, channel).
      order = np.arange(3 * c).reshape(HEADS, 3, c // HEADS).transpose(1, 0, 2).reshape(-1)
      params[f'attn_{stage}'] = {
          'norm': {'scale': _np(layer.norm.weight), 'bias': _np(layer.norm.bias)},
          'qkv': {'kernel': _np(layer.qkv.weight)[order, :, 0].T, 'bias': _np(layer.qkv.bias)[order]},
          'proj_out': {'kernel': _np(layer.proj_out.weight)[:, :, 0].T,
                       'bias': _np(layer.proj_out.bias)}}
    elif isinstance(layer, torch.nn.Linear):
      c, side = channels[-1], int(math.isqrt(layer.in_features // channels[-1]))
      # torch flattens (C, H, W), Flax (H, W, C).
      kernel = _np(layer.weight).reshape(-1, c, side, side).transpose(2, 3, 1, 0)
      params['to_latent'] = {'kernel': kernel.reshape(-1, layer.out_features),
                             'bias': _np(layer.bias)}
  return params


def _our_param_count(channels, size, latent_dim):
  model = ConvEncoder(latent_dim=latent_dim, channels=channels)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes))


@pytest.mark.parametrize('setting', [CELEBA64, FFHQ128], ids=['celeba64', 'ffhq128'])
@pytest.mark.parametrize('latent_dim', [512, 64])
def test_parameter_count_equals_the_official_encoder(setting, latent_dim):
  official = sum(p.numel() for p in official_encoder(latent_dim=latent_dim, **setting).parameters())
  assert _our_param_count(setting['channels'], setting['size'], latent_dim) == official
  if setting is CELEBA64 and latent_dim == 512:
    assert official == 1_487_104  # the count printed in the official celeba64.py


def test_same_weights_give_the_same_z_as_the_official_encoder():
  torch.manual_seed(0)
  setting = CELEBA64
  module = official_encoder(latent_dim=32, **setting).eval()
  with torch.no_grad():  # non-zero attention output, so the test sees the attention block
    for layer in module:
      if isinstance(layer, _OfficialAttention):
        layer.proj_out.weight.normal_(0, 0.2)
        layer.proj_out.bias.normal_(0, 0.2)
      if isinstance(layer, torch.nn.GroupNorm):
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_(0, 0.1)
  x = np.random.default_rng(0).uniform(-1, 1, (2, setting['size'], setting['size'], 3))
  x = x.astype(np.float32)
  with torch.no_grad():
    expected = module(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  params = flax_params_from_official(module, setting['channels'])
  model = ConvEncoder(latent_dim=32, channels=setting['channels'])
  reference_tree = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x))['params']
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, reference_tree)
  got = jax.jit(model.apply)({'params': params}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


def test_attention_block_starts_as_the_identity():
  """Zero-initialised proj_out: at init, z is what the encoder gives with the block removed."""
  x = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3), jnp.float32, -1, 1)
  with_attention = ConvEncoder(latent_dim=16)
  without = ConvEncoder(latent_dim=16, attention_resolution=0)
  params = jax.jit(with_attention.init)(jax.random.key(1), x)
  assert not np.any(np.asarray(params['params']['attn_1']['proj_out']['kernel']))
  stripped = {'params': {k: v for k, v in params['params'].items() if not k.startswith('attn')}}
  np.testing.assert_allclose(jax.jit(with_attention.apply)(params, x),
                             jax.jit(without.apply)(stripped, x), rtol=1e-5, atol=1e-5)
