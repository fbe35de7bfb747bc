"""The reader of counterfactuals: a small CNN trained on a dataset's labels (SPEC section 5).

One softmax head per categorical attribute (or per binary attribute, as a 2-class head); it reads
which attribute values A, B and every counterfactual show (`counterfactual.attribute_change_rates`).
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, NamedTuple

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

# images [N, H, W, C] in [-1, 1] -> {attribute name: predicted class index [N] int}
ClassifyFn = Callable[[np.ndarray], dict[str, np.ndarray]]
# images [N, H, W, C] in [-1, 1] -> {attribute name: class probabilities [N, K] float}
ProbabilitiesFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class AttributeCNN(nn.Module):
  """Small CNN, one softmax head per categorical attribute. [B, H, W, C] -> {name: logits [B, K]}.

  The first conv (4x4, stride 2) sees every pixel, so 1-px textures survive the downsampling; the
  flattened final map keeps where things are (position).
  """
  num_classes: Mapping[str, int]
  widths: tuple[int, ...] = (32, 32, 64)
  hidden: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    x = nn.relu(nn.Conv(self.widths[0], (4, 4), strides=(2, 2))(x))
    for width in self.widths[1:]:
      x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2))(x))
    x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    return {name: nn.Dense(k, name=f'head_{name}')(x) for name, k in self.num_classes.items()}


class TrainedClassifier(NamedTuple):
  """`classify(images [N, H, W, C] in [-1, 1]) -> {attribute: class index [N]}`, the class
  probabilities behind it, and its test accuracy per attribute (None when no test data was
  given)."""
  classify: ClassifyFn
  test_accuracy: dict[str, float] | None
  probabilities: ProbabilitiesFn | None = None


def _classifier_loss(model: AttributeCNN, params, images, labels: dict) -> jax.Array:
  """Sum over attributes of the mean softmax cross-entropy."""
  logits = model.apply({'params': params}, images)
  return sum(optax.softmax_cross_entropy_with_integer_labels(logits[name], labels[name]).mean()
             for name in logits)


def _make_train_step(model: AttributeCNN, optimizer: optax.GradientTransformation, *,
                     batch_size: int):
  """Jitted Adam step on a batch drawn (with replacement) from the device-resident data.

  A Python loop over this step: on XLA:CPU a `lax.scan` over conv gradients ran ~25x slower here.
  """
  @jax.jit
  def train_step(params, opt_state, images, labels, key):
    index = jax.random.randint(key, (batch_size,), 0, images.shape[0])
    batch_labels = {name: y[index] for name, y in labels.items()}
    loss, grads = jax.value_and_grad(
        lambda p: _classifier_loss(model, p, images[index], batch_labels))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step


def _batched_probabilities(model: AttributeCNN, params, batch_size: int = 256
                           ) -> ProbabilitiesFn:
  """Class probabilities in fixed-size, zero-padded batches, so the jitted core compiles once."""
  # params is an argument, not a closed-over constant (`evaluators.base.Context.feature_function`).
  predict = jax.jit(lambda p, x: {name: jax.nn.softmax(logits, axis=-1)
                                  for name, logits in model.apply({'params': p}, x).items()})

  def probabilities(images) -> dict[str, np.ndarray]:
    images = np.asarray(images, np.float32)
    outputs = []
    for start in range(0, images.shape[0], batch_size):
      batch = images[start:start + batch_size]
      count = batch.shape[0]
      padded = np.concatenate([batch, np.zeros((batch_size - count, *batch.shape[1:]),
                                               np.float32)])
      outputs.append({k: np.asarray(v)[:count] for k, v in predict(params, padded).items()})
    return {name: np.concatenate([o[name] for o in outputs]) for name in model.num_classes}

  return probabilities


def classifier_accuracy(classify: ClassifyFn, images, labels: Mapping[str, np.ndarray]
                        ) -> dict[str, float]:
  """Top-1 accuracy per attribute of `classify` on labelled images."""
  predictions = classify(images)
  return {name: float(np.mean(predictions[name] == np.asarray(y))) for name, y in labels.items()}


def train_attribute_classifier(train_images, train_labels: Mapping[str, np.ndarray],
                               num_classes: Mapping[str, int], *, steps: int = 2000,
                               batch_size: int = 32, learning_rate: float = 2e-3, seed: int = 0,
                               test_images=None,
                               test_labels: Mapping[str, np.ndarray] | None = None,
                               log_every_seconds: float = 30.0) -> TrainedClassifier:
  """Trains `AttributeCNN` with Adam on labelled images, to read counterfactuals.

  Args:
    train_images: [N, H, W, C] in [-1, 1].
    train_labels: {attribute: class index [N] int}; num_classes: {attribute: K}.
    steps, batch_size, learning_rate: Adam on the summed cross-entropy, batches drawn uniformly
      with replacement; the learning rate decays to 0 along a cosine.
    seed: initialisation and batch draws.
    test_images, test_labels: optional held-out data for `test_accuracy`.
    log_every_seconds: how often training logs its step and loss.

  Returns:
    `TrainedClassifier(classify, test_accuracy)`.
  """
  if set(train_labels) != set(num_classes):
    raise ValueError(f'train_labels and num_classes must name the same attributes; got '
                     f'{sorted(train_labels)} and {sorted(num_classes)}.')
  if (test_images is None) != (test_labels is None):
    raise ValueError('Give both test_images and test_labels, or neither.')
  model = AttributeCNN(num_classes=dict(num_classes))
  init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
  images = jnp.asarray(train_images, jnp.float32)
  labels = {name: jnp.asarray(y, jnp.int32) for name, y in train_labels.items()}
  params = jax.jit(model.init)(init_key, images[:1])['params']
  optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  opt_state = optimizer.init(params)
  train_step = _make_train_step(model, optimizer, batch_size=batch_size)
  start = last_log = time.time()
  for step in range(steps):
    params, opt_state, loss = train_step(params, opt_state, images, labels,
                                         jax.random.fold_in(train_key, step))
    if time.time() - last_log >= log_every_seconds:
      last_log = time.time()
      logging.info('Attribute classifier: step %d/%d, batch loss %.4f (%.0f s).', step + 1, steps,
                   float(loss), last_log - start)
  logging.info('Attribute classifier: %d steps in %.1fs, final batch loss %.4f.', steps,
               time.time() - start, float(loss))
  probabilities = _batched_probabilities(model, params)
  classify = lambda images: {name: p.argmax(axis=-1) for name, p in probabilities(images).items()}
  test_accuracy = (None if test_images is None else
                   classifier_accuracy(classify, test_images, test_labels))
  return TrainedClassifier(classify=classify, test_accuracy=test_accuracy,
                           probabilities=probabilities)
