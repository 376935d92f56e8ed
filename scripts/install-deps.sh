#!/bin/sh
# Installs the Debian packages ctorch needs to build, when missing. Runs apt-get as
# root or through sudo; otherwise prints the exact command to run.
#
#   scripts/install-deps.sh          the build's packages (make test, make run)
#   scripts/install-deps.sh image    the image's tools: make image (mmdebstrap, umoci,
#                                    skopeo) and make test-image (bubblewrap)
PKGS="gcc make pkg-config libopenblas-dev zlib1g-dev libcurl4-openssl-dev libjansson-dev libarchive-dev libssl-dev openmpi-bin libopenmpi-dev iproute2"
case "${1:-}" in
    "") ;;
    image) PKGS="mmdebstrap umoci skopeo bubblewrap" ;;
    *) echo "error: install-deps.sh: unknown set '$1' (none: the build's packages; image)" >&2
       exit 2 ;;
esac
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing missing Debian packages:$missing"
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"
else
    echo "error: cannot install packages without root. Run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq && $SUDO apt-get install -y -qq $missing >/dev/null || {
    echo "error: apt-get install failed; run: sudo apt-get install -y$missing" >&2; exit 1; }
