/* The run directory's files: creation, atomic JSON, the checkpoints' list. */
#include "run_dir.h"
#include "cli.h"
#include "ctorch_io.h"
#include "core/error.h"
#include "data/data_internal.h" /* ct_mkdir_p */

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

char *run_path(const char *dir, const char *name) {
    char *p = NULL;
    return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

void run_utc_now(char *buf, size_t n) {
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

char *run_dir_default(const char *model, const char *dataset) {
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
    for (int k = 1; k < 1000; k++) {
        char *p = NULL;
        const char *root = getenv("CTORCH_RUNS");
        if (!root || !*root) root = "runs";
        int rc = k == 1 ? asprintf(&p, "%s/%s-%s-%s", root, model, dataset, stamp)
                        : asprintf(&p, "%s/%s-%s-%s-%d", root, model, dataset, stamp, k);
        if (rc < 0) return NULL;
        if (access(p, F_OK) != 0) return p;
        free(p);
    }
    return NULL;
}

int run_dir_create(const char *dir) {
    char *man = run_path(dir, "manifest.json"), *ck = run_path(dir, "checkpoints");
    int rc = -1;
    if (!man || !ck) ct_error("out of memory");
    else if (access(man, F_OK) == 0)
        ct_error("%s already holds a run (manifest.json): continue it with `ctorch train "
                 "--resume %s`, or choose another --run-dir",
                 dir, dir);
    else if (ct_mkdir_p(dir) != 0 || ct_mkdir_p(ck) != 0)
        ct_error_context("the run directory %s (choose a writable --run-dir)", dir);
    else if (ct_check_writable(man) != 0)
        ct_error("cannot write in the run directory %s; choose a writable --run-dir", dir);
    else
        rc = 0;
    free(man);
    free(ck);
    return rc;
}

char *run_json_text(json_t *doc) {
    return json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
}

static int write_text(const char *path, const char *text) {
    ct_atomic_file *f = ct_atomic_open(path);
    if (!f) return -1;
    size_t n = strlen(text);
    if (n && fwrite(text, 1, n, f->fp) != n) {
        int e = errno;
        ct_atomic_abort(f);
        return ct_error("writing %s: %s", path, strerror(e));
    }
    return ct_atomic_commit(f);
}

int run_write_json(const char *path, json_t *doc) {
    char *text = run_json_text(doc);
    if (!text) return ct_error("%s: out of memory", path);
    size_t n = strlen(text);
    char *t2 = realloc(text, n + 2);
    if (!t2) {
        free(text);
        return ct_error("%s: out of memory", path);
    }
    t2[n] = '\n';
    t2[n + 1] = 0;
    int rc = write_text(path, t2);
    free(t2);
    return rc;
}

int run_write_jsonl(const char *path, json_t *rows) {
    size_t cap = 4096, len = 0, i;
    char *buf = malloc(cap);
    json_t *row;
    if (!buf) return ct_error("%s: out of memory", path);
    buf[0] = 0;
    json_array_foreach(rows, i, row) {
        char *line = cli_json_line(json_incref(row));
        if (!line) {
            free(buf);
            return ct_error("%s: out of memory", path);
        }
        size_t l = strlen(line);
        if (len + l + 1 > cap) {
            cap = (len + l + 1) * 2;
            char *b = realloc(buf, cap);
            if (!b) {
                free(line);
                free(buf);
                return ct_error("%s: out of memory", path);
            }
            buf = b;
        }
        memcpy(buf + len, line, l + 1);
        len += l;
        free(line);
    }
    int rc = write_text(path, buf);
    free(buf);
    return rc;
}

char *run_checkpoint_path(const char *dir, int64_t step) {
    char *p = NULL;
    return asprintf(&p, "%s/checkpoints/step-%010lld.safetensors", dir, (long long)step) < 0 ? NULL : p;
}

static int by_name_desc(const void *a, const void *b) {
    return strcmp(*(char *const *)b, *(char *const *)a);
}

int run_list_checkpoints(const char *dir, char ***paths) {
    *paths = NULL;
    char *ck = run_path(dir, "checkpoints");
    DIR *d = ck ? opendir(ck) : NULL;
    if (!d) {
        free(ck);
        return 0;
    }
    int n = 0, cap = 0;
    char **list = NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *name = e->d_name;
        size_t l = strlen(name);
        if (strncmp(name, "step-", 5) != 0) continue;
        char *full = run_path(ck, name);
        if (!full) break;
        if (strstr(name, ".tmp.")) { /* a write that a crash interrupted */
            unlink(full);
            free(full);
            continue;
        }
        if (l < 12 || strcmp(name + l - 12, ".safetensors") != 0) {
            free(full);
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            char **nl = realloc(list, sizeof *nl * (size_t)cap);
            if (!nl) {
                free(full);
                break;
            }
            list = nl;
        }
        list[n++] = full;
    }
    closedir(d);
    free(ck);
    /* fixed-width step numbers: name order is step order */
    if (n > 1) qsort(list, (size_t)n, sizeof *list, by_name_desc);
    *paths = list;
    return n;
}

void run_prune_checkpoints(const char *dir, int keep) {
    char **paths;
    int n = run_list_checkpoints(dir, &paths);
    for (int i = 0; i < n; i++) {
        if (i >= keep) unlink(paths[i]);
        free(paths[i]);
    }
    free(paths);
}
