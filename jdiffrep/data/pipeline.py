"""Grain input pipeline: TFDS data source -> shuffle -> crop/resize, flip, scale -> batch.

Each JAX process reads its own slice of the split (`tfds.split_for_jax_process`) and yields its
share of the global batch as NumPy arrays; the trainer assembles the global array. The iterator
is checkpointable (`get_state` / `set_state`, or orbax through `grain.checkpoint`), so a resumed
run sees exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import functools
from typing import Iterator

import grain
import numpy as np

from jdiffrep.data import registry


def scale_to_unit_interval(image: np.ndarray) -> np.ndarray:
  """uint8 [..., C] in [0, 255] -> float32 in [-1, 1]."""
  return image.astype(np.float32) / 127.5 - 1.0


def to_uint8(image: np.ndarray) -> np.ndarray:
  """float [..., C] in [-1, 1] -> uint8 in [0, 255] (clipped)."""
  return np.clip(np.round((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def preprocess(example: dict, *, spec: registry.DatasetSpec, resolution: int) -> dict:
  """One record -> example: image [R, R, C] float32 in [-1, 1] (cropped, resized), rest kept."""
  image = registry.crop_and_resize(np.asarray(example['image']), spec, resolution)
  return {**example, 'image': scale_to_unit_interval(image)}


def _preprocess(example: dict, rng: np.random.Generator, *, spec: registry.DatasetSpec,
                resolution: int, random_flip: bool) -> dict:
  """`preprocess`, then a horizontal flip with probability 1/2 when `random_flip`."""
  example = preprocess(example, spec=spec, resolution=resolution)
  if random_flip and rng.random() < 0.5:
    example['image'] = example['image'][:, ::-1]
  return example


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f'batch_size={global_batch_size} must be divisible by the number of JAX '
                     f'processes ({process_count}).')
  return global_batch_size // process_count


def make_train_iterator(dataset_config, *, global_batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """Endless, shuffled (reshuffled every epoch) iterator over this process's training batches.

  Yields dicts of NumPy arrays; `image` is [global_batch_size / process_count, R, R, C]
  float32 in [-1, 1]. Deterministic for a given seed and process layout.
  """
  spec = registry.get_spec(dataset_config.name)
  if dataset_config.random_flip and not spec.flip_preserves_labels:
    raise ValueError(f'config.dataset.random_flip=True would corrupt the labels of {spec.name!r} '
                     '(a flip changes left/right attributes); set config.dataset.random_flip=False.')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  split = tfds.split_for_jax_process(spec.train_split, process_index=process_index,
                                     process_count=process_count, drop_remainder=True)
  source = registry.open_source(dataset_config, split)
  batch_size = per_process_batch_size(global_batch_size, process_count)
  if len(source) < batch_size:
    raise ValueError(f'{spec.name} split {split!r} has {len(source)} examples, fewer than one '
                     f'per-process batch ({batch_size}); lower config.batch_size.')
  preprocess = functools.partial(_preprocess, spec=spec, resolution=dataset_config.resolution,
                                 random_flip=dataset_config.random_flip)
  dataset = (grain.MapDataset.source(source)
             .seed(seed)
             .shuffle()
             .repeat(None)
             .random_map(preprocess)
             .batch(batch_size, drop_remainder=True))
  read_options = grain.ReadOptions(num_threads=dataset_config.read_threads,
                                   prefetch_buffer_size=dataset_config.prefetch_batches)
  return iter(dataset.to_iter_dataset(read_options))


def iterate_split(dataset_config, split: str, batch_size: int,
                  limit: int | None = None) -> Iterator[dict]:
  """Unshuffled, unflipped batches of `split` in record order (the last may be smaller)."""
  spec = registry.get_spec(dataset_config.name)
  source = registry.open_source(dataset_config, split)
  dataset = grain.MapDataset.source(source)
  if limit is not None:
    dataset = dataset[:min(limit, len(source))]
  dataset = dataset.map(functools.partial(preprocess, spec=spec,
                                          resolution=dataset_config.resolution))
  dataset = dataset.batch(batch_size, drop_remainder=False)
  read_options = grain.ReadOptions(num_threads=dataset_config.read_threads,
                                   prefetch_buffer_size=2)
  yield from dataset.to_iter_dataset(read_options)


def first_images(dataset_config, num_images: int, split: str | None = None) -> np.ndarray:
  """The first `num_images` images of `split` (default: the eval split), unflipped.

  [N, R, R, C] float32 in [-1, 1]; the same images every call, for previews that compare.
  """
  split = split or registry.get_spec(dataset_config.name).eval_split
  return next(iterate_split(dataset_config, split, num_images, limit=num_images))['image']
