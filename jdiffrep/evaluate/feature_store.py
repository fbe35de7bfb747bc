"""Feature matrices larger than memory: kept in RAM up to a budget, the rest streamed from disk.

The evaluation extracts every representation of every image of three splits; at CelebA's size the
raw pixels alone are 162,770 x 12,288 float32 (8 GB). `FeatureStore` collects features batch by
batch and keeps them in memory only up to a total byte budget: past it, the largest sets are
spilled to raw float32 files in a local scratch directory and come back as `FeatureFile`s, which
the probes (`evaluate/probe.py`) read a chunk of rows at a time. Everything that fits stays a plain
NumPy array, and the probes treat such an array exactly as before, so small evaluations (the
`shapes` default) give bit-identical results.

`Features` is either a float32 NumPy array [N, D] or a `StreamedFeatures` [N, D]; the helpers here
(`num_rows`, `read_rows`, `take_columns`, `matmul`) accept both.

Files are read with `np.fromfile` into fresh buffers, never memory-mapped: a mapping's touched
pages count as the process's resident memory, which is what the budget bounds. The scratch
directory must be a local path (spill files are written and re-read at random offsets); it is not
the workdir, which may be a `gs://` URL.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Hashable, Iterator, Union

import numpy as np

FLOAT_BYTES = 4  # every stored feature is float32
# A matrix larger than this is probed or searched a chunk of rows (about this many bytes) at a time.
DEFAULT_CHUNK_BYTES = 256 * 2 ** 20


class StreamedFeatures:
  """A float32 matrix [N, D] that is read in row ranges, not held in memory."""

  shape: tuple[int, int]

  def read(self, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as a fresh float32 array [stop - start, D]."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class FeatureFile(StreamedFeatures):
  """Raw little-endian float32 rows [num_rows, dim] in one local file (no header)."""
  path: str
  num_rows: int
  dim: int

  def __post_init__(self):
    expected = self.num_rows * self.dim * FLOAT_BYTES
    actual = os.path.getsize(self.path)
    if actual != expected:
      raise ValueError(f'{self.path} holds {actual} bytes; [{self.num_rows}, {self.dim}] float32 '
                       f'needs {expected}. The file was truncated or written by something else.')

  @property
  def shape(self) -> tuple[int, int]:
    return (self.num_rows, self.dim)

  def read(self, start: int, stop: int) -> np.ndarray:
    start, stop = max(0, start), min(stop, self.num_rows)
    rows = np.fromfile(self.path, dtype='<f4', count=max(0, stop - start) * self.dim,
                       offset=start * self.dim * FLOAT_BYTES)
    return rows.reshape(-1, self.dim)


@dataclasses.dataclass(frozen=True)
class ProjectedFeatures(StreamedFeatures):
  """`base[:, columns] @ matrix`, computed a chunk at a time (either part may be None)."""
  base: StreamedFeatures
  columns: np.ndarray | None = None
  matrix: np.ndarray | None = None

  @property
  def shape(self) -> tuple[int, int]:
    width = self.base.shape[1] if self.columns is None else len(self.columns)
    return (self.base.shape[0], width if self.matrix is None else self.matrix.shape[1])

  def read(self, start: int, stop: int) -> np.ndarray:
    rows = self.base.read(start, stop)
    if self.columns is not None:
      rows = rows[:, self.columns]
    return rows if self.matrix is None else rows @ self.matrix


Features = Union[np.ndarray, StreamedFeatures]


def is_streamed(x: Features) -> bool:
  return isinstance(x, StreamedFeatures)


def num_rows(x: Features) -> int:
  return int(x.shape[0])


def read_rows(x: Features, start: int, stop: int) -> np.ndarray:
  """Rows [start, stop) of an array or a streamed matrix."""
  return x.read(start, stop) if is_streamed(x) else np.asarray(x)[start:stop]


def take_columns(x: Features, columns: np.ndarray) -> Features:
  """x[:, columns]: a NumPy array for an array, a lazy view for a streamed matrix."""
  if is_streamed(x):
    return ProjectedFeatures(x, columns=np.asarray(columns))
  return np.asarray(x)[:, columns]


def matmul(x: Features, matrix: np.ndarray) -> Features:
  """x @ matrix in float32: a NumPy array for an array, a lazy view for a streamed matrix."""
  matrix = np.asarray(matrix, np.float32)
  if is_streamed(x):
    return ProjectedFeatures(x, matrix=matrix)
  return np.asarray(x, np.float32) @ matrix


def row_chunks(total_rows: int, chunk_rows: int) -> list[tuple[int, int]]:
  """[(start, stop)] covering [0, total_rows) in order, each at most chunk_rows long."""
  return [(start, min(start + chunk_rows, total_rows))
          for start in range(0, total_rows, max(1, chunk_rows))]


def chunk_rows_for(dim: int, chunk_bytes: int, multiple_of: int = 1) -> int:
  """Rows of width `dim` (float32) that fit in `chunk_bytes`, rounded down to `multiple_of`
  (at least `multiple_of`)."""
  rows = chunk_bytes // max(1, dim * FLOAT_BYTES)
  return max(multiple_of, rows // multiple_of * multiple_of)


def iter_chunks(x: Features, chunk_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
  """(start, stop, float32 rows) of x in order, at most `chunk_rows` rows at a time (an array's
  chunks are views, a streamed matrix's fresh reads)."""
  for start, stop in row_chunks(num_rows(x), chunk_rows):
    yield start, stop, read_rows(x, start, stop)


class FeatureStore:
  """Collects feature batches per key; holds at most `memory_budget_bytes` of them in RAM in all.

  When an `append` takes the total past the budget, the largest in-memory sets are written to
  `<directory>/<n>.f32` (and every later batch of them appended there) until the rest fits.
  `finish(key)` returns the set: a NumPy array if it never spilled, else a `FeatureFile`.
  Rows must be finite: a NaN from an encoder is reported here, by name, not inside a probe.

  In memory, rows are copied into blocks of about `BLOCK_BYTES`, not kept as one small array per
  batch: large allocations go back to the OS when freed, where thousands of small ones would stay
  in the allocator's heap (resident) after the set is assembled or spilled.
  """

  BLOCK_BYTES = 64 * 2 ** 20

  def __init__(self, directory: str, memory_budget_bytes: int):
    if memory_budget_bytes < 0:
      raise ValueError(f'memory_budget_bytes must be >= 0, got {memory_budget_bytes}')
    self._directory = directory
    self._budget = int(memory_budget_bytes)
    self._blocks: dict[Hashable, list[np.ndarray]] = {}  # the last one filled up to _tail rows
    self._tail: dict[Hashable, int] = {}
    self._bytes: dict[Hashable, int] = {}  # in-memory sets only
    self._files: dict[Hashable, tuple[str, object]] = {}  # key -> (path, open handle)
    self._rows: dict[Hashable, int] = {}
    self._dims: dict[Hashable, int] = {}
    self.spilled: list[Hashable] = []  # keys written to disk, in spill order

  def append(self, key: Hashable, rows: np.ndarray) -> None:
    """Adds rows [B, D] to the set `key` (D fixed per key)."""
    rows = np.asarray(rows, dtype='<f4')
    if rows.ndim != 2:
      raise ValueError(f'features {key!r} must be [B, D], got shape {rows.shape}')
    if self._dims.setdefault(key, rows.shape[1]) != rows.shape[1]:
      raise ValueError(f'features {key!r} changed width: {self._dims[key]} then {rows.shape[1]}')
    if not np.all(np.isfinite(rows)):
      raise ValueError(f'features {key!r} contain non-finite values (NaN or inf) after '
                       f'{self._rows.get(key, 0)} rows: the encoder diverged or its checkpoint '
                       'is broken.')
    self._rows[key] = self._rows.get(key, 0) + rows.shape[0]
    if key in self._files:
      np.ascontiguousarray(rows).tofile(self._files[key][1])
      return
    self._copy_into_blocks(key, rows)
    self._bytes[key] = self._bytes.get(key, 0) + rows.nbytes
    while sum(self._bytes.values()) > self._budget and self._bytes:
      self._spill(max(self._bytes, key=self._bytes.get))

  def _copy_into_blocks(self, key: Hashable, rows: np.ndarray) -> None:
    blocks = self._blocks.setdefault(key, [])
    block_rows = max(1, self.BLOCK_BYTES // (rows.shape[1] * FLOAT_BYTES))
    done = 0
    while done < len(rows):
      if not blocks or self._tail[key] == len(blocks[-1]):
        blocks.append(np.empty((block_rows, rows.shape[1]), '<f4'))  # pages touched as filled
        self._tail[key] = 0
      tail = self._tail[key]
      count = min(len(rows) - done, block_rows - tail)
      blocks[-1][tail:tail + count] = rows[done:done + count]
      self._tail[key] += count
      done += count

  def _filled_blocks(self, key: Hashable) -> list[np.ndarray]:
    """The in-memory rows of `key` as views of its blocks, in order; the store lets go of them."""
    blocks = self._blocks.pop(key, [])
    tail = self._tail.pop(key, 0)
    return blocks[:-1] + [blocks[-1][:tail]] if blocks else []

  def _spill(self, key: Hashable) -> None:
    path = os.path.join(self._directory, f'{len(self._files)}.f32')
    handle = open(path, 'wb')  # pylint: disable=consider-using-with  # closed by finish()
    for block in self._filled_blocks(key):
      block.tofile(handle)
    del self._bytes[key]
    self._files[key] = (path, handle)
    self.spilled.append(key)

  def finish(self, key: Hashable) -> Features:
    """The complete set `key` [N, D]; the store forgets it (its file stays until cleanup)."""
    if key in self._files:
      path, handle = self._files.pop(key)
      handle.close()
      return FeatureFile(path, self._rows.pop(key), self._dims.pop(key))
    self._bytes.pop(key)
    self._rows.pop(key)
    self._dims.pop(key)
    blocks = self._filled_blocks(key)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)

  def close(self) -> None:
    for _, handle in self._files.values():
      handle.close()
    self._files.clear()
