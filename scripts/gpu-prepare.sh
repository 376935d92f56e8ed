#!/bin/bash
# Prepares what a GPU check needs on the lent device machine, which has no network, no
# ../shared/data and (probably) no Debian OpenBLAS/zlib development packages. Run HERE,
# from anywhere in the checkout, before the device calls (docs/gpu-check.md):
#
#   scripts/gpu-prepare.sh
#
# It fills the git-ignored folder .gpu/ (named in `carry` of every device call):
#   .gpu/debs/*.deb     Debian packages to build and run ctorch on a bare machine
#                       (OpenBLAS pthread build + headers, zlib headers, libgfortran5 and
#                       libquadmath0 that OpenBLAS needs, GNU make in case the image has
#                       none); scripts/gpu-check.sh unpacks them into a private prefix
#                       (/opt/ctorch-deps), never into /.
#   .gpu/data/cifar-10-batches-bin/
#                       a CIFAR-10 subset in the official binary layout, prefixes of the
#                       official files: data_batch_1.bin = the first GPU_PREPARE_TRAIN
#                       records of the official data_batch_1 (default 10000, all of it),
#                       data_batch_2..5.bin = the first GPU_PREPARE_EXTRA records of each
#                       (default 1: the loader needs all five files), test_batch.bin = the
#                       first GPU_PREPARE_TEST records of the official test batch (default
#                       2000); plus batches.meta.txt.
#   .gpu/MANIFEST       what is there: package versions, record counts, SHA-256 sums.
#
# Then it prints the size of the working tree that will travel (tracked + untracked files
# that git does not ignore + .gpu) against the device's 64 MiB limit, and fails above
# GPU_PREPARE_MAX_MIB (default 60).
#
# Environment: CTORCH_DATA_SRC (default ../shared/data, else $CTORCH_DATA) holds the full
# CIFAR-10; GPU_PREPARE_TRAIN / _EXTRA / _TEST as above; GPU_PREPARE_FORCE=1 downloads the
# packages again.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

REC=3073
TRAIN=${GPU_PREPARE_TRAIN:-10000}
EXTRA=${GPU_PREPARE_EXTRA:-1}
TEST=${GPU_PREPARE_TEST:-2000}
MAX_MIB=${GPU_PREPARE_MAX_MIB:-60}
# What the Makefile links (-lopenblas -lz -ljansson, cblas.h from openblas-pthread, zlib.h,
# jansson.h) and what libopenblas.so.0 needs at run time (ldd: libgfortran.so.5 ->
# libquadmath.so.0). libc, libm, libgcc_s, libstdc++ come with any image that has gcc and
# nvcc. zlib1g is there for the headers' libz.so link target; make in case the image lacks
# it. libarchive is not carried (its dependencies would not fit beside the data): the
# build leaves the .tar.gz reader out with a notice, and the data is carried extracted.
PKGS="libopenblas0-pthread libopenblas-pthread-dev libopenblas-dev libopenblas0 \
libgfortran5 libquadmath0 zlib1g-dev zlib1g libjansson4 libjansson-dev make"

die() { echo "gpu-prepare: error: $*" >&2; exit 1; }

# ------------------------------------------------------------------ keep .gpu/ out of git
if ! grep -qx '/.gpu/' .gitignore 2>/dev/null; then
    echo '/.gpu/' >> .gitignore
    echo "gpu-prepare: added /.gpu/ to .gitignore"
fi
git check-ignore -q .gpu/x || die ".gpu/ is not ignored by git; add /.gpu/ to .gitignore"
mkdir -p .gpu/debs .gpu/data/cifar-10-batches-bin

# ------------------------------------------------------------------ Debian packages
have_all=1
for p in $PKGS; do
    ls .gpu/debs/"${p}"_*_amd64.deb >/dev/null 2>&1 || have_all=0
done
if [ "${GPU_PREPARE_FORCE:-0}" = 1 ] || [ $have_all = 0 ]; then
    command -v apt-get >/dev/null || die "apt-get not found: fetch the .deb files of: $PKGS (amd64) into .gpu/debs by hand"
    rm -f .gpu/debs/*.deb
    o=""
    if [ "$(dpkg --print-architecture 2>/dev/null)" != amd64 ]; then
        # the device machine is x86-64 whatever this one is (device README)
        mkdir -p /tmp/amd64/partial
        o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64"
        apt-get $o update -qq
    fi
    echo "gpu-prepare: apt-get download $PKGS"
    # apt's sandbox user may not write here; the download then runs as root (a warning)
    (cd .gpu/debs && apt-get $o download $PKGS 2>&1 | grep -v '^W: Download is performed unsandboxed' | grep -v '^Get:' || true)
    for p in $PKGS; do
        ls .gpu/debs/"${p}"_*_amd64.deb >/dev/null 2>&1 || \
            die "apt-get download did not fetch $p (run apt-get update, or fetch it by hand)"
    done
else
    echo "gpu-prepare: .gpu/debs already holds every package (GPU_PREPARE_FORCE=1 to fetch again)"
fi

# ------------------------------------------------------------------ CIFAR-10 subset
SRC=${CTORCH_DATA_SRC:-}
if [ -z "$SRC" ]; then
    if [ -d ../shared/data/cifar-10-batches-bin ]; then SRC=../shared/data
    elif [ -n "${CTORCH_DATA:-}" ]; then SRC=$CTORCH_DATA
    else die "no CIFAR-10 found: set CTORCH_DATA_SRC to the folder holding cifar-10-batches-bin/"
    fi
fi
S=$SRC/cifar-10-batches-bin
D=.gpu/data/cifar-10-batches-bin
for f in data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin test_batch.bin; do
    [ -f "$S/$f" ] || die "$S/$f not found (the official CIFAR-10 binary files are needed)"
    [ "$(stat -c %s "$S/$f")" = 30730000 ] || die "$S/$f is not 30730000 bytes: not the official file"
done
[ "$TRAIN" -ge 1 ] && [ "$TRAIN" -le 10000 ] || die "GPU_PREPARE_TRAIN must be 1..10000"
[ "$EXTRA" -ge 1 ] && [ "$EXTRA" -le 10000 ] || die "GPU_PREPARE_EXTRA must be 1..10000"
[ "$TEST" -ge 1 ] && [ "$TEST" -le 10000 ] || die "GPU_PREPARE_TEST must be 1..10000"
put() { # put SRC_FILE RECORDS DEST_FILE: the first RECORDS records, rewritten only if changed
    local tmp="$3.tmp"
    head -c $(($2 * REC)) "$1" > "$tmp"
    if cmp -s "$tmp" "$3"; then rm -f "$tmp"; else mv "$tmp" "$3"; fi
}
put "$S/data_batch_1.bin" "$TRAIN" "$D/data_batch_1.bin"
for i in 2 3 4 5; do put "$S/data_batch_$i.bin" "$EXTRA" "$D/data_batch_$i.bin"; done
put "$S/test_batch.bin" "$TEST" "$D/test_batch.bin"
[ -f "$S/batches.meta.txt" ] && cp "$S/batches.meta.txt" "$D/"
rm -f .gpu/data/cifar-10-binary.tar.gz "$D/cifar-10-binary.tar.gz"  # the loader would prefer nothing else

# ------------------------------------------------------------------ manifest
{
    echo "# .gpu/ made by scripts/gpu-prepare.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "cifar10_train_records $((TRAIN + 4 * EXTRA))  (data_batch_1: $TRAIN, data_batch_2..5: $EXTRA each)"
    echo "cifar10_test_records $TEST"
    echo "# packages"
    for f in .gpu/debs/*.deb; do
        echo "$(dpkg-deb -f "$f" Package) $(dpkg-deb -f "$f" Version) $(stat -c %s "$f")"
    done
    echo "# sha256"
    (cd .gpu && sha256sum data/cifar-10-batches-bin/* debs/*.deb)
} > .gpu/MANIFEST

# ------------------------------------------------------------------ what travels
bytes_of() { # sums the sizes of the NUL-separated paths on stdin (files only)
    xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}'
}
tracked=$(git ls-files -z | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done | bytes_of)
untracked=$(git ls-files -z -o --exclude-standard | bytes_of)
gpu_debs=$(find .gpu/debs -type f -print0 | bytes_of)
gpu_data=$(find .gpu/data -type f -print0 | bytes_of)
gpu_all=$(find .gpu -type f -print0 | bytes_of)
total=$((tracked + untracked + gpu_all))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "gpu-prepare: what travels to the device machine (carry: [\".gpu\"]):"
printf '  %-44s %12s  %s\n' "tracked files" "$tracked" "$(mib "$tracked")"
printf '  %-44s %12s  %s\n' "untracked files git does not ignore" "$untracked" "$(mib "$untracked")"
printf '  %-44s %12s  %s\n' ".gpu/debs ($(ls .gpu/debs | wc -l) packages)" "$gpu_debs" "$(mib "$gpu_debs")"
printf '  %-44s %12s  %s\n' ".gpu/data (CIFAR-10 $((TRAIN + 4 * EXTRA)) train / $TEST test)" "$gpu_data" "$(mib "$gpu_data")"
printf '  %-44s %12s  %s  (limit 64 MiB)\n' "total" "$total" "$(mib "$total")"
if [ "$total" -gt $((MAX_MIB * 1048576)) ]; then
    die "the tree that travels is over ${MAX_MIB} MiB: use smaller GPU_PREPARE_TRAIN/GPU_PREPARE_TEST, or ignore large untracked files"
fi
echo "gpu-prepare: ready. Device calls: see docs/gpu-check.md"
