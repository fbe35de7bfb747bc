"""Tests for the procedural `shapes` dataset: generator (pixel-level truth) and TFDS builder."""

import collections
import os

import numpy as np
import pytest

from jdiffrep.data import shapes

NUM_SAMPLES = 400


def _background_rgb(labels) -> np.ndarray:
  return shapes._to_uint8(shapes.BACKGROUND_COLOURS[labels['background']])


def _object_mask(example) -> np.ndarray:
  """Pixels that differ from the background colour: [R, R] bool."""
  return np.any(example['image'] != _background_rgb(example['labels']), axis=-1)


def _examples(resolution=32, n=NUM_SAMPLES, split='train', seed=0):
  return [shapes.generate_example(seed, split, i, resolution) for i in range(n)]


@pytest.fixture(scope='module')
def examples32():
  return _examples(32)


# --- Determinism -----------------------------------------------------------------------------

def test_generate_example_is_deterministic():
  a = shapes.generate_example(3, 'train', 17, 32)
  b = shapes.generate_example(3, 'train', 17, 32)
  np.testing.assert_array_equal(a['image'], b['image'])
  assert a['labels'] == b['labels']
  np.testing.assert_array_equal(a['attributes'], b['attributes'])
  assert a['image'].shape == (32, 32, 3) and a['image'].dtype == np.uint8


def test_different_index_split_or_seed_gives_different_images():
  base = shapes.generate_example(0, 'train', 0, 32)['image']
  for seed, split, index in [(0, 'train', 1), (0, 'validation', 0), (0, 'test', 0),
                             (1, 'train', 0)]:
    other = shapes.generate_example(seed, split, index, 32)['image']
    assert not np.array_equal(base, other), (seed, split, index)


def test_unknown_split_raises():
  with pytest.raises(ValueError, match='validation'):
    shapes.generate_example(0, 'val', 0, 32)


@pytest.mark.parametrize('resolution', [0, 8, 20, 33, 144, 256])
def test_render_rejects_unsupported_resolution(resolution):
  labels = shapes.sample_labels(np.random.default_rng(0))
  with pytest.raises(ValueError, match='16, 32, 48'):
    shapes.render(labels, resolution, np.random.default_rng(0))


# --- Labels and binary attributes ------------------------------------------------------------

def test_binary_attribute_names():
  names = shapes.BINARY_ATTRIBUTE_NAMES
  assert len(names) == 17 == len(set(names))
  for name in ('background_blue', 'position_top_left', 'size_large', 'shape_circle',
               'shape_diamond', 'shade_dark', 'texture_plain', 'texture_stripes', 'texture_dots'):
    assert name in names
  assert 'size_small' not in names and 'shade_light' not in names
  assert set(shapes.COARSE_ATTRIBUTES) | set(shapes.FINE_ATTRIBUTES) == set(
      shapes.CATEGORICAL_ATTRIBUTES)


def test_labels_in_range_and_binary_attributes_consistent(examples32):
  names = shapes.BINARY_ATTRIBUTE_NAMES
  for example in examples32:
    labels, bits = example['labels'], example['attributes']
    assert bits.shape == (17,) and bits.dtype == bool
    np.testing.assert_array_equal(bits, shapes.binary_attributes(labels))
    on = {name for name, bit in zip(names, bits) if bit}
    for attribute, values in shapes.CATEGORICAL_ATTRIBUTES.items():
      assert 0 <= labels[attribute] < len(values)
      value = values[labels[attribute]]
      attribute_bits = [n for n in on if n.startswith(attribute + '_')]
      if len(values) == 2:
        assert attribute_bits == ([f'{attribute}_{values[1]}'] if labels[attribute] else [])
      else:
        assert attribute_bits == [f'{attribute}_{value}']


def test_all_labels_occur_roughly_uniformly(examples32):
  for attribute, values in shapes.CATEGORICAL_ATTRIBUTES.items():
    counts = collections.Counter(e['labels'][attribute] for e in examples32)
    expected = len(examples32) / len(values)
    assert sorted(counts) == list(range(len(values))), attribute
    for value, count in counts.items():
      assert 0.6 * expected < count < 1.4 * expected, (attribute, value, count)


# --- Pixel-level truth -----------------------------------------------------------------------

def test_far_corner_is_background(examples32):
  """The corner diagonally opposite the object's quadrant shows the background colour."""
  for example in examples32:
    row, col = divmod(example['labels']['position'], 2)
    far_corner = example['image'][-1 if row == 0 else 0, -1 if col == 0 else 0]
    np.testing.assert_array_equal(far_corner, _background_rgb(example['labels']))


@pytest.mark.parametrize('resolution', shapes.SUPPORTED_RESOLUTIONS)
def test_object_centroid_in_labelled_quadrant(resolution):
  for example in _examples(resolution, n=60):
    mask = _object_mask(example)
    assert mask.sum() > 0
    ys, xs = np.nonzero(mask)
    half = resolution / 2
    row, col = divmod(example['labels']['position'], 2)
    assert (ys.mean() + 0.5 >= half) == bool(row), example['labels']
    assert (xs.mean() + 0.5 >= half) == bool(col), example['labels']


@pytest.mark.parametrize('resolution', [16, 32, 64, 128])
def test_object_bounding_box_inside_image(resolution):
  rng = np.random.default_rng(1)
  for _ in range(200):
    labels = shapes.sample_labels(rng)
    centre_y, centre_x, radius = shapes.object_geometry(labels, resolution, rng)
    for centre in (centre_y, centre_x):
      assert 0 <= centre - radius and centre + radius <= resolution


def test_large_objects_cover_more_pixels_than_small(examples32):
  area = collections.defaultdict(list)
  for example in examples32:
    labels = example['labels']
    area[labels['shape'], labels['size']].append(_object_mask(example).sum())
  for shape in range(len(shapes.CATEGORICAL_ATTRIBUTES['shape'])):
    small, large = np.mean(area[shape, 0]), np.mean(area[shape, 1])
    assert large > 1.5 * small, (shape, small, large)
    assert min(area[shape, 1]) > max(area[shape, 0]), shape


def test_shapes_have_expected_fill_of_bounding_box(examples32):
  """Square fills its bounding box, circle ~pi/4 of it, triangle and diamond ~1/2."""
  expected_fill = {'circle': np.pi / 4, 'square': 1.0, 'triangle': 0.5, 'diamond': 0.5}
  fills = collections.defaultdict(list)
  for example in examples32:
    ys, xs = np.nonzero(_object_mask(example))
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    name = shapes.CATEGORICAL_ATTRIBUTES['shape'][example['labels']['shape']]
    fills[name].append(len(ys) / box)
  for name, fill in fills.items():
    assert abs(np.mean(fill) - expected_fill[name]) < 0.1, (name, np.mean(fill))


def test_dark_shade_is_darker_by_a_modest_amount(examples32):
  brightness = {0: [], 1: []}
  for example in examples32:
    if example['labels']['texture'] == 0:  # plain: one colour inside the object.
      colours = np.unique(example['image'][_object_mask(example)], axis=0)
      assert len(colours) == 1
      brightness[example['labels']['shade']].append(colours[0].astype(int))
  light, dark = np.mean(brightness[0], axis=0), np.mean(brightness[1], axis=0)
  difference = (light - dark) / 255
  assert np.all(difference >= 0.14) and np.all(difference <= 0.21), difference


@pytest.mark.parametrize('resolution', [32, 64])
def test_textured_objects_have_more_colours_than_plain(resolution):
  texture_names = shapes.CATEGORICAL_ATTRIBUTES['texture']
  texture_fraction = collections.defaultdict(list)
  for example in _examples(resolution, n=200):
    inside = example['image'][_object_mask(example)]
    colours, counts = np.unique(inside, axis=0, return_counts=True)
    texture = texture_names[example['labels']['texture']]
    assert len(colours) == (1 if texture == 'plain' else 2), texture
    if texture != 'plain':  # the darker colour is the texture.
      texture_fraction[texture].append(counts[np.argmin(colours.sum(axis=1))] / counts.sum())
  assert 0.25 < np.mean(texture_fraction['stripes']) < 0.45
  assert 0.05 < np.mean(texture_fraction['dots']) < 0.2


# --- TFDS builder ----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  from jdiffrep.data import shapes_builder
  config = shapes_builder.ShapesConfig(
      name='test16', resolution=16, num_train=64, num_validation=16, num_test=16, seed=5)
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  builder = shapes_builder.prepare_shapes(data_dir, config)
  return shapes_builder, config, data_dir, builder


def test_builder_features(prepared):
  _, _, _, builder = prepared
  assert builder.name == 'shapes'
  features = builder.info.features
  assert features['image'].shape == (16, 16, 3)
  assert features['attributes'].shape == (17,)
  for attribute, values in shapes.CATEGORICAL_ATTRIBUTES.items():
    assert tuple(features['labels'][attribute].names) == values


def test_data_source_matches_generator_exactly(prepared):
  _, config, _, builder = prepared
  sizes = {'train': config.num_train, 'validation': config.num_validation,
           'test': config.num_test}
  for split, size in sizes.items():
    source = builder.as_data_source(split)
    assert len(source) == size
    for index in range(size):
      stored = source[index]
      expected = shapes.generate_example(config.seed, split, index, config.resolution)
      np.testing.assert_array_equal(stored['image'], expected['image'])
      assert {k: int(v) for k, v in stored['labels'].items()} == expected['labels']
      np.testing.assert_array_equal(stored['attributes'], expected['attributes'])


def test_prepare_twice_is_a_no_op(prepared):
  shapes_builder, config, data_dir, builder = prepared

  def snapshot():
    return {os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
            for root, _, files in os.walk(data_dir) for f in files}

  before = snapshot()
  assert any('array_record' in path for path in before)
  again = shapes_builder.prepare_shapes(data_dir, config)
  assert snapshot() == before
  assert len(again.as_data_source('train')) == config.num_train
