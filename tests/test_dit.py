"""Tests for jdiffrep.models.dit: shapes, adaLN-Zero init, embeddings, param count, mixed precision."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffrep.models.dit import (
    DIT_SIZES,
    DiT,
    dit_from_name,
    parse_model_name,
    sincos_pos_embed_2d,
    timestep_embedding,
)

TINY = dict(depth=2, hidden_size=64, num_heads=2)


def randomize_zero_params(params, seed, std=0.1):
  """Replace every all-zero leaf (adaLN, final layer, biases) with N(0, std^2) values."""
  rng = np.random.default_rng(seed)
  replace = (
      lambda x: jnp.asarray(std * rng.standard_normal(x.shape), x.dtype)
      if not np.any(np.asarray(x))
      else x
  )
  return jax.tree.map(replace, params)


def init(model, x, t, seed=0):
  """Jitted init (eager linen init compiles every random op separately, which is slow on CPU)."""
  return jax.jit(model.init)(jax.random.key(seed), x, t)


def images(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.fixture(scope='module')
def tiny():
  """A tiny patch-2 DiT on 16x16x3 with zero-init params and a randomised copy."""
  model = DiT(patch_size=2, **TINY)
  x = images((2, 16, 16, 3))
  t = jnp.array([3, 700])
  params = init(model, x, t)
  random_params = randomize_zero_params(params, seed=1)
  return model, x, t, params, random_params


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize('patch_size', [2, 4, 8])
def test_output_shape_per_patch_size(patch_size):
  model = DiT(patch_size=patch_size, **TINY)
  x, t = images((2, 16, 16, 3)), jnp.array([0, 999])
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, t)[0])
  assert out.shape == (2, 16, 16, 3) and out.dtype == jnp.float32


@pytest.mark.slow
def test_non_square_input_and_out_channels():
  model = DiT(patch_size=4, out_channels=6, **TINY)
  x, t = images((2, 16, 24, 3)), jnp.array([5, 10])
  out = model.apply(init(model, x, t), x, t)
  assert out.shape == (2, 16, 24, 6)


def test_indivisible_image_size_raises():
  model = DiT(patch_size=4, **TINY)
  with pytest.raises(ValueError, match='not divisible by patch size 4'):
    model.init(jax.random.key(0), images((1, 16, 18, 3)), jnp.array([1]))


def test_capture_block_returns_tokens(tiny):
  model, x, t, _, params = tiny
  plain = model.apply(params, x, t)
  out, tokens0 = model.apply(params, x, t, capture_block=0)
  _, tokens1 = model.apply(params, x, t, capture_block=1)
  assert tokens0.shape == tokens1.shape == (2, 8 * 8, 64)
  np.testing.assert_array_equal(out, plain)
  assert not np.allclose(tokens0, tokens1)
  with pytest.raises(ValueError, match='capture_block'):
    model.apply(params, x, t, capture_block=2)
  np.testing.assert_array_equal(model.apply(params, x, t, capture_block=0, tokens_only=True),
                                tokens0)
  with pytest.raises(ValueError, match='tokens_only needs capture_block'):
    model.apply(params, x, t, tokens_only=True)


def test_unpatchify_layout_matches_dit():
  """Final-layer token n's vector, ordered (p, q, c), lands at pixel (row*p + p_, col*p + q_)."""
  from jdiffrep.models.dit import unpatchify

  h, w, p, c = 2, 3, 2, 3
  tokens = np.arange(1 * h * w * p * p * c, dtype=np.float32).reshape(1, h * w, p * p * c)
  img = np.asarray(unpatchify(jnp.asarray(tokens), h, w, p, c))
  for row in range(h):
    for col in range(w):
      for pi in range(p):
        for qi in range(p):
          for ch in range(c):
            expected = tokens[0, row * w + col, (pi * p + qi) * c + ch]
            assert img[0, row * p + pi, col * p + qi, ch] == expected


# ----------------------------------------------------------------------------- adaLN-Zero and conditioning


def test_adaln_zero_output_is_exactly_zero_at_init(tiny):
  model, x, t, params, _ = tiny
  out = model.apply(params, x, t, cond=images((2, 64), seed=5))
  assert bool(jnp.all(out == 0))


def test_random_params_output_depends_on_t_and_cond(tiny):
  model, x, t, _, params = tiny
  out = model.apply(params, x, t)
  assert float(jnp.abs(out).max()) > 1e-2
  out_other_t = model.apply(params, x, jnp.array([500, 20]))
  assert float(jnp.abs(out - out_other_t).max()) > 1e-3
  out_cond = model.apply(params, x, t, cond=images((2, 64), seed=7))
  assert float(jnp.abs(out - out_cond).max()) > 1e-3


def test_cond_shape_checked(tiny):
  model, x, t, params, _ = tiny
  with pytest.raises(ValueError, match='cond must have shape'):
    model.apply(params, x, t, cond=jnp.zeros((2, 32)))


def test_class_labels_change_the_output_and_are_required():
  model = DiT(patch_size=4, num_classes=3, **TINY)
  x, t = images((2, 16, 16, 3)), jnp.array([3, 700])
  params = jax.jit(lambda: model.init(jax.random.key(0), x, t, labels=jnp.zeros((2,), jnp.int32)))()
  params = randomize_zero_params(params, seed=2)
  assert params['params']['y_embedder']['embedding_table'].shape == (4, 64)  # + the null class
  apply = jax.jit(lambda labels: model.apply(params, x, t, labels=labels))
  out_a, out_b = apply(jnp.array([0, 3])), apply(jnp.array([1, 3]))
  assert float(jnp.abs(out_a[0] - out_b[0]).max()) > 1e-3
  np.testing.assert_array_equal(out_a[1], out_b[1])
  with pytest.raises(ValueError, match='needed exactly when DiT.num_classes is set'):
    model.apply(params, x, t)


# ----------------------------------------------------------------------------- embeddings vs. an independent derivation


def reference_pos_embed(dim, grid_h, grid_w):
  """Element by element: channel k < dim/2 encodes the column, k >= dim/2 the row; within a half of
  size dim/2, the first dim/4 channels are sin(pos * w_j), the next dim/4 cos(pos * w_j),
  w_j = 10000^(-j / (dim/4))."""
  quarter = dim // 4
  out = np.zeros((grid_h * grid_w, dim))
  for row in range(grid_h):
    for col in range(grid_w):
      n = row * grid_w + col
      for k in range(dim):
        half, within = divmod(k, dim // 2)
        pos = col if half == 0 else row
        func, j = (math.sin, within) if within < quarter else (math.cos, within - quarter)
        out[n, k] = func(pos * 10000.0 ** (-j / quarter))
  return out


@pytest.mark.parametrize('dim,grid_h,grid_w', [(16, 4, 4), (32, 2, 5), (64, 3, 7), (8, 1, 1)])
def test_sincos_pos_embed_matches_reference(dim, grid_h, grid_w):
  got = sincos_pos_embed_2d(dim, grid_h, grid_w)
  assert got.shape == (grid_h * grid_w, dim) and got.dtype == np.float32
  np.testing.assert_allclose(got, reference_pos_embed(dim, grid_h, grid_w), atol=1e-6)


def reference_timestep_embedding(ts, dim, max_period=10000):
  half = dim // 2
  out = np.zeros((len(ts), dim))
  for b, t in enumerate(ts):
    for j in range(half):
      freq = math.exp(-math.log(max_period) * j / half)
      out[b, j] = math.cos(t * freq)
      out[b, half + j] = math.sin(t * freq)
  return out


@pytest.mark.parametrize('dim', [256, 64, 7])
def test_timestep_embedding_matches_reference(dim):
  ts = [0, 1, 17, 500, 999]
  got = timestep_embedding(jnp.array(ts), dim)
  assert got.shape == (5, dim) and got.dtype == jnp.float32
  # float32 arguments up to ~1000 rad: allow a few ulps of the argument.
  np.testing.assert_allclose(np.asarray(got), reference_timestep_embedding(ts, dim), atol=2e-4)


# ----------------------------------------------------------------------------- names and sizes


def test_parse_model_name():
  assert parse_model_name('S/2') == (12, 384, 6, 2)
  assert parse_model_name('XL/8') == (28, 1152, 16, 8)
  assert parse_model_name('XXS/4') == (4, 128, 4, 4)
  for bad in ['S', 'S/3', 'Q/2', 'S/x', 'S/2/2', '']:
    with pytest.raises(ValueError, match='valid sizes'):
      parse_model_name(bad)
  model = dit_from_name('XS/4', out_channels=8)
  assert (
      model.depth,
      model.hidden_size,
      model.num_heads,
      model.patch_size,
      model.out_channels,
  ) == (6, 256, 4, 4, 8)
  assert set(DIT_SIZES) == {'XXS', 'XS', 'S', 'B', 'L', 'XL'}


def expected_param_count(depth, dim, patch, channels, out_channels, mlp_ratio=4):
  dense = lambda fan_in, fan_out: fan_in * fan_out + fan_out
  hidden = mlp_ratio * dim
  patch_conv = patch * patch * channels * dim + dim
  time_mlp = dense(256, dim) + dense(dim, dim)
  block = (
      dense(dim, 3 * dim)
      + dense(dim, dim)
      + dense(dim, hidden)
      + dense(hidden, dim)
      + dense(dim, 6 * dim)
  )
  final = dense(dim, 2 * dim) + dense(dim, patch * patch * out_channels)
  return patch_conv + time_mlp + depth * block + final


def test_param_count_of_named_size():
  model = dit_from_name('S/2')
  shapes = jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 4)), jnp.zeros((1,), jnp.int32)
  )
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  assert count == expected_param_count(12, 384, 2, 4, 4)
  assert set(shapes['params']) == {'x_embedder', 't_embedder', 'final_layer'} | {
      f'blocks_{i}' for i in range(12)
  }


# ----------------------------------------------------------------------------- init and mixed precision


def test_patch_conv_init_has_torch_xavier_std():
  patch, channels, dim = 8, 3, 256
  model = DiT(depth=1, hidden_size=dim, num_heads=4, patch_size=patch)
  params = init(model, jnp.zeros((1, 8, 8, channels)), jnp.zeros((1,)), seed=3)['params']
  kernel = np.asarray(params['x_embedder']['proj']['kernel'])
  assert kernel.shape == (patch, patch, channels, dim)
  fan_in, fan_out = patch * patch * channels, dim
  bound = math.sqrt(6.0 / (fan_in + fan_out))  # torch xavier_uniform_: U(-bound, bound)
  expected_std = bound / math.sqrt(3.0)  # = sqrt(2 / (fan_in + fan_out))
  assert abs(kernel.std() / expected_std - 1) < 0.1
  assert np.abs(kernel).max() <= bound
  assert not np.any(np.asarray(params['x_embedder']['proj']['bias']))
  time_kernel = np.asarray(params['t_embedder']['mlp_0']['kernel'])
  assert abs(time_kernel.std() / 0.02 - 1) < 0.1


def test_bf16_compute_close_to_fp32(tiny):
  model, x, t, _, params = tiny
  cond = images((2, 64), seed=9)
  out32 = model.apply(params, x, t, cond=cond)
  model16 = DiT(patch_size=2, dtype=jnp.bfloat16, **TINY)
  params16 = jax.eval_shape(model16.init, jax.random.key(0), x, t)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params16))
  out16 = model16.apply(params, x, t, cond=cond)
  assert out16.dtype == jnp.float32
  scale = float(jnp.abs(out32).max())
  assert float(jnp.abs(out16 - out32).max()) <= 5e-2 * scale
  assert float(jnp.abs(out16 - out32).max()) > 0  # really ran in bf16
