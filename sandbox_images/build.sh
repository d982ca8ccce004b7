#!/usr/bin/env bash
# Build the executors' container images, one per language family (vc2/eval/containers.py names them):
#   bash sandbox_images/build.sh [--engine podman|docker] [--base IMAGE] [FAMILY...]
# FAMILY: python web tex lilypond r native (default: all). --base: the Debian 12 image each build file
# starts FROM (default $VC2_BASE_IMAGE, else docker.io/library/debian:12; where no registry is reachable,
# base_image.sh makes localhost/vc2-base:bookworm and install_host.sh passes it). --engine: default
# podman if installed, else docker.
# Each image is tagged localhost/vc2-<family>:<vc2 version>-<hash of its build file and package lists>:
# an image whose tag exists is up to date and is not rebuilt; a changed list gives a new tag, and the
# family's older vc2 tags are removed after the build. The host's added CA certificates
# (/usr/local/share/ca-certificates) go into the images so apt/pip/npm work behind a TLS-inspecting proxy.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
say() { echo "[build] $*"; }
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
engine=""; base="${VC2_BASE_IMAGE:-docker.io/library/debian:12}"; families=()
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) engine="${2:?--engine needs podman or docker}"; shift 2 ;;
    --base) base="${2:?--base needs an image}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
    *) families+=("$1"); shift ;;
  esac
done
if [ -z "$engine" ]; then
  for e in podman docker; do command -v "$e" >/dev/null && { engine="$e"; break; }; done
fi
[ -n "$engine" ] || { say "no container engine (podman or docker) installed"; exit 1; }
[ "$engine" = podman ] || [ "$engine" = docker ] || { say "--engine must be podman or docker, not $engine"; exit 2; }
cd "$here/.."  # vc2 imports from this checkout
py="${PYTHON:-python}"
known="$($py -m vc2.eval.containers families)"
[ ${#families[@]} -gt 0 ] || read -r -a families <<<"$known"
for f in "${families[@]}"; do
  case " $known " in *" $f "*) ;; *) say "unknown family $f (one of: $known)"; exit 2 ;; esac
done
# runc refuses rlimits above the host's hard limits, and the engines' defaults can be higher. podman
# build drops --ulimit for a FROM ${BASE} file, so it gets them as defaults through a containers.conf.
ul=("nofile=$(ulimit -Hn):$(ulimit -Hn)")
[ "$(ulimit -Hu)" = unlimited ] || ul+=("nproc=$(ulimit -Hu):$(ulimit -Hu)")
limits=()
if [ "$engine" = podman ]; then
  conf="$(mktemp)"; trap 'rm -f "$conf"' EXIT
  printf '[containers]\ndefault_ulimits = [%s]\n' "$(printf '"%s", ' "${ul[@]}" | sed 's/, $//')" >"$conf"
  export CONTAINERS_CONF_OVERRIDE="$conf"
else
  for u in "${ul[@]}"; do limits+=(--ulimit "$u"); done
fi
for f in "${families[@]}"; do
  tag="$($py -m vc2.eval.containers tag "$f")"
  if $engine image inspect "$tag" >/dev/null 2>&1; then
    say "$f: $tag is up to date"
    continue
  fi
  ctx="$(mktemp -d)"
  $py -m vc2.eval.containers context "$f" "$ctx"
  mkdir -p "$ctx/certs"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/certs/" 2>/dev/null || true
  say "$f: building $tag from $base ($engine)"
  t0=$SECONDS
  if ! $engine build -q --build-arg "BASE=$base" --label "vc2.family=$f" --label "vc2.base=$base" ${limits[@]+"${limits[@]}"} \
       -t "$tag" -f "$ctx/Containerfile" "$ctx" >"$ctx/build.log" 2>&1; then
    tail -40 "$ctx/build.log"
    say "$f: build failed (log above; context in $ctx)"
    exit 1
  fi
  rm -rf "$ctx"
  size="$($engine image inspect --format '{{.Size}}' "$tag" 2>/dev/null || echo 0)"
  say "$f: built $tag in $((SECONDS - t0)) s, $((size / 1000000)) MB"
  for old in $($engine images --format '{{.Repository}}:{{.Tag}}' "localhost/vc2-$f" 2>/dev/null); do
    [ "$old" = "$tag" ] || { say "$f: removing the stale $old"; $engine rmi "$old" >/dev/null 2>&1 || true; }
  done
done
