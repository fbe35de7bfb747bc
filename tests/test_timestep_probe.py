"""Time-step probe: a linear probe per subset group finds the group an attribute lives in."""

import numpy as np
from PIL import Image
import pytest

from jdiffrep import timestep_features
from jdiffrep.evaluate import counterfactual
from jdiffrep.evaluate import features as features_lib
from jdiffrep.evaluate import timestep_probe

NAMES = ('coarse_a', 'coarse_b', 'fine_a', 'fine_b')
# Attribute j is decided by group OWNER[j] alone: two attributes at late steps, two at early ones.
OWNER = (3, 2, 0, 1)


def _synthetic_splits(partition, groups, seed=0, sizes=(20000, 1000, 1000)):
  """Gaussian z; attribute j = [w_j . z[dims of group OWNER[j]] > 0], w_j fixed per attribute."""
  rng = np.random.default_rng(seed)
  weights = [rng.normal(size=timestep_probe.group_columns(partition, groups[g]).size)
             for g in OWNER]
  features, attributes = {}, {}
  for split, size in zip(features_lib.SPLITS, sizes):
    z = rng.normal(size=(size, partition.latent_dim)).astype(np.float32)
    columns = [z[:, timestep_probe.group_columns(partition, groups[g])] for g in OWNER]
    attributes[split] = np.stack([c @ w > 0 for c, w in zip(columns, weights)], axis=1)
    features[split] = z
  return features, attributes


@pytest.fixture(scope='module')
def probed():
  partition = timestep_features.make_partition(32, 8, 1000)
  groups = counterfactual.subset_groups(8)  # [(0, 2), (2, 4), (4, 6), (6, 8)]
  features, attributes = _synthetic_splits(partition, groups)
  result = timestep_probe.group_probe(features, attributes, partition, groups, epochs=15, seed=0,
                                      attribute_names=NAMES)
  return partition, groups, result


def test_group_columns_are_the_dims_the_subsets_own():
  partition = timestep_features.make_partition(32, 8, 1000)
  np.testing.assert_array_equal(timestep_probe.group_columns(partition, (2, 4)), np.arange(8, 16))
  staged = timestep_features.make_partition(512, 64, 1000, **timestep_features.CELEBA_STAGES)
  # Subsets 0-2 own 2 dims each, subset 3 owns 4 (SPEC section 3).
  np.testing.assert_array_equal(timestep_probe.group_columns(staged, (2, 4)), np.arange(4, 10))


def test_each_attribute_is_read_only_from_the_group_that_holds_it(probed):
  _, groups, result = probed
  labels = list(result)
  assert labels == ['t 0-249', 't 250-499', 't 500-749', 't 750-999']
  for g, label in enumerate(labels):
    entry = result[label]
    assert entry['subsets'] == list(groups[g]) and entry['num_dims'] == 8
    for j, name in enumerate(NAMES):
      ap = entry['ap_per_attribute'][name]
      if OWNER[j] == g:
        assert ap > 0.9, (label, name, ap)
      else:  # independent dims: AP near the positive rate (0.5).
        assert 0.35 < ap < 0.65, (label, name, ap)
    np.testing.assert_allclose(entry['mean_ap'], np.mean(list(entry['ap_per_attribute'].values())),
                               rtol=1e-6)


def test_time_ranges_are_the_steps_each_group_owns(probed):
  _, _, result = probed
  assert [r['time_range'] for r in result.values()] == [[0, 249], [250, 499], [500, 749],
                                                       [750, 999]]


def test_best_group_per_attribute_picks_the_owner(probed):
  _, _, result = probed
  labels = list(result)
  assert timestep_probe.best_group_per_attribute(result) == {
      name: labels[g] for name, g in zip(NAMES, OWNER)}


def test_random_rotation_spreads_each_attribute_over_every_group(probed):
  partition, groups, result = probed
  features, attributes = _synthetic_splits(partition, groups)
  rotated = timestep_probe.random_rotation(features, seed=1)
  # One orthogonal matrix for every split: inner products are kept, the dims are mixed.
  for split in features_lib.SPLITS:
    z, zr = features[split][:50], rotated[split][:50]
    np.testing.assert_allclose(zr @ zr.T, z @ z.T, rtol=1e-4, atol=1e-3)
    assert not np.allclose(zr, z, atol=0.1)
  rotation = np.linalg.lstsq(features['train'][:64], rotated['train'][:64], rcond=None)[0]
  np.testing.assert_allclose(features['test'] @ rotation, rotated['test'], atol=1e-3)
  spread = timestep_probe.group_probe(rotated, attributes, partition, groups, epochs=15, seed=0,
                                      attribute_names=NAMES)
  for name in NAMES:
    real = [result[label]['ap_per_attribute'][name] for label in result]
    mixed = [spread[label]['ap_per_attribute'][name] for label in spread]
    # The owner group read it at > 0.9 and the others at chance; rotated, every group reads a
    # part of it and none stands out as much.
    assert max(mixed) - min(mixed) < 0.5 * (max(real) - min(real)), (name, real, mixed)
    assert min(mixed) > min(real) + 0.05, (name, real, mixed)
    assert max(mixed) < max(real) - 0.05, (name, real, mixed)


def test_plot_is_a_png_heat_map_of_sensible_size(probed, tmp_path):
  _, _, result = probed
  path = timestep_probe.plot_group_ap(result, NAMES, str(tmp_path / 'plots' / 'group_ap.png'))
  with Image.open(path) as image:
    assert image.format == 'PNG'
    width, height = image.size
    pixels = np.asarray(image.convert('RGB'))
  assert 300 <= width <= 1200 and 150 <= height <= 800, image.size
  # The darkest cells are the high-AP ones: the heat map uses the colour of AP ~1 somewhere.
  dark_blue = np.all(np.abs(pixels.astype(int) - timestep_probe.ap_colour(0.97)) <= 12, axis=-1)
  assert dark_blue.sum() > 200
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # text, shades, outlines


def test_ap_colour_runs_from_white_to_dark_blue():
  assert timestep_probe.ap_colour(0.0) == (247, 251, 255)
  assert timestep_probe.ap_colour(1.0) == (8, 48, 107)
  assert timestep_probe.ap_colour(float('nan')) == (200, 200, 200)
  low, mid, high = (sum(timestep_probe.ap_colour(a)) for a in (0.2, 0.5, 0.8))
  assert low > mid > high
