"""The attention kernels: head_major equals jax.nn.dot_product_attention and a float64 reference
(values and gradients), 'auto' picks per platform and dtype, bad names are refused. The fused
CPU kernel has its own tests (tests/test_cpu_attention.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffrep import config as config_lib
from jdiffrep.models import attention
from jdiffrep.models import dit


def _reference(qkv: np.ndarray, heads: int) -> np.ndarray:
  """float64 NumPy multi-head softmax attention of a fused [B, L, 3*H*Dh] projection."""
  batch, length, width = qkv.shape
  head_dim = width // (3 * heads)
  qkv = qkv.astype(np.float64).reshape(batch, length, 3, heads, head_dim)
  q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # [B, H, L, Dh]
  scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, heads * head_dim)


@pytest.mark.parametrize('length,heads,head_dim', [(16, 4, 32), (64, 6, 64)])
def test_head_major_equals_plain_attention_in_values_and_gradients(length, heads, head_dim):
  rng = np.random.default_rng(length)
  qkv = rng.normal(0, 1.5, (2, length, 3 * heads * head_dim)).astype(np.float32)
  weights = rng.normal(size=(2, length, heads * head_dim)).astype(np.float32)
  outputs, grads = {}, {}
  for impl in ('head_major', 'xla'):
    fn = lambda x, impl=impl: attention.self_attention(x, heads, impl)
    outputs[impl] = np.asarray(jax.jit(fn)(qkv))
    grads[impl] = np.asarray(jax.jit(jax.grad(lambda x, fn=fn: jnp.sum(fn(x) * weights)))(qkv))
  np.testing.assert_allclose(outputs['head_major'], outputs['xla'], atol=1e-5, rtol=0)
  np.testing.assert_allclose(outputs['head_major'], _reference(qkv, heads), atol=1e-5, rtol=0)
  assert np.abs(grads['xla']).max() > 0.1  # the comparison below is not of zeros
  np.testing.assert_allclose(grads['head_major'], grads['xla'], atol=1e-5, rtol=0)


def test_head_major_gradient_matches_float64_finite_differences():
  rng = np.random.default_rng(0)
  qkv = rng.normal(size=(1, 8, 3 * 2 * 4))
  weights = rng.normal(size=(1, 8, 8))
  with jax.enable_x64():
    loss = lambda x: jnp.sum(attention.self_attention(x, 2, 'head_major') * weights)
    grad = np.asarray(jax.grad(loss)(jnp.asarray(qkv)))
    step = 1e-6
    for index in [(0, 0, 0), (0, 3, 9), (0, 7, 23)]:  # a q, a k and a v entry
      plus, minus = qkv.copy(), qkv.copy()
      plus[index] += step
      minus[index] -= step
      numeric = (float(loss(jnp.asarray(plus))) - float(loss(jnp.asarray(minus)))) / (2 * step)
      assert grad[index] == pytest.approx(numeric, abs=1e-7)
  np.testing.assert_allclose(
      np.asarray(attention.self_attention(jnp.asarray(qkv, jnp.float32), 2, 'head_major')),
      _reference(qkv, 2), atol=1e-5)


def test_auto_picks_the_fused_kernel_on_cpu_and_xla_elsewhere_and_bad_names_are_refused():
  assert attention.resolve('auto', 'cpu') == 'cpu_fused'  # this machine has a C++ compiler
  assert attention.resolve(None, 'cpu') == 'cpu_fused'
  assert attention.resolve('auto', 'cpu', jnp.bfloat16) == 'head_major'  # the kernel is float32
  assert attention.resolve('auto', 'cpu', jnp.float64) == 'head_major'
  assert attention.resolve('auto', 'gpu') == 'xla'
  assert attention.resolve('auto', 'tpu') == 'xla'
  assert attention.resolve('cudnn', 'gpu') == 'cudnn'
  with pytest.raises(ValueError, match="CPU only.*gpu"):
    attention.resolve('cpu_fused', 'gpu')
  with pytest.raises(ValueError, match="'flash'.*'head_major'"):
    attention.resolve('flash')
  config = config_lib.base_config()
  config.model.attention_impl = 'flash'
  with pytest.raises(ValueError, match='model.attention_impl'):
    config_lib.validate_config(config)


@pytest.mark.parametrize('impl', ['head_major', 'cpu_fused'])
def test_dit_gives_the_same_eps_with_either_kernel(impl):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
  t = np.array([3, 700])
  models = {name: dit.dit_from_name('XXS/4', attention_impl=name) for name in (impl, 'xla')}
  params = models['xla'].init(jax.random.PRNGKey(0), x, t)
  # adaLN-Zero starts every block as the identity: perturb the weights so attention matters.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
                        params)
  eps = {impl: np.asarray(model.apply(params, x, t)) for impl, model in models.items()}
  assert np.abs(eps['xla']).max() > 0.1
  np.testing.assert_allclose(eps[impl], eps['xla'], atol=1e-5, rtol=0)


def test_heads_per_chunk_keeps_one_groups_scores_in_the_cache_budget():
  # DiT-S/2 at 32x32, batch 32: 192 [256, 256] score matrices of 256 KiB -> groups of 8 (2 MiB).
  assert attention.heads_per_chunk(192, 256) == 8
  assert attention.heads_per_chunk(128, 64) == 128  # XXS/4: all at once, no loop
  assert attention.heads_per_chunk(6 * 7, 256) == 7  # the largest divisor within the budget
  assert attention.heads_per_chunk(5, 1024) == 1  # one matrix alone is over the budget


def test_head_major_over_groups_of_heads_equals_all_at_once(monkeypatch):
  """The loop over groups of heads changes the order of work; the result only by rounding."""
  rng = np.random.default_rng(3)
  heads, length, head_dim = 4, 32, 16
  qkv = rng.normal(0, 1.5, (3, length, 3 * heads * head_dim)).astype(np.float32)
  weights = rng.normal(size=(3, length, heads * head_dim)).astype(np.float32)

  def run():
    fn = lambda x: attention.self_attention(x, heads, 'head_major')
    loss = lambda x: jnp.sum(fn(x) * weights)
    return np.asarray(jax.jit(fn)(qkv)), np.asarray(jax.jit(jax.grad(loss))(qkv))

  out_once, grad_once = run()
  monkeypatch.setattr(attention, 'SCORES_CACHE_BYTES', 2 * length * length * 4)
  assert attention.heads_per_chunk(3 * heads, length) == 2  # 6 groups of 2 heads
  out_groups, grad_groups = run()
  np.testing.assert_allclose(out_groups, out_once, atol=1e-6, rtol=0)
  np.testing.assert_allclose(out_groups, _reference(qkv, heads), atol=1e-5, rtol=0)
  assert np.abs(grad_once).max() > 0.1
  np.testing.assert_allclose(grad_groups, grad_once, atol=1e-5, rtol=0)
