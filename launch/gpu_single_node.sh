#!/usr/bin/env bash
# Train on every GPU of one machine: one JAX process drives all local GPUs through the mesh.
#
#   pip install -e . 'jax[cuda12]'
#   launch/gpu_single_node.sh configs/celeba.py gs://bucket/runs/celeba --config.batch_size=256
#
# Re-running the same command resumes from the newest checkpoint in WORKDIR.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
# Leave a little GPU memory to cuDNN/NCCL workspaces; XLA preallocates the rest.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
exec python -m jdiffrep.main --config="$config" --workdir="$workdir" \
  --config.model.dtype=bfloat16 "$@"
