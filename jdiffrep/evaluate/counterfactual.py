"""DiTi counterfactual generation (SPEC section 5) and a classifier to read its results.

Images A and B are encoded to z_A and z_B; the dims of one subset group of z_A (a contiguous range
of time-step subsets, so a range of diffusion steps) are replaced by those of z_B; the result is
decoded by DDIM from A's inverted noise x_T^A, with z masked by the cumulative mask m(t) at every
step of inversion and generation. If the representation is disentangled over time-steps, only the
attributes that the group's steps decide change (coarse ones at late t, fine ones at early t).

`attribute_change_rates` measures that with a reader (`attribute_reader.py`), a small CNN trained
on the dataset's categorical attributes (or its binary attributes, each read as a 2-class head):
for each group and attribute, how often the counterfactual takes B's value and how often it keeps
A's. `pixel_distances` is the label-free reading every dataset gets: how far each counterfactual
lies from A and from B. `counterfactual_grid.py` draws them.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdiffrep import diffusion
from jdiffrep import timestep_features
from jdiffrep.evaluate.attribute_reader import ClassifyFn

Group = tuple[int, int]  # subsets [start, end)

# The official DiTi counterfactual groups for k = 64 subsets (SPEC section 5).
OFFICIAL_GROUPS_K64: tuple[Group, ...] = ((2, 6), (16, 24), (24, 32), (32, 64))
DEFAULT_NUM_GROUPS = 4


# -------------------------------------------------------------------------------------------------
# Subset groups.
# -------------------------------------------------------------------------------------------------

def _groups_from_boundaries(num_subsets: int, boundaries: Sequence[int]) -> list[Group]:
  """[b_0, b_1, ..., b_G] -> [(b_0, b_1), ..., (b_{G-1}, b_G)], checked."""
  boundaries = [int(b) for b in boundaries]
  if len(boundaries) < 2 or any(e <= s for s, e in zip(boundaries, boundaries[1:])):
    raise ValueError(f'boundaries must hold at least two strictly increasing subset indices; got '
                     f'{boundaries}.')
  if boundaries[0] < 0 or boundaries[-1] > num_subsets:
    raise ValueError(f'boundaries must lie in [0, num_subsets={num_subsets}]; got {boundaries}.')
  return list(zip(boundaries[:-1], boundaries[1:]))


def subset_groups(num_subsets: int, num_groups: int | None = None,
                  boundaries: Sequence[int] | None = None) -> list[Group]:
  """Ranges [start, end) of subsets to swap or probe together.

  `boundaries` [b_0, ..., b_G] gives the groups [b_0, b_1), ..., [b_{G-1}, b_G). Otherwise, with
  k = 64 and no `num_groups`, the official groups [(2, 6), (16, 24), (24, 32), (32, 64)]; else
  [0, k) cut into `num_groups` (default min(4, k)) contiguous ranges of (nearly) equal size.
  """
  if num_groups is not None and boundaries is not None:
    raise ValueError('Give num_groups (equal split) or boundaries (explicit groups), not both; got '
                     f'num_groups={num_groups}, boundaries={boundaries}.')
  if boundaries is not None:
    return _groups_from_boundaries(num_subsets, boundaries)
  if num_groups is None and num_subsets == 64:
    return list(OFFICIAL_GROUPS_K64)
  num_groups = min(DEFAULT_NUM_GROUPS, num_subsets) if num_groups is None else num_groups
  if not 1 <= num_groups <= num_subsets:
    raise ValueError(f'num_groups must be in [1, num_subsets={num_subsets}] so that every group '
                     f'holds a subset; got {num_groups}.')
  edges = [g * num_subsets // num_groups for g in range(num_groups + 1)]
  return list(zip(edges[:-1], edges[1:]))


def group_time_range(partition: timestep_features.TimestepPartition,
                     group: Group) -> tuple[int, int]:
  """(first_t, last_t), inclusive, of the steps that subsets [start, end) own."""
  start, end = group
  if not 0 <= start < end <= partition.num_subsets:
    raise ValueError(f'A group is a non-empty subset range [start, end) within [0, '
                     f'{partition.num_subsets}]; got {group}.')
  first_steps = timestep_features.subset_first_steps(partition.num_subsets,
                                                     partition.num_timesteps)
  last_t = partition.num_timesteps - 1 if end == partition.num_subsets else first_steps[end] - 1
  return int(first_steps[start]), int(last_t)


def group_label(partition: timestep_features.TimestepPartition, group: Group) -> str:
  """A short name for a group by its steps, e.g. 't 250-499'."""
  first_t, last_t = group_time_range(partition, group)
  return f't {first_t}-{last_t}'


# -------------------------------------------------------------------------------------------------
# Mixing two representations and two noises.
# -------------------------------------------------------------------------------------------------

def swap_group(z_a: jax.Array, z_b: jax.Array, mask: jax.Array, alpha: float = 1.0) -> jax.Array:
  """z_A with the dims where mask = 1 set to lerp(z_A, z_B, alpha). z_*: [B, d]; mask: [d].

  alpha = 0 gives z_A and alpha = 1 z_B's values in the masked dims, both exactly.
  """
  mixed = (1.0 - alpha) * z_a + alpha * z_b
  return jnp.where(jnp.asarray(mask) > 0, mixed, z_a)


def slerp(x: jax.Array, y: jax.Array, alpha: float) -> jax.Array:
  """Spherical interpolation per example of flattened x, y [B, ...] (as DiTi / PDAE do for x_T).

  Follows the angle between x and y; for equal-norm inputs the norm is kept. Falls back to lerp
  where x and y are (nearly) parallel.
  """
  flat_x, flat_y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
  unit = lambda v: v / jnp.linalg.norm(v, axis=-1, keepdims=True)
  cos = jnp.clip(jnp.sum(unit(flat_x) * unit(flat_y), axis=-1, keepdims=True), -1.0, 1.0)
  omega = jnp.arccos(cos)
  sin_omega = jnp.sin(omega)
  parallel = sin_omega < 1e-6
  safe_sin = jnp.where(parallel, 1.0, sin_omega)
  weight_x = jnp.where(parallel, 1.0 - alpha, jnp.sin((1.0 - alpha) * omega) / safe_sin)
  weight_y = jnp.where(parallel, alpha, jnp.sin(alpha * omega) / safe_sin)
  return (weight_x * flat_x + weight_y * flat_y).reshape(x.shape)


# -------------------------------------------------------------------------------------------------
# Counterfactuals.
# -------------------------------------------------------------------------------------------------

def _jitted_ddim(method, invert_steps: int, generate_steps: int):
  """(invert, decode), each (params, frozen, z [B, d], x [B, H, W, C]) -> [B, H, W, C], jitted.

  z is masked by m(t) at every step (DiTi.conditioned_eps_fn); each compiles once per shape.
  Both clamp the predicted x0 when the method does (`method.clip_x0`).
  """
  def invert(params, frozen, z, x0):
    eps_fn = method.conditioned_eps_fn(params, frozen, z)
    return diffusion.ddim_invert(eps_fn, method.schedule, x0, num_steps=invert_steps,
                                 clip_x0=method.clip_x0, eps_at=method.invert_eps_at)

  def decode(params, frozen, z, x_T):
    eps_fn = method.conditioned_eps_fn(params, frozen, z)
    return diffusion.ddim_sample(eps_fn, method.schedule, x_T, num_steps=generate_steps,
                                 clip_x0=method.clip_x0)

  return jax.jit(invert), jax.jit(decode)


def counterfactuals(method, params, frozen, images_a: jax.Array, images_b: jax.Array,
                    groups: Sequence[Group], *, invert_steps: int,
                    generate_steps: int | None = None, alpha: float = 1.0,
                    noise_alpha: float = 0.0) -> dict:
  """A's reconstruction and, per group, A decoded with that group of z taken from B.

  Args:
    method: a `DiTi` (encode, conditioned_eps_fn, schedule, partition).
    params, frozen: its trained params and the frozen DM's.
    images_a, images_b: [N, H, W, C] in [-1, 1], paired row by row.
    groups: subset ranges [start, end), e.g. from `subset_groups`.
    invert_steps: DDIM steps of the inversion x0 -> x_T (official: 1000).
    generate_steps: DDIM steps of every decode x_T -> x0 (official: 100); None: invert_steps,
      which makes the reconstruction the exact inverse where the decoder is.
    alpha: the swapped dims are lerp(z_A, z_B, alpha); 1 takes B's values.
    noise_alpha: x_T = slerp(x_T^A, x_T^B, noise_alpha) (the official interpolation also moves
      the noise); 0, the default, decodes from A's own x_T^A and skips inverting B.

  Returns:
    {'reconstruction': [N, H, W, C], 'swapped': [G, N, H, W, C]}, NumPy float32, unclipped
    (~[-1, 1]). Inversion and decoding are jitted once per call; all G + 1 decodes share one
    compilation.
  """
  images_a, images_b = jnp.asarray(images_a), jnp.asarray(images_b)
  if images_a.shape != images_b.shape:
    raise ValueError(f'images_a and images_b must be pairs of the same shape; got '
                     f'{images_a.shape} and {images_b.shape}.')
  invert, decode = _jitted_ddim(method, invert_steps, generate_steps or invert_steps)
  encode = jax.jit(method.encode)
  z_a, z_b = encode(params, images_a), encode(params, images_b)
  x_T = invert(params, frozen, z_a, images_a)
  reconstruction = decode(params, frozen, z_a, x_T)
  if noise_alpha:
    x_T = slerp(x_T, invert(params, frozen, z_b, images_b), noise_alpha)
  swapped = [decode(params, frozen, swap_group(z_a, z_b, method.partition.subset_range_mask(*g),
                                               alpha), x_T)
             for g in groups]
  return {'reconstruction': np.asarray(reconstruction), 'swapped': np.stack(swapped)}


# -------------------------------------------------------------------------------------------------
# Reading them.
# -------------------------------------------------------------------------------------------------

def attribute_change_rates(classify: ClassifyFn, images_a, images_b, result: dict,
                           attribute_names: Sequence[str],
                           group_names: Sequence[str] | None = None) -> dict:
  """How often each swapped group carries each attribute from B into A.

  Only pairs whose A and B differ in the attribute (as `classify` reads the originals) count.
  Returns {group name: {attribute: {'took_b': fraction of those pairs whose counterfactual reads
  as B's value, 'kept_a': fraction that still reads as A's, 'pairs': their number}}}; the
  fractions are NaN when no pair differs. Groups are named `group_names`, else 'group_<g>'.
  """
  swapped = np.asarray(result['swapped'])
  if group_names is None:
    group_names = [f'group_{g}' for g in range(swapped.shape[0])]
  group_names = list(group_names)
  if len(group_names) != swapped.shape[0]:
    raise ValueError(f'Need one name per swapped group ({swapped.shape[0]}); got {group_names}.')
  read_a, read_b = classify(images_a), classify(images_b)
  rates = {}
  for name, swapped_images in zip(group_names, swapped):
    read_swapped = classify(swapped_images)
    rates[name] = {attribute: _change_rate(*(np.asarray(r[attribute]) for r in
                                             (read_a, read_b, read_swapped)))
                   for attribute in attribute_names}
  return rates


def pixel_distances(images_a, images_b, result: dict,
                    group_names: Sequence[str] | None = None) -> dict:
  """Label-free reading of each swapped group: how far its counterfactuals lie from A and B.

  Distances are per-image RMS pixel differences (images in [-1, 1]), averaged over the pairs.
  Returns {group name: {'to_a', 'to_b', 'toward_b'}}, toward_b = mean of to_a / (to_a + to_b)
  per pair: 0 is A itself, 1 is B itself; a group that moves nothing stays near 0. The row
  'reconstruction' (A decoded with its own z) gives the floor that decoding alone costs.
  """
  images_a, images_b = np.asarray(images_a, np.float64), np.asarray(images_b, np.float64)
  swapped = np.asarray(result['swapped'], np.float64)
  names = list(group_names) if group_names is not None else [
      f'group_{g}' for g in range(swapped.shape[0])]
  if len(names) != swapped.shape[0]:
    raise ValueError(f'Need one name per swapped group ({swapped.shape[0]}); got {names}.')
  rms = lambda x, y: np.sqrt(np.mean((x - y) ** 2, axis=tuple(range(1, x.ndim))))
  readings = {}
  for name, images in [('reconstruction', np.asarray(result['reconstruction'], np.float64)),
                       *zip(names, swapped)]:
    to_a, to_b = rms(images, images_a), rms(images, images_b)
    toward_b = to_a / np.maximum(to_a + to_b, 1e-12)
    readings[name] = {'to_a': float(to_a.mean()), 'to_b': float(to_b.mean()),
                      'toward_b': float(toward_b.mean())}
  return readings


def _change_rate(a: np.ndarray, b: np.ndarray, swapped: np.ndarray) -> dict:
  """Among pairs with a != b (class indices [N]): fractions where swapped == b, swapped == a."""
  differ = a != b
  pairs = int(differ.sum())
  fraction = lambda hits: float(hits[differ].mean()) if pairs else float('nan')
  return {'took_b': fraction(swapped == b), 'kept_a': fraction(swapped == a), 'pairs': pairs}
