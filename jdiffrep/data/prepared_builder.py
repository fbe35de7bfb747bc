"""The TFDS builder that writes a scanned `Source` as array_record files, ready for training.

Every real dataset is stored the same way, already cropped and resized to the training
resolution (PNG, lossless), with the feature keys the `shapes` builder uses:

  image       [R, R, 3] uint8
  attributes  [A] bool                  when the source has binary attributes (CelebA, CSV)
  labels      {'label': ClassLabel}     when the source has class labels (CIFAR-10, CSV)
  regression_targets  [T] float32       when the source has real-valued targets (LFW's 73)

so the grain pipeline and the evaluation read every dataset alike. Records are written in source
order (`disable_shuffling`), so record i of a split is the i-th source image that was kept.
The prepared directory is `<data_dir>/<builder name>/<config>/<version>/`; it is read back with
`tfds.builder_from_directory`, without this code.
"""

from __future__ import annotations

import concurrent.futures
from typing import Iterator

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from jdiffrep import images
from jdiffrep.data import registry
from jdiffrep.data import sources

ON_ERROR_CHOICES = ('skip', 'fail')
FILE_FORMAT = 'array_record'


class PrepareError(ValueError):
  """An image could not be prepared and `on_error='fail'`."""


def fail_message(problem: sources.Problem) -> str:
  return (
      f'{problem.name}: {problem.reason}{" (" + problem.detail + ")" if problem.detail else ""}.'
      ' Fix or remove it, or pass --on_error=skip to leave such images out (they are listed '
      'in the summary).'
  )


def crop_box(height: int, width: int, crop) -> tuple[int, int, int, int]:
  """The (top, left, height, width) box to cut: `crop`, or the centred square when None."""
  if crop is not None:
    return tuple(crop)
  side = min(height, width)
  return (height - side) // 2, (width - side) // 2, side, side


def resize_shorter_side(image: np.ndarray, side: int, resize: str) -> np.ndarray:
  """[H, W, C] -> the shorter side `side`, the longer one int(side * longer / shorter): what
  torchvision's `Resize(side)` does to a PIL image."""
  height, width = image.shape[:2]
  if width <= height:
    return registry.resize_to(image, int(side * height / width), side, resize)
  return registry.resize_to(image, side, int(side * width / height), resize)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """[H, W, C] -> the centred [size, size, C], offsets rounded as torchvision's `CenterCrop`
  (int(round((H - size) / 2)): 1.5 rounds to 2, 0.5 to 0)."""
  height, width = image.shape[:2]
  if height < size or width < size:
    raise ValueError(f'Cannot cut a centred {size}x{size} from a {height}x{width} image.')
  top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
  return image[top : top + size, left : left + size]


def to_training_image(image: np.ndarray, crop, resolution: int, resize: str = 'bicubic',
                      center_crop_margin: float | None = None) -> np.ndarray:
  """[H, W, 3] uint8 -> [resolution, resolution, 3] uint8: crop (or centre square), then resize
  with PIL's `resize` filter ('bilinear' or 'bicubic'; both low-pass when shrinking).

  With `center_crop_margin` m instead: resize the shorter side to int(resolution * m), then cut
  the centred square (torchvision's `Resize(int(size * m))`, `CenterCrop(size)`).
  """
  if center_crop_margin is not None:
    resized = resize_shorter_side(image, int(resolution * center_crop_margin), resize)
    return center_crop(resized, resolution)
  top, left, height, width = crop_box(image.shape[0], image.shape[1], crop)
  return registry.resize_image(image[top : top + height, left : left + width], resolution, resize)


def crop_description(source: sources.Source):
  """How the source's images are cut, for the prepared dataset's metadata."""
  if source.center_crop_margin is not None:
    return (f'shorter side resized to int(resolution * {source.center_crop_margin}), then the '
            'centred square')
  return list(source.crop) if source.crop else 'centre square'


def size_problem(name: str, image: np.ndarray, source: sources.Source) -> sources.Problem | None:
  """A 'wrong image size' problem when `image` breaks the source's size rule, else None."""
  height, width = image.shape[:2]
  if source.image_size is not None and (height, width) != tuple(source.image_size):
    expected = f'{source.image_size[0]}x{source.image_size[1]}'
    return sources.Problem(name, 'wrong image size', f'{height}x{width}, expected {expected}')
  if source.square_only and height != width:
    return sources.Problem(name, 'wrong image size', f'{height}x{width}, expected a square')
  if source.crop is not None:
    top, left, crop_height, crop_width = source.crop
    if height < top + crop_height or width < left + crop_width:
      return sources.Problem(
          name, 'wrong image size', f'{height}x{width}, smaller than the crop {source.crop}'
      )
  return None


def convert(raw: sources.RawExample, source: sources.Source, resolution: int,
            resize: str = 'bicubic'):
  """One source image -> (example for the builder, None), or (None, why it is left out).

  Runs in worker threads (PIL releases the GIL while decoding, resizing and encoding).
  """
  try:
    image = raw.read_image()
  except Exception as error:  # pylint: disable=broad-except  # decoders raise many kinds
    return None, sources.Problem(raw.name, 'unreadable image', f'{type(error).__name__}: {error}')
  problem = size_problem(raw.name, image, source)
  if problem is not None:
    return None, problem
  image = to_training_image(image, source.crop, resolution, resize, source.center_crop_margin)
  if image.shape != (resolution, resolution, 3) or image.dtype != np.uint8:
    raise AssertionError(
        f'{raw.name}: converted to {image.shape} {image.dtype}, expected '
        f'({resolution}, {resolution}, 3) uint8.'
    )
  example = {'image': images.encode_png(image)}
  if source.attribute_names:
    example['attributes'] = np.asarray(raw.attributes, dtype=bool)
  if source.label_names:
    example['labels'] = {'label': int(raw.label)}
  if source.regression_target_names:
    example['regression_targets'] = np.asarray(raw.regression_targets, dtype=np.float32)
  return example, None


def _progress(items: Iterator, total: int, description: str) -> Iterator:
  """A tqdm bar when tqdm is installed, else a log line every 5% of the items."""
  try:
    import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    tqdm = None
  if tqdm is not None:
    yield from tqdm.tqdm(items, total=total, desc=description, unit='img', mininterval=2.0)
    return
  step = max(1, total // 20)
  for i, item in enumerate(items):
    if i % step == 0:
      logging.info('%s: %d / %d images', description, i, total)
    yield item


def _converted_in_order(
    examples: list[sources.RawExample], source: sources.Source, resolution: int, resize: str,
    num_workers: int
) -> Iterator:
  """`convert` of every example, in order, `num_workers` at a time, a bounded window ahead."""
  window = 64 * num_workers
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    for start in range(0, len(examples), window):
      chunk = examples[start : start + window]
      yield from pool.map(convert, chunk, [source] * len(chunk), [resolution] * len(chunk),
                          [resize] * len(chunk))


class PreparedImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes a `sources.Source` at one resolution; one subclass (builder name) per dataset."""

  VERSION = tfds.core.Version(registry.PREPARED_VERSION)
  RELEASE_NOTES = {registry.PREPARED_VERSION: 'Prepared by jdiffrep.prepare.'}
  # No code-side resources; see shapes_builder.Shapes.code_path.
  code_path = None

  def __init__(
      self,
      *,
      source: sources.Source,
      resolution: int,
      config_name: str,
      on_error: str = 'fail',
      description: str = '',
      num_workers: int = 1,
      resize: str = 'bicubic',
      **kwargs,
  ):
    if on_error not in ON_ERROR_CHOICES:
      raise ValueError(f'on_error={on_error!r}; valid values are {ON_ERROR_CHOICES}.')
    if resize not in registry.RESIZE_FILTERS:
      raise ValueError(f'resize={resize!r}; valid filters are {registry.RESIZE_FILTERS}.')
    self._source = source
    self._resolution = resolution
    self._resize = resize
    self._on_error = on_error
    self._description = description
    self._num_workers = max(1, num_workers)
    self.problems: list[sources.Problem] = []  # images left out while writing
    self.written: dict[str, int] = {}  # split -> images written
    super().__init__(config=tfds.core.BuilderConfig(name=config_name), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        'image': tfds.features.Image(
            shape=(self._resolution, self._resolution, 3), encoding_format='png'
        )
    }
    if self._source.attribute_names:
      features['attributes'] = tfds.features.Tensor(
          shape=(len(self._source.attribute_names),), dtype=np.bool_
      )
    if self._source.label_names:
      features['labels'] = tfds.features.FeaturesDict(
          {'label': tfds.features.ClassLabel(names=list(self._source.label_names))}
      )
    if self._source.regression_target_names:
      features['regression_targets'] = tfds.features.Tensor(
          shape=(len(self._source.regression_target_names),), dtype=np.float32
      )
    metadata = tfds.core.MetadataDict(
        attribute_names=list(self._source.attribute_names or ()),
        regression_target_names=list(self._source.regression_target_names or ()),
        crop=crop_description(self._source),
        resize=self._resize,
        **self._source.options,
    )
    return tfds.core.DatasetInfo(
        builder=self,
        description=self._description,
        features=tfds.features.FeaturesDict(features),
        metadata=metadata,
        disable_shuffling=True,
    )  # record i is the i-th kept source image

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The source is local (or on a file system epath reads); nothing to download.
    return {
        split: self._generate_examples(split, examples)
        for split, examples in self._source.splits.items()
        if examples
    }

  def _reject(self, problem: sources.Problem) -> None:
    if self._on_error == 'fail':
      raise PrepareError(fail_message(problem))
    self.problems.append(problem)

  def _generate_examples(self, split: str, examples: list[sources.RawExample]) -> Iterator:
    self.written[split] = 0
    converted = _converted_in_order(examples, self._source, self._resolution, self._resize,
                                    self._num_workers)
    progress = _progress(converted, len(examples), f'{self.name} {split}')
    for index, (example, problem) in enumerate(progress):
      if problem is not None:
        self._reject(problem)
        continue
      self.written[split] += 1
      yield index, example


_BUILDERS: dict[str, type[PreparedImages]] = {}


def builder_for(spec: registry.DatasetSpec) -> type[PreparedImages]:
  """The `PreparedImages` subclass named `spec.builder_name` (e.g. 'jdiffrep_celeba'), made once."""
  if spec.builder_name not in _BUILDERS:
    class_name = ''.join(part.capitalize() for part in spec.builder_name.split('_'))
    _BUILDERS[spec.builder_name] = type(class_name, (PreparedImages,),
                                        {'name': spec.builder_name}, skip_registration=True)
  return _BUILDERS[spec.builder_name]
