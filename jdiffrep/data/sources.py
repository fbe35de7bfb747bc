"""Readers of datasets in their original on-disk formats, for `jdiffrep.prepare`.

Each reader scans a source directory (cheaply: names, labels, splits) and returns a `Source`:
per split, a list of `RawExample`s whose images are decoded only when the prepare step writes
them. Problems found while scanning (a listed image that is missing, an image without an
attribute row, a malformed row) are collected as `Problem`s, never dropped silently; the
prepare step then skips them or fails, as its `--on_error` flag says.

Formats:
  * CelebA: `img_align_celeba/*.jpg`, `list_attr_celeba.txt`, `list_eval_partition.txt`
    (the two text files may also sit in `Anno/` and `Eval/`, as in the official download).
  * CIFAR-10: the python batches (`data_batch_1..5`, `test_batch`), read with a restricted
    unpickler (`safe_pickle`).
  * LSUN: the LMDB exports (`<category>_train_lmdb/`, `<category>_val_lmdb/`), values are
    encoded images (WebP in the original export).
  * Image folders (FFHQ's PNGs, or anyone's images): recursive, with an optional CSV of labels
    (`filename,label`) or binary attributes (`filename,attr1,attr2,...`).
  * LFW (DiTi's attribute-regression transfer test): `lfw_funneled/<Person>/<Person>_<NNNN>.jpg`
    (or `lfw-deepfunneled/`), `lfw_attributes.txt` (73 real-valued attributes per image) and the
    official splits `peopleDevTrain.txt` / `peopleDevTest.txt`; also inside torchvision's `lfw-py/`.

Paths go through `etils.epath`, so sources on `gs://` work like local ones.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import zlib
from typing import Callable

from etils import epath
import numpy as np

from jdiffrep.data import safe_pickle

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')

# DiTi / PDAE / DiffAE CelebA-64 crop of the aligned 178x218 images: (top, left, height, width).
CELEBA_IMAGE_SIZE = (218, 178)  # (height, width) of every aligned image
CELEBA_SPLITS = ('train', 'validation', 'test')  # list_eval_partition.txt values 0, 1, 2
CELEBA_ATTRIBUTE_NAMES = (
    '5_o_Clock_Shadow',
    'Arched_Eyebrows',
    'Attractive',
    'Bags_Under_Eyes',
    'Bald',
    'Bangs',
    'Big_Lips',
    'Big_Nose',
    'Black_Hair',
    'Blond_Hair',
    'Blurry',
    'Brown_Hair',
    'Bushy_Eyebrows',
    'Chubby',
    'Double_Chin',
    'Eyeglasses',
    'Goatee',
    'Gray_Hair',
    'Heavy_Makeup',
    'High_Cheekbones',
    'Male',
    'Mouth_Slightly_Open',
    'Mustache',
    'Narrow_Eyes',
    'No_Beard',
    'Oval_Face',
    'Pale_Skin',
    'Pointy_Nose',
    'Receding_Hairline',
    'Rosy_Cheeks',
    'Sideburns',
    'Smiling',
    'Straight_Hair',
    'Wavy_Hair',
    'Wearing_Earrings',
    'Wearing_Hat',
    'Wearing_Lipstick',
    'Wearing_Necklace',
    'Wearing_Necktie',
    'Young',
)

CIFAR10_LABEL_NAMES = (
    'airplane',
    'automobile',
    'bird',
    'cat',
    'deer',
    'dog',
    'frog',
    'horse',
    'ship',
    'truck',
)
CIFAR10_TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
CIFAR10_TEST_BATCHES = ('test_batch',)

FOLDER_SPLITS = ('train', 'validation', 'test')


class SourceError(ValueError):
  """The source directory does not hold the dataset in the expected original format."""


@dataclasses.dataclass(frozen=True)
class Problem:
  """One image left out (or that stops the prepare step), and why."""

  name: str  # file name or record key
  reason: str  # short, shared by all images with the same problem (used to count them)
  detail: str = ''


@dataclasses.dataclass(frozen=True)
class RawExample:
  """One image of the source: its name for reports, how to decode it, and its labels."""

  name: str
  read_image: Callable[[], np.ndarray]  # () -> [H, W, 3] uint8; raises if unreadable
  attributes: np.ndarray | None = None  # [A] bool
  label: int | None = None
  regression_targets: np.ndarray | None = None  # [T] float32 (LFW's 73 attribute scores)


@dataclasses.dataclass
class Source:
  """A scanned dataset in its original format.

  Attributes:
    splits: split name -> examples, in the order they are written.
    attribute_names: names of the binary attributes of every example, if any.
    label_names: class names (label i is `label_names[i]`), if the examples have labels.
    image_size: (height, width) every image must have; None accepts any size.
    square_only: every image must be square (checked when `image_size` is None).
    crop: (top, left, height, width) cut before resizing; None: the centred square.
    center_crop_margin: when set (then `crop` is None), resize the shorter side to
      int(resolution * margin) and cut the centred square instead (`DatasetSpec`).
    regression_target_names: names of the real-valued targets of every example, if any.
    problems: images left out while scanning that the user should know of (a missing file, a
      malformed row): they stop the prepare step unless `--on_error=skip`.
    skipped: images the dataset's own protocol leaves out (LFW's images without an attribute
      row, as the official reader does): counted and listed in the report, never a failure.
    options: the reader's choices (e.g. LFW's `image_set`), recorded in the report and metadata.
  """

  splits: dict[str, list[RawExample]]
  attribute_names: tuple[str, ...] | None = None
  label_names: tuple[str, ...] | None = None
  image_size: tuple[int, int] | None = None
  square_only: bool = False
  crop: tuple[int, int, int, int] | None = None
  center_crop_margin: float | None = None
  regression_target_names: tuple[str, ...] | None = None
  problems: list[Problem] = dataclasses.field(default_factory=list)
  skipped: list[Problem] = dataclasses.field(default_factory=list)
  options: dict[str, str] = dataclasses.field(default_factory=dict)


def decode_image(data: bytes) -> np.ndarray:
  """Encoded image bytes -> [H, W, 3] uint8 RGB (grey and RGBA are converted)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with Image.open(io.BytesIO(data)) as image:
    image.load()
    return np.asarray(image.convert('RGB'))


def _file_reader(path: epath.Path) -> Callable[[], np.ndarray]:
  return lambda: decode_image(path.read_bytes())


def _first_existing(root: epath.Path, *candidates: str) -> epath.Path | None:
  for candidate in candidates:
    if (root / candidate).exists():
      return root / candidate
  return None


def _require(root: epath.Path, what: str, *candidates: str) -> epath.Path:
  found = _first_existing(root, *candidates)
  if found is None:
    raise SourceError(f'{root} has no {what}: looked for {", ".join(candidates)}.')
  return found


# ------------------------------------------------------------------------------------- CelebA


def parse_celeba_attributes(
    text: str,
) -> tuple[tuple[str, ...], dict[str, np.ndarray], list[Problem]]:
  """`list_attr_celeba.txt` -> (attribute names, {filename: [40] bool}, malformed rows).

  The file holds the image count, then the attribute names, then one row per image:
  `000001.jpg -1 1 1 -1 ...` (1: has the attribute, -1: has not).
  """
  lines = text.splitlines()
  if len(lines) < 2:
    raise SourceError(
        'list_attr_celeba.txt must start with the image count and the attribute '
        'names; it has fewer than two lines.'
    )
  names = tuple(lines[1].split())
  rows, problems = {}, []
  for line in lines[2:]:
    fields = line.split()
    if not fields:
      continue
    values = fields[1:]
    if len(values) != len(names) or any(v not in ('1', '-1') for v in values):
      problems.append(
          Problem(
              fields[0],
              'malformed attribute row',
              f'expected {len(names)} values of 1 or -1, got {values[:5]}...',
          )
      )
      continue
    rows[fields[0]] = np.array([v == '1' for v in values], dtype=bool)
  return names, rows, problems


def read_celeba(source_dir: str) -> Source:
  """CelebA's aligned images with the 40 attributes and the official partition."""
  root = epath.Path(source_dir)
  image_dir = _require(root, 'image folder', 'img_align_celeba')
  if (image_dir / 'img_align_celeba').is_dir():  # the zip extracted into a folder of its name
    image_dir = image_dir / 'img_align_celeba'
  attr_path = _require(root, 'attribute file', 'list_attr_celeba.txt', 'Anno/list_attr_celeba.txt')
  partition_path = _require(
      root, 'partition file', 'list_eval_partition.txt', 'Eval/list_eval_partition.txt'
  )
  names, attributes, problems = parse_celeba_attributes(attr_path.read_text())
  if names != CELEBA_ATTRIBUTE_NAMES:
    raise SourceError(
        f'{attr_path} names attributes {names}, not the 40 CelebA attributes '
        f'{CELEBA_ATTRIBUTE_NAMES}.'
    )
  on_disk = {p.name for p in image_dir.iterdir()}
  splits = {split: [] for split in CELEBA_SPLITS}
  listed = set()
  for line in partition_path.read_text().splitlines():
    fields = line.split()
    if not fields:
      continue
    if len(fields) != 2 or fields[1] not in ('0', '1', '2'):
      problems.append(Problem(fields[0], 'malformed partition row', f'got {line!r}'))
      continue
    filename, partition = fields
    listed.add(filename)
    if filename not in on_disk:
      problems.append(Problem(filename, 'image file missing', f'not in {image_dir}'))
    elif filename not in attributes:
      problems.append(Problem(filename, 'missing attribute row', f'not in {attr_path}'))
    else:
      splits[CELEBA_SPLITS[int(partition)]].append(
          RawExample(filename, _file_reader(image_dir / filename), attributes=attributes[filename])
      )
  problems.extend(
      Problem(name, 'not in list_eval_partition.txt') for name in sorted(on_disk - listed)
  )
  return Source(
      splits=splits,
      attribute_names=CELEBA_ATTRIBUTE_NAMES,
      image_size=CELEBA_IMAGE_SIZE,
      problems=problems,
  )


# ------------------------------------------------------------------------------------- CIFAR-10


def read_cifar_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """One CIFAR python batch -> (images [N, 32, 32, 3] uint8, labels [N] int64, file names)."""
  batch = safe_pickle.loads(data)
  if not isinstance(batch, dict) or b'data' not in batch or b'labels' not in batch:
    raise SourceError(f'{name} is not a CIFAR-10 batch: expected a dict with data and labels.')
  pixels, labels = batch[b'data'], np.asarray(batch[b'labels'])
  if (
      not isinstance(pixels, np.ndarray)
      or pixels.dtype != np.uint8
      or pixels.ndim != 2
      or pixels.shape[1] != 3 * 32 * 32
      or labels.shape != (pixels.shape[0],)
      or labels.dtype.kind not in 'iu'
      or labels.min() < 0
      or labels.max() >= len(CIFAR10_LABEL_NAMES)
  ):
    raise SourceError(
        f'{name}: expected data uint8 [N, 3072] and N labels in 0..9, got data '
        f'{getattr(pixels, "dtype", type(pixels))} {getattr(pixels, "shape", "")} '
        f'and labels {labels.dtype} {labels.shape}.'
    )
  filenames = batch.get(b'filenames')
  if filenames is None or len(filenames) != len(labels):
    filenames = [f'{name}[{i}]' for i in range(len(labels))]
  else:
    filenames = [f'{name}/{f.decode() if isinstance(f, bytes) else f}' for f in filenames]
  images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels.astype(np.int64), filenames


def read_cifar10(source_dir: str) -> Source:
  """CIFAR-10 from the original python batches (the directory or its cifar-10-batches-py/)."""
  root = epath.Path(source_dir)
  if (root / 'cifar-10-batches-py').exists():
    root = root / 'cifar-10-batches-py'
  splits = {}
  for split, batch_names in (('train', CIFAR10_TRAIN_BATCHES), ('test', CIFAR10_TEST_BATCHES)):
    missing = [b for b in batch_names if not (root / b).exists()]
    if missing:
      raise SourceError(
          f'{root} lacks the CIFAR-10 batches {missing}; expected the extracted '
          'cifar-10-python.tar.gz (data_batch_1..5, test_batch).'
      )
    examples = []
    for batch_name in batch_names:
      images, labels, filenames = read_cifar_batch((root / batch_name).read_bytes(), batch_name)
      examples.extend(
          RawExample(f, (lambda im=im: im), label=int(y))
          for im, y, f in zip(images, labels, filenames)
      )
    splits[split] = examples
  return Source(splits=splits, label_names=CIFAR10_LABEL_NAMES, image_size=(32, 32))


# ------------------------------------------------------------------------------------- LSUN


def _lmdb_examples(path: epath.Path) -> list[RawExample]:
  try:
    import lmdb  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SourceError(
        "Reading LSUN's LMDB export needs the lmdb package: "
        "pip install 'jdiffrep[lsun]' (or pip install lmdb)."
    ) from None
  env = lmdb.open(str(path), readonly=True, lock=False, readahead=False)
  with env.begin() as txn:
    keys = list(txn.cursor().iternext(keys=True, values=False))

  def reader(key):
    def read():
      with env.begin() as txn:
        return decode_image(txn.get(key))

    return read

  return [RawExample(key.decode(errors='replace'), reader(key)) for key in keys]


def read_lsun(source_dir: str, category: str = 'bedroom') -> Source:
  """LSUN `category` from its LMDB export: `<category>_train_lmdb/` and `<category>_val_lmdb/`."""
  root = epath.Path(source_dir)
  splits = {}
  for split, suffix in (('train', 'train'), ('validation', 'val')):
    path = root / f'{category}_{suffix}_lmdb'
    if not (path / 'data.mdb').exists():
      raise SourceError(
          f"{path} is not an LMDB export (no data.mdb); expected LSUN's "
          f'{category}_train_lmdb/ and {category}_val_lmdb/ in {root}.'
      )
    splits[split] = _lmdb_examples(path)
  return Source(splits=splits)


# ------------------------------------------------------------------------------------- folders


def list_images(root: epath.Path) -> list[str]:
  """Paths (relative to `root`, '/'-separated, sorted) of every image file under `root`."""
  found = []
  for directory, _, files in root.walk():  # rglob is refused on gs:// paths
    found.extend(
        (directory / name).relative_to(root).as_posix()
        for name in files
        if epath.Path(name).suffix.lower() in IMAGE_EXTENSIONS
    )
  return sorted(found)


def _parse_label_csv(path: epath.Path) -> tuple[dict, tuple | None, tuple | None, list[Problem]]:
  """CSV -> ({filename: label or [A] bool}, label names, attribute names, malformed rows).

  `filename,label` (header second column 'label' or 'class'): integer labels or class names
  (sorted into ids). Otherwise `filename,attr1,...`: values 1/0, 1/-1 or true/false.
  """
  rows = list(csv.reader(io.StringIO(path.read_text())))
  if not rows or len(rows[0]) < 2:
    raise SourceError(f'{path} must start with a header: filename,label or filename,attr1,...')
  header, body = rows[0], [r for r in rows[1:] if r]
  problems = []
  if len(header) == 2 and header[1].strip().lower() in ('label', 'class'):
    values = {r[0].strip(): r[1].strip() for r in body if len(r) == 2}
    problems += [Problem(r[0] if r else '?', 'malformed label row') for r in body if len(r) != 2]
    if all(v.lstrip('-').isdigit() for v in values.values()):
      ids = {k: int(v) for k, v in values.items()}
      if ids and min(ids.values()) < 0:
        raise SourceError(f'{path}: integer labels must be >= 0.')
      label_names = tuple(str(i) for i in range(max(ids.values(), default=-1) + 1))
    else:
      label_names = tuple(sorted(set(values.values())))
      ids = {k: label_names.index(v) for k, v in values.items()}
    return ids, label_names, None, problems
  truth = {'1': True, 'true': True, '0': False, '-1': False, 'false': False}
  attributes = {}
  for row in body:
    values = [v.strip().lower() for v in row[1:]]
    if len(values) != len(header) - 1 or any(v not in truth for v in values):
      problems.append(
          Problem(
              row[0],
              'malformed attribute row',
              f'expected {len(header) - 1} values of 1/0, 1/-1 or true/false',
          )
      )
      continue
    attributes[row[0].strip()] = np.array([truth[v] for v in values], dtype=bool)
  return attributes, None, tuple(h.strip() for h in header[1:]), problems


def held_out(name: str, fraction: float) -> bool:
  """Deterministic test-split membership from the file name alone (CRC32, ~`fraction`)."""
  return zlib.crc32(name.encode()) % 10_000 < round(fraction * 10_000)


def read_image_folder(
    source_dir: str,
    labels_csv: str | None = None,
    *,
    test_fraction: float = 0.1,
    square_only: bool = False,
) -> Source:
  """Every image under `source_dir`, recursively, with optional labels or attributes.

  Splits: if `source_dir` has a `train/` folder, its `train/`, `validation/` and `test/`
  folders are the splits (CSV names then start with `train/...`). Otherwise a file is in `test`
  when `held_out(name, test_fraction)`, else in `train`: the same file always lands in the same
  split, whatever else the folder holds.
  """
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f'test_fraction={test_fraction} must be in [0, 1).')
  root = epath.Path(source_dir)
  if not root.is_dir():
    raise SourceError(f'{root} is not a directory.')
  names = list_images(root)
  if not names:
    raise SourceError(f'{root} holds no images (looked recursively for {IMAGE_EXTENSIONS}).')
  labels, label_names, attribute_names, problems = {}, None, None, []
  if labels_csv:
    labels, label_names, attribute_names, problems = _parse_label_csv(epath.Path(labels_csv))
    problems += [
        Problem(n, 'listed in the CSV but not found') for n in sorted(set(labels) - set(names))
    ]
  by_folder = (root / 'train').is_dir()
  splits = {split: [] for split in FOLDER_SPLITS}
  for name in names:
    if labels_csv and name not in labels:
      problems.append(Problem(name, 'no row in the labels CSV'))
      continue
    if by_folder:
      split = name.split('/', 1)[0]
      if split not in splits:
        problems.append(Problem(name, 'outside train/, validation/ and test/'))
        continue
    else:
      split = 'test' if held_out(name, test_fraction) else 'train'
    value = labels.get(name)
    splits[split].append(
        RawExample(
            name,
            _file_reader(root / name),
            attributes=value if attribute_names else None,
            label=value if label_names else None,
        )
    )
  return Source(
      splits={k: v for k, v in splits.items() if v},
      attribute_names=attribute_names,
      label_names=label_names,
      square_only=square_only,
      problems=problems,
  )


def read_ffhq(source_dir: str) -> Source:
  """FFHQ's square PNGs (1024 px originals or 128 px thumbnails), all in the train split."""
  return read_image_folder(source_dir, test_fraction=0.0, square_only=True)


# ------------------------------------------------------------------------------------- LFW

LFW_IMAGE_SIZE = (250, 250)  # (height, width) of every LFW image, in every image set
LFW_NUM_ATTRIBUTES = 73  # columns of lfw_attributes.txt (Kumar et al.'s attribute classifiers)
# torchvision's LFW image sets -> the folder each archive extracts to.
LFW_IMAGE_DIRS = {'funneled': 'lfw_funneled', 'deepfunneled': 'lfw-deepfunneled'}
# The official DiTi script reads `LFWPeople(image_set='funneled')` ("already loose crop").
LFW_DEFAULT_IMAGE_SET = 'funneled'
LFW_SPLIT_FILES = {'train': 'peopleDevTrain.txt', 'test': 'peopleDevTest.txt'}
LFW_TORCHVISION_DIR = 'lfw-py'  # torchvision's LFW datasets keep everything under <root>/lfw-py


def lfw_key(person: str, number: int) -> str:
  """The attribute-file key of image `number` of `person` ('Aaron_Eckhart' -> 'Aaron Eckhart-1'):
  the official reader joins them with '-' and turns every underscore into a space."""
  return f'{person.replace("_", " ")}-{number}'


def parse_lfw_attributes(
    text: str, name: str = 'lfw_attributes.txt'
) -> tuple[tuple[str, ...], dict[str, np.ndarray], list[Problem]]:
  """`lfw_attributes.txt` -> (73 attribute names, {lfw_key: [73] float32}, malformed rows).

  Line 0 is a comment; line 1 the tab-separated header `#, person, imagenum, <73 names>`; then
  one row per image: `Aaron Eckhart<TAB>1<TAB><73 floats>` (the person's name with spaces).
  Parsed as the official `LFWAttribute.load_attributes`: fields split on tabs, names from the
  header's fourth column on.
  """
  lines = text.splitlines()
  if len(lines) < 2:
    raise SourceError(f'{name} must start with a comment line and the tab-separated header; '
                      'it has fewer than two lines.')
  names = tuple(lines[1].strip().split('\t')[3:])
  if len(names) != LFW_NUM_ATTRIBUTES:
    raise SourceError(f'{name}: the header (line 2) names {len(names)} attributes after '
                      f'"#, person, imagenum", not LFW\'s {LFW_NUM_ATTRIBUTES}; is it the '
                      'tab-separated lfw_attributes.txt?')
  rows, problems = {}, []
  for line in lines[2:]:
    fields = line.strip().split('\t')
    if not fields[0]:
      continue
    key = '-'.join(fields[:2])  # the official key: person (with spaces), '-', imagenum
    try:
      values = np.array([float(v) for v in fields[2:]], np.float32)
    except ValueError:
      values = None
    if values is None or values.shape != (len(names),):
      problems.append(Problem(key, 'malformed attribute row',
                              f'expected person, imagenum and {len(names)} numbers'))
      continue
    rows[key] = values
  return names, rows, problems


def parse_lfw_people(text: str, name: str) -> list[tuple[str, int]]:
  """`peopleDevTrain.txt` / `peopleDevTest.txt` -> [(person, number of images)].

  The first line is the number of people, then one `Person_Name<TAB>count` line each.
  """
  lines = [line.strip() for line in text.splitlines()]
  try:
    count = int(lines[0])
    people = [line.split('\t') for line in lines[1:count + 1]]
    people = [(person, int(images)) for person, images in people]
  except (IndexError, ValueError):
    raise SourceError(f'{name} must hold the number of people, then one "Person_Name<TAB>count" '
                      f'line per person; cannot read it as such.') from None
  if len(people) != count:
    raise SourceError(f'{name} announces {count} people but lists {len(people)}.')
  return people


def _lfw_image_dir(root: epath.Path, image_set: str) -> epath.Path:
  """The folder of `image_set`'s images, or a SourceError naming both folders and the fix."""
  if image_set not in LFW_IMAGE_DIRS:
    raise SourceError(f'image_set={image_set!r}; valid LFW image sets are '
                      f'{sorted(LFW_IMAGE_DIRS)}.')
  image_dir = root / LFW_IMAGE_DIRS[image_set]
  if image_dir.is_dir():
    return image_dir
  present = [f'{folder}/ (--image_set={name})' for name, folder in LFW_IMAGE_DIRS.items()
             if (root / folder).is_dir()]
  raise SourceError(
      f'{root} has no {LFW_IMAGE_DIRS[image_set]}/, the images of --image_set={image_set} (LFW '
      f'keeps the funneled images in {LFW_IMAGE_DIRS["funneled"]}/ and the deep-funneled ones '
      f'in {LFW_IMAGE_DIRS["deepfunneled"]}/). '
      + (f'It has {", ".join(present)}: pass that --image_set, or extract ' if present
         else 'Extract ')
      + f'the {image_set} archive into {root}.')


def read_lfw(source_dir: str, image_set: str = LFW_DEFAULT_IMAGE_SET) -> Source:
  """LFW's images of `image_set` with their 73 attribute scores, in the official Dev splits.

  As the official `LFWAttribute` (torchvision's `LFWPeople` with split 'train' / 'test'): every
  image 1..count of each person of the split file is in the split when lfw_attributes.txt has
  its row; the images without one are `skipped` (the official reader leaves them out too).
  `source_dir` holds the files, or torchvision's `lfw-py/` does.
  """
  root = epath.Path(source_dir)
  if (root / LFW_TORCHVISION_DIR).is_dir():
    root = root / LFW_TORCHVISION_DIR
  image_dir = _lfw_image_dir(root, image_set)
  attr_path = _require(root, 'attribute file', 'lfw_attributes.txt')
  names, attributes, problems = parse_lfw_attributes(attr_path.read_text(), str(attr_path))
  on_disk = set(list_images(image_dir))
  splits, skipped = {}, []
  for split, filename in LFW_SPLIT_FILES.items():
    split_path = _require(root, f'{split} split file', filename)
    examples = []
    for person, count in parse_lfw_people(split_path.read_text(), str(split_path)):
      for number in range(1, count + 1):
        relative = f'{person}/{person}_{number:04d}.jpg'
        key = lfw_key(person, number)
        if key not in attributes:
          skipped.append(Problem(relative, 'no row in lfw_attributes.txt', repr(key)))
        elif relative not in on_disk:
          problems.append(Problem(relative, 'image file missing', f'not in {image_dir}'))
        else:
          examples.append(RawExample(relative, _file_reader(image_dir / relative),
                                     regression_targets=attributes[key]))
    splits[split] = examples
  return Source(splits=splits, regression_target_names=names, image_size=LFW_IMAGE_SIZE,
                problems=problems, skipped=skipped, options={'image_set': image_set})


# ------------------------------------------------------------------------------------- TFDS


def read_tfds(dataset: str, data_dir: str) -> Source:
  """`dataset` from TFDS's own builder (`celeb_a`, `cifar10`, `lsun/bedroom`), built in `data_dir`.

  Those builders download their files, so this only reads a copy already built there with
  `--file_format=array_record`. Labels are read while scanning (images left encoded); images
  are decoded when written.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from jdiffrep.data import registry  # pylint: disable=g-import-not-at-top

  equivalent = registry.get_spec(dataset).tfds_equivalent
  if equivalent is None:
    valid = sorted(n for n, s in registry.DATASETS.items() if s.tfds_equivalent)
    raise SourceError(f'{dataset} has no TFDS builder to read; valid: {valid}.')
  name, split_names = equivalent
  splits = {}
  for split in split_names:
    try:
      full = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
      light = tfds.data_source(
          name,
          split=split,
          data_dir=data_dir,
          download=False,
          decoders={'image': tfds.decode.SkipDecoding()},
      )
    except Exception as error:  # pylint: disable=broad-except  # tfds raises several kinds
      raise SourceError(
          f'TFDS {name!r} split {split!r} cannot be read from {data_dir} ({error}). Build it '
          f'there first: tfds build {name} --data_dir={data_dir} --file_format=array_record, '
          'or prepare from the original files with --source=DIR.'
      ) from error
    examples = []
    for index in range(len(full)):
      attributes = label = None
      if dataset == 'celeba':
        record = light[index]['attributes']
        attributes = np.array([bool(record[n]) for n in CELEBA_ATTRIBUTE_NAMES])
      elif dataset == 'cifar10':
        label = int(light[index]['label'])
      read = lambda full=full, index=index: np.asarray(full[index]['image'])
      examples.append(RawExample(f'{name}/{split}[{index}]', read, attributes, label))
    splits[split] = examples
  if dataset == 'celeba':
    return Source(
        splits,
        attribute_names=CELEBA_ATTRIBUTE_NAMES,
        image_size=CELEBA_IMAGE_SIZE,
    )
  if dataset == 'cifar10':
    return Source(splits, label_names=CIFAR10_LABEL_NAMES, image_size=(32, 32))
  return Source(splits)
