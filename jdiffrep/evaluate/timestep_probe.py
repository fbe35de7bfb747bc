"""Time-step probe (SPEC section 5): which attributes live in which subset group of z.

A linear attribute probe is trained on the dims of one subset group alone (the group owns a range
of diffusion steps), for every group. With DiTi, coarse attributes should be read best from the
groups of late steps and fine ones from the groups of early steps. `plot_group_ap` draws the
result as a heat map (PIL only).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from jdiffrep import images
from jdiffrep import timestep_features
from jdiffrep.evaluate import counterfactual
from jdiffrep.evaluate import feature_store
from jdiffrep.evaluate import features
from jdiffrep.evaluate import probe


def group_columns(partition: timestep_features.TimestepPartition,
                  group: counterfactual.Group) -> np.ndarray:
  """[n] int: the dims of z that subsets [start, end) own."""
  return np.flatnonzero(partition.subset_range_mask(*group))


def group_probe(features_by_split: Mapping[str, feature_store.Features],
                attributes_by_split: Mapping[str, np.ndarray],
                partition: timestep_features.TimestepPartition,
                groups: Sequence[counterfactual.Group], *, epochs: int = 15, seed: int = 0,
                attribute_names: Sequence[str] | None = None, **probe_kwargs) -> dict:
  """A linear attribute probe on each group's dims of z alone.

  Args:
    features_by_split: {'train', 'validation', 'test'} -> z [N, d], arrays or streamed; and
      optionally 'train_mirrored', z of the flipped train images (the probe then flips).
    attributes_by_split: the same splits -> binary attributes [N, A].
    partition: the representation's time-step partition (which dims each subset owns).
    groups: subset ranges [start, end), e.g. `counterfactual.subset_groups(k)`.
    epochs, seed: for `probe.train_attribute_probe` (best epoch by validation mean AP).
    attribute_names: [A] names; default 'attribute_<j>'.
    **probe_kwargs: more `train_attribute_probe` options (batch_size, learning_rate, ...).

  Returns:
    {group label ('t first-last'): {'subsets': [start, end], 'time_range': [first_t, last_t],
    'num_dims': n, 'mean_ap': test mean AP, 'ap_per_attribute': {name: test AP}}}, in group
    order.
  """
  missing = [s for s in features.SPLITS
             if s not in features_by_split or s not in attributes_by_split]
  if missing:
    raise ValueError('group_probe needs features and attributes for the splits '
                     f'{features.SPLITS}; missing {missing}.')
  num_attributes = np.asarray(attributes_by_split['train']).shape[1]
  names = list(attribute_names or [f'attribute_{j}' for j in range(num_attributes)])
  if len(names) != num_attributes:
    raise ValueError(f'Got {len(names)} attribute names for {num_attributes} attributes.')
  result = {}
  for group in groups:
    columns = group_columns(partition, group)
    x = {s: feature_store.take_columns(z, columns) for s, z in features_by_split.items()}
    y = {s: attributes_by_split[s] for s in features.SPLITS}
    fit = probe.train_attribute_probe(x['train'], y['train'], x['validation'], y['validation'],
                                      x['test'], y['test'], epochs=epochs, seed=seed,
                                      train_x_mirrored=x.get(features.MIRRORED_TRAIN),
                                      **probe_kwargs)
    result[counterfactual.group_label(partition, group)] = {
        'subsets': [int(group[0]), int(group[1])],
        'time_range': list(counterfactual.group_time_range(partition, group)),
        'num_dims': int(columns.size),
        'mean_ap': float(fit.test_metric),
        'ap_per_attribute': {name: float(ap) for name, ap in zip(names, fit.test_per_label)},
    }
  return result


def random_rotation(features_by_split: Mapping[str, feature_store.Features], seed: int = 0
                    ) -> dict[str, feature_store.Features]:
  """Every split's z [N, d] times one Haar-random orthogonal [d, d] matrix (float32).

  The reference for `group_probe`: a group of the rotated z is a random subspace of z with the
  group's size, so it holds no group-specific information. A group of the real z that reads an
  attribute no better than this has nothing of its own for the probe to find; for an encoder whose
  head is one Linear layer this is what dims the decoder ignores look like (they stay random
  projections of the shared features).
  """
  d = next(iter(features_by_split.values())).shape[1]
  q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
  rotation = (q * np.sign(np.diag(r))).astype(np.float32)  # sign fix: Haar-distributed
  return {split: feature_store.matmul(z, rotation) for split, z in features_by_split.items()}


def best_group_per_attribute(result: dict) -> dict[str, str]:
  """{attribute: label of the group whose dims alone give it the highest test AP} (None when the
  attribute has no AP in any group)."""
  labels = list(result)
  attributes = result[labels[0]]['ap_per_attribute']
  best = {}
  for name in attributes:
    aps = np.array([result[label]['ap_per_attribute'][name] for label in labels])
    best[name] = labels[int(np.nanargmax(aps))] if np.isfinite(aps).any() else None
  return best


# -------------------------------------------------------------------------------------------------
# The heat map.
# -------------------------------------------------------------------------------------------------

_LOW_COLOUR = np.array([247, 251, 255])  # AP 0: near white ...
_HIGH_COLOUR = np.array([8, 48, 107])  # ... AP 1: dark blue.
_MISSING_COLOUR = (200, 200, 200)


def ap_colour(ap: float) -> tuple[int, int, int]:
  """The cell colour of an AP in [0, 1] (grey when NaN)."""
  if not math.isfinite(ap):
    return _MISSING_COLOUR
  mix = min(max(ap, 0.0), 1.0)
  return tuple(int(round(c)) for c in (1 - mix) * _LOW_COLOUR + mix * _HIGH_COLOUR)


def _text_colour(ap: float) -> str:
  return 'white' if math.isfinite(ap) and ap > 0.55 else 'black'


def plot_group_ap(result: dict, attribute_names: Sequence[str] | None, path: str, *,
                  title: str = 'Test AP of a linear probe on one subset group of z',
                  cell_size: tuple[int, int] = (84, 26)) -> str:
  """Writes a heat map PNG of `group_probe`'s result; returns path.

  Rows are attributes (`attribute_names`, in that order; default all of them), columns groups
  labelled with their subsets and steps; each cell shows its AP, shaded from white (0) to dark
  blue (1), and the best group of each row is outlined. The bottom row is the mean AP.
  """
  labels = list(result)
  names = list(attribute_names or result[labels[0]]['ap_per_attribute'])
  rows = [(name, [result[label]['ap_per_attribute'][name] for label in labels]) for name in names]
  rows.append(('mean AP', [result[label]['mean_ap'] for label in labels]))

  font = ImageFont.load_default(size=12)
  title_font = ImageFont.load_default(size=14)
  cell_w, cell_h = cell_size
  name_w = 12 + max(int(font.getlength(name)) for name, _ in rows)
  title_h, header_h, margin = 26, 34, 8
  width = max(name_w + cell_w * len(labels), int(title_font.getlength(title))) + 2 * margin
  height = title_h + header_h + cell_h * len(rows) + 2 * margin
  image = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(image)
  draw.text((width / 2, margin + title_h / 2), title, fill='black', font=title_font, anchor='mm')

  top = margin + title_h
  left = margin + name_w
  for col, label in enumerate(labels):
    start, end = result[label]['subsets']
    centre = left + col * cell_w + cell_w / 2
    draw.text((centre, top + header_h * 0.3), f'subsets {start}-{end - 1}', fill='black',
              font=font, anchor='mm')
    draw.text((centre, top + header_h * 0.72), label, fill='black', font=font, anchor='mm')

  top += header_h
  for row, (name, aps) in enumerate(rows):
    y0 = top + row * cell_h
    if name == 'mean AP':  # a rule above the summary row
      draw.line([(margin, y0), (left + cell_w * len(labels), y0)], fill='black', width=1)
    draw.text((left - 6, y0 + cell_h / 2), name, fill='black', font=font, anchor='rm')
    finite = [ap for ap in aps if math.isfinite(ap)]
    best = max(finite) if finite else None
    for col, ap in enumerate(aps):
      box = (left + col * cell_w, y0, left + (col + 1) * cell_w - 1, y0 + cell_h - 1)
      draw.rectangle(box, fill=ap_colour(ap))
      text = f'{ap:.2f}' if math.isfinite(ap) else 'n/a'
      draw.text((box[0] + cell_w / 2, y0 + cell_h / 2), text, fill=_text_colour(ap), font=font,
                anchor='mm')
      if ap == best:
        draw.rectangle(box, outline=(230, 120, 0), width=2)
  return images.save_png(path, np.asarray(image.convert('RGB')))
