/* The JSON the commands print (--json, --log-json), through jansson. */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

json_t *cli_json_number(double v, const char *fmt) {
    if (!isfinite(v)) return json_null();
    char buf[64];
    snprintf(buf, sizeof buf, fmt, v);
    return json_real(strtod(buf, NULL));
}

char *cli_json_line(json_t *obj) {
    /* ", " and ": " between items (no JSON_COMPACT), keys in the order they were added;
     * 15 significant digits print back the decimals cli_json_number kept */
    char *s = obj ? json_dumps(obj, JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(obj);
    if (!s) return NULL;
    size_t n = strlen(s);
    char *line = realloc(s, n + 2);
    if (!line) {
        free(s);
        return NULL;
    }
    memcpy(line + n, "\n", 2);
    return line;
}

int cli_json_print(const char *cmd, json_t *obj) {
    char *line = cli_json_line(obj);
    if (!line) return cli_fail(cmd, CLI_RUNTIME, "out of memory formatting the JSON output");
    fputs(line, stdout);
    free(line);
    fflush(stdout);
    return CLI_OK;
}
