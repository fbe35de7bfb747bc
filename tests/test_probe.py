"""Tests for jdiffrep.evaluate.probe: average precision, linear probes and kNN."""

import jax
import numpy as np
import pytest

from jdiffrep.evaluate import knn
from jdiffrep.evaluate import metrics
from jdiffrep.evaluate import probe

# ----------------------------------------------------------------------------------------------
# Helpers: independent brute-force references and synthetic data.
# ----------------------------------------------------------------------------------------------


def brute_force_average_precision(scores, labels):
  """Mean over positives i of the precision at threshold s_i, counting ties as retrieved together.

  For each tied group holding m positives this adds m * P(threshold) / #positives, which is
  exactly sklearn's sum over distinct thresholds of (R_k - R_{k-1}) P_k.
  """
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
  precisions = [np.sum(labels & (scores >= s)) / np.sum(scores >= s) for s in scores[labels]]
  return float(np.mean(precisions))


def brute_force_knn_predict(train_x, train_y, query_x, k, num_classes, temperature=0.07):
  """Per query: full sort of cosine similarities, top k vote with exp(sim / temperature)."""
  train_unit = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  query_unit = query_x / np.linalg.norm(query_x, axis=1, keepdims=True)
  predictions = []
  for query in query_unit:
    similarity = train_unit @ query
    nearest = np.argsort(-similarity)[:k]
    votes = np.zeros(num_classes)
    np.add.at(votes, train_y[nearest], np.exp(similarity[nearest] / temperature))
    predictions.append(np.argmax(votes))
  return np.array(predictions)


def linear_attribute_data(seed, num_examples, dim=32, num_attributes=5, noise=0.1):
  """Gaussian features; attribute a = [x . w_a + noise > 0] for fixed random w_a."""
  rng = np.random.default_rng(seed)
  directions = np.random.default_rng(1234).standard_normal((dim, num_attributes))
  x = rng.standard_normal((num_examples, dim)).astype(np.float32)
  logits = x @ directions + noise * rng.standard_normal((num_examples, num_attributes))
  return x, logits > 0


def gaussian_blobs(seed, num_examples, dim=16, num_classes=10, spread=6.0):
  """Class c ~ N(mu_c, I) with well separated, fixed random centres mu_c."""
  rng = np.random.default_rng(seed)
  centres = spread * np.random.default_rng(4321).standard_normal((num_classes, dim))
  y = rng.integers(0, num_classes, num_examples)
  return (centres[y] + rng.standard_normal((num_examples, dim))).astype(np.float32), y


@pytest.fixture(scope='module')
def attribute_splits():
  """(train, val, test) pairs of linearly determined attributes: 4000 / 1000 / 1000."""
  return [linear_attribute_data(seed, n) for seed, n in ((0, 4000), (1, 1000), (2, 1000))]


@pytest.fixture(scope='module')
def attribute_probe_result(attribute_splits):
  (train_x, train_y), (val_x, val_y), (test_x, test_y) = attribute_splits
  return probe.train_attribute_probe(train_x, train_y, val_x, val_y, test_x, test_y)


# ----------------------------------------------------------------------------------------------
# average_precision / mean_average_precision.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('scores, labels, expected', [
    # Perfect ranking: every positive above every negative.
    ([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0], 1.0),
    # Worst ranking, positives last at ranks 3 and 4: (1/3 + 2/4) / 2.
    ([0.9, 0.8, 0.3, 0.1], [0, 0, 1, 1], 5 / 12),
    # No ties, positives at ranks 1, 3, 5: (1 + 2/3 + 3/5) / 3.
    ([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 1], (1 + 2 / 3 + 3 / 5) / 3),
    # Tie at 0.5 (one positive, one negative) enters together: 0.5 * 1 + 0.5 * 2/3.
    ([0.9, 0.5, 0.5, 0.1], [1, 0, 1, 0], 0.5 + 0.5 * 2 / 3),
    # Same tie, listed in the other order: the input order of tied items must not matter.
    ([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0], 0.5 + 0.5 * 2 / 3),
    # All scores tied: one threshold, AP = positive rate.
    ([0.3, 0.3, 0.3, 0.3, 0.3], [0, 1, 0, 0, 1], 2 / 5),
    # A single positive ranked second of three.
    ([3.0, 2.0, 1.0], [False, True, False], 1 / 2),
])
def test_average_precision_hand_computed(scores, labels, expected):
  assert metrics.average_precision(np.array(scores), np.array(labels)) == pytest.approx(expected)


def test_average_precision_is_nan_without_positives():
  assert np.isnan(metrics.average_precision(np.array([0.2, 0.1]), np.array([False, False])))


@pytest.mark.parametrize('seed', range(5))
@pytest.mark.parametrize('tied', [False, True])
def test_average_precision_matches_brute_force(seed, tied):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 300))
  scores = rng.standard_normal(n)
  if tied:
    scores = np.round(scores, 1)  # many ties
  labels = rng.random(n) < rng.uniform(0.05, 0.9)
  labels[rng.integers(n)] = True
  assert metrics.average_precision(scores, labels) == pytest.approx(
      brute_force_average_precision(scores, labels), abs=1e-12)


def test_average_precision_of_random_scores_is_about_positive_rate():
  rng = np.random.default_rng(0)
  labels = rng.random(20000) < 0.2
  assert metrics.average_precision(rng.standard_normal(20000), labels) == pytest.approx(0.2, abs=0.02)


def test_mean_average_precision_ignores_attributes_without_positives():
  rng = np.random.default_rng(0)
  scores = rng.standard_normal((50, 3))
  labels = rng.random((50, 3)) < 0.4
  labels[:, 1] = False
  mean_ap, per_attribute = metrics.mean_average_precision(scores, labels)
  expected = [metrics.average_precision(scores[:, a], labels[:, a]) for a in (0, 2)]
  assert np.isnan(per_attribute[1])
  np.testing.assert_allclose(per_attribute[[0, 2]], expected)
  assert mean_ap == pytest.approx(np.mean(expected))


# ----------------------------------------------------------------------------------------------
# Attribute probe.
# ----------------------------------------------------------------------------------------------


def test_attribute_probe_learns_linear_attributes(attribute_probe_result):
  result = attribute_probe_result
  assert result.metric_name == 'mean_average_precision'
  assert result.test_metric > 0.95
  assert result.test_per_label.shape == (5,)
  assert np.all(result.test_per_label > 0.9)
  assert len(result.validation_metrics) == 15
  assert result.best_epoch == int(np.argmax(result.validation_metrics))
  assert result.weights.shape == (32, 5) and result.bias.shape == (5,)


def test_attribute_probe_weights_reproduce_test_metric_on_raw_features(attribute_splits):
  """Standardisation is folded into the returned weights: they act on the raw features."""
  (train_x, train_y), (val_x, val_y), (test_x, test_y) = attribute_splits
  offset, scale = 10.0, np.linspace(0.1, 100.0, 32).astype(np.float32)
  raw = lambda x: x * scale + offset
  result = probe.train_attribute_probe(raw(train_x), train_y, raw(val_x), val_y, raw(test_x),
                                       test_y, epochs=3)
  test_map, per_attribute = metrics.mean_average_precision(raw(test_x) @ result.weights + result.bias,
                                                         test_y)
  assert test_map == pytest.approx(result.test_metric, abs=1e-3)
  np.testing.assert_allclose(per_attribute, result.test_per_label, atol=2e-3)

  # Standardised with train statistics, the probe does not care about the feature scale.
  unscaled = probe.train_attribute_probe(train_x, train_y, val_x, val_y, test_x, test_y, epochs=3)
  assert unscaled.test_metric == pytest.approx(result.test_metric, abs=2e-3)


def test_attribute_probe_on_random_labels_is_at_chance():
  rng = np.random.default_rng(0)
  positive_rates = np.array([0.1, 0.3, 0.5])
  x = rng.standard_normal((8000, 16)).astype(np.float32)
  y = rng.random((8000, 3)) < positive_rates
  result = probe.train_attribute_probe(x[:4000], y[:4000], x[4000:5000], y[4000:5000],
                                       x[5000:], y[5000:], epochs=5)
  test_rates = y[5000:].mean(axis=0)
  np.testing.assert_allclose(result.test_per_label, test_rates, atol=0.06)
  assert result.test_metric == pytest.approx(test_rates.mean(), abs=0.04)


def test_attribute_probe_reports_test_of_best_validation_epoch(attribute_splits):
  """Validation labels that contradict the training labels make early epochs the best ones.

  The test numbers must be those of the best epoch, i.e. of a run that stopped right there (epoch
  e's shuffle depends only on (seed, e), so the shorter run takes exactly the same steps).
  """
  (train_x, train_y), (val_x, val_y), (test_x, test_y) = attribute_splits
  epochs = 6
  result = probe.train_attribute_probe(train_x, train_y, val_x, ~val_y, test_x, test_y,
                                       epochs=epochs)
  assert len(result.validation_metrics) == epochs
  assert result.best_epoch == int(np.argmax(result.validation_metrics))
  assert result.best_epoch < epochs - 1
  stopped_at_best = probe.train_attribute_probe(train_x, train_y, val_x, ~val_y, test_x, test_y,
                                                epochs=result.best_epoch + 1)
  assert stopped_at_best.validation_metrics == result.validation_metrics[:result.best_epoch + 1]
  assert stopped_at_best.test_metric == result.test_metric
  np.testing.assert_array_equal(stopped_at_best.weights, result.weights)
  # Honest validation labels pick a later epoch, which also scores better on the test set.
  honest = probe.train_attribute_probe(train_x, train_y, val_x, val_y, test_x, test_y,
                                       epochs=epochs)
  assert honest.best_epoch > result.best_epoch
  assert honest.test_metric > result.test_metric


def test_attribute_probe_is_deterministic(attribute_splits, attribute_probe_result):
  (train_x, train_y), (val_x, val_y), (test_x, test_y) = attribute_splits
  again = probe.train_attribute_probe(train_x, train_y, val_x, val_y, test_x, test_y)
  assert again.validation_metrics == attribute_probe_result.validation_metrics
  assert again.test_metric == attribute_probe_result.test_metric
  np.testing.assert_array_equal(again.weights, attribute_probe_result.weights)
  np.testing.assert_array_equal(again.bias, attribute_probe_result.bias)
  other_seed = probe.train_attribute_probe(train_x, train_y, val_x, val_y, test_x, test_y,
                                           epochs=1, seed=1)
  one_epoch = probe.train_attribute_probe(train_x, train_y, val_x, val_y, test_x, test_y,
                                          epochs=1, seed=0)
  assert not np.array_equal(other_seed.weights, one_epoch.weights)


def test_random_flip_trains_on_either_view_of_each_example(attribute_splits,
                                                            attribute_probe_result):
  """The mirrored views enter training: identical views change nothing, bit for bit; views that
  contradict the originals (negated features, same labels) half the time leave nothing to learn."""
  (train_x, train_y), (val_x, val_y), (test_x, test_y) = attribute_splits
  same = probe.train_attribute_probe(train_x, train_y, val_x, val_y, test_x, test_y,
                                     train_x_mirrored=train_x.copy())
  np.testing.assert_array_equal(same.weights, attribute_probe_result.weights)
  contradicting = probe.train_attribute_probe(train_x, train_y, val_x, val_y, test_x, test_y,
                                              train_x_mirrored=-train_x, epochs=5)
  assert attribute_probe_result.test_metric > 0.95
  assert contradicting.test_metric < attribute_probe_result.test_metric - 0.2
  with pytest.raises(ValueError, match='train_x_mirrored must have the shape of train_x'):
    probe.train_attribute_probe(train_x, train_y, val_x, val_y, test_x, test_y,
                                train_x_mirrored=train_x[:10])


def test_flip_half_takes_each_row_from_one_view_about_half_the_time():
  x = np.zeros((10000, 3), np.float32)
  mixed = np.asarray(probe._flip_half(jax.random.key(3), x, x + 1))  # pylint: disable=protected-access
  assert set(np.unique(mixed)) == {0.0, 1.0} and (mixed == mixed[:, :1]).all()
  assert mixed[:, 0].mean() == pytest.approx(0.5, abs=0.02)


def test_epoch_batches_cover_every_example_once_and_keep_the_partial_batch():
  # pylint: disable-next=protected-access
  indices, is_real = probe._epoch_batches(jax.random.key(0), 130, 32)
  indices, is_real = np.asarray(indices), np.asarray(is_real)
  assert indices.shape == is_real.shape == (5, 32)
  assert is_real.sum() == 130 and is_real[-1].sum() == 2
  np.testing.assert_array_equal(np.sort(indices[is_real]), np.arange(130))


# ----------------------------------------------------------------------------------------------
# Class probe.
# ----------------------------------------------------------------------------------------------


def class_probe(train_x, train_y, val_x, val_y, test_x, test_y, *, num_classes, **kwargs):
  """The categorical probe with one attribute: a single-label class probe (DDAE protocol)."""
  return probe.train_categorical_probe(train_x, train_y[:, None], val_x, val_y[:, None], test_x,
                                       test_y[:, None], num_classes=[num_classes], **kwargs)


def test_class_probe_separates_gaussian_blobs():
  (train_x, train_y), (val_x, val_y), (test_x, test_y) = [
      gaussian_blobs(seed, n) for seed, n in ((0, 3000), (1, 1000), (2, 2000))]
  result = class_probe(train_x, train_y, val_x, val_y, test_x, test_y, num_classes=10)
  assert result.metric_name == 'mean_top1_accuracy'
  assert result.test_metric > 0.95
  assert result.best_epoch == int(np.argmax(result.validation_metrics))
  predictions = (test_x @ result.weights + result.bias).argmax(axis=1)
  assert np.mean(predictions == test_y) == pytest.approx(result.test_metric, abs=1e-3)


def test_class_probe_on_random_labels_is_at_chance():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((7000, 16)).astype(np.float32)
  y = rng.integers(0, 10, 7000)
  result = class_probe(x[:3000], y[:3000], x[3000:4000], y[3000:4000], x[4000:], y[4000:],
                       num_classes=10, epochs=5, cosine_decay=False)
  assert result.test_metric == pytest.approx(0.1, abs=0.03)


def test_categorical_probe_reads_each_attribute_with_its_own_head():
  """Attribute 0 is the blob class (linearly readable), attribute 1 is random (chance = 1/3)."""
  rng = np.random.default_rng(7)
  splits = []
  for seed, n in ((0, 3000), (1, 1000), (2, 2000)):
    x, y = gaussian_blobs(seed, n)
    splits += [x, np.stack([y, rng.integers(0, 3, n)], axis=1)]
  result = probe.train_categorical_probe(*splits, num_classes=[10, 3])
  test_x, test_y = splits[4], splits[5]
  assert result.metric_name == 'mean_top1_accuracy'
  assert result.weights.shape == (16, 13)
  assert result.test_per_label[0] > 0.95
  assert result.test_per_label[1] == pytest.approx(1 / 3, abs=0.05)
  logits = test_x @ result.weights + result.bias
  reproduced = [np.mean(logits[:, :10].argmax(1) == test_y[:, 0]),
                np.mean(logits[:, 10:].argmax(1) == test_y[:, 1])]
  np.testing.assert_allclose(result.test_per_label, reproduced, atol=1e-3)
  assert result.test_metric == pytest.approx(np.mean(result.test_per_label))
  with pytest.raises(ValueError, match=r'test_y must be \[N, A=2\]'):
    probe.train_categorical_probe(*splits[:5], test_y[:, :1], num_classes=[10, 3])


def test_knn_attribute_accuracy_equals_one_knn_per_attribute():
  rng = np.random.default_rng(3)
  train_x, test_x = rng.standard_normal((300, 8)), rng.standard_normal((50, 8))
  train_y = np.stack([rng.integers(0, 4, 300), (train_x[:, 0] > 0).astype(int)], axis=1)
  test_y = np.stack([rng.integers(0, 4, 50), (test_x[:, 0] > 0).astype(int)], axis=1)
  together = knn.attribute_accuracy(train_x, train_y, test_x, test_y, num_classes=[4, 2],
                                    k=7, batch_size=16)
  separate = [knn.attribute_accuracy(train_x, train_y[:, a:a + 1], test_x, test_y[:, a:a + 1],
                                     k=7, num_classes=[c])[0] for a, c in enumerate((4, 2))]
  np.testing.assert_allclose(together, separate)
  assert together[1] > 0.8  # the sign of feature 0 is what cosine neighbours share


# ----------------------------------------------------------------------------------------------
# kNN.
# ----------------------------------------------------------------------------------------------


def test_knn_on_separated_clusters_is_perfect():
  train_x, train_y = gaussian_blobs(0, 2000, dim=16, spread=10.0)
  test_x, test_y = gaussian_blobs(1, 500, dim=16, spread=10.0)
  assert knn.attribute_accuracy(train_x, train_y[:, None], test_x, test_y[:, None],
                                num_classes=[10]) == 1.0


@pytest.mark.parametrize('k, batch_size', [(1, 1024), (5, 7), (20, 64)])
def test_knn_matches_brute_force(k, batch_size):
  rng = np.random.default_rng(k)
  train_x = rng.standard_normal((300, 8)).astype(np.float32)
  train_y = rng.integers(0, 4, 300)
  query_x = rng.standard_normal((101, 8)).astype(np.float32)
  similarity, indices = knn.neighbours(train_x, query_x, k=k, batch_size=batch_size)
  predictions = knn.vote(similarity, train_y[indices], 4)
  np.testing.assert_array_equal(predictions,
                                brute_force_knn_predict(train_x, train_y, query_x, k, 4))
  assert knn.attribute_accuracy(train_x, train_y[:, None], query_x, predictions[:, None], k=k,
                                num_classes=[4], batch_size=batch_size) == 1.0


# ----------------------------------------------------------------------------------------------
# Bad inputs.
# ----------------------------------------------------------------------------------------------


def _attribute_args(**overrides):
  rng = np.random.default_rng(0)
  args = dict(train_x=rng.standard_normal((40, 4)), train_y=rng.random((40, 3)) < 0.5,
              val_x=rng.standard_normal((20, 4)), val_y=rng.random((20, 3)) < 0.5,
              test_x=rng.standard_normal((20, 4)), test_y=rng.random((20, 3)) < 0.5)
  args.update(overrides)
  return args


def _with_nan(x):
  x = x.copy()
  x[3, 1] = np.nan
  return x


@pytest.mark.parametrize('overrides, message', [
    (dict(train_y=np.zeros((39, 3), bool)), 'train_y has 39 rows'),
    (dict(val_x=np.zeros(20)), 'val_x must be 2-D'),
    (dict(test_x=np.zeros((20, 4, 1))), 'test_x must be 2-D'),
    (dict(train_x=_with_nan(np.ones((40, 4)))), 'train_x contains non-finite'),
    (dict(test_x=np.full((20, 4), np.inf)), 'test_x contains non-finite'),
    (dict(val_x=np.zeros((20, 5))), 'same dimension D'),
    (dict(train_y=np.full((40, 3), 2)), 'train_y must be bool or 0/1'),
    (dict(test_y=np.zeros((20, 2), bool)), 'same number of attributes'),
    (dict(val_y=np.zeros((20, 3), bool)), 'val_y has no positive'),
    (dict(train_x=np.zeros((0, 4)), train_y=np.zeros((0, 3), bool)), 'train_x is empty'),
    (dict(epochs=0), 'epochs must be a positive integer'),
    (dict(batch_size=-1), 'batch_size must be a positive integer'),
])
def test_attribute_probe_rejects_bad_inputs(overrides, message):
  with pytest.raises(ValueError, match=message):
    probe.train_attribute_probe(**_attribute_args(**overrides))


@pytest.mark.parametrize('overrides, message', [
    (dict(train_y=np.array([[0, 1, 5] * 10]).T), r'train_y\[:, 0\] must lie in \[0, num_classes=3\)'),
    (dict(val_y=np.zeros((10, 2), int)), r'val_y must be \[N, A=1\]'),
    (dict(test_y=np.zeros((9, 1), int)), r'test_y\[:, 0\] has 9 rows'),
    (dict(train_y=np.zeros((30, 1))), 'integer class indices'),
    (dict(num_classes=[0]), r'num_classes\[0\] must be a positive integer'),
])
def test_class_probe_rejects_bad_inputs(overrides, message):
  rng = np.random.default_rng(0)
  args = dict(train_x=rng.standard_normal((30, 4)), train_y=rng.integers(0, 3, (30, 1)),
              val_x=rng.standard_normal((10, 4)), val_y=rng.integers(0, 3, (10, 1)),
              test_x=rng.standard_normal((10, 4)), test_y=rng.integers(0, 3, (10, 1)),
              num_classes=[3])
  args.update(overrides)
  with pytest.raises(ValueError, match=message):
    probe.train_categorical_probe(**args)


def test_knn_and_average_precision_reject_bad_inputs():
  x, y = np.ones((5, 3)), np.zeros((5, 1), int)
  with pytest.raises(ValueError, match='k=6 is larger'):
    knn.attribute_accuracy(x, y, x, y, k=6, num_classes=[2])
  with pytest.raises(ValueError, match='query_x contains non-finite'):
    knn.neighbours(x, _with_nan(np.ones((5, 3))), k=2)
  with pytest.raises(ValueError, match=r'test_y\[:, 0\] has 4 rows'):
    knn.attribute_accuracy(x, y, x, y[:4], k=2, num_classes=[2])
  with pytest.raises(ValueError, match='same number of rows'):
    metrics.average_precision(np.ones(4), np.ones(3, bool))
  with pytest.raises(ValueError, match='scores contains non-finite'):
    metrics.average_precision(np.array([1.0, np.nan]), np.array([True, False]))
  with pytest.raises(ValueError, match='must be 1-D'):
    metrics.average_precision(np.ones((2, 2)), np.ones((2, 2), bool))
