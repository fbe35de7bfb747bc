"""Frozen features of whole splits, in order, with the labels that travel with them."""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

from absl import logging
import jax
import numpy as np

from jdiffrep.data import pipeline
from jdiffrep.evaluate import feature_store

SPLITS = ('train', 'validation', 'test')  # the keys of the probes' three splits
MIRRORED_TRAIN = 'train_mirrored'  # the key of the horizontally flipped train images' features


def attribute_matrix(attributes) -> np.ndarray:
  """Binary attributes as [N, A] bool, from an array or a dict of per-attribute arrays."""
  if isinstance(attributes, dict):
    return np.stack([np.asarray(attributes[k]) for k in sorted(attributes)], axis=-1).astype(bool)
  return np.asarray(attributes).astype(bool)


def extract(feature_fn: Callable[[jax.Array], dict], dataset_config, splits: Mapping[str, str],
            store: feature_store.FeatureStore, *, batch_size: int = 256,
            limits: Mapping[str, int | None] | None = None, mirrored: Sequence[str] = (),
            log_every_seconds: float = 30.0) -> dict:
  """Runs `feature_fn` ([B, H, W, C] -> {name: [B, D]}, jitted) over every split, in one pass each.

  Args:
    splits: {key: split name}, e.g. {'train': 'train', 'validation': 'train[90%:]', ...}.
    store: holds the features: in memory up to its budget, the rest in its spill files, so a
      split of any size can be extracted (CelebA's pixels alone are 8 GB).
    limits: {key: the first images of that split to use, None for all}.
    mirrored: keys whose images are flipped horizontally before `feature_fn` (e.g. a
      'train_mirrored' key naming the train split again: the views a flipping probe trains on).

  Batches are padded to `batch_size`, so `feature_fn` compiles once. Returns {key: {'features':
  {name: [N, D] array or FeatureFile}, 'labels': {name: [N]}, 'attributes': [N, A] bool and
  'regression_targets': [N, T] float32 when the dataset has them}}. All splits are extracted
  before any is assembled, so the store's budget bounds the three together.
  """
  limits = limits or {}
  extracted = {key: _extract_split(feature_fn, dataset_config, key, split, store,
                                   batch_size=batch_size, limit=limits.get(key),
                                   mirror=key in mirrored, log_every_seconds=log_every_seconds)
               for key, split in splits.items()}
  if store.spilled:
    logging.info('Features streamed from disk (over config.evaluate.feature_memory_mb): %s.',
                 ', '.join(f'{key}/{name}' for key, name in store.spilled))
  for key, result in extracted.items():
    result['features'] = {name: store.finish((key, name)) for name in result['features']}
  return extracted


def _extract_split(feature_fn, dataset_config, key: str, split: str,
                   store: feature_store.FeatureStore, *, batch_size: int, limit: int | None,
                   mirror: bool, log_every_seconds: float) -> dict:
  """One split's features into `store` under (key, name); returns its labels and the names."""
  names, attributes, targets, labels = [], [], [], {}
  start = last_log = time.monotonic()
  done = 0
  for batch in pipeline.iterate_split(dataset_config, split, batch_size, limit):
    images = batch['image'][:, :, ::-1] if mirror else batch['image']  # [B, H, W, C]
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
      if name not in names:
        names.append(name)
      store.append((key, name), np.asarray(value, np.float32)[:count])
    if 'attributes' in batch:
      attributes.append(attribute_matrix(batch['attributes']))
    if 'regression_targets' in batch:
      targets.append(np.asarray(batch['regression_targets'], np.float32))
    for label, value in batch.get('labels', {}).items():
      labels.setdefault(label, []).append(np.asarray(value))
  logging.info('Features of %s: %d images in %.1f s.', split, done, time.monotonic() - start)
  result = {'features': dict.fromkeys(names),
            'labels': {k: np.concatenate(v) for k, v in labels.items()}}
  if attributes:
    result['attributes'] = np.concatenate(attributes)
  if targets:
    result['regression_targets'] = np.concatenate(targets)
  return result
