/* A run directory's manifest.json, read by `ctorch archive` and `ctorch verify`. */
#include "cli.h"
#include "run_archive.h"

#include <stdio.h>
#include <string.h>

int arc_path(char *out, size_t n, const char *dir, const char *name) {
    size_t dl = strlen(dir);
    int w = snprintf(out, n, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", name);
    return w < 0 || (size_t)w >= n ? -1 : 0;
}

json_t *run_json_at(const json_t *root, const char *dotted) {
    const json_t *v = root;
    char key[128];
    while (v && *dotted) {
        const char *dot = strchr(dotted, '.');
        size_t len = dot ? (size_t)(dot - dotted) : strlen(dotted);
        if (len >= sizeof key) return NULL;
        memcpy(key, dotted, len);
        key[len] = 0;
        v = json_is_object(v) ? json_object_get(v, key) : NULL;
        dotted += len + (dot ? 1 : 0);
    }
    return (json_t *)v;
}

const char *run_json_str(const json_t *root, const char *dotted) {
    return json_string_value(run_json_at(root, dotted));
}

int run_json_num(const json_t *root, const char *dotted, double *out) {
    json_t *v = run_json_at(root, dotted);
    if (!json_is_number(v)) return -1;
    *out = json_number_value(v);
    return 0;
}

json_t *run_manifest_load(const char *cmd, const char *path) {
    json_error_t err;
    json_t *m = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!m) {
        cli_fail(cmd, CLI_USAGE, "%s: not valid JSON (line %d: %s); it should be the manifest.json "
                 "that `ctorch train` writes in a run directory", path, err.line, err.text);
        return NULL;
    }
    const char *format = run_json_str(m, "format");
    json_t *version = json_object_get(m, "format_version");
    const char *problem = NULL;
    if (!json_is_object(m)) problem = "it is not a JSON object";
    else if (!format || strcmp(format, RUN_MANIFEST_FORMAT) != 0) problem = "its \"format\" is not \"" RUN_MANIFEST_FORMAT "\"";
    else if (!json_is_integer(version) || json_integer_value(version) < 1)
        problem = "it has no \"format_version\"";
    if (problem) {
        cli_fail(cmd, CLI_USAGE, "%s is not a ctorch run manifest: %s (`ctorch train` writes "
                 "manifest.json with \"format\": \"" RUN_MANIFEST_FORMAT "\" in its run directory)", path, problem);
        json_decref(m);
        return NULL;
    }
    if (json_integer_value(version) > RUN_MANIFEST_VERSION) {
        cli_fail(cmd, CLI_USAGE, "%s has format_version %lld, newer than this ctorch reads (%d): "
                 "use the ctorch that wrote it, or a newer one", path,
                 (long long)json_integer_value(version), RUN_MANIFEST_VERSION);
        json_decref(m);
        return NULL;
    }
    return m;
}
