#!/bin/sh
# Shows that leaving out one piece of an op fails the build or a test, on a scratch copy of
# the tree (nothing here is changed):
#   1. a binary-op row without its backward formula: src/ops/pointwise.c does not compile
#      (the switch over ct_binop has no default: -Wswitch, -Werror);
#   2. a kernel-table row without its CPU kernel: libctorch does not link (cpu_<name> is
#      referenced by the generated CPU table) -- and, with nvcc, neither does the CUDA
#      plugin (cu_k_<name>, linked with -z defs);
#   3. a unary-op row without PyTorch fixtures: the fixture test fails naming them.
# Usage: scripts/check-op-drift.sh [BUILD]   (BUILD: the built tree's objects, default build)
# Exit status 0 when every omission was caught, 1 otherwise.
cd "$(dirname "$0")/.." || exit 2
BUILD=${1:-build}
CC=${CC:-cc}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ctorch-drift.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT
cp -r Makefile include src tests scripts "$tmp"/
FLAGS="-std=c11 -D_GNU_SOURCE -O0 -Wall -Wextra -Werror -fPIC -pthread -I$tmp/include -I$tmp/src -I/usr/include/x86_64-linux-gnu/openblas-pthread"
LIBS="-lopenblas -lz -ljansson -lcrypto -larchive -lpthread -ldl -lm"
# the image decoders (src/data/image.c) link libjpeg and libpng when the build had their headers
nm "$BUILD/src/data/image.o" 2>/dev/null | grep -q " U jpeg_" && LIBS="$LIBS -ljpeg -lpng"
status=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; status=1; }

# Inserts row $3 as the first row of the table macro $2 (#define $2(...) \) in file $1.
add_row() {
    awk -v pat="#define $2(" -v row="$3" '{
        print
        if (!done && index($0, pat) == 1) { print row " \\"; done = 1 }
    }' "$1" > "$1.new" && mv "$1.new" "$1"
}
reset() { cp src/core/op_tables.h src/core/backend.h "$tmp/src/core/"; }

# 1 -------------------------------------------------------------------------------------
reset
add_row "$tmp/src/core/op_tables.h" CT_BINARY_OPS \
    '    OP(MAXIMUM, maximum, "MaximumBackward", SAME, r = x > y ? x : y)'
if $CC $FLAGS -c "$tmp/src/ops/pointwise.c" -o "$tmp/p.o" > "$tmp/log1" 2>&1; then
    bad "a binary op without a backward formula compiled"
elif grep -q "CT_BIN_MAXIMUM.*not handled in switch" "$tmp/log1"; then
    ok "a binary op without a backward formula fails the build: $(grep -m1 'not handled' "$tmp/log1" | sed 's/.*error: //')"
else
    bad "a binary op without a backward formula failed for another reason:"; cat "$tmp/log1"
fi

# 2 -------------------------------------------------------------------------------------
reset
# the library's objects (those of today's sources: a stale object of a removed file is skipped;
# src/cli and src/monitor belong to the CLI, not to libctorch)
objs=$(find src -name '*.c' ! -path 'src/backends/cuda/*' ! -path 'src/cli/*' ! -path 'src/monitor/*' ! -path 'src/dist/mpi/*' ! -name cpu_backend.c |
    sort | sed "s|^|$BUILD/|; s|\.c\$|.o|")
# the ONNX exporter's generated protobuf-c code, when the build has it (Makefile: ONNX_GEN)
if [ -f "$BUILD/gen/onnx/onnx.pb-c.o" ]; then
    objs="$objs $BUILD/gen/onnx/onnx.pb-c.o"
    LIBS="$LIBS -lprotobuf-c"
fi
$CC $FLAGS -c "$tmp/src/backends/cpu/cpu_backend.c" -o "$tmp/cpu_backend.o" > "$tmp/log2" 2>&1 &&
    $CC -shared -Wl,--no-undefined -o "$tmp/control.so" $objs "$tmp/cpu_backend.o" $LIBS >> "$tmp/log2" 2>&1 ||
    { bad "control: the unchanged CPU table does not link"; cat "$tmp/log2"; }
add_row "$tmp/src/core/backend.h" CT_KERNEL_LIST \
    '    X(drift_probe, (ct_tensor *y))'
if $CC $FLAGS -c "$tmp/src/backends/cpu/cpu_backend.c" -o "$tmp/cpu_backend.o" > "$tmp/log2" 2>&1 &&
    $CC -shared -Wl,--no-undefined -o "$tmp/drift.so" $objs "$tmp/cpu_backend.o" $LIBS >> "$tmp/log2" 2>&1; then
    bad "a kernel without a CPU implementation linked"
elif grep -q "undefined reference to .cpu_drift_probe" "$tmp/log2"; then
    ok "a kernel without a CPU implementation fails the link: undefined reference to cpu_drift_probe"
else
    bad "a kernel without a CPU implementation failed for another reason:"; cat "$tmp/log2"
fi
if [ -f "$BUILD/libctorch_cuda.so" ] && command -v nvcc > /dev/null 2>&1; then
    cuobjs=$(cd src/backends/cuda && ls *.c *.cu | grep -v '^cuda_plugin.c$' |
        sed "s|^|$BUILD/cuda/|; s|\.cu\$|.cu.o|; s|\.c\$|.o|")
    CUDA_INC=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")/include
    if $CC $FLAGS -fvisibility=hidden -I"$CUDA_INC" -c "$tmp/src/backends/cuda/cuda_plugin.c" \
            -o "$tmp/cuda_plugin.o" > "$tmp/log2c" 2>&1 &&
        nvcc -shared -cudart static -o "$tmp/drift_cuda.so" $cuobjs "$tmp/cuda_plugin.o" \
            -Xlinker -z,defs -ldl -lpthread -lrt -lm >> "$tmp/log2c" 2>&1; then
        bad "a kernel without a CUDA implementation linked"
    elif grep -q "undefined reference to .cu_k_drift_probe" "$tmp/log2c"; then
        ok "a kernel without a CUDA implementation fails the plugin's link: undefined reference to cu_k_drift_probe"
    else
        bad "a kernel without a CUDA implementation failed for another reason:"; cat "$tmp/log2c"
    fi
fi

# 3 -------------------------------------------------------------------------------------
reset
add_row "$tmp/src/core/op_tables.h" CT_UNARY_OPS \
    '    OP(SOFTSIGN, softsign, "SoftsignBackward", FLOAT, IN, HAND, r = x / ((T)1 + CT_ABS(T, x)), T a = (T)1 + CT_ABS(T, x); d = (T)1 / (a * a), 0, 0, ANY)'
if ! make -C "$tmp" -j2 BUILD=build OPT=-O0 build/test_ctorch > "$tmp/log3" 2>&1; then
    bad "a unary op row alone did not build (it should: everything else is generated)"; tail -20 "$tmp/log3"
elif (cd "$tmp" && build/test_ctorch pointwise_unary_vs_torch > log3t 2>&1); then
    bad "a unary op without fixtures passed the fixture test"
elif grep -q "has no tensor softsign" "$tmp/log3t"; then
    ok "a unary op without fixtures builds (all generated) and fails the fixture test: $(grep -m1 'has no tensor softsign' "$tmp/log3t" | sed 's/^ *//')"
else
    bad "a unary op without fixtures failed for another reason:"; cat "$tmp/log3t"
fi
exit $status
