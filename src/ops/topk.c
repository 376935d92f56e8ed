/* topk (torch.topk): the k largest or smallest elements along a dim, with their int64
 * indices. Differentiable in the values: the gradient goes back to the chosen positions
 * (zero elsewhere). The order of the result is the kernels' (src/core/backend.h,
 * topk_forward): best first, NaN ranking above every number as in PyTorch, equal values
 * by the smaller index (PyTorch's order among equal values is its sort's, unspecified). */
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

typedef struct {
    int dim;
    int indices; /* saved: the indices, contiguous, the values' shape */
} topk_ctx;

static int topk_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    if (!ct_node_needs_grad(n, 0)) return 0;
    const topk_ctx *c = n->ctx;
    const ct_tensor *idx = ct_node_saved(n, c->indices);
    if (!idx) return -1;
    int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *, int) =
        CT_KERNEL(gy, topk_backward, "topk backward");
    const ct_edge *e = &n->inputs[0];
    ct_tensor *g = k ? ct_empty_on(e->shape, e->ndim, gy->dtype, gy->storage->device) : NULL;
    ct_tensor *gyc = g ? ct_contiguous(gy) : NULL;
    int rc = gyc ? k(g, gyc, idx, c->dim) : -1;
    ct_free(gyc);
    if (rc != 0) {
        ct_free(g);
        return -1;
    }
    gx[0] = g;
    return 0;
}

static int check_args(const ct_tensor *a, int64_t k, int dim, int *d) {
    if (!a) return ct_error("topk: NULL tensor argument");
    if (a->dtype != CT_FLOAT32 && a->dtype != CT_FLOAT64 && a->dtype != CT_INT64)
        return ct_error("topk: dtype %s is not supported (float32, float64 or int64); convert "
                        "with ct_to_dtype", ct_dtype_name(a->dtype));
    if ((*d = ct_wrap_dim(dim, a->ndim, "topk")) < 0) return -1;
    const int64_t n = a->ndim ? a->shape[*d] : 1;
    if (k < 0 || k > n) {
        char b[96];
        return ct_error("topk: k = %lld is out of range for dimension %d of size %lld (tensor "
                        "%s); k must be in [0, %lld]",
                        (long long)k, dim, (long long)n, ct_shape_str(a, b, sizeof b),
                        (long long)n);
    }
    return 0;
}

/* The op on a tensor with at least one dim (ct_topk views a 0-dim one as [1]). */
static ct_tensor *topk_nd(const ct_tensor *a, int64_t k, int d, int largest, ct_tensor **ix) {
    int (*kern)(ct_tensor *, ct_tensor *, const ct_tensor *, int, int64_t, int) =
        CT_KERNEL(a, topk_forward, "topk");
    if (!kern) return NULL;
    int64_t sh[CT_MAX_DIMS];
    for (int i = 0; i < a->ndim; i++) sh[i] = i == d ? k : a->shape[i];
    ct_tensor *ac = ct_data_contiguous(a);
    ct_tensor *v = ac ? ct_empty_on(sh, a->ndim, a->dtype, a->storage->device) : NULL;
    ct_tensor *i = v ? ct_empty_on(sh, a->ndim, CT_INT64, a->storage->device) : NULL;
    int rc = i ? kern(v, i, ac, d, k, largest) : -1;
    ct_free(ac);
    ct_node *n = NULL;
    if (rc == 0) v = ct_node_record("TopkBackward", topk_backward, &a, 1, v, &n);
    if (n) *CT_NODE_CTX(n, topk_ctx) = (topk_ctx){d, ct_node_save(n, i)};
    if (rc != 0 || !v) {
        ct_free(v);
        ct_free(i);
        return NULL;
    }
    *ix = i;
    return v;
}

ct_tensor *ct_topk(const ct_tensor *a, int64_t k, int dim, int largest, int sorted,
                   ct_tensor **indices) {
    (void)sorted; /* the result is always sorted (PyTorch leaves the order open when 0) */
    if (indices) *indices = NULL;
    int d = 0;
    if (check_args(a, k, dim, &d) != 0) return NULL;
    ct_tensor *ix = NULL, *v;
    if (a->ndim == 0) { /* as [1], the result back to [] (k = 1) or [0] */
        int64_t one = 1;
        ct_tensor *a1 = ct_reshape(a, &one, 1);
        ct_tensor *v1 = a1 ? topk_nd(a1, k, 0, largest, &ix) : NULL;
        v = v1 ? ct_reshape(v1, &k, k == 1 ? 0 : 1) : NULL;
        ct_tensor *i0 = v ? ct_reshape(ix, &k, k == 1 ? 0 : 1) : NULL;
        ct_free(a1), ct_free(v1), ct_free(ix);
        ix = i0;
        if (!ix) {
            ct_free(v);
            v = NULL;
        }
    } else {
        v = topk_nd(a, k, d, largest, &ix);
    }
    if (v && indices) *indices = ix;
    else ct_free(ix);
    return v;
}
