"""TFDS builder for the procedural `shapes` dataset (see `jdiffrep.data.shapes`).

Prepared once into `data_dir` as array_record files, then read with random access:

  builder = prepare_shapes('/tmp/tfds', '32')
  train = builder.as_data_source('train')  # train[i] == generate_example(0, 'train', i, 32)

Examples are stored in index order (shuffling is left to the input pipeline), so record `i` of a
split is exactly `shapes.generate_example(config.seed, split, i, config.resolution)`.
"""

from __future__ import annotations

import dataclasses
import time

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from jdiffrep import images
from jdiffrep.data import shapes

FILE_FORMAT = 'array_record'


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Resolution, split sizes and seed of one `shapes` variant."""
  resolution: int = 32
  num_train: int = 50_000
  num_validation: int = 5_000
  num_test: int = 10_000
  seed: int = 0


class Shapes(tfds.core.GeneratorBasedBuilder):
  """One object (shape, size, position, shade, texture) on a coloured background."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Position jitter +-4 px (was +-2) at 32 px.'}
  BUILDER_CONFIGS = [
      ShapesConfig(name='32', description='32x32 images.', resolution=32),
      ShapesConfig(name='64', description='64x64 images.', resolution=64),
      # Small variants for smoke tests and unit tests: seconds to prepare.
      ShapesConfig(name='32_small', description='32x32 images, 512/64/64 examples.',
                   resolution=32, num_train=512, num_validation=64, num_test=64),
      ShapesConfig(name='64_small', description='64x64 images, 512/64/64 examples.',
                   resolution=64, num_train=512, num_validation=64, num_test=64),
  ]
  # No code-side resources (checksums, README) to look up. Without this, tfds 4.9.10 looks up
  # the module's path via the `importlib_resources` backport, which Python >= 3.9 lacks.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    resolution = self.builder_config.resolution
    labels = {name: tfds.features.ClassLabel(names=values)
              for name, values in shapes.CATEGORICAL_ATTRIBUTES.items()}
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            'Procedural images of one object on a plain background, with ground-truth '
            'attributes lost at different diffusion noise levels: coarse (background, '
            f'position, size, shape) and fine (shade, texture). Binary attributes: '
            f'{", ".join(shapes.BINARY_ATTRIBUTE_NAMES)}.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(resolution, resolution, 3), encoding_format='png'),
            'labels': tfds.features.FeaturesDict(labels),
            'attributes': tfds.features.Tensor(
                shape=(len(shapes.BINARY_ATTRIBUTE_NAMES),), dtype=np.bool_),
        }),
        supervised_keys=None,
        disable_shuffling=True,  # record i is example i.
        citation='Generated procedurally by jdiffrep (jdiffrep/data/shapes.py).',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    return {
        'train': self._generate_examples('train', config.num_train),
        'validation': self._generate_examples('validation', config.num_validation),
        'test': self._generate_examples('test', config.num_test),
    }

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    for index in range(num_examples):
      example = shapes.generate_example(config.seed, split, index, config.resolution)
      # Encoded here with PIL: tfds would encode a NumPy image with TensorFlow.
      yield index, {**example, 'image': images.encode_png(example['image'])}


def prepare_shapes(data_dir: str, config: str | ShapesConfig = '32') -> Shapes:
  """Builds `shapes` (config name or ShapesConfig) into `data_dir` unless already there.

  Idempotent: when the dataset is prepared, this only reads its metadata. Returns the builder;
  read with `builder.as_data_source(split)`.
  """
  builder = Shapes(data_dir=data_dir, config=config, file_format=FILE_FORMAT)
  if builder.is_prepared():
    logging.info('shapes/%s already prepared in %s.', builder.builder_config.name,
                 builder.data_dir)
    return builder
  start = time.perf_counter()
  logging.info('Preparing shapes/%s into %s ...', builder.builder_config.name, builder.data_dir)
  builder.download_and_prepare(
      file_format=FILE_FORMAT,
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  logging.info('Prepared shapes/%s in %.1f s.', builder.builder_config.name,
               time.perf_counter() - start)
  return builder
