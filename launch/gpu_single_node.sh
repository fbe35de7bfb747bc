#!/usr/bin/env bash
# Train on every GPU of one machine: one JAX process drives all local GPUs through the mesh.
#
#   pip install -e . 'jax[cuda13]'   # or jax[cuda12]; add the gcs extra for a gs:// WORKDIR
#   launch/gpu_single_node.sh [--dry-run] CONFIG WORKDIR [--config.field=value ...]
#   launch/gpu_single_node.sh configs/celeba.py gs://bucket/runs/celeba --config.batch_size=256
#
# Re-running the same command resumes from the newest checkpoint in WORKDIR; SIGTERM (e.g. a
# spot VM's shutdown) makes the trainer save a checkpoint at the next step and exit 0.
# --dry-run prints the command instead of running it.
set -euo pipefail
dry_run=false
if [[ ${1:-} == --dry-run ]]; then
  dry_run=true
  shift
fi
if [[ $# -lt 2 ]]; then
  echo "usage: $0 [--dry-run] CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
# Leave a little GPU memory to cuDNN/NCCL workspaces; XLA preallocates the rest.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
cmd=(python -m jdiffrep.main --config="$config" --workdir="$workdir"
     --config.model.dtype=bfloat16 "$@")
if $dry_run; then
  printf -v quoted '%q ' "${cmd[@]}"
  echo "XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION ${quoted% }"
  exit 0
fi
exec "${cmd[@]}"
