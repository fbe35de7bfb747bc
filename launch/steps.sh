# Sourced by launch/gpu_check.sh and launch/gpu_tune.sh: `step NAME CMD...` prints the step and
# its command ('== (NAME) CMD'), and runs it unless $dry_run is true. A failing step is reported
# ('-- (NAME) FAILED') and added to the array `failed`; the steps after it still run.
# `finish NAME` ends the script: exit 1 naming the failed steps, if any.
failed=()

step() {
  local name=$1
  shift
  printf -v quoted '%q ' "$@"
  echo "== ($name) ${quoted% }"
  if $dry_run; then
    return 0
  fi
  local start=$SECONDS
  if "$@"; then
    echo "-- ($name) done in $((SECONDS - start)) s"
  else
    echo "-- ($name) FAILED (exit $?) after $((SECONDS - start)) s"
    failed+=("$name")
  fi
}

finish() {
  if $dry_run; then
    return 0
  fi
  if [[ ${#failed[@]} -gt 0 ]]; then
    echo "$1: failed steps: ${failed[*]}"
    exit 1
  fi
  echo "$1: all steps done; results in benchmarks/results/"
}
