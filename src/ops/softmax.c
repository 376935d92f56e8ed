/* softmax and log_softmax over one dimension (torch.softmax / torch.log_softmax).
 * Backward: softmax gx = y * (gy - sum(gy * y)); log_softmax gx = gy - exp(y) * sum(gy),
 * both from the saved output y. */
#include "core/autocast.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

typedef struct {
    int dim, is_log;
    int y; /* the saved output */
} softmax_ctx;

static int softmax_backward_fn(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const softmax_ctx *c = n->ctx;
    const int dim = c->dim, is_log = c->is_log;
    const char *op = is_log ? "log_softmax backward" : "softmax backward";
    if (!ct_node_needs_grad(n, 0)) return 0;
    const ct_tensor *y = ct_node_saved(n, c->y);
    if (!y) return -1;
    int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *, int, int) =
        CT_KERNEL(y, softmax_backward, op);
    if (!k) return -1;
    ct_tensor *gyc = ct_contiguous(gy);
    if (!gyc) return -1;
    ct_tensor *g = ct_empty_on(y->shape, y->ndim, y->dtype, y->storage->device);
    if (!g || k(g, gyc, y, dim, is_log) != 0) {
        ct_free(gyc);
        ct_free(g);
        return -1;
    }
    ct_free(gyc);
    gx[0] = g;
    return 0;
}

static ct_tensor *softmax_impl(const ct_tensor *a, int dim, int is_log) {
    const char *op = is_log ? "log_softmax" : "softmax";
    if (!a) return ct_error_null("%s: input is NULL", op);
    if (ct__check_tensor(a, op)) return NULL; /* a released tensor */
    char sb[128];
    if (!ct_is_floating(a->dtype))
        return ct_error_null("%s: input %s has dtype %s; softmax needs a floating tensor "
                             "(convert it with ct_to_dtype(x, CT_FLOAT32))",
                             op, ct_fmt_shape(a->shape, a->ndim, sb, sizeof sb),
                             ct_dtype_name(a->dtype));
    const int nd = a->ndim > 0 ? a->ndim : 1; /* a 0-d tensor accepts dim 0 or -1 */
    if (dim < -nd || dim >= nd)
        return ct_error_null("%s: dim %d is out of range for input %s (%d-D); expected a dim "
                             "in [%d, %d]",
                             op, dim, ct_fmt_shape(a->shape, a->ndim, sb, sizeof sb), a->ndim,
                             -nd, nd - 1);
    const int d = dim < 0 ? dim + nd : dim;
    int (*k)(ct_tensor *, const ct_tensor *, int, int) = CT_KERNEL(a, softmax_forward, op);
    if (!k) return NULL;
    ct_tensor *x = ct_contiguous(a);
    if (!x) return NULL;
    ct_tensor *y = ct_empty_on(a->shape, a->ndim, a->dtype, a->storage->device);
    if (!y || k(y, x, d, is_log) != 0) {
        ct_free(x);
        ct_free(y);
        return NULL;
    }
    ct_free(x);
    ct_node *n;
    y = ct_node_record(is_log ? "LogSoftmaxBackward" : "SoftmaxBackward", softmax_backward_fn, &a,
                       1, y, &n);
    if (n) *CT_NODE_CTX(n, softmax_ctx) = (softmax_ctx){d, is_log, ct_node_save(n, y)};
    return y;
}

ct_tensor *ct_softmax(const ct_tensor *a, int dim) {
    CT_AUTOCAST(CT_AC_SOFTMAX, softmax_impl(ac[0], dim, 0), a);
    return softmax_impl(a, dim, 0);
}

ct_tensor *ct_log_softmax(const ct_tensor *a, int dim) {
    CT_AUTOCAST(CT_AC_LOG_SOFTMAX, softmax_impl(ac[0], dim, 1), a);
    return softmax_impl(a, dim, 1);
}
