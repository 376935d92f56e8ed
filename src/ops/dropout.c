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

/* saved: 0 mask (x's dtype and shape, values 0 or 1/(1-p)). */
static int dropout_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    if (!ct_node_needs_grad(n, 0)) return 0;
    const ct_tensor *mask = ct_node_saved(n, 0);
    if (!mask) return -1;
    gx[0] = ct_mul(gy, mask);
    return gx[0] ? 0 : -1;
}

/* Fills mask in place: u -> (u > p) / (1 - p), with the device's unary kernels (p < 1). */
static int make_mask(ct_tensor *mask, double p) {
    int (*un)(ct_unop, ct_tensor *, const ct_tensor *, double, double) =
        CT_KERNEL(mask, unary, "dropout");
    if (!un) return -1;
    /* sign(u - p) is -1, 0 or 1; clamped to [0, 1] it is 1 exactly when u > p. */
    if (un(CT_UN_ADD_SCALAR, mask, mask, -p, 0.0) != 0 ||
        un(CT_UN_SIGN, mask, mask, 0.0, 0.0) != 0 ||
        un(CT_UN_CLAMP, mask, mask, 0.0, 1.0) != 0 ||
        un(CT_UN_MUL_SCALAR, mask, mask, 1.0 / (1.0 - p), 0.0) != 0)
        return -1;
    return 0;
}

ct_tensor *ct_dropout(const ct_tensor *x, double p, int training) {
    char b[96];
    if (!x) return ct_error_null("dropout: input is NULL");
    if (!(p >= 0.0 && p <= 1.0))
        return ct_error_null("dropout: probability has to be between 0 and 1, but got %g", p);
    if (!training || p == 0.0 || ct_numel(x) == 0) return ct_retain((ct_tensor *)x);
    if (x->dtype != CT_FLOAT32 && x->dtype != CT_FLOAT64)
        return ct_error_null("dropout: input %s has dtype %s; training dropout needs float32 "
                             "or float64 (convert with ct_to_dtype)",
                             ct_fmt_shape(x->shape, x->ndim, b, sizeof b),
                             ct_dtype_name(x->dtype));
    int (*bin)(ct_binop, ct_tensor *, const ct_tensor *, const ct_tensor *, double) =
        CT_KERNEL(x, binary, "dropout");
    if (!bin) return NULL;

    /* Random numbers are drawn on the host from the global generator. */
    ct_tensor *mask = NULL, *y = NULL;
    if (p >= 1.0) {
        mask = ct_zeros(x->shape, x->ndim, x->dtype);
    } else {
        mask = ct_rand(x->shape, x->ndim, x->dtype);
    }
    if (!mask) return NULL;
    if (x->storage->device.type != CT_CPU) {
        ct_tensor *m2 = ct_to_device(mask, x->storage->device);
        ct_free(mask);
        mask = m2;
        if (!mask) return NULL;
    }
    if (p < 1.0 && make_mask(mask, p) != 0) goto fail;
    y = ct_empty_on(x->shape, x->ndim, x->dtype, x->storage->device);
    if (!y || bin(CT_BIN_MUL, y, x, mask, 1.0) != 0) goto fail;
    ct_node *n;
    y = ct_node_record("DropoutBackward", dropout_backward, &x, 1, y, &n);
    if (n) ct_node_save(n, mask);
    ct_free(mask);
    return y;
fail:
    ct_free(mask);
    ct_free(y);
    return NULL;
}
