/* Dataset names, data-directory resolution, in-memory datasets and file helpers. */
#include "data/data_internal.h"

#include "core/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <zlib.h>

/* ------------------------------------------------------------------ names */
static const char *const k_names[CT_NUM_DATASETS] = {"cifar10", "mnist", "fashion_mnist"};
static const char *const k_subdirs[CT_NUM_DATASETS] = {"cifar-10-batches-bin", "mnist",
                                                       "fashion-mnist"};

int ct_dataset_parse_name(const char *name, ct_dataset_kind *out) {
    if (!name)
        return ct_error("dataset: no name given; use cifar10, mnist or fashion_mnist, or imagefolder");
    static const struct {
        const char *alias;
        ct_dataset_kind kind;
    } aliases[] = {
        {"cifar10", CT_DATASET_CIFAR10},         {"cifar-10", CT_DATASET_CIFAR10},
        {"cifar_10", CT_DATASET_CIFAR10},        {"mnist", CT_DATASET_MNIST},
        {"fashion_mnist", CT_DATASET_FASHION_MNIST}, {"fashion-mnist", CT_DATASET_FASHION_MNIST},
        {"fashionmnist", CT_DATASET_FASHION_MNIST}, {"imagefolder", CT_DATASET_IMAGEFOLDER},
        {"image_folder", CT_DATASET_IMAGEFOLDER},
    };
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
        if (strcasecmp(name, aliases[i].alias) == 0) {
            if (out) *out = aliases[i].kind;
            return 0;
        }
    }
    return ct_error("dataset: unknown dataset '%s'; use cifar10, mnist or fashion_mnist, or "
                    "imagefolder (your images in class subdirectories)", name);
}

const char *ct_dataset_name(ct_dataset_kind kind) {
    if (kind == CT_DATASET_IMAGEFOLDER) return "imagefolder";
    return (unsigned)kind < CT_NUM_DATASETS ? k_names[kind] : "unknown";
}

const char *ct_dataset_subdir(ct_dataset_kind kind) {
    if (kind == CT_DATASET_IMAGEFOLDER) return ".";
    return (unsigned)kind < CT_NUM_DATASETS ? k_subdirs[kind] : "unknown";
}

const char *ct_data_root(const char *dir) {
    if (dir && dir[0]) return dir;
    const char *env = getenv("CTORCH_DATA");
    if (env && env[0]) return env;
    return "data";
}

int ct_dataset_default_normalization(ct_dataset_kind kind, float *mean, float *std) {
    switch (kind) {
    case CT_DATASET_CIFAR10:
        for (int c = 0; c < 3; c++) {
            if (mean) mean[c] = 0.5f;
            if (std) std[c] = 0.5f;
        }
        return 3;
    case CT_DATASET_IMAGEFOLDER:
        for (int c = 0; c < 3; c++) {
            if (mean) mean[c] = ct_imagenet_mean[c];
            if (std) std[c] = ct_imagenet_std[c];
        }
        return 3;
    case CT_DATASET_MNIST:
    case CT_DATASET_FASHION_MNIST:
        if (mean) mean[0] = 0.1307f;
        if (std) std[0] = 0.3081f;
        return 1;
    default:
        return ct_error("dataset: unknown dataset kind %d", (int)kind);
    }
}

/* ------------------------------------------------------------------ paths */
char *ct_path_join(char *out, size_t n, const char *a, const char *b) {
    size_t la = strlen(a);
    if (la > 0 && a[la - 1] == '/')
        snprintf(out, n, "%s%s", a, b);
    else
        snprintf(out, n, "%s/%s", a, b);
    return out;
}

int ct_path_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int ct_path_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int64_t ct_file_size(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return -1;
    return (int64_t)st.st_size;
}

int ct_mkdir_p(const char *dir) {
    char buf[CT_PATH_MAX];
    size_t len = strlen(dir);
    if (len == 0 || len >= sizeof buf) return ct_error("mkdir: bad directory name '%s'", dir);
    memcpy(buf, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char saved = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return ct_error("cannot create directory %s: %s; check the path and its "
                                "permissions",
                                buf, strerror(errno));
            buf[i] = saved;
        }
    }
    if (!ct_path_is_dir(dir))
        return ct_error("cannot create directory %s: a file of that name is in the way", dir);
    return 0;
}

void ct_dataset_dir(char *out, size_t n, const char *root, ct_dataset_kind kind,
                    const char *marker) {
    ct_path_join(out, n, root, ct_dataset_subdir(kind));
    if (ct_path_is_dir(out)) return;
    if (marker) {
        char probe[CT_PATH_MAX];
        ct_path_join(probe, sizeof probe, root, marker);
        if (ct_path_is_file(probe)) {
            snprintf(out, n, "%s", root);
            return;
        }
        char gz[CT_PATH_MAX + 4];
        snprintf(gz, sizeof gz, "%s.gz", probe);
        if (ct_path_is_file(gz)) {
            snprintf(out, n, "%s", root);
            return;
        }
    }
}

/* ------------------------------------------------------------ datasets */
ct_dataset *ct_dataset_alloc(int64_t n, int c, int h, int w, int num_classes,
                             const char *name) {
    ct_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) return ct_error_null("dataset: out of memory");
    ds->n = n;
    ds->c = c;
    ds->h = h;
    ds->w = w;
    ds->num_classes = num_classes;
    snprintf(ds->name, sizeof ds->name, "%s", name ? name : "dataset");
    size_t img = (size_t)n * (size_t)c * (size_t)h * (size_t)w;
    ds->images = malloc(img ? img : 1);
    ds->labels = malloc(n ? (size_t)n * sizeof(int64_t) : 1);
    if (!ds->images || !ds->labels) {
        ct_dataset_free(ds);
        return ct_error_null("dataset %s: out of memory allocating %lld images of %dx%dx%d",
                             name ? name : "", (long long)n, c, h, w);
    }
    return ds;
}

ct_dataset *ct_dataset_from_memory(const uint8_t *images, const int64_t *labels, int64_t n,
                                   int c, int h, int w, int num_classes, const char *name) {
    if (n < 0 || c <= 0 || h <= 0 || w <= 0)
        return ct_error_null("dataset_from_memory: bad layout n=%lld c=%d h=%d w=%d; all must "
                             "be positive (n may be 0)",
                             (long long)n, c, h, w);
    if (n > 0 && !images) return ct_error_null("dataset_from_memory: images is NULL");
    if (num_classes <= 0)
        return ct_error_null("dataset_from_memory: num_classes must be positive, got %d",
                             num_classes);
    if (labels) {
        for (int64_t i = 0; i < n; i++)
            if (labels[i] < 0 || labels[i] >= num_classes)
                return ct_error_null("dataset_from_memory: label %lld of record %lld is "
                                     "outside [0, %d)",
                                     (long long)labels[i], (long long)i, num_classes);
    }
    ct_dataset *ds = ct_dataset_alloc(n, c, h, w, num_classes, name ? name : "memory");
    if (!ds) return NULL;
    if (n > 0) memcpy(ds->images, images, (size_t)n * c * h * w);
    for (int64_t i = 0; i < n; i++) ds->labels[i] = labels ? labels[i] : 0;
    return ds;
}

void ct_dataset_free(ct_dataset *ds) {
    if (!ds) return;
    if (ds->impl_free) ds->impl_free(ds->impl);
    free(ds->images);
    free(ds->labels);
    free(ds);
}

ct_dataset *ct_dataset_load(ct_dataset_kind kind, ct_split split, const char *dir,
                            int64_t limit) {
    switch (kind) {
    case CT_DATASET_CIFAR10: return ct_cifar10_load(dir, split, limit);
    case CT_DATASET_MNIST: return ct_mnist_load(dir, split, limit);
    case CT_DATASET_FASHION_MNIST: return ct_fashion_mnist_load(dir, split, limit);
    case CT_DATASET_IMAGEFOLDER: return ct_imagefolder_load(dir, split, NULL, limit);
    default:
        return ct_error_null("dataset: unknown dataset kind %d; use cifar10, mnist or "
                             "fashion_mnist",
                             (int)kind);
    }
}

/* ------------------------------------------------------------- gz files */
int ct_read_gz_file(const char *path, uint8_t **data, size_t *size) {
    *data = NULL;
    *size = 0;
    gzFile gz = gzopen(path, "rb");
    if (!gz) return ct_error("cannot open %s: %s", path, strerror(errno ? errno : ENOENT));
    gzbuffer(gz, 1 << 18);
    size_t cap = 1 << 20, len = 0;
    int64_t fsz = ct_file_size(path);
    if (fsz > 0 && (uint64_t)fsz > cap) cap = (size_t)fsz; /* plain files: one block */
    uint8_t *buf = malloc(cap);
    if (!buf) {
        gzclose(gz);
        return ct_error("reading %s: out of memory", path);
    }
    for (;;) {
        if (len == cap) {
            size_t ncap = cap * 2;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                gzclose(gz);
                return ct_error("reading %s: out of memory", path);
            }
            buf = nb;
            cap = ncap;
        }
        size_t want = cap - len;
        if (want > (1u << 30)) want = 1u << 30;
        int got = gzread(gz, buf + len, (unsigned)want);
        if (got < 0) {
            int zerr = 0;
            const char *msg = gzerror(gz, &zerr);
            ct_error("%s is corrupt or truncated (zlib: %s); delete it and download it "
                     "again",
                     path, msg ? msg : "read error");
            free(buf);
            gzclose(gz);
            return -1;
        }
        if (got == 0) {
            /* A gzip stream cut short reads as EOF without an error on some zlib
             * versions; gzclose_r then reports Z_BUF_ERROR. */
            break;
        }
        len += (size_t)got;
    }
    int rc = gzclose(gz);
    if (rc != Z_OK) {
        free(buf);
        return ct_error("%s is corrupt or truncated (the gzip stream ends early or fails "
                        "its CRC, zlib error %d); delete it and download it again",
                        path, rc);
    }
    *data = buf;
    *size = len;
    return 0;
}
