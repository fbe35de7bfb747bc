"""Linear probes and kNN on frozen, precomputed features (SPEC section 5).

* `train_attribute_probe`: attribute classification (DiTi / PDAE / DiffAE protocol). One Linear
  layer, multi-label sigmoid BCE, Adam 1e-3, 15 epochs; the epoch with the best validation mean
  average precision is kept and its test mean AP (and AP per attribute) is reported.
* `train_class_probe`: linear probe for classification (DDAE protocol). One Linear layer, softmax
  cross-entropy, Adam 1e-3 with cosine decay over all steps, batch 128, 15 epochs; top-1 accuracy
  of the epoch with the best validation accuracy. The protocol's random crop + flip augmentation
  acts on images, so it belongs to feature extraction; on precomputed features there is none.
* `train_categorical_probe`: the same for several categorical attributes at once (one head each).
* `knn_accuracy`, `knn_attribute_accuracy`: cosine-similarity kNN (k = 20), the cheap second view.

Features are float32 `[N, D]`: NumPy arrays, or `feature_store.StreamedFeatures` for sets too
large for memory (CelebA's pixels: 8 GB). Nothing here touches the encoder. Epochs are numbered
from 0. A probe run is deterministic given `seed`: the Linear layer is initialised from
`split(key(seed))[0]`, and epoch `e` is shuffled with `fold_in(split(key(seed))[1], e)`.

A matrix of at most `chunk_bytes` is trained on whole: every epoch is one permutation of all
rows. A larger one, in memory or streamed, is read in chunks of about `chunk_bytes` (a whole number
of batches), so the probe's own memory does not grow with N: each epoch visits the chunks in a
random order and shuffles the rows within each chunk (a block shuffle, as input pipelines with a
shuffle window do). The standardisation statistics, validation and test logits and kNN are
computed a chunk at a time and equal the whole-matrix ones (kNN exactly, the rest to rounding).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Callable

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdiffrep.evaluate import feature_store
from jdiffrep.evaluate.feature_store import Features

# A feature matrix larger than this is probed a chunk of rows (about this many bytes) at a time.
DEFAULT_CHUNK_BYTES = 256 * 2 ** 20

# Per-example loss: (logits [B, K], targets [B, ...]) -> [B].
PerExampleLoss = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass
class ProbeResult:
  """Outcome of one linear-probe run.

  `weights` and `bias` act on the RAW features (any standardisation is folded into them), so
  `logits = x @ weights + bias` for x: [N, D] reproduces the probe of the best epoch.
  """
  metric_name: str  # 'mean_average_precision' or 'top1_accuracy'
  best_epoch: int  # 0-based; argmax of `validation_metrics` (first one on ties)
  validation_metrics: list[float]  # one per epoch
  test_metric: float  # at `best_epoch`
  test_per_label: np.ndarray  # [A] AP per attribute, or [C] accuracy per class (NaN if absent)
  weights: np.ndarray  # [D, A] or [D, C]
  bias: np.ndarray  # [A] or [C]


# ----------------------------------------------------------------------------------------------
# Average precision.
# ----------------------------------------------------------------------------------------------


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """Non-interpolated average precision, equal to sklearn's `average_precision_score`.

  AP = sum_k (R_k - R_{k-1}) P_k over the DISTINCT score thresholds taken from high to low, so
  tied scores enter (and leave) the ranking together.

  Args:
    scores: [N] real scores; higher means more likely positive.
    labels: [N] bool (or 0/1) ground truth.

  Returns:
    AP in [0, 1], or NaN when there is no positive label.
  """
  scores = np.asarray(scores, np.float64)
  labels = _as_binary(labels, 'labels')
  if scores.ndim != 1 or labels.ndim != 1:
    raise ValueError(f'scores and labels must be 1-D, got shapes {scores.shape} and {labels.shape}')
  _check_same_length(('scores', scores), ('labels', labels))
  _check_finite('scores', scores)
  if not labels.any():
    return float('nan')
  order = np.argsort(-scores, kind='stable')
  sorted_scores, sorted_labels = scores[order], labels[order]
  # The last index of each group of tied scores is where a threshold cuts the ranking.
  threshold_ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
  true_positives = np.cumsum(sorted_labels)[threshold_ends]
  precision = true_positives / (threshold_ends + 1)
  recall = true_positives / true_positives[-1]
  return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
  """AP of every column, and their mean over the columns that have a positive label.

  Args:
    scores: [N, A] scores (e.g. logits) per attribute.
    labels: [N, A] bool (or 0/1).

  Returns:
    (mean AP, or NaN if no column has a positive; per-attribute AP [A], NaN where no positive).
  """
  scores, labels = np.asarray(scores), np.asarray(labels)
  if scores.ndim != 2 or scores.shape != labels.shape:
    raise ValueError(f'scores and labels must both be [N, A], got shapes {scores.shape} and '
                     f'{labels.shape}')
  per_attribute = np.array([average_precision(scores[:, a], labels[:, a])
                            for a in range(scores.shape[1])])
  has_positives = ~np.isnan(per_attribute)
  mean_ap = float(per_attribute[has_positives].mean()) if has_positives.any() else float('nan')
  return mean_ap, per_attribute


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray,
                       num_classes: int) -> np.ndarray:
  """[C] accuracy among the examples of each class; NaN for classes absent from `labels`."""
  correct = np.bincount(labels, weights=predictions == labels, minlength=num_classes)
  counts = np.bincount(labels, minlength=num_classes)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(counts > 0, correct / counts, np.nan)


# ----------------------------------------------------------------------------------------------
# Input checks: every error names the argument and what is wrong with it.
# ----------------------------------------------------------------------------------------------


def _check_same_length(*named_arrays: tuple[str, np.ndarray]) -> None:
  lengths = {name: len(array) for name, array in named_arrays}
  if len(set(lengths.values())) > 1:
    raise ValueError(f'arrays must have the same number of rows: {lengths}')


def _check_finite(name: str, array: np.ndarray) -> None:
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{name} contains non-finite values (NaN or inf): '
                     f'{int(np.size(array) - np.isfinite(array).sum())} of {np.size(array)}')


def _as_binary(labels: np.ndarray, name: str) -> np.ndarray:
  """bool copy of 0/1 (or bool) labels; anything else is an error."""
  labels = np.asarray(labels)
  if labels.dtype != bool and not np.isin(labels, (0, 1)).all():
    raise ValueError(f'{name} must be bool or 0/1, got values {np.unique(labels)[:10]}')
  return labels.astype(bool)


def _as_features(name: str, x: Features) -> Features:
  """float32 [N, D] features with N, D > 0 and finite values.

  A streamed matrix is checked for its shape here and for finite values as its chunks are read.
  """
  if feature_store.is_streamed(x):
    if len(x.shape) != 2 or 0 in x.shape:
      raise ValueError(f'{name} must be non-empty 2-D features [N, D], got shape {x.shape}')
    return x
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f'{name} must be 2-D features [N, D], got shape {x.shape}')
  if x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f'{name} is empty: shape {x.shape}')
  if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
    raise ValueError(f'{name} must hold real numbers, got dtype {x.dtype}')
  _check_finite(name, x)
  return x.astype(np.float32, copy=False)


def _check_same_width(**features: np.ndarray) -> None:
  widths = {name: x.shape[1] for name, x in features.items()}
  if len(set(widths.values())) > 1:
    raise ValueError(f'feature arrays must have the same dimension D: {widths}')


def _as_attribute_labels(name: str, y: np.ndarray, num_rows: int) -> np.ndarray:
  """bool [N, A] multi-label targets."""
  y = np.asarray(y)
  if y.ndim != 2:
    raise ValueError(f'{name} must be 2-D attribute labels [N, A], got shape {y.shape}')
  if y.shape[0] != num_rows:
    raise ValueError(f'{name} has {y.shape[0]} rows but its features have {num_rows}')
  return _as_binary(y, name)


def _as_class_labels(name: str, y: np.ndarray, num_rows: int, num_classes: int) -> np.ndarray:
  """int32 [N] class indices in [0, num_classes)."""
  y = np.asarray(y)
  if y.ndim != 1:
    raise ValueError(f'{name} must be 1-D class indices [N], got shape {y.shape}')
  if y.shape[0] != num_rows:
    raise ValueError(f'{name} has {y.shape[0]} rows but its features have {num_rows}')
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'{name} must hold integer class indices, got dtype {y.dtype}')
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f'{name} must lie in [0, num_classes={num_classes}), got values in '
                     f'[{y.min()}, {y.max()}]')
  return y.astype(np.int32)


def _check_positive(**values: int) -> None:
  for name, value in values.items():
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value!r}')


# ----------------------------------------------------------------------------------------------
# Standardisation.
# ----------------------------------------------------------------------------------------------


def standardization_stats(train_x: Features, chunk_bytes: int = DEFAULT_CHUNK_BYTES
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Per-feature (mean [D], std [D]) of the training features, in float64; std 0 becomes 1.

  A matrix larger than `chunk_bytes` (in memory or streamed) is read once, a chunk at a time; the
  chunks' means and sums of squared deviations are merged exactly (Chan et al.'s parallel
  variance), not as E[x^2] - E[x]^2, and no float64 copy of the whole matrix is made.
  """
  chunk_rows = feature_store.chunk_rows_for(train_x.shape[1], chunk_bytes)
  if not feature_store.is_streamed(train_x) and len(train_x) <= chunk_rows:
    mean = train_x.mean(axis=0, dtype=np.float64)
    std = train_x.std(axis=0, dtype=np.float64)
    return mean, np.where(std > 0, std, 1.0)
  count, mean, squares = 0, np.zeros(train_x.shape[1]), np.zeros(train_x.shape[1])
  for _, _, rows in feature_store.iter_chunks(train_x, chunk_rows):
    _check_finite('train_x', rows)
    rows = rows.astype(np.float64)
    chunk_mean = rows.mean(axis=0)
    chunk_squares = ((rows - chunk_mean) ** 2).sum(axis=0)
    total = count + len(rows)
    delta = chunk_mean - mean
    squares += chunk_squares + delta ** 2 * count * len(rows) / total
    mean += delta * len(rows) / total
    count = total
  std = np.sqrt(squares / count)
  return mean, np.where(std > 0, std, 1.0)


def _fold_standardization(weights: np.ndarray, bias: np.ndarray, mean: np.ndarray,
                          std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Weights for raw x from weights for (x - mean) / std: W' = W / std, b' = b - (mean / std) W."""
  weights = np.asarray(weights, np.float64)
  raw_weights = weights / std[:, None]
  raw_bias = np.asarray(bias, np.float64) - (mean / std) @ weights
  return raw_weights.astype(np.float32), raw_bias.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The shared training loop: one jitted epoch = lax.scan over shuffled, padded batches.
# ----------------------------------------------------------------------------------------------


def _epoch_batches(key: jax.Array, num_examples: int,
                   batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Shuffled indices [S, B] covering every example once, and a mask [S, B] of the real ones.

  S = ceil(N / B): the last batch is completed with index 0 and masked out, not dropped.
  """
  num_steps = math.ceil(num_examples / batch_size)
  padding = num_steps * batch_size - num_examples
  order = jax.random.permutation(key, num_examples)
  indices = jnp.concatenate([order, jnp.zeros((padding,), order.dtype)])
  is_real = jnp.arange(num_steps * batch_size) < num_examples
  return indices.reshape(num_steps, batch_size), is_real.reshape(num_steps, batch_size)


def _make_train_epoch(apply_fn, optimizer: optax.GradientTransformation,
                      per_example_loss: PerExampleLoss, batch_size: int):
  """Returns jitted (params, opt_state, x [N, D], targets [N, ...], key) -> (params, opt_state)."""

  def batch_loss(params, x, targets, is_real):
    losses = per_example_loss(apply_fn({'params': params}, x), targets)
    return jnp.sum(losses * is_real) / jnp.sum(is_real)  # mean over the real examples only

  def train_epoch(params, opt_state, features, targets, key):
    batch_indices, batch_is_real = _epoch_batches(key, features.shape[0], batch_size)

    def train_step(carry, batch):
      params, opt_state = carry
      indices, is_real = batch
      grads = jax.grad(batch_loss)(params, features[indices], targets[indices], is_real)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(train_step, (params, opt_state),
                                          (batch_indices, batch_is_real))
    return params, opt_state

  return jax.jit(train_epoch)


@jax.jit
def _linear_logits(params, x: jax.Array) -> jax.Array:
  """x [N, D] -> logits [N, K] of an `nn.Dense` parameter dict."""
  return x @ params['kernel'] + params['bias']


class _StandardizedChunks:
  """(x - mean) / std of a feature matrix, as device arrays of row chunks.

  A matrix of at most `chunk_rows` rows is one chunk, standardised and put on the device once and
  reused by every epoch. A larger one, in memory or streamed, is cut into chunks of `chunk_rows`
  rows that are read (and, when streamed, checked) and standardised again on every pass, so only
  one chunk is held on the device at a time.
  """

  def __init__(self, name: str, x: Features, mean32: np.ndarray, std32: np.ndarray,
               chunk_rows: int):
    self.name, self.x, self.mean32, self.std32 = name, x, mean32, std32
    self.num_rows = feature_store.num_rows(x)
    self.bounds = feature_store.row_chunks(self.num_rows, chunk_rows)
    self._resident = None

  @property
  def chunked(self) -> bool:
    return len(self.bounds) > 1

  def get(self, start: int, stop: int) -> jax.Array:
    if not self.chunked and self._resident is not None:
      return self._resident
    rows = feature_store.read_rows(self.x, start, stop)
    if feature_store.is_streamed(self.x):
      _check_finite(f'{self.name}[{start}:{stop}]', rows)
    scaled = np.subtract(rows, self.mean32, dtype=np.float32)  # one copy, divided in place
    scaled /= self.std32
    scaled = jnp.asarray(scaled)
    if not self.chunked:
      self._resident = scaled
    return scaled

  def logits(self, params) -> np.ndarray:
    """[N, K] logits of the linear layer `params` on every row, in order."""
    return np.concatenate([np.asarray(_linear_logits(params, self.get(start, stop)))
                           for start, stop in self.bounds])


def _chunk_order(bounds: list[tuple[int, int]], epoch_key: jax.Array):
  """[((start, stop), key)] of one epoch: the chunks in a random order, each with its own
  shuffling key. A single chunk is shuffled with the epoch key itself (the in-memory protocol)."""
  if len(bounds) == 1:
    return [(bounds[0], epoch_key)]
  order_key, chunk_key = jax.random.split(epoch_key)
  order = np.asarray(jax.random.permutation(order_key, len(bounds)))
  return [(bounds[i], jax.random.fold_in(chunk_key, int(i))) for i in order]


def _fit_linear_probe(train_x: _StandardizedChunks, train_targets: np.ndarray,
                      val_x: _StandardizedChunks,
                      validation_metric: Callable[[np.ndarray], float], *, num_outputs: int,
                      per_example_loss: PerExampleLoss, learning_rate: optax.ScalarOrSchedule,
                      epochs: int, batch_size: int, seed: int) -> tuple[int, list[float], dict]:
  """Trains one Linear layer with Adam; scores it on validation after every epoch.

  A chunked training matrix logs every epoch (its epochs take minutes at CelebA's size).

  Returns:
    (best epoch, validation metric per epoch, NumPy params {'kernel', 'bias'} of the best epoch).
  """
  model = nn.Dense(num_outputs)
  init_key, shuffle_key = jax.random.split(jax.random.key(seed))
  width = train_x.x.shape[1]
  params = model.init(init_key, jnp.zeros((1, width), jnp.float32))['params']
  optimizer = optax.adam(learning_rate)
  opt_state = optimizer.init(params)
  train_epoch = _make_train_epoch(model.apply, optimizer, per_example_loss, batch_size)
  resident_targets = None if train_x.chunked else jnp.asarray(train_targets)

  validation_metrics, best_epoch, best_params = [], -1, None
  for epoch in range(epochs):
    start_time = time.monotonic()
    for (start, stop), key in _chunk_order(train_x.bounds, jax.random.fold_in(shuffle_key, epoch)):
      targets = (resident_targets if resident_targets is not None
                 else jnp.asarray(train_targets[start:stop]))
      params, opt_state = train_epoch(params, opt_state, train_x.get(start, stop), targets, key)
      if train_x.chunked:
        # Wait for this chunk before reading the next: with JAX's asynchronous dispatch the loop
        # would otherwise read every chunk ahead of the computation, holding them all at once.
        params = jax.block_until_ready(params)
    validation_metrics.append(float(validation_metric(val_x.logits(params))))
    if best_params is None or validation_metrics[-1] > validation_metrics[best_epoch]:
      best_epoch, best_params = epoch, jax.tree.map(np.asarray, params)
    if train_x.chunked:
      logging.info('Probe epoch %d/%d on %d x %d features in %d chunks: validation %.4f '
                   '(%.1f s).', epoch + 1, epochs, train_x.num_rows, width, len(train_x.bounds),
                   validation_metrics[-1], time.monotonic() - start_time)
  return best_epoch, validation_metrics, best_params


def _prepare_features(train_x: Features, val_x: Features, test_x: Features, standardize: bool,
                      *, batch_size: int, chunk_bytes: int):
  """Checked features of the three splits, standardised with the TRAIN statistics if asked (on
  the fly, chunk by chunk), and the statistics (mean [D], std [D]) in float64."""
  train_x, val_x, test_x = (_as_features(name, x) for name, x in
                            (('train_x', train_x), ('val_x', val_x), ('test_x', test_x)))
  _check_same_width(train_x=train_x, val_x=val_x, test_x=test_x)
  _check_positive(chunk_bytes=chunk_bytes)
  if standardize:
    mean, std = standardization_stats(train_x, chunk_bytes)
  else:  # no pass over the data (a streamed matrix is checked as its chunks are read)
    mean, std = np.zeros(train_x.shape[1]), np.ones(train_x.shape[1])
  chunk_rows = feature_store.chunk_rows_for(train_x.shape[1], chunk_bytes, batch_size)
  mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
  return (*(_StandardizedChunks(name, x, mean32, std32, chunk_rows) for name, x in
            (('train_x', train_x), ('val_x', val_x), ('test_x', test_x))), mean, std)


# ----------------------------------------------------------------------------------------------
# The two probes.
# ----------------------------------------------------------------------------------------------


def train_attribute_probe(train_x: Features, train_y: np.ndarray, val_x: Features,
                          val_y: np.ndarray, test_x: Features, test_y: np.ndarray, *,
                          epochs: int = 15, batch_size: int = 128, learning_rate: float = 1e-3,
                          seed: int = 0, standardize: bool = True,
                          chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ProbeResult:
  """Multi-label attribute probe (DiTi / PDAE protocol): best epoch by validation mean AP.

  Args:
    train_x, val_x, test_x: [N_split, D] frozen features, arrays or streamed.
    train_y, val_y, test_y: [N_split, A] bool or 0/1 attribute labels.
    epochs, batch_size, learning_rate: Adam on the mean sigmoid BCE over all N x A entries; the
      last, partial batch of an epoch is kept.
    seed: initialisation and per-epoch shuffling.
    standardize: map features to zero mean, unit variance with the TRAIN statistics first. Encoders
      produce features of arbitrary scale; standardising lets one learning rate (1e-3) and one
      epoch budget fit all of them. It is an invertible affine map, so the probe's capacity is
      unchanged, and it is folded into the returned weights.
    chunk_bytes: larger feature matrices are trained a chunk of this size at a time (module
      docstring).

  Returns:
    A `ProbeResult` with test mean AP (over attributes that have test positives) and AP per
    attribute of the best validation epoch.
  """
  _check_positive(epochs=epochs, batch_size=batch_size)
  train_x, val_x, test_x, mean, std = _prepare_features(
      train_x, val_x, test_x, standardize, batch_size=batch_size, chunk_bytes=chunk_bytes)
  train_y, val_y, test_y = (_as_attribute_labels(name, y, x.num_rows) for name, y, x in
                            (('train_y', train_y, train_x), ('val_y', val_y, val_x),
                             ('test_y', test_y, test_x)))
  if len({y.shape[1] for y in (train_y, val_y, test_y)}) > 1:
    raise ValueError(f'train_y, val_y and test_y must have the same number of attributes, got '
                     f'{train_y.shape[1]}, {val_y.shape[1]} and {test_y.shape[1]}')
  if not val_y.any():
    raise ValueError('val_y has no positive label for any attribute, so validation mean AP is '
                     'undefined and no epoch can be chosen')

  per_example_bce = lambda logits, y: optax.sigmoid_binary_cross_entropy(logits, y).mean(axis=-1)
  best_epoch, validation_metrics, params = _fit_linear_probe(
      train_x, train_y.astype(np.float32), val_x,
      lambda val_logits: mean_average_precision(val_logits, val_y)[0],
      num_outputs=train_y.shape[1], per_example_loss=per_example_bce,
      learning_rate=learning_rate, epochs=epochs, batch_size=batch_size, seed=seed)
  test_map, test_per_attribute = mean_average_precision(test_x.logits(params), test_y)
  weights, bias = _fold_standardization(params['kernel'], params['bias'], mean, std)
  return ProbeResult(metric_name='mean_average_precision', best_epoch=best_epoch,
                     validation_metrics=validation_metrics, test_metric=test_map,
                     test_per_label=test_per_attribute, weights=weights, bias=bias)


def train_class_probe(train_x: Features, train_y: np.ndarray, val_x: Features,
                      val_y: np.ndarray, test_x: Features, test_y: np.ndarray, *,
                      num_classes: int, epochs: int = 15, batch_size: int = 128,
                      learning_rate: float = 1e-3, seed: int = 0, standardize: bool = True,
                      cosine_decay: bool = True,
                      chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ProbeResult:
  """Linear classification probe (DDAE protocol): best epoch by validation top-1 accuracy.

  Args:
    train_x, val_x, test_x: [N_split, D] frozen features, arrays or streamed.
    train_y, val_y, test_y: [N_split] int class indices in [0, num_classes).
    num_classes: C, the probe's output width.
    epochs, batch_size, learning_rate: Adam on softmax cross-entropy; the last, partial batch of
      an epoch is kept.
    seed: initialisation and per-epoch shuffling.
    standardize: as in `train_attribute_probe` (one lr for features of any scale).
    cosine_decay: decay the learning rate to 0 along a cosine over all epochs * batches steps.
    chunk_bytes: larger feature matrices are trained a chunk of this size at a time (module
      docstring).

  Returns:
    A `ProbeResult` with test top-1 accuracy and per-class accuracy of the best validation epoch.
  """
  _check_positive(epochs=epochs, batch_size=batch_size, num_classes=num_classes)
  train_x, val_x, test_x, mean, std = _prepare_features(
      train_x, val_x, test_x, standardize, batch_size=batch_size, chunk_bytes=chunk_bytes)
  train_y, val_y, test_y = (_as_class_labels(name, y, x.num_rows, num_classes) for name, y, x in
                            (('train_y', train_y, train_x), ('val_y', val_y, val_x),
                             ('test_y', test_y, test_x)))

  total_steps = epochs * sum(math.ceil((stop - start) / batch_size)
                            for start, stop in train_x.bounds)
  schedule = (optax.cosine_decay_schedule(learning_rate, total_steps) if cosine_decay
              else learning_rate)
  best_epoch, validation_metrics, params = _fit_linear_probe(
      train_x, train_y, val_x,
      lambda val_logits: np.mean(val_logits.argmax(axis=-1) == val_y),
      num_outputs=num_classes,
      per_example_loss=optax.softmax_cross_entropy_with_integer_labels,
      learning_rate=schedule, epochs=epochs, batch_size=batch_size, seed=seed)
  test_predictions = test_x.logits(params).argmax(axis=-1)
  weights, bias = _fold_standardization(params['kernel'], params['bias'], mean, std)
  return ProbeResult(metric_name='top1_accuracy', best_epoch=best_epoch,
                     validation_metrics=validation_metrics,
                     test_metric=float(np.mean(test_predictions == test_y)),
                     test_per_label=per_class_accuracy(test_predictions, test_y, num_classes),
                     weights=weights, bias=bias)


def train_categorical_probe(train_x: Features, train_y: np.ndarray, val_x: Features,
                            val_y: np.ndarray, test_x: Features, test_y: np.ndarray, *,
                            num_classes, epochs: int = 15, batch_size: int = 128,
                            learning_rate: float = 1e-3, seed: int = 0, standardize: bool = True,
                            cosine_decay: bool = True,
                            chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ProbeResult:
  """One linear classification probe per categorical attribute, trained as one Linear layer.

  The layer's outputs are the attributes' logits side by side and the loss is the sum of their
  softmax cross-entropies, so every attribute's head gets exactly its own gradient (Adam is
  per-parameter): A probes of the DDAE protocol for the price of one. The epoch is chosen by the
  validation accuracy averaged over attributes.

  Args:
    train_y, val_y, test_y: [N_split, A] int class index of each attribute.
    num_classes: [A] number of values of each attribute.
    (the rest as `train_class_probe`)

  Returns:
    A `ProbeResult` with test accuracy averaged over attributes and per attribute ([A]); the
    weights [D, sum(num_classes)] hold the heads side by side.
  """
  num_classes = [int(c) for c in num_classes]
  _check_positive(epochs=epochs, batch_size=batch_size, **{f'num_classes[{i}]': c
                                                           for i, c in enumerate(num_classes)})
  train_x, val_x, test_x, mean, std = _prepare_features(
      train_x, val_x, test_x, standardize, batch_size=batch_size, chunk_bytes=chunk_bytes)
  labels = {}
  for name, y, x in (('train_y', train_y, train_x), ('val_y', val_y, val_x),
                     ('test_y', test_y, test_x)):
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[1] != len(num_classes):
      raise ValueError(f'{name} must be [N, A={len(num_classes)}] class indices, got {y.shape}')
    labels[name] = np.stack([_as_class_labels(f'{name}[:, {a}]', y[:, a], x.num_rows, c)
                             for a, c in enumerate(num_classes)], axis=1)
  offsets = np.concatenate([[0], np.cumsum(num_classes)])

  def per_example_loss(logits, y):
    return sum(optax.softmax_cross_entropy_with_integer_labels(logits[:, lo:hi], y[:, a])
               for a, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])))

  def accuracy_per_attribute(logits, y):
    return np.array([np.mean(logits[:, lo:hi].argmax(axis=-1) == y[:, a])
                     for a, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:]))])

  total_steps = epochs * sum(math.ceil((stop - start) / batch_size)
                            for start, stop in train_x.bounds)
  schedule = (optax.cosine_decay_schedule(learning_rate, total_steps) if cosine_decay
              else learning_rate)
  best_epoch, validation_metrics, params = _fit_linear_probe(
      train_x, labels['train_y'], val_x,
      lambda val_logits: accuracy_per_attribute(val_logits, labels['val_y']).mean(),
      num_outputs=int(offsets[-1]), per_example_loss=per_example_loss, learning_rate=schedule,
      epochs=epochs, batch_size=batch_size, seed=seed)
  test_accuracy = accuracy_per_attribute(test_x.logits(params),
                                         labels['test_y'])
  weights, bias = _fold_standardization(params['kernel'], params['bias'], mean, std)
  return ProbeResult(metric_name='mean_top1_accuracy', best_epoch=best_epoch,
                     validation_metrics=validation_metrics,
                     test_metric=float(test_accuracy.mean()), test_per_label=test_accuracy,
                     weights=weights, bias=bias)


# ----------------------------------------------------------------------------------------------
# kNN.
# ----------------------------------------------------------------------------------------------


def l2_normalize(x: np.ndarray) -> np.ndarray:
  """Rows of x [N, D] scaled to unit L2 norm (all-zero rows stay zero)."""
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.where(norms > 0, norms, 1.0)


@functools.partial(jax.jit, static_argnames=('k',))
def _nearest(queries: jax.Array, train_features: jax.Array, *, k: int):
  """queries [B, D], train_features [N, D] (unit rows) -> (similarity [B, k], indices [B, k])."""
  return jax.lax.top_k(queries @ train_features.T, k)


def _merge_nearest(best: tuple[np.ndarray, np.ndarray], found: tuple[np.ndarray, np.ndarray],
                   k: int) -> tuple[np.ndarray, np.ndarray]:
  """The k most similar of two (similarity [M, k1], index [M, k1]) candidate lists; on equal
  similarity the earlier list (lower training rows) comes first, as `lax.top_k` orders ties."""
  similarity = np.concatenate([best[0], found[0]], axis=1)
  indices = np.concatenate([best[1], found[1]], axis=1)
  order = np.argsort(-similarity, axis=1, kind='stable')[:, :k]
  return (np.take_along_axis(similarity, order, axis=1),
          np.take_along_axis(indices, order, axis=1))


def knn_neighbours(train_x: Features, query_x: Features, *, k: int = 20,
                   batch_size: int = 1024, chunk_bytes: int = DEFAULT_CHUNK_BYTES
                   ) -> tuple[np.ndarray, np.ndarray]:
  """The k most cosine-similar training rows of every query: (similarity [M, k], index [M, k]).

  Features are L2-normalised first, so the dot product is the cosine similarity; queries run
  through jax in batches of `batch_size` (padded: one compilation). A training matrix larger than
  `chunk_bytes` (in memory or streamed) is searched a chunk at a time and the chunks' neighbours
  are merged, which gives exactly the whole search's result.
  """
  _check_positive(k=k, batch_size=batch_size, chunk_bytes=chunk_bytes)
  train_x, query_x = _as_features('train_x', train_x), _as_features('query_x', query_x)
  _check_same_width(train_x=train_x, query_x=query_x)
  if k > train_x.shape[0]:
    raise ValueError(f'k={k} is larger than the number of training examples {train_x.shape[0]}')
  num_queries = feature_store.num_rows(query_x)
  batch_size = min(batch_size, num_queries)
  best = None
  train_chunk_rows = feature_store.chunk_rows_for(train_x.shape[1], chunk_bytes)
  for offset, _, train_rows in feature_store.iter_chunks(train_x, train_chunk_rows):
    if feature_store.is_streamed(train_x):
      _check_finite(f'train_x[{offset}:{offset + len(train_rows)}]', train_rows)
    train_features = jnp.asarray(l2_normalize(train_rows))
    chunk_k = min(k, len(train_rows))
    found = []
    for start, stop in feature_store.row_chunks(num_queries, batch_size):
      queries = feature_store.read_rows(query_x, start, stop)
      if feature_store.is_streamed(query_x):
        _check_finite(f'query_x[{start}:{stop}]', queries)
      queries = np.concatenate([l2_normalize(queries),
                                np.zeros((batch_size - (stop - start), queries.shape[1]),
                                         np.float32)])
      found.append(jax.device_get(_nearest(jnp.asarray(queries), train_features, k=chunk_k)))
    chunk_best = (np.concatenate([f[0] for f in found])[:num_queries],
                  np.concatenate([f[1] for f in found])[:num_queries] + offset)
    best = chunk_best if best is None else _merge_nearest(best, chunk_best, k)
  return best


def knn_vote(similarity: np.ndarray, neighbour_labels: np.ndarray, num_classes: int, *,
             temperature: float = 0.07) -> np.ndarray:
  """Weighted vote [M] from neighbours' similarity [M, k] and labels [M, k] (DINO weighting).

  Each neighbour votes for its class with weight exp(similarity / temperature); ties go to the
  lowest class index.
  """
  weights = np.exp((similarity.astype(np.float64) - 1.0) / temperature)  # shifted: no overflow
  votes = np.zeros((similarity.shape[0], num_classes))
  np.add.at(votes, (np.arange(similarity.shape[0])[:, None], neighbour_labels), weights)
  return votes.argmax(axis=-1)


def knn_predict(train_x: Features, train_y: np.ndarray, query_x: Features, *, k: int = 20,
                num_classes: int, batch_size: int = 1024, temperature: float = 0.07) -> np.ndarray:
  """Weighted kNN class predictions [M] for query_x [M, D] from labelled train_x [N, D].

  Cosine similarity; each of the k most similar training examples votes for its class with weight
  exp(similarity / temperature), the weighting of DINO's kNN evaluation (Caron et al. 2021;
  temperature 0.07 as there): closer neighbours count more. Ties go to the lowest class index.
  """
  _check_positive(num_classes=num_classes)
  train_y = _as_class_labels('train_y', train_y, np.shape(train_x)[0], num_classes)
  similarity, indices = knn_neighbours(train_x, query_x, k=k, batch_size=batch_size)
  return knn_vote(similarity, train_y[indices], num_classes, temperature=temperature)


def knn_attribute_accuracy(train_x: Features, train_y: np.ndarray, test_x: Features,
                           test_y: np.ndarray, *, num_classes, k: int = 20,
                           batch_size: int = 1024, temperature: float = 0.07,
                           chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> np.ndarray:
  """kNN top-1 accuracy [A] for A categorical attributes at once (one neighbour search).

  train_y [N, A], test_y [M, A] int; num_classes: [A] values per attribute; chunk_bytes as in
  `knn_neighbours`.
  """
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  similarity, indices = knn_neighbours(train_x, test_x, k=k, batch_size=batch_size,
                                       chunk_bytes=chunk_bytes)
  accuracy = []
  for a, classes in enumerate(num_classes):
    train_a = _as_class_labels(f'train_y[:, {a}]', train_y[:, a], len(train_y), classes)
    test_a = _as_class_labels(f'test_y[:, {a}]', test_y[:, a], len(indices), classes)
    predictions = knn_vote(similarity, train_a[indices], classes, temperature=temperature)
    accuracy.append(np.mean(predictions == test_a))
  return np.array(accuracy)


def knn_accuracy(train_x: Features, train_y: np.ndarray, test_x: Features,
                 test_y: np.ndarray, *, k: int = 20, num_classes: int, batch_size: int = 1024,
                 temperature: float = 0.07) -> float:
  """Top-1 accuracy of `knn_predict` (cosine similarity, exp(sim / temperature) weights)."""
  test_x = _as_features('test_x', test_x)
  test_y = _as_class_labels('test_y', test_y, test_x.shape[0], num_classes)
  predictions = knn_predict(train_x, train_y, test_x, k=k, num_classes=num_classes,
                            batch_size=batch_size, temperature=temperature)
  return float(np.mean(predictions == test_y))
