"""Datasets a config can name: one `DatasetSpec` per dataset, and how to open its prepared files.

`DATASETS` is the one table of what jdiffrep knows about a dataset: the reader of its original
files and TFDS's own builder of it (for `jdiffrep.prepare`), the prepared builder's name, the
default resolution, the crop and resize filter, the binary attribute names, the number of
real-valued regression targets and the splits.

Every dataset is read the same way: a prepared TFDS dataset (array_record files) opened as a
random-access data source. The built-in `shapes` dataset is generated on first use; the real
ones are converted once from their original files by `python -m jdiffrep.prepare` (into
`<data_dir>/jdiffrep_<name>/<config>/<version>/`, already cropped and resized), and opening one
that is not prepared stops with a message naming the directory searched and that command.
Data dirs go through `etils.epath`, so `gs://` works as well as local paths.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from absl import logging
from etils import epath
import numpy as np

# Version directory of every dataset written by `jdiffrep.prepare`.
PREPARED_VERSION = '1.0.0'
# PIL filters `jdiffrep.prepare` can resize with.
RESIZE_FILTERS = ('bilinear', 'bicubic')


class DatasetNotPreparedError(FileNotFoundError):
  """The dataset a config names has no prepared files in the data directory."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the input pipeline needs to know about one dataset.

  Attributes:
    name: the value of `config.dataset.name`.
    tfds_name: the TFDS builder name and config, formatted with `tfds_config` and
      `resolution`, e.g. 'shapes/{tfds_config}' or 'jdiffrep_celeba/{resolution}'.
    train_split / eval_split: TFDS split names.
    validation_split: the split the probes choose epochs and t on; None: 10% of train (the last
      10% of its records, or a fixed random 10% with `records_in_source_order`).
    attribute_names: names of the binary attributes, if the examples carry them.
    crop: the (top, left, height, width) box `jdiffrep.prepare` cuts from every original image
      before resizing; None: the centred square.
    center_crop_margin: when set (instead of `crop`), `jdiffrep.prepare` resizes every image's
      shorter side to int(resolution * margin) and then cuts the centred resolution square:
      torchvision's `Resize(int(size * margin))`, `CenterCrop(size)` (LFW's official 1.1).
    resize: the PIL filter `jdiffrep.prepare` (and the input pipeline, when asked for another
      resolution than the stored one) resizes with; 'bilinear' is torchvision's `Resize`, what the
      official DiTi code uses.
    flip_preserves_labels: False when a horizontal flip would change a label (e.g. left/right).
    prepare_hint: the command that prepares the dataset, shown when it is missing; formatted
      with `data_dir`, `resolution` and `tfds_config`.
    prepare: for generated datasets, prepares them into a data dir on first use.
    reader: for real datasets, the `jdiffrep.data.sources` function that scans the original
      files: (source_dir, *options) -> sources.Source.
    tfds_equivalent: (TFDS's own builder, its splits), read by `--source=tfds` when built.
    default_resolution: the resolution `jdiffrep.prepare` writes unless told otherwise.
    num_regression_targets: length of the float32 `regression_targets` vector every example
      carries (LFW's 73 attribute scores); 0: none. Their names are not kept here but in the
      prepared dataset's metadata (`regression_target_names`, read by `prepared_metadata`): they
      are read from the original file's header when preparing, so there is one copy, the file's,
      and whatever reads the targets opens the prepared dataset anyway.
  """
  name: str
  tfds_name: str
  train_split: str = 'train'
  eval_split: str = 'test'
  validation_split: str | None = None  # None: probes hold out 10% of train
  # Records in the source's file order (a folder may be sorted by class): slices and limits are
  # taken of a fixed random permutation (`pipeline.split_records`).
  records_in_source_order: bool = False
  attribute_names: tuple[str, ...] | None = None  # names of the binary attributes, if any
  crop: tuple[int, int, int, int] | None = None
  resize: str = 'bicubic'
  flip_preserves_labels: bool = True
  prepare_hint: str = ''
  prepare: Callable[[str, str], None] | None = None  # (data_dir, tfds_config) -> None
  reader: str | None = None
  tfds_equivalent: tuple[str, tuple[str, ...]] | None = None
  default_resolution: int = 64
  center_crop_margin: float | None = None
  num_regression_targets: int = 0

  def __post_init__(self):
    if self.center_crop_margin is not None and (self.crop is not None
                                                or self.center_crop_margin < 1.0):
      raise ValueError(f'Dataset {self.name!r}: center_crop_margin={self.center_crop_margin} '
                       'must be >= 1 and comes instead of a crop box.')

  @property
  def builder_name(self) -> str:
    """The prepared TFDS builder's name, e.g. 'jdiffrep_celeba'."""
    return self.tfds_name.split('/')[0]

  def read_source(self, source_dir: str, *args, **options):
    """Scans `source_dir` (the original files) with `reader`; returns a `sources.Source`."""
    from jdiffrep.data import sources  # pylint: disable=g-import-not-at-top
    if self.reader is None:
      raise ValueError(f'Dataset {self.name!r} has no original files to read '
                       f'({self.prepare_hint}).')
    return getattr(sources, self.reader)(source_dir, *args, **options)


def _prepare_shapes(data_dir: str, tfds_config: str) -> None:
  from jdiffrep.data import shapes_builder  # pylint: disable=g-import-not-at-top
  shapes_builder.prepare_shapes(data_dir, tfds_config)


def _shapes_attribute_names() -> tuple[str, ...]:
  from jdiffrep.data import shapes  # pylint: disable=g-import-not-at-top
  return tuple(shapes.BINARY_ATTRIBUTE_NAMES)


def _prepare_hint(dataset: str, source: str, extra: str = '') -> str:
  return (f'python -m jdiffrep.prepare --dataset={dataset} --source={source} '
          f'--data_dir={{data_dir}} --resolution={{resolution}}{extra}')


def _celeba_attribute_names() -> tuple[str, ...]:
  from jdiffrep.data import sources  # pylint: disable=g-import-not-at-top
  return sources.CELEBA_ATTRIBUTE_NAMES


def _lfw_num_attributes() -> int:
  from jdiffrep.data import sources  # pylint: disable=g-import-not-at-top
  return sources.LFW_NUM_ATTRIBUTES


# The crop of the DiTi / PDAE / DiffAE CelebA 64x64 (the official `CropCelebA64`): 128x128 from
# the 218x178 aligned images, at row 57, column 25.
CELEBA_CROP = (57, 25, 128, 128)


DATASETS: dict[str, DatasetSpec] = {
    'shapes': DatasetSpec(
        name='shapes', tfds_name='shapes/{tfds_config}', eval_split='test',
        validation_split='validation', attribute_names=_shapes_attribute_names(),
        flip_preserves_labels=False,
        prepare_hint='generated automatically on first use', prepare=_prepare_shapes),
    'celeba': DatasetSpec(
        name='celeba', tfds_name='jdiffrep_celeba/{resolution}', eval_split='test',
        validation_split='validation', attribute_names=_celeba_attribute_names(),
        crop=CELEBA_CROP, resize='bilinear', reader='read_celeba',
        tfds_equivalent=('celeb_a', ('train', 'validation', 'test')),
        prepare_hint=_prepare_hint('celeba', 'DIR_WITH_img_align_celeba_AND_list_attr_celeba.txt')),
    'ffhq': DatasetSpec(
        name='ffhq', tfds_name='jdiffrep_ffhq/{resolution}', eval_split='train',
        default_resolution=128, resize='bilinear', reader='read_ffhq',
        prepare_hint=_prepare_hint('ffhq', 'DIR_WITH_THE_FFHQ_PNGS')),
    'bedroom': DatasetSpec(
        name='bedroom', tfds_name='jdiffrep_bedroom/{resolution}', eval_split='validation',
        default_resolution=128, resize='bilinear', reader='read_lsun',
        tfds_equivalent=('lsun/bedroom', ('train', 'validation')),
        prepare_hint=_prepare_hint('bedroom', 'DIR_WITH_bedroom_train_lmdb_AND_bedroom_val_lmdb')),
    'cifar10': DatasetSpec(
        name='cifar10', tfds_name='jdiffrep_cifar10/{resolution}', eval_split='test',
        default_resolution=32, reader='read_cifar10',
        tfds_equivalent=('cifar10', ('train', 'test')),
        prepare_hint=_prepare_hint('cifar10', 'DIR_WITH_cifar-10-batches-py')),
    # DiTi's transfer test: regress LFW's 73 attribute scores from a CelebA-trained representation.
    # No validation split (nothing is selected on one); the official resize-then-centre-crop.
    'lfw': DatasetSpec(
        name='lfw', tfds_name='jdiffrep_lfw/{resolution}', eval_split='test',
        center_crop_margin=1.1, resize='bilinear', reader='read_lfw',
        num_regression_targets=_lfw_num_attributes(),
        prepare_hint=_prepare_hint('lfw', 'DIR_WITH_lfw_funneled_AND_lfw_attributes.txt',
                                   ' [--image_set=deepfunneled]')),
    # Any image folder; config.dataset.tfds_config names the prepared folder (--name=...).
    'folder': DatasetSpec(
        name='folder', tfds_name='jdiffrep_folder/{tfds_config}_{resolution}', eval_split='test',
        reader='read_image_folder', records_in_source_order=True,
        prepare_hint=_prepare_hint('folder', 'YOUR_IMAGE_DIR',
                                   ' --name={tfds_config} [--labels_csv=FILE.csv]')),
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
  """'builder/config' of the prepared dataset, e.g. 'jdiffrep_celeba/64'."""
  spec = get_spec(dataset_config.name)
  if '{tfds_config}' in spec.tfds_name and spec.prepare is None and not dataset_config.tfds_config:
    raise ValueError(f'Dataset {spec.name!r} needs config.dataset.tfds_config: the --name the '
                     'folder was prepared with (python -m jdiffrep.prepare --dataset=folder '
                     '--name=NAME ...).')
  return spec.tfds_name.format(tfds_config=tfds_config_name(dataset_config),
                               resolution=dataset_config.resolution)


def prepared_dir(data_dir: str, name: str) -> epath.Path:
  """Where `jdiffrep.prepare` writes TFDS dataset `name` ('builder/config') under `data_dir`."""
  return epath.Path(data_dir) / name / PREPARED_VERSION


def ensure_prepared(dataset_config) -> str:
  """Returns the data directory holding the dataset, preparing `shapes` if needed.

  Raises:
    DatasetNotPreparedError: the dataset is not prepared there; the message names the
      dataset, the directory searched and the command that prepares it.
  """
  spec = get_spec(dataset_config.name)
  data_dir = dataset_config.data_dir or default_data_dir()
  name = tfds_name(dataset_config)
  if spec.prepare is not None:
    spec.prepare(data_dir, tfds_config_name(dataset_config))
    return data_dir
  searched = prepared_dir(data_dir, name)
  if not (searched / 'dataset_info.json').exists():
    hint = spec.prepare_hint.format(data_dir=data_dir, resolution=dataset_config.resolution,
                                    tfds_config=dataset_config.tfds_config or 'NAME')
    raise DatasetNotPreparedError(
        f'Dataset {spec.name!r} at {dataset_config.resolution}x{dataset_config.resolution} '
        f'(TFDS {name!r}) is not prepared: searched {searched}.\n'
        f'Prepare it once with:\n  {hint}\n'
        'or point config.dataset.data_dir (or $TFDS_DATA_DIR) at the directory that holds it.')
  return data_dir


def prepared_metadata(dataset_config) -> dict:
  """The metadata `jdiffrep.prepare` stored with a prepared dataset: attribute and regression
  target names, crop, resize filter and the reader's options (e.g. LFW's `image_set`)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = ensure_prepared(dataset_config)
  builder = tfds.builder_from_directory(prepared_dir(data_dir, tfds_name(dataset_config)))
  return dict(builder.info.metadata or {})


def open_source(dataset_config, split: str):
  """Opens `split` (a TFDS split string, slices allowed) as a random-access data source."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = ensure_prepared(dataset_config)
  name = tfds_name(dataset_config)
  logging.info('Opening %s split %s from %s', name, split, data_dir)
  if get_spec(dataset_config.name).prepare is not None:  # generated: its builder is registered
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  builder = tfds.builder_from_directory(prepared_dir(data_dir, name))
  return builder.as_data_source(split=split)


def resize_image(image: np.ndarray, resolution: int, resize: str = 'bicubic') -> np.ndarray:
  """[H, W, C] uint8 -> [resolution, resolution, C] uint8 with PIL's `resize` filter (which
  low-passes when shrinking: no aliasing); unchanged when already that size."""
  return resize_to(image, resolution, resolution, resize)


def resize_to(image: np.ndarray, height: int, width: int, resize: str = 'bicubic') -> np.ndarray:
  """[H, W, C] uint8 -> [height, width, C] uint8 with PIL's `resize` filter; unchanged when
  already that size."""
  if resize not in RESIZE_FILTERS:
    raise ValueError(f'resize={resize!r}; valid filters are {RESIZE_FILTERS}.')
  if image.shape[:2] != (height, width):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    method = {'bilinear': Image.Resampling.BILINEAR, 'bicubic': Image.Resampling.BICUBIC}[resize]
    image = np.asarray(Image.fromarray(image).resize((width, height), method))
  return image
