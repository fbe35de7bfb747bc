"""Frozen features of a whole split, in order, with the labels that travel with them."""

from __future__ import annotations

import time
from typing import Callable

from absl import logging
import jax
import numpy as np

from jdiffrep.data import pipeline


def attribute_matrix(attributes) -> np.ndarray:
  """Binary attributes as [N, A] bool, from an array or a dict of per-attribute arrays."""
  if isinstance(attributes, dict):
    return np.stack([np.asarray(attributes[k]) for k in sorted(attributes)], axis=-1).astype(bool)
  return np.asarray(attributes).astype(bool)


def extract(feature_fn: Callable[[jax.Array], dict], dataset_config, split: str, *,
            batch_size: int = 256, limit: int | None = None,
            log_every_seconds: float = 30.0) -> dict:
  """Runs `feature_fn` ([B, H, W, C] -> {name: [B, D]}, jitted) over a split, in one pass.

  Batches are padded to `batch_size`, so `feature_fn` compiles once. Returns numpy
  `features` {name: [N, D]}, `attributes` [N, A] (when the dataset has them) and
  `labels` {name: [N]}.
  """
  features, attributes, labels = {}, [], {}
  start = last_log = time.monotonic()
  done = 0
  for batch in pipeline.iterate_split(dataset_config, split, batch_size, limit):
    images = batch['image']
    count = images.shape[0]
    done += count
    if time.monotonic() - last_log >= log_every_seconds:
      last_log = time.monotonic()
      logging.info('Features of %s: %d images so far (%.0f images/s).', split, done,
                   done / (last_log - start))
    if count < batch_size:
      images = np.concatenate([images, np.zeros((batch_size - count, *images.shape[1:]),
                                                images.dtype)])
    for name, value in jax.device_get(feature_fn(images)).items():
      features.setdefault(name, []).append(np.asarray(value, np.float32)[:count])
    if 'attributes' in batch:
      attributes.append(attribute_matrix(batch['attributes']))
    for key, value in batch.get('labels', {}).items():
      labels.setdefault(key, []).append(np.asarray(value))
  logging.info('Features of %s: %d images in %.1f s.', split, done, time.monotonic() - start)
  result = {'features': {k: np.concatenate(v) for k, v in features.items()},
            'labels': {k: np.concatenate(v) for k, v in labels.items()}}
  if attributes:
    result['attributes'] = np.concatenate(attributes)
  return result
