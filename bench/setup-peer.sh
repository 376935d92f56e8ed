#!/bin/sh
# Creates bench/.venv: the PyTorch 2.x peer of bench/run_bench.py, from PyPI, for CPU use.
#
# usage: bench/setup-peer.sh [--force] [--check]
#   (no option)  create or update bench/.venv; does nothing when it is already good
#   --force      remove bench/.venv and build it again
#   --check      only run the checks (bench/peer_check.py, torch.compile included) on it
#
# What it installs, exactly: bench/peer-requirements.txt, with `pip install --no-deps`.
# PyPI's torch wheel for Linux x86_64 is the CUDA build; its declared dependencies pull the
# whole CUDA toolkit, triton and cuda-bindings (several GB more). Only the NVIDIA libraries
# that torch's shared objects are linked against are installed (they are needed by
# `import torch` even on a machine without a GPU); the pure-python dependencies are pinned.
# The CPU wheels of download.pytorch.org would be lighter but are not reachable here.
#
# Needs: /usr/bin/python3 (Debian's 3.11) with the venv module (python3-venv) and the Python
# headers (python3-dev: torch.compile's inductor builds C++ against Python.h), a C++
# compiler (g++), and PyPI. Set PEER_BASE_PYTHON to use another Python 3.11 (the pins are
# for CPython 3.11). Nothing in `make` or `make test` needs this.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/bench/.venv"
REQ="$ROOT/bench/peer-requirements.txt"
CHECK="$ROOT/bench/peer_check.py"
BASE=${PEER_BASE_PYTHON:-/usr/bin/python3}
STAMP="$VENV/.peer-stamp"

force=0 check_only=0
for a in "$@"; do
    case "$a" in
        --force) force=1 ;;
        --check) check_only=1 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup-peer.sh: unknown option '$a' (--force, --check)" >&2; exit 2 ;;
    esac
done

say() { printf 'setup-peer.sh: %s\n' "$*"; }
die() { printf 'setup-peer.sh: %s\n' "$*" >&2; exit 1; }

# the stamp: what the venv was built from (requirements, base Python); written after the checks pass
want_stamp() {
    printf 'req %s\nbase %s %s\n' "$(sha256sum "$REQ" | cut -d' ' -f1)" "$BASE" \
        "$("$BASE" -c 'import sys; print(sys.version.split()[0])')"
}

run_checks() {
    say "checking $VENV (bench/peer_check.py: eager, channels_last, autocast bf16, torch.compile)..."
    out=$("$VENV/bin/python" "$CHECK" 2>"$VENV/.peer-check.log") || {
        cat "$VENV/.peer-check.log" >&2
        die "PyTorch in $VENV does not work: $out"
    }
    printf '%s\n' "$out" >"$VENV/peer-check.json"
    printf '%s\n' "$out"
    if ! printf '%s' "$out" | "$VENV/bin/python" -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["variants"].get("compile", {}).get("ok") else 1)'; then
        say "WARNING: torch.compile does not work here (see above and $VENV/.peer-check.log);"
        say "         bench/run_bench.py will report the compile variant as failed"
    else
        say "torch.compile (inductor, CPU) works"
    fi
}

[ -f "$REQ" ] || die "$REQ is missing"
[ -x "$BASE" ] || die "$BASE not found (set PEER_BASE_PYTHON, or apt-get install -y python3)"

if [ "$check_only" = 1 ]; then
    [ -x "$VENV/bin/python" ] || die "$VENV does not exist; run bench/setup-peer.sh first"
    run_checks
    exit 0
fi

if [ "$force" = 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(want_stamp)" ] &&
    "$VENV/bin/python" -c 'import torch, torchvision' >/dev/null 2>&1; then
    say "$VENV is up to date ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'));" \
        "nothing to do (--force rebuilds it, --check re-runs the checks)"
    exit 0
fi

# prerequisites, with the Debian package that provides each
"$BASE" -c 'import venv, ensurepip' 2>/dev/null || die "$BASE has no venv/ensurepip: apt-get install -y python3-venv"
inc=$("$BASE" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$inc/Python.h" ] || die "$inc/Python.h is missing (torch.compile needs it): apt-get install -y python3-dev"
command -v g++ >/dev/null 2>&1 || die "no g++ (torch.compile needs a C++ compiler): apt-get install -y g++"

t0=$(date +%s)
if [ "$force" = 1 ] && [ -d "$VENV" ]; then
    say "removing $VENV"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV from $BASE"
    "$BASE" -m venv "$VENV"
fi
rm -f "$STAMP"
say "installing bench/peer-requirements.txt (--no-deps; about 3 GB to download the first time)..."
"$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --no-deps -r "$REQ"
run_checks
want_stamp >"$STAMP"
t1=$(date +%s)
say "done in $((t1 - t0)) s; $VENV: $(du -sh "$VENV" | cut -f1)" \
    "(of which NVIDIA libraries $(du -shc "$VENV"/lib/python3*/site-packages/nvidia 2>/dev/null | tail -1 | cut -f1))"
say "use it with: python3 bench/run_bench.py (picks bench/.venv/bin/python as the peer)"
