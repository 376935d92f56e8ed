#!/bin/sh
# Installs the Debian packages ctorch needs to build, when missing. Runs apt-get as
# root or through sudo; otherwise prints the exact command to run.
#
#   scripts/install-deps.sh          the build's packages (make test, make run)
#   scripts/install-deps.sh image    the image's tools: make image (mmdebstrap, umoci,
#                                    skopeo) and make test-image (bubblewrap)
PKGS="gcc make pkg-config libopenblas-dev zlib1g-dev libcurl4-openssl-dev libjansson-dev libarchive-dev libssl-dev libmicrohttpd-dev libjpeg62-turbo-dev libpng-dev openmpi-bin libopenmpi-dev iproute2 libprotobuf-c-dev protobuf-c-compiler libonnx-dev"
case "${1:-}" in
    "") ;;
    image) PKGS="mmdebstrap umoci skopeo bubblewrap"; NO_OPTIONAL=1 ;;
    *) echo "error: install-deps.sh: unknown set '$1' (none: the build's packages; image)" >&2
       exit 2 ;;
esac
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# Best effort: only the tests of the live page (tests/test_page.c: a headless browser), of
# the alert rules (tests/test_monitor.c: promtool, a real Prometheus and Alertmanager) and
# the short fuzzing runs (tests/test_fuzz.c: clang's libFuzzer, make fuzz) need these; they
# skip without them, and failing to install them never fails the build.
OPTIONAL="chromium chromium-driver prometheus prometheus-alertmanager clang"
[ -n "${NO_OPTIONAL:-}" ] && OPTIONAL=""
opt_missing=""
for p in $OPTIONAL; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || opt_missing="$opt_missing $p"
done
[ -z "$missing" ] && [ -z "$opt_missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"
elif [ -z "$missing" ]; then
    echo "note: optional packages missing:$opt_missing (the browser, alerting and fuzzing tests skip)" >&2
    exit 0
else
    echo "error: cannot install packages without root. Run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || [ -z "$missing" ] || {
    echo "error: apt-get update failed; run: sudo apt-get update && sudo apt-get install -y$missing" >&2; exit 1; }
if [ -n "$missing" ]; then
    echo "installing missing Debian packages:$missing"
    $SUDO apt-get install -y -qq $missing >/dev/null || {
        echo "error: apt-get install failed; run: sudo apt-get install -y$missing" >&2; exit 1; }
fi
if [ -n "$opt_missing" ]; then
    echo "installing optional Debian packages:$opt_missing"
    $SUDO apt-get install -y -qq $opt_missing >/dev/null 2>&1 ||
        echo "note: could not install$opt_missing (optional: the browser, alerting and fuzzing tests skip)" >&2
fi
exit 0
