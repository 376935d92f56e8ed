/* MNIST and Fashion-MNIST: IDX files (big-endian headers), plain or gzip-compressed.
 * Images: magic 2051, count, rows, cols, then count*rows*cols bytes.
 * Labels: magic 2049, count, then count bytes. */
#include "data/data_internal.h"

#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IDX_IMAGES_MAGIC 2051u
#define IDX_LABELS_MAGIC 2049u

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Finds <ddir>/<base> or <ddir>/<base>.gz (the uncompressed file wins). */
static int find_file(const char *ddir, const char *base, char *out, size_t n) {
    ct_path_join(out, n, ddir, base);
    if (ct_path_is_file(out)) return 0;
    size_t len = strlen(out);
    if (len + 3 < n) {
        memcpy(out + len, ".gz", 4);
        if (ct_path_is_file(out)) return 0;
    }
    return -1;
}

static const char *official_url(ct_dataset_kind kind) {
    return kind == CT_DATASET_MNIST
               ? "https://ossci-datasets.s3.amazonaws.com/mnist/ (a mirror of "
                 "http://yann.lecun.com/exdb/mnist/)"
               : "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";
}

/* The pair of IDX files of a split, and the names used in messages. */
typedef struct {
    const char *dname;  /* "mnist" or "fashion_mnist" */
    const char *prefix; /* "train" or "t10k" */
    char img_base[64], lab_base[64];
    char img_path[CT_PATH_MAX], lab_path[CT_PATH_MAX];
} idx_files;

/* Finds the split's image and label files (plain or .gz) under the data root. */
static int find_idx_files(ct_dataset_kind kind, const char *dir, ct_split split, idx_files *f) {
    f->dname = ct_dataset_name(kind);
    const char *root = ct_data_root(dir);
    f->prefix = split == CT_SPLIT_TRAIN ? "train" : "t10k";
    snprintf(f->img_base, sizeof f->img_base, "%s-images-idx3-ubyte", f->prefix);
    snprintf(f->lab_base, sizeof f->lab_base, "%s-labels-idx1-ubyte", f->prefix);
    char ddir[CT_PATH_MAX];
    ct_dataset_dir(ddir, sizeof ddir, root, kind, f->img_base);
    int no_img = find_file(ddir, f->img_base, f->img_path, sizeof f->img_path) != 0;
    int no_lab = find_file(ddir, f->lab_base, f->lab_path, sizeof f->lab_path) != 0;
    if (!no_img && !no_lab) return 0;
    char expect[CT_PATH_MAX];
    ct_path_join(expect, sizeof expect, root, ct_dataset_subdir(kind));
    return ct_error("%s: %s%s%s not found in %s. Put the four original files there "
                    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, gzip-compressed or "
                    "not) from %s, or run `ctorch download %s --data-dir %s`. The data directory "
                    "is the one given to ct_dataset_load (the CLI's --data-dir), else $CTORCH_DATA, "
                    "else ./data",
                    f->dname, no_img ? f->img_base : "", no_img && no_lab ? " and " : "",
                    no_lab ? f->lab_base : "", ct_path_is_dir(ddir) ? ddir : expect,
                    official_url(kind), f->dname, root);
}

/* The decompressed contents of an IDX image file and its label file. */
typedef struct {
    uint8_t *img, *lab;
    size_t img_size, lab_size;
    uint32_t count, rows, cols; /* from the image header */
} idx_data;

/* Magic numbers, image size, byte counts and the two counts agreeing. */
static int check_headers(const idx_files *f, idx_data *d) {
    if (d->img_size < 16 || be32(d->img) != IDX_IMAGES_MAGIC) {
        uint32_t m = d->img_size >= 4 ? be32(d->img) : 0;
        return ct_error("%s: %s is not an IDX image file (magic number %u, expected 2051%s); "
                        "replace it with the original %s.gz",
                        f->dname, f->img_path, m,
                        m == IDX_LABELS_MAGIC ? ": this is a label file, are the names swapped?" : "",
                        f->img_base);
    }
    if (d->lab_size < 8 || be32(d->lab) != IDX_LABELS_MAGIC) {
        uint32_t m = d->lab_size >= 4 ? be32(d->lab) : 0;
        return ct_error("%s: %s is not an IDX label file (magic number %u, expected 2049%s); "
                        "replace it with the original %s.gz",
                        f->dname, f->lab_path, m,
                        m == IDX_IMAGES_MAGIC ? ": this is an image file, are the names swapped?" : "",
                        f->lab_base);
    }
    d->count = be32(d->img + 4);
    d->rows = be32(d->img + 8);
    d->cols = be32(d->img + 12);
    uint32_t lcount = be32(d->lab + 4);
    if (d->rows == 0 || d->cols == 0 || d->rows > 4096 || d->cols > 4096)
        return ct_error("%s: %s declares %ux%u images; the header is corrupt, replace the file "
                        "with the original",
                        f->dname, f->img_path, d->rows, d->cols);
    uint64_t want_img = 16 + (uint64_t)d->count * d->rows * d->cols;
    if (d->img_size != want_img)
        return ct_error("%s: %s holds %llu bytes but its header (%u images of %ux%u) needs %llu: "
                        "the file is %s; replace it with the original %s.gz",
                        f->dname, f->img_path, (unsigned long long)d->img_size, d->count, d->rows,
                        d->cols, (unsigned long long)want_img,
                        d->img_size < want_img ? "truncated" : "corrupt", f->img_base);
    if (d->lab_size != 8 + (uint64_t)lcount)
        return ct_error("%s: %s holds %llu bytes but its header (%u labels) needs %llu: the file "
                        "is %s; replace it with the original %s.gz",
                        f->dname, f->lab_path, (unsigned long long)d->lab_size, lcount,
                        (unsigned long long)(8 + (uint64_t)lcount),
                        d->lab_size < 8 + (uint64_t)lcount ? "truncated" : "corrupt", f->lab_base);
    if (d->count != lcount)
        return ct_error("%s: %s has %u images but %s has %u labels; the two files must come from "
                        "the same split (%s-*), replace them with the originals",
                        f->dname, f->img_path, d->count, f->lab_path, lcount, f->prefix);
    return 0;
}

/* The first n records as a dataset; takes d->img (the images, header dropped in place). */
static ct_dataset *make_dataset(const idx_files *f, ct_split split, idx_data *d, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (d->lab[8 + i] > 9)
            return ct_error_null("%s: %s label %lld is %u, outside 0-9: the file is corrupt; "
                                 "replace it with the original %s.gz",
                                 f->dname, f->lab_path, (long long)i, (unsigned)d->lab[8 + i],
                                 f->lab_base);
    }
    char name[64];
    snprintf(name, sizeof name, "%s/%s", f->dname, split == CT_SPLIT_TRAIN ? "train" : "test");
    ct_dataset *ds = ct_dataset_alloc(0, 1, (int)d->rows, (int)d->cols, 10, name);
    if (!ds) return NULL;
    /* Reuse the decompressed buffer for the images: drop the header in place. */
    size_t nbytes = (size_t)n * d->rows * d->cols;
    memmove(d->img, d->img + 16, nbytes);
    uint8_t *shrunk = realloc(d->img, nbytes ? nbytes : 1);
    if (shrunk) d->img = shrunk;
    int64_t *labels = malloc(n ? (size_t)n * sizeof(int64_t) : 1);
    if (!labels) {
        ct_dataset_free(ds);
        return ct_error_null("%s: out of memory", f->dname);
    }
    for (int64_t i = 0; i < n; i++) labels[i] = d->lab[8 + i];
    free(ds->images);
    free(ds->labels);
    ds->images = d->img;
    ds->labels = labels;
    ds->n = n;
    d->img = NULL;
    return ds;
}

static ct_dataset *load_idx(ct_dataset_kind kind, const char *dir, ct_split split,
                            int64_t limit) {
    if (split != CT_SPLIT_TRAIN && split != CT_SPLIT_TEST)
        return ct_error_null("%s: unknown split %d; use train or test", ct_dataset_name(kind),
                             (int)split);
    idx_files f;
    if (find_idx_files(kind, dir, split, &f) != 0) return NULL;
    idx_data d = {0};
    ct_dataset *ds = NULL;
    if (ct_read_gz_file(f.img_path, &d.img, &d.img_size) != 0 ||
        ct_read_gz_file(f.lab_path, &d.lab, &d.lab_size) != 0) {
        ct_error_context("%s", f.dname);
    } else if (check_headers(&f, &d) == 0) {
        int64_t n = (limit > 0 && limit < (int64_t)d.count) ? limit : (int64_t)d.count;
        ds = make_dataset(&f, split, &d, n);
    }
    free(d.img);
    free(d.lab);
    return ds;
}

ct_dataset *ct_mnist_load(const char *dir, ct_split split, int64_t limit) {
    return load_idx(CT_DATASET_MNIST, dir, split, limit);
}

ct_dataset *ct_fashion_mnist_load(const char *dir, ct_split split, int64_t limit) {
    return load_idx(CT_DATASET_FASHION_MNIST, dir, split, limit);
}
