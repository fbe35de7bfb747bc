#!/usr/bin/env bash
# The GPU benchmark set of benchmarks/README.md on one GPU (H100 / H200 / A100): appends to
# benchmarks/results/gpu_throughput.jsonl, then regenerates the tables.
#
#   pip install -e '.[peer]' 'jax[cuda13]'   # or jax[cuda12]; offline: launch/wheelhouse.sh
# launch/gpu_check.sh runs the core of this set, plus the accelerator tests and a training run.
#   launch/benchmark_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
run() { python -m benchmarks.throughput --note="${NOTE:-}" "$@"; }
# The target: DiT-B/2 at 256 tokens (32x32, patch 2), bf16, vs diffusers compiled + bf16 autocast.
run --bench=dit --model=B/2 --resolution=32 --batch=256 --dtype=bfloat16 --attention=cudnn \
  --peer_compile --steps=20 --repeats=5
run --bench=dit --model=B/2 --resolution=32 --batch=256 --dtype=bfloat16 --attention=xla \
  --peer_compile --steps=20 --repeats=5
run --bench=dit --model=B/2 --resolution=32 --batch=256 --dtype=bfloat16 --attention=cudnn \
  --steps=20 --repeats=5  # the peer eager
run --bench=dit --model=B/2 --resolution=32 --batch=128 --dtype=float32 --steps=20 --repeats=5
run --bench=dit --model=XL/2 --resolution=32 --batch=128 --dtype=bfloat16 --attention=cudnn \
  --peer_compile --steps=10 --repeats=3
run --bench=diti --model=B/2 --resolution=32 --batch=256 --dtype=bfloat16 --attention=cudnn \
  --steps=20 --repeats=3
run --bench=sdae --model=B/2 --resolution=32 --batch=256 --dtype=bfloat16 --attention=cudnn \
  --steps=20 --repeats=3
python -m benchmarks.report
