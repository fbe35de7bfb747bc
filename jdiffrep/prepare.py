r"""Converts a dataset from its original files into the array_record TFDS format training reads.

  python -m jdiffrep.prepare --dataset=celeba --source=/data/celeba [--data_dir=DIR]
  python -m jdiffrep.prepare --dataset=ffhq --source=/data/ffhq/images1024x1024
  python -m jdiffrep.prepare --dataset=bedroom --source=/data/lsun   # bedroom_{train,val}_lmdb/
  python -m jdiffrep.prepare --dataset=cifar10 --source=/data/cifar-10-batches-py
  python -m jdiffrep.prepare --dataset=folder --source=/data/mine --name=mine \
      [--labels_csv=/data/mine.csv]
  python -m jdiffrep.prepare --dataset=celeba --source=tfds   # TFDS's celeb_a, built in --data_dir
  python -m jdiffrep.prepare --dataset=lfw --source=/data/lfw [--image_set=deepfunneled]

Runs once per dataset and resolution (default: the one its config trains at). Writes
`<data_dir>/jdiffrep_<dataset>/<config>/1.0.0/`: images cropped and resized to the resolution,
labels and splits as in the source; the data dir defaults to $TFDS_DATA_DIR, else
~/tensorflow_datasets, and may be a `gs://` path. Unreadable images, images of the wrong size and
images without labels stop the run (`--on_error=fail`, the default) or are left out and listed
(`--on_error=skip`); either way the summary names every such file, and
`<data_dir>/jdiffrep_<dataset>/<config>/prepare_report.json` keeps the full list. Images a
dataset's own protocol leaves out (LFW's images without an attribute row) are counted and listed
there too, but never stop the run.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import tensorflow_datasets as tfds

from jdiffrep.data import prepared_builder
from jdiffrep.data import registry
from jdiffrep.data import sources

# The datasets prepared from their original files (their `registry.DatasetSpec` has a reader).
PREPARABLE = tuple(sorted(name for name, spec in registry.DATASETS.items() if spec.reader))
REPORT_NAMES_PER_REASON = 20  # file names logged per problem kind (the report has them all)


@dataclasses.dataclass
class PrepareResult:
  """What `prepare` wrote: the dataset directory, images per split, and what it left out."""

  dataset_dir: str
  tfds_name: str
  num_examples: dict[str, int]
  problems: list[sources.Problem]
  seconds: float
  skipped: list[sources.Problem] = dataclasses.field(default_factory=list)  # by the protocol

  def summary(self) -> str:
    lines = [
        f'Prepared {self.tfds_name} in {self.dataset_dir} in {self.seconds:.1f} s: '
        + ', '.join(f'{split} {n}' for split, n in self.num_examples.items())
        + ' images.'
    ]
    lines += _lines_by_reason('left out', self.problems)
    lines += _lines_by_reason("skipped, as the dataset's protocol does", self.skipped)
    return '\n'.join(lines)


def _lines_by_reason(what: str, problems: list[sources.Problem]) -> list[str]:
  """One summary line per reason: the count and the first file names."""
  by_reason = collections.defaultdict(list)
  for problem in problems:
    by_reason[problem.reason].append(problem)
  lines = []
  for reason, listed in sorted(by_reason.items()):
    shown = ', '.join(
        p.name + (f' ({p.detail})' if p.detail else '') for p in listed[:REPORT_NAMES_PER_REASON]
    )
    more = (
        f' and {len(listed) - REPORT_NAMES_PER_REASON} more'
        if len(listed) > REPORT_NAMES_PER_REASON
        else ''
    )
    lines.append(f'  {what}, {reason}: {len(listed)} file(s): {shown}{more}')
  return lines


def _dataset_config(dataset: str, resolution: int, name: str | None):
  """The slice of `config.dataset` that names the prepared dataset (for the registry)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  return ml_collections.ConfigDict(
      {'name': dataset, 'resolution': resolution, 'tfds_config': name, 'data_dir': None}
  )


TFDS_SOURCE = 'tfds'  # --source=tfds: TFDS's own builder, already built in --data_dir


def read_source(
    dataset: str,
    source_dir: str,
    *,
    data_dir: str | None = None,
    labels_csv: str | None = None,
    test_fraction: float = 0.1,
    image_set: str | None = None,
) -> sources.Source:
  """Scans `source_dir` with the dataset's reader (folder options only for 'folder', the image
  set only for 'lfw').

  `source_dir='tfds'` reads TFDS's own builder of the dataset, already built in `data_dir`.
  """
  if dataset not in PREPARABLE:
    raise ValueError(f'Unknown dataset {dataset!r}; prepare knows {list(PREPARABLE)}.')
  if labels_csv and dataset != 'folder':
    raise ValueError(f'--labels_csv is for --dataset=folder; {dataset} brings its own labels.')
  if image_set and dataset != 'lfw':
    raise ValueError(f'--image_set is for --dataset=lfw; {dataset} has one set of images.')
  if source_dir == TFDS_SOURCE:
    return sources.read_tfds(dataset, data_dir or registry.default_data_dir())
  spec = registry.get_spec(dataset)
  if dataset == 'folder':
    return spec.read_source(source_dir, labels_csv, test_fraction=test_fraction)
  if image_set:
    return spec.read_source(source_dir, image_set=image_set)
  return spec.read_source(source_dir)


def prepare(
    dataset: str,
    source_dir: str,
    data_dir: str | None = None,
    *,
    resolution: int | None = None,
    on_error: str = 'fail',
    name: str | None = None,
    labels_csv: str | None = None,
    test_fraction: float = 0.1,
    overwrite: bool = False,
    num_workers: int | None = None,
    resize: str | None = None,
    image_set: str | None = None,
) -> PrepareResult:
  """Converts `source_dir` (original format of `dataset`) into a prepared TFDS dataset.

  Args:
    dataset: one of PREPARABLE ('bedroom', 'celeba', 'cifar10', 'ffhq', 'folder', 'lfw').
    source_dir: the original files (see `jdiffrep.data.sources` for each layout), or 'tfds'
      for TFDS's own `celeb_a` / `cifar10` / `lsun/bedroom` already built in `data_dir`.
    data_dir: TFDS data dir to write into; None: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
    resolution: side of the stored square images; None: the dataset's training resolution.
    on_error: 'fail' stops at the first bad image; 'skip' leaves bad images out and lists them.
    name: for 'folder', the name configs refer to (`config.dataset.tfds_config`).
    labels_csv: for 'folder', an optional CSV of labels or binary attributes.
    test_fraction: for a flat 'folder', the share of files held out as the test split.
    overwrite: rebuild even when the dataset is already prepared.
    num_workers: threads decoding, resizing and encoding images; None: one per CPU core.
      The records are written in source order whatever the number.
    resize: the PIL filter, 'bilinear' or 'bicubic'; None: the dataset's (`DatasetSpec.resize`:
      bilinear, as the official code, for CelebA, FFHQ, Bedroom and LFW).
    image_set: for 'lfw', 'funneled' (None: the default, as the official DiTi script) or
      'deepfunneled': which folder of images is read.

  Returns:
    A PrepareResult; its `summary()` is also logged.

  Raises:
    sources.SourceError: the source is not in the dataset's original format.
    prepared_builder.PrepareError: a bad image (or label row) with on_error='fail'.
  """
  start = time.perf_counter()
  data_dir = data_dir or registry.default_data_dir()
  resolution, tfds_name = _check_and_name(dataset, resolution, on_error, name)
  dataset_dir = registry.prepared_dir(data_dir, tfds_name)
  if (dataset_dir / 'dataset_info.json').exists() and not overwrite:
    logging.info('%s is already prepared in %s (--overwrite rebuilds it).', tfds_name, dataset_dir)
    info = tfds.builder_from_directory(dataset_dir).info
    stored_set = (info.metadata or {}).get('image_set')
    if image_set and stored_set and image_set != stored_set:
      raise ValueError(f'{dataset_dir} was prepared from the {stored_set} images, not '
                       f'--image_set={image_set}; pass --overwrite to rebuild it.')
    num_examples = {split: info.splits[split].num_examples for split in info.splits}
    return PrepareResult(str(dataset_dir), tfds_name, num_examples, [], time.perf_counter() - start)
  logging.info('Scanning %s for %s ...', source_dir, dataset)
  source = read_source(
      dataset, source_dir, data_dir=data_dir, labels_csv=labels_csv, test_fraction=test_fraction,
      image_set=image_set,
  )
  return write_source(
      dataset,
      source,
      data_dir,
      resolution=resolution,
      on_error=on_error,
      name=name,
      overwrite=overwrite,
      source_description=str(source_dir),
      start=start,
      num_workers=num_workers,
      resize=resize,
  )


def _check_and_name(
    dataset: str, resolution: int | None, on_error: str, name: str | None
) -> tuple[int, str]:
  """Validates the options; returns (resolution, TFDS name 'builder/config')."""
  spec = registry.get_spec(dataset)
  if on_error not in prepared_builder.ON_ERROR_CHOICES:
    raise ValueError(
        f'on_error={on_error!r}; valid values are ' f'{prepared_builder.ON_ERROR_CHOICES}.'
    )
  if dataset == 'folder' and not name:
    raise ValueError(
        '--dataset=folder needs --name=NAME (set config.dataset.tfds_config=NAME '
        'to train on it).'
    )
  resolution = resolution or spec.default_resolution
  if resolution < 8:
    raise ValueError(f'resolution={resolution}: the stored images must be at least 8x8.')
  return resolution, registry.tfds_name(_dataset_config(dataset, resolution, name))


def write_source(
    dataset: str,
    source: sources.Source,
    data_dir: str,
    *,
    resolution: int | None = None,
    on_error: str = 'fail',
    name: str | None = None,
    overwrite: bool = False,
    source_description: str = '',
    start: float | None = None,
    num_workers: int | None = None,
    resize: str | None = None,
) -> PrepareResult:
  """Writes a scanned `source` as the prepared `dataset` (see `prepare` for the options)."""
  start = time.perf_counter() if start is None else start
  resolution, tfds_name = _check_and_name(dataset, resolution, on_error, name)
  dataset_dir = registry.prepared_dir(data_dir, tfds_name)
  spec = registry.get_spec(dataset)
  resize = resize or spec.resize
  if spec.crop is not None:  # the dataset's own crop (CelebA's), whoever scanned the source
    source = dataclasses.replace(source, crop=spec.crop)
  if spec.center_crop_margin is not None:  # or its resize-then-centre-crop (LFW's)
    source = dataclasses.replace(source, center_crop_margin=spec.center_crop_margin)
  eval_split = spec.eval_split
  if not source.splits.get(eval_split):
    raise sources.SourceError(
        f'{source_description or dataset} has no images for the {eval_split!r} split, which '
        'training previews and evaluation read'
        + (
            ': use --test_fraction > 0, or put a test/ folder next to train/.'
            if dataset == 'folder'
            else '.'
        )
    )
  if source.problems and on_error == 'fail':
    raise prepared_builder.PrepareError(
        f'{len(source.problems)} problem(s) in {source_description or dataset}, first: '
        + prepared_builder.fail_message(source.problems[0])
    )
  builder = prepared_builder.builder_for(spec)(
      source=source,
      resolution=resolution,
      resize=resize,
      config_name=tfds_name.split('/')[1],
      on_error=on_error,
      data_dir=data_dir,
      file_format=prepared_builder.FILE_FORMAT,
      description=f'{dataset} from {source_description}, {resolution}x{resolution} ({resize}).',
      num_workers=num_workers or os.cpu_count() or 1,
  )
  mode = (
      tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
      if overwrite
      else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  )
  builder.download_and_prepare(
      file_format=prepared_builder.FILE_FORMAT,
      download_config=tfds.download.DownloadConfig(try_download_gcs=False, download_mode=mode),
  )
  result = PrepareResult(
      str(dataset_dir),
      tfds_name,
      dict(builder.written),
      source.problems + builder.problems,
      time.perf_counter() - start,
      skipped=list(source.skipped),
  )
  report = {
      'tfds_name': tfds_name,
      'source': source_description,
      'resolution': resolution,
      'resize': resize,
      'crop': prepared_builder.crop_description(source),
      **source.options,
      'num_examples': result.num_examples,
      'seconds': round(result.seconds, 2),
      'left_out': [dataclasses.asdict(p) for p in result.problems],
      'num_skipped': len(result.skipped),
      'skipped': [dataclasses.asdict(p) for p in result.skipped],
  }
  (dataset_dir.parent / 'prepare_report.json').write_text(json.dumps(report, indent=2))
  logging.info('%s', result.summary())
  return result


FLAGS = flags.FLAGS
_DATASET = flags.DEFINE_enum('dataset', None, list(PREPARABLE), 'Dataset to prepare.')
_SOURCE = flags.DEFINE_string(
    'source',
    None,
    "Directory with the original files, or 'tfds' for TFDS's own builder "
    '(celeb_a, cifar10, lsun/bedroom) already built in --data_dir as array_record.',
)
_DATA_DIR = flags.DEFINE_string(
    'data_dir',
    None,
    'TFDS data dir to write (local or gs://); default $TFDS_DATA_DIR, else '
    '~/tensorflow_datasets.',
)
_RESOLUTION = flags.DEFINE_integer(
    'resolution',
    None,
    "Side of the stored images; default the dataset's training resolution "
    '(celeba/folder/lfw 64, ffhq/bedroom 128, cifar10 32).',
)
_ON_ERROR = flags.DEFINE_enum(
    'on_error',
    'fail',
    list(prepared_builder.ON_ERROR_CHOICES),
    'Bad images: fail at the first, or skip them (all are listed).',
)
_NAME = flags.DEFINE_string(
    'name', None, 'folder only: the name to train with ' '(config.dataset.tfds_config).'
)
_LABELS_CSV = flags.DEFINE_string(
    'labels_csv',
    None,
    'folder only: CSV `filename,label` or '
    '`filename,attr1,attr2,...` (paths relative to --source).',
)
_TEST_FRACTION = flags.DEFINE_float(
    'test_fraction',
    0.1,
    'folder only, without train/ and ' 'test/ sub-folders: share of files held out for test.',
)
_NUM_WORKERS = flags.DEFINE_integer(
    'num_workers',
    None,
    'Threads decoding, resizing and encoding images; default one per CPU '
    'core. The output is the same for any number.',
)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Rebuild even if already prepared.')
_RESIZE = flags.DEFINE_enum(
    'resize', None, list(registry.RESIZE_FILTERS),
    'PIL filter to resize with; default the dataset\'s (bilinear, as the official DiTi code, for '
    'celeba, ffhq, bedroom and lfw; bicubic otherwise).')
_IMAGE_SET = flags.DEFINE_enum(
    'image_set', None, list(sources.LFW_IMAGE_DIRS),
    f'lfw only: which images to read, funneled (lfw_funneled/) or deepfunneled '
    f'(lfw-deepfunneled/); default {sources.LFW_DEFAULT_IMAGE_SET}, as the official DiTi script.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result = prepare(
        _DATASET.value,
        _SOURCE.value,
        _DATA_DIR.value,
        resolution=_RESOLUTION.value,
        on_error=_ON_ERROR.value,
        name=_NAME.value,
        labels_csv=_LABELS_CSV.value,
        test_fraction=_TEST_FRACTION.value,
        overwrite=_OVERWRITE.value,
        num_workers=_NUM_WORKERS.value,
        resize=_RESIZE.value,
        image_set=_IMAGE_SET.value,
    )
  except (sources.SourceError, prepared_builder.PrepareError) as error:
    sys.exit(f'jdiffrep.prepare: {error}')  # the message says what to fix; no traceback
  print(result.summary())


if __name__ == '__main__':
  flags.mark_flags_as_required(['dataset', 'source'])
  app.run(main)
