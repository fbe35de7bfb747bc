"""Process settings the project sets for CPU runs, documented in the README ("CPU runs").

XLA:CPU allocates a train step's intermediates afresh on every step: one block for all of them
(3.47 GiB at DiT-S/2, batch 32), from glibc's malloc. glibc maps a block that large with mmap
and unmaps it when it is freed, so every step touches 3.47 GiB of pages new to the process,
and the kernel zeroes each one on its first touch. That costs at least a copy of the memory,
and far more where the host takes freed memory back (virtual machines with free page
reporting, such as the one the benchmarks ran on: a freed page touched again a few seconds
later was written at 0.1-0.3 GB/s, against 4-6 GB/s for a page the process kept). In a
profile of the S/2 step, 45 % of all CPU time was the kernel's `clear_page_erms`.
So the tunables keep freed memory in the process for the next step:
`glibc.malloc.arena_max=1` (one heap: other threads' heaps map large blocks whatever the other
settings say), `glibc.malloc.mmap_max=0` (large blocks from the heap, not from their own
mappings) and `glibc.malloc.trim_threshold` above any machine's memory (the heap is never given
back). The paired S/2 step fell from 21.9 to 9.49 s there (benchmarks/README.md).
`glibc.malloc.hugetlb=1` makes the heap use transparent huge pages (2 MiB), which cut the page
faults 25-fold when memory was still returned.

The memory then needs steps that do not overlap: XLA:CPU dispatches asynchronously, so the next
step's block can be allocated while the previous one is still held, and glibc 2.36 cannot reuse
a freed block for an aligned request of the same size (`posix_memalign` asks for the size plus
the alignment); with two steps in flight the S/2 process grew to 19 GB. `JAX_CONFIG` turns
CPU dispatch synchronous (`jax_cpu_enable_async_dispatch=False`): each step's computation runs
in the caller's thread, and its block is freed before the next step asks. The peak RSS stays
that of one step (4.6 GB at S/2); the step time is the same within the noise.

A tunable is read only when the process starts, so `restart_with_cpu_environment()`
re-executes the same command once with them set, then sets `JAX_CONFIG`.

One XLA flag is added to XLA_FLAGS: `--xla_cpu_enable_concurrency_optimized_scheduler=false`.
XLA:CPU's default scheduler orders a step to run independent ops side by side, and so starts
the backward pass's recomputations (the attention probabilities) during the forward pass; the
memory-minimising scheduler keeps them where they are needed. At DiT-S/2, batch 32, XLA's
temporary buffers fell from 5.03 to 3.47 GiB (with the attention backward of
`models/attention.py`), the process's peak RSS from 6.0 to 4.5 GiB, and the step took 10 % less
time (benchmarks/README.md, "CPU runtime settings"). The other flags tried (YNNPACK fusion off,
oneDNN, XNNPACK, fast math, 512-bit vectors) did not make the step faster.

It applies only where it can matter: Linux with glibc >= 2.35, no accelerator plugin for JAX
installed (GPU/TPU hosts keep their environment), and not opted out with
`JDIFFREP_CPU_ENVIRONMENT=0`. A value the user already set for a tunable or an XLA flag is kept.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from typing import Mapping

# Variable -> tunables this project adds (colon-separated, as glibc reads GLIBC_TUNABLES).
CPU_ENVIRONMENT: dict[str, str] = {'GLIBC_TUNABLES': ':'.join((
    'glibc.malloc.hugetlb=1', 'glibc.malloc.arena_max=1', 'glibc.malloc.mmap_max=0',
    f'glibc.malloc.trim_threshold={1 << 40}'))}
# JAX options this project sets on CPU, in the process that runs (see the module docstring).
JAX_CONFIG: dict[str, object] = {'jax_cpu_enable_async_dispatch': False}
# The XLA flags this project adds to XLA_FLAGS on CPU (see the module docstring).
CPU_XLA_FLAGS: tuple[str, ...] = ('--xla_cpu_enable_concurrency_optimized_scheduler=false',)
OPT_OUT = 'JDIFFREP_CPU_ENVIRONMENT'
_ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm7_plugin', 'libtpu')
_MIN_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb


def _merge_tunables(current: str, wanted: str) -> str:
  """`wanted`'s name=value items added to `current`'s, keeping any name `current` sets."""
  items = [item for item in current.split(':') if item]
  names = {item.split('=', 1)[0] for item in items}
  items += [item for item in wanted.split(':') if item.split('=', 1)[0] not in names]
  return ':'.join(items)


def _merge_xla_flags(current: str, wanted: tuple[str, ...]) -> str:
  """`wanted`'s --name=value flags appended to `current`'s, keeping any name `current` sets."""
  names = {flag.split('=', 1)[0] for flag in current.split()}
  return ' '.join([*current.split(), *(flag for flag in wanted
                                        if flag.split('=', 1)[0] not in names)])


def missing_environment(environ: Mapping[str, str]) -> dict[str, str]:
  """Variable -> the value it needs so that every CPU_ENVIRONMENT setting and CPU_XLA_FLAGS flag
  is in effect ({} when all are, including where the user set one to another value)."""
  missing = {}
  for name, wanted in CPU_ENVIRONMENT.items():
    merged = _merge_tunables(environ.get(name, ''), wanted)
    if merged != environ.get(name, ''):
      missing[name] = merged
  flags = _merge_xla_flags(environ.get('XLA_FLAGS', ''), CPU_XLA_FLAGS)
  if flags.split() != environ.get('XLA_FLAGS', '').split():
    missing['XLA_FLAGS'] = flags
  return missing


def applies(environ: Mapping[str, str]) -> bool:
  """Whether this process should run with CPU_ENVIRONMENT (see the module docstring)."""
  if environ.get(OPT_OUT, '1') == '0' or sys.platform != 'linux':
    return False
  libc, version = platform.libc_ver()
  if libc != 'glibc' or tuple(int(v) for v in version.split('.')[:2]) < _MIN_GLIBC:
    return False
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def restart_with_cpu_environment() -> None:
  """Re-execute this process's command line with CPU_ENVIRONMENT, once, where it applies.

  Call it first thing in a `__main__` block (before JAX starts threads or allocates). In the
  process that goes on (the re-executed one, or this one where nothing was missing), it also sets
  JAX_CONFIG, which must happen before JAX creates its CPU client.
  """
  if not applies(os.environ):
    return
  missing = missing_environment(os.environ)
  if not missing:
    import jax  # pylint: disable=g-import-not-at-top
    for name, value in JAX_CONFIG.items():
      jax.config.update(name, value)
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **missing})
