"""Sharding: the fsdp rule on shapes, the train state's shardings, multi-process settings."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from jdiffrep import distributed
from jdiffrep import methods
from jdiffrep import sharding
from jdiffrep import train


@pytest.mark.parametrize('shape, fsdp, min_size, want', [
    ((512, 128), 4, 1024, P('fsdp')),  # largest axis
    ((128, 512), 4, 1024, P(None, 'fsdp')),
    ((6, 512, 3), 4, 1024, P(None, 'fsdp')),
    ((768, 130), 4, 1024, P('fsdp')),  # 130 is not divisible by 4
    ((130, 768), 4, 1024, P(None, 'fsdp')),  # largest *divisible* axis: 768
    ((130, 6), 4, 10, P()),  # no axis divisible
    ((64, 64), 4, 64 * 64 + 1, P()),  # below the size threshold
    ((64, 64), 4, 64 * 64, P('fsdp')),  # ties: the first axis
    ((512,), 4, 256, P('fsdp')),
    ((), 4, 0, P()),  # scalars
    ((512, 128), 1, 0, P()),  # fsdp = 1: replicated
])
def test_fsdp_spec(shape, fsdp, min_size, want):
  assert sharding.fsdp_spec(shape, fsdp, min_size) == want


def test_train_state_moments_are_split_like_their_params(tiny_config):
  tiny_config.mesh.data, tiny_config.mesh.fsdp = 1, 2  # the test process has 2 devices
  mesh = sharding.make_mesh(tiny_config.mesh)
  method = methods.make_method(tiny_config, (32, 32, 3))
  tx, _ = train.make_optimizer(tiny_config.optim)
  abstract = train.abstract_train_state(method, tx)
  shardings = sharding.tree_shardings(abstract, mesh, min_size=4096)
  params = jax.tree_util.tree_leaves_with_path(shardings.params)
  specs = {jax.tree_util.keystr(k): s.spec for k, s in params}
  shapes = {jax.tree_util.keystr(k): x.shape
            for k, x in jax.tree_util.tree_leaves_with_path(abstract.params)}
  assert specs == {k: sharding.fsdp_spec(shapes[k], 2, 4096) for k in shapes}
  assert any(spec != P() for spec in specs.values())  # big matrices split
  assert any(spec == P() for spec in specs.values())  # biases replicated
  assert jax.tree.leaves(shardings.ema_params) == jax.tree.leaves(shardings.params)
  # AdamW's mu and nu mirror the params leaf for leaf; the step counters are replicated.
  adam = [s for s in jax.tree.leaves(shardings.opt_state, is_leaf=lambda x: hasattr(x, 'mu'))
          if hasattr(s, 'mu')]
  assert len(adam) == 1
  assert jax.tree.leaves(adam[0].mu) == jax.tree.leaves(shardings.params)
  assert jax.tree.leaves(adam[0].nu) == jax.tree.leaves(shardings.params)
  assert shardings.step.spec == P() and shardings.rng.spec == P()
  # The rule's shardings are valid for the real arrays: init lands split across the 2 devices.
  state = jax.jit(lambda rng: train.init_train_state(method, tx, rng),
                  out_shardings=shardings)(jax.random.PRNGKey(0))
  big = max(jax.tree.leaves(state.params), key=lambda x: x.size)
  assert big.sharding.spec != P()
  assert big.addressable_shards[0].data.size == big.size // 2


def test_single_host_needs_no_distributed_runtime():
  assert distributed.settings_from_environment(environ={}) is None
  assert distributed.settings_from_environment(environ={'SLURM_JOB_ID': '7',
                                                        'SLURM_NTASKS': '1'}) is None
  one_tpu_host = {'TPU_WORKER_HOSTNAMES': 'localhost'}
  assert distributed.settings_from_environment(environ=one_tpu_host) is None
  assert distributed.settings_from_environment('127.0.0.1:1234', 1, 0, environ={}) is None


def test_multi_process_settings_from_flags_and_environment():
  explicit = distributed.settings_from_environment('10.0.0.1:1234', 4, 2, environ={})
  assert (explicit.coordinator_address, explicit.num_processes, explicit.process_id) == (
      '10.0.0.1:1234', 4, 2)
  from_env = distributed.settings_from_environment(environ={
      'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1'})
  assert (from_env.coordinator_address, from_env.num_processes, from_env.process_id) == (
      'h:1', 2, 1)
  # Cluster environments are left to JAX's own detection (all fields None).
  for environ, reason in [({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '8'}, 'SLURM job'),
                          ({'OMPI_COMM_WORLD_SIZE': '2'}, 'Open MPI job'),
                          ({'TPU_WORKER_HOSTNAMES': 'a,b,c,d'}, 'multi-host TPU slice'),
                          ({'JDIFFREP_DISTRIBUTED': '1'}, 'JDIFFREP_DISTRIBUTED')]:
    settings = distributed.settings_from_environment(environ=environ)
    assert settings == distributed.DistributedSettings(reason)


def test_incomplete_multi_process_flags_name_what_is_missing():
  with pytest.raises(ValueError, match='--num_processes'):
    distributed.settings_from_environment('10.0.0.1:1234', None, 0, environ={})
  with pytest.raises(ValueError, match='process_id=2'):
    distributed.settings_from_environment('10.0.0.1:1234', 2, 2, environ={})

