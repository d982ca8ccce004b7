#!/usr/bin/env bash
# Install everything vc2's executors and tests run, on a fresh Debian 12 host (run as root, or with sudo):
#   bash sandbox_images/install_host.sh
# That is: the renderers of the eight VisPlotBench languages, the toolchains of the other four VisCode-Multi
# languages (R, g++, Node, a pinned tsc), the unprivileged `vc2sandbox` user the sandbox runs as, and the
# container images (the local podman base and one image per language family). Assumes nothing of the base
# system beyond apt and the Python that runs vc2.
# Idempotent: what is already there is skipped. Package lists live beside this script (apt-packages.txt,
# pip-requirements.txt, node-tools.txt) so image build files reuse them. The JS chart libraries are vendored
# in vc2/eval/assets/vendor/ (see vendor_js.sh, npm-packages.txt), not installed here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
say() { echo "[install_host] $*"; }
packages() { grep -v '^\s*#' "$1" | sed 's/#.*//' | grep -v '^\s*$'; }

# 1. Debian packages. --no-install-recommends keeps texlive and chromium lean. A line "package command"
# skips the package when the command is already on PATH (see apt-packages.txt).
missing=()
while read -r pkg cmd; do
  [ -n "${cmd:-}" ] && command -v "$cmd" >/dev/null 2>&1 && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done < <(packages "$here/apt-packages.txt")
if [ ${#missing[@]} -gt 0 ]; then
  say "apt-get install ${#missing[@]} packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "apt: all packages already installed"
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

# 3b. Node tools the sandboxed TypeScript programs need (tsc, Node's type declarations), pinned, into a
# system path the sandbox user can read. Skipped when the installed versions already match the list.
node_tools=/opt/vc2/node-tools
mapfile -t node_pkgs < <(packages "$here/node-tools.txt")
if ! cmp -s "$here/node-tools.txt" "$node_tools/installed-from.txt"; then
  say "npm install into $node_tools: ${node_pkgs[*]}"
  $SUDO mkdir -p "$node_tools"
  $SUDO npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$node_tools" "${node_pkgs[@]}" >/dev/null
  $SUDO cp "$here/node-tools.txt" "$node_tools/installed-from.txt"
  $SUDO chmod -R a+rX "$node_tools"
else
  say "node tools already in $node_tools"
fi

# 4. The container images: the local base (podman; debootstrap, as no registry is reachable), then one
# image per language family FROM it (build.sh; skipped when the tag of the current lists exists).
# Measured on the 2-core dev machine: base ~50 s, the six families ~5 min, ~8 GB. With them, "auto"
# runs each language in its container (tests pin their modes). VC2_SKIP_IMAGES=1 skips the families.
bash "$here/base_image.sh"
if [ "${VC2_SKIP_IMAGES:-0}" != 1 ]; then
  bash "$here/build.sh" --engine podman --base localhost/vc2-base:bookworm
fi

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
