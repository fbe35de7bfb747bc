"""Tests for jdiffrep.models.encoders: shapes, attention placement, sensitivity, training, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdiffrep.models import encoders
from jdiffrep.models.encoders import ENCODERS, ConvEncoder, ViTEncoder, group_norm_groups, make_encoder

TINY_CONV = dict(channels=(8, 16, 16, 16))
TINY_VIT = dict(hidden_size=32, depth=2, num_heads=2)


def tiny_encoder(name, latent_dim=16, **kwargs):
  return make_encoder(name, latent_dim, **(TINY_CONV if name == 'conv' else TINY_VIT), **kwargs)


def images(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32, -1.0, 1.0)


def init(model, x, seed=0):
  """Jitted init (eager linen init compiles every random op separately, which is slow on CPU)."""
  return jax.jit(model.init)(jax.random.key(seed), x)


def apply(model, params, x):
  """Jitted forward pass (eager apply dispatches op by op, which is slow on CPU)."""
  return jax.jit(model.apply)(params, x)


def param_count(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


# ----------------------------------------------------------------------------- shapes and structure

@pytest.mark.parametrize('name, size', [('conv', 32), ('conv', 64), ('conv', 128), ('vit', 32), ('vit', 64)])
@pytest.mark.parametrize('latent_dim', [64, 512])
def test_output_shape_and_dtype(name, size, latent_dim):
  model = make_encoder(name, latent_dim)  # default widths; traced for shapes, nothing is computed
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  z, _ = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), x)
  assert z.shape == (2, latent_dim) and z.dtype == jnp.float32


def conv_param_names(size, **kwargs):
  model = ConvEncoder(**kwargs)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return set(jax.eval_shape(model.init, jax.random.key(0), x)['params'])


@pytest.mark.parametrize('size, stage', [(32, 0), (64, 1), (128, 2)])
def test_conv_attention_sits_at_16x16_stage(size, stage):
  names = conv_param_names(size)
  assert {n for n in names if n.startswith('attn')} == {f'attn_{stage}'}
  assert {f'conv_{i}' for i in range(4)} | {f'norm_{i}' for i in range(4)} | {'to_latent'} <= names


def test_conv_attention_resolution_is_configurable_and_skippable():
  assert {n for n in conv_param_names(64, attention_resolution=8) if n.startswith('attn')} == {'attn_2'}
  assert not any(n.startswith('attn') for n in conv_param_names(64, attention_resolution=7))
  assert not any(n.startswith('attn') for n in conv_param_names(32, attention_resolution=32))


def test_conv_param_count_matches_architecture():
  """3->64->128->128->128, attention (GroupNorm + qkv + proj) at 16x16, 4x4x128 -> 512."""
  conv = lambda cin, cout: 9 * cin * cout + cout
  expected = (conv(3, 64) + conv(64, 128) + 2 * conv(128, 128)
              + 2 * (64 + 3 * 128)                       # GroupNorms of the 4 stages
              + 2 * 128 + (128 * 384 + 384) + (128 * 128 + 128)  # attention block
              + 4 * 4 * 128 * 512 + 512)                 # flatten -> Dense
  model = ConvEncoder(latent_dim=512)
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  assert param_count(jax.eval_shape(model.init, jax.random.key(0), x)) == expected


def test_group_norm_groups():
  assert [group_norm_groups(c) for c in (8, 16, 64, 128, 48, 3)] == [8, 16, 32, 32, 24, 3]


@pytest.mark.parametrize('model, shape', [
    (ConvEncoder(**TINY_CONV), (1, 40, 40, 3)),
    (ConvEncoder(**TINY_CONV), (1, 32, 64, 3)),
    (ViTEncoder(patch_size=4, **TINY_VIT), (1, 30, 32, 3)),
    (ViTEncoder(hidden_size=32, num_heads=3), (1, 32, 32, 3)),
])
def test_bad_inputs_raise(model, shape):
  with pytest.raises(ValueError):
    model.init(jax.random.key(0), jnp.zeros(shape))


def test_unknown_encoder_name_lists_valid_ones():
  with pytest.raises(ValueError, match='conv') as info:
    make_encoder('resnet', 512)
  assert 'vit' in str(info.value) and set(ENCODERS) == {'conv', 'vit'}


def test_make_encoder_passes_fields():
  model = make_encoder('vit', 128, patch_size=8, depth=1)
  assert isinstance(model, ViTEncoder) and (model.latent_dim, model.patch_size, model.depth) == (128, 8, 1)


# ----------------------------------------------------------------------------- sensitivity

@pytest.fixture(scope='module')
def tiny_params():
  """name -> params of `tiny_encoder(name)`, initialised once (an init compiles for seconds on CPU)."""
  cache = {}
  def get(name):
    if name not in cache:
      cache[name] = init(tiny_encoder(name), images((2, 32, 32, 3)))
    return cache[name]
  return get


@pytest.fixture(params=['conv', 'vit'])
def tiny_model(request, tiny_params):
  """(name, model, params) for a tiny encoder of 32x32 images."""
  return request.param, tiny_encoder(request.param), tiny_params(request.param)


def test_different_images_give_different_z(tiny_model):
  _, model, params = tiny_model
  z = apply(model, params, images((2, 32, 32, 3), seed=1))
  assert np.all(np.isfinite(z))
  assert float(jnp.abs(z[0] - z[1]).max()) > 1e-3 * float(jnp.abs(z).max())


def test_z_depends_on_every_quadrant(tiny_model):
  _, model, params = tiny_model
  grad = jax.jit(jax.grad(lambda x: model.apply(params, x).sum()))(images((1, 32, 32, 3), seed=2))
  grad = np.abs(np.asarray(grad[0]))
  for rows in (slice(0, 16), slice(16, 32)):
    for cols in (slice(0, 16), slice(16, 32)):
      assert grad[rows, cols].max() > 0


def swap_patches(x, patch, a, b):
  """Swap patch (row, col) a with patch b in x: [B, H, W, C]."""
  x = np.array(x)
  (ra, ca), (rb, cb) = a, b
  sa = (slice(None), slice(ra * patch, (ra + 1) * patch), slice(ca * patch, (ca + 1) * patch))
  sb = (slice(None), slice(rb * patch, (rb + 1) * patch), slice(cb * patch, (cb + 1) * patch))
  x[sa], x[sb] = x[sb].copy(), x[sa].copy()
  return jnp.asarray(x)


@pytest.mark.parametrize('use_positions', [True, False])
def test_vit_is_permutation_sensitive_only_through_positions(use_positions, monkeypatch, tiny_params):
  """Swapping two patches changes z; with the position embedding zeroed it does not (control)."""
  if not use_positions:
    monkeypatch.setattr(encoders, 'sincos_pos_embed_2d', lambda d, h, w: np.zeros((h * w, d), np.float32))
  model, params = tiny_encoder('vit'), tiny_params('vit')
  x = images((1, 32, 32, 3), seed=3)
  z, z_swapped = apply(model, params, x), apply(model, params, swap_patches(x, 4, (0, 1), (5, 6)))
  change = float(jnp.abs(z - z_swapped).max()) / float(jnp.abs(z).max())
  assert change > 1e-3 if use_positions else change < 1e-5


# ----------------------------------------------------------------------------- training and precision

@pytest.mark.parametrize('name', ['conv', 'vit'])
def test_encoder_can_fit_a_fixed_target(name, tiny_params):
  model, params = tiny_encoder(name), tiny_params(name)
  x = images((8, 32, 32, 3), seed=4)
  target = jax.random.normal(jax.random.key(5), (8, 16))
  optimizer = optax.adam(3e-3)

  def loss_fn(params):
    return jnp.mean((model.apply(params, x) - target) ** 2)

  @jax.jit
  def train(params):
    def step(carry, _):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), None, length=40)
    return loss_fn(params), losses

  final_loss, losses = train(params)
  assert float(final_loss) * 5 <= float(losses[0]), (float(losses[0]), float(final_loss))


@pytest.mark.parametrize('name', ['conv', 'vit'])
def test_bf16_compute_close_to_fp32(name, tiny_params):
  model32, model16 = tiny_encoder(name), tiny_encoder(name, dtype=jnp.bfloat16)
  params = tiny_params(name)
  x = images((2, 32, 32, 3), seed=6)
  z32, z16 = apply(model32, params, x), apply(model16, params, x)
  assert z16.dtype == jnp.float32
  error = float(jnp.abs(z16 - z32).max())
  assert 0 < error <= 0.1 * float(jnp.abs(z32).max())
