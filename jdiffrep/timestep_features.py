"""DiTi cumulative time-step features: which encoder dims the decoder sees at diffusion step t.

The T steps are cut into k contiguous subsets, `idx(t) = floor(t * k / T)`, and subset i owns a
contiguous block of `dims_per_subset[i]` encoder dims (starting at `dim_offsets[i]`). At step t
the decoder sees the dims of subsets 0..idx(t): few dims at small t (little noise, only fine detail
lost), all of them at large t. k = 1 is PDAE (every dim at every step). See SPEC.md section 3.

Masks are built once in NumPy as [T, d] tables; `mask_tables` turns them into jnp constants that
jitted code indexes with a traced t (`mask_condition`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

GRADIENT_MODES = ('base', 'stop_grad')

# The paper's CelebA config: 5 stages of steps ([0, 50), [50, 100), ...) owning 10, 25, ... dims.
CELEBA_STAGES = dict(stage_boundaries=(50, 100, 300, 500, 1000),
                     stage_dims=(10, 25, 327, 100, 50))


# -------------------------------------------------------------------------------------------------
# Steps -> subsets.
# -------------------------------------------------------------------------------------------------

def subset_index(t, num_subsets: int, num_timesteps: int):
  """idx(t) = floor(t * k / T) in exact integer arithmetic. t: int, or int array (NumPy or jax,
  traced OK) of any shape; returns the same kind and shape."""
  return t * num_subsets // num_timesteps


def subset_first_steps(num_subsets: int, num_timesteps: int) -> np.ndarray:
  """[k] int: the first step of each subset, ceil(i * T / k) (the smallest t with idx(t) = i)."""
  _check_num_subsets(num_subsets, num_timesteps)
  i = np.arange(num_subsets, dtype=np.int64)
  return (i * num_timesteps + num_subsets - 1) // num_subsets


def _check_num_subsets(num_subsets: int, num_timesteps: int) -> None:
  """Every subset must own at least one step, so 1 <= k <= T."""
  if not 1 <= num_subsets <= num_timesteps:
    raise ValueError(f'num_subsets must be in [1, num_timesteps={num_timesteps}] so that every '
                     f'subset owns at least one step; got {num_subsets}.')


# -------------------------------------------------------------------------------------------------
# Subsets -> dims.
# -------------------------------------------------------------------------------------------------

def even_dims(latent_dim: int, num_subsets: int) -> np.ndarray:
  """[k] int: d / k dims per subset (the default and the paper's "balanced" setting)."""
  if num_subsets < 1:
    raise ValueError(f'num_subsets must be >= 1; got {num_subsets}.')
  if latent_dim % num_subsets:
    raise ValueError(f'latent_dim={latent_dim} is not divisible by num_subsets={num_subsets}; '
                     'pick a latent_dim that is a multiple of num_subsets, or give '
                     'stage_boundaries and stage_dims for an uneven split.')
  return np.full(num_subsets, latent_dim // num_subsets, dtype=np.int64)


def _split_evenly_last_takes_rest(total: int, parts: int) -> np.ndarray:
  """[parts] int: total // parts each, the last one also taking the remainder."""
  dims = np.full(parts, total // parts, dtype=np.int64)
  dims[-1] += total - dims.sum()
  return dims


def _check_stages(latent_dim: int, num_timesteps: int, stage_boundaries: Sequence[int],
                  stage_dims: Sequence[int]) -> None:
  """Checks the stage spec on its own (before looking at which subsets fall in which stage)."""
  if len(stage_boundaries) != len(stage_dims) or not stage_boundaries:
    raise ValueError(f'Need one stage_dims entry per stage boundary (and at least one stage); got '
                     f'{len(stage_boundaries)} boundaries {tuple(stage_boundaries)} and '
                     f'{len(stage_dims)} dims {tuple(stage_dims)}.')
  starts = (0,) + tuple(stage_boundaries[:-1])
  if any(end <= start for start, end in zip(starts, stage_boundaries)):
    raise ValueError(f'stage_boundaries must be positive and strictly increasing (stage j covers '
                     f'steps [boundary_(j-1), boundary_j)); got {tuple(stage_boundaries)}.')
  if stage_boundaries[-1] != num_timesteps:
    raise ValueError(f'The last stage boundary must equal num_timesteps={num_timesteps} so the '
                     f'stages cover every step; got {tuple(stage_boundaries)}.')
  if sum(stage_dims) != latent_dim:
    raise ValueError(f'stage_dims must sum to latent_dim={latent_dim}; {tuple(stage_dims)} sums to '
                     f'{sum(stage_dims)}.')


def staged_dims(latent_dim: int, num_subsets: int, num_timesteps: int,
                stage_boundaries: Sequence[int], stage_dims: Sequence[int]) -> np.ndarray:
  """[k] int: the official uneven split. Stage j covers steps [boundary_(j-1), boundary_j) (from 0);
  its stage_dims[j] dims are split evenly among the subsets whose first step falls in the stage,
  the last of them taking the remainder."""
  _check_num_subsets(num_subsets, num_timesteps)
  _check_stages(latent_dim, num_timesteps, stage_boundaries, stage_dims)
  first_steps = subset_first_steps(num_subsets, num_timesteps)
  stage_of_subset = np.searchsorted(np.asarray(stage_boundaries), first_steps, side='right')
  subsets_per_stage = np.bincount(stage_of_subset, minlength=len(stage_boundaries))
  dims = []
  for stage, (num, stage_dim) in enumerate(zip(subsets_per_stage, stage_dims)):
    start = 0 if stage == 0 else stage_boundaries[stage - 1]
    where = f'Stage {stage} (steps [{start}, {stage_boundaries[stage]}))'
    if num == 0:
      raise ValueError(f'{where} holds the first step of no subset (a subset spans '
                       f'{num_timesteps / num_subsets:g} steps), so its {stage_dim} dims would go '
                       'unused; widen the stage or use more subsets.')
    if stage_dim < num:
      raise ValueError(f'{where} has {num} subsets but only {stage_dim} dims; give it at least one '
                       'dim per subset.')
    dims.append(_split_evenly_last_takes_rest(int(stage_dim), int(num)))
  return np.concatenate(dims)


# -------------------------------------------------------------------------------------------------
# The partition and its masks.
# -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TimestepPartition:
  """k subsets of the T steps, subset i owning `dims_per_subset[i]` contiguous encoder dims."""
  num_timesteps: int
  num_subsets: int
  dims_per_subset: np.ndarray  # [k] int, read-only.

  def __post_init__(self):
    _check_num_subsets(self.num_subsets, self.num_timesteps)
    dims = np.array(self.dims_per_subset, dtype=np.int64)
    if dims.shape != (self.num_subsets,) or np.any(dims < 1):
      raise ValueError(f'dims_per_subset must hold one positive count per subset '
                       f'(num_subsets={self.num_subsets}); got {self.dims_per_subset}.')
    dims.flags.writeable = False
    object.__setattr__(self, 'dims_per_subset', dims)

  # Value semantics: the generated __eq__/__hash__ cannot compare arrays.
  def __eq__(self, other):
    if not isinstance(other, TimestepPartition):
      return NotImplemented
    return self._key() == other._key()

  def __hash__(self):
    return hash(self._key())

  def _key(self):
    return (self.num_timesteps, self.num_subsets, tuple(self.dims_per_subset.tolist()))

  @property
  def latent_dim(self) -> int:
    return int(self.dims_per_subset.sum())

  @property
  def dim_offsets(self) -> np.ndarray:
    """[k + 1] int: subset i owns dims [dim_offsets[i], dim_offsets[i + 1])."""
    return np.concatenate([[0], np.cumsum(self.dims_per_subset)])

  @property
  def subset_of_step(self) -> np.ndarray:
    """[T] int: idx(t) for every step."""
    return subset_index(np.arange(self.num_timesteps), self.num_subsets, self.num_timesteps)

  @property
  def _subset_of_dim(self) -> np.ndarray:
    """[d] int: the subset that owns each dim."""
    return np.repeat(np.arange(self.num_subsets), self.dims_per_subset)

  def _step_masks(self, keep) -> np.ndarray:
    """[T, d] float32: row t keeps dim j where keep(subset of j, idx(t)) is true."""
    return keep(self._subset_of_dim[None, :], self.subset_of_step[:, None]).astype(np.float32)

  def cumulative_masks(self) -> np.ndarray:
    """[T, d] float32: row t keeps the dims of subsets 0..idx(t) (what the decoder sees)."""
    return self._step_masks(np.less_equal)

  def own_masks(self) -> np.ndarray:
    """[T, d] float32: row t keeps only the dims of subset idx(t)."""
    return self._step_masks(np.equal)

  def receding_masks(self) -> np.ndarray:
    """[T, d] float32: row t keeps the dims of subsets 0..idx(t)-1 (all zero when idx(t) = 0)."""
    return self._step_masks(np.less)

  def subset_range_mask(self, start: int, end: int) -> np.ndarray:
    """[d] float32: keeps the dims of subsets [start, end), e.g. to swap or probe a group."""
    if not 0 <= start <= end <= self.num_subsets:
      raise ValueError(f'Need 0 <= start <= end <= num_subsets={self.num_subsets}; got '
                       f'start={start}, end={end}.')
    subset = self._subset_of_dim
    return ((subset >= start) & (subset < end)).astype(np.float32)

  def kept_dims(self, t: int) -> int:
    """Number of dims the decoder sees at step t."""
    if not 0 <= t < self.num_timesteps:
      raise ValueError(f'Step t must be in [0, {self.num_timesteps - 1}]; got {t}.')
    return int(self.dim_offsets[subset_index(int(t), self.num_subsets, self.num_timesteps) + 1])


def make_partition(latent_dim: int, num_subsets: int, num_timesteps: int,
                   stage_boundaries: Sequence[int] | None = None,
                   stage_dims: Sequence[int] | None = None) -> TimestepPartition:
  """An even split (d / k dims each) when no stages are given, else the staged split. k = 1 is
  PDAE. For the paper's CelebA split: `make_partition(512, 64, 1000, **CELEBA_STAGES)`."""
  if (stage_boundaries is None) != (stage_dims is None):
    raise ValueError('Give both stage_boundaries and stage_dims (staged split) or neither (even '
                     f'split); got stage_boundaries={stage_boundaries}, stage_dims={stage_dims}.')
  if stage_boundaries is None:
    _check_num_subsets(num_subsets, num_timesteps)
    dims = even_dims(latent_dim, num_subsets)
  else:
    dims = staged_dims(latent_dim, num_subsets, num_timesteps, stage_boundaries, stage_dims)
  return TimestepPartition(num_timesteps=num_timesteps, num_subsets=num_subsets,
                           dims_per_subset=dims)


# -------------------------------------------------------------------------------------------------
# Masking the condition inside jitted code.
# -------------------------------------------------------------------------------------------------

@struct.dataclass
class MaskTables:
  """The partition's masks as jnp constants, each float32 [T, d]; index rows with a traced t."""
  cumulative: jax.Array
  own: jax.Array
  receding: jax.Array


def mask_tables(partition: TimestepPartition) -> MaskTables:
  """Builds the three [T, d] tables once, on the host."""
  return MaskTables(cumulative=jnp.asarray(partition.cumulative_masks()),
                    own=jnp.asarray(partition.own_masks()),
                    receding=jnp.asarray(partition.receding_masks()))


def mask_condition(z: jax.Array, t: jax.Array, masks: MaskTables, mode: str = 'base') -> jax.Array:
  """The decoder's condition at step t. z: [B, d] float; t: [B] int (traced OK). Returns [B, d].

  'base': z * cumulative[t], the gradient reaches every kept dim.
  'stop_grad': sg(z) * receding[t] + z * own[t]; same value, but the gradient reaches only subset
  idx(t), so each subset is trained only at its own steps (the paper's "balanced" setting).
  """
  if mode not in GRADIENT_MODES:
    raise ValueError(f'Unknown gradient mode {mode!r}; valid modes: {list(GRADIENT_MODES)}.')
  if mode == 'base':
    return z * masks.cumulative[t].astype(z.dtype)
  return (jax.lax.stop_gradient(z) * masks.receding[t].astype(z.dtype) +
          z * masks.own[t].astype(z.dtype))
