#!/usr/bin/env bash
# Builds a folder of wheels from which an offline machine installs jdiffrep with no index:
# jdiffrep's own wheel plus every dependency the target image does not already have.
#
#   launch/wheelhouse.sh --out DIR [--python-version 3.12] [--platform TAG ...]
#                        [--preinstalled NAME,NAME,... | --preinstalled @FILE] [--extras peer]
#                        [--dry-run]
#
#   --out DIR            where the wheels go (created)
#   --python-version V   the target's Python (default: this interpreter's); with it, name the
#                        target's --platform tags (e.g. manylinux_2_28_x86_64, repeatable)
#   --preinstalled ...   packages the target image already has (comma-separated names, or
#                        @FILE with one name per line, `pip freeze` lines allowed): left out
#   --extras LIST        jdiffrep extras to include, e.g. peer,gcs
#   --dry-run            print the pip commands instead of running them
#
# On the offline machine, from a checkout of the same commit (it runs the configs):
#   python3 -m pip install --no-index --find-links DIR 'jdiffrep[EXTRAS]'
# (jdiffrep's own wheel is in DIR, so nothing is built there.)
# The target's Python must be the one named here; the dependency versions are resolved on this
# machine against PyPI (for the target's Python and platform), so a package the image has
# must satisfy jdiffrep's own requirement on it (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
out='' python_version='' preinstalled='' extras='' dry_run=false
platforms=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) out=$2; shift ;;
    --out=*) out=${1#*=} ;;
    --python-version) python_version=$2; shift ;;
    --python-version=*) python_version=${1#*=} ;;
    --platform) platforms+=("$2"); shift ;;
    --platform=*) platforms+=("${1#*=}") ;;
    --preinstalled) preinstalled=$2; shift ;;
    --preinstalled=*) preinstalled=${1#*=} ;;
    --extras) extras=$2; shift ;;
    --extras=*) extras=${1#*=} ;;
    --dry-run) dry_run=true ;;
    *) usage ;;
  esac
  shift
done
[[ -n $out ]] || usage
if [[ -n $python_version && ${#platforms[@]} -eq 0 ]]; then
  echo "$0: --python-version needs at least one --platform tag of the target" >&2
  exit 2
fi
python=${PYTHON:-python3}

# The target's interpreter and platform, for pip's resolver and downloader.
target=(--only-binary=:all:)
if [[ -n $python_version ]]; then
  target+=(--python-version "$python_version" --implementation cp)
  for tag in "${platforms[@]}"; do target+=(--platform "$tag"); done
fi

# Names (one per line, normalised as PEP 503 does) of the packages the target already has.
preinstalled_names() {
  local spec=$preinstalled
  if [[ $spec == @* ]]; then
    spec=$(cat "${spec#@}")
  fi
  tr ',' '\n' <<< "$spec" | sed -e 's/[=<>!~;[ ].*//' -e '/^#/d' -e '/^$/d' \
    | tr 'A-Z_.' 'a-z--' | sort -u
}

show() {
  printf -v quoted '%q ' "$@"
  echo "${quoted% }"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
self_wheel="$tmp/self/jdiffrep-<version>.whl"
wheel_cmd=("$python" -m pip wheel --quiet --no-deps -w "$tmp/self" .)
requirement="jdiffrep${extras:+[$extras]}"
# A pure-Python dependency published only as an sdist (tfds's `promise`) has no wheel to fetch:
# a first resolution for this machine finds those, and they are built here into local wheels
# (py3-none-any) that the target's resolution and download then take from --find-links.
# The two resolutions' commands, for the current $self_wheel.
resolve_cmds() {
  host_resolve=("$python" -m pip install --quiet --dry-run --ignore-installed
                --target "$tmp/host" --prefer-binary --report "$tmp/host.json"
                "$self_wheel${extras:+[$extras]}")
  target_resolve=("$python" -m pip install --quiet --dry-run --ignore-installed
                  --target "$tmp/target" --find-links "$tmp/local" --report "$tmp/target.json"
                  "${target[@]}" "$self_wheel${extras:+[$extras]}")
}
if $dry_run; then
  resolve_cmds
  show "${wheel_cmd[@]}"
  show "${host_resolve[@]}"
  show "$python" -m pip wheel --quiet --no-deps -w "$tmp/local" '<NAME==VERSION of each sdist-only dependency>'
  show "${target_resolve[@]}"
  show "$python" -m pip download --quiet --no-deps "${target[@]}" --find-links "$tmp/local" \
    -d "$out" -r '<resolved NAME==VERSION minus preinstalled>'
  show cp "$self_wheel" "$out/"
  exit 0
fi

"${wheel_cmd[@]}"
self_wheel=$(ls "$tmp"/self/jdiffrep-*.whl)
resolve_cmds
preinstalled_names > "$tmp/preinstalled.txt"
# resolved NAME==VERSION from a pip report: `sdists` lists those resolved to an sdist; `wheels`
# what jdiffrep needs beyond the image: the packages reachable from jdiffrep through the
# resolved requirements without passing through a preinstalled one (the image answers for the
# dependencies of what it has: torch's CUDA libraries, say). Markers are not evaluated, so an
# edge is kept whenever both ends were resolved: never fewer packages than needed.
requirements() {
  "$python" - "$1" "$2" "$tmp/preinstalled.txt" <<'PY'
import json, re, sys
report, which, preinstalled = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
normalise = lambda name: re.sub(r'[-_.]+', '-', name).lower()
resolved = {normalise(item['metadata']['name']): item for item in report['install']}
if which == 'sdists':
  for name, item in resolved.items():
    if not item['download_info']['url'].endswith('.whl'):
      print(f"{name}=={item['metadata']['version']}")
  sys.exit()
skip = set(open(preinstalled).read().split())
needed, todo = set(), ['jdiffrep']
while todo:
  for requirement in resolved[todo.pop()]['metadata'].get('requires_dist', []):
    name = normalise(re.match(r'[A-Za-z0-9._-]+', requirement).group())
    if name in resolved and name not in skip and name not in needed:
      needed.add(name)
      todo.append(name)
for name in sorted(needed - {'jdiffrep'}):
  print(f"{name}=={resolved[name]['metadata']['version']}")
PY
}
mkdir -p "$tmp/local" "$out"
"${host_resolve[@]}"
requirements "$tmp/host.json" sdists > "$tmp/sdists.txt"
if [[ -s $tmp/sdists.txt ]]; then
  "$python" -m pip wheel --quiet --no-deps -w "$tmp/local" -r "$tmp/sdists.txt"
fi
"${target_resolve[@]}"
requirements "$tmp/target.json" wheels > "$tmp/requirements.txt"
if [[ -s $tmp/requirements.txt ]]; then
  "$python" -m pip download --quiet --no-deps "${target[@]}" --find-links "$tmp/local" \
    -d "$out" -r "$tmp/requirements.txt"
fi
cp "$self_wheel" "$out/"
cp "$tmp/requirements.txt" "$out/requirements-wheelhouse.txt"
echo "wheelhouse: $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1) in $out" \
     "($(wc -l < "$tmp/preinstalled.txt") preinstalled names left out;" \
     "built here from sdists: $(tr '\n' ' ' < "$tmp/sdists.txt"))"
echo "install offline with: python3 -m pip install --no-index --find-links $out '$requirement'"
