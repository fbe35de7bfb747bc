"""Input checks of the probes and kNN: every error names the argument and what is wrong with it."""

from __future__ import annotations

import numpy as np

from jdiffrep.evaluate import feature_store
from jdiffrep.evaluate.feature_store import Features


def check_same_length(*named_arrays: tuple[str, np.ndarray]) -> None:
  lengths = {name: len(array) for name, array in named_arrays}
  if len(set(lengths.values())) > 1:
    raise ValueError(f'arrays must have the same number of rows: {lengths}')


def check_finite(name: str, array: np.ndarray) -> None:
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{name} contains non-finite values (NaN or inf): '
                     f'{int(np.size(array) - np.isfinite(array).sum())} of {np.size(array)}')


def as_binary(labels: np.ndarray, name: str) -> np.ndarray:
  """bool copy of 0/1 (or bool) labels; anything else is an error."""
  labels = np.asarray(labels)
  if labels.dtype != bool and not np.isin(labels, (0, 1)).all():
    raise ValueError(f'{name} must be bool or 0/1, got values {np.unique(labels)[:10]}')
  return labels.astype(bool)


def as_features(name: str, x: Features) -> Features:
  """float32 [N, D] features with N, D > 0 and finite values.

  A streamed matrix is checked for its shape here and for finite values as its chunks are read.
  """
  if feature_store.is_streamed(x):
    if len(x.shape) != 2 or 0 in x.shape:
      raise ValueError(f'{name} must be non-empty 2-D features [N, D], got shape {x.shape}')
    return x
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f'{name} must be 2-D features [N, D], got shape {x.shape}')
  if x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f'{name} is empty: shape {x.shape}')
  if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
    raise ValueError(f'{name} must hold real numbers, got dtype {x.dtype}')
  check_finite(name, x)
  return x.astype(np.float32, copy=False)


def check_same_width(**features: np.ndarray) -> None:
  widths = {name: x.shape[1] for name, x in features.items()}
  if len(set(widths.values())) > 1:
    raise ValueError(f'feature arrays must have the same dimension D: {widths}')


def as_attribute_labels(name: str, y: np.ndarray, num_rows: int) -> np.ndarray:
  """bool [N, A] multi-label targets."""
  y = np.asarray(y)
  if y.ndim != 2:
    raise ValueError(f'{name} must be 2-D attribute labels [N, A], got shape {y.shape}')
  if y.shape[0] != num_rows:
    raise ValueError(f'{name} has {y.shape[0]} rows but its features have {num_rows}')
  return as_binary(y, name)


def as_class_labels(name: str, y: np.ndarray, num_rows: int, num_classes: int) -> np.ndarray:
  """int32 [N] class indices in [0, num_classes)."""
  y = np.asarray(y)
  if y.ndim != 1:
    raise ValueError(f'{name} must be 1-D class indices [N], got shape {y.shape}')
  if y.shape[0] != num_rows:
    raise ValueError(f'{name} has {y.shape[0]} rows but its features have {num_rows}')
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'{name} must hold integer class indices, got dtype {y.dtype}')
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f'{name} must lie in [0, num_classes={num_classes}), got values in '
                     f'[{y.min()}, {y.max()}]')
  return y.astype(np.int32)


def check_positive(**values: int) -> None:
  for name, value in values.items():
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value!r}')

