"""The fused CPU attention kernel (jdiffrep/models/cpu_attention.cc): values and gradients equal
jax.nn.dot_product_attention and a float64 reference within 1e-5, under vmap and over two
devices (inside a DiT: tests/test_attention.py); the build is cached, and without a compiler
'auto' falls back with the reason."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffrep.models import attention
from jdiffrep.models import cpu_attention
from tests.test_attention import _reference


def _outputs_and_grads(qkv, weights, heads, impl):
  fn = lambda x: attention.self_attention(x, heads, impl)
  grad = jax.grad(lambda x: jnp.sum(fn(x) * weights))
  return np.asarray(jax.jit(fn)(qkv)), np.asarray(jax.jit(grad)(qkv))


# DiT-S/2 and XXS/4 at 32x32 (256 and 64 tokens), and shapes that leave partial blocks of query
# rows (130 = 2 x 64 + 2), partial register tiles and widths that are not whole vectors (24, 40).
@pytest.mark.parametrize('batch,length,heads,head_dim', [
    (2, 256, 6, 64), (3, 64, 4, 32), (2, 130, 2, 40), (3, 37, 2, 24), (1, 5, 3, 8)])
def test_fused_equals_plain_attention_in_values_and_gradients(batch, length, heads, head_dim):
  rng = np.random.default_rng(length)
  qkv = rng.normal(0, 1.5, (batch, length, 3 * heads * head_dim)).astype(np.float32)
  weights = rng.normal(size=(batch, length, heads * head_dim)).astype(np.float32)
  out_fused, grad_fused = _outputs_and_grads(qkv, weights, heads, 'cpu_fused')
  out_xla, grad_xla = _outputs_and_grads(qkv, weights, heads, 'xla')
  assert out_fused.shape == (batch, length, heads * head_dim)
  np.testing.assert_allclose(out_fused, _reference(qkv, heads), atol=1e-5, rtol=0)
  np.testing.assert_allclose(out_fused, out_xla, atol=1e-5, rtol=0)
  assert np.abs(grad_xla).max() > 0.1  # the comparison below is not of zeros
  np.testing.assert_allclose(grad_fused, grad_xla, atol=1e-5, rtol=0)


def test_large_scores_do_not_overflow():
  """Softmax is shifted by the row maximum: scores over 100 (float32's exp overflows above 88.7)
  give finite results, as close to the float64 reference as XLA's (such scores amplify float32
  rounding to a few 1e-5 in both)."""
  rng = np.random.default_rng(7)
  qkv = rng.normal(0, 6.0, (1, 40, 3 * 2 * 16)).astype(np.float32)
  scores = np.einsum('ld,md->lm', qkv[0, :, :16], qkv[0, :, 32:48]) / 4
  assert scores.max() > 100
  reference = _reference(qkv, 2)
  errors = {impl: np.abs(np.asarray(attention.self_attention(jnp.asarray(qkv), 2, impl))
                         - reference).max() for impl in ('cpu_fused', 'xla')}
  assert np.isfinite(errors['cpu_fused'])
  assert errors['cpu_fused'] <= errors['xla'] + 1e-6 and errors['cpu_fused'] < 1e-4


def test_vmap_and_two_device_sharding_give_the_same_result():
  rng = np.random.default_rng(5)
  heads = 2
  qkv = rng.normal(size=(3, 4, 20, 3 * heads * 8)).astype(np.float32)
  fused = lambda x: attention.self_attention(x, heads, 'cpu_fused')
  expected = np.stack([np.asarray(jax.jit(fused)(q)) for q in qkv])
  np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(fused))(qkv)), expected, atol=1e-6)

  assert jax.device_count() == 2  # tests/conftest.py
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  sharded = jax.device_put(qkv[0], jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')))
  grad = lambda x: jax.grad(lambda y: jnp.sum(fused(y) ** 2))(x)
  np.testing.assert_allclose(np.asarray(jax.jit(fused)(sharded)), expected[0], atol=1e-6)
  np.testing.assert_allclose(np.asarray(jax.jit(grad)(sharded)), np.asarray(jax.jit(grad)(qkv[0])),
                             atol=1e-6)


def test_fused_kernel_refuses_other_dtypes_with_the_fix():
  qkv = jnp.zeros((1, 4, 3 * 2 * 8), jnp.bfloat16)
  with pytest.raises(ValueError, match="float32.*'head_major'"):
    attention.self_attention(qkv, 2, 'cpu_fused')
  # 'auto' takes the XLA-written kernel for them instead.
  assert attention.self_attention(qkv, 2, 'auto').dtype == jnp.bfloat16


def test_the_build_is_cached_per_source_and_reused(tmp_path, monkeypatch):
  monkeypatch.setenv('JDIFFREP_CACHE_DIR', str(tmp_path))
  compiler = cpu_attention._compiler()
  assert compiler is not None
  first = cpu_attention.build(compiler)
  assert first.parent == tmp_path and first.stat().st_size > 0
  stamp = first.stat().st_mtime_ns
  assert cpu_attention.build(compiler) == first and first.stat().st_mtime_ns == stamp  # reused
  assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind
  monkeypatch.setattr(cpu_attention, 'COMPILE_FLAGS', cpu_attention.COMPILE_FLAGS + ('-O2',))
  assert cpu_attention.library_path(compiler) != first  # other flags, another build


def test_without_a_compiler_auto_falls_back_and_cpu_fused_says_why(tmp_path):
  env = dict(os.environ, CXX='no-such-compiler', JDIFFREP_CACHE_DIR=str(tmp_path))
  script = (
      'import jax.numpy as jnp\n'
      'from jdiffrep.models import attention\n'
      'print(attention.resolve("auto", "cpu"))\n'
      'try:\n'
      '  attention.self_attention(jnp.zeros((1, 4, 48)), 2, "cpu_fused")\n'
      'except RuntimeError as error:\n'
      '  print(error)\n')
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True,
                          check=True, timeout=300)
  lines = result.stdout.splitlines()
  assert lines[0] == 'head_major'
  assert "'no-such-compiler' is not on PATH" in lines[1] and "'head_major'" in lines[1]
  assert 'no C++ compiler' in result.stderr  # the warning 'auto' logs
  assert not list(tmp_path.iterdir())
