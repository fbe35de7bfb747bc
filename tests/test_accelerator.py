"""Checks that only mean something on a GPU or TPU: `pytest -m accelerator` (launch/gpu_check.sh).

On a CPU backend every test here is skipped, and reported as skipped with the reason, never as
passed. They compare against references computed on the same device:
  - cuDNN's fused attention (the DiT's `attention_impl='cudnn'`) against XLA's attention;
  - a bf16 train step (activations bf16, params fp32) against the same step in fp32;
  - the trainer's sharded step over all local devices against one device.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import small_config
from jdiffrep import methods
from jdiffrep import train
from jdiffrep.data import pipeline
from tests import sharded_training

pytestmark = [
    pytest.mark.accelerator,
    pytest.mark.skipif(jax.default_backend() == 'cpu',
                       reason=f'needs a GPU or TPU; the JAX backend is {jax.default_backend()}'),
]


def _attention_inputs(dtype, batch=4, length=256, heads=12, head_dim=64):
  """q, k, v [B, L, H, Dh] as DiT-B/2 at 256 tokens makes them."""
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  return [jax.random.normal(k, (batch, length, heads, head_dim), jnp.float32).astype(dtype)
          for k in keys]


@pytest.mark.parametrize('dtype, atol', [('bfloat16', 2e-2), ('float32', 2e-3)])
def test_cudnn_attention_equals_xla_attention(dtype, atol):
  if jax.default_backend() != 'gpu':
    pytest.skip('cuDNN is a GPU library')
  q, k, v = _attention_inputs(jnp.dtype(dtype))
  xla = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation='xla'))
  cudnn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation='cudnn'))
  try:
    fused = cudnn(q, k, v)
  except (ValueError, NotImplementedError, RuntimeError) as error:  # e.g. no fp32 kernel
    pytest.skip(f'cuDNN attention refuses {dtype} here: {error}')
  reference = xla(q, k, v)
  assert fused.dtype == reference.dtype == jnp.dtype(dtype)
  np.testing.assert_allclose(np.asarray(fused, np.float32), np.asarray(reference, np.float32),
                             atol=atol, rtol=atol)


def _ddpm_losses(config, num_steps: int) -> np.ndarray:
  """Losses of `num_steps` train steps of `config` from its seed's init, on one device."""
  method = methods.make_method(config, (32, 32, 3))
  tx, learning_rate = train.make_optimizer(config.optim)
  state = jax.jit(lambda rng: train.init_train_state(method, tx, rng))(
      jax.random.PRNGKey(config.seed))
  step = jax.jit(lambda s, b: train.train_step(s, {}, b, method=method, tx=tx,
                                               learning_rate=learning_rate,
                                               ema_decay=config.optim.ema_decay))
  batches = pipeline.make_train_iterator(config.dataset, global_batch_size=config.batch_size,
                                         seed=config.seed)
  losses = []
  for _ in range(num_steps):
    state, metrics = step(state, {'image': jnp.asarray(next(batches)['image'])})
    losses.append(float(metrics['loss']))
  return np.array(losses)


def test_bf16_train_step_is_finite_and_close_to_fp32(shapes_data_dir):
  config = small_config(shapes_data_dir)
  config.model.name = 'S/2'  # 256 tokens at 32x32: big enough for bf16 matmuls to matter
  config.batch_size = 32
  config.optim.warmup_steps = 0
  fp32 = _ddpm_losses(config, 10)
  config.model.dtype = 'bfloat16'
  bf16 = _ddpm_losses(config, 10)
  assert np.all(np.isfinite(bf16)), bf16
  np.testing.assert_allclose(bf16, fp32, rtol=0.05)
  assert bf16[-1] < bf16[0]  # it trains


def test_sharded_step_over_all_local_devices_equals_one_device(shapes_data_dir, tmp_path):
  devices = jax.local_devices()
  config = sharded_training._config(shapes_data_dir, 'ddpm',  # pylint: disable=protected-access
                                    {'data': len(devices), 'fsdp': 1})
  config.batch_size = 16 * len(devices)
  state, frozen = sharded_training.initial_state(config, str(tmp_path))
  many = sharded_training.run_steps(config, str(tmp_path), devices, state, frozen)
  config.mesh.data = 1
  one = sharded_training.run_steps(config, str(tmp_path), devices[:1], state, frozen)
  np.testing.assert_allclose(many[0], one[0], rtol=1e-4)  # losses
  np.testing.assert_allclose(many[1], one[1], rtol=1e-3)  # gradient norms
  for a, b in zip(many[2], one[2]):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
