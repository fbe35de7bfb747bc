"""`shapes`: a procedural image dataset with known attributes, needing no download.

Each image is one object on a plain background. The six attributes are chosen so that
diffusion noise destroys them at different noise levels:

* coarse (survive much noise): background colour, object position (quadrant), object size,
  object shape;
* fine (lost early): object shade (two shades of one hue, ~0.18 apart per channel) and a small
  texture inside the object (1-px stripes or a dot grid at 32 px).

Every example is a pure function of `(seed, split, index)`, so any example can be regenerated on
its own. Geometry is given at 32 px and scaled with the resolution.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import numpy as np

CATEGORICAL_ATTRIBUTES: Mapping[str, tuple[str, ...]] = types.MappingProxyType({
    'background': ('blue', 'green', 'red', 'gray'),
    'position': ('top_left', 'top_right', 'bottom_left', 'bottom_right'),
    'size': ('small', 'large'),
    'shape': ('circle', 'square', 'triangle', 'diamond'),
    'shade': ('light', 'dark'),
    'texture': ('plain', 'stripes', 'dots'),
})
COARSE_ATTRIBUTES = ('background', 'position', 'size', 'shape')
FINE_ATTRIBUTES = ('shade', 'texture')

SPLIT_IDS: Mapping[str, int] = types.MappingProxyType(
    {'train': 0, 'validation': 1, 'test': 2})
SUPPORTED_RESOLUTIONS = tuple(range(16, 129, 16))

# Colours as RGB in [0, 1], indexed like the value names above.
BACKGROUND_COLOURS = (
    (0.08, 0.12, 0.42),  # blue
    (0.05, 0.34, 0.12),  # green
    (0.42, 0.07, 0.08),  # red
    (0.24, 0.24, 0.24),  # gray
)
# One yellow hue that contrasts with every background; the two shades differ by 0.18.
OBJECT_COLOURS = (
    (1.00, 0.86, 0.30),  # light
    (0.82, 0.68, 0.12),  # dark
)
TEXTURE_DARKENING = 0.6  # texture pixels are the object colour times this.

# Geometry at 32 px (scaled by resolution / 32), in pixels.
SIZE_RADII = (4.5, 7.0)  # bounding-box half-width of small / large objects.
RADIUS_JITTER = 0.75  # uniform in [-0.75, 0.75].
# Uniform in [-4, 4] per axis around the quadrant centre: objects wander over their quadrant, so
# shape and size are not readable by a linear map of the pixels (a linear probe on raw pixels
# reaches 0.69 shape accuracy at this jitter, 0.95 at +-2).
POSITION_JITTER = 4.0
TEXTURE_PERIOD = 3  # stripes / dots repeat every 3 px ...
TEXTURE_WIDTH = 1  # ... and are 1 px wide.


def _binary_attribute_names() -> tuple[str, ...]:
  """One bit for a two-valued attribute (its second value), else one bit per value."""
  names = []
  for attribute, values in CATEGORICAL_ATTRIBUTES.items():
    if len(values) == 2:
      names.append(f'{attribute}_{values[1]}')
    else:
      names.extend(f'{attribute}_{value}' for value in values)
  return tuple(names)


BINARY_ATTRIBUTE_NAMES = _binary_attribute_names()
_NUM_VALUES = np.array([len(v) for v in CATEGORICAL_ATTRIBUTES.values()])


def binary_attributes(labels: Mapping[str, int]) -> np.ndarray:
  """CelebA-style binary attribute vector: [len(BINARY_ATTRIBUTE_NAMES)] bool."""
  bits = []
  for attribute, values in CATEGORICAL_ATTRIBUTES.items():
    label = int(labels[attribute])
    if len(values) == 2:
      bits.append(label == 1)
    else:
      bits.extend(label == i for i in range(len(values)))
  return np.array(bits, dtype=bool)


def sample_labels(rng: np.random.Generator) -> dict[str, int]:
  """Independent uniform label per attribute: {attribute name: value index}."""
  draws = rng.integers(0, _NUM_VALUES)
  return {name: int(d) for name, d in zip(CATEGORICAL_ATTRIBUTES, draws)}


def _to_uint8(rgb) -> np.ndarray:
  return np.round(np.asarray(rgb) * 255).astype(np.uint8)


def _check_resolution(resolution: int) -> None:
  if resolution not in SUPPORTED_RESOLUTIONS:
    raise ValueError(f'shapes: unsupported resolution {resolution!r}; '
                     f'supported resolutions are {SUPPORTED_RESOLUTIONS}.')


def object_geometry(labels: Mapping[str, int], resolution: int,
                    rng: np.random.Generator) -> tuple[float, float, float]:
  """Object centre and bounding-box half-width in pixels: (centre_y, centre_x, radius).

  The centre is jittered around its quadrant's centre, then clipped so the object's bounding
  box [centre - radius, centre + radius] lies fully inside the image.
  """
  scale = resolution / 32
  radius_jitter, y_jitter, x_jitter = rng.uniform(-1.0, 1.0, size=3)
  radius = (SIZE_RADII[labels['size']] + RADIUS_JITTER * radius_jitter) * scale
  row, col = divmod(labels['position'], 2)
  centre_y = (2 * row + 1) * resolution / 4 + POSITION_JITTER * scale * y_jitter
  centre_x = (2 * col + 1) * resolution / 4 + POSITION_JITTER * scale * x_jitter
  clip = lambda c: float(np.clip(c, radius, resolution - radius))
  return clip(centre_y), clip(centre_x), float(radius)


def shape_mask(shape: int, centre_y: float, centre_x: float, radius: float,
               resolution: int) -> np.ndarray:
  """Pixels (centres at i + 0.5) inside the shape: [R, R] bool."""
  y, x = np.ogrid[:resolution, :resolution]
  v = (y + 0.5 - centre_y) / radius  # [R, 1], -1 at the top of the bounding box.
  u = (x + 0.5 - centre_x) / radius  # [1, R]
  name = CATEGORICAL_ATTRIBUTES['shape'][shape]
  if name == 'circle':
    return u * u + v * v <= 1.0
  if name == 'square':
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
  if name == 'triangle':  # apex at the top, base at the bottom of the bounding box.
    return (v >= -1.0) & (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2)
  if name == 'diamond':
    return np.abs(u) + np.abs(v) <= 1.0
  raise ValueError(f'unknown shape {shape!r}')


def texture_mask(texture: int, resolution: int) -> np.ndarray:
  """Pixels of the texture pattern over the whole image: [R, R] bool (all False if plain)."""
  scale = resolution / 32
  period = max(2, round(TEXTURE_PERIOD * scale))
  width = max(1, round(period * TEXTURE_WIDTH / TEXTURE_PERIOD))  # keeps the duty cycle ~1/3.
  on_line = (np.arange(resolution) - period // 2) % period < width  # [R]
  name = CATEGORICAL_ATTRIBUTES['texture'][texture]
  if name == 'plain':
    return np.zeros((resolution, resolution), dtype=bool)
  if name == 'stripes':  # horizontal stripes.
    return np.broadcast_to(on_line[:, None], (resolution, resolution))
  if name == 'dots':
    return on_line[:, None] & on_line[None, :]
  raise ValueError(f'unknown texture {texture!r}')


def render(labels: Mapping[str, int], resolution: int,
           rng: np.random.Generator) -> np.ndarray:
  """Image of one object with the given labels: [R, R, 3] uint8.

  `rng` draws the position and size jitter only; the labels fix everything else.
  """
  _check_resolution(resolution)
  centre_y, centre_x, radius = object_geometry(labels, resolution, rng)
  inside = shape_mask(labels['shape'], centre_y, centre_x, radius, resolution)
  textured = inside & texture_mask(labels['texture'], resolution)
  object_colour = np.asarray(OBJECT_COLOURS[labels['shade']])
  palette = _to_uint8([BACKGROUND_COLOURS[labels['background']], object_colour,
                       object_colour * TEXTURE_DARKENING])  # [3, 3]
  region = inside.astype(np.intp) + textured  # 0 background, 1 object, 2 texture.
  return palette[region]


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator that example `index` of `split` is drawn from."""
  if split not in SPLIT_IDS:
    raise ValueError(f'shapes: unknown split {split!r}; valid splits are {tuple(SPLIT_IDS)}.')
  return np.random.default_rng([seed, SPLIT_IDS[split], index])


def generate_example(seed: int, split: str, index: int, resolution: int = 32) -> dict:
  """Example `index` of `split`, deterministic in (seed, split, index).

  Returns dict(image=[R, R, 3] uint8, labels={attribute: int}, attributes=[17] bool).
  """
  _check_resolution(resolution)
  rng = example_rng(seed, split, index)
  labels = sample_labels(rng)
  return dict(image=render(labels, resolution, rng), labels=labels,
              attributes=binary_attributes(labels))
