"""The counterfactual grid: one row per pair (A, B, A reconstructed, A with each group from B)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from jdiffrep import images as images_lib
from jdiffrep.data import pipeline


def _label_strip(labels: Sequence[str], column_width: int, padding: int,
                 height: int = 16) -> np.ndarray:
  """A white [height, W, 3] uint8 strip with one centred label above each grid column."""
  width = len(labels) * (column_width + padding) + padding
  strip = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(strip)
  font = ImageFont.load_default(size=10)
  for i, label in enumerate(labels):
    centre = padding + i * (column_width + padding) + column_width / 2
    draw.text((centre, height / 2), label, fill='black', font=font, anchor='mm')
  return np.asarray(strip)


def counterfactual_grid(images_a, images_b, result: dict, group_names: Sequence[str], *,
                        upscale: int = 2, padding: int = 2) -> np.ndarray:
  """One row per pair: A, B, reconstruction of A, then A with each group swapped in from B.

  Images are [N, H, W, C] in [-1, 1] (`result` from `counterfactuals`); a header names the
  columns. Returns a uint8 [rows, cols, C] image.
  """
  swapped = np.asarray(result['swapped'])
  if len(group_names) != swapped.shape[0]:
    raise ValueError(f'Need one name per swapped group ({swapped.shape[0]}); got '
                     f'{len(group_names)}: {list(group_names)}.')
  columns = [np.asarray(images_a), np.asarray(images_b), np.asarray(result['reconstruction']),
             *swapped]
  table = np.stack(columns, axis=1)  # [N, 3 + G, H, W, C]
  tiles = pipeline.to_uint8(table.reshape(-1, *table.shape[2:]))
  if tiles.shape[-1] == 1:
    tiles = np.repeat(tiles, 3, axis=-1)
  grid = images_lib.make_grid(tiles, num_columns=table.shape[1], padding=padding, upscale=upscale)
  header = _label_strip(['A', 'B', 'recon A', *group_names], tiles.shape[2] * upscale, padding)
  return np.concatenate([header, grid], axis=0)


def save_counterfactual_grid(path: str, images_a, images_b, result: dict,
                             group_names: Sequence[str], **grid_kwargs) -> str:
  """Writes `counterfactual_grid` as a PNG; returns path."""
  return images_lib.save_png(path, counterfactual_grid(images_a, images_b, result, group_names,
                                                       **grid_kwargs))
