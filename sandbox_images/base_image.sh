#!/usr/bin/env bash
# Build the local container base image localhost/vc2-base:bookworm for podman (run as root):
#   bash sandbox_images/base_image.sh [IMAGE]
# No registry is reachable on the machines vc2 is developed on, so the base is made here, not pulled:
# debootstrap a minimal Debian 12 (minbase + python3, from the Debian mirror) and `podman import` it.
# tests/eval/test_sandbox.py runs its adversarial programs in container mode with this image; the
# per-language renderer images (a later step) start FROM it. Idempotent: does nothing if the image
# exists. Measured on the 2-core dev machine: ~50 s (debootstrap 47 s, import 5 s), 261 MB.
set -euo pipefail
IMAGE="${1:-localhost/vc2-base:bookworm}"
MIRROR="${VC2_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
say() { echo "[base_image] $*"; }
command -v podman >/dev/null || { say "podman is not installed (install_host.sh installs it)"; exit 1; }
if podman image exists "$IMAGE"; then
  say "$IMAGE already exists"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
say "debootstrap --variant=minbase --include=python3 bookworm ($MIRROR)"
debootstrap --variant=minbase --include=python3 bookworm "$tmp/rootfs" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 \
  || { tail -20 "$tmp/debootstrap.log"; say "debootstrap failed"; exit 1; }
say "podman import -> $IMAGE"
tar -C "$tmp/rootfs" -c . | podman import -q --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
