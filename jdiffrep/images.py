"""Image grids for people to look at: samples written as PNG and to TensorBoard."""

from __future__ import annotations

import math
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image

PAIR_COLUMNS = 8  # `interleave_rows` grids: 8 originals, then their 8 outputs


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


def save_png(path: str, image: np.ndarray) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(np.asarray(image).squeeze() if image.shape[-1] == 1 else image).save(path)
  return path


def interleave_rows(originals, outputs, columns: int = PAIR_COLUMNS):
  """Rows of `columns` originals, each followed by the row of their outputs. Jittable.

  originals, outputs: [N, H, W, C] in [-1, 1] -> [2 * ceil(N / columns) * columns, H, W, C];
  the last row is padded with white.
  """
  rows = -(-originals.shape[0] // columns)
  pad = rows * columns - originals.shape[0]
  pair = jnp.stack([jnp.pad(x, ((0, pad), (0, 0), (0, 0), (0, 0)), constant_values=1.0)
                    for x in (originals, outputs)])  # [2, rows * columns, H, W, C]
  pair = pair.reshape(2, rows, columns, *originals.shape[1:]).swapaxes(0, 1)
  return pair.reshape(-1, *originals.shape[1:])
