/* CIFAR-10, binary version: cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin, each
 * a sequence of 3073-byte records (1 label byte, then 1024 red, 1024 green, 1024 blue
 * bytes of a 32x32 image), or the same files inside the official cifar-10-binary.tar.gz. */
#include "data/data_internal.h"

#include "core/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const ct_cifar_train_files[5] = {"data_batch_1.bin", "data_batch_2.bin",
                                             "data_batch_3.bin", "data_batch_4.bin",
                                             "data_batch_5.bin"};
const char *const ct_cifar_test_file = "test_batch.bin";

static int split_files(ct_split split, const char *const **files) {
    if (split == CT_SPLIT_TRAIN) {
        *files = ct_cifar_train_files;
        return 5;
    }
    *files = &ct_cifar_test_file;
    return 1;
}

static int check_size(const char *what, uint64_t size) {
    if (size == 0 || size % CT_CIFAR_RECORD != 0)
        return ct_error("cifar10: %s has %llu bytes, not a whole number of 3073-byte records "
                        "(1 label byte + 3072 pixel bytes): the file is truncated or is not "
                        "a CIFAR-10 binary batch; replace it with the file from the official "
                        "cifar-10-binary.tar.gz (or run `ctorch download cifar10`)",
                        what, (unsigned long long)size);
    return 0;
}

/* Copies `count` records from rec into ds starting at record `at`. */
static int take_records(ct_dataset *ds, int64_t at, const uint8_t *rec, int64_t count,
                        const char *what, int64_t first_index) {
    for (int64_t i = 0; i < count; i++) {
        const uint8_t *r = rec + (size_t)i * CT_CIFAR_RECORD;
        if (r[0] > 9)
            return ct_error("cifar10: %s record %lld has label %u, outside 0-9: the file is "
                            "corrupt or not a CIFAR-10 binary batch; replace it with the file "
                            "from the official cifar-10-binary.tar.gz",
                            what, (long long)(first_index + i), (unsigned)r[0]);
        ds->labels[at + i] = r[0];
        memcpy(ds->images + (size_t)(at + i) * CT_CIFAR_IMAGE, r + 1, CT_CIFAR_IMAGE);
    }
    return 0;
}

static int64_t want_records(int64_t total, int64_t limit) {
    return (limit > 0 && limit < total) ? limit : total;
}

static ct_dataset *load_files(const char *ddir, const char *const *files, int nfiles,
                              ct_split split, int64_t limit) {
    char path[CT_PATH_MAX];
    int64_t records[5], total = 0;
    for (int i = 0; i < nfiles; i++) {
        ct_path_join(path, sizeof path, ddir, files[i]);
        int64_t sz = ct_file_size(path);
        if (check_size(path, sz < 0 ? 0 : (uint64_t)sz) != 0) return NULL;
        records[i] = sz / CT_CIFAR_RECORD;
        total += records[i];
    }
    int64_t n = want_records(total, limit);
    ct_dataset *ds = ct_dataset_alloc(n, 3, 32, 32, 10,
                                      split == CT_SPLIT_TRAIN ? "cifar10/train" : "cifar10/test");
    if (!ds) return NULL;
    const int64_t chunk = 1024;
    uint8_t *buf = malloc((size_t)chunk * CT_CIFAR_RECORD);
    if (!buf) {
        ct_dataset_free(ds);
        return ct_error_null("cifar10: out of memory");
    }
    int64_t filled = 0;
    for (int i = 0; i < nfiles && filled < n; i++) {
        ct_path_join(path, sizeof path, ddir, files[i]);
        FILE *f = fopen(path, "rb");
        if (!f) {
            ct_error("cifar10: cannot open %s: %s", path, strerror(errno));
            goto fail;
        }
        int64_t need = records[i] < n - filled ? records[i] : n - filled;
        int64_t done = 0;
        while (done < need) {
            int64_t c = need - done < chunk ? need - done : chunk;
            size_t got = fread(buf, CT_CIFAR_RECORD, (size_t)c, f);
            if ((int64_t)got != c) {
                fclose(f);
                ct_error("cifar10: %s ended early while reading record %lld (read error or "
                         "the file changed); replace it with the file from the official "
                         "archive",
                         path, (long long)(done + (int64_t)got));
                goto fail;
            }
            if (take_records(ds, filled + done, buf, c, path, done) != 0) {
                fclose(f);
                goto fail;
            }
            done += c;
        }
        fclose(f);
        filled += done;
    }
    free(buf);
    return ds;
fail:
    free(buf);
    ct_dataset_free(ds);
    return NULL;
}

/* ------------------------------------------------------------ from the archive */
typedef struct {
    const char *const *files;
    int nfiles;
    uint8_t *data[5];
    uint64_t size[5];
    int found;
} tar_ctx;

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static int tar_index(tar_ctx *t, const char *name) {
    const char *b = base_name(name);
    for (int i = 0; i < t->nfiles; i++)
        if (strcmp(b, t->files[i]) == 0) return i;
    return -1;
}

static int tar_want(void *ctx, const char *name, uint64_t size) {
    (void)size;
    tar_ctx *t = ctx;
    int i = tar_index(t, name);
    return i >= 0 && t->data[i] == NULL;
}

static int tar_got(void *ctx, const char *name, uint8_t *data, uint64_t size) {
    tar_ctx *t = ctx;
    int i = tar_index(t, name);
    t->data[i] = data;
    t->size[i] = size;
    return ++t->found == t->nfiles ? 1 : 0;
}

static ct_dataset *load_archive(const char *archive, const char *const *files, int nfiles,
                                ct_split split, int64_t limit) {
    tar_ctx t;
    memset(&t, 0, sizeof t);
    t.files = files;
    t.nfiles = nfiles;
    ct_dataset *ds = NULL;
    char what[CT_PATH_MAX + 64];
    if (ct_tar_gz_scan(archive, tar_want, tar_got, &t) != 0) goto done;
    for (int i = 0; i < nfiles; i++) {
        if (!t.data[i]) {
            ct_error("cifar10: %s has no member cifar-10-batches-bin/%s: it is not the "
                     "official CIFAR-10 binary archive; download cifar-10-binary.tar.gz "
                     "again (or run `ctorch download cifar10`)",
                     archive, files[i]);
            goto done;
        }
        snprintf(what, sizeof what, "%s member %s", archive, files[i]);
        if (check_size(what, t.size[i]) != 0) goto done;
    }
    int64_t total = 0;
    for (int i = 0; i < nfiles; i++) total += (int64_t)(t.size[i] / CT_CIFAR_RECORD);
    int64_t n = want_records(total, limit);
    ds = ct_dataset_alloc(n, 3, 32, 32, 10,
                          split == CT_SPLIT_TRAIN ? "cifar10/train" : "cifar10/test");
    if (!ds) goto done;
    int64_t filled = 0;
    for (int i = 0; i < nfiles && filled < n; i++) {
        int64_t r = (int64_t)(t.size[i] / CT_CIFAR_RECORD);
        int64_t c = r < n - filled ? r : n - filled;
        snprintf(what, sizeof what, "%s member %s", archive, files[i]);
        if (take_records(ds, filled, t.data[i], c, what, 0) != 0) {
            ct_dataset_free(ds);
            ds = NULL;
            goto done;
        }
        filled += c;
    }
done:
    for (int i = 0; i < nfiles; i++) free(t.data[i]);
    return ds;
}

/* ------------------------------------------------------------------ entry */
ct_dataset *ct_cifar10_load(const char *dir, ct_split split, int64_t limit) {
    if (split != CT_SPLIT_TRAIN && split != CT_SPLIT_TEST)
        return ct_error_null("cifar10: unknown split %d; use train or test", (int)split);
    const char *root = ct_data_root(dir);
    const char *const *files;
    int nfiles = split_files(split, &files);
    char ddir[CT_PATH_MAX], path[CT_PATH_MAX];
    ct_dataset_dir(ddir, sizeof ddir, root, CT_DATASET_CIFAR10, files[0]);

    char missing[1024] = "";
    int nmissing = 0;
    for (int i = 0; i < nfiles; i++) {
        ct_path_join(path, sizeof path, ddir, files[i]);
        if (!ct_path_is_file(path)) {
            size_t len = strlen(missing);
            snprintf(missing + len, sizeof missing - len, "%s%s", nmissing ? ", " : "",
                     files[i]);
            nmissing++;
        }
    }
    if (nmissing == 0) return load_files(ddir, files, nfiles, split, limit);

    /* The official archive, read in place. */
    char archive[CT_PATH_MAX];
    ct_path_join(archive, sizeof archive, root, CT_CIFAR_ARCHIVE);
    if (!ct_path_is_file(archive)) ct_path_join(archive, sizeof archive, ddir, CT_CIFAR_ARCHIVE);
    if (ct_path_is_file(archive)) return load_archive(archive, files, nfiles, split, limit);

    char expect[CT_PATH_MAX];
    ct_path_join(expect, sizeof expect, root, ct_dataset_subdir(CT_DATASET_CIFAR10));
    return ct_error_null(
        "cifar10: %s not found in %s. Put the CIFAR-10 binary version there "
        "(data_batch_1.bin ... data_batch_5.bin and test_batch.bin, from the official "
        "cifar-10-binary.tar.gz, https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz), "
        "or put the archive cifar-10-binary.tar.gz itself in %s, or run `ctorch download "
        "cifar10 --data-dir %s`. The data directory is the one given to ct_dataset_load "
        "(the CLI's --data-dir), else $CTORCH_DATA, else "
        "./data",
        missing, ct_path_is_dir(ddir) ? ddir : expect, root, root);
}
