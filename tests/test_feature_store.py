"""Features larger than memory: the spilling store and the probes that stream its files.

The probes must give, on a matrix streamed from disk a few rows at a time, what they give on the
same matrix in memory: the standardisation statistics, validation and test logits and kNN exactly
(up to float rounding), the trained probe up to its block shuffle. Nothing may read more rows at
once than a chunk.
"""

import numpy as np
import pytest

from jdiffrep.evaluate import feature_store
from jdiffrep.evaluate import knn
from jdiffrep.evaluate import metrics
from jdiffrep.evaluate import probe
from jdiffrep.evaluate import timestep_probe
from jdiffrep.evaluate.feature_store import FeatureStore
from test_probe import gaussian_blobs, linear_attribute_data


class CountingFeatures(feature_store.StreamedFeatures):
  """An in-memory matrix behind the streamed interface that records every read's row count."""

  def __init__(self, x):
    self.x = np.asarray(x, np.float32)
    self.shape = self.x.shape
    self.reads = []

  def read(self, start, stop):
    self.reads.append(stop - start)
    return self.x[start:stop].copy()


def to_file(directory, x, name='x'):
  """x [N, D] as a FeatureFile (what the store writes when it spills)."""
  path = str(directory / f'{name}.f32')
  np.asarray(x, '<f4').tofile(path)
  return feature_store.FeatureFile(path, *x.shape)


def test_store_spills_largest_sets_and_returns_what_was_appended(tmp_path):
  rng = np.random.default_rng(0)
  batches = {('train', 'pixels'): [rng.standard_normal((10, 48)) for _ in range(4)],
             ('train', 'z'): [rng.standard_normal((10, 4)) for _ in range(4)],
             ('test', 'z'): [rng.standard_normal((10, 4)) for _ in range(2)]}
  # Room for every z (6 batches x 160 B) and one batch of pixels (1920 B), not for two.
  store = FeatureStore(str(tmp_path), memory_budget_bytes=6 * 160 + 1920 + 100)
  for i in range(4):
    for key, parts in batches.items():
      if i < len(parts):
        store.append(key, parts[i])
  assert store.spilled == [('train', 'pixels')]
  pixels = store.finish(('train', 'pixels'))
  assert isinstance(pixels, feature_store.FeatureFile) and pixels.shape == (40, 48)
  np.testing.assert_array_equal(pixels.read(0, 40),
                                np.concatenate(batches['train', 'pixels']).astype(np.float32))
  np.testing.assert_array_equal(pixels.read(35, 99), pixels.read(0, 40)[35:])  # clipped at N
  for key in (('train', 'z'), ('test', 'z')):
    kept = store.finish(key)
    assert isinstance(kept, np.ndarray) and kept.dtype == np.float32
    np.testing.assert_array_equal(kept, np.concatenate(batches[key]).astype(np.float32))


def test_store_with_zero_budget_streams_everything_and_checks_rows(tmp_path):
  store = FeatureStore(str(tmp_path), memory_budget_bytes=0)
  store.append('a', np.ones((3, 2)))
  store.append('a', np.zeros((2, 2)))
  with pytest.raises(ValueError, match='changed width'):
    store.append('a', np.ones((1, 3)))
  with pytest.raises(ValueError, match=r"'b'.*non-finite.*after 0 rows"):
    store.append('b', np.array([[1.0, np.nan]]))
  a = store.finish('a')
  np.testing.assert_array_equal(a.read(0, 5), [[1, 1]] * 3 + [[0, 0]] * 2)
  with pytest.raises(ValueError, match='truncated'):
    feature_store.FeatureFile(a.path, 6, 2)


def test_streamed_standardization_stats_equal_in_memory(tmp_path):
  x = (np.random.default_rng(0).standard_normal((1001, 7)) * [1, 10, 1e3, 0, 1, 1, 5]
       + 1e4).astype(np.float32)
  mean, std = probe.standardization_stats(x)
  streamed = CountingFeatures(x)
  stream_mean, stream_std = probe.standardization_stats(streamed, chunk_bytes=100 * 7 * 4)
  assert max(streamed.reads) == 100 and sum(streamed.reads) == 1001
  np.testing.assert_allclose(stream_mean, mean, rtol=1e-12)
  np.testing.assert_allclose(stream_std, std, rtol=1e-9)
  assert stream_std[3] == 1.0  # a constant feature is left unscaled


@pytest.mark.parametrize('standardize', [True, False])
def test_streamed_attribute_probe_reads_chunks_and_matches_in_memory(tmp_path, standardize):
  (train_x, train_y), (val_x, val_y), (test_x, test_y) = [
      linear_attribute_data(seed, n) for seed, n in ((0, 3000), (1, 700), (2, 700))]
  in_memory = probe.train_attribute_probe(train_x, train_y, val_x, val_y, test_x, test_y,
                                          epochs=4, standardize=standardize, learning_rate=1e-2)
  chunk_bytes = 512 * 32 * 4  # 512 rows of D = 32: 6 chunks of train, 2 of validation and test
  streamed_train = CountingFeatures(train_x)
  streamed_val = CountingFeatures(val_x)
  streamed = probe.train_attribute_probe(
      streamed_train, train_y, streamed_val, val_y, to_file(tmp_path, test_x), test_y, epochs=4,
      standardize=standardize, chunk_bytes=chunk_bytes, learning_rate=1e-2)
  assert max(streamed_train.reads + streamed_val.reads) == 512
  assert sum(streamed_val.reads) == 4 * 700  # validation logits every epoch, a chunk at a time
  # A block shuffle, not the same permutation: the same quality, not the same weights.
  assert streamed.test_metric == pytest.approx(in_memory.test_metric, abs=0.01)
  assert streamed.test_metric > 0.9
  assert not np.array_equal(streamed.weights, in_memory.weights)
  # Its test numbers are those of its own weights on the raw (unstreamed) features.
  test_map, per_attribute = metrics.mean_average_precision(test_x @ streamed.weights + streamed.bias,
                                                         test_y)
  assert test_map == pytest.approx(streamed.test_metric, abs=1e-4)
  np.testing.assert_allclose(per_attribute, streamed.test_per_label, atol=1e-3)
  again = probe.train_attribute_probe(
      CountingFeatures(train_x), train_y, val_x, val_y, test_x, test_y, epochs=4,
      standardize=standardize, chunk_bytes=chunk_bytes, learning_rate=1e-2)
  assert again.validation_metrics == streamed.validation_metrics  # deterministic


def test_streamed_probe_reports_a_non_finite_chunk_by_its_rows(tmp_path):
  (train_x, train_y), (val_x, val_y) = [linear_attribute_data(s, 600) for s in (0, 1)]
  val_x = val_x.copy()
  val_x[300, 2] = np.inf
  with pytest.raises(ValueError, match=r'val_x\[256:512\] contains non-finite'):
    probe.train_attribute_probe(to_file(tmp_path, train_x), train_y, to_file(tmp_path, val_x, 'v'),
                                val_y, train_x, train_y, epochs=1, chunk_bytes=256 * 32 * 4)


def test_streamed_class_probe_and_knn_match_in_memory(tmp_path):
  (train_x, train_y), (val_x, val_y), (test_x, test_y) = [
      gaussian_blobs(seed, n) for seed, n in ((0, 2000), (1, 500), (2, 500))]
  train_y, val_y, test_y = train_y[:, None], val_y[:, None], test_y[:, None]
  in_memory = probe.train_categorical_probe(train_x, train_y, val_x, val_y, test_x, test_y,
                                            num_classes=[10], epochs=3)
  files = [to_file(tmp_path, x, name) for x, name in ((train_x, 'tr'), (val_x, 'va'),
                                                       (test_x, 'te'))]
  streamed = probe.train_categorical_probe(files[0], train_y, files[1], val_y, files[2], test_y,
                                           num_classes=[10], epochs=3, chunk_bytes=256 * 16 * 4)
  assert streamed.test_metric == pytest.approx(in_memory.test_metric, abs=0.01)

  # kNN merges the neighbours of each training chunk: exactly the in-memory search.
  similarity, indices = knn.neighbours(train_x, test_x, k=20, batch_size=128)
  counted = CountingFeatures(train_x)
  stream_similarity, stream_indices = knn.neighbours(counted, files[2], k=20, batch_size=128,
                                                     chunk_bytes=300 * 16 * 4)
  assert max(counted.reads) == 300 and len(counted.reads) == 7
  np.testing.assert_array_equal(stream_indices, indices)
  np.testing.assert_allclose(stream_similarity, similarity, rtol=1e-6)


def test_timestep_group_probe_and_rotation_on_streamed_z(tmp_path):
  """The time-step probe slices and rotates a streamed z lazily, as it does an array."""
  z = {s: linear_attribute_data(seed, n, dim=8, num_attributes=2)
       for s, seed, n in (('train', 0, 800), ('validation', 1, 300), ('test', 2, 300))}
  features = {s: x for s, (x, _) in z.items()}
  streamed = {s: CountingFeatures(x) for s, x in features.items()}
  rotated = timestep_probe.random_rotation(streamed, seed=3)
  expected = timestep_probe.random_rotation(features, seed=3)
  columns = np.array([1, 4, 5])
  view = feature_store.take_columns(rotated['test'], columns)
  assert view.shape == (300, 3)
  np.testing.assert_allclose(view.read(10, 20), expected['test'][10:20, columns], rtol=1e-6)
  assert streamed['test'].reads == [10]


def test_where_a_matrix_lives_does_not_change_the_probe(tmp_path):
  """Chunking depends on a matrix's size only: an array and its spill file give the same probe,
  whole when it fits in a chunk (the exact in-memory protocol), chunked when it does not."""
  (train_x, train_y), (val_x, val_y), (test_x, test_y) = [
      linear_attribute_data(seed, n, dim=8) for seed, n in ((0, 1500), (1, 300), (2, 300))]
  files = [to_file(tmp_path, x, name) for x, name in ((train_x, 'tr'), (val_x, 'va'),
                                                       (test_x, 'te'))]
  for chunk_bytes in (10 ** 6, 256 * 8 * 4):  # one chunk; six chunks of 256 rows
    in_memory = probe.train_attribute_probe(train_x, train_y, val_x, val_y, test_x, test_y,
                                            epochs=2, chunk_bytes=chunk_bytes)
    on_disk = probe.train_attribute_probe(files[0], train_y, files[1], val_y, files[2], test_y,
                                          epochs=2, chunk_bytes=chunk_bytes)
    assert on_disk.validation_metrics == in_memory.validation_metrics
    np.testing.assert_allclose(on_disk.weights, in_memory.weights, rtol=1e-6, atol=1e-7)
  whole = probe.train_attribute_probe(train_x, train_y, val_x, val_y, test_x, test_y, epochs=2)
  assert whole.validation_metrics != in_memory.validation_metrics  # the block shuffle differs
