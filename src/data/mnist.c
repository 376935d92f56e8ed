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

static ct_dataset *load_idx(ct_dataset_kind kind, const char *dir, ct_split split,
                            int64_t limit) {
    const char *dname = ct_dataset_name(kind);
    if (split != CT_SPLIT_TRAIN && split != CT_SPLIT_TEST)
        return ct_error_null("%s: unknown split %d; use train or test", dname, (int)split);
    const char *root = ct_data_root(dir);
    const char *prefix = split == CT_SPLIT_TRAIN ? "train" : "t10k";
    char img_base[64], lab_base[64];
    snprintf(img_base, sizeof img_base, "%s-images-idx3-ubyte", prefix);
    snprintf(lab_base, sizeof lab_base, "%s-labels-idx1-ubyte", prefix);
    char ddir[CT_PATH_MAX], img_path[CT_PATH_MAX], lab_path[CT_PATH_MAX];
    ct_dataset_dir(ddir, sizeof ddir, root, kind, img_base);

    int no_img = find_file(ddir, img_base, img_path, sizeof img_path) != 0;
    int no_lab = find_file(ddir, lab_base, lab_path, sizeof lab_path) != 0;
    if (no_img || no_lab) {
        char expect[CT_PATH_MAX];
        ct_path_join(expect, sizeof expect, root, ct_dataset_subdir(kind));
        return ct_error_null(
            "%s: %s%s%s not found in %s. Put the four original files there "
            "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, gzip-compressed or "
            "not) from %s, or run `ctorch download %s --data-dir %s`. The data directory is "
            "--data-dir, else $CTORCH_DATA, else ./data",
            dname, no_img ? img_base : "", no_img && no_lab ? " and " : "",
            no_lab ? lab_base : "", ct_path_is_dir(ddir) ? ddir : expect, official_url(kind),
            dname, root);
    }

    uint8_t *img = NULL, *lab = NULL;
    size_t img_size = 0, lab_size = 0;
    ct_dataset *ds = NULL;
    if (ct_read_gz_file(img_path, &img, &img_size) != 0) {
        ct_error_context("%s", dname);
        return NULL;
    }
    if (ct_read_gz_file(lab_path, &lab, &lab_size) != 0) {
        ct_error_context("%s", dname);
        free(img);
        return NULL;
    }
    if (img_size < 16 || be32(img) != IDX_IMAGES_MAGIC) {
        uint32_t m = img_size >= 4 ? be32(img) : 0;
        ct_error("%s: %s is not an IDX image file (magic number %u, expected 2051%s); "
                 "replace it with the original %s.gz",
                 dname, img_path, m,
                 m == IDX_LABELS_MAGIC ? ": this is a label file, are the names swapped?" : "",
                 img_base);
        goto done;
    }
    if (lab_size < 8 || be32(lab) != IDX_LABELS_MAGIC) {
        uint32_t m = lab_size >= 4 ? be32(lab) : 0;
        ct_error("%s: %s is not an IDX label file (magic number %u, expected 2049%s); "
                 "replace it with the original %s.gz",
                 dname, lab_path, m,
                 m == IDX_IMAGES_MAGIC ? ": this is an image file, are the names swapped?" : "",
                 lab_base);
        goto done;
    }
    uint32_t count = be32(img + 4), rows = be32(img + 8), cols = be32(img + 12);
    uint32_t lcount = be32(lab + 4);
    if (rows == 0 || cols == 0 || rows > 4096 || cols > 4096) {
        ct_error("%s: %s declares %ux%u images; the header is corrupt, replace the file "
                 "with the original",
                 dname, img_path, rows, cols);
        goto done;
    }
    uint64_t want_img = 16 + (uint64_t)count * rows * cols;
    if (img_size != want_img) {
        ct_error("%s: %s holds %llu bytes but its header (%u images of %ux%u) needs %llu: "
                 "the file is %s; replace it with the original %s.gz",
                 dname, img_path, (unsigned long long)img_size, count, rows, cols,
                 (unsigned long long)want_img, img_size < want_img ? "truncated" : "corrupt",
                 img_base);
        goto done;
    }
    if (lab_size != 8 + (uint64_t)lcount) {
        ct_error("%s: %s holds %llu bytes but its header (%u labels) needs %llu: the file is "
                 "%s; replace it with the original %s.gz",
                 dname, lab_path, (unsigned long long)lab_size, lcount,
                 (unsigned long long)(8 + (uint64_t)lcount),
                 lab_size < 8 + (uint64_t)lcount ? "truncated" : "corrupt", lab_base);
        goto done;
    }
    if (count != lcount) {
        ct_error("%s: %s has %u images but %s has %u labels; the two files must come from "
                 "the same split (%s-*), replace them with the originals",
                 dname, img_path, count, lab_path, lcount, prefix);
        goto done;
    }
    int64_t n = (limit > 0 && limit < (int64_t)count) ? limit : (int64_t)count;
    for (int64_t i = 0; i < n; i++) {
        if (lab[8 + i] > 9) {
            ct_error("%s: %s label %lld is %u, outside 0-9: the file is corrupt; replace it "
                     "with the original %s.gz",
                     dname, lab_path, (long long)i, (unsigned)lab[8 + i], lab_base);
            goto done;
        }
    }
    char name[64];
    snprintf(name, sizeof name, "%s/%s", dname, split == CT_SPLIT_TRAIN ? "train" : "test");
    /* Reuse the decompressed buffer for the images: drop the header in place. */
    ds = ct_dataset_alloc(0, 1, (int)rows, (int)cols, 10, name);
    if (!ds) goto done;
    size_t nbytes = (size_t)n * rows * cols;
    memmove(img, img + 16, nbytes);
    uint8_t *shrunk = realloc(img, nbytes ? nbytes : 1);
    if (shrunk) img = shrunk;
    int64_t *labels = malloc(n ? (size_t)n * sizeof(int64_t) : 1);
    if (!labels) {
        ct_dataset_free(ds);
        ds = NULL;
        ct_error("%s: out of memory", dname);
        goto done;
    }
    for (int64_t i = 0; i < n; i++) labels[i] = lab[8 + i];
    free(ds->images);
    free(ds->labels);
    ds->images = img;
    ds->labels = labels;
    ds->n = n;
    img = NULL;
done:
    free(img);
    free(lab);
    return ds;
}

ct_dataset *ct_mnist_load(const char *dir, ct_split split, int64_t limit) {
    return load_idx(CT_DATASET_MNIST, dir, split, limit);
}

ct_dataset *ct_fashion_mnist_load(const char *dir, ct_split split, int64_t limit) {
    return load_idx(CT_DATASET_FASHION_MNIST, dir, split, limit);
}
