/* where (torch.where(cond, a, b)): a's elements where cond is true, b's elsewhere, the
 * three broadcast together; differentiable in a and b (the gradient goes to a where cond
 * is true, to b elsewhere, summed over the dims each was broadcast along). */
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

#include <string.h>

typedef struct {
    int cond; /* saved: the condition, as given (not expanded) */
} where_ctx;

/* A 0-dim zero of t's dtype on t's device. */
static ct_tensor *zero_like_scalar(const ct_tensor *t) {
    ct_tensor *z = ct_empty_on(NULL, 0, t->dtype, t->storage->device);
    if (z && ct_backend_of(z)->k.fill(z, 0) != 0) {
        ct_free(z);
        return NULL;
    }
    return z;
}

static int where_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const where_ctx *c = n->ctx;
    const ct_tensor *cond = ct_node_saved(n, c->cond);
    if (!cond) return -1;
    ct_tensor *zero = zero_like_scalar(gy);
    if (!zero) return -1;
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++) {
        if (!ct_node_needs_grad(n, i)) continue;
        ct_tensor *g = i == 0 ? ct_where(cond, gy, zero) : ct_where(cond, zero, gy);
        gx[i] = g ? ct_sum_to_shape(g, n->inputs[i].shape, n->inputs[i].ndim) : NULL;
        ct_free(g);
        rc = gx[i] ? 0 : -1;
    }
    ct_free(zero);
    return rc;
}

/* The shape of cond, a and b broadcast together (PyTorch's rules), or -1 naming them. */
static int broadcast3(const ct_tensor *const *t, int64_t *out, int *ndim) {
    int nd = 0;
    for (int k = 0; k < 3; k++) nd = t[k]->ndim > nd ? t[k]->ndim : nd;
    for (int i = 0; i < nd; i++) {
        int64_t s = 1;
        for (int k = 0; k < 3; k++) {
            int j = i - (nd - t[k]->ndim);
            int64_t sk = j >= 0 ? t[k]->shape[j] : 1;
            if (sk != 1 && s != 1 && sk != s) {
                char b0[96], b1[96], b2[96];
                return ct_error("where: shapes %s (cond), %s (a) and %s (b) cannot be broadcast "
                                "together (dimension %d: %lld vs %lld); sizes must match or be 1",
                                ct_shape_str(t[0], b0, sizeof b0), ct_shape_str(t[1], b1, sizeof b1),
                                ct_shape_str(t[2], b2, sizeof b2), i, (long long)s, (long long)sk);
            }
            if (sk != 1) s = sk;
        }
        out[i] = s;
    }
    *ndim = nd;
    return 0;
}

static int check_args(const ct_tensor *cond, const ct_tensor *a, const ct_tensor *b) {
    if (!cond || !a || !b)
        return ct_error("where: %s is NULL", !cond ? "cond" : !a ? "a" : "b");
    if (cond->dtype != CT_BOOL)
        return ct_error("where: cond has dtype %s; it must be bool (a comparison gives one: "
                        "ct_gt(x, y), ct_ne_scalar(t, 0), or ct_to_dtype(t, CT_BOOL))",
                        ct_dtype_name(cond->dtype));
    if (a->dtype != b->dtype)
        return ct_error("where: a and b have different dtypes (%s and %s); convert one with "
                        "ct_to_dtype", ct_dtype_name(a->dtype), ct_dtype_name(b->dtype));
    if (!ct_same_device(cond, a) || !ct_same_device(a, b))
        return ct_error("where: cond, a and b are not on one device; move them with "
                        "ct_to_device");
    return 0;
}

ct_tensor *ct_where(const ct_tensor *cond, const ct_tensor *a, const ct_tensor *b) {
    if (check_args(cond, a, b) != 0) return NULL;
    const ct_tensor *in[3] = {cond, a, b};
    int64_t shape[CT_MAX_DIMS];
    int nd = 0;
    if (broadcast3(in, shape, &nd) != 0) return NULL;
    int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_tensor *) =
        CT_KERNEL(a, where, "where");
    if (!k) return NULL;
    int prev = ct_set_grad_enabled(0); /* the broadcast views need no graph */
    ct_tensor *ec = ct_expand(cond, shape, nd), *ea = ct_expand(a, shape, nd);
    ct_tensor *eb = ct_expand(b, shape, nd);
    ct_set_grad_enabled(prev);
    ct_tensor *y = ec && ea && eb ? ct_empty_on(shape, nd, a->dtype, a->storage->device) : NULL;
    int rc = y ? k(y, ec, ea, eb) : -1;
    ct_free(ec), ct_free(ea), ct_free(eb);
    if (rc != 0) {
        ct_free(y);
        return NULL;
    }
    ct_node *n = NULL;
    y = ct_node_record("WhereBackward", where_backward, (const ct_tensor *[]){a, b}, 2, y, &n);
    if (n) CT_NODE_CTX(n, where_ctx)->cond = ct_node_save(n, cond);
    return y;
}
