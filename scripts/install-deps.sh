#!/bin/sh
# Installs the Debian packages ctorch needs to build, when missing. Runs apt-get as
# root or through sudo; otherwise prints the exact command to run.
PKGS="gcc make pkg-config libopenblas-dev zlib1g-dev libcurl4-openssl-dev libjansson-dev libarchive-dev libssl-dev libmicrohttpd-dev openmpi-bin libopenmpi-dev iproute2"
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
