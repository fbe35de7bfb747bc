"""Linear probes and kNN on frozen, precomputed features (SPEC section 5).

* `train_attribute_probe`: attribute classification (DiTi / PDAE / DiffAE protocol). One Linear
  layer, multi-label sigmoid BCE, Adam 1e-3, 15 epochs; the epoch with the best validation mean
  average precision is kept and its test mean AP (and AP per attribute) is reported.
* `train_categorical_probe`: linear classification probes (DDAE protocol), one softmax head per
  categorical attribute. One Linear layer, softmax cross-entropy, Adam 1e-3 with cosine decay over
  all steps, batch 128, 15 epochs; top-1 accuracy of the epoch with the best validation accuracy.
  The random flip of the training images (the official DiTi probe's augmentation) is taken on
  precomputed features too: given the flipped images' features (`train_x_mirrored`), each epoch
  trains every example on one of its two views.
* `train_regression_probe`: attribute regression (DiTi's LFW transfer protocol). One Linear layer,
  MSE, Adam 1e-3, batch 64, 15 epochs; Pearson r and MSE of every target on test after every
  epoch (there is no validation split, so nothing is selected here).
The cheap second view, kNN, is `knn.py`; the scores, `metrics.py`.

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
import math
import time
from typing import Callable

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdiffrep.evaluate import checks
from jdiffrep.evaluate import feature_store
from jdiffrep.evaluate import metrics
from jdiffrep.evaluate.feature_store import Features

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
# Standardisation.
# ----------------------------------------------------------------------------------------------


def standardization_stats(train_x: Features, chunk_bytes: int = feature_store.DEFAULT_CHUNK_BYTES
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
    checks.check_finite('train_x', rows)
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
      checks.check_finite(f'{self.name}[{start}:{stop}]', rows)
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


_FLIP_STREAM = 0x5EED  # folded into a chunk's key for its flip draws


@jax.jit
def _flip_half(key: jax.Array, x: jax.Array, x_mirrored: jax.Array) -> jax.Array:
  """Each row of x [N, D] replaced by its mirror image's features with probability 1/2."""
  take = jax.random.bernoulli(jax.random.fold_in(key, _FLIP_STREAM), 0.5, (x.shape[0],))
  return jnp.where(take[:, None], x_mirrored, x)


def _fit_linear_probe(train_x: _StandardizedChunks, train_targets: np.ndarray,
                      val_x: _StandardizedChunks,
                      validation_metric: Callable[[np.ndarray], float], *, num_outputs: int,
                      per_example_loss: PerExampleLoss, learning_rate: optax.ScalarOrSchedule,
                      epochs: int, batch_size: int, seed: int,
                      train_x_mirrored: _StandardizedChunks | None = None,
                      scored_split: str = 'validation',
                      log_every_seconds: float = 30.0) -> tuple[int, list[float], dict]:
  """Trains one Linear layer with Adam; scores it on `val_x` (the split named `scored_split` in
  the logs: validation, or test where a protocol has no validation split) after every epoch.

  With `train_x_mirrored` (the features of the horizontally flipped training images, row for
  row), every epoch trains each example on its flipped image's features with probability 1/2:
  the official probe's random flip, on precomputed features. Logs each epoch of a chunked matrix
  (minutes each at CelebA's size), else at most every `log_every_seconds`.

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
  last_log = time.monotonic()
  for epoch in range(epochs):
    start_time = time.monotonic()
    for (start, stop), key in _chunk_order(train_x.bounds, jax.random.fold_in(shuffle_key, epoch)):
      targets = (resident_targets if resident_targets is not None
                 else jnp.asarray(train_targets[start:stop]))
      x = train_x.get(start, stop)
      if train_x_mirrored is not None:
        x = _flip_half(key, x, train_x_mirrored.get(start, stop))
      params, opt_state = train_epoch(params, opt_state, x, targets, key)
      if train_x.chunked:
        # Wait for this chunk before reading the next: with JAX's asynchronous dispatch the loop
        # would otherwise read every chunk ahead of the computation, holding them all at once.
        params = jax.block_until_ready(params)
    validation_metrics.append(float(validation_metric(val_x.logits(params))))
    if best_params is None or validation_metrics[-1] > validation_metrics[best_epoch]:
      best_epoch, best_params = epoch, jax.tree.map(np.asarray, params)
    if train_x.chunked or time.monotonic() - last_log >= log_every_seconds:
      last_log = time.monotonic()
      logging.info('Probe epoch %d/%d on %d x %d features in %d chunk(s): %s %.4f (%.1f s).',
                   epoch + 1, epochs, train_x.num_rows, width, len(train_x.bounds), scored_split,
                   validation_metrics[-1], time.monotonic() - start_time)
  return best_epoch, validation_metrics, best_params


def _prepare_features(named_x: dict[str, Features], standardize: bool, *, batch_size: int,
                      chunk_bytes: int, train_x_mirrored: Features | None = None):
  """Checked features of every split ({'train_x': ..., 'val_x': ..., ...}, training first),
  standardised with the TRAIN statistics if asked (on the fly, chunk by chunk).

  Returns ({name: _StandardizedChunks}, the statistics (mean [D], std [D]) in float64, the
  mirrored training features standardised alike or None if not given).
  """
  named_x = {name: checks.as_features(name, x) for name, x in named_x.items()}
  checks.check_same_width(**named_x)
  train_x = named_x['train_x']
  if train_x_mirrored is not None:
    train_x_mirrored = checks.as_features('train_x_mirrored', train_x_mirrored)
    if tuple(train_x_mirrored.shape) != tuple(train_x.shape):
      raise ValueError(f'train_x_mirrored must have the shape of train_x {tuple(train_x.shape)} '
                       f'(one row per training image), got {tuple(train_x_mirrored.shape)}')
  checks.check_positive(chunk_bytes=chunk_bytes)
  if standardize:
    mean, std = standardization_stats(train_x, chunk_bytes)
  else:  # no pass over the data (a streamed matrix is checked as its chunks are read)
    mean, std = np.zeros(train_x.shape[1]), np.ones(train_x.shape[1])
  chunk_rows = feature_store.chunk_rows_for(train_x.shape[1], chunk_bytes, batch_size)
  mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
  mirrored = (None if train_x_mirrored is None else
              _StandardizedChunks('train_x_mirrored', train_x_mirrored, mean32, std32, chunk_rows))
  chunks = {name: _StandardizedChunks(name, x, mean32, std32, chunk_rows)
            for name, x in named_x.items()}
  return chunks, mean, std, mirrored


# ----------------------------------------------------------------------------------------------
# The two probes.
# ----------------------------------------------------------------------------------------------


def train_attribute_probe(train_x: Features, train_y: np.ndarray, val_x: Features,
                          val_y: np.ndarray, test_x: Features, test_y: np.ndarray, *,
                          epochs: int = 15, batch_size: int = 128, learning_rate: float = 1e-3,
                          seed: int = 0, standardize: bool = True,
                          chunk_bytes: int = feature_store.DEFAULT_CHUNK_BYTES,
                          train_x_mirrored: Features | None = None) -> ProbeResult:
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
    train_x_mirrored: [N_train, D] features of the horizontally flipped training images; each
      epoch then trains every example on one of its two views, drawn with probability 1/2 (the
      official probe flips its training images at random).

  Returns:
    A `ProbeResult` with test mean AP (over attributes that have test positives) and AP per
    attribute of the best validation epoch.
  """
  checks.check_positive(epochs=epochs, batch_size=batch_size)
  chunks, mean, std, mirrored = _prepare_features(
      {'train_x': train_x, 'val_x': val_x, 'test_x': test_x}, standardize,
      batch_size=batch_size, chunk_bytes=chunk_bytes, train_x_mirrored=train_x_mirrored)
  train_x, val_x, test_x = chunks['train_x'], chunks['val_x'], chunks['test_x']
  train_y, val_y, test_y = (checks.as_attribute_labels(name, y, x.num_rows) for name, y, x in
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
      lambda val_logits: metrics.mean_average_precision(val_logits, val_y)[0],
      num_outputs=train_y.shape[1], per_example_loss=per_example_bce,
      learning_rate=learning_rate, epochs=epochs, batch_size=batch_size, seed=seed,
      train_x_mirrored=mirrored)
  test_map, test_per_attribute = metrics.mean_average_precision(test_x.logits(params), test_y)
  weights, bias = _fold_standardization(params['kernel'], params['bias'], mean, std)
  return ProbeResult(metric_name='mean_average_precision', best_epoch=best_epoch,
                     validation_metrics=validation_metrics, test_metric=test_map,
                     test_per_label=test_per_attribute, weights=weights, bias=bias)



def train_categorical_probe(train_x: Features, train_y: np.ndarray, val_x: Features,
                            val_y: np.ndarray, test_x: Features, test_y: np.ndarray, *,
                            num_classes, epochs: int = 15, batch_size: int = 128,
                            learning_rate: float = 1e-3, seed: int = 0, standardize: bool = True,
                            cosine_decay: bool = True,
                            chunk_bytes: int = feature_store.DEFAULT_CHUNK_BYTES,
                            train_x_mirrored: Features | None = None) -> ProbeResult:
  """One linear classification probe per categorical attribute, trained as one Linear layer.

  The layer's outputs are the attributes' logits side by side and the loss is the sum of their
  softmax cross-entropies, so every attribute's head gets exactly its own gradient (Adam is
  per-parameter): A probes of the DDAE protocol for the price of one. The epoch is chosen by the
  validation accuracy averaged over attributes.

  Args:
    train_x, val_x, test_x: [N_split, D] frozen features, arrays or streamed.
    train_y, val_y, test_y: [N_split, A] int class index of each attribute.
    num_classes: [A] number of values of each attribute.
    epochs, batch_size, learning_rate: Adam on the summed softmax cross-entropies; the last,
      partial batch of an epoch is kept.
    seed, standardize, chunk_bytes, train_x_mirrored: as in `train_attribute_probe`.
    cosine_decay: decay the learning rate to 0 along a cosine over all epochs * batches steps.

  Returns:
    A `ProbeResult` with test accuracy averaged over attributes and per attribute ([A]); the
    weights [D, sum(num_classes)] hold the heads side by side.
  """
  num_classes = [int(c) for c in num_classes]
  checks.check_positive(epochs=epochs, batch_size=batch_size, **{f'num_classes[{i}]': c
                                                           for i, c in enumerate(num_classes)})
  chunks, mean, std, mirrored = _prepare_features(
      {'train_x': train_x, 'val_x': val_x, 'test_x': test_x}, standardize,
      batch_size=batch_size, chunk_bytes=chunk_bytes, train_x_mirrored=train_x_mirrored)
  train_x, val_x, test_x = chunks['train_x'], chunks['val_x'], chunks['test_x']
  labels = {}
  for name, y, x in (('train_y', train_y, train_x), ('val_y', val_y, val_x),
                     ('test_y', test_y, test_x)):
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[1] != len(num_classes):
      raise ValueError(f'{name} must be [N, A={len(num_classes)}] class indices, got {y.shape}')
    labels[name] = np.stack([checks.as_class_labels(f'{name}[:, {a}]', y[:, a], x.num_rows, c)
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
      epochs=epochs, batch_size=batch_size, seed=seed, train_x_mirrored=mirrored)
  test_accuracy = accuracy_per_attribute(test_x.logits(params),
                                         labels['test_y'])
  weights, bias = _fold_standardization(params['kernel'], params['bias'], mean, std)
  return ProbeResult(metric_name='mean_top1_accuracy', best_epoch=best_epoch,
                     validation_metrics=validation_metrics,
                     test_metric=float(test_accuracy.mean()), test_per_label=test_accuracy,
                     weights=weights, bias=bias)


@dataclasses.dataclass
class RegressionResult:
  """Test scores of a linear regression probe after every epoch (epochs numbered from 0)."""
  test_pearson_r: np.ndarray  # [E, T] Pearson r of every target (NaN where undefined)
  test_mse: np.ndarray  # [E, T] mean squared error of every target

  @property
  def mean_pearson_r(self) -> np.ndarray:
    """[E] Pearson r averaged over the targets where it is defined."""
    return np.array([metrics.mean_over_defined(r) for r in self.test_pearson_r])

  @property
  def mean_mse(self) -> np.ndarray:
    """[E] MSE averaged over the targets."""
    return self.test_mse.mean(axis=1)

  @property
  def best_epoch_on_test(self) -> int:
    """The epoch of the highest mean r ON TEST (first on ties): what the official script reports
    as its best; a selection on the test split, so not a held-out number."""
    mean_r = self.mean_pearson_r
    return int(np.argmax(np.where(np.isnan(mean_r), -np.inf, mean_r)))


def train_regression_probe(train_x: Features, train_y: np.ndarray, test_x: Features,
                           test_y: np.ndarray, *, epochs: int = 15, batch_size: int = 64,
                           learning_rate: float = 1e-3, seed: int = 0, standardize: bool = False,
                           chunk_bytes: int = feature_store.DEFAULT_CHUNK_BYTES
                           ) -> RegressionResult:
  """Linear regression of real-valued targets (the official `attribute_regression.py`).

  Args:
    train_x, test_x: [N_split, D] frozen features, arrays or streamed.
    train_y, test_y: [N_split, T] float targets (LFW: 73 attribute scores).
    epochs, batch_size, learning_rate: Adam on the MSE over all B x T entries of a batch; every
      epoch is a new shuffle and keeps its last, partial batch (as a PyTorch DataLoader with
      shuffle=True does).
    seed: initialisation and per-epoch shuffling.
    standardize, chunk_bytes: as in `train_attribute_probe` (the official script trains on raw
      features).

  Returns:
    The test Pearson r and MSE of every target after every epoch.
  """
  checks.check_positive(epochs=epochs, batch_size=batch_size)
  chunks, _, _, _ = _prepare_features({'train_x': train_x, 'test_x': test_x}, standardize,
                                      batch_size=batch_size, chunk_bytes=chunk_bytes)
  targets = {}
  for name, y, x in (('train_y', train_y, chunks['train_x']), ('test_y', test_y, chunks['test_x'])):
    y = np.asarray(y, np.float32)
    if y.ndim != 2 or y.shape[0] != x.num_rows:
      raise ValueError(f'{name} must be [N={x.num_rows}, T] targets, got shape {y.shape}')
    checks.check_finite(name, y)
    targets[name] = y
  if targets['train_y'].shape[1] != targets['test_y'].shape[1]:
    raise ValueError(f'train_y and test_y must have the same number of targets, got '
                     f'{targets["train_y"].shape[1]} and {targets["test_y"].shape[1]}')
  history = []  # (r [T], mse [T]) after every epoch

  def score_on_test(predictions: np.ndarray) -> float:
    history.append((metrics.pearson_r(predictions, targets['test_y']),
                    metrics.mean_squared_error(predictions, targets['test_y'])))
    return metrics.mean_over_defined(history[-1][0])

  per_example_mse = lambda predictions, y: jnp.mean((predictions - y) ** 2, axis=-1)
  _fit_linear_probe(chunks['train_x'], targets['train_y'], chunks['test_x'], score_on_test,
                    num_outputs=targets['train_y'].shape[1], per_example_loss=per_example_mse,
                    learning_rate=learning_rate, epochs=epochs, batch_size=batch_size, seed=seed,
                    scored_split='test mean r')
  return RegressionResult(test_pearson_r=np.stack([r for r, _ in history]),
                          test_mse=np.stack([mse for _, mse in history]))
