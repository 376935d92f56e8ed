#!/bin/sh
# Compiles and runs the C example of README.md against the built library, so the
# README's API tour stays true.
set -e
BUILD=${1:-build}
ARCHIVE_LIBS=${2--larchive} # the Makefile passes its own: empty when built without libarchive
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk '/^```c$/{f=1;next} /^```$/{if(f){exit}} f' README.md > "$tmp/readme.c"
cc -std=c11 -Wall -Wextra -Werror -Iinclude "$tmp/readme.c" "$BUILD/libctorch.a" \
   -lopenblas -lz -ljansson $ARCHIVE_LIBS -lpthread -ldl -lm -o "$tmp/readme"
"$tmp/readme" > "$tmp/out"
grep -q "step 9 loss" "$tmp/out" || { echo "README example did not run to the end" >&2; exit 1; }
echo "README example: compiled and ran ($(tail -n 1 "$tmp/out"))"
