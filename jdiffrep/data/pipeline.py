"""Grain input pipeline: TFDS data source -> shuffle -> crop/resize, flip, scale -> batch.

One global, seeded order of record indices is cut into global batches; each JAX process keeps
its rows of every global batch (process p rows [p * B/P, (p+1) * B/P)) and reads only those
records. The trainer assembles the global array with `jax.make_array_from_process_local_data`,
so the global batch at step s, and each example's random flip, are the same whatever the number
of processes. The iterator is checkpointable (`get_state` / `set_state`, or orbax through
`grain.checkpoint`), so a resumed run sees exactly the batches an uninterrupted one would have
seen.
"""

from __future__ import annotations

import functools
import re
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
  """One record -> example: image [R, R, C] float32 in [-1, 1] (resized if stored at another
  resolution, with the dataset's filter), rest kept."""
  image = registry.resize_image(np.asarray(example['image']), resolution, spec.resize)
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
  float32 in [-1, 1]: rows [p * B/P, (p+1) * B/P) of the global batch, which depends only on
  the seed (not on the process layout).
  """
  spec = registry.get_spec(dataset_config.name)
  if dataset_config.random_flip and not spec.flip_preserves_labels:
    raise ValueError(f'config.dataset.random_flip=True would corrupt the labels of {spec.name!r} '
                     '(a flip changes left/right attributes); set config.dataset.random_flip=False.')
  batch_size = per_process_batch_size(global_batch_size, process_count)
  source = registry.open_source(dataset_config, spec.train_split)
  if len(source) < global_batch_size:
    raise ValueError(f'{spec.name} split {spec.train_split!r} has {len(source)} examples, fewer '
                     f'than one batch ({global_batch_size}); lower config.batch_size.')
  rows = slice(process_index * batch_size, (process_index + 1) * batch_size)
  read_rows = functools.partial(
      _read_rows, source=source, spec=spec, resolution=dataset_config.resolution,
      random_flip=dataset_config.random_flip, seed=seed)
  # (position in the global stream, record index) pairs: the position seeds each example's flip.
  dataset = (grain.MapDataset.range(len(source))
             .seed(seed)
             .shuffle()
             .repeat(None)
             .map_with_index(lambda position, record: (position, record))
             .batch(global_batch_size, drop_remainder=True)
             .map(lambda pairs: read_rows(pairs[0][rows], pairs[1][rows])))
  read_options = grain.ReadOptions(num_threads=dataset_config.read_threads,
                                   prefetch_buffer_size=dataset_config.prefetch_batches)
  return iter(dataset.to_iter_dataset(read_options))


def _read_rows(positions: np.ndarray, records: np.ndarray, *, source, spec: registry.DatasetSpec,
               resolution: int, random_flip: bool, seed: int) -> dict:
  """Reads and preprocesses `records` [N] into one batch; `positions` [N] seed the flips."""
  examples = [
      _preprocess(source[int(record)], np.random.default_rng((seed, int(position))), spec=spec,
                  resolution=resolution, random_flip=random_flip)
      for position, record in zip(positions, records)]
  return _stack_examples(examples)


def _stack_examples(examples: list[dict]) -> dict:
  """[{'image': [H, W, C], ...}] * N -> {'image': [N, H, W, C], ...} (nested dicts too)."""
  first = examples[0]
  if isinstance(first, dict):
    return {key: _stack_examples([e[key] for e in examples]) for key in first}
  return np.stack([np.asarray(e) for e in examples])


SOURCE_ORDER_SEED = 0  # the one permutation of a split kept in its source's file order
_PERCENT_SLICE = re.compile(r'(\w+)\[(?:(\d+)%)?:(?:(\d+)%)?\]')  # 'train[90%:]', 'train[:90%]'


def split_records(dataset_config, split: str, limit: int | None = None) -> grain.MapDataset:
  """The records of `split` (a split name or a percent slice such as 'train[90%:]'), at most
  `limit` of them.

  A dataset whose records keep its source's file order (`DatasetSpec.records_in_source_order`:
  an image folder is often sorted by class) is read, when sliced or limited, through one fixed
  random permutation of the whole split, so the probes' held-out 10% and a `limit` are samples
  of every class, not the last or first block of sorted files. Otherwise records come in order.
  """
  spec = registry.get_spec(dataset_config.name)
  match = _PERCENT_SLICE.fullmatch(split)
  if spec.records_in_source_order and (match or limit is not None):
    base = match.group(1) if match else split
    dataset = grain.MapDataset.source(registry.open_source(dataset_config, base))
    dataset = dataset.shuffle(seed=SOURCE_ORDER_SEED)
    if match:
      size = len(dataset)
      start, stop = int(match.group(2) or 0), int(match.group(3) or 100)
      dataset = dataset[size * start // 100:size * stop // 100]
  else:
    dataset = grain.MapDataset.source(registry.open_source(dataset_config, split))
  if limit is not None:
    dataset = dataset[:min(limit, len(dataset))]
  return dataset


def iterate_split(dataset_config, split: str, batch_size: int,
                  limit: int | None = None) -> Iterator[dict]:
  """Unshuffled, unflipped batches of `split` (`split_records`; the last may be smaller)."""
  spec = registry.get_spec(dataset_config.name)
  dataset = split_records(dataset_config, split, limit)
  dataset = dataset.map(functools.partial(preprocess, spec=spec,
                                          resolution=dataset_config.resolution))
  dataset = dataset.batch(batch_size, drop_remainder=False)
  read_options = grain.ReadOptions(num_threads=dataset_config.read_threads,
                                   prefetch_buffer_size=max(2, dataset_config.read_threads))
  yield from dataset.to_iter_dataset(read_options)


def first_images(dataset_config, num_images: int, split: str | None = None) -> np.ndarray:
  """The first `num_images` images of `split` (default: the eval split), unflipped.

  [N, R, R, C] float32 in [-1, 1]; the same images every call, for previews that compare.
  """
  split = split or registry.get_spec(dataset_config.name).eval_split
  return next(iterate_split(dataset_config, split, num_images, limit=num_images))['image']
