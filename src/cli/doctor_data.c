/* `ctorch doctor`'s checks of the data directory (which datasets are there, and whether
 * their files are the official ones) and of the run directory (docs/doctor.md). */
#include "doctor.h"
#include "ctorch.h"
#include "data/data_internal.h"
#include "run_info.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Compares one dataset's files with the official checksums. Returns the number of files
 * that differ; names the first in bad; counts those with no known checksum in *unknown. */
static int compare_sums(ct_dataset_kind kind, const json_t *files, char *bad, size_t n,
                        int *unknown) {
    int mismatched = 0;
    size_t i;
    json_t *e;
    *unknown = 0;
    json_array_foreach(files, i, e) {
        const char *path = json_string_value(json_object_get(e, "path"));
        const char *sha = json_string_value(json_object_get(e, "sha256"));
        const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        const char *want = ct_dataset_official_sha256(kind, base);
        const char *want_md5 = want ? NULL : ct_dataset_official_md5(kind, base);
        char md5[33] = "";
        int differs = want ? strcmp(want, sha) != 0
                      : want_md5 ? ct_md5_file(path, md5) != 0 || strcmp(md5, want_md5) != 0
                                 : 0;
        if (!want && !want_md5) ++*unknown;
        if (differs && mismatched++ == 0)
            snprintf(bad, n, "%s (%s %s, official %s)", path, want ? "SHA-256" : "MD5",
                     want ? sha : md5, want ? want : want_md5);
    }
    return mismatched;
}

/* One row per dataset; returns 1 when it is present. */
static int check_dataset(dr_report *r, ct_dataset_kind kind, const char *root) {
    const char *name = ct_dataset_name(kind);
    char check[32], fix[768], bad[1024];
    snprintf(check, sizeof check, "data %s", name);
    json_t *files = cli_dataset_files(kind, root);
    if (!files) {
        snprintf(fix, sizeof fix, "ctorch download %s --data-dir %s (only if you train on it)",
                 name, root);
        char detail[1024], unused[8];
        dr_split_fix(ct_last_error(), detail, sizeof detail, unused, sizeof unused);
        dr_add(r, check, DR_WARNING, fix, "not present: %s", detail);
        return 0;
    }
    int unknown = 0, bad_n = compare_sums(kind, files, bad, sizeof bad, &unknown);
    size_t n = json_array_size(files);
    if (bad_n) {
        snprintf(fix, sizeof fix, "the file is damaged or not the official one: delete it and run "
                                  "`ctorch download %s --data-dir %s`",
                 name, root);
        dr_add(r, check, DR_PROBLEM, fix, "%d of %zu files differ from the official ones: %s",
               bad_n, n, bad);
    } else if (unknown) {
        dr_add(r, check, DR_OK, "", "%zu files present; %d unpacked file%s with no official "
                                    "checksum to compare, the others match",
               n, unknown, unknown == 1 ? "" : "s");
    } else {
        dr_add(r, check, DR_OK, "", "%zu files present, checksums match the official files", n);
    }
    json_decref(files);
    return 1;
}

/* The data directory: --data-dir, else $CTORCH_DATA, else ./data. Missing data is a
 * problem only when the directory was named (option or variable): the default ./data
 * need not exist on a machine that trains on synthetic data (ctorch bench). */
void dr_check_data(dr_report *r) {
    const char *env = getenv("CTORCH_DATA");
    int named = r->data_dir || (env && *env);
    const char *root = ct_data_root(r->data_dir);
    const char *how = r->data_dir ? "--data-dir" : named ? "$CTORCH_DATA" : "the default";
    char fix[768];
    if (!ct_path_is_dir(root)) {
        snprintf(fix, sizeof fix, "create it with `ctorch download cifar10 --data-dir %s` (or "
                                  "mnist, fashion_mnist), or name the directory that holds the "
                                  "data with --data-dir or CTORCH_DATA",
                 root);
        dr_add(r, "data dir", named ? DR_PROBLEM : DR_WARNING, fix,
               "%s (%s) does not exist or is not a directory", root, how);
        return;
    }
    int at = r->n; /* the "data dir" row goes first: filled in after the datasets */
    dr_add(r, "data dir", DR_OK, "", "%s", root);
    int present = 0;
    for (int k = 0; k < CT_NUM_DATASETS; k++) present += check_dataset(r, (ct_dataset_kind)k, root);
    if (at >= r->n) return;
    dr_row *row = &r->rows[at];
    snprintf(row->detail, sizeof row->detail, "%s (%s): %d of %d datasets present", root, how,
             present, (int)CT_NUM_DATASETS);
    if (!present) {
        row->verdict = named ? DR_PROBLEM : DR_WARNING;
        snprintf(row->fix, sizeof row->fix, "no dataset here: run `ctorch download cifar10 "
                                            "--data-dir %s` (or mnist, fashion_mnist), or name the "
                                            "directory that holds them",
                 root);
    }
}

/* Whether dir accepts a new file: a temporary one is created and removed. 0, or errno. */
static int probe_write(const char *dir) {
    char path[CT_PATH_MAX + 32];
    snprintf(path, sizeof path, "%.*s/.ctorch-doctor-XXXXXX", CT_PATH_MAX - 1, dir);
    int fd = mkstemp(path);
    if (fd < 0) return errno;
    close(fd);
    unlink(path);
    return 0;
}

/* The runs directory: --run-dir, else $CTORCH_RUNS, else ./runs (where `ctorch train` puts
 * its runs). When it does not exist yet, its nearest existing parent must be a writable
 * directory (train creates the rest). */
void dr_check_run_dir(dr_report *r) {
    const char *env = getenv("CTORCH_RUNS");
    const char *dir = r->run_dir ? r->run_dir : env && *env ? env : "runs";
    char probe[CT_PATH_MAX], fix[768];
    snprintf(probe, sizeof probe, "%s", dir);
    struct stat st;
    int exists = stat(probe, &st) == 0, err = 0;
    while (!exists && (errno == ENOENT) && strcmp(probe, "/") && strcmp(probe, ".")) {
        char tmp[CT_PATH_MAX];
        snprintf(tmp, sizeof tmp, "%s", probe);
        snprintf(probe, sizeof probe, "%s", dirname(tmp));
        exists = stat(probe, &st) == 0;
    }
    if (!exists) err = errno;
    else if (!S_ISDIR(st.st_mode)) err = ENOTDIR;
    else err = probe_write(probe);
    if (err) {
        snprintf(fix, sizeof fix, "choose a directory you can write: --run-dir DIR or "
                                  "CTORCH_RUNS=DIR%s",
                 err == ENOTDIR ? " (a file is in the way)" : "");
        dr_add(r, "run dir", DR_PROBLEM, fix, "%s: cannot create files in %s: %s", dir, probe,
               strerror(err));
        return;
    }
    dr_add(r, "run dir", DR_OK, "", "%s %s", dir,
           strcmp(probe, dir) ? "can be created" : "is writable");
}
