"""jdiffrep.models.linear: Dense's values and gradients, with fewer transposed copies on CPU."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jdiffrep.models import dit
from jdiffrep.models import linear


def _pair(features, dtype=jnp.float32):
  init = dict(kernel_init=nn.initializers.normal(0.5), bias_init=nn.initializers.normal(0.5),
              dtype=dtype)
  return linear.Linear(features, **init), nn.Dense(features, **init)


def test_linear_matches_dense_values_and_gradients():
  ours, dense = _pair(24)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 10, 16))
  params = dense.init(jax.random.PRNGKey(1), x)
  ours_params = ours.init(jax.random.PRNGKey(1), x)
  # Same parameter tree, names and initial values: checkpoints and converters are unchanged.
  assert jax.tree.structure(ours_params) == jax.tree.structure(params)
  np.testing.assert_array_equal(ours_params['params']['kernel'], params['params']['kernel'])
  assert ours_params['params']['kernel'].shape == (16, 24)

  target = jax.random.normal(jax.random.PRNGKey(2), (3, 10, 24))
  def loss(module, p, x):
    return jnp.sum(jnp.sin(module.apply(p, x)) * target)

  out_ours, out_dense = ours.apply(params, x), dense.apply(params, x)
  assert out_ours.shape == (3, 10, 24)
  np.testing.assert_allclose(out_ours, out_dense, rtol=1e-5, atol=1e-5)
  grads_ours = jax.grad(loss, argnums=(1, 2))(ours, params, x)
  grads_dense = jax.grad(loss, argnums=(1, 2))(dense, params, x)
  for got, want in zip(jax.tree.leaves(grads_ours), jax.tree.leaves(grads_dense)):
    assert got.shape == want.shape
    assert float(jnp.max(jnp.abs(want))) > 1e-2  # a gradient that is not trivially zero
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_linear_computes_in_dtype_and_keeps_float32_parameters():
  ours, dense = _pair(8, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
  params = dense.init(jax.random.PRNGKey(1), x)
  out = ours.apply(params, x)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             np.asarray(dense.apply(params, x), np.float32), rtol=2e-2, atol=2e-2)
  grads = jax.grad(lambda p: jnp.sum(ours.apply(p, x).astype(jnp.float32) ** 2))(params)
  assert grads['params']['kernel'].dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(grads['params']['kernel'])))


def _transposed_copies(monkeypatch, dense_factory) -> int:
  """Copy fusions in the compiled gradient of a small DiT's loss, with `dense_factory` layers."""
  monkeypatch.setattr(dit, '_dense', dense_factory)
  model = dit.DiT(depth=2, hidden_size=64, num_heads=2, patch_size=4)
  x = jnp.zeros((8, 16, 16, 3))
  t = jnp.zeros((8,), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), x, t)['params']
  loss = lambda p: jnp.mean(model.apply({'params': p}, x, t) ** 2)
  hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
  # XLA names a fusion after its ops: copy_bitcast_fusion.3, transpose_copy_fusion, ...
  return len(re.findall(r'%\w*(?:copy|transpose)\w*(?:\.\d+)? = f32\[[\d,]+\]\{[\d,]+\} fusion\(',
                        hlo))


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU layout assignment')
def test_linear_leaves_xla_cpu_fewer_transposed_copies(monkeypatch):
  def with_dense(module, features, kernel_init, name):
    return nn.Dense(features, kernel_init=kernel_init, bias_init=nn.initializers.zeros,
                    dtype=module.dtype, param_dtype=module.param_dtype, name=name)
  original = dit._dense
  autodiff = _transposed_copies(monkeypatch, with_dense)
  ours = _transposed_copies(monkeypatch, original)
  assert autodiff > 0
  assert ours < autodiff
