#!/bin/sh
# The architecture's rules that a grep can check (docs/architecture.md):
#  1. nothing above src/backends branches on a device type: the op layer, nn, optim, data,
#     io and the CLI ask the backend table for a kernel or an extra entry point instead
#     (src/core/dispatch.c, which loads the backends, is the one exception);
#  2. no numbered backward-state slots (dp[...] / ip[...]): ops record a named context;
#  3. code above src/backends includes no backend's internal header.
# Prints each violation; exit status 1 when there is any.
cd "$(dirname "$0")/.." || exit 2
status=0
above=$(find src -name '*.c' -o -name '*.h' | grep -v '^src/backends/' | grep -v '^src/core/dispatch.c$' | sort)
hits=$(grep -nE '\.type[[:space:]]*[!=]=[[:space:]]*CT_|[!=]=[[:space:]]*CT_(CPU|CUDA)\b|case CT_(CPU|CUDA):' $above)
if [ -n "$hits" ]; then
    echo "device-type branches outside src/backends (ask the backend table instead):"
    echo "$hits"
    status=1
fi
hits=$(grep -nE '\b(dp|ip)\[' $(find src -name '*.c' -o -name '*.h' -o -name '*.cu' | grep -v '^src/backends/'))
if [ -n "$hits" ]; then
    echo "numbered backward-state slots (record a named context with CT_NODE_CTX):"
    echo "$hits"
    status=1
fi
hits=$(grep -nE '#include[[:space:]]+"backends/' $above)
if [ -n "$hits" ]; then
    echo "backend internals included above src/backends:"
    echo "$hits"
    status=1
fi
exit $status
