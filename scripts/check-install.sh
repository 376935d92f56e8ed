#!/bin/sh
# Checks `make install` as a user of the C library meets it (tests/test_install.c runs
# this from the repository root, as `make test` does):
#
#   scripts/check-install.sh [BUILD]              install the normal build of BUILD (default
#       build) into a temporary prefix, check every file is there, compile a program that
#       includes only ctorch.h with pkg-config, shared and static, run both without
#       LD_LIBRARY_PATH, check their dynamic sections, check that the installed programs
#       find the installed CUDA plugin, and that DESTDIR and `make uninstall` work
#   scripts/check-install.sh [BUILD] bad-prefix   `make install` into an unwritable or a
#       relative PREFIX must fail with a clear message
#
# Prints "ok   ..." per check. Exit status 0: passed; 77: skipped (the last line says why:
# "SKIP: ..."); anything else: failed (the line before says what).
set -u
BUILD=${1:-build}
MODE=${2:-install}

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok   $*"; }

[ -f Makefile ] && [ -f include/ctorch.h ] ||
    skip "not run from the repository root (make install needs the source tree)"
command -v pkg-config >/dev/null 2>&1 ||
    skip "pkg-config is not installed (scripts/install-deps.sh installs it: make deps)"
command -v readelf >/dev/null 2>&1 || skip "readelf (binutils) is not installed"

# The make of this check is not part of an outer make's job server.
mk() { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory BUILD="$BUILD" "$@"; }

# make install installs the normal build; this check must not be what builds it.
outputs="$BUILD/libctorch.so $BUILD/libctorch.a $BUILD/ctorch"
# With nvcc on PATH (the Makefile's test), make install installs the plugin too.
if [ -f "$BUILD/libctorch_cuda.so" ] || command -v nvcc >/dev/null 2>&1; then
    outputs="$outputs $BUILD/libctorch_cuda.so"
fi
# With mpicc on PATH, make install installs the MPI plugin too.
if [ -f "$BUILD/libctorch_mpi.so" ] || command -v mpicc >/dev/null 2>&1; then
    outputs="$outputs $BUILD/libctorch_mpi.so"
fi
for f in $outputs; do
    [ -f "$f" ] || skip "$f is not built (make install installs the normal build: run make)"
done
# shellcheck disable=SC2086
mk -q $outputs "$BUILD/libctorch.so.0" 2>/dev/null ||
    skip "the build in $BUILD is out of date (run make: make install would relink it)"

root=$(pwd)
build_abs=$(cd "$BUILD" && pwd)
tmp=$(mktemp -d)
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT INT TERM

if [ "$MODE" = bad-prefix ]; then
    : > "$tmp/a-file"
    out=$(mk install PREFIX="$tmp/a-file/prefix" 2>&1) &&
        fail "make install PREFIX=$tmp/a-file/prefix (not a directory) succeeded"
    echo "$out" | grep -q "error: make install: cannot create or write $tmp/a-file/prefix" ||
        fail "make install into an unwritable PREFIX failed without the clear message: $out"
    ok "make install PREFIX=<unwritable>: $(echo "$out" | grep '^error:' | cut -c1-90)..."
    out=$(mk install PREFIX=relative/prefix 2>&1) &&
        fail "make install PREFIX=relative/prefix succeeded"
    echo "$out" | grep -q "error: make install: PREFIX=relative/prefix is not an absolute path" ||
        fail "make install PREFIX=relative/prefix failed without the clear message: $out"
    [ -e relative ] && fail "make install PREFIX=relative/prefix created ./relative"
    ok "make install PREFIX=relative/prefix: refused (not an absolute path)"
    exit 0
fi

version=$(sed -n 's/^#define CT_VERSION "\([^"]*\)".*/\1/p' include/ctorch.h)
soname=libctorch.so.${version%%.*}
prefix=$tmp/prefix
mk install PREFIX="$prefix" > "$tmp/install.log" 2>&1 ||
    { sed 's/^/    | /' "$tmp/install.log"; fail "make install PREFIX=$prefix failed"; }
grep -q -- ' -c .*\.c' "$tmp/install.log" && fail "make install compiled sources (it must install the build)"
ok "make install PREFIX=<tmp> (from the built $BUILD)"

# Every file, by name: headers, the library and its links, the plugin, the CLI, ctorch.pc.
expected="bin/ctorch lib/libctorch.so.$version lib/$soname lib/libctorch.so lib/libctorch.a
          lib/pkgconfig/ctorch.pc"
for h in include/ctorch*.h; do expected="$expected $h"; done
[ -f "$BUILD/libctorch_cuda.so" ] && expected="$expected lib/libctorch_cuda.so"
[ -f "$BUILD/libctorch_mpi.so" ] && expected="$expected lib/libctorch_mpi.so"
missing=""
for f in $expected; do [ -e "$prefix/$f" ] || missing="$missing $f"; done
[ -z "$missing" ] || fail "missing from the install (PREFIX=$prefix):$missing"
[ "$(readlink "$prefix/lib/$soname")" = "libctorch.so.$version" ] ||
    fail "lib/$soname is not a link to libctorch.so.$version"
[ "$(readlink "$prefix/lib/libctorch.so")" = "$soname" ] || fail "lib/libctorch.so is not a link to $soname"
readelf -d "$prefix/lib/libctorch.so.$version" | grep -q "SONAME.*\[$soname\]" ||
    fail "lib/libctorch.so.$version has no soname $soname"
ok "installed: $(echo $expected | wc -w) files; libctorch.so -> $soname -> libctorch.so.$version (SONAME $soname)"

export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
[ "$(pkg-config --modversion ctorch 2>&1)" = "$version" ] ||
    fail "pkg-config --modversion ctorch: $(pkg-config --modversion ctorch 2>&1)"
case "$(pkg-config --static --cflags --libs ctorch)" in
    *"$(pwd)"*) fail "ctorch.pc points into the source tree: $(pkg-config --static --cflags --libs ctorch)" ;;
esac
ok "pkg-config ctorch $version: $(pkg-config --cflags --libs ctorch)"

# A training step through ctorch.h alone (nn and optim included), checked by the program.
mkdir "$tmp/work" && cd "$tmp/work" || fail "cannot enter $tmp/work"
cat > prog.c <<'EOF'
#include <ctorch.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    ct_manual_seed(0);
    ct_module *mods[3] = {ct_nn_linear(8, 16, 1), ct_nn_relu(), ct_nn_linear(16, 3, 1)};
    ct_module *net = ct_nn_sequential(mods, 3);
    int n = 0;
    ct_tensor **params = ct_module_parameters(net, &n);
    ct_optimizer *opt = ct_optim_sgd_opt(params, n, &(ct_sgd_opts){.lr = 0.1});
    int64_t xs[2] = {32, 8}, ns = 32;
    ct_tensor *x = ct_randn(xs, 2, CT_FLOAT32), *y = ct_zeros(&ns, 1, CT_INT64);
    double first = 0, last = 0;
    for (int step = 0; step < 5; step++) {
        ct_scope *s = ct_scope_push();
        ct_tensor *loss = ct_cross_entropy(ct_module_forward(net, x), y, CT_REDUCTION_MEAN,
                                           0.0, -100);
        if (!loss || ct_backward(loss, NULL, 0) != 0 || ct_optim_step(opt) != 0) {
            fprintf(stderr, "error: %s\n", ct_last_error());
            return 1;
        }
        ct_optim_zero_grad(opt);
        last = ct_item(loss);
        if (step == 0) first = last;
        ct_scope_pop(s);
    }
    int avail = 0;
    const char *cuda = ct_cuda_status(&avail);
    printf("trained: loss %.4f -> %.4f\ncuda: %s\n", first, last, avail ? "available" : cuda);
    ct_free(x);
    ct_free(y);
    ct_optim_free(opt);
    free(params);
    ct_module_free(net);
    return last < first ? 0 : 1;
}
EOF
CFLAGS_W="-std=c11 -Wall -Wextra -Werror"
# shellcheck disable=SC2046,SC2086
cc $CFLAGS_W prog.c $(pkg-config --cflags --libs ctorch) -o prog_shared > cc.log 2>&1 ||
    { sed 's/^/    | /' cc.log; fail "cc prog.c \$(pkg-config --cflags --libs ctorch) failed"; }
# shellcheck disable=SC2046,SC2086
cc $CFLAGS_W prog.c -Wl,-Bstatic $(pkg-config --static --cflags --libs ctorch) -o prog_static \
    > cc.log 2>&1 ||
    { sed 's/^/    | /' cc.log; fail "cc prog.c -Wl,-Bstatic \$(pkg-config --static --cflags --libs ctorch) failed"; }
ok "compiled a program including only ctorch.h: shared and static (pkg-config --static)"

dyn=$(readelf -d prog_shared)
echo "$dyn" | grep -q "NEEDED.*\[$soname\]" || fail "prog_shared does not need $soname: $dyn"
echo "$dyn" | grep -Eq "R(UN)?PATH.*$prefix/lib" || fail "prog_shared has no RUNPATH $prefix/lib: $dyn"
readelf -d prog_static | grep -q "NEEDED.*libctorch" &&
    fail "prog_static needs a libctorch shared library: $(readelf -d prog_static | grep NEEDED)"
ok "readelf -d: prog_shared NEEDED $soname (RUNPATH libdir), prog_static no libctorch"

for p in prog_shared prog_static; do
    env -u LD_LIBRARY_PATH -u CTORCH_CUDA_PLUGIN "./$p" > "$p.out" 2>&1 ||
        { sed 's/^/    | /' "$p.out"; fail "$p (run without LD_LIBRARY_PATH) failed"; }
    grep -q "^trained: loss" "$p.out" || fail "$p printed: $(cat "$p.out")"
    ok "$p runs without LD_LIBRARY_PATH: $(head -n 1 "$p.out")"
done

# The headers in any order, and the old multi-include programs, still compile.
for h in "$prefix"/include/ctorch*.h; do
    h=$(basename "$h")
    printf '#include <%s>\n#include <ctorch.h>\n#include <ctorch_nn.h>\nint main(void) { return 0; }\n' \
        "$h" > inc.c
    # shellcheck disable=SC2046,SC2086
    cc $CFLAGS_W -fsyntax-only inc.c $(pkg-config --cflags ctorch) > cc.log 2>&1 ||
        { sed 's/^/    | /' cc.log; fail "#include <$h> then <ctorch.h> does not compile"; }
done
ok "each installed header compiles included first, before ctorch.h"

# The CUDA plugin is found where it was installed, next to libctorch.so: by the shared
# program (beside libctorch.so, dladdr), the static one (its RUNPATH) and bin/ctorch
# (RUNPATH $ORIGIN/../lib). Checked with the emulated plugin when it is built
# (tests/cuda_emu), whose driver/cuBLAS/cuDNN stand-ins come from a directory without it.
emu=$build_abs/cuda_emu
if [ -f "$emu/libctorch_cuda.so" ] && [ -f "$emu/libcuda.so.1" ]; then
    mkdir stubs && cp "$emu"/lib*.so.* stubs/ && cp "$emu/libctorch_cuda.so" "$prefix/lib/" ||
        fail "cannot copy the emulated plugin"
    for p in ./prog_shared ./prog_static "$prefix/bin/ctorch --version"; do
        # shellcheck disable=SC2086
        out=$(env -u CTORCH_CUDA_PLUGIN LD_LIBRARY_PATH="$PWD/stubs" CTORCH_CUBLAS_LIBRARY= \
              CTORCH_CUDNN_LIBRARY= $p 2>&1)
        echo "$out" | grep -q "^cuda: available" ||
            fail "$p does not find the plugin installed in $prefix/lib: $out"
    done
    ok "the installed CUDA plugin (emulated) is found by prog_shared, prog_static and bin/ctorch"
elif [ -f "$build_abs/libctorch_cuda.so" ]; then
    out=$(env -u CTORCH_CUDA_PLUGIN -u LD_LIBRARY_PATH "$prefix/bin/ctorch" --version 2>&1)
    echo "$out" | grep -q "libctorch_cuda.so was not found" &&
        fail "bin/ctorch does not find the plugin installed in $prefix/lib: $out"
    ok "bin/ctorch finds the installed CUDA plugin"
else
    ok "no CUDA plugin built (no nvcc): plugin lookup not checked"
fi
if [ -f "$build_abs/libctorch_mpi.so" ]; then
    out=$(env -u CTORCH_MPI_PLUGIN -u LD_LIBRARY_PATH "$prefix/bin/ctorch" doctor 2>&1)
    echo "$out" | grep -Eq '^mpi +ok ' ||
        fail "bin/ctorch doctor does not find the MPI plugin installed in $prefix/lib: $(echo "$out" | grep -E '^mpi ')"
    ok "bin/ctorch finds the installed MPI plugin (doctor: mpi ok)"
fi
cd "$root" || fail "cannot return to the source tree"

# DESTDIR stages the same tree; ctorch.pc names the final PREFIX.
mk install PREFIX=/opt/ctorch-check DESTDIR="$tmp/stage" > "$tmp/install.log" 2>&1 ||
    { sed 's/^/    | /' "$tmp/install.log"; fail "make install DESTDIR=... failed"; }
[ -f "$tmp/stage/opt/ctorch-check/lib/libctorch.so.$version" ] ||
    fail "make install DESTDIR=$tmp/stage PREFIX=/opt/ctorch-check: no lib/libctorch.so.$version"
grep -q '^prefix=/opt/ctorch-check$' "$tmp/stage/opt/ctorch-check/lib/pkgconfig/ctorch.pc" ||
    fail "ctorch.pc installed with DESTDIR does not say prefix=/opt/ctorch-check"
ok "make install DESTDIR=<stage> PREFIX=/opt/ctorch-check"

mk uninstall PREFIX="$prefix" > "$tmp/install.log" 2>&1 ||
    { sed 's/^/    | /' "$tmp/install.log"; fail "make uninstall failed"; }
left=$(find "$prefix" ! -type d)
[ -z "$left" ] || fail "make uninstall left: $left"
ok "make uninstall removes every installed file"
