#!/usr/bin/env bash
# Variants of the DiT-B/2 bf16 train step on one GPU, each timed alone (no peer), to find what
# moves its MFU: XLA flags, the attention kernel, the batch. About 5 minutes on an H100/H200.
#
#   launch/gpu_tune.sh [--dry-run] [--wheelhouse DIR]
#
# Each variant is one `benchmarks.throughput --bench=dit --peer=none` row in
# benchmarks/results/gpu_throughput.jsonl (`note` names the variant, `environment.XLA_FLAGS`
# holds its flags); the baseline is launch/gpu_check.sh's dit-b2-bf16 step. Where the time of
# the baseline goes: benchmarks/README.md ("One H200"). Run launch/gpu_check.sh first on a new
# machine (it checks that the step is right there); this script only times.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=false
wheelhouse=''
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=true ;;
    --wheelhouse) wheelhouse=$2; shift ;;
    --wheelhouse=*) wheelhouse=${1#*=} ;;
    *) echo "usage: $0 [--dry-run] [--wheelhouse DIR]" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=launch/steps.sh
source launch/steps.sh  # step, install_from, finish; $python

install_from "$wheelhouse"

b2=(-m benchmarks.throughput --idle_wait=0 --bench=dit --model=B/2 --resolution=32
    --dtype=bfloat16 --peer=none --steps=20 --repeats=3)
# variant NAME XLA_FLAGS [throughput flags...]: the B/2 step with those flags (batch 256 and
# cuDNN attention unless the flags say otherwise).
variant() {
  local name=$1 xla_flags=$2
  shift 2
  step "$name" env XLA_FLAGS="$xla_flags" "$python" "${b2[@]}" --batch=256 --attention=cudnn \
    --note="gpu_tune $name" "$@"
}
variant baseline ''
variant attention-xla '' --attention=xla
variant batch-512 '' --batch=512
variant no-command-buffer '--xla_gpu_enable_command_buffer='
variant no-triton-gemm '--xla_gpu_enable_triton_gemm=false'
variant latency-hiding '--xla_gpu_enable_latency_hiding_scheduler=true'
variant cublaslt '--xla_gpu_enable_cublaslt=true'

step tables "$python" -m benchmarks.report
finish gpu_tune
