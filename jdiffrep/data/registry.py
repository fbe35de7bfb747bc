"""Datasets a config can name, where their prepared files live, and how to open them.

Every dataset is read the same way: a prepared TFDS dataset (array_record files) opened with
`tfds.data_source`. The built-in `shapes` dataset is generated on first use; the real ones must
be prepared once, and opening one that is not stops with a message saying how.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from absl import logging
import numpy as np


class DatasetNotPreparedError(FileNotFoundError):
  """The dataset a config names has no prepared files in the data directory."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the input pipeline needs to know about one dataset.

  Attributes:
    name: the value of `config.dataset.name`.
    tfds_name: the TFDS builder name (with config), e.g. 'celeb_a' or 'shapes/32'.
    train_split / eval_split: TFDS split names.
    crop: optional (top, left, height, width) crop applied before resizing.
    flip_preserves_labels: False when a horizontal flip would change a label (e.g. left/right).
    prepare_hint: the command(s) that prepare the dataset, shown when it is missing.
    prepare: for generated datasets, prepares them into a data dir on first use.
  """
  name: str
  tfds_name: str
  train_split: str = 'train'
  eval_split: str = 'test'
  validation_split: str | None = None  # None: probes hold out the last 10% of train
  attribute_names: tuple[str, ...] | None = None  # names of the binary attributes, if any
  crop: tuple[int, int, int, int] | None = None
  flip_preserves_labels: bool = True
  prepare_hint: str = ''
  prepare: Callable[[str, str], None] | None = None  # (data_dir, tfds_config) -> None


def _prepare_shapes(data_dir: str, tfds_config: str) -> None:
  from jdiffrep.data import shapes_builder  # pylint: disable=g-import-not-at-top
  shapes_builder.prepare_shapes(data_dir, tfds_config)


def _shapes_attribute_names() -> tuple[str, ...]:
  from jdiffrep.data import shapes  # pylint: disable=g-import-not-at-top
  return tuple(shapes.BINARY_ATTRIBUTE_NAMES)


def _tfds_build_hint(tfds_name: str, manual: str = '') -> str:
  manual_flag = f' --manual_dir={manual}' if manual else ''
  return (f'tfds build {tfds_name} --data_dir={{data_dir}} --file_format=array_record'
          f'{manual_flag}  (needs the internet, or the files in the manual directory)')


DATASETS: dict[str, DatasetSpec] = {
    'shapes': DatasetSpec(
        name='shapes', tfds_name='shapes/{tfds_config}', eval_split='test',
        validation_split='validation', attribute_names=_shapes_attribute_names(),
        flip_preserves_labels=False,
        prepare_hint='generated automatically on first use', prepare=_prepare_shapes),
    'celeba': DatasetSpec(
        name='celeba', tfds_name='celeb_a', eval_split='test', validation_split='validation',
        # DiTi / PDAE / DiffAE crop of the aligned 178x218 images, then resize.
        crop=(57, 25, 128, 128),
        prepare_hint=_tfds_build_hint('celeb_a', manual='DIR_WITH_img_align_celeba.zip')),
    'ffhq': DatasetSpec(
        name='ffhq', tfds_name='ffhq', eval_split='train',
        prepare_hint='FFHQ has no TFDS builder yet: convert the 1024 px PNGs into an '
        'array_record TFDS dataset named ffhq under {data_dir} (see README, Datasets).'),
    'bedroom': DatasetSpec(
        name='bedroom', tfds_name='lsun/bedroom', eval_split='validation',
        prepare_hint=_tfds_build_hint('lsun/bedroom')),
    'cifar10': DatasetSpec(
        name='cifar10', tfds_name='cifar10', eval_split='test',
        prepare_hint=_tfds_build_hint('cifar10')),
}


def default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; valid names are {sorted(DATASETS)}.')
  return DATASETS[name]


def tfds_config_name(dataset_config) -> str:
  """The TFDS builder config: `config.dataset.tfds_config`, else the resolution ('32')."""
  return dataset_config.tfds_config or str(dataset_config.resolution)


def tfds_name(dataset_config) -> str:
  spec = get_spec(dataset_config.name)
  return spec.tfds_name.format(tfds_config=tfds_config_name(dataset_config))


def ensure_prepared(dataset_config) -> str:
  """Returns the data directory holding the dataset, preparing `shapes` if needed.

  Raises:
    DatasetNotPreparedError: the dataset is not prepared there; the message names the
      dataset, the directory searched and the command that prepares it.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  spec = get_spec(dataset_config.name)
  data_dir = dataset_config.data_dir or default_data_dir()
  name = tfds_name(dataset_config)
  if spec.prepare is not None:
    spec.prepare(data_dir, tfds_config_name(dataset_config))
    return data_dir
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
        f'Dataset {spec.name!r} (TFDS {name!r}) is not prepared: searched {builder.data_dir}.\n'
        f'Prepare it once with:\n  {spec.prepare_hint.format(data_dir=data_dir)}\n'
        'or point config.dataset.data_dir (or $TFDS_DATA_DIR) at the directory that holds it.')
  return data_dir


def open_source(dataset_config, split: str):
  """Opens `split` (a TFDS split string, slices allowed) as a random-access data source."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = ensure_prepared(dataset_config)
  logging.info('Opening %s split %s from %s', tfds_name(dataset_config), split, data_dir)
  return tfds.data_source(tfds_name(dataset_config), split=split, data_dir=data_dir,
                          download=False)


def crop_and_resize(image: np.ndarray, spec: DatasetSpec, resolution: int) -> np.ndarray:
  """[H, W, C] uint8 -> [resolution, resolution, C] uint8: the dataset's crop, then resize."""
  if spec.crop is not None:
    top, left, height, width = spec.crop
    image = image[top:top + height, left:left + width]
  if image.shape[0] != resolution or image.shape[1] != resolution:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    image = np.asarray(Image.fromarray(image).resize((resolution, resolution),
                                                     Image.Resampling.BICUBIC))
  return image
