"""Paths that may be local files or object-store URLs (`gs://bucket/runs`), via `etils.epath`.

`os.path` treats a URL as a relative local path (`os.path.abspath('gs://b/r')` is
`<cwd>/gs:/b/r`), so every workdir, checkpoint, result and picture goes through `epath.Path`.
"""

from __future__ import annotations

import os

from etils import epath


def is_url(path: epath.PathLike) -> bool:
  """Whether `path` names an object store (gs://, s3://, ...) rather than a local file."""
  return '://' in os.fspath(path)


def absolute(path: epath.PathLike) -> epath.Path:
  """`path` as an absolute `epath.Path`: a local relative path is resolved against the current
  directory (orbax needs absolute paths); a URL is already absolute and kept as it is."""
  path = epath.Path(path)
  return path if is_url(path) or path.is_absolute() else path.resolve()
