"""Frozen features of a whole split, in order, with the labels that travel with them."""

from __future__ import annotations

from typing import Callable, Iterator

import grain
import jax
import numpy as np

from jdiffrep.data import pipeline
from jdiffrep.data import registry


def attribute_matrix(attributes) -> np.ndarray:
  """Binary attributes as [N, A] bool, from an array or a dict of per-attribute arrays."""
  if isinstance(attributes, dict):
    return np.stack([np.asarray(attributes[k]) for k in sorted(attributes)], axis=-1).astype(bool)
  return np.asarray(attributes).astype(bool)


def iterate_split(dataset_config, split: str, batch_size: int,
                  limit: int | None = None) -> Iterator[dict]:
  """Unshuffled, unflipped batches of `split` (the last one may be smaller)."""
  spec = registry.get_spec(dataset_config.name)
  source = registry.open_source(dataset_config, split)
  dataset = grain.MapDataset.source(source)
  if limit is not None:
    dataset = dataset[:min(limit, len(source))]

  def preprocess(example):
    image = registry.crop_and_resize(np.asarray(example['image']), spec, dataset_config.resolution)
    return {**example, 'image': pipeline.scale_to_unit_interval(image)}

  dataset = dataset.map(preprocess).batch(batch_size, drop_remainder=False)
  read = grain.ReadOptions(num_threads=dataset_config.read_threads, prefetch_buffer_size=2)
  yield from dataset.to_iter_dataset(read)


def extract(feature_fn: Callable[[jax.Array], dict], dataset_config, split: str, *,
            batch_size: int = 256, limit: int | None = None) -> dict:
  """Runs `feature_fn` ([B, H, W, C] -> {name: [B, D]}, jitted) over a split, in one pass.

  Batches are padded to `batch_size`, so `feature_fn` compiles once. Returns numpy
  `features` {name: [N, D]}, `attributes` [N, A] (when the dataset has them) and
  `labels` {name: [N]}.
  """
  features, attributes, labels = {}, [], {}
  for batch in iterate_split(dataset_config, split, batch_size, limit):
    images = batch['image']
    count = images.shape[0]
    if count < batch_size:
      images = np.concatenate([images, np.zeros((batch_size - count, *images.shape[1:]),
                                                images.dtype)])
    for name, value in jax.device_get(feature_fn(images)).items():
      features.setdefault(name, []).append(np.asarray(value, np.float32)[:count])
    if 'attributes' in batch:
      attributes.append(attribute_matrix(batch['attributes']))
    for key, value in batch.get('labels', {}).items():
      labels.setdefault(key, []).append(np.asarray(value))
  result = {'features': {k: np.concatenate(v) for k, v in features.items()},
            'labels': {k: np.concatenate(v) for k, v in labels.items()}}
  if attributes:
    result['attributes'] = np.concatenate(attributes)
  return result
