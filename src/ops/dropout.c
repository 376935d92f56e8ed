/* dropout (torch.nn.functional.dropout).
 *
 * Training with 0 < p < 1: each element is kept with probability 1-p and scaled by
 * 1/(1-p); the mask comes from ct_rand, so it depends only on the seed, never on the
 * thread count. p == 1 gives zeros. Eval mode, p == 0 or an empty input return the
 * input itself (a new reference, like PyTorch), so gradients flow straight through.
 * The backward multiplies the incoming gradient by the saved (scaled) mask. */
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

#include <math.h>

typedef struct {
    int mask; /* saved mask: x's dtype and shape, values 0 or 1/(1-p) */
} dropout_ctx;

static int dropout_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    if (!ct_node_needs_grad(n, 0)) return 0;
    const ct_tensor *mask = ct_node_saved(n, ((const dropout_ctx *)n->ctx)->mask);
    if (!mask) return -1;
    gx[0] = ct_mul(gy, mask);
    return gx[0] ? 0 : -1;
}

ct_tensor *ct_dropout(const ct_tensor *x, double p, int training) {
    char b[96];
    if (!x) return ct_error_null("dropout: input is NULL");
    if (ct__check_tensor(x, "dropout")) return NULL; /* a released tensor */
    if (!(p >= 0.0 && p <= 1.0))
        return ct_error_null("dropout: probability has to be between 0 and 1, but got %g", p);
    if (!training || p == 0.0 || ct_numel(x) == 0) return ct_retain((ct_tensor *)x);
    if (!ct_is_floating(x->dtype))
        return ct_error_null("dropout: input %s has dtype %s; training dropout needs a "
                             "floating dtype (convert with ct_to_dtype)",
                             ct_fmt_shape(x->shape, x->ndim, b, sizeof b),
                             ct_dtype_name(x->dtype));
    int (*k)(ct_tensor *, ct_tensor *, const ct_tensor *, const ct_tensor *, double) =
        CT_KERNEL(x, dropout_forward, "dropout");
    if (!k) return NULL;
    const ct_device dev = x->storage->device;
    ct_tensor *mask = ct_empty_on(x->shape, x->ndim, x->dtype, dev);
    ct_tensor *y = ct_empty_on(x->shape, x->ndim, x->dtype, dev);
    ct_tensor *xc = ct_data_contiguous(x), *u = NULL, *ud = NULL;
    int rc = -1;
    if (mask && y && xc) {
        if (p >= 1.0) {
            rc = ct_fill_(mask, 0.0) == 0 && ct_fill_(y, 0.0) == 0 ? 0 : -1;
        } else {
            /* uniform draws from the global generator (on the host, so the mask depends on
             * the seed only, whatever the device and thread count) */
            u = ct_rand(x->shape, x->ndim,
                        ct_is_low_precision(x->dtype) ? CT_FLOAT32 : x->dtype);
            ud = u ? ct_to_device(u, dev) : NULL;
            rc = ud ? k(y, mask, xc, ud, p) : -1;
        }
    }
    ct_free(u);
    ct_free(ud);
    ct_free(xc);
    ct_node *n = NULL;
    if (rc == 0) y = ct_node_record("DropoutBackward", dropout_backward, &x, 1, y, &n);
    if (n) CT_NODE_CTX(n, dropout_ctx)->mask = ct_node_save(n, mask);
    ct_free(mask);
    if (rc != 0) {
        ct_free(y);
        return NULL;
    }
    return y;
}
