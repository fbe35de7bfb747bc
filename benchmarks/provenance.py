"""Where a benchmark row comes from: the date, the commit, the package versions, the host."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def commit() -> str | None:
  """$JDIFFREP_COMMIT (for a copy of the tree without .git), else `git rev-parse HEAD`, with
  '+dirty' when tracked files other than benchmarks/results/ (where rows are appended) differ
  from it; None when neither is known."""
  if os.environ.get('JDIFFREP_COMMIT'):
    return os.environ['JDIFFREP_COMMIT']
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True, timeout=10).stdout.strip()
    dirty = subprocess.run(['git', 'diff', '--quiet', 'HEAD', '--', '.',
                            ':(exclude)benchmarks/results'], cwd=REPO_ROOT,
                           timeout=10, check=False).returncode != 0
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ('+dirty' if dirty else '')


def versions() -> dict:
  """Python and the JAX stack's versions."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  return {'python': platform.python_version(), 'jax': jax.__version__,
          'jaxlib': jaxlib.__version__, 'flax': flax.__version__, 'optax': optax.__version__}


def cores() -> int:
  """The CPU cores this process may run on."""
  return len(os.sched_getaffinity(0))


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo on Linux; `platform.processor()` elsewhere): the same
  step's ratio to the peer differs between CPUs (benchmarks/README.md, "What the CPU rows show")."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as cpuinfo:
      for line in cpuinfo:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def host() -> str:
  """'x86_64, <CPU model>, N cores usable'."""
  return f'{platform.machine()}, {cpu_model()}, {cores()} cores usable'


def platform_of(device_kind: str) -> str:
  """'cpu', 'gpu' or 'tpu' from a JAX device_kind ('cpu', 'NVIDIA H200', 'TPU v5 lite'), for a
  parent that never starts a backend itself: the results file's prefix."""
  if 'tpu' in device_kind.lower():
    return 'tpu'
  return 'cpu' if device_kind.lower() == 'cpu' else 'gpu'


def child_run_fields(device_kind: str, device_count: int) -> dict:
  """A row's provenance when a child process (the CLI) ran on the devices and this one did not:
  commit, platform, the child's devices, this host, and the package versions (imports only,
  so the device stays the child's)."""
  return {'commit': commit(), 'platform': platform_of(device_kind), 'device_kind': device_kind,
          'device_count': device_count, 'host': host(), 'versions': versions()}


def peak_rss_bytes() -> int:
  """The most resident memory this process has held so far (Linux reports KiB)."""
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def append_row(row: dict, out: str) -> None:
  """Prints `row` as one JSON line and appends it to the file `out` ('-': print only)."""
  line = json.dumps(row)
  print(line)
  if out != '-':
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    with open(out, 'a') as f:
      f.write(line + '\n')


def main() -> None:
  """Prints the versions, the torch peer's where installed, and the JAX devices."""
  import jax  # pylint: disable=g-import-not-at-top
  found = versions()
  try:
    import torch  # pylint: disable=g-import-not-at-top
    found['torch'] = torch.__version__
  except ImportError:
    found['torch'] = 'not installed'
  print(' | '.join(f'{k} {v}' for k, v in found.items()))
  print(f'commit {commit()} | host {host()}')
  print('devices:', jax.devices())


if __name__ == '__main__':
  main()
