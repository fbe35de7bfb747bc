"""A dense layer over tokens whose backward pass hands XLA the cheaper transpose.

`Linear` computes y = x W + b, as `flax.linen.Dense` (same `kernel` [in, out] and `bias` [out]
parameters, same dtype handling), on x flattened to [N, in] (N = every leading axis together).
Its backward pass is written out (`linear`'s custom VJP) so that every gradient reads the
output gradient dy [N, out] as it is, token-major:

  dx = dy W^T           [N, in]
  dW = (dy^T x)^T       [in, out]: the contraction over N with dy as the left operand
  db = sum_n dy         [out]

Why: the weight gradient contracts the token axis of both operands. XLA:CPU's matmul libraries
take that axis transposed on one side only, and XLA then materialises a transposed copy of the
other operand; for autodiff's dW = x^T dy it copies dy ([N, out]), here it copies x ([N, in]).
For the MLP's first layer and the attention's qkv, out is 4x and 3x in. And where dy itself is
a layout change (the attention's gradient, head-major, turned token-major), the autodiff form
made three copies of it, one per use (dx, dW, db), where this one makes one. In the DiT train
step on 2 CPU cores (batch 32, 32x32, fp32) the transposed copies went from 35 to 17 at
XXS/4, and the step took 15-20 % less time at XXS/4 and 10 % less at S/2
(benchmarks/README.md, "Linear layers' backward pass"). On GPU and TPU the products are the
same; the result differs from autodiff's only in the rounding of the sums.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn


@jax.custom_vjp
def linear(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """x [N, in] @ kernel [in, out] + bias [out] -> [N, out]."""
  return x @ kernel + bias


def _linear_forward(x, kernel, bias):
  return linear(x, kernel, bias), (x, kernel)


def _linear_backward(residuals, d_out):
  """d_out [N, out] -> (dx [N, in], d_kernel [in, out], d_bias [out]); see the module docstring."""
  x, kernel = residuals
  d_x = d_out @ kernel.T
  d_kernel = jnp.einsum('no,ni->oi', d_out, x).T
  return d_x, d_kernel, jnp.sum(d_out, axis=0)


linear.defvjp(_linear_forward, _linear_backward)


class Linear(nn.Module):
  """`flax.linen.Dense` with `linear`'s backward pass. x [..., in] -> [..., features].

  Inputs and parameters are cast to `dtype` for the product, as Dense does; parameters live in
  `param_dtype`. The parameter tree ({'kernel': [in, features], 'bias': [features]}) is Dense's,
  so checkpoints and weight converters do not change.
  """

  features: int
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    flat = x.reshape(-1, x.shape[-1]).astype(self.dtype)
    out = linear(flat, kernel.astype(self.dtype), bias.astype(self.dtype))
    return out.reshape(*x.shape[:-1], self.features)
