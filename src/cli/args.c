/* Option parsing for the ctorch commands: --name value or --name=value. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char cli_rank_tag[300];

/* The joined values of list options, kept until exit. */
static char **g_joined;
static int g_njoined;
static void free_joined(void) {
    for (int i = 0; i < g_njoined; i++) free(g_joined[i]);
    free(g_joined);
    g_joined = NULL;
    g_njoined = 0;
}

/* "old,new" (a string kept until exit), or NULL when out of memory. */
static const char *join_list(const char *old, const char *add) {
    char **grown = realloc(g_joined, (size_t)(g_njoined + 1) * sizeof *grown);
    size_t len = strlen(old) + strlen(add) + 2;
    char *j = grown ? malloc(len) : NULL;
    if (grown) g_joined = grown;
    if (!j) return NULL;
    if (g_njoined == 0) atexit(free_joined);
    snprintf(j, len, "%s,%s", old, add);
    g_joined[g_njoined++] = j;
    return j;
}

const char *cli_list_next(const char *list, char *item, size_t n) {
    while (list && *list == ',') list++;
    if (!list || !*list) return NULL;
    size_t len = strcspn(list, ",");
    snprintf(item, n, "%.*s", (int)(len < n ? len : n - 1), list);
    return list + len;
}

int cli_fail(const char *cmd, int code, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "ctorch %s%s: ", cmd, cli_rank_tag);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return code;
}

int cli_choice(const char *cmd, const char *opt, const char *value, const char *const *choices) {
    for (int i = 0; choices[i]; i++)
        if (strcmp(value, choices[i]) == 0) return 0;
    char list[512] = "";
    for (int i = 0; choices[i]; i++) {
        strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
        strncat(list, choices[i], sizeof list - strlen(list) - 1);
    }
    return cli_fail(cmd, CLI_USAGE, "invalid value '%s' for %s; choose one of: %s", value, opt, list);
}

static int parse_value(const char *cmd, cli_opt *o, const char *v) {
    char *end = NULL;
    errno = 0;
    switch (o->type) {
    case OPT_INT: {
        long long x = strtoll(v, &end, 10);
        if (!*v || *end || errno)
            return cli_fail(cmd, CLI_USAGE, "%s expects an integer, got '%s'", o->name, v);
        if ((double)x < o->min || (double)x > o->max)
            return cli_fail(cmd, CLI_USAGE, "%s must be between %.0f and %.0f, got %lld", o->name,
                            o->min, o->max, x);
        *(int64_t *)o->dest = x;
        return 0;
    }
    case OPT_DOUBLE: {
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x))
            return cli_fail(cmd, CLI_USAGE, "%s expects a number, got '%s'", o->name, v);
        if (x < o->min || x > o->max)
            return cli_fail(cmd, CLI_USAGE, "%s must be between %g and %g, got %g", o->name, o->min,
                            o->max, x);
        *(double *)o->dest = x;
        return 0;
    }
    case OPT_STRING:
    case OPT_LIST:
        if (!*v) return cli_fail(cmd, CLI_USAGE, "%s expects a non-empty value", o->name);
        *(const char **)o->dest = v;
        return 0;
    default: return 0;
    }
}

int cli_parse(const char *cmd, int argc, char **argv, cli_opt *opts, int nopts, const char **pos,
              int max_pos, int *npos) {
    *npos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == 0) {
            if (*npos >= max_pos)
                return cli_fail(cmd, CLI_USAGE, "unexpected argument '%s'; see `ctorch help %s`", a, cmd);
            pos[(*npos)++] = a;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        cli_opt *o = NULL;
        for (int k = 0; k < nopts; k++)
            if (strlen(opts[k].name) == len && strncmp(opts[k].name, a, len) == 0) o = &opts[k];
        if (!o)
            return cli_fail(cmd, CLI_USAGE, "unknown option '%.*s'; see `ctorch help %s`", (int)len, a, cmd);
        int again = o->seen;
        o->seen = 1;
        if (o->type == OPT_FLAG) {
            if (eq) return cli_fail(cmd, CLI_USAGE, "%s takes no value", o->name);
            *(int *)o->dest = 1;
            continue;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) return cli_fail(cmd, CLI_USAGE, "%s needs a value; see `ctorch help %s`", o->name, cmd);
        if (o->type == OPT_LIST && again && *v) {
            const char *j = join_list(*(const char **)o->dest, v);
            if (!j) return cli_fail(cmd, CLI_RUNTIME, "out of memory");
            *(const char **)o->dest = j;
            continue;
        }
        int rc = parse_value(cmd, o, v);
        if (rc) return rc;
    }
    return 0;
}
