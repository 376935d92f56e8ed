#!/bin/sh
# Lists the functions in src/ longer than LIMIT lines (default 100), longest first:
#   scripts/long-functions.sh [LIMIT] [FILES...]
# A function is a top-level brace block after a ")" (clang-format's layout: the signature
# starts at column 0); its length runs from the signature's first line to the closing
# brace. Functions written inside multi-line macros (kernel templates) are measured the
# same way. Exit status 1 when any function is too long, so `make test` can run it.
limit=${1:-100}
[ $# -gt 0 ] && shift
if [ $# -eq 0 ]; then
    set -- $(find src -name '*.c' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' | sort)
fi
awk -v limit="$limit" '
function report(first, last, name) {
    if (last - first + 1 > limit) {
        printf "%5d  %s:%d  %s\n", last - first + 1, FILENAME, first, name
        found = 1
    }
}
FNR == 1 { depth = 0; incomment = 0; sigline = 0; prev = "" }
{
    line = $0
    # strip comments, strings and character literals (enough for brace counting)
    if (incomment) {
        if (sub(/^.*\*\//, "", line)) incomment = 0; else next
    }
    gsub(/\/\*.*\*\//, "", line)
    if (sub(/\/\*.*$/, "", line)) incomment = 1
    sub(/\/\/.*$/, "", line)
    gsub(/"([^"\\]|\\.)*"/, "\"\"", line)
    gsub(/\047([^\047\\]|\\.)*\047/, "0", line)
    # a signature: at depth 0, a line that opens a parameter list (column 0, or inside a
    # macro body, after the #define line)
    if (depth == 0 && line ~ /^[ \t]*[A-Za-z_][A-Za-z_0-9 \t\*,]*[ \t\*]+[A-Za-z_][A-Za-z_0-9#]*[ \t]*\(/ &&
        line !~ /^[ \t]*#/ && line !~ /=/ && line !~ /;[ \t\\]*$/) {
        if (!sigline || prev ~ /[;{}][ \t\\]*$/ || prev ~ /^[ \t]*$/ || prev ~ /\\$/ && prev ~ /^#/) {
            sigline = FNR; name = line; sub(/[ \t]*\(.*/, "", name); sub(/.*[ \t\*]/, "", name)
        }
    }
    n = length(line)
    for (i = 1; i <= n; i++) {
        c = substr(line, i, 1)
        if (c == "{") {
            if (depth == 0) { start = sigline ? sigline : FNR; fname = sigline ? name : "" }
            depth++
        } else if (c == "}") {
            depth--
            if (depth == 0) {
                if (fname != "") report(start, FNR, fname)
                sigline = 0
            }
            if (depth < 0) depth = 0
        }
    }
    if (line ~ /;[ \t\\]*$/ && depth == 0) sigline = 0
    prev = line
}
' "$@" | sort -rn > "${TMPDIR:-/tmp}/long-functions.$$"
out=$(cat "${TMPDIR:-/tmp}/long-functions.$$"); rm -f "${TMPDIR:-/tmp}/long-functions.$$"
[ -z "$out" ] && exit 0
printf '%s\n' "$out"
exit 1
