#!/bin/bash
# The GPU check of the CUDA backend, run ON the lent device machine from the repository root
# (docs/gpu-check.md gives the exact `run` calls). Needs .gpu/ from scripts/gpu-prepare.sh,
# carried with the call.
#
#   scripts/gpu-check.sh [STAGE ...]        STAGE: build tests accuracy bench (default: all)
#   scripts/gpu-check.sh hash               prints the source hash only (compare with here)
#
# Every call first unpacks .gpu/debs into a private prefix (/opt/ctorch-deps; never into /,
# which holds the image's own, newer libgfortran/zlib) and writes machine information.
# Stages:
#   build     make -jN all BUILD/test_ctorch cuda-emu (the CUDA plugin built there by nvcc),
#             linked against the prefix's OpenBLAS/zlib with an RPATH (no LD_LIBRARY_PATH
#             needed). tests/accuracy/bench build what they need themselves when it is
#             missing (a fresh machine), so every stage also works alone.
#   tests     the whole suite, CTORCH_DATA=.gpu/data (the CIFAR-10 subset): failures other
#             than the two tests that need the full CIFAR-10 (listed below), and any CUDA
#             test that is skipped, fail the stage.
#   accuracy  `ctorch train` simple_cnn on the subset (default recipe, 10 epochs): for each
#             seed --device cuda (TF32 off) then --device cpu with the same seed, then
#             --device cuda with TF32 on; passes when the GPU's mean final test accuracy
#             >= the CPU's - GPU_CHECK_ACC_TOL points.
#   bench     bench/gpu_bench.py: ctorch bench --device cuda vs PyTorch eager (torch_bench.py
#             --device cuda), alternating, simple_cnn b64 and b512, resnet18_cifar b256, TF32 off
#             and on; median img/s and ratios as a Markdown table for bench/RESULTS.md.
#
# Output, all in $OUT (at most 8 files come back from the device): summary.md (verdicts of
# every stage run on this machine, this call's and earlier calls' while it stayed warm),
# info.log, build.log, tests.log, accuracy.log, bench.log, bench.json. summary.md is
# rewritten after every stage, so a call stopped at its time limit still returns what it
# finished.
#
# Time: the whole call stops starting work GPU_CHECK_DEADLINE seconds (default 560) after
# it began; each stage also has its own cap (GPU_CHECK_{BUILD,TESTS,ACC,BENCH}_S). A stage
# cut short says so in summary.md; run it again alone in another call.
#
# Knobs (environment):
#   GPU_CHECK_BUILD=build          build folder       GPU_CHECK_PREFIX=/opt/ctorch-deps
#   GPU_CHECK_JOBS=$(nproc)        make -j            GPU_CHECK_PYTHON=python3 (its PyTorch)
#   GPU_CHECK_EPOCHS=10 GPU_CHECK_SEEDS="1 2 3" GPU_CHECK_ACC_TOL=1.0 accuracy recipe, bar
#   GPU_CHECK_PAIRS=3 GPU_CHECK_BENCH_CASES=... GPU_CHECK_BENCH_STEPS=...   bench (gpu_bench.py)
#   GPU_CHECK_TEST_FILTER=name     run only the tests whose name contains it
#   GPU_CHECK_QUICK=1              tiny sizes everywhere: checks the script, measures nothing
#   GPU_CHECK_EMU=1                no GPU: ctorch on the CUDA emulator (build/cuda_emu),
#                                  PyTorch on the CPU; implies GPU_CHECK_QUICK=1. Only to
#                                  test this script on a machine without a GPU.
#   GPU_CHECK_SYSTEM_DEPS=1        use the system's OpenBLAS/zlib instead of .gpu/debs
#   GPU_CHECK_EXTRA_CFLAGS=...     added to CFLAGS (e.g. -Wno-error if the image's newer gcc
#                                  warns where gcc 12 did not)
set -u -o pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2

T_START=$SECONDS
# the toolkit's usual place, where nvcc is not on PATH (the Makefile looks for it there)
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
START_STAMP=$(date -u +%H:%M:%SZ)
BUILD=${GPU_CHECK_BUILD:-build}
PREFIX=${GPU_CHECK_PREFIX:-/opt/ctorch-deps}
STATE=$BUILD/gpu-check
OUT=${OUT:-$ROOT/$BUILD/gpu-check-out}
JOBS=${GPU_CHECK_JOBS:-$(nproc 2>/dev/null || echo 8)}
PY=${GPU_CHECK_PYTHON:-python3}
EMU=${GPU_CHECK_EMU:-0}
QUICK=${GPU_CHECK_QUICK:-0}
[ "$EMU" = 1 ] && QUICK=1
DEADLINE=${GPU_CHECK_DEADLINE:-560}
BUILD_S=${GPU_CHECK_BUILD_S:-360}
TESTS_S=${GPU_CHECK_TESTS_S:-360}
ACC_S=${GPU_CHECK_ACC_S:-300}
BENCH_S=${GPU_CHECK_BENCH_S:-480}
EPOCHS=${GPU_CHECK_EPOCHS:-10}
SEEDS=${GPU_CHECK_SEEDS:-1 2 3}
ACC_TOL=${GPU_CHECK_ACC_TOL:-1.0}
PAIRS=${GPU_CHECK_PAIRS:-3}
DATA=$ROOT/.gpu/data
# Tests that check the full CIFAR-10 (50000 train / 10000 test records): they fail on the
# subset by construction and pass on the CPU with the full data (make test here).
SUBSET_FAILS="data_cifar10_train_real data_cifar10_test_real"

SUMMARY=$OUT/summary.md
INFO=$OUT/info.log

note() { echo "gpu-check: $*"; }
elapsed() { echo $((SECONDS - T_START)); }
# seconds a stage may use: its cap, or what is left before the deadline
budget() {
    local cap=$1 left=$((DEADLINE - (SECONDS - T_START)))
    [ "$left" -lt "$cap" ] && cap=$left
    echo "$cap"
}
stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# ------------------------------------------------------------------ arguments
STAGES=()
for s in "$@"; do
    case $s in
        all) STAGES+=(build tests accuracy bench) ;;
        build|tests|accuracy|bench) STAGES+=("$s") ;;
        hash) ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed 's/^# \{0,1\}//; /^set -u/d'; exit 0 ;;
        *) echo "gpu-check: unknown stage '$s' (build tests accuracy bench all hash)" >&2; exit 2 ;;
    esac
done
[ $# = 0 ] && STAGES=(build tests accuracy bench)

# A hash of what is built and run (sources, tests, bench, scripts, Makefile): compare it with
# `scripts/gpu-check.sh hash` on the machine the tree came from to know what was measured.
src_hash() {
    find Makefile include src tests bench scripts -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' \
        -o -name '*.cuh' -o -name '*.cc' -o -name '*.mk' -o -name '*.py' -o -name '*.sh' -o -name Makefile \) \
        -not -path '*/__pycache__/*' -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}
if [ "${1:-}" = hash ]; then src_hash; exit 0; fi
mkdir -p "$OUT" "$STATE" || exit 2
SRC_HASH=$(src_hash)
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo "no .git")

# ------------------------------------------------------------------ summary
declare -A RAN_NOW=()
write_summary() {
    local st
    {
        echo "# ctorch GPU check"
        echo
        echo "- machine: ${GPU_NAME:-?}; driver ${GPU_DRIVER:-?}; $(nproc) CPUs; $(uname -r)"
        echo "- tree: source hash $SRC_HASH (git $GIT_REV)"
        echo "- this call: stages ${STAGES[*]} started $START_STAMP, $(elapsed) s so far$( [ "$QUICK" = 1 ] && echo "; QUICK mode (tiny sizes: nothing measured)")$( [ "$EMU" = 1 ] && echo "; EMULATED (CUDA emulator, PyTorch on the CPU)")"
        echo "- ctorch: ${CUDA_LINE:-?}"
        [ -n "${DEPS_NOTE:-}" ] && echo "- deps: $DEPS_NOTE"
        for st in build tests accuracy bench; do
            [ -f "$STATE/$st.md" ] || continue
            echo
            if [ -z "${RAN_NOW[$st]:-}" ]; then
                echo "_(from an earlier call on this machine: $(head -1 "$STATE/$st.when" 2>/dev/null))_"
                echo
            fi
            cat "$STATE/$st.md"
        done
    } > "$SUMMARY.tmp" && mv "$SUMMARY.tmp" "$SUMMARY"
}
stage_begin() { RAN_NOW[$1]=1; echo "$(stamp) source $SRC_HASH" > "$STATE/$1.when"; rm -f "$STATE/$1.md"; }

# ------------------------------------------------------------------ deps (every call)
EXTRA_CFLAGS=${GPU_CHECK_EXTRA_CFLAGS:-}
CFLAGS_DEPS=$EXTRA_CFLAGS
LDLIBS_DEPS=""
MAKE=$(command -v make || true)
CC=${CC:-$(command -v cc || command -v gcc || echo cc)}
DEPS_NOTE=""
unpack_deb() { # unpack_deb FILE DIR: dpkg -x, or ar + tar where dpkg is missing
    if command -v dpkg >/dev/null; then dpkg -x "$1" "$2"; return; fi
    local t; t=$(mktemp -d)
    (cd "$t" && ar x "$1" && tar -xf data.tar.* -C "$2") ; local rc=$?
    rm -rf "$t"; return $rc
}
setup_deps() {
    if [ "${GPU_CHECK_SYSTEM_DEPS:-0}" = 1 ]; then DEPS_NOTE="the system's (GPU_CHECK_SYSTEM_DEPS=1)"; return 0; fi
    if ! ls .gpu/debs/*.deb >/dev/null 2>&1; then
        DEPS_NOTE="no .gpu/debs: the system's (run scripts/gpu-prepare.sh here and carry .gpu)"
        return 0
    fi
    if ! mkdir -p "$PREFIX/ctlib" 2>/dev/null; then
        PREFIX=/tmp/ctorch-deps   # /opt not writable: any folder does (the RPATH names it)
        mkdir -p "$PREFIX/ctlib" || { DEPS_NOTE="cannot create $PREFIX"; return 1; }
    fi
    local f
    for f in .gpu/debs/*.deb; do
        unpack_deb "$ROOT/$f" "$PREFIX" || { DEPS_NOTE="unpacking $f failed"; return 1; }
    done
    # one folder with the link names the Makefile's -lopenblas -lz need and the run-time
    # sonames; RPATH (not RUNPATH) to it, so libopenblas finds libgfortran there too
    local ob z gf qm js
    local dirs=("$PREFIX/usr")
    [ -d "$PREFIX/lib" ] && dirs+=("$PREFIX/lib")
    ob=$(find "${dirs[@]}" -path '*openblas-pthread/libopenblas.so.0' | head -1)
    z=$(find "${dirs[@]}" -name 'libz.so.1.*' -type f | head -1)
    gf=$(find "${dirs[@]}" -name 'libgfortran.so.5' | head -1)
    qm=$(find "${dirs[@]}" -name 'libquadmath.so.0' | head -1)
    js=$(find "${dirs[@]}" -name 'libjansson.so.4.*' -type f | head -1)
    [ -n "$ob" ] && [ -n "$z" ] && [ -n "$gf" ] && [ -n "$qm" ] && [ -n "$js" ] || {
        DEPS_NOTE="the .debs lack a library (openblas '$ob' zlib '$z' gfortran '$gf' quadmath '$qm' jansson '$js')"; return 1; }
    ln -sfn "$js" "$PREFIX/ctlib/libjansson.so"; ln -sfn "$js" "$PREFIX/ctlib/libjansson.so.4"
    ln -sfn "$ob" "$PREFIX/ctlib/libopenblas.so"; ln -sfn "$ob" "$PREFIX/ctlib/libopenblas.so.0"
    ln -sfn "$z" "$PREFIX/ctlib/libz.so"; ln -sfn "$z" "$PREFIX/ctlib/libz.so.1"
    ln -sfn "$gf" "$PREFIX/ctlib/libgfortran.so.5"; ln -sfn "$qm" "$PREFIX/ctlib/libquadmath.so.0"
    CFLAGS_DEPS="-I$PREFIX/usr/include/x86_64-linux-gnu/openblas-pthread -I$PREFIX/usr/include${EXTRA_CFLAGS:+ $EXTRA_CFLAGS}"
    LDLIBS_DEPS="-L$PREFIX/ctlib -Wl,-rpath,$PREFIX/ctlib -Wl,--disable-new-dtags"
    [ -z "$MAKE" ] && [ -x "$PREFIX/usr/bin/make" ] && MAKE=$PREFIX/usr/bin/make
    # prove it: a program using cblas and zlib, built and run with exactly these flags
    local t; t=$(mktemp -d)
    cat > "$t/t.c" <<'EOF'
#include <cblas.h>
#include <zlib.h>
#include <stdio.h>
int main(void) {
    float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1}, c[4] = {0};
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1, a, 2, b, 2, 0, c, 2);
    printf("sgemm %g %g %g %g, zlib %s, %s\n", c[0], c[1], c[2], c[3], zlibVersion(), openblas_get_config());
    return c[3] == 4 ? 0 : 1;
}
EOF
    if "$CC" $CFLAGS_DEPS "$t/t.c" -o "$t/t" -lopenblas -lz $LDLIBS_DEPS >"$t/log" 2>&1 && "$t/t" >>"$t/log" 2>&1; then
        DEPS_NOTE="OpenBLAS/zlib from .gpu/debs in $PREFIX ($(tail -1 "$t/log"))"
    else
        DEPS_NOTE="the test program against $PREFIX failed: $(tr '\n' ' ' < "$t/log" | cut -c1-400)"
        rm -rf "$t"; return 1
    fi
    rm -rf "$t"
}

# ------------------------------------------------------------------ CUDA libraries, emulator
CT_ENV=()   # environment for ctorch processes (ctorch, test_ctorch) only
setup_cuda_env() {
    if [ "$EMU" = 1 ]; then
        CT_ENV=("CTORCH_CUDA_PLUGIN=$ROOT/$BUILD/cuda_emu/libctorch_cuda.so"
                "LD_LIBRARY_PATH=$ROOT/$BUILD/cuda_emu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "CT_EMU_QUIET=1")
        return
    fi
    # cuDNN 9 is not part of the CUDA toolkit: where the loader cannot find it, use the one in
    # the image's PyTorch (pip's nvidia-cudnn) through CTORCH_CUDNN_LIBRARY; its folder goes on
    # LD_LIBRARY_PATH for the sub-libraries libcudnn.so.9 opens by name
    # (grep without -q: with pipefail an early exit would fail ldconfig with SIGPIPE)
    if [ -z "${CTORCH_CUDNN_LIBRARY:-}" ] && ! ldconfig -p 2>/dev/null | grep 'libcudnn.so.9 ' >/dev/null \
        && ! ls /usr/local/cuda/lib64/libcudnn.so.9 >/dev/null 2>&1; then
        local d
        d=$(find /usr/local /usr/lib /opt -name 'libcudnn.so.9' 2>/dev/null | head -1)
        if [ -n "$d" ]; then
            CT_ENV=("CTORCH_CUDNN_LIBRARY=$d" "LD_LIBRARY_PATH=$(dirname "$d")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
        fi
    fi
}
ct() { env "${CT_ENV[@]}" "$@"; }   # runs a ctorch process with CT_ENV

# ------------------------------------------------------------------ build
make_targets() { # make_targets BUDGET TARGET...: builds into $BUILD, appending to build.log
    local b=$1; shift
    local stamp="$CFLAGS_DEPS|$LDLIBS_DEPS"
    if [ ! -f "$BUILD/.gpu-check-flags" ] || [ "$(cat "$BUILD/.gpu-check-flags")" != "$stamp" ]; then
        # other link flags than last time (or a build not made by this script): relink
        # everything linked, so that the RPATH to the prefix is in (objects do not change)
        rm -f "$BUILD/ctorch" "$BUILD/test_ctorch" "$BUILD/libctorch.so" "$BUILD"/examples/*
        rm -f "$BUILD"/cuda_emu/*.so* "$BUILD"/cuda_emu/test_simt
    fi
    mkdir -p "$BUILD"; echo "$stamp" > "$BUILD/.gpu-check-flags"
    local t0=$SECONDS
    # tests/cuda_emu/emu.mk names the emulator's cuDNN stand-in after cudnn_version.h in the
    # toolkit; without that header (cuDNN is not part of the toolkit) it would be
    # "libcudnn.so." and the emulated runs would load the real cuDNN: name it .9 (the
    # plugin's own cudnn_subset.h is cuDNN 9)
    local extra=() nv inc
    nv=$(command -v nvcc || true)
    if [ -n "$nv" ]; then
        inc=$(dirname "$(dirname "$(readlink -f "$nv")")")/include
        [ -f "$inc/cudnn_version.h" ] || extra+=(CUDNN_MAJOR=9)
    fi
    echo "== $(stamp) $MAKE -j$JOBS BUILD=$BUILD ${extra[*]} $* (budget ${b}s)" >> "$OUT/build.log"
    timeout "$b" "$MAKE" --no-print-directory -j"$JOBS" BUILD="$BUILD" CC="$CC" CFLAGS="$CFLAGS_DEPS" \
        LDLIBS="$LDLIBS_DEPS" "${extra[@]}" "$@" >> "$OUT/build.log" 2>&1
    local rc=$?
    echo "== rc $rc after $((SECONDS - t0)) s" >> "$OUT/build.log"
    BUILD_SECS=$((SECONDS - t0))
    return $rc
}
have_nvcc() { command -v nvcc >/dev/null 2>&1; }
need_targets() { # what the requested stages need, for `make`
    local t=(lib cli)
    have_nvcc && t+=(cuda)
    [ "$EMU" = 1 ] && t+=(cuda-emu)
    echo "${t[@]}"
}

CUDA_LINE=""
refresh_cuda_line() {
    [ -x "$BUILD/ctorch" ] || return
    CUDA_LINE=$(ct "$BUILD/ctorch" --version 2>&1 | grep '^cuda:' | head -1)
}

stage_build() { # stage_build full|min
    local mode=$1 b targets
    b=$(budget "$BUILD_S")
    if [ "$mode" = full ]; then
        targets="all $BUILD/test_ctorch"
        have_nvcc && targets="$targets cuda-emu"
        [ "$EMU" = 1 ] && ! have_nvcc && targets="$targets cuda-emu"
    else
        targets=$(need_targets)
    fi
    stage_begin build
    local ok=1
    if [ -z "$MAKE" ]; then
        echo "no make found (not in the image, not in .gpu/debs)" >> "$OUT/build.log"; ok=0
    elif [ "$b" -le 10 ]; then
        echo "no time left" >> "$OUT/build.log"; ok=0
    else
        # shellcheck disable=SC2086
        make_targets "$b" $targets || ok=0
    fi
    refresh_cuda_line
    local rpath
    rpath=$(readelf -d "$BUILD/ctorch" 2>/dev/null | grep -E 'RPATH|RUNPATH' | sed 's/.*\[\(.*\)\]/\1/' | head -1)
    {
        echo "## build"
        echo
        echo "\`make -j$JOBS BUILD=$BUILD $targets\`: $([ $ok = 1 ] && echo "**ok**" || echo "**FAILED** (build.log)") in ${BUILD_SECS:-0} s (budget ${b} s)."
        echo "nvcc: $(have_nvcc && nvcc --version | tail -1 || echo 'not found: no CUDA plugin')."
        echo "plugin: $([ -f "$BUILD/libctorch_cuda.so" ] && echo "$BUILD/libctorch_cuda.so, $(stat -c %s "$BUILD/libctorch_cuda.so") bytes" || echo "no $BUILD/libctorch_cuda.so")$( [ "$EMU" = 1 ] && echo "; emulated plugin $BUILD/cuda_emu/libctorch_cuda.so")."
        echo "ctorch RPATH: ${rpath:-none}; \`ctorch --version\`: ${CUDA_LINE:-no ctorch}"
        if [ $ok = 0 ]; then echo; echo '```'; grep -E 'error|Error|No rule|not found' "$OUT/build.log" | tail -15; echo '```'; fi
    } > "$STATE/build.md"
    write_summary
    [ $ok = 1 ]
}
# builds what a stage needs when it is missing (a fresh machine); quiet when up to date
ensure_built() { # ensure_built full|min
    local need=0
    [ -x "$BUILD/ctorch" ] || need=1
    have_nvcc && [ ! -f "$BUILD/libctorch_cuda.so" ] && need=1
    [ "$EMU" = 1 ] && [ ! -f "$BUILD/cuda_emu/libctorch_cuda.so" ] && need=1
    [ "$1" = full ] && [ ! -x "$BUILD/test_ctorch" ] && need=1
    [ "$1" = full ] && have_nvcc && [ ! -f "$BUILD/cuda_emu/libctorch_cuda.so" ] && need=1
    [ "$(cat "$BUILD/.gpu-check-flags" 2>/dev/null)" != "$CFLAGS_DEPS|$LDLIBS_DEPS" ] && need=1
    if [ $need = 1 ]; then note "building first ($1)"; stage_build "$1"; else refresh_cuda_line; fi
}

# ------------------------------------------------------------------ info (every call)
collect_info() {
    {
        echo "== $(stamp) gpu-check ${STAGES[*]} (QUICK=$QUICK EMU=$EMU) source $SRC_HASH git $GIT_REV"
        echo "== uname"; uname -a
        echo "== os"; grep PRETTY_NAME /etc/os-release 2>/dev/null
        echo "== cpu"; nproc; grep -m1 'model name' /proc/cpuinfo; free -g 2>/dev/null | head -2
        echo "== nvidia-smi"; nvidia-smi 2>&1 | head -40
        echo "== nvidia-smi -q (clocks, power, processes)"
        nvidia-smi -q -d CLOCK,POWER,PERFORMANCE 2>&1 | head -60
        echo "== nvcc"; command -v nvcc && nvcc --version 2>&1 | tail -2
        echo "== gcc / make"; gcc --version 2>&1 | head -1; ${MAKE:-make} --version 2>&1 | head -1
        echo "== python: $PY"
        "$PY" - <<'EOF' 2>&1
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "cc", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
          "mem GiB", round(p.total_memory / 2**30, 1), "cudnn", torch.backends.cudnn.version())
EOF
        echo "== libraries seen by the loader"
        ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libcublas|libcudnn\.so|libopenblas|libz\.so|libgfortran' | head -20
        echo "== deps: $DEPS_NOTE"
        echo "== ctorch process environment: ${CT_ENV[*]:-(none)}"
    } >> "$INFO" 2>&1
}
info_after_build() {
    {
        echo "== ldd $BUILD/ctorch"; ldd "$BUILD/ctorch" 2>&1
        echo "== ctorch --version"; ct "$BUILD/ctorch" --version 2>&1
        echo "== libraries the plugin loads (LD_DEBUG=libs, filtered)"
        ct env LD_DEBUG=libs "$BUILD/ctorch" --version 2>&1 | grep -E 'calling init: .*(cuda|cublas|cudnn|openblas)' | sed 's/^ *[0-9]*: *//' | sort -u | head -20
    } >> "$INFO" 2>&1
}

# ------------------------------------------------------------------ tests
stage_tests() {
    ensure_built full || true
    stage_begin tests
    local b log=$OUT/tests.log rc=0
    b=$(budget "$TESTS_S")
    if [ ! -x "$BUILD/test_ctorch" ]; then
        printf '## tests\n\n**not run**: %s/test_ctorch was not built (build.log)\n' "$BUILD" > "$STATE/tests.md"
        write_summary; return 1
    fi
    local t0=$SECONDS
    # shellcheck disable=SC2086
    timeout "$b" env "${CT_ENV[@]}" CTORCH_DATA="$DATA" CTORCH_BIN="$ROOT/$BUILD/ctorch" \
        "$BUILD/test_ctorch" ${GPU_CHECK_TEST_FILTER:-} > "$log" 2>&1 || rc=$?
    local secs=$((SECONDS - t0))
    local last fails unexpected="" expected="" cuda_skips="" skips f
    last=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$log" | tail -1)
    fails=$(sed -n 's/^FAIL \(.*\)/\1/p' "$log")
    for f in $fails; do
        if [[ " $SUBSET_FAILS " == *" $f "* ]]; then expected="$expected $f"; else unexpected="$unexpected $f"; fi
    done
    # skipped tests with their reasons (the reason line comes before the "skip NAME" line)
    skips=$(awk '/^    skipped: /{r=substr($0,14)} /^skip /{print $2 "\t" r; r=""}' "$log")
    cuda_skips=$(echo "$skips" | awk -F'\t' 'tolower($1 $2) ~ /cuda/ {print $1}' | tr '\n' ' ')
    local verdict="PASS"
    [ -z "$last" ] && verdict="INCOMPLETE"
    [ -n "$unexpected" ] && verdict="FAIL"
    if [ -n "$cuda_skips" ] && [ "$EMU" != 1 ]; then verdict="FAIL (CUDA tests skipped)"; fi
    {
        echo "## tests"
        echo
        echo "\`CTORCH_DATA=.gpu/data $BUILD/test_ctorch ${GPU_CHECK_TEST_FILTER:-}\`: **$verdict** — ${last:-no summary line (rc $rc$( [ $rc = 124 ] && echo ": stopped after the stage budget of $b s"))} in $secs s."
        [ $rc = 124 ] && echo "Stopped at the budget; the last finished test: $(grep -E '^(ok|FAIL|skip) ' "$log" | tail -1)."
        echo
        echo "- failures that need the full CIFAR-10 (expected on the subset):${expected:- none}"
        echo "- other failures:${unexpected:- none}"
        echo "- CUDA-related skips: ${cuda_skips:-none}$( [ "$EMU" = 1 ] && echo ' (emulated run: not a GPU pass)')"
        echo "- CUDA tests that ran: $(grep -E '^(ok|FAIL) ' "$log" | awk '{print $2}' | grep -iE 'cuda|backends_|gpu' | wc -l) ($(grep -E '^ok ' "$log" | awk '{print $2}' | grep -iE 'cuda|backends_|gpu' | wc -l) ok)"
        if [ -n "$skips" ]; then
            echo "- all skips:"
            echo "$skips" | awk -F'\t' '{printf "  - %s: %s\n", $1, substr($2, 1, 160)}'
        fi
        if [ -n "$unexpected" ]; then
            echo
            echo '```'
            for f in $unexpected; do grep -B12 "^FAIL $f\$" "$log" | grep -vE '^(ok|skip|FAIL) ' | tail -10; echo "FAIL $f"; done
            echo '```'
        fi
    } > "$STATE/tests.md"
    write_summary
    [ "$verdict" = PASS ]
}

# ------------------------------------------------------------------ accuracy
final_acc() { sed -n 's/^final test accuracy: \([0-9.]*\)%.*/\1/p' "$1" | tail -1; }
epoch_accs() { # the per-epoch test accuracies of a --log-json file, "a1 a2 ..."
    [ -f "$1" ] && sed -n 's/.*"test_acc": \([0-9.]*\).*/\1/p' "$1" | awk '{printf "%.2f ", 100 * $1}'
}
last_ips() { [ -f "$1" ] && sed -n 's/.*"images_per_sec": \([0-9.]*\).*/\1/p' "$1" | tail -1; }
stage_accuracy() {
    ensure_built min || true
    stage_begin accuracy
    local log=$OUT/accuracy.log b dev tf json out t0 rc run seed key left
    local -a args runs=()
    b=$(budget "$ACC_S")
    args=(train --model simple_cnn --dataset cifar10 --data-dir "$DATA" --epochs "$EPOCHS")
    [ "$QUICK" = 1 ] && args=(train --model simple_cnn --dataset cifar10 --data-dir "$DATA" --epochs 1 \
        --train-limit "$([ "$EMU" = 1 ] && echo 256 || echo 2048)" --test-limit "$([ "$EMU" = 1 ] && echo 128 || echo 512)")
    # per seed: the GPU (TF32 off) and the CPU, same seed and data order; then the GPU with
    # TF32 on for the first seed. The GPU runs first: they are the short ones.
    for seed in $SEEDS; do runs+=("cuda:$seed" "cpu:$seed"); done
    runs+=("cuda_tf32:${SEEDS%% *}")
    : > "$log"
    declare -A ACC=() SECS=() IPS=() CURVE=() RC=()
    local t_stage=$SECONDS
    for key in "${runs[@]}"; do
        run=${key%%:*}; seed=${key#*:}
        left=$((b - (SECONDS - t_stage)))
        if [ "$left" -le 5 ]; then RC[$key]="not run (stage budget of $b s spent)"; continue; fi
        dev=${run%_tf32}; tf=0; [ "$run" = cuda_tf32 ] && tf=1
        json=$STATE/acc_${run}_$seed.jsonl; out=$STATE/acc_${run}_$seed.out; rm -f "$json"
        echo "== $(stamp) CTORCH_TF32=$tf $BUILD/ctorch ${args[*]} --seed $seed --device $dev --log-json $json (budget ${left}s)" >> "$log"
        t0=$SECONDS
        timeout "$left" env "${CT_ENV[@]}" CTORCH_TF32=$tf "$BUILD/ctorch" "${args[@]}" --seed "$seed" --device "$dev" \
            --log-json "$json" > "$out" 2>&1
        rc=$?
        SECS[$key]=$((SECONDS - t0)); RC[$key]=$rc
        cat "$out" >> "$log"
        echo "== rc $rc after ${SECS[$key]} s$([ $rc = 124 ] && echo ' (stopped at the budget)')" >> "$log"
        ACC[$key]=$(final_acc "$out")
        CURVE[$key]=$(epoch_accs "$json"); IPS[$key]=$(last_ips "$json")
        [ -f "$json" ] && { echo "-- $json:"; cat "$json"; } >> "$log"
    done
    # the verdict: mean final accuracy over the seeds where both devices finished
    local gsum=0 csum=0 n=0 verdict="INCOMPLETE" gmean="" cmean=""
    for seed in $SEEDS; do
        if [ -n "${ACC[cuda:$seed]:-}" ] && [ -n "${ACC[cpu:$seed]:-}" ]; then
            gsum=$(awk -v a="$gsum" -v b="${ACC[cuda:$seed]}" 'BEGIN {print a + b}')
            csum=$(awk -v a="$csum" -v b="${ACC[cpu:$seed]}" 'BEGIN {print a + b}')
            n=$((n + 1))
        fi
    done
    if [ $n -gt 0 ]; then
        gmean=$(awk -v s="$gsum" -v n=$n 'BEGIN {printf "%.2f", s / n}')
        cmean=$(awk -v s="$csum" -v n=$n 'BEGIN {printf "%.2f", s / n}')
        if awk -v g="$gmean" -v c="$cmean" -v t="$ACC_TOL" 'BEGIN {exit !(g >= c - t)}'; then verdict="PASS"; else verdict="FAIL"; fi
    fi
    {
        echo "## accuracy"
        echo
        echo "\`ctorch ${args[*]/#$DATA/.gpu/data} --seed S --device D\` on the CIFAR-10 subset ($(sed -n 's/^training simple_cnn on cifar10: \([0-9]* train \/ [0-9]* test\) images.*/\1/p' "$log" | head -1) images): **$verdict** — mean final test accuracy over $n seed(s): GPU ${gmean:-–}%, CPU ${cmean:-–}% (bar: GPU >= CPU - $ACC_TOL points)."
        echo
        echo "| run | seed | final test acc % | per-epoch test acc % | last epoch img/s | wall s | rc |"
        echo "|---|---:|---:|---|---:|---:|---|"
        for key in "${runs[@]}"; do
            run=${key%%:*}; seed=${key#*:}
            local name; case $run in cuda) name="--device cuda, TF32 off";; cpu) name="--device cpu";; cuda_tf32) name="--device cuda, TF32 on";; esac
            echo "| $name | $seed | ${ACC[$key]:-–} | ${CURVE[$key]:-–} | ${IPS[$key]:-–} | ${SECS[$key]:-–} | ${RC[$key]:-–} |"
        done
    } > "$STATE/accuracy.md"
    write_summary
    [ "$verdict" = PASS ]
}

# ------------------------------------------------------------------ bench
stage_bench() {
    ensure_built min || true
    stage_begin bench
    local b args rc=0
    b=$(budget "$BENCH_S")
    args=(--ctorch "$ROOT/$BUILD/ctorch" --python "$PY" --pairs "$([ "$QUICK" = 1 ] && echo 1 || echo "$PAIRS")" --budget $((b > 90 ? b - 60 : b / 2))
          --timeout $((b > 60 ? b / 3 : 20)) --report "$STATE/bench_table.md" --json-out "$OUT/bench.json")
    [ -n "${GPU_CHECK_BENCH_CASES:-}" ] && args+=(--cases "$GPU_CHECK_BENCH_CASES")
    [ -n "${GPU_CHECK_BENCH_STEPS:-}" ] && args+=(--steps "$GPU_CHECK_BENCH_STEPS")
    if [ "$QUICK" = 1 ]; then
        [ -z "${GPU_CHECK_BENCH_CASES:-}" ] && args+=(--cases "$([ "$EMU" = 1 ] && echo simple_cnn:4,mlp:8 || echo simple_cnn:64,simple_cnn:512,resnet18_cifar:256)")
        [ -z "${GPU_CHECK_BENCH_STEPS:-}" ] && args+=(--steps "$([ "$EMU" = 1 ] && echo simple_cnn=2,mlp=4 || echo simple_cnn=20,resnet18_cifar=5)")
    fi
    [ "$EMU" = 1 ] && args+=(--torch-device cpu)
    local e; for e in "${CT_ENV[@]}"; do args+=(--ctorch-env "$e"); done
    rm -f "$STATE/bench_table.md"
    {
        echo "== $(stamp) GPU state before"; nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw,utilization.gpu --format=csv 2>&1
        echo "== $PY bench/gpu_bench.py ${args[*]} (stage budget ${b}s)"
    } > "$OUT/bench.log"
    local t0=$SECONDS
    if [ "$b" -le 20 ]; then
        echo "no time left" >> "$OUT/bench.log"; rc=124
    else
        PYTHONUNBUFFERED=1 timeout "$b" "$PY" bench/gpu_bench.py "${args[@]}" >> "$OUT/bench.log" 2>&1 || rc=$?
    fi
    {
        echo "== $(stamp) rc $rc after $((SECONDS - t0)) s; GPU state after"
        nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw,utilization.gpu --format=csv 2>&1
    } >> "$OUT/bench.log"
    local verdict
    if [ $rc != 0 ]; then verdict="**FAILED or cut short** (rc $rc, bench.log)"
    elif grep -q 'bar ctorch >= PyTorch: met in every case' "$OUT/bench.log"; then verdict="bar **met** in every case"
    else verdict="bar **NOT met** in every case"; fi
    {
        echo "## bench"
        echo
        echo "ctorch bench --device cuda vs PyTorch eager, alternating: $verdict ($((SECONDS - t0)) s)."
        echo
        if [ -f "$STATE/bench_table.md" ]; then cat "$STATE/bench_table.md"
        else echo '```'; tail -20 "$OUT/bench.log"; echo '```'; fi
    } > "$STATE/bench.md"
    write_summary
    [ $rc = 0 ]
}

# ------------------------------------------------------------------ main
note "stages: ${STAGES[*]}; build $BUILD; out $OUT; source $SRC_HASH$( [ "$QUICK" = 1 ] && echo '; QUICK')$( [ "$EMU" = 1 ] && echo '; EMULATED')"
: > "$INFO"
setup_deps || note "deps: $DEPS_NOTE"
note "deps: $DEPS_NOTE"
setup_cuda_env
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
GPU_DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
[ -z "$GPU_NAME" ] && GPU_NAME="no nvidia-smi answer$( [ "$EMU" = 1 ] && echo ' (emulated run)')"
collect_info
refresh_cuda_line
write_summary
if [ "$EMU" != 1 ] && ! nvidia-smi >/dev/null 2>&1; then
    note "WARNING: nvidia-smi does not answer: no GPU here? (GPU_CHECK_EMU=1 tests this script without one)"
fi

status=0
for st in "${STAGES[@]}"; do
    if [ $(( DEADLINE - (SECONDS - T_START) )) -le 15 ]; then
        note "$st: not started, the call's deadline of $DEADLINE s is reached; run \`scripts/gpu-check.sh $st\` in another call"
        echo "$st: not started (deadline)" >> "$INFO"
        status=1; continue
    fi
    note "$st (budget $( case $st in build) budget "$BUILD_S";; tests) budget "$TESTS_S";; accuracy) budget "$ACC_S";; bench) budget "$BENCH_S";; esac) s)"
    case $st in
        build) stage_build full || status=1 ;;
        tests) stage_tests || status=1 ;;
        accuracy) stage_accuracy || status=1 ;;
        bench) stage_bench || status=1 ;;
    esac
    [ "$st" = build ] && info_after_build
done
[ -z "${RAN_NOW[build]:-}" ] && [ -x "$BUILD/ctorch" ] && info_after_build
write_summary
note "done in $(elapsed) s; $OUT: $(ls "$OUT" | tr '\n' ' ')"
echo
cat "$SUMMARY"
exit $status
