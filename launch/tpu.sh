#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): create, set up, train, tail logs, delete.
#
#   launch/tpu.sh COMMAND --name=NAME [--project=P] [--zone=Z] [--accelerator-type=v5litepod-16]
#                 [--runtime-version=V] [--spot] [--queued] [--dry-run] [-- --config.field=value ...]
#
# COMMAND
#   create   gcloud compute tpus tpu-vm create (with --queued: a queued resource that waits for
#            capacity, `gcloud compute tpus queued-resources create`; the node gets NAME too)
#   setup    copy this checkout (git archive of HEAD) to every worker, pip install 'jax[tpu]'
#            and the package with its `gcs` extra (gcsfs, for gs:// workdirs) there (--worker=all)
#   train    start `python -m jdiffrep.main` on every worker (--worker=all) in the background,
#            with --config=CONFIG --workdir=WORKDIR (gs://) and TFDS_DATA_DIR=DATA_DIR (gs://);
#            arguments after `--` are passed on. Re-running `train` resumes from the newest
#            checkpoint in WORKDIR (e.g. after a preemption).
#   logs     tail -f the training log of one worker (--worker=N, default 0)
#   delete   delete the TPU VM (with --queued: the queued resource and its node)
#
# Options may also come from the environment: TPU_NAME, TPU_PROJECT, TPU_ZONE,
# TPU_ACCELERATOR_TYPE, TPU_RUNTIME_VERSION, CONFIG, WORKDIR, DATA_DIR.
# --dry-run prints every gcloud command (shell-quoted) instead of running it.
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[[ $# -ge 1 ]] || usage
command=$1
shift
name=${TPU_NAME:-}
project=${TPU_PROJECT:-}
zone=${TPU_ZONE:-us-central2-b}
accelerator_type=${TPU_ACCELERATOR_TYPE:-v4-8}
runtime_version=${TPU_RUNTIME_VERSION:-tpu-ubuntu2204-base}
config=${CONFIG:-configs/celeba.py}
workdir=${WORKDIR:-}
data_dir=${DATA_DIR:-}
worker=0
spot=false queued=false dry_run=false
passthrough=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --name=*) name=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator-type=*) accelerator_type=${1#*=} ;;
    --runtime-version=*) runtime_version=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --data-dir=*) data_dir=${1#*=} ;;
    --worker=*) worker=${1#*=} ;;
    --spot) spot=true ;;
    --queued) queued=true ;;
    --dry-run) dry_run=true ;;
    --) shift; passthrough=("$@"); break ;;
    *) echo "unknown option: $1 (see $0 with no arguments)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n $name ]] || { echo "--name=NAME (or TPU_NAME) is required" >&2; exit 2; }

# Runs "$@", or prints it shell-quoted under --dry-run.
run() {
  if $dry_run; then
    local quoted
    printf -v quoted '%q ' "$@"
    echo "${quoted% }"
  else
    "$@"
  fi
}

scope=(--zone="$zone")
[[ -n $project ]] && scope+=(--project="$project")
remote_dir='~/jdiffrep'
log_file='~/jdiffrep_train.log'

case $command in
  create)
    extra=()
    $spot && extra+=(--spot)
    if $queued; then
      run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${scope[@]}" \
        --accelerator-type="$accelerator_type" --runtime-version="$runtime_version" "${extra[@]}"
    else
      run gcloud compute tpus tpu-vm create "$name" "${scope[@]}" \
        --accelerator-type="$accelerator_type" --version="$runtime_version" "${extra[@]}"
    fi
    ;;
  setup)
    repo_root=$(cd "$(dirname "$0")/.." && pwd)
    archive=${TMPDIR:-/tmp}/jdiffrep-$name.tar.gz
    run git -C "$repo_root" archive --format=tar.gz -o "$archive" HEAD
    run gcloud compute tpus tpu-vm scp "$archive" "$name:~/jdiffrep.tar.gz" --worker=all \
      "${scope[@]}"
    run gcloud compute tpus tpu-vm ssh "$name" --worker=all "${scope[@]}" --command="\
mkdir -p $remote_dir && tar xzf ~/jdiffrep.tar.gz -C $remote_dir && \
python3 -m pip install -U 'jax[tpu]' && python3 -m pip install -e $remote_dir'[gcs]'"
    ;;
  train)
    [[ $workdir == gs://* ]] || { echo "--workdir=gs://... (or WORKDIR) is required: every" \
      "worker must see the same checkpoints" >&2; exit 2; }
    [[ $data_dir == gs://* ]] || { echo "--data-dir=gs://... (or DATA_DIR) is required: the" \
      "TFDS data dir written by python -m jdiffrep.prepare" >&2; exit 2; }
    overrides=''
    for arg in "${passthrough[@]+"${passthrough[@]}"}"; do
      printf -v arg '%q' "$arg"
      overrides+=" $arg"
    done
    # Every worker runs the same command; JAX finds the other workers of the slice by itself.
    run gcloud compute tpus tpu-vm ssh "$name" --worker=all "${scope[@]}" --command="\
cd $remote_dir && TFDS_DATA_DIR=$data_dir nohup python3 -m jdiffrep.main \
--config=$config --workdir=$workdir$overrides > $log_file 2>&1 < /dev/null &"
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$name" --worker="$worker" "${scope[@]}" \
      --command="tail -n 100 -f $log_file"
    ;;
  delete)
    if $queued; then
      run gcloud compute tpus queued-resources delete "$name" "${scope[@]}" --force --quiet
    else
      run gcloud compute tpus tpu-vm delete "$name" "${scope[@]}" --quiet
    fi
    ;;
  *) usage ;;
esac
