"""The fused CPU attention kernel (`cpu_attention.cc`): built at first use, called through XLA's FFI.

`fused_attention(qkv, num_heads)`: qkv [B, L, 3 * H * Dh] float32 -> [B, L, H * Dh], with a
custom VJP whose backward pass is the kernel's own (probabilities recomputed from the saved row
log-sum-exp [B, H, L]).

The shared library is compiled once per source, jaxlib version, compiler and CPU (the kernel is
built with -march=native) into `$JDIFFREP_CACHE_DIR` (default `~/.cache/jdiffrep`), written
under a temporary name and renamed, so processes that build at once (pytest -n 2) do not see a
half-written file. Without a C++ compiler (`$CXX`, else `c++`) `unavailable_reason()` says so,
and `attention_impl='auto'` falls back to 'head_major'.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

SOURCE = pathlib.Path(__file__).with_name('cpu_attention.cc')
FORWARD_TARGET = 'jdiffrep_cpu_attention_forward'
BACKWARD_TARGET = 'jdiffrep_cpu_attention_backward'
COMPILE_FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-w')


def _compiler() -> str | None:
  return shutil.which(os.environ.get('CXX', 'c++'))


def _cpu_signature() -> str:
  """The CPU's model and feature flags (a -march=native build runs only where they hold)."""
  try:
    lines = pathlib.Path('/proc/cpuinfo').read_text().splitlines()
  except OSError:
    return platform.processor() or platform.machine()
  wanted = ('model name', 'flags', 'Features', 'CPU part')
  return '\n'.join(sorted({l for l in lines if l.split(':')[0].strip() in wanted}))


def library_path(compiler: str) -> pathlib.Path:
  """Where the build for this source, jaxlib, compiler and CPU lives."""
  version = subprocess.run([compiler, '--version'], capture_output=True, text=True).stdout
  key = hashlib.sha256('\n'.join([
      SOURCE.read_text(), jaxlib.__version__, version, ' '.join(COMPILE_FLAGS),
      platform.machine(), _cpu_signature()]).encode()).hexdigest()[:16]
  cache = pathlib.Path(os.environ.get('JDIFFREP_CACHE_DIR', pathlib.Path.home() / '.cache' / 'jdiffrep'))
  return cache / f'cpu_attention-{key}.so'


def build(compiler: str) -> pathlib.Path:
  """Compiles the kernel unless this exact build exists; returns the library's path."""
  target = library_path(compiler)
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    partial = pathlib.Path(tmp) / target.name
    command = [compiler, *COMPILE_FLAGS, '-isystem', jax.ffi.include_dir(), str(SOURCE),
               '-o', str(partial)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f'Building the CPU attention kernel failed ({" ".join(command)}):\n'
                         f'{result.stderr[-4000:]}')
    os.replace(partial, target)
  return target


@functools.cache
def unavailable_reason() -> str | None:
  """Builds and registers the FFI targets once per process: None when done, otherwise why not
  (e.g. no compiler, or the compiler's error)."""
  if not hasattr(jax, 'ffi'):
    return f'jax {jax.__version__} has no jax.ffi'
  if not SOURCE.exists():
    return f'the kernel source {SOURCE} is not installed'
  compiler = _compiler()
  if compiler is None:
    return (f'no C++ compiler ({os.environ.get("CXX", "c++")!r} is not on PATH; '
            'install g++ or clang, or set CXX)')
  try:
    library = ctypes.cdll.LoadLibrary(str(build(compiler)))
  except (RuntimeError, OSError) as error:
    return str(error)
  jax.ffi.register_ffi_target(FORWARD_TARGET, jax.ffi.pycapsule(library.JdiffrepCpuAttentionForward),
                              platform='cpu')
  jax.ffi.register_ffi_target(BACKWARD_TARGET, jax.ffi.pycapsule(library.JdiffrepCpuAttentionBackward),
                              platform='cpu')
  return None


def _require(qkv: jax.Array, num_heads: int) -> None:
  reason = unavailable_reason()
  if reason is not None:
    raise RuntimeError(f"attention_impl='cpu_fused' cannot run: {reason}. "
                       "Use attention_impl='head_major' (or 'auto').")
  if qkv.dtype != jnp.float32:
    raise ValueError(f"attention_impl='cpu_fused' takes float32 activations, got {qkv.dtype}; "
                     "use 'head_major' (or 'auto', which picks it for other dtypes).")
  if qkv.ndim != 3 or qkv.shape[-1] % (3 * num_heads):
    raise ValueError(f'qkv must be [B, L, 3 * H * Dh] with H = {num_heads}, got {qkv.shape}.')


def _forward_call(qkv, num_heads):
  batch, length, width = qkv.shape
  outs = (jax.ShapeDtypeStruct((batch, length, width // 3), qkv.dtype),
          jax.ShapeDtypeStruct((batch, num_heads, length), qkv.dtype))
  return jax.ffi.ffi_call(FORWARD_TARGET, outs, vmap_method='sequential')(
      qkv, num_heads=np.int64(num_heads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def fused_attention(qkv: jax.Array, num_heads: int) -> jax.Array:
  """qkv [B, L, 3 * H * Dh] float32 -> softmax(q k^T / sqrt(Dh)) v as [B, L, H * Dh]."""
  _require(qkv, num_heads)
  return _forward_call(qkv, num_heads)[0]


def _fused_forward(qkv, num_heads):
  _require(qkv, num_heads)
  out, log_sum_exp = _forward_call(qkv, num_heads)
  return out, (qkv, out, log_sum_exp)


def _fused_backward(num_heads, residuals, d_out):
  qkv, out, log_sum_exp = residuals
  d_qkv = jax.ffi.ffi_call(BACKWARD_TARGET, jax.ShapeDtypeStruct(qkv.shape, qkv.dtype),
                           vmap_method='sequential')(
      qkv, out, log_sum_exp, d_out.astype(out.dtype), num_heads=np.int64(num_heads))
  return (d_qkv,)


fused_attention.defvjp(_fused_forward, _fused_backward)
