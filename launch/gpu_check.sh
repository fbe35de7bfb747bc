#!/usr/bin/env bash
# The GPU check: one command on one GPU node (H100 / H200) that records what jdiffrep does there,
# in about 8 minutes. Run it from the repository root of a checkout:
#
#   launch/gpu_check.sh [--dry-run] [--wheelhouse DIR] [--train-seconds N]
#
#   --wheelhouse DIR  first install jdiffrep and what the image lacks from DIR, offline
#                     (pip install --no-index --find-links DIR; DIR from launch/wheelhouse.sh)
#   --train-seconds N how long step (d) trains the shapes DM (default 60: the small DM's
#                     images/s is steady after a few seconds, and the check stays near 8 minutes)
#   --dry-run         print every step's command instead of running it
#
# Steps:
#   (a) versions and the device;
#   (b) the accelerator tests (pytest -m accelerator): cuDNN attention vs XLA, bf16 vs fp32
#       train step, sharded step over all local devices vs one device;
#   (c) throughput: DiT-B/2 at 256 tokens, bf16, cuDNN attention, against diffusers with
#       torch.compile and bf16 autocast; DiTi and sdae steps at CelebA size (64x64, B/4, batch
#       128, bf16) with peak device memory;
#       and where the DiT-B/2 step's time goes (benchmarks.profile_step: a jax.profiler trace
#       summed by HLO op, kept with its HLO in benchmarks/results/);
#   (d) compiles configs/celeba.py's DiTi and sdae steps at the config's batch and records XLA's
#       per-device memory (benchmarks.compile_memory: --compile_only, no data needed), then
#       trains the `shapes` DM for --train-seconds and records its images/s;
#   (e) appends every result to benchmarks/results/gpu_*.jsonl (device, date, versions, commit,
#       command) and regenerates the tables (python -m benchmarks.report).
# A CUDA image with jax, flax, optax, orbax-checkpoint, torch and tensorboard needs only the
# wheelhouse's packages (grain, ml-collections, clu, tensorflow-datasets, array-record,
# diffusers, ...). Set JDIFFREP_COMMIT when the checkout has no .git (it is recorded).
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=false
wheelhouse=''
train_seconds=60
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=true ;;
    --wheelhouse) wheelhouse=$2; shift ;;
    --wheelhouse=*) wheelhouse=${1#*=} ;;
    --train-seconds) train_seconds=$2; shift ;;
    --train-seconds=*) train_seconds=${1#*=} ;;
    *) echo "usage: $0 [--dry-run] [--wheelhouse DIR] [--train-seconds N]" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=launch/steps.sh
source launch/steps.sh  # step, install_from, finish; $python

install_from "$wheelhouse"

step versions "$python" -m benchmarks.provenance
if command -v nvidia-smi > /dev/null || $dry_run; then
  step device nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi

step accelerator-tests "$python" -m pytest -q -rs -m accelerator tests/test_accelerator.py

bench=("$python" -m benchmarks.throughput --note=gpu_check --idle_wait=0)  # device time is scarce
step dit-b2-bf16 "${bench[@]}" --bench=dit --model=B/2 --resolution=32 --batch=256 --dtype=bfloat16 \
  --attention=cudnn --peer_compile --steps=20 --repeats=5
# The raw trace and the step's HLO are kept beside the rows (--from_trace sums them again).
step profile-dit-b2 "$python" -m benchmarks.profile_step --model=B/2 --resolution=32 --batch=256 \
  --dtype=bfloat16 --attention=cudnn --idle_wait=0 \
  --trace_copy="benchmarks/results/gpu_trace_dit_b2_$(date -u +%F).json.gz"
step diti-celeba64 "${bench[@]}" --bench=diti --model=B/4 --resolution=64 --batch=128 \
  --dtype=bfloat16 --attention=cudnn --peer=none --steps=20 --repeats=3
step sdae-celeba64 "${bench[@]}" --bench=sdae --model=B/4 --resolution=64 --batch=128 \
  --dtype=bfloat16 --attention=cudnn --peer=none --steps=20 --repeats=3

# XLA's per-device memory of the CelebA config's DiTi and sdae steps at its batch (no data read).
step celeba-memory "$python" -m benchmarks.compile_memory --config=configs/celeba.py \
  --note=gpu_check -- --config.pipeline=diti,sdae
step train-shapes-dm "$python" -m benchmarks.train_speed --config=configs/shapes.py:ddpm \
  --seconds="$train_seconds" --note=gpu_check

step tables "$python" -m benchmarks.report

finish gpu_check
