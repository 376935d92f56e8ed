/* Reductions: sum, mean, max (values + indices), max over all, argmax, any, all. */
#include "core/autocast.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

#include <string.h>

/* Fills mask[] from dims (all dims when ndims == 0); output shape with keepdim. */
static int reduce_dims(const ct_tensor *a, const int *dims, int ndims, int *mask, int64_t *kshape,
                       const char *op) {
    memset(mask, 0, sizeof(int) * CT_MAX_DIMS);
    if (!dims || ndims == 0) {
        for (int d = 0; d < a->ndim; d++) mask[d] = 1;
    } else {
        for (int i = 0; i < ndims; i++) {
            int d = ct_wrap_dim(dims[i], a->ndim, op);
            if (d < 0) return -1;
            if (a->ndim == 0) continue;
            if (mask[d]) return ct_error("%s: dimension %d appears twice in the list", op, dims[i]);
            mask[d] = 1;
        }
    }
    for (int d = 0; d < a->ndim; d++) kshape[d] = mask[d] ? 1 : a->shape[d];
    return 0;
}

/* Drops reduced dims from a keepdim result (a view). */
static ct_tensor *squeeze_mask(ct_tensor *t, const int *mask, int ndim) {
    int64_t sh[CT_MAX_DIMS];
    int k = 0;
    for (int d = 0; d < ndim; d++)
        if (!mask[d]) sh[k++] = t->shape[d];
    ct_tensor *r = ct_reshape(t, sh, k);
    ct_free(t);
    return r;
}

typedef struct {
    int64_t kshape[CT_MAX_DIMS]; /* the keepdim output shape */
    double scale;                /* 1 for sum, 1/count for mean */
} sum_ctx;

static int sum_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    /* gy reshaped to the keepdim shape, expanded back to the input. */
    const sum_ctx *c = n->ctx;
    int nd = n->inputs[0].ndim;
    ct_tensor *g = ct_reshape(gy, c->kshape, nd);
    if (!g) return -1;
    ct_tensor *e = ct_expand(g, n->inputs[0].shape, nd);
    ct_free(g);
    if (!e) return -1;
    if (c->scale != 1.0) {
        gx[0] = ct_mul_scalar(e, c->scale);
        ct_free(e);
    } else {
        gx[0] = ct_contiguous(e);
        ct_free(e);
    }
    return gx[0] ? 0 : -1;
}

static ct_tensor *sum_mean(const ct_tensor *a, const int *dims, int ndims, int keepdim, int mean) {
    const char *op = mean ? "mean" : "sum";
    if (!a) return ct_error_null("%s: NULL tensor argument", op);
    if (ct__check_tensor(a, op)) return NULL; /* a released tensor */
    if (mean && !ct_is_floating(a->dtype))
        return ct_error_null("mean: needs a floating-point tensor, got %s (as in PyTorch); "
                             "convert first, e.g. ct_mean(ct_to_dtype(t, CT_FLOAT32), ...)%s",
                             ct_dtype_name(a->dtype),
                             a->dtype == CT_BOOL ? " for the fraction of true elements" : "");
    int mask[CT_MAX_DIMS];
    int64_t ks[CT_MAX_DIMS];
    if (reduce_dims(a, dims, ndims, mask, ks, op) != 0) return NULL;
    /* the sum of a bool tensor counts its true elements: int64, as in PyTorch */
    ct_dtype odt = a->dtype == CT_BOOL ? CT_INT64 : a->dtype;
    ct_tensor *y = ct_empty_on(ks, a->ndim, odt, a->storage->device);
    int (*k)(ct_redop, ct_tensor *, ct_tensor *, const ct_tensor *, const int *) = y ? CT_KERNEL(y, reduce, op) : NULL;
    if (!k || k(mean ? CT_RED_MEAN : CT_RED_SUM, y, NULL, a, mask) != 0) {
        ct_free(y);
        return NULL;
    }
    int64_t count = 1;
    for (int d = 0; d < a->ndim; d++)
        if (mask[d]) count *= a->shape[d];
    ct_node *n;
    y = ct_node_record(mean ? "MeanBackward" : "SumBackward", sum_backward, &a, 1, y, &n);
    if (!y) return NULL;
    if (n) {
        sum_ctx *c = CT_NODE_CTX(n, sum_ctx);
        memcpy(c->kshape, ks, sizeof(int64_t) * (size_t)a->ndim);
        c->scale = mean ? 1.0 / (double)(count ? count : 1) : 1.0;
    }
    return keepdim ? y : squeeze_mask(y, mask, a->ndim);
}

ct_tensor *ct_sum(const ct_tensor *a, const int *dims, int ndims, int keepdim) {
    CT_AUTOCAST(CT_AC_SUM, sum_mean(ac[0], dims, ndims, keepdim, 0), a);
    return sum_mean(a, dims, ndims, keepdim, 0);
}
ct_tensor *ct_mean(const ct_tensor *a, const int *dims, int ndims, int keepdim) {
    return sum_mean(a, dims, ndims, keepdim, 1);
}

typedef struct {
    int dim;
    ct_device dev; /* the input's device */
    int indices;   /* saved argmax */
} max_ctx;

/* gx = zeros; gx.scatter_(dim, idx, gy) */
static int max_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const max_ctx *c = n->ctx;
    const ct_tensor *idx = ct_node_saved(n, c->indices);
    if (!idx) return -1;
    int dim = c->dim;
    ct_tensor *gyc = ct_contiguous(gy);
    ct_tensor *ic = ct_to_device(idx, ct_cpu());
    ct_tensor *gyh = gyc ? ct_to_device(gyc, ct_cpu()) : NULL;
    ct_tensor *gyd = gyh ? ct_to_dtype(gyh, CT_FLOAT64) : NULL;
    ct_tensor *g = ct_zeros(n->inputs[0].shape, n->inputs[0].ndim, CT_FLOAT64);
    int rc = -1;
    if (ic && gyd && g) {
        ct_tensor *icc = ct_contiguous(ic);
        const int64_t *ixp = ct_data(icc);
        const double *gp = ct_data(gyd);
        double *op = ct_data(g);
        int nd = g->ndim;
        int64_t outer = 1, inner = 1, size = nd ? g->shape[dim] : 1;
        for (int d = 0; d < dim; d++) outer *= g->shape[d];
        for (int d = dim + 1; d < nd; d++) inner *= g->shape[d];
        for (int64_t o = 0; o < outer; o++)
            for (int64_t i = 0; i < inner; i++) {
                int64_t j = ixp[o * inner + i];
                op[(o * size + j) * inner + i] += gp[o * inner + i];
            }
        ct_free(icc);
        rc = 0;
    }
    if (rc == 0) {
        ct_tensor *gd = ct_to_dtype(g, n->inputs[0].dtype);
        gx[0] = gd ? ct_to_device(gd, c->dev) : NULL;
        ct_free(gd);
        rc = gx[0] ? 0 : -1;
    }
    ct_free(gyc);
    ct_free(ic);
    ct_free(gyh);
    ct_free(gyd);
    ct_free(g);
    return rc;
}

ct_tensor *ct_max(const ct_tensor *a, int dim, int keepdim, ct_tensor **indices) {
    if (indices) *indices = NULL;
    if (!a) return ct_error_null("max: NULL tensor argument");
    if (ct__check_tensor(a, "max")) return NULL; /* a released tensor */
    int d = ct_wrap_dim(dim, a->ndim, "max");
    if (d < 0) return NULL;
    if (a->ndim && a->shape[d] == 0)
        return ct_error_null("max: cannot reduce over dimension %d of size 0", dim);
    int mask[CT_MAX_DIMS] = {0};
    int64_t ks[CT_MAX_DIMS];
    if (a->ndim) mask[d] = 1;
    for (int i = 0; i < a->ndim; i++) ks[i] = mask[i] ? 1 : a->shape[i];
    ct_tensor *y = ct_empty_on(ks, a->ndim, a->dtype, a->storage->device);
    ct_tensor *ix = ct_empty_on(ks, a->ndim, CT_INT64, a->storage->device);
    int (*k)(ct_redop, ct_tensor *, ct_tensor *, const ct_tensor *, const int *) = y ? CT_KERNEL(y, reduce, "max") : NULL;
    if (!ix || !k || k(CT_RED_MAX, y, ix, a, mask) != 0) {
        ct_free(y);
        ct_free(ix);
        return NULL;
    }
    ct_node *n;
    y = ct_node_record("MaxBackward", max_backward, &a, 1, y, &n);
    if (!y) {
        ct_free(ix);
        return NULL;
    }
    if (n) *CT_NODE_CTX(n, max_ctx) = (max_ctx){d, a->storage->device, ct_node_save(n, ix)};
    if (!keepdim) {
        y = squeeze_mask(y, mask, a->ndim);
        ix = squeeze_mask(ix, mask, a->ndim);
    }
    if (indices) *indices = ix;
    else ct_free(ix);
    return y;
}

ct_tensor *ct_max_all(const ct_tensor *a) {
    if (!a) return ct_error_null("max: NULL tensor argument");
    if (ct__check_tensor(a, "max")) return NULL; /* a released tensor */
    if (ct_numel(a) == 0) return ct_error_null("max: the tensor is empty; max of nothing is undefined");
    int64_t n = ct_numel(a);
    ct_tensor *f = ct_reshape(a, &n, 1);
    if (!f) return NULL;
    ct_tensor *m = ct_max(f, 0, 0, NULL);
    ct_free(f);
    return m;
}

ct_tensor *ct_argmax(const ct_tensor *a, int dim, int keepdim) {
    ct_tensor *idx = NULL;
    int prev = ct_set_grad_enabled(0);
    ct_tensor *v = ct_max(a, dim, keepdim, &idx);
    ct_set_grad_enabled(prev);
    if (!v) {
        if (ct_last_error()[0]) ct_error_context("argmax");
        return NULL;
    }
    ct_free(v);
    return idx;
}

/* any / all over dims (all dims when ndims == 0) into bool: no gradient. */
static ct_tensor *any_all(const ct_tensor *a, const int *dims, int ndims, int keepdim,
                          ct_redop op, const char *name) {
    if (!a) return ct_error_null("%s: NULL tensor argument", name);
    if (a->dtype != CT_BOOL && !ct_is_floating(a->dtype) && a->dtype != CT_INT64)
        return ct_error_null("%s: dtype %s is not supported (bool, a floating dtype or int64); "
                             "convert with ct_to_dtype", name, ct_dtype_name(a->dtype));
    int mask[CT_MAX_DIMS];
    int64_t ks[CT_MAX_DIMS];
    if (reduce_dims(a, dims, ndims, mask, ks, name) != 0) return NULL;
    ct_tensor *y = ct_empty_on(ks, a->ndim, CT_BOOL, a->storage->device);
    int (*k)(ct_redop, ct_tensor *, ct_tensor *, const ct_tensor *, const int *) =
        y ? CT_KERNEL(y, reduce, name) : NULL;
    if (!k || k(op, y, NULL, a, mask) != 0) {
        ct_free(y);
        return NULL;
    }
    return keepdim ? y : squeeze_mask(y, mask, a->ndim);
}

ct_tensor *ct_any(const ct_tensor *a, const int *dims, int ndims, int keepdim) {
    return any_all(a, dims, ndims, keepdim, CT_RED_ANY, "any");
}
ct_tensor *ct_all(const ct_tensor *a, const int *dims, int ndims, int keepdim) {
    return any_all(a, dims, ndims, keepdim, CT_RED_ALL, "all");
}
