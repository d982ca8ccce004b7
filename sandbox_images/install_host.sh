#!/usr/bin/env bash
# Install every VisPlotBench renderer on a fresh Debian 12 host (run as root, or with sudo):
#   bash sandbox_images/install_host.sh
# Idempotent: apt/pip skip what is already there. Package lists live beside this script
# (apt-packages.txt, pip-requirements.txt, npm-packages.txt) so later Dockerfiles reuse them.
# The JS chart libraries are already vendored in vc2/eval/assets/vendor/ (see vendor_js.sh), so
# this script needs no npm. It also creates the unprivileged `vc2sandbox` user the sandbox runs as.
# Measured on the 2-core Debian 12 dev machine (fast mirror): 1 min 43 s from nothing (apt ~1.5 GB on
# disk) before podman and its base image were added (~1 min more), 15 s when everything is there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
say() { echo "[install_host] $*"; }
packages() { grep -v '^\s*#' "$1" | sed 's/#.*//' | grep -v '^\s*$'; }

# 1. Debian packages. --no-install-recommends keeps texlive and chromium lean.
mapfile -t apt_pkgs < <(packages "$here/apt-packages.txt")
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "apt-get install ${#missing[@]} packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "apt: all ${#apt_pkgs[@]} packages already installed"
fi

# 2. Python packages, pinned. Never `playwright install` or kaleido's Chrome download: both use
# Debian's /usr/bin/chromium (the executors pass executable_path; kaleido finds it on PATH).
say "pip install -r pip-requirements.txt"
python -m pip install -q -r "$here/pip-requirements.txt"

# 3. The unprivileged user the sandbox drops to when started as root.
if ! id vc2sandbox >/dev/null 2>&1; then
  say "useradd vc2sandbox (system user, no home, no login)"
  $SUDO useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin vc2sandbox
fi

# 4. The local container base image (podman; debootstrap, no registry). The sandbox's "auto" mode
# still picks bwrap: container mode needs the renderer image VC2_SANDBOX_IMAGE, which this is not.
bash "$here/base_image.sh"

# 5. Font cache, so the first render does not pay for fc-cache.
say "fc-cache"
$SUDO fc-cache -s >/dev/null 2>&1 || true

# 6. Report what the executors see.
say "renderers:"
cd "$here/.."  # so that `vc2` imports from this checkout
python - <<'EOF'
from vc2.eval import executors
for k, v in executors.describe_sandbox("auto").items():
    print(f"  {k:12s} {v}")
EOF
