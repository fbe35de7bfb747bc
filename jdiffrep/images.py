"""Image grids for people to look at: samples written as PNG and to TensorBoard.

PNGs go through `etils.epath`, so `path` may be a `gs://` URL as well as a local file.
"""

from __future__ import annotations

import io
import math

from etils import epath
import jax.numpy as jnp
import numpy as np
from PIL import Image

PAIR_COLUMNS = 8  # `interleave_rows` grids: 8 originals, then their 8 outputs (per set)


def make_grid(images: np.ndarray, *, num_columns: int | None = None, padding: int = 1,
              upscale: int = 1, pad_value: int = 255) -> np.ndarray:
  """[N, H, W, C] uint8 -> one [rows*(H+p)+p, cols*(W+p)+p, C] uint8 image, row-major."""
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f'expected [N, H, W, C] uint8 images, got {images.shape} {images.dtype}')
  if upscale > 1:
    images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
  n, h, w, c = images.shape
  cols = num_columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c),
                 pad_value, np.uint8)
  for i, image in enumerate(images):
    top = padding + (i // cols) * (h + padding)
    left = padding + (i % cols) * (w + padding)
    grid[top:top + h, left:left + w] = image
  return grid


def encode_png(image: np.ndarray) -> bytes:
  """[H, W, C] uint8 -> PNG bytes (PIL, no TensorFlow; lossless, so it decodes to `image`)."""
  image = np.asarray(image)
  buffer = io.BytesIO()
  Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, format='PNG')
  return buffer.getvalue()


def _write(path: str | epath.PathLike, data: bytes) -> str:
  """Writes `data` at `path` (local or a URL), creating its folder; returns the path."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return str(path)


def save_png(path: str | epath.PathLike, image: np.ndarray) -> str:
  """Writes [H, W, C] uint8 `image` as a PNG at `path` (local or a URL); returns the path."""
  return _write(path, encode_png(image))


def save_figure(path: str | epath.PathLike, figure) -> str:
  """Writes a matplotlib `figure` as a PNG at `path` (local or a URL); returns the path."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png')
  return _write(path, buffer.getvalue())


def interleave_rows(originals, *outputs, columns: int = PAIR_COLUMNS):
  """Rows of `columns` originals, each followed by the same row of every set of outputs. Jittable.

  originals, each of outputs: [N, H, W, C] in [-1, 1] -> [S * ceil(N / columns) * columns, H, W,
  C] with S = 1 + len(outputs); the last row is padded with white.
  """
  sets = (originals, *outputs)
  rows = -(-originals.shape[0] // columns)
  pad = rows * columns - originals.shape[0]
  stacked = jnp.stack([jnp.pad(x, ((0, pad), (0, 0), (0, 0), (0, 0)), constant_values=1.0)
                       for x in sets])  # [S, rows * columns, H, W, C]
  stacked = stacked.reshape(len(sets), rows, columns, *originals.shape[1:]).swapaxes(0, 1)
  return stacked.reshape(-1, *originals.shape[1:])
