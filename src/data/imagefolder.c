/* ImageFolder: torchvision's folder-per-class layout, read lazily. Loading lists the files
 * (torchvision's order: classes sorted, each class's directories walked and sorted, file
 * names sorted) and keeps paths and labels; the DataLoader's workers decode and transform
 * each record through the dataset's fetch callback. */
#include "data/data_internal.h"

#include "core/error.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct {
    char **paths;   /* npaths file paths */
    int64_t npaths;
    char **classes; /* num_classes names */
    int nclasses;
    ct_imagefolder_opts o;
    int random_crop;
    int resize_size;
} imagefolder;

typedef struct {
    char **v;
    size_t n, cap;
} strvec;

static int sv_push(strvec *s, const char *str) {
    if (s->n == s->cap) {
        size_t nc = s->cap ? 2 * s->cap : 64;
        char **nv = realloc(s->v, nc * sizeof *nv);
        if (!nv) return -1;
        s->v = nv;
        s->cap = nc;
    }
    if (!(s->v[s->n] = strdup(str))) return -1;
    s->n++;
    return 0;
}

static void sv_free(strvec *s) {
    for (size_t i = 0; i < s->n; i++) free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof *s);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in dir that are directories (dirs != 0) or not (dirs == 0), sorted. Follows
 * symbolic links as os.scandir's is_dir() and os.walk(followlinks=True) do. */
static int list_dir(const char *dir, int dirs, strvec *out) {
    DIR *d = opendir(dir);
    if (!d) return ct_error("imagefolder: cannot read the directory %s", dir);
    struct dirent *e;
    char path[CT_PATH_MAX];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        ct_path_join(path, sizeof path, dir, e->d_name);
        if (ct_path_is_dir(path) == !!dirs && sv_push(out, e->d_name) != 0) {
            closedir(d);
            return ct_error("imagefolder: out of memory listing %s", dir);
        }
    }
    closedir(d);
    if (out->n) qsort(out->v, out->n, sizeof *out->v, cmp_str);
    return 0;
}

/* Every directory under dir (dir included), as os.walk lists them. */
static int walk_dirs(const char *dir, int depth, strvec *out) {
    if (depth > 32) return ct_error("imagefolder: %s is more than 32 directories deep (a "
                                    "symbolic link loop?)", dir);
    if (sv_push(out, dir) != 0) return ct_error("imagefolder: out of memory");
    strvec sub = {0};
    if (list_dir(dir, 1, &sub) != 0) return -1;
    char path[CT_PATH_MAX];
    for (size_t i = 0; i < sub.n; i++) {
        ct_path_join(path, sizeof path, dir, sub.v[i]);
        if (walk_dirs(path, depth + 1, out) != 0) {
            sv_free(&sub);
            return -1;
        }
    }
    sv_free(&sub);
    return 0;
}

/* torchvision's IMG_EXTENSIONS, compared case-insensitively */
static int has_image_ext(const char *name) {
    static const char *const ext[] = {".jpg", ".jpeg", ".png", ".ppm", ".bmp",
                                      ".pgm", ".tif", ".tiff", ".webp"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        size_t m = strlen(ext[i]);
        if (n >= m && strcasecmp(name + n - m, ext[i]) == 0) return 1;
    }
    return 0;
}

static void if_free(void *p) {
    imagefolder *f = p;
    if (!f) return;
    for (int64_t i = 0; i < f->npaths; i++) free(f->paths[i]);
    free(f->paths);
    for (int k = 0; k < f->nclasses; k++) free(f->classes[k]);
    free(f->classes);
    free(f);
}

static int if_fetch(const ct_dataset *ds, int64_t i, uint8_t *out, ct_data_rng *rng, char *err,
                    size_t nerr) {
    const imagefolder *f = ds->impl;
    ct_image img, t;
    if (ct_image_load(f->paths[i], &img, err, nerr) != 0)
        return f->o.on_bad_image == CT_BAD_IMAGE_SKIP ? 1 : -1;
    int S = ds->h, rc;
    if (f->random_crop) {
        int top, left, h, w;
        ct_random_resized_crop_params(img.h, img.w, 0.08, 1.0, 3.0 / 4.0, 4.0 / 3.0, rng, &top,
                                      &left, &h, &w);
        rc = ct_image_resized_crop(&img, top, left, h, w, S, &t);
    } else {
        ct_image r;
        rc = ct_image_resize_shorter(&img, f->resize_size, &r);
        if (rc == 0) {
            rc = ct_image_center_crop(&r, S, &t);
            ct_image_free(&r);
        }
    }
    ct_image_free(&img);
    if (rc != 0) {
        /* out of memory, or an image whose resize would be a bomb (extreme aspect ratio) */
        snprintf(err, nerr, "%s: %s", f->paths[i], ct_last_error());
        return f->o.on_bad_image == CT_BAD_IMAGE_SKIP ? 1 : -1;
    }
    size_t plane = (size_t)S * S;
    for (size_t p = 0; p < plane; p++) {
        out[p] = t.data[3 * p];
        out[plane + p] = t.data[3 * p + 1];
        out[2 * plane + p] = t.data[3 * p + 2];
    }
    ct_image_free(&t);
    return 0;
}

/* Appends the images of one class directory (walked as os.walk, sorted) to paths, and
 * `label` to labels (cap entries allocated; paths->n is the count). */
static int scan_class(const char *cdir, int64_t label, strvec *paths, int64_t **labels, size_t *cap) {
    strvec dirs = {0}, files = {0};
    char path[CT_PATH_MAX];
    int rc = walk_dirs(cdir, 0, &dirs);
    if (rc == 0) qsort(dirs.v, dirs.n, sizeof *dirs.v, cmp_str);
    for (size_t d = 0; rc == 0 && d < dirs.n; d++) {
        sv_free(&files);
        if ((rc = list_dir(dirs.v[d], 0, &files)) != 0) break;
        for (size_t k = 0; rc == 0 && k < files.n; k++) {
            if (!has_image_ext(files.v[k])) continue;
            ct_path_join(path, sizeof path, dirs.v[d], files.v[k]);
            if (paths->n == *cap) {
                size_t nc = *cap ? 2 * *cap : 1024;
                int64_t *nl = realloc(*labels, nc * sizeof *nl);
                if (!nl) {
                    rc = ct_error("imagefolder: out of memory listing %s", cdir);
                    break;
                }
                *labels = nl;
                *cap = nc;
            }
            if (sv_push(paths, path) != 0) rc = ct_error("imagefolder: out of memory listing %s", cdir);
            else (*labels)[paths->n - 1] = label;
        }
    }
    sv_free(&dirs);
    sv_free(&files);
    return rc;
}

ct_imagefolder_opts ct_imagefolder_default_opts(void) {
    ct_imagefolder_opts o = {224, 0, -1, CT_BAD_IMAGE_ERROR};
    return o;
}

ct_dataset *ct_imagefolder_load(const char *root_in, ct_split split, const ct_imagefolder_opts *oi,
                                int64_t limit) {
    ct_imagefolder_opts o = oi ? *oi : ct_imagefolder_default_opts();
    if (o.image_size < 1 || o.image_size > 8192)
        return ct_error_null("imagefolder: image size %d is outside 1..8192", o.image_size);
    if (o.resize_size < 0 || o.resize_size > 16384)
        return ct_error_null("imagefolder: resize size %d is outside 0..16384", o.resize_size);
    if (o.on_bad_image != CT_BAD_IMAGE_ERROR && o.on_bad_image != CT_BAD_IMAGE_SKIP)
        return ct_error_null("imagefolder: on_bad_image %d: use CT_BAD_IMAGE_ERROR or "
                             "CT_BAD_IMAGE_SKIP", o.on_bad_image);
    if (!ct_image_available())
        return ct_error_null("imagefolder: image decoding is not built in: install "
                             "libjpeg62-turbo-dev and libpng-dev (scripts/install-deps.sh) and "
                             "rebuild ctorch");
    const char *root = ct_data_root(root_in);
    const char *sname = split == CT_SPLIT_TRAIN ? "train" : "val";
    char train_dir[CT_PATH_MAX], dir[CT_PATH_MAX], path[CT_PATH_MAX];
    ct_path_join(train_dir, sizeof train_dir, root, "train");
    ct_path_join(dir, sizeof dir, root, sname);
    if (!ct_path_is_dir(dir))
        return ct_error_null("imagefolder: %s is not a directory; the layout is ROOT/train/<class>/"
                             "<image> and ROOT/val/<class>/<image> (torchvision's ImageFolder), "
                             "with ROOT given by --data-dir", dir);
    /* classes: train's (val uses the same indices) */
    strvec classes = {0}, split_classes = {0}, paths = {0};
    int64_t *labels = NULL;
    size_t cap = 0;
    ct_dataset *ds = NULL;
    imagefolder *f = NULL;
    const char *cdir = ct_path_is_dir(train_dir) ? train_dir : dir;
    if (list_dir(cdir, 1, &classes) != 0) goto fail;
    if (classes.n == 0) {
        ct_error("imagefolder: %s has no class subdirectories; put each class's images in "
                 "%s/<class name>/", cdir, cdir);
        goto fail;
    }
    if (list_dir(dir, 1, &split_classes) != 0) goto fail;
    for (size_t c = 0; c < split_classes.n; c++) {
        char **hit = bsearch(&split_classes.v[c], classes.v, classes.n, sizeof *classes.v, cmp_str);
        if (!hit) {
            ct_error("imagefolder: %s/%s is a class that %s does not have; every val class must "
                     "be a train class (the label indices come from train/)", dir,
                     split_classes.v[c], cdir);
            goto fail;
        }
        ct_path_join(path, sizeof path, dir, split_classes.v[c]);
        if (scan_class(path, hit - classes.v, &paths, &labels, &cap) != 0) goto fail;
    }
    if (paths.n == 0) {
        ct_error("imagefolder: no images (.jpg, .jpeg, .png) under %s/<class>/", dir);
        goto fail;
    }
    size_t n = paths.n;
    if (limit > 0 && (size_t)limit < n) n = (size_t)limit;
    char name[64];
    snprintf(name, sizeof name, "imagefolder/%s", sname);
    ds = ct_dataset_alloc(0, 3, o.image_size, o.image_size, (int)classes.n, name);
    f = calloc(1, sizeof *f);
    if (!ds || !f) goto oom;
    free(ds->images);
    ds->images = NULL;
    free(ds->labels);
    ds->labels = labels;
    labels = NULL;
    ds->n = (int64_t)n;
    f->o = o;
    f->random_crop = o.random_crop >= 0 ? o.random_crop : split == CT_SPLIT_TRAIN;
    f->resize_size = o.resize_size ? o.resize_size : o.image_size * 256 / 224;
    f->classes = classes.v;
    f->nclasses = (int)classes.n;
    for (size_t i = n; i < paths.n; i++) free(paths.v[i]);
    paths.n = n;
    ds->fetch = if_fetch;
    ds->impl = f;
    ds->impl_free = if_free;
    f->paths = paths.v; /* the strings now belong to the dataset */
    f->npaths = (int64_t)n;
    sv_free(&split_classes);
    return ds;
oom:
    ct_error("imagefolder: out of memory listing %s", dir);
fail:
    free(labels);
    free(f);
    ct_dataset_free(ds);
    sv_free(&classes);
    sv_free(&split_classes);
    sv_free(&paths);
    return NULL;
}

const char *ct_dataset_record_path(const ct_dataset *ds, int64_t i) {
    if (!ds || ds->fetch != if_fetch || i < 0 || i >= ds->n) return NULL;
    return ((const imagefolder *)ds->impl)->paths[i];
}

const char *ct_dataset_class_name(const ct_dataset *ds, int k) {
    if (!ds || ds->fetch != if_fetch || k < 0 || k >= ds->num_classes) return NULL;
    return ((const imagefolder *)ds->impl)->classes[k];
}
