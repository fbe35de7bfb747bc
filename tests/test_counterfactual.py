"""DiTi counterfactuals: subset groups, mixing z and x_T, the DDIM plumbing, and reading results."""


import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from jdiffrep import diffusion
from jdiffrep import methods
from jdiffrep import timestep_features
from jdiffrep import train
from jdiffrep.data import pipeline
from jdiffrep.data import shapes
from jdiffrep.evaluate import attribute_reader
from jdiffrep.evaluate import counterfactual
from jdiffrep.evaluate import counterfactual_grid
from jdiffrep.evaluate import metrics
from jdiffrep.evaluate.evaluators import counterfactual as counterfactual_evaluator
from tests.conftest import small_config


# -------------------------------------------------------------------------------------------------
# Subset groups and their steps.
# -------------------------------------------------------------------------------------------------

def test_subset_groups_default_to_the_official_groups_for_64_subsets():
  assert counterfactual.subset_groups(64) == [(2, 6), (16, 24), (24, 32), (32, 64)]


@pytest.mark.parametrize('num_subsets, num_groups, want', [
    (4, None, [(0, 1), (1, 2), (2, 3), (3, 4)]),
    (8, None, [(0, 2), (2, 4), (4, 6), (6, 8)]),
    (8, 2, [(0, 4), (4, 8)]),
    (64, 4, [(0, 16), (16, 32), (32, 48), (48, 64)]),
    (6, 4, [(0, 1), (1, 3), (3, 4), (4, 6)]),  # uneven: floor(g k / G) edges
    (1, None, [(0, 1)]),  # PDAE: one group
])
def test_subset_groups_split_other_k_into_equal_ranges(num_subsets, num_groups, want):
  assert counterfactual.subset_groups(num_subsets, num_groups) == want


def test_subset_groups_from_boundaries_and_bad_requests():
  assert counterfactual.subset_groups(64, boundaries=[0, 2, 6, 64]) == [(0, 2), (2, 6), (6, 64)]
  with pytest.raises(ValueError, match='strictly increasing'):
    counterfactual.subset_groups(8, boundaries=[0, 4, 4])
  with pytest.raises(ValueError, match='num_subsets=8'):
    counterfactual.subset_groups(8, boundaries=[0, 9])
  with pytest.raises(ValueError, match='num_groups must be in'):
    counterfactual.subset_groups(4, 5)
  with pytest.raises(ValueError, match='not both'):
    counterfactual.subset_groups(8, 2, boundaries=[0, 8])


def test_group_time_range_by_hand():
  four = timestep_features.make_partition(32, 4, 1000)
  assert [counterfactual.group_time_range(four, g) for g in counterfactual.subset_groups(4)] == [
      (0, 249), (250, 499), (500, 749), (750, 999)]
  assert counterfactual.group_time_range(four, (1, 3)) == (250, 749)
  three = timestep_features.make_partition(3, 3, 1000)  # idx(333) = 0, idx(334) = 1
  assert [counterfactual.group_time_range(three, (i, i + 1)) for i in range(3)] == [
      (0, 333), (334, 666), (667, 999)]
  # The official groups: subset i starts at ceil(i * 1000 / 64).
  official = timestep_features.make_partition(512, 64, 1000, **timestep_features.CELEBA_STAGES)
  assert [counterfactual.group_time_range(official, g) for g in counterfactual.subset_groups(64)] \
      == [(32, 93), (250, 374), (375, 499), (500, 999)]
  assert counterfactual.group_label(official, (2, 6)) == 't 32-93'
  with pytest.raises(ValueError, match='non-empty'):
    counterfactual.group_time_range(four, (2, 2))


def test_group_time_range_agrees_with_idx_of_t():
  partition = timestep_features.make_partition(64, 64, 1000)
  for group in [(0, 5), (2, 6), (16, 24), (63, 64)]:
    first, last = counterfactual.group_time_range(partition, group)
    idx = lambda t: timestep_features.subset_index(t, 64, 1000)
    assert idx(first) == group[0] and idx(last) == group[1] - 1
    assert first == 0 or idx(first - 1) == group[0] - 1
    assert last == 999 or idx(last + 1) == group[1]


# -------------------------------------------------------------------------------------------------
# Mixing z and x_T.
# -------------------------------------------------------------------------------------------------

Z_A = jnp.array([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0]])
Z_B = jnp.array([[10.0, 20.0, 30.0, 40.0], [5.0, 6.0, 7.0, 8.0]])
MASK = np.array([0.0, 1.0, 1.0, 0.0], np.float32)


def test_swap_group_exact_values():
  np.testing.assert_array_equal(counterfactual.swap_group(Z_A, Z_B, MASK, 0.0), Z_A)
  np.testing.assert_array_equal(counterfactual.swap_group(Z_A, Z_B, MASK),
                                [[1.0, 20.0, 30.0, 4.0], [-1.0, 6.0, 7.0, -4.0]])
  np.testing.assert_array_equal(counterfactual.swap_group(Z_A, Z_B, MASK, 0.5),
                                [[1.0, 11.0, 16.5, 4.0], [-1.0, 2.0, 2.0, -4.0]])
  # Through a real partition: subsets [1, 2) of 4 own dims 1 (of 4 dims, one each).
  mask = timestep_features.make_partition(4, 4, 1000).subset_range_mask(1, 2)
  np.testing.assert_array_equal(counterfactual.swap_group(Z_A, Z_B, mask)[0], [1, 20, 3, 4])


def test_slerp_endpoints_midpoint_and_norm():
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  x, y = (jax.random.normal(k, (3, 4, 4, 2)) for k in keys)
  y = y * (jnp.linalg.norm(x.reshape(3, -1), axis=1) /
           jnp.linalg.norm(y.reshape(3, -1), axis=1))[:, None, None, None]  # equal norms
  np.testing.assert_allclose(counterfactual.slerp(x, y, 0.0), x, atol=1e-5)
  np.testing.assert_allclose(counterfactual.slerp(x, y, 1.0), y, atol=1e-5)
  norm = lambda v: np.linalg.norm(np.asarray(v).reshape(3, -1), axis=1)
  for alpha in (0.25, 0.5, 0.75):
    np.testing.assert_allclose(norm(counterfactual.slerp(x, y, alpha)), norm(x), rtol=1e-5)
  # Orthogonal unit vectors: the midpoint is (x + y) / sqrt(2), not the shorter (x + y) / 2.
  e0, e1 = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]])
  np.testing.assert_allclose(counterfactual.slerp(e0, e1, 0.5), [[2 ** -0.5, 2 ** -0.5]],
                             rtol=1e-6)
  # Parallel inputs fall back to lerp instead of dividing by sin(0).
  np.testing.assert_allclose(counterfactual.slerp(e0, 3 * e0, 0.5), [[2.0, 0.0]], rtol=1e-6)


# -------------------------------------------------------------------------------------------------
# Counterfactuals through a tiny DiTi.
# -------------------------------------------------------------------------------------------------

def _shapes_images(split, indices, resolution=32):
  """Images [N, R, R, 3] in [-1, 1] and labels {attribute: [N]} generated on the spot."""
  examples = [shapes.generate_example(0, split, int(i), resolution) for i in indices]
  images = pipeline.scale_to_unit_interval(np.stack([e['image'] for e in examples]))
  labels = {name: np.array([e['labels'][name] for e in examples])
            for name in shapes.CATEGORICAL_ATTRIBUTES}
  return images, labels


@pytest.fixture(scope='module')
def tiny_diti(shapes_data_dir, tmp_path_factory):
  """(method, fresh params, frozen DM params) of a DiTi on a DM trained 2 steps.

  The DM predicts eps here: the shapes default (x0-prediction) makes the last DDIM step (t = 0,
  where s_0 = 0) return the frozen DM's own x0, which for an untrained DM hides what G did.
  """
  root = tmp_path_factory.mktemp('counterfactual_run')
  config = small_config(shapes_data_dir)
  config.diffusion.prediction = 'eps'
  config.num_train_steps = config.checkpoint_every_steps = config.log_every_steps = 2
  train.train_and_evaluate(config, str(root / 'ddpm'))
  config = config.copy_and_resolve_references()
  config.method = 'diti'
  method = methods.make_method(config, (32, 32, 3), workdir=str(root / 'diti'))
  params = jax.jit(method.init_params)(jax.random.PRNGKey(0))
  return method, params, method.load_frozen()


@pytest.fixture(scope='module')
def pairs():
  images, _ = _shapes_images('test', range(6))
  return images[:3], images[3:]


@pytest.mark.slow
def test_zero_branch_means_every_swap_is_the_reconstruction(tiny_diti, pairs, tmp_path):
  method, params, frozen = tiny_diti
  images_a, images_b = pairs
  groups = counterfactual.subset_groups(method.partition.num_subsets)
  result = counterfactual.counterfactuals(method, params, frozen, images_a, images_b, groups,
                                          invert_steps=4)
  assert result['reconstruction'].shape == (3, 32, 32, 3)
  assert result['swapped'].shape == (4, 3, 32, 32, 3)
  assert np.isfinite(result['swapped']).all() and np.isfinite(result['reconstruction']).all()
  # A fresh branch has a zero final layer, so G = 0 and z cannot matter: bit-identical images.
  for swapped in result['swapped']:
    np.testing.assert_array_equal(swapped, result['reconstruction'])
  # The 2-step DM barely moves eps, so DDIM inversion + decoding nearly returns A itself.
  assert np.abs(result['reconstruction']).max() < 1.5
  assert np.abs(result['reconstruction'] - images_a).mean() < 0.1

  names = [counterfactual.group_label(method.partition, g) for g in groups]
  path = counterfactual_grid.save_counterfactual_grid(str(tmp_path / 'cf.png'), images_a, images_b,
                                                 result, names)
  with Image.open(path) as image:
    assert image.size == (7 * (64 + 2) + 2, 16 + 3 * (64 + 2) + 2)  # header + 3 rows of 7
    grid = np.asarray(image.convert('RGB'))
  # Column 0 of row 0 is A, upscaled 2x, under the 16-px header and 2-px padding.
  a0 = pipeline.to_uint8(images_a[0]).repeat(2, axis=0).repeat(2, axis=1)
  np.testing.assert_array_equal(grid[18:18 + 64, 2:2 + 64], a0)


@pytest.mark.slow
def test_trained_branch_carries_b_into_a_only_where_b_differs(tiny_diti, pairs):
  method, params, frozen = tiny_diti
  leaves, treedef = jax.tree.flatten(params['branch'])
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  noisy = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  params = {**params, 'branch': jax.tree.unflatten(treedef, noisy)}
  images_a, images_b = pairs
  images_b = np.concatenate([images_a[:1], images_b[1:]])  # pair 0: B is A itself
  groups = counterfactual.subset_groups(method.partition.num_subsets)
  result = counterfactual.counterfactuals(method, params, frozen, images_a, images_b, groups,
                                          invert_steps=4)
  assert np.isfinite(result['swapped']).all()
  change = np.abs(result['swapped'] - result['reconstruction'][None])  # [G, N, H, W, C]
  np.testing.assert_array_equal(change[:, 0], 0.0)  # z_B = z_A: nothing to swap
  # Each group is seen by some DDIM step with s_t != 0 (t = 333, 666, 999), so each matters.
  assert np.all(change[:, 1:].max(axis=(1, 2, 3, 4)) > 1e-3), change.max(axis=(1, 2, 3, 4))


class _ZeroEpsMethod:
  """A stand-in DiTi whose eps is 0: DDIM inversion then decoding returns the input exactly
  (up to rounding), whatever z is. z is the image's first 4 pixel values."""
  schedule = diffusion.make_schedule('linear', 1000)
  partition = timestep_features.make_partition(4, 4, 1000)
  clip_x0 = True
  invert_eps_at = 'target'

  def encode(self, params, x0):
    del params
    return x0.reshape(x0.shape[0], -1)[:, :4]

  def conditioned_eps_fn(self, params, frozen, z):
    del params, frozen, z
    return lambda x, t: jnp.zeros_like(x)


def test_noise_alpha_moves_x_t_from_a_to_b():
  keys = jax.random.split(jax.random.PRNGKey(3), 2)
  images_a, images_b = (jax.random.uniform(k, (2, 4, 4, 3), minval=-1, maxval=1) for k in keys)
  kwargs = dict(groups=[(0, 4)], invert_steps=5)
  own_noise = counterfactual.counterfactuals(_ZeroEpsMethod(), None, None, images_a, images_b,
                                             **kwargs)
  np.testing.assert_allclose(own_noise['reconstruction'], images_a, atol=1e-4)
  np.testing.assert_allclose(own_noise['swapped'][0], images_a, atol=1e-4)
  b_noise = counterfactual.counterfactuals(_ZeroEpsMethod(), None, None, images_a, images_b,
                                           noise_alpha=1.0, **kwargs)
  np.testing.assert_allclose(b_noise['reconstruction'], images_a, atol=1e-4)
  np.testing.assert_allclose(b_noise['swapped'][0], images_b, atol=1e-4)


# -------------------------------------------------------------------------------------------------
# Reading counterfactuals.
# -------------------------------------------------------------------------------------------------

def _coded_images(left, right):
  """[N, 2, 4, 3] images whose pixel (0, 0) codes class `left` and (0, 3) `right` by channel."""
  images = -np.ones((len(left), 2, 4, 3), np.float32)
  images[np.arange(len(left)), 0, 0, left] = 1.0
  images[np.arange(len(right)), 0, 3, right] = 1.0
  return images


def _read_codes(images):
  images = np.asarray(images)
  return {'left': images[:, 0, 0].argmax(-1), 'right': images[:, 0, 3].argmax(-1),
          'constant': np.zeros(images.shape[0], int)}


def test_attribute_change_rates_exact_fractions():
  images_a = _coded_images([0, 0, 1, 2], [0, 1, 2, 0])
  images_b = _coded_images([1, 0, 2, 2], [1, 2, 0, 0])  # left differs in pairs 0, 2; right 0-2
  result = {'reconstruction': images_a,
            'swapped': np.stack([_coded_images([1, 0, 1, 0], [2, 2, 2, 0]),
                                 _coded_images([0, 0, 1, 2], [1, 2, 0, 0])])}
  rates = counterfactual.attribute_change_rates(_read_codes, images_a, images_b, result,
                                                ['left', 'right', 'constant'],
                                                group_names=['early', 'late'])
  assert rates['early']['left'] == {'took_b': 0.5, 'kept_a': 0.5, 'pairs': 2}
  assert rates['early']['right'] == {'took_b': 1 / 3, 'kept_a': 1 / 3, 'pairs': 3}
  assert rates['late']['left'] == {'took_b': 0.0, 'kept_a': 1.0, 'pairs': 2}
  assert rates['late']['right'] == {'took_b': 1.0, 'kept_a': 0.0, 'pairs': 3}
  constant = rates['late']['constant']  # no pair differs: nothing to measure
  assert constant['pairs'] == 0 and np.isnan(constant['took_b']) and np.isnan(constant['kept_a'])
  default_names = counterfactual.attribute_change_rates(_read_codes, images_a, images_b, result,
                                                        ['left'])
  assert list(default_names) == ['group_0', 'group_1']


@pytest.mark.slow
def test_attribute_classifier_reads_every_shapes_attribute():
  train_images, train_labels = _shapes_images('train', range(8000))
  test_images, test_labels = _shapes_images('test', range(1000))
  num_classes = {name: len(v) for name, v in shapes.CATEGORICAL_ATTRIBUTES.items()}
  classifier = attribute_reader.train_attribute_classifier(
      train_images, train_labels, num_classes, steps=2000, seed=0, test_images=test_images,
      test_labels=test_labels)
  assert set(classifier.test_accuracy) == set(num_classes)
  for name, accuracy in classifier.test_accuracy.items():
    assert accuracy >= 0.97, (name, classifier.test_accuracy)
  predictions = classifier.classify(test_images[:5])
  assert {k: v.shape for k, v in predictions.items()} == {k: (5,) for k in num_classes}
  for name in num_classes:
    np.testing.assert_array_equal(predictions[name], classifier.classify(test_images)[name][:5])


def test_pixel_distances_place_a_at_zero_and_b_at_one():
  """The label-free reading every dataset gets (FFHQ and Bedroom have no labels)."""
  rng = np.random.default_rng(0)
  images_a = rng.uniform(-1, 1, (3, 4, 4, 3))
  images_b = rng.uniform(-1, 1, (3, 4, 4, 3))
  halfway = (images_a + images_b) / 2
  result = {'reconstruction': images_a + 0.1,
            'swapped': np.stack([images_a, images_b, halfway])}
  readings = counterfactual.pixel_distances(images_a, images_b, result, ['none', 'all', 'half'])
  assert list(readings) == ['reconstruction', 'none', 'all', 'half']
  assert readings['none']['to_a'] == 0 and readings['none']['toward_b'] == 0
  assert readings['all']['to_b'] == 0 and readings['all']['toward_b'] == 1
  np.testing.assert_allclose(readings['half']['toward_b'], 0.5)
  rms_ab = np.sqrt(((images_a - images_b) ** 2).mean(axis=(1, 2, 3))).mean()
  np.testing.assert_allclose(readings['none']['to_b'], rms_ab)
  np.testing.assert_allclose(readings['reconstruction']['to_a'], 0.1)
  with pytest.raises(ValueError, match='one name per swapped group'):
    counterfactual.pixel_distances(images_a, images_b, result, ['none'])


@pytest.mark.slow
def test_binary_attributes_become_two_class_reader_targets_with_their_ap():
  """CelebA-like data (binary attributes, no categorical labels): the reader learns each
  attribute as a 2-class head and reports its test AP."""
  images, labels = _shapes_images('train', range(3000))
  # Two binary attributes of the image: a blue background, and the shape in the left half.
  attributes = np.stack([labels['background'] == 0, labels['position'] % 2 == 0], axis=1)
  batch = {'image': images, 'attributes': attributes, 'labels': {}}
  targets = counterfactual_evaluator.reader_targets(batch, ('blue', 'left'))
  assert sorted(targets) == ['blue', 'left']
  np.testing.assert_array_equal(targets['blue'], attributes[:, 0].astype(np.int32))
  assert counterfactual_evaluator.reader_targets({'image': images, 'labels': {}}, None) == {}
  assert set(counterfactual_evaluator.reader_targets({'image': images, 'labels': labels},
                                                     ('x',))) == set(labels)
  classifier = attribute_reader.train_attribute_classifier(
      images[:2500], {k: v[:2500] for k, v in targets.items()}, {'blue': 2, 'left': 2},
      steps=300, seed=0)
  probabilities = classifier.probabilities(images[2500:])
  assert probabilities['blue'].shape == (500, 2)
  np.testing.assert_allclose(probabilities['blue'].sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(classifier.classify(images[2500:])['blue'],
                                probabilities['blue'].argmax(axis=1))
  ap = counterfactual_evaluator.reader_average_precision(
      classifier, images[2500:], {k: v[2500:] for k, v in targets.items()})
  assert ap['blue'] == metrics.average_precision(probabilities['blue'][:, 1], targets['blue'][2500:])
  assert ap['blue'] > 0.9, ap
