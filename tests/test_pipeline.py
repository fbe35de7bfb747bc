"""The grain input pipeline over the prepared `shapes` data source."""

import collections

import numpy as np
import pytest

from jdiffrep.data import pipeline
from jdiffrep.data import registry
from jdiffrep.data import shapes


def _iterator(config, seed=0, process_index=0, process_count=1, batch=16):
  return pipeline.make_train_iterator(config.dataset, global_batch_size=batch, seed=seed,
                                      process_index=process_index, process_count=process_count)


def test_batches_have_shape_range_and_labels(tiny_config):
  batch = next(_iterator(tiny_config))
  assert batch['image'].shape == (16, 32, 32, 3)
  assert batch['image'].dtype == np.float32
  assert batch['image'].min() >= -1.0 and batch['image'].max() <= 1.0
  assert batch['attributes'].shape == (16, len(shapes.BINARY_ATTRIBUTE_NAMES))
  assert set(batch['labels']) == set(shapes.CATEGORICAL_ATTRIBUTES)


def test_images_match_the_generator_exactly(tiny_config):
  """Every batch image is a scaled generated example whose labels travel with it."""
  batch = next(_iterator(tiny_config))
  originals = [shapes.generate_example(0, 'train', i, 32) for i in range(512)]
  by_bytes = {o['image'].tobytes(): o for o in originals}
  for i, image in enumerate(batch['image']):
    original = by_bytes[pipeline.to_uint8(image).tobytes()]
    np.testing.assert_array_equal(batch['attributes'][i], original['attributes'])
    assert batch['labels']['shape'][i] == original['labels']['shape']


def test_same_seed_same_batches_other_seed_other_order(tiny_config):
  a, b, c = _iterator(tiny_config, seed=3), _iterator(tiny_config, seed=3), _iterator(
      tiny_config, seed=4)
  for _ in range(3):
    x, y, z = next(a), next(b), next(c)
    np.testing.assert_array_equal(x['image'], y['image'])
  assert not np.array_equal(x['image'], z['image'])


def _multiset(images):
  return collections.Counter(pipeline.to_uint8(im).tobytes() for im in images)


def _all_train_images():
  return _multiset(pipeline.scale_to_unit_interval(shapes.generate_example(0, 'train', i, 32)['image'])
                   for i in range(512))


def test_epochs_cover_every_example_and_are_reshuffled(tiny_config):
  it = _iterator(tiny_config, batch=64)
  epoch1 = np.concatenate([next(it)['image'] for _ in range(8)])  # 512 examples
  epoch2 = np.concatenate([next(it)['image'] for _ in range(8)])
  assert _multiset(epoch1) == _multiset(epoch2) == _all_train_images()
  assert not np.array_equal(epoch1, epoch2)


def test_processes_read_their_rows_of_one_global_batch(tiny_config):
  """Two processes' halves, stacked, are the one-process batch; an epoch covers every example."""
  whole = _iterator(tiny_config)
  first = _iterator(tiny_config, process_index=0, process_count=2)
  second = _iterator(tiny_config, process_index=1, process_count=2)
  seen = [[], []]
  for _ in range(32):  # one epoch: 32 global batches of 16, 8 rows per process
    want = next(whole)
    halves = next(first), next(second)
    for k, half in enumerate(halves):
      assert half['image'].shape[0] == 8
      seen[k].extend(half['image'])
    for key in ('image', 'attributes'):
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), want[key])
  assert len(seen[0]) == len(seen[1]) == 256
  assert _multiset(seen[0]) + _multiset(seen[1]) == _all_train_images()


def test_iterator_state_restores_the_exact_next_batch(tiny_config):
  it = _iterator(tiny_config)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it)['image'] for _ in range(3)]
  resumed = _iterator(tiny_config)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)['image'], want)


def test_random_flip_mirrors_about_half_of_the_images():
  spec = registry.DatasetSpec(name='toy', tfds_name='toy')
  image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  rng = np.random.default_rng(0)
  outputs = [pipeline._preprocess({'image': image}, rng, spec=spec, resolution=4, random_flip=True)
             for _ in range(400)]  # pylint: disable=protected-access
  # A [4, 6] image at resolution 4 is resized; compare against both orientations resized.
  plain = pipeline.scale_to_unit_interval(registry.resize_image(image, 4, spec.resize))
  mirrored = plain[:, ::-1]
  flipped = [np.array_equal(o['image'], mirrored) for o in outputs]
  assert all(f or np.array_equal(o['image'], plain) for f, o in zip(flipped, outputs))
  assert 150 < sum(flipped) < 250


def test_flip_is_refused_where_it_would_corrupt_labels(tiny_config):
  tiny_config.dataset.random_flip = True
  with pytest.raises(ValueError, match='random_flip'):
    _iterator(tiny_config)  # shapes' left/right position labels forbid flips


def test_uneven_global_batch_is_rejected(tiny_config):
  with pytest.raises(ValueError, match='divisible'):
    _iterator(tiny_config, process_count=3, batch=16)
