"""Multi-head self-attention kernels for the DiT, chosen by `config.model.attention_impl`.

  'xla'        jax.nn.dot_product_attention's XLA path (every platform).
  'cudnn'      jax.nn.dot_product_attention's cuDNN fused kernel (GPU only).
  'head_major' softmax(q k^T / sqrt(d)) v written out in a [B*H, L, Dh] layout, with a
               hand-written backward pass that keeps the row log-sum-exp instead of the
               [B*H, L, L] probabilities; both passes run over groups of heads whose scores
               fit in the cache (`heads_per_chunk`). On XLA:CPU this runs the batched products on
               contiguous per-head matrices (no strided head axis, fewer transposes around
               each dot) and saves one L x L tensor per layer for the backward pass.
  'cpu_fused'  a fused C++ kernel for XLA:CPU (`cpu_attention.cc`, called through XLA's FFI,
               float32): one work item per (batch, head) over XLA's intra-op threads, q, k and v
               read straight from qkv and the result written straight to [B, L, H * Dh] (no
               head split/merge transposes), scores kept per block of 64 query rows in the
               cache; the backward pass recomputes the probabilities from the row log-sum-exp.
               Compiled at first use with the host's C++ compiler (`cpu_attention.py`).
  'auto'       on CPU 'cpu_fused' for float32 when the kernel builds (else 'head_major', with a
               warning that says why); 'xla' elsewhere (GPU/TPU keep jax.nn.dot_product_attention).

All take the fused projection qkv: [B, L, 3 * H * Dh], ordered (3, H, Dh) per token as DiT's
`attn.qkv`, and return [B, L, H * Dh].
"""

from __future__ import annotations

import functools
import math

from absl import logging
import jax
import jax.numpy as jnp

from jdiffrep.models import cpu_attention

ATTENTION_IMPLS = ('auto', 'xla', 'cudnn', 'head_major', 'cpu_fused')


def resolve(impl: str | None, backend: str | None = None, dtype=jnp.float32) -> str:
  """The kernel `impl` stands for on `backend` (default: JAX's default backend) for activations
  of `dtype`."""
  impl = impl or 'auto'
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'Unknown attention_impl {impl!r}; valid: {list(ATTENTION_IMPLS)} '
                     "('auto' picks 'cpu_fused' or 'head_major' on CPU and 'xla' elsewhere).")
  backend = backend or jax.default_backend()
  if impl == 'cpu_fused' and backend != 'cpu':
    raise ValueError(f"attention_impl='cpu_fused' runs on CPU only (the backend is {backend}); "
                     "use 'auto' (XLA's attention here) or 'cudnn' on GPU.")
  if impl != 'auto':
    return impl
  if backend != 'cpu':
    return 'xla'
  if jnp.dtype(dtype) != jnp.float32:
    return 'head_major'
  return 'cpu_fused' if _cpu_fused_available() else 'head_major'


@functools.cache
def _cpu_fused_available() -> bool:
  reason = cpu_attention.unavailable_reason()
  if reason is not None:
    logging.warning("attention_impl='auto' uses 'head_major' on CPU: the fused kernel is "
                    'unavailable (%s).', reason)
  return reason is None


def _accumulation(x: jax.Array) -> jnp.dtype:
  """Scores, softmax and products in float32 at least (float64 stays float64)."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _softmax_forward(q: jax.Array, k: jax.Array, v: jax.Array):
  """q, k, v: [N, L, Dh] -> (out [N, L, Dh], row log-sum-exp [N, L, 1], float32 or wider)."""
  acc = _accumulation(q)
  scores = jnp.einsum('nld,nmd->nlm', q * (1 / math.sqrt(q.shape[-1])), k,
                      preferred_element_type=acc)
  row_max = jnp.max(scores, axis=-1, keepdims=True)
  unnormalised = jnp.exp(scores - row_max)
  row_sum = jnp.sum(unnormalised, axis=-1, keepdims=True)
  out = jnp.einsum('nlm,nmd->nld', unnormalised.astype(v.dtype), v,
                   preferred_element_type=acc) / row_sum
  return out.astype(q.dtype), row_max + jnp.log(row_sum)


def _softmax_backward(residuals, d_out):
  """The standard backward from the saved log-sum-exp (probabilities recomputed once).

  residuals: (q, k, v, out [N, L, Dh], log-sum-exp [N, L, 1]); d_out: [N, L, Dh] -> d_q, d_k, d_v.

  Worked in the transposed frame, keys x queries ([N, M, L]): the recomputed scores are
  k q^T, not the forward's q k^T. XLA:CPU drops optimisation barriers before common-subexpression
  elimination, so the same product would be merged with the forward's, and each layer's
  [N, L, L] scores would stay alive from its forward to its backward. With the scheduler
  `cpu_runtime.py` sets, XLA's temporaries of the DiT-S/2 step (batch 32) are 3.47 GiB this way
  and 3.93 GiB that way. Here d_v and d_k are plain [M, L] x [L, Dh] products.
  """
  q, k, v, out, log_sum_exp = residuals
  acc = _accumulation(q)
  scale = 1 / math.sqrt(q.shape[-1])
  q_scaled = q * scale
  probs_t = jnp.exp(jnp.einsum('nmd,nld->nml', k, q_scaled, preferred_element_type=acc)
                    - jnp.swapaxes(log_sum_exp, 1, 2))
  d_v = jnp.einsum('nml,nld->nmd', probs_t.astype(d_out.dtype), d_out,
                   preferred_element_type=acc)
  d_probs_t = jnp.einsum('nmd,nld->nml', v, d_out, preferred_element_type=acc)
  row_dot = jnp.sum(d_out.astype(acc) * out.astype(acc), axis=-1, keepdims=True)
  d_scores_t = (probs_t * (d_probs_t - jnp.swapaxes(row_dot, 1, 2))).astype(q.dtype)
  d_q = jnp.einsum('nml,nmd->nld', d_scores_t, k, preferred_element_type=acc) * scale
  d_k = jnp.einsum('nml,nld->nmd', d_scores_t, q_scaled, preferred_element_type=acc)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


def _split_heads(x: jax.Array, num_heads: int) -> jax.Array:
  """[B, L, P, H * Dh] -> [P, B * H, L, Dh] (P: q, k, v or just one)."""
  batch, length, parts, width = x.shape
  head_dim = width // num_heads
  x = x.reshape(batch, length, parts, num_heads, head_dim).transpose(2, 0, 3, 1, 4)
  return x.reshape(parts, batch * num_heads, length, head_dim)


def _merge_heads(x: jax.Array, batch: int) -> jax.Array:
  """[P, B * H, L, Dh] -> [B, L, P * H * Dh], the inverse of `_split_heads`."""
  parts, batch_heads, length, head_dim = x.shape
  x = x.reshape(parts, batch, batch_heads // batch, length, head_dim).transpose(1, 3, 0, 2, 4)
  return x.reshape(batch, length, parts * (batch_heads // batch) * head_dim)


# The [chunk, L, L] scores of one group of heads should stay in the core's cache (AMD EPYC and
# Intel Xeon here: 1-2 MiB of L2 per core).
SCORES_CACHE_BYTES = 2 << 20


def heads_per_chunk(num_matrices: int, length: int, itemsize: int = 4) -> int:
  """The largest divisor of `num_matrices` (B * H) whose [chunk, L, L] scores fit in
  SCORES_CACHE_BYTES (at least 1)."""
  chunk = max(1, min(num_matrices, SCORES_CACHE_BYTES // (length * length * itemsize)))
  while num_matrices % chunk:
    chunk -= 1
  return chunk


def _over_head_chunks(fn, *arrays):
  """fn over groups of heads in turn (`lax.map`): arrays [N, L, ...] -> fn's outputs [N, ...].

  The group size is `heads_per_chunk` of the first array's N and L (q's, at its accumulation
  precision), so the forward and the backward pass group the heads alike.

  One group's scores, probabilities and their gradients are made and used while they are in
  the cache, instead of each [N, L, L] tensor going through memory between ops (XLA:CPU runs
  one op at a time, and these batched products on one core). DiT-S/2 step, batch 32, on 2
  cores: 8.01 -> 7.72 s (benchmarks/README.md, "Attention over groups of heads").
  """
  num, length = arrays[0].shape[:2]
  chunk = heads_per_chunk(num, length, jnp.dtype(_accumulation(arrays[0])).itemsize)
  if chunk >= num:
    return fn(*arrays)
  grouped = tuple(a.reshape(num // chunk, chunk, *a.shape[1:]) for a in arrays)
  outs = jax.lax.map(lambda group: fn(*group), grouped)
  return jax.tree.map(lambda o: o.reshape(num, *o.shape[2:]), outs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def head_major_attention(qkv: jax.Array, num_heads: int) -> jax.Array:
  """qkv: [B, L, 3 * H * Dh] -> [B, L, H * Dh], heads laid out as [B * H, L, Dh]."""
  return _head_major_forward(qkv, num_heads)[0]


def _head_major_forward(qkv, num_heads):
  batch, length, width = qkv.shape
  q, k, v = _split_heads(qkv.reshape(batch, length, 3, width // 3), num_heads)
  out, log_sum_exp = _over_head_chunks(_softmax_forward, q, k, v)
  return _merge_heads(out[None], batch), (q, k, v, out, log_sum_exp)


def _head_major_backward(num_heads, residuals, d_out):
  """d_qkv in one piece: the three head-major gradients stacked, then one transpose back.

  Differentiating the split of qkv instead gives three zero-padded copies, summed, then the
  transpose; in a profile of the DiT-S/2 step (batch 32, 32x32, XLA:CPU) the copy fusions took
  2.9 s per step that way and 1.5 s this way.
  """
  batch, length, width = d_out.shape
  d_out = _split_heads(d_out.reshape(batch, length, 1, width), num_heads)[0]
  grads = _over_head_chunks(lambda *group: _softmax_backward(group[:5], group[5]),
                            *residuals, d_out)
  return (_merge_heads(jnp.stack(grads), batch),)


head_major_attention.defvjp(_head_major_forward, _head_major_backward)


def library_attention(qkv: jax.Array, num_heads: int, implementation: str | None) -> jax.Array:
  """The same through jax.nn.dot_product_attention (implementation None/'xla' or 'cudnn')."""
  batch, length, width = qkv.shape
  head_dim = width // (3 * num_heads)
  qkv = qkv.reshape(batch, length, 3, num_heads, head_dim)
  out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                     implementation=implementation)
  return out.reshape(batch, length, num_heads * head_dim)


def self_attention(qkv: jax.Array, num_heads: int, impl: str | None = 'auto') -> jax.Array:
  """Dispatch on `impl` (see the module docstring). qkv: [B, L, 3*D] -> [B, L, D]."""
  impl = resolve(impl, dtype=qkv.dtype)
  if impl == 'cpu_fused':
    return cpu_attention.fused_attention(qkv, num_heads)
  if impl == 'head_major':
    return head_major_attention(qkv, num_heads)
  return library_attention(qkv, num_heads, None if impl == 'xla' else impl)
