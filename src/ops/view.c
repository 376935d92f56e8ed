/* View ops: new tensors over the same storage (no copy), differentiable. */
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

#include <stdlib.h>
#include <string.h>

/* ---- backward formulas ---- */
static int reshape_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    gx[0] = ct_reshape(gy, n->inputs[0].shape, n->inputs[0].ndim);
    return gx[0] ? 0 : -1;
}

typedef struct {
    int dims[CT_MAX_DIMS]; /* the permutation */
} permute_ctx;

typedef struct {
    int dim;
    int64_t start, end, step;
} slice_ctx;

static int permute_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const permute_ctx *c = n->ctx;
    int inv[CT_MAX_DIMS];
    for (int i = 0; i < gy->ndim; i++) inv[c->dims[i]] = i;
    gx[0] = ct_permute(gy, inv, gy->ndim);
    return gx[0] ? 0 : -1;
}

static int slice_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    ct_tensor *g = ct_empty_on(n->inputs[0].shape, n->inputs[0].ndim, gy->dtype, gy->storage->device);
    if (!g) return -1;
    ct_tensor *v = NULL;
    int rc = ct_backend_of(g)->k.fill(g, 0);
    const slice_ctx *c = n->ctx;
    if (rc == 0) v = ct_slice(g, c->dim, c->start, c->end, c->step);
    if (rc == 0 && v) rc = ct_backend_of(g)->k.copy(v, gy);
    else rc = -1;
    ct_free(v);
    if (rc) {
        ct_free(g);
        return -1;
    }
    gx[0] = g;
    return 0;
}

static int expand_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    gx[0] = ct_sum_to_shape(gy, n->inputs[0].shape, n->inputs[0].ndim);
    return gx[0] ? 0 : -1;
}

/* Makes `y` a differentiable view of `x`; ctx (size bytes, may be NULL) is copied into the
 * node as the backward's context. */
static ct_tensor *finish_view(const ct_tensor *x, ct_tensor *y, const char *name, ct_backward_fn fn,
                              const void *ctx, size_t size) {
    ct_node *n;
    y = ct_node_record(name, fn, &x, 1, y, &n);
    if (n && ctx) memcpy(ct_node_ctx_new(n, size), ctx, size); /* small: never fails */
    return y;
}

static ct_tensor *make_view(const ct_tensor *x, const int64_t *shape, const int64_t *stride, int ndim,
                            int64_t offset) {
    return ct_tensor_make(x->storage, x->dtype, shape, stride, ndim, offset);
}

/* PyTorch's computeStride: strides for viewing x as `shape` without a copy, or -1. */
static int view_strides(const ct_tensor *x, const int64_t *shape, int ndim, int64_t *out) {
    if (x->ndim == 0 || ct_numel(x) == 0) {
        ct_contiguous_strides(shape, ndim, out);
        return 0;
    }
    int view_d = ndim - 1;
    int64_t chunk_base_stride = x->stride[x->ndim - 1];
    int64_t tensor_numel = 1, view_numel = 1;
    for (int td = x->ndim - 1; td >= 0; td--) {
        tensor_numel *= x->shape[td];
        if (td == 0 || (x->shape[td - 1] != 1 && x->stride[td - 1] != tensor_numel * chunk_base_stride)) {
            while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
                out[view_d] = view_numel * chunk_base_stride;
                view_numel *= shape[view_d];
                view_d--;
            }
            if (view_numel != tensor_numel) return -1;
            if (td > 0) {
                chunk_base_stride = x->stride[td - 1];
                tensor_numel = 1;
                view_numel = 1;
            }
        }
    }
    return view_d == -1 ? 0 : -1;
}

/* Resolves one -1 and checks the element count. */
static int infer_shape(const ct_tensor *x, const int64_t *shape, int ndim, int64_t *out, const char *op) {
    char b1[96], b2[96];
    if (ndim < 0 || ndim > CT_MAX_DIMS) return ct_error("%s: %d dims requested (max %d)", op, ndim, CT_MAX_DIMS);
    int infer = -1;
    int64_t known = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == -1) {
            if (infer >= 0) return ct_error("%s: only one dimension can be -1", op);
            infer = i;
        } else if (shape[i] < 0) {
            return ct_error("%s: invalid size %lld at dimension %d", op, (long long)shape[i], i);
        } else known *= shape[i];
        out[i] = shape[i];
    }
    int64_t n = ct_numel(x);
    if (infer >= 0) {
        if (known == 0 || n % known != 0)
            return ct_error("%s: shape %s is invalid for input of size %lld (shape %s)", op,
                            ct_fmt_shape(shape, ndim, b1, sizeof b1), (long long)n,
                            ct_shape_str(x, b2, sizeof b2));
        out[infer] = n / known;
    } else if (known != n) {
        return ct_error("%s: shape %s is invalid for input of size %lld (shape %s)", op,
                        ct_fmt_shape(shape, ndim, b1, sizeof b1), (long long)n,
                        ct_shape_str(x, b2, sizeof b2));
    }
    return 0;
}

ct_tensor *ct_view(const ct_tensor *x, const int64_t *shape, int ndim) {
    if (!x) return ct_error_null("view: NULL tensor");
    if (ct__check_tensor(x, "view")) return NULL; /* a released tensor */
    int64_t sh[CT_MAX_DIMS], st[CT_MAX_DIMS];
    if (infer_shape(x, shape, ndim, sh, "view") != 0) return NULL;
    if (view_strides(x, sh, ndim, st) != 0) {
        char b1[96], b2[96];
        return ct_error_null("view: shape %s is not compatible with input of shape %s and its "
                             "strides (at least one dimension spans two contiguous subspaces); "
                             "use ct_reshape instead",
                             ct_fmt_shape(sh, ndim, b1, sizeof b1), ct_shape_str(x, b2, sizeof b2));
    }
    return finish_view(x, make_view(x, sh, st, ndim, x->offset), "ViewBackward", reshape_backward, NULL, 0);
}

ct_tensor *ct_reshape(const ct_tensor *x, const int64_t *shape, int ndim) {
    if (!x) return ct_error_null("reshape: NULL tensor");
    if (ct__check_tensor(x, "reshape")) return NULL; /* a released tensor */
    int64_t sh[CT_MAX_DIMS], st[CT_MAX_DIMS];
    if (infer_shape(x, shape, ndim, sh, "reshape") != 0) return NULL;
    if (view_strides(x, sh, ndim, st) == 0)
        return finish_view(x, make_view(x, sh, st, ndim, x->offset), "ViewBackward", reshape_backward, NULL, 0);
    ct_tensor *c = ct_contiguous(x);
    if (!c) return NULL;
    ct_tensor *r = ct_view(c, sh, ndim);
    ct_free(c);
    return r;
}

ct_tensor *ct_permute(const ct_tensor *x, const int *dims, int ndim) {
    if (!x) return ct_error_null("permute: NULL tensor");
    if (ct__check_tensor(x, "permute")) return NULL; /* a released tensor */
    char b[96];
    if (ndim != x->ndim)
        return ct_error_null("permute: %d dims given for a tensor of shape %s (%d dims)", ndim,
                             ct_shape_str(x, b, sizeof b), x->ndim);
    /* zeroed: GCC 12 cannot see that ndim == 0 leaves the arrays unread */
    int64_t sh[CT_MAX_DIMS] = {0}, st[CT_MAX_DIMS] = {0};
    permute_ctx c = {{0}};
    int seen[CT_MAX_DIMS] = {0};
    for (int i = 0; i < ndim; i++) {
        int d = ct_wrap_dim(dims[i], ndim, "permute");
        if (d < 0) return NULL;
        if (seen[d]) return ct_error_null("permute: dimension %d repeated", dims[i]);
        seen[d] = 1;
        sh[i] = x->shape[d];
        st[i] = x->stride[d];
        c.dims[i] = d;
    }
    return finish_view(x, make_view(x, sh, st, ndim, x->offset), "PermuteBackward", permute_backward, &c, sizeof c);
}

ct_tensor *ct_transpose(const ct_tensor *x, int d0, int d1) {
    if (!x) return ct_error_null("transpose: NULL tensor");
    if (ct__check_tensor(x, "transpose")) return NULL; /* a released tensor */
    if (x->ndim == 0) return finish_view(x, ct_alias(x), "ViewBackward", reshape_backward, NULL, 0);
    int a = ct_wrap_dim(d0, x->ndim, "transpose"), b = ct_wrap_dim(d1, x->ndim, "transpose");
    if (a < 0 || b < 0) return NULL;
    int perm[CT_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) perm[i] = i;
    perm[a] = b;
    perm[b] = a;
    return ct_permute(x, perm, x->ndim);
}

ct_tensor *ct_slice(const ct_tensor *x, int dim, int64_t start, int64_t end, int64_t step) {
    if (!x) return ct_error_null("slice: NULL tensor");
    if (ct__check_tensor(x, "slice")) return NULL; /* a released tensor */
    int d = ct_wrap_dim(dim, x->ndim, "slice");
    if (d < 0) return NULL;
    if (step <= 0) return ct_error_null("slice: step must be positive (got %lld)", (long long)step);
    int64_t size = x->shape[d];
    if (start < 0) start += size;
    if (end < 0) end += size;
    if (start < 0) start = 0;
    if (end > size) end = size;
    if (start > size) start = size;
    if (end < start) end = start;
    int64_t sh[CT_MAX_DIMS], st[CT_MAX_DIMS];
    memcpy(sh, x->shape, sizeof sh);
    memcpy(st, x->stride, sizeof st);
    sh[d] = (end - start + step - 1) / step;
    st[d] = x->stride[d] * step;
    slice_ctx c = {d, start, end, step};
    return finish_view(x, make_view(x, sh, st, x->ndim, x->offset + start * x->stride[d]),
                       "SliceBackward", slice_backward, &c, sizeof c);
}

ct_tensor *ct_narrow(const ct_tensor *x, int dim, int64_t start, int64_t length) {
    if (!x) return ct_error_null("narrow: NULL tensor");
    if (ct__check_tensor(x, "narrow")) return NULL; /* a released tensor */
    int d = ct_wrap_dim(dim, x->ndim, "narrow");
    if (d < 0) return NULL;
    int64_t size = x->shape[d];
    if (start < 0) start += size;
    if (start < 0 || length < 0 || start + length > size) {
        char b[96];
        return ct_error_null("narrow: start %lld + length %lld exceeds dimension %d of size %lld "
                             "(shape %s)", (long long)start, (long long)length, dim, (long long)size,
                             ct_shape_str(x, b, sizeof b));
    }
    return ct_slice(x, d, start, start + length, 1);
}

ct_tensor *ct_expand(const ct_tensor *x, const int64_t *shape, int ndim) {
    if (!x) return ct_error_null("expand: NULL tensor");
    if (ct__check_tensor(x, "expand")) return NULL; /* a released tensor */
    char b1[96], b2[96];
    if (ndim < x->ndim || ndim > CT_MAX_DIMS)
        return ct_error_null("expand: the number of sizes (%d) must be at least the tensor's "
                             "dims (%d, shape %s)", ndim, x->ndim, ct_shape_str(x, b1, sizeof b1));
    int64_t sh[CT_MAX_DIMS], st[CT_MAX_DIMS];
    int off = ndim - x->ndim;
    for (int i = ndim - 1; i >= 0; i--) {
        int xi = i - off;
        int64_t want = shape[i];
        if (xi < 0) {
            if (want < 0) return ct_error_null("expand: -1 not allowed in a new leading dimension");
            sh[i] = want;
            st[i] = 0;
            continue;
        }
        if (want == -1) want = x->shape[xi];
        if (x->shape[xi] == want) {
            sh[i] = want;
            st[i] = x->stride[xi];
        } else if (x->shape[xi] == 1 && want >= 0) {
            sh[i] = want;
            st[i] = 0;
        } else {
            return ct_error_null("expand: the expanded size %lld must match the existing size "
                                 "%lld at dimension %d (tensor %s to %s); only size-1 dims expand",
                                 (long long)want, (long long)x->shape[xi], i,
                                 ct_shape_str(x, b1, sizeof b1), ct_fmt_shape(shape, ndim, b2, sizeof b2));
        }
    }
    return finish_view(x, make_view(x, sh, st, ndim, x->offset), "ExpandBackward", expand_backward, NULL, 0);
}

ct_tensor *ct_squeeze(const ct_tensor *x, int dim) {
    if (!x) return ct_error_null("squeeze: NULL tensor");
    if (ct__check_tensor(x, "squeeze")) return NULL; /* a released tensor */
    int d = ct_wrap_dim(dim, x->ndim, "squeeze");
    if (d < 0) return NULL;
    if (x->ndim == 0 || x->shape[d] != 1) return finish_view(x, ct_alias(x), "ViewBackward", reshape_backward, NULL, 0);
    int64_t sh[CT_MAX_DIMS], st[CT_MAX_DIMS];
    int k = 0;
    for (int i = 0; i < x->ndim; i++)
        if (i != d) {
            sh[k] = x->shape[i];
            st[k++] = x->stride[i];
        }
    return finish_view(x, make_view(x, sh, st, k, x->offset), "SqueezeBackward", reshape_backward, NULL, 0);
}

ct_tensor *ct_squeeze_all(const ct_tensor *x) {
    if (!x) return ct_error_null("squeeze: NULL tensor");
    if (ct__check_tensor(x, "squeeze")) return NULL; /* a released tensor */
    int64_t sh[CT_MAX_DIMS], st[CT_MAX_DIMS];
    int k = 0;
    for (int i = 0; i < x->ndim; i++)
        if (x->shape[i] != 1) {
            sh[k] = x->shape[i];
            st[k++] = x->stride[i];
        }
    return finish_view(x, make_view(x, sh, st, k, x->offset), "SqueezeBackward", reshape_backward, NULL, 0);
}

ct_tensor *ct_unsqueeze(const ct_tensor *x, int dim) {
    if (!x) return ct_error_null("unsqueeze: NULL tensor");
    if (ct__check_tensor(x, "unsqueeze")) return NULL; /* a released tensor */
    if (x->ndim >= CT_MAX_DIMS) return ct_error_null("unsqueeze: tensor already has %d dims (max)", CT_MAX_DIMS);
    int d = ct_wrap_dim(dim, x->ndim + 1, "unsqueeze");
    if (d < 0) return NULL;
    int64_t sh[CT_MAX_DIMS], st[CT_MAX_DIMS];
    int k = 0;
    for (int i = 0; i <= x->ndim; i++) {
        if (i == d) {
            sh[k] = 1;
            st[k++] = (d < x->ndim) ? x->shape[d] * x->stride[d] : 1;
        }
        if (i < x->ndim) {
            sh[k] = x->shape[i];
            st[k++] = x->stride[i];
        }
    }
    return finish_view(x, make_view(x, sh, st, x->ndim + 1, x->offset), "UnsqueezeBackward", reshape_backward, NULL, 0);
}

ct_tensor *ct_flatten(const ct_tensor *x, int start_dim, int end_dim) {
    if (!x) return ct_error_null("flatten: NULL tensor");
    if (ct__check_tensor(x, "flatten")) return NULL; /* a released tensor */
    if (x->ndim == 0) {
        int64_t one = 1;
        return ct_reshape(x, &one, 1);
    }
    int s = ct_wrap_dim(start_dim, x->ndim, "flatten"), e = ct_wrap_dim(end_dim, x->ndim, "flatten");
    if (s < 0 || e < 0) return NULL;
    if (s > e) return ct_error_null("flatten: start_dim %d comes after end_dim %d", start_dim, end_dim);
    int64_t sh[CT_MAX_DIMS];
    int k = 0;
    for (int i = 0; i < s; i++) sh[k++] = x->shape[i];
    int64_t m = 1;
    for (int i = s; i <= e; i++) m *= x->shape[i];
    sh[k++] = m;
    for (int i = e + 1; i < x->ndim; i++) sh[k++] = x->shape[i];
    return ct_reshape(x, sh, k);
}
