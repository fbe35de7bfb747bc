r"""Input-pipeline throughput on a prepared 64x64 set (CelebA format, synthetic pixels).

  PYTHONPATH=. python benchmarks/data_pipeline.py [--num_images=2048] [--batches=40] \
      [--out=benchmarks/results/cpu_data_pipeline.jsonl] [--note='...']

Writes `--num_images` aligned-CelebA-sized JPEGs (178x218, smooth colour fields plus noise, so
they decode and compress like photos), the attribute and partition files, runs
`jdiffrep.prepare --dataset=celeba` on them (64x64 PNGs), then times the training iterator
(`pipeline.make_train_iterator`: shuffle, PNG decode, flip, scale, batch) after two warm-up
batches. Appends one JSON line with both rates, the date, the command and the machine.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np
from PIL import Image

from jdiffrep import config as config_lib
from jdiffrep import prepare
from jdiffrep.data import pipeline
from jdiffrep.data import sources

_NUM_IMAGES = flags.DEFINE_integer('num_images', 2048, 'Images to write and prepare.')
_BATCHES = flags.DEFINE_integer('batches', 40, 'Timed batches.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, "Batch size (the CelebA config's).")
_READ_THREADS = flags.DEFINE_integer('read_threads', 4, 'config.dataset.read_threads.')
_OUT = flags.DEFINE_string(
    'out',
    'benchmarks/results/cpu_data_pipeline.jsonl',
    'JSONL file to append the result to ("" to skip).',
)
_NOTE = flags.DEFINE_string('note', '', 'Machine note stored with the result.')


def write_celeba_like(root: str, num_images: int, seed: int = 0) -> None:
  """`num_images` 178x218 JPEGs with CelebA's attribute and partition files, all in train."""
  rng = np.random.default_rng(seed)
  image_dir = os.path.join(root, 'img_align_celeba')
  os.makedirs(image_dir)
  y, x = np.mgrid[0:218, 0:178] / 218.0
  names = [f'{i + 1:06d}.jpg' for i in range(num_images)]
  for name in names:
    a, b, c = rng.uniform(0, 255, (3, 3))
    field = np.stack([a[0] + a[1] * x + a[2] * y, b[0] + b[1] * x * y, c[0] + c[1] * y], -1)
    image = np.clip(field / 3 + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(os.path.join(image_dir, name), quality=90)
  attributes = rng.integers(0, 2, (num_images, 40)) * 2 - 1
  with open(os.path.join(root, 'list_attr_celeba.txt'), 'w') as f:
    f.write(f'{num_images}\n{" ".join(sources.CELEBA_ATTRIBUTE_NAMES)}\n')
    f.writelines(f'{n} {" ".join(map(str, a))}\n' for n, a in zip(names, attributes))
  with open(os.path.join(root, 'list_eval_partition.txt'), 'w') as f:
    f.writelines(f'{n} 0\n' for n in names)


def main(argv) -> None:
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    source, data_dir = os.path.join(tmp, 'celeba'), os.path.join(tmp, 'tfds')
    write_celeba_like(source, _NUM_IMAGES.value)
    start = time.perf_counter()
    result = prepare.prepare('celeba', source, data_dir)
    prepare_seconds = time.perf_counter() - start

    dataset_config = config_lib.base_config().dataset
    dataset_config.update(
        name='celeba', resolution=64, data_dir=data_dir, read_threads=_READ_THREADS.value
    )
    iterator = pipeline.make_train_iterator(
        dataset_config, global_batch_size=_BATCH_SIZE.value, seed=0
    )
    for _ in range(2):
      next(iterator)
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
      batch = next(iterator)
    seconds = time.perf_counter() - start
    assert batch['image'].shape == (_BATCH_SIZE.value, 64, 64, 3)

  record = {
      'date': datetime.date.today().isoformat(),
      'command': 'PYTHONPATH=. python ' + shlex.join(sys.argv),
      'device': f'CPU ({platform.machine()}), {os.cpu_count()} cores visible',
      'note': _NOTE.value,
      'jax': jax.__version__,
      'num_images': result.num_examples['train'],
      'prepare_workers': os.cpu_count(),
      'prepare_images_per_sec': round(result.num_examples['train'] / prepare_seconds, 1),
      'batch_size': _BATCH_SIZE.value,
      'read_threads': _READ_THREADS.value,
      'timed_batches': _BATCHES.value,
      'pipeline_images_per_sec': round(_BATCHES.value * _BATCH_SIZE.value / seconds, 1),
  }
  print(json.dumps(record))
  if _OUT.value:
    with open(_OUT.value, 'a') as f:
      f.write(json.dumps(record) + '\n')


if __name__ == '__main__':
  app.run(main)
