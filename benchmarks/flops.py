"""FLOPs of a DiT train step by formula, device peak FLOP/s, and MFU.

The formula counts multiply-accumulates (MACs) of one forward pass per image: every matmul
(patch embedding, qkv, attention scores and values, output projection, MLP, adaLN, final
layer, time embedding) and nothing elementwise. A train step (forward + backward) is taken as
3 forward passes, 2 FLOPs per MAC: 6 x MACs x batch, the usual transformer convention.
"""

from __future__ import annotations

import os

from jdiffrep.models import dit

# Dense peak FLOP/s per chip from the vendors' data sheets (no sparsity), matched by substring of
# the device kind (most specific first). 'float32' on NVIDIA is the TF32 tensor-core peak: XLA's
# default matmul precision on these GPUs uses TF32 for float32 inputs.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ('H100 PCIe', {'bfloat16': 756e12, 'float32': 378e12}),
    ('H100', {'bfloat16': 989.4e12, 'float32': 494.7e12}),  # SXM / HBM3
    ('H200', {'bfloat16': 989.4e12, 'float32': 494.7e12}),
    ('A100', {'bfloat16': 312e12, 'float32': 156e12}),
    ('TPU v6 lite', {'bfloat16': 918e12}),  # v6e
    ('TPU v5 lite', {'bfloat16': 197e12}),  # v5e
    ('TPU v5', {'bfloat16': 459e12}),  # v5p
    ('TPU v4', {'bfloat16': 275e12}),
)


def dit_forward_macs(model_name: str, resolution: int, in_channels: int = 3,
                     out_channels: int | None = None) -> int:
  """Multiply-accumulates of one DiT forward pass on one image (matmuls only)."""
  depth, d, _, p = dit.parse_model_name(model_name)
  out_channels = out_channels or in_channels
  length = (resolution // p) ** 2
  patch = length * p * p * in_channels * d
  time = dit.TIME_FREQUENCY_DIM * d + d * d
  block = (6 * d * d  # adaLN modulation
           + 3 * length * d * d  # qkv
           + 2 * length * length * d  # q k^T and attention-weighted v
           + length * d * d  # output projection
           + 8 * length * d * d)  # MLP, ratio 4
  final = 2 * d * d + length * d * p * p * out_channels
  return patch + time + depth * block + final


def dit_train_step_flops(model_name: str, resolution: int, batch: int, **kwargs) -> float:
  """6 x MACs x batch: FLOPs of forward + backward of one train step (the update is not counted)."""
  return 6.0 * dit_forward_macs(model_name, resolution, **kwargs) * batch


def cpu_peak_flops(dtype: str) -> float | None:
  """A rough upper bound for this CPU: cores x clock x FMA lanes x 2 FMA units x 2, or None.

  The clock is /proc/cpuinfo's current 'cpu MHz'; bfloat16 is counted at the float32 rate.
  """
  del dtype
  try:
    with open('/proc/cpuinfo') as f:
      info = f.read()
  except OSError:
    return None
  flags = next((line for line in info.splitlines() if line.startswith('flags')), '').split()
  mhz = next((float(line.split(':')[1]) for line in info.splitlines()
              if line.startswith('cpu MHz')), None)
  lanes = 16 if 'avx512f' in flags else 8 if 'avx2' in flags else None
  if mhz is None or lanes is None or 'fma' not in flags:
    return None
  cores = len(os.sched_getaffinity(0))
  return cores * mhz * 1e6 * lanes * 2 * 2


def peak_flops(device_kind: str, platform: str, dtype: str) -> tuple[float | None, str]:
  """(peak FLOP/s of one device for `dtype`, where the number comes from)."""
  for key, peaks in PEAK_FLOPS:
    if key.lower() in device_kind.lower():
      return peaks.get(dtype), f'data sheet ({key})'
  if platform == 'cpu':
    return cpu_peak_flops(dtype), 'CPU estimate: cores x MHz x FMA lanes x 2 units x 2'
  return None, f'unknown device {device_kind!r}: add it to benchmarks/flops.py PEAK_FLOPS'
