"""Tests for jdiffrep.timestep_features: idx(t), dims per subset, masks and mask_condition."""

import fractions
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffrep import timestep_features as tf

# -------------------------------------------------------------------------------------------------
# Hand-worked case: k = 4, d = 8, T = 8, so idx(t) = t // 2 and every subset owns 2 dims.
# -------------------------------------------------------------------------------------------------

SMALL_IDX = [0, 0, 1, 1, 2, 2, 3, 3]
SMALL_CUMULATIVE = [
    [1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 0, 0, 0, 0],
    [1, 1, 1, 1, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
]
SMALL_OWN = [
    [1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0],
    [0, 0, 1, 1, 0, 0, 0, 0],
    [0, 0, 1, 1, 0, 0, 0, 0],
    [0, 0, 0, 0, 1, 1, 0, 0],
    [0, 0, 0, 0, 1, 1, 0, 0],
    [0, 0, 0, 0, 0, 0, 1, 1],
    [0, 0, 0, 0, 0, 0, 1, 1],
]
SMALL_RECEDING = [
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 0, 0, 0, 0],
    [1, 1, 1, 1, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 1, 0, 0],
]


@pytest.fixture
def small():
  return tf.make_partition(latent_dim=8, num_subsets=4, num_timesteps=8)


def test_small_subset_index_every_step(small):
  assert [tf.subset_index(t, 4, 8) for t in range(8)] == SMALL_IDX
  np.testing.assert_array_equal(small.subset_of_step, SMALL_IDX)
  np.testing.assert_array_equal(tf.subset_first_steps(4, 8), [0, 2, 4, 6])


def test_small_partition_fields(small):
  np.testing.assert_array_equal(small.dims_per_subset, [2, 2, 2, 2])
  np.testing.assert_array_equal(small.dim_offsets, [0, 2, 4, 6, 8])
  assert small.latent_dim == 8
  assert [small.kept_dims(t) for t in range(8)] == [2, 2, 4, 4, 6, 6, 8, 8]


def test_small_masks_written_out(small):
  for masks in (small.cumulative_masks(), small.own_masks(), small.receding_masks()):
    assert masks.dtype == np.float32 and masks.shape == (8, 8)
  np.testing.assert_array_equal(small.cumulative_masks(), SMALL_CUMULATIVE)
  np.testing.assert_array_equal(small.own_masks(), SMALL_OWN)
  np.testing.assert_array_equal(small.receding_masks(), SMALL_RECEDING)


def test_small_subset_range_mask(small):
  np.testing.assert_array_equal(small.subset_range_mask(1, 3), [0, 0, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(small.subset_range_mask(0, 4), np.ones(8))
  np.testing.assert_array_equal(small.subset_range_mask(2, 2), np.zeros(8))
  with pytest.raises(ValueError, match='start <= end'):
    small.subset_range_mask(3, 1)
  with pytest.raises(ValueError, match='num_subsets=4'):
    small.subset_range_mask(0, 5)


def test_small_staged_split_by_hand():
  # T = 8, k = 4: first steps 0, 2, 4, 6. Stage [0, 4) holds subsets 0, 1 -> 3 dims as 1, 2;
  # stage [4, 8) holds subsets 2, 3 -> 5 dims as 2, 3.
  partition = tf.make_partition(8, 4, 8, stage_boundaries=(4, 8), stage_dims=(3, 5))
  np.testing.assert_array_equal(partition.dims_per_subset, [1, 2, 2, 3])
  np.testing.assert_array_equal(partition.cumulative_masks()[[0, 2, 4, 6]], [
      [1, 0, 0, 0, 0, 0, 0, 0],
      [1, 1, 1, 0, 0, 0, 0, 0],
      [1, 1, 1, 1, 1, 0, 0, 0],
      [1, 1, 1, 1, 1, 1, 1, 1],
  ])
  np.testing.assert_array_equal(partition.own_masks()[3], [0, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(partition.subset_range_mask(1, 3), [0, 1, 1, 1, 1, 0, 0, 0])


def test_partition_equality_and_hash(small):
  same = tf.TimestepPartition(num_timesteps=8, num_subsets=4, dims_per_subset=np.full(4, 2))
  assert small == same and hash(small) == hash(same)
  assert small != tf.make_partition(8, 4, 8, stage_boundaries=(4, 8), stage_dims=(3, 5))


# -------------------------------------------------------------------------------------------------
# T not divisible by k.
# -------------------------------------------------------------------------------------------------

def _brute_force_index(t, k, num_timesteps):
  return math.floor(fractions.Fraction(t * k, num_timesteps))


@pytest.mark.parametrize('k, num_timesteps', [(4, 10), (3, 10), (7, 100), (64, 1000), (10, 10)])
def test_subset_index_matches_brute_force(k, num_timesteps):
  expected = [_brute_force_index(t, k, num_timesteps) for t in range(num_timesteps)]
  assert [tf.subset_index(t, k, num_timesteps) for t in range(num_timesteps)] == expected
  steps = np.arange(num_timesteps)
  np.testing.assert_array_equal(tf.subset_index(steps, k, num_timesteps), expected)
  np.testing.assert_array_equal(tf.subset_index(jnp.asarray(steps), k, num_timesteps), expected)
  first = [expected.index(i) for i in range(k)]
  np.testing.assert_array_equal(tf.subset_first_steps(k, num_timesteps), first)


def test_uneven_t10_k4_by_hand():
  assert [tf.subset_index(t, 4, 10) for t in range(10)] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
  np.testing.assert_array_equal(tf.subset_first_steps(4, 10), [0, 3, 5, 8])


def test_subset_index_traced():
  index = jax.jit(lambda t: tf.subset_index(t, 64, 1000))(jnp.array([0, 15, 16, 999], jnp.int32))
  np.testing.assert_array_equal(index, [0, 0, 1, 63])


# -------------------------------------------------------------------------------------------------
# The paper's settings (SPEC section 3 test vectors).
# -------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def celeba():
  return tf.make_partition(512, 64, 1000, **tf.CELEBA_STAGES)


@pytest.fixture(scope='module')
def balanced():
  return tf.make_partition(512, 64, 1000)


def test_celeba_dims_per_subset(celeba):
  expected = [2] * 3 + [4] + [8] * 2 + [9] + [25] * 12 + [27] + [8] * 11 + [12] + [1] * 31 + [19]
  assert len(expected) == 64 and sum(expected) == 512
  np.testing.assert_array_equal(celeba.dims_per_subset, expected)
  assert celeba.latent_dim == 512


def test_celeba_kept_dims(celeba):
  assert all(celeba.kept_dims(t) == 2 for t in range(16))
  assert celeba.kept_dims(16) == 4
  assert celeba.kept_dims(313) == 370
  assert celeba.kept_dims(500) == 463
  assert celeba.kept_dims(984) == 493
  assert all(celeba.kept_dims(t) == 512 for t in range(985, 1000))
  np.testing.assert_array_equal(celeba.cumulative_masks().sum(axis=1),
                                [celeba.kept_dims(t) for t in range(1000)])


def test_balanced_dims(balanced):
  np.testing.assert_array_equal(balanced.dims_per_subset, np.full(64, 8))
  np.testing.assert_array_equal(tf.even_dims(512, 64), np.full(64, 8))
  assert balanced.kept_dims(0) == 8 and balanced.kept_dims(999) == 512


@pytest.mark.parametrize('setting', ['celeba', 'balanced', 'pdae'])
def test_mask_invariants(setting, request):
  if setting == 'pdae':
    partition = tf.make_partition(512, 1, 1000)
  else:
    partition = request.getfixturevalue(setting)
  cumulative = partition.cumulative_masks()
  own = partition.own_masks()
  receding = partition.receding_masks()
  np.testing.assert_array_equal(cumulative, receding + own)
  assert np.all(np.diff(cumulative, axis=0) >= 0)  # Monotone non-decreasing in t.
  np.testing.assert_array_equal(own.sum(axis=1),
                                partition.dims_per_subset[partition.subset_of_step])
  # Every dim is visible at the last step, none is receding at the first.
  np.testing.assert_array_equal(cumulative[-1], np.ones(partition.latent_dim))
  np.testing.assert_array_equal(receding[0], np.zeros(partition.latent_dim))


def test_pdae_sees_every_dim_at_every_step():
  partition = tf.make_partition(16, 1, 50)
  np.testing.assert_array_equal(partition.cumulative_masks(), np.ones((50, 16)))
  np.testing.assert_array_equal(partition.own_masks(), np.ones((50, 16)))
  np.testing.assert_array_equal(partition.receding_masks(), np.zeros((50, 16)))


# -------------------------------------------------------------------------------------------------
# mask_condition.
# -------------------------------------------------------------------------------------------------

def _weighted_sum_fn(tables, mode):
  return lambda z, t, w: jnp.sum(tf.mask_condition(z, t, tables, mode) * w)


def test_mask_condition_values_and_gradients():
  partition = tf.make_partition(512, 64, 1000, **tf.CELEBA_STAGES)
  tables = tf.mask_tables(partition)
  t = jnp.array([0, 16, 313, 500, 984, 999], jnp.int32)
  z = jax.random.normal(jax.random.key(0), (t.shape[0], 512))
  w = jax.random.normal(jax.random.key(1), z.shape) + 3.0  # Nonzero everywhere.
  cumulative = partition.cumulative_masks()[np.asarray(t)]
  own = partition.own_masks()[np.asarray(t)]

  base = jax.jit(tf.mask_condition, static_argnames='mode')(z, t, tables, mode='base')
  stop = jax.jit(tf.mask_condition, static_argnames='mode')(z, t, tables, mode='stop_grad')
  np.testing.assert_array_equal(base, np.asarray(z) * cumulative)
  np.testing.assert_array_equal(stop, base)

  grad_base = jax.jit(jax.grad(_weighted_sum_fn(tables, 'base')))(z, t, w)
  grad_stop = jax.jit(jax.grad(_weighted_sum_fn(tables, 'stop_grad')))(z, t, w)
  np.testing.assert_array_equal(grad_base, np.asarray(w) * cumulative)
  np.testing.assert_array_equal(grad_stop, np.asarray(w) * own)
  np.testing.assert_array_equal(np.count_nonzero(grad_base, axis=1), [2, 4, 370, 463, 493, 512])
  np.testing.assert_array_equal(np.count_nonzero(grad_stop, axis=1), [2, 2, 8, 1, 1, 19])


def test_mask_condition_unknown_mode(small):
  tables = tf.mask_tables(small)
  with pytest.raises(ValueError, match="'base', 'stop_grad'"):
    tf.mask_condition(jnp.ones((1, 8)), jnp.zeros((1,), jnp.int32), tables, mode='detach')


def test_mask_tables_are_a_pytree(small):
  tables = tf.mask_tables(small)
  leaves = jax.tree_util.tree_leaves(tables)
  assert len(leaves) == 3 and all(leaf.shape == (8, 8) for leaf in leaves)


# -------------------------------------------------------------------------------------------------
# Validation.
# -------------------------------------------------------------------------------------------------

def test_even_split_not_divisible():
  with pytest.raises(ValueError, match='not divisible by num_subsets=64'):
    tf.make_partition(500, 64, 1000)


@pytest.mark.parametrize('boundaries, dims, message', [
    ((50, 100, 1000), (10, 502), 'one stage_dims entry per stage boundary'),
    ((), (), 'one stage_dims entry per stage boundary'),
    ((100, 50, 1000), (10, 25, 477), 'strictly increasing'),
    ((0, 500, 1000), (10, 25, 477), 'strictly increasing'),
    ((50, 100, 900), (10, 25, 477), 'last stage boundary must equal num_timesteps=1000'),
    ((50, 100, 1000), (10, 25, 400), 'must sum to latent_dim=512'),
    ((10, 12, 1000), (5, 5, 502),
     r'Stage 1 \(steps \[10, 12\)\) holds the first step of no subset'),
    ((50, 100, 1000), (3, 25, 484), r'Stage 0 .* has 4 subsets but only 3 dims'),
])
def test_bad_stage_specs(boundaries, dims, message):
  with pytest.raises(ValueError, match=message):
    tf.make_partition(512, 64, 1000, stage_boundaries=boundaries, stage_dims=dims)


def test_other_validation():
  with pytest.raises(ValueError, match='both stage_boundaries and stage_dims'):
    tf.make_partition(512, 64, 1000, stage_boundaries=(1000,))
  with pytest.raises(ValueError, match=r'num_subsets must be in \[1, num_timesteps=8\]'):
    tf.make_partition(16, 16, 8)
  with pytest.raises(ValueError, match='one positive count per subset'):
    tf.TimestepPartition(num_timesteps=8, num_subsets=4, dims_per_subset=np.array([2, 2, 0, 4]))
  with pytest.raises(ValueError, match=r'\[0, 7\]'):
    tf.make_partition(8, 4, 8).kept_dims(8)
