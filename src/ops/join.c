/* Joining ops: cat and stack (torch.cat, torch.stack).
 *
 * cat copies each input into its slice of a new contiguous output with the backend's
 * strided copy kernel; its backward hands each input the matching narrow of the
 * incoming gradient. stack = unsqueeze every input at dim, then cat. All inputs must
 * share dtype and device (no type promotion). */
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int dim;
    int64_t sizes[]; /* the inputs' sizes along dim */
} cat_ctx;

static int cat_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const cat_ctx *c = n->ctx;
    const int dim = c->dim;
    const int64_t *sizes = c->sizes;
    int64_t off = 0;
    for (int i = 0; i < n->n_inputs; i++) {
        if (ct_node_needs_grad(n, i)) {
            ct_tensor *v = ct_narrow(gy, dim, off, sizes[i]);
            if (!v) return -1;
            gx[i] = ct_contiguous(v);
            ct_free(v);
            if (!gx[i]) return -1;
        }
        off += sizes[i];
    }
    return 0;
}

/* Shared checks for cat and stack: non-empty list, no NULLs, same dtype/device/ndim. */
static int check_list(const char *op, ct_tensor *const *ts, int n) {
    if (!ts || n < 1)
        return ct_error("%s: expected a non-empty list of tensors (got n=%d)", op, n);
    for (int i = 0; i < n; i++)
        if (!ts[i]) return ct_error("%s: tensor %d of %d is NULL", op, i, n);
        else if (ct__check_tensor(ts[i], op)) return -1; /* a released tensor */
    const ct_tensor *t0 = ts[0];
    for (int i = 1; i < n; i++) {
        const ct_tensor *t = ts[i];
        if (t->dtype != t0->dtype)
            return ct_error("%s: tensor %d has dtype %s but tensor 0 has dtype %s; convert them "
                            "to one dtype with ct_to_dtype",
                            op, i, ct_dtype_name(t->dtype), ct_dtype_name(t0->dtype));
        if (!ct_same_device(t, t0)) {
            char d1[32], d2[32];
            ct_device_str(t->storage->device, d1, sizeof d1);
            ct_device_str(t0->storage->device, d2, sizeof d2);
            return ct_error("%s: tensor %d is on %s but tensor 0 is on %s; move them to one "
                            "device with ct_to_device",
                            op, i, d1, d2);
        }
        if (t->ndim != t0->ndim) {
            char b1[96], b2[96];
            return ct_error("%s: tensor %d %s has %d dims but tensor 0 %s has %d; all tensors "
                            "need the same number of dims",
                            op, i, ct_fmt_shape(t->shape, t->ndim, b1, sizeof b1), t->ndim,
                            ct_fmt_shape(t0->shape, t0->ndim, b2, sizeof b2), t0->ndim);
        }
    }
    return 0;
}

ct_tensor *ct_cat(ct_tensor *const *tensors, int n, int dim) {
    if (check_list("cat", tensors, n) != 0) return NULL;
    const ct_tensor *t0 = tensors[0];
    const int nd = t0->ndim;
    if (nd == 0)
        return ct_error_null("cat: zero-dimensional tensor (tensor 0) cannot be concatenated; "
                             "use ct_stack or ct_unsqueeze first");
    const int d = ct_wrap_dim(dim, nd, "cat");
    if (d < 0) return NULL;
    int64_t shape[CT_MAX_DIMS];
    memcpy(shape, t0->shape, sizeof(int64_t) * (size_t)nd);
    shape[d] = 0;
    for (int i = 0; i < n; i++) {
        const ct_tensor *t = tensors[i];
        for (int k = 0; k < nd; k++) {
            if (k != d && t->shape[k] != t0->shape[k]) {
                char b1[96], b2[96];
                return ct_error_null("cat: sizes of tensors must match except in dim %d, but "
                                     "tensor %d is %s and tensor 0 is %s (dim %d differs)",
                                     d, i, ct_fmt_shape(t->shape, nd, b1, sizeof b1),
                                     ct_fmt_shape(t0->shape, nd, b2, sizeof b2), k);
            }
        }
        shape[d] += t->shape[d];
    }
    int (*copy)(ct_tensor *, const ct_tensor *) = CT_KERNEL(t0, copy, "cat");
    if (!copy) return NULL;
    ct_tensor *y = ct_empty_on(shape, nd, t0->dtype, t0->storage->device);
    if (!y) return NULL;

    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        const ct_tensor *t = tensors[i];
        if (ct_numel(t) > 0) {
            ct_tensor *dst = ct_tensor_make(y->storage, y->dtype, t->shape, y->stride, nd,
                                            y->offset + off * y->stride[d]);
            int rc = dst ? copy(dst, t) : -1;
            ct_free(dst);
            if (rc != 0) {
                ct_free(y);
                return NULL;
            }
        }
        off += t->shape[d];
    }

    ct_node *node;
    y = ct_node_record("CatBackward", cat_backward, (const ct_tensor *const *)tensors, n, y, &node);
    if (node) {
        cat_ctx *c = ct_node_ctx_new(node, sizeof(cat_ctx) + sizeof(int64_t) * (size_t)n);
        if (!c) {
            ct_free(y);
            return NULL;
        }
        c->dim = d;
        for (int i = 0; i < n; i++) c->sizes[i] = tensors[i]->shape[d];
    }
    return y;
}

ct_tensor *ct_stack(ct_tensor *const *tensors, int n, int dim) {
    if (check_list("stack", tensors, n) != 0) return NULL;
    const ct_tensor *t0 = tensors[0];
    for (int i = 1; i < n; i++) {
        if (!ct_same_shape(tensors[i], t0)) {
            char b1[96], b2[96];
            return ct_error_null("stack: expects each tensor to be equal size, but got %s at "
                                 "entry 0 and %s at entry %d",
                                 ct_fmt_shape(t0->shape, t0->ndim, b1, sizeof b1),
                                 ct_fmt_shape(tensors[i]->shape, tensors[i]->ndim, b2, sizeof b2),
                                 i);
        }
    }
    if (t0->ndim + 1 > CT_MAX_DIMS)
        return ct_error_null("stack: inputs already have %d dims; the result would exceed "
                             "CT_MAX_DIMS=%d",
                             t0->ndim, CT_MAX_DIMS);
    const int d = ct_wrap_dim(dim, t0->ndim + 1, "stack");
    if (d < 0) return NULL;
    ct_tensor **us = calloc((size_t)n, sizeof(ct_tensor *));
    if (!us) return ct_error_null("stack: out of memory for %d inputs", n);
    ct_tensor *y = NULL;
    int i;
    for (i = 0; i < n; i++) {
        us[i] = ct_unsqueeze(tensors[i], d);
        if (!us[i]) break;
    }
    if (i == n) y = ct_cat(us, n, d);
    for (int j = 0; j < n; j++) ct_free(us[j]);
    free(us);
    return y;
}
