"""Loads the CIFAR python batches without running arbitrary code.

`pickle.load` can call any importable function, so an untrusted pickle can run any code. CIFAR
batches only hold dicts, lists, bytes, ints and NumPy arrays; rebuilding an array needs exactly
three globals (`numpy.core.multiarray._reconstruct`, `numpy.ndarray`, `numpy.dtype`). This
unpickler allows those and refuses every other global, so a malicious file fails to load instead
of running.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

# (module, name) -> the object it stands for. `numpy._core` is NumPy 2's name for `numpy.core`
# (files written by NumPy 2 name it; the original CIFAR files name `numpy.core`).
_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): np.ndarray.__reduce__(np.zeros(0))[0],
    ('numpy._core.multiarray', '_reconstruct'): np.ndarray.__reduce__(np.zeros(0))[0],
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
}


class UnsafePickleError(pickle.UnpicklingError):
  """The pickle names a global outside the allowed NumPy array constructors."""


class RestrictedUnpickler(pickle.Unpickler):
  """An Unpickler whose `find_class` only resolves the NumPy array constructors."""

  def find_class(self, module: str, name: str):
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          f'Refusing to load global {module}.{name}: only NumPy arrays, dicts, lists, bytes and '
          'numbers may appear in a CIFAR batch. The file is not an original CIFAR python batch; '
          'use the original files (or the TFDS cifar10 dataset).'
      ) from None


def loads(data: bytes):
  """Unpickles `data` (Python 2 strings read as bytes, as in the CIFAR files)."""
  return RestrictedUnpickler(io.BytesIO(data), encoding='bytes').load()
