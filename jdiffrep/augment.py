"""The SimCLR / SimSiam image augmentations of the official DiTi baselines, jittable.

`dataset/celeba64.py` of yue-zhongqi/diti builds each view as torchvision's
  RandomHorizontalFlip() -> RandomApply([ColorJitter(b, c, s, h)], p=0.8)
  -> RandomGrayscale(p=0.2) -> RandomApply([GaussianBlur(size // 20 * 2 + 1, (0.1, 2.0))], p=0.5)
after its crop and resize (the input pipeline's), with (b, c, s, h) = (0.8, 0.8, 0.8, 0.2) for
SimCLR and (0.4, 0.4, 0.4, 0.1) for SimSiam, and no random resized crop. This module does the
same on device, inside the jitted train step, with torchvision's semantics: colour operations
act on [0, 1] values and clamp after each blend, the jitter's four operations run in a random
order, the hue moves through HSV, grayscale is 0.2989 R + 0.587 G + 0.114 B, and the blur is a
separable Gaussian with reflected borders. Images enter and leave in [-1, 1], [B, H, W, 3].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


@dataclasses.dataclass(frozen=True)
class ViewAugmentation:
  """One view's random transformations; probabilities and strengths as torchvision's."""
  flip_prob: float = 0.5
  jitter_prob: float = 0.8
  brightness: float = 0.8  # factor ~ U[max(0, 1 - b), 1 + b]
  contrast: float = 0.8
  saturation: float = 0.8
  hue: float = 0.2  # shift ~ U[-h, h] of the hue in [0, 1)
  grayscale_prob: float = 0.2
  blur_prob: float = 0.5
  blur_sigma: tuple[float, float] = (0.1, 2.0)

  @classmethod
  def from_config(cls, augment_config) -> 'ViewAugmentation':
    """From a config section with these field names (`config.simclr.augment`)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(augment_config) - fields)
    if unknown:
      raise ValueError(f'Unknown augmentation fields {unknown}; valid: {sorted(fields)}.')
    values = {k: tuple(v) if k == 'blur_sigma' else float(v) for k, v in augment_config.items()}
    for name, value in values.items():
      if name.endswith('_prob') and not 0.0 <= value <= 1.0:
        raise ValueError(f'augment.{name}={value} must be a probability in [0, 1].')
    if not 0.0 <= values.get('hue', 0.0) <= 0.5:
      raise ValueError(f'augment.hue={values["hue"]} must be in [0, 0.5] (torchvision).')
    return cls(**values)


def blur_kernel_size(image_size: int) -> int:
  """The official kernel: image_size // 20 * 2 + 1 (7 at 64x64, 3 at 32x32); odd, >= 1."""
  return image_size // 20 * 2 + 1


def grayscale(image: jax.Array) -> jax.Array:
  """[..., 3] -> [..., 1]: torchvision's luma."""
  return jnp.sum(image * jnp.asarray(GRAY_WEIGHTS, image.dtype), axis=-1, keepdims=True)


def _blend(image: jax.Array, other: jax.Array, factor) -> jax.Array:
  return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor) -> jax.Array:
  """One image [H, W, 3] in [0, 1]."""
  return _blend(image, jnp.zeros_like(image), factor)


def adjust_contrast(image: jax.Array, factor) -> jax.Array:
  """Blend with the mean gray level of the whole image, as torchvision."""
  return _blend(image, jnp.mean(grayscale(image)), factor)


def adjust_saturation(image: jax.Array, factor) -> jax.Array:
  return _blend(image, grayscale(image), factor)


def rgb_to_hsv(image: jax.Array) -> jax.Array:
  """[..., 3] RGB in [0, 1] -> HSV in [0, 1] (torchvision's `_rgb2hsv`)."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  maxc, minc = jnp.max(image, axis=-1), jnp.min(image, axis=-1)
  equal = maxc == minc
  chroma = maxc - minc
  s = chroma / jnp.where(equal, 1.0, maxc)
  divisor = jnp.where(equal, 1.0, chroma)
  rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
  hr = jnp.where(maxc == r, bc - gc, 0.0)
  hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
  hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0)
  h = jnp.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
  return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """[..., 3] HSV in [0, 1] -> RGB (torchvision's `_hsv2rgb`)."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  sector = jnp.floor(h * 6.0)
  f = h * 6.0 - sector
  sector = jnp.mod(sector.astype(jnp.int32), 6)
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  one_hot = jax.nn.one_hot(sector, 6, dtype=hsv.dtype)
  pick = lambda *values: jnp.sum(one_hot * jnp.stack(values, axis=-1), axis=-1)
  return jnp.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)],
                   axis=-1)


def adjust_hue(image: jax.Array, shift) -> jax.Array:
  hsv = rgb_to_hsv(image)
  hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + shift, 1.0))
  return hsv_to_rgb(hsv)


def gaussian_blur(image: jax.Array, sigma, kernel_size: int) -> jax.Array:
  """[H, W, C] blurred by a separable Gaussian of `kernel_size` taps, reflected borders."""
  half = (kernel_size - 1) / 2.0
  x = jnp.linspace(-half, half, kernel_size)
  kernel = jnp.exp(-0.5 * (x / sigma) ** 2)
  kernel = kernel / jnp.sum(kernel)
  pad = kernel_size // 2
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
  height, width = image.shape[:2]
  rows = sum(kernel[i] * padded[i:i + height] for i in range(kernel_size))
  return sum(kernel[i] * rows[:, i:i + width] for i in range(kernel_size))


def _color_jitter(image: jax.Array, rng: jax.Array, aug: ViewAugmentation) -> jax.Array:
  """torchvision's ColorJitter: the four adjustments, each with its random factor, in a random
  order."""
  order_rng, b_rng, c_rng, s_rng, h_rng = jax.random.split(rng, 5)
  factor = lambda key, strength: jax.random.uniform(key, (), minval=max(0.0, 1.0 - strength),
                                                    maxval=1.0 + strength)
  b, c, s = (factor(b_rng, aug.brightness), factor(c_rng, aug.contrast),
             factor(s_rng, aug.saturation))
  h = jax.random.uniform(h_rng, (), minval=-aug.hue, maxval=aug.hue)
  operations = (lambda x: adjust_brightness(x, b), lambda x: adjust_contrast(x, c),
                lambda x: adjust_saturation(x, s), lambda x: adjust_hue(x, h))
  for index in jax.random.permutation(order_rng, 4):
    image = jax.lax.switch(index, operations, image)
  return image


def augment_image(image: jax.Array, rng: jax.Array, aug: ViewAugmentation) -> jax.Array:
  """One view of one image [H, W, 3] in [-1, 1]."""
  keys = jax.random.split(rng, 8)
  x = (image + 1.0) / 2.0
  x = jnp.where(jax.random.bernoulli(keys[0], aug.flip_prob), x[:, ::-1], x)
  x = jnp.where(jax.random.bernoulli(keys[1], aug.jitter_prob), _color_jitter(x, keys[2], aug), x)
  x = jnp.where(jax.random.bernoulli(keys[3], aug.grayscale_prob),
                jnp.broadcast_to(grayscale(x), x.shape), x)
  sigma = jax.random.uniform(keys[4], (), minval=aug.blur_sigma[0], maxval=aug.blur_sigma[1])
  blurred = gaussian_blur(x, sigma, blur_kernel_size(x.shape[0]))
  x = jnp.where(jax.random.bernoulli(keys[5], aug.blur_prob), blurred, x)
  return x * 2.0 - 1.0


def augment_batch(images: jax.Array, rng: jax.Array, aug: ViewAugmentation) -> jax.Array:
  """[B, H, W, 3] in [-1, 1] -> one random view of each image, independent per image."""
  keys = jax.random.split(rng, images.shape[0])
  return jax.vmap(lambda x, k: augment_image(x, k, aug))(images, keys)
