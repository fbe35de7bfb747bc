# Sourced by launch/gpu_check.sh and launch/gpu_tune.sh: `step NAME CMD...` prints the step and
# its command ('== (NAME) CMD'), and runs it unless $dry_run is true. A failing step is reported
# ('-- (NAME) FAILED') and added to the array `failed`; the steps after it still run.
# `install_from WHEELHOUSE` is the step that installs jdiffrep[peer] offline from a wheelhouse
# (launch/wheelhouse.sh), when one is named. `finish NAME` ends the script: exit 1 naming the
# failed steps, if any. `$python` is the interpreter the steps run ($PYTHON, else python3).
python=${PYTHON:-python3}
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

install_from() {
  if [[ -n $1 ]]; then
    # jdiffrep's own wheel is in the wheelhouse: nothing is built, nothing is fetched.
    step install "$python" -m pip install --quiet --no-index --find-links "$1" 'jdiffrep[peer]'
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
