/* Normalisation ops: batch_norm and layer_norm (torch.nn.functional semantics).
 *
 * batch_norm: input [N, C] or [N, C, *]. Training normalises with the batch statistics
 * (biased variance) and, when running stats are given, updates them in place with
 * running = (1 - momentum) * running + momentum * stat (unbiased variance), bumping
 * their version counters. Eval normalises with the running statistics.
 * layer_norm: normalises over the trailing dims equal to normalized_shape.
 * weight and bias are optional in both. Gradients flow to input, weight and bias. */
#include "core/autocast.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

#include <math.h>
#include <string.h>

/* Hands the three gradients (input, weight, bias) to the engine, or frees them when the
 * kernel failed. */
static int hand_out_grads(int rc, ct_tensor *g0, ct_tensor *g1, ct_tensor *g2, ct_tensor **gx) {
    if (rc != 0) {
        ct_free(g0);
        ct_free(g1);
        ct_free(g2);
        return -1;
    }
    gx[0] = g0;
    gx[1] = g1;
    gx[2] = g2;
    return 0;
}

/* Checks that an optional per-channel/normalised parameter matches x's dtype and
 * device and has exactly `shape`. */
static int check_param(const char *op, const char *what, const ct_tensor *p, const ct_tensor *x,
                       const int64_t *shape, int ndim) {
    char b1[96], b2[96], b3[96];
    if (!p) return 0;
    if (ct__check_tensor(p, op)) return -1; /* a released tensor */
    if (p->dtype != x->dtype && !(ct_is_low_precision(x->dtype) && p->dtype == CT_FLOAT32))
        return ct_error("%s: %s has dtype %s but input has dtype %s; convert it with ct_to_dtype",
                        op, what, ct_dtype_name(p->dtype), ct_dtype_name(x->dtype));
    if (!ct_same_device(p, x)) {
        char d1[32], d2[32];
        ct_device_str(p->storage->device, d1, sizeof d1);
        ct_device_str(x->storage->device, d2, sizeof d2);
        return ct_error("%s: %s is on %s but input is on %s; move it with ct_to_device", op, what,
                        d1, d2);
    }
    if (p->ndim != ndim || memcmp(p->shape, shape, sizeof(int64_t) * (size_t)ndim) != 0)
        return ct_error("%s: %s has shape %s but must be %s for input %s", op, what,
                        ct_fmt_shape(p->shape, p->ndim, b1, sizeof b1),
                        ct_fmt_shape(shape, ndim, b2, sizeof b2),
                        ct_fmt_shape(x->shape, x->ndim, b3, sizeof b3));
    return 0;
}

/* The dtype of a norm's saved statistics: the parameters' (float32 beside a bf16 or
 * float16 input, as PyTorch's mixed-type norms), else the input's; float32 for a
 * low-precision input without parameters. */
static ct_dtype stat_dtype(const ct_tensor *x, const ct_tensor *w, const ct_tensor *rm) {
    if (w) return w->dtype;
    if (rm) return rm->dtype;
    return ct_is_low_precision(x->dtype) ? CT_FLOAT32 : x->dtype;
}

static int check_floating_input(const char *op, const ct_tensor *x) {
    char b[96];
    if (!x) return ct_error("%s: input is NULL", op);
    if (ct__check_tensor(x, op)) return -1; /* a released tensor */
    if (!ct_is_floating(x->dtype))
        return ct_error("%s: input %s has dtype %s; normalisation needs a floating dtype "
                        "(convert with ct_to_dtype)",
                        op, ct_fmt_shape(x->shape, x->ndim, b, sizeof b), ct_dtype_name(x->dtype));
    return 0;
}

/* ================================================================== batch_norm */
/* The backward context of batch_norm and layer_norm: the saved contiguous input, the
 * statistics (batch_norm: save_mean, save_invstd; layer_norm: mean, rstd [M]) and the
 * weight (slot -1 when there is none). */
typedef struct {
    int x, mean, invstd, weight;
    int training;     /* batch_norm */
    int64_t M, N;     /* layer_norm: rows and row length */
    int nnorm;        /* layer_norm: dims of normalized_shape */
} norm_ctx;

static norm_ctx *save_norm(ct_node *n, const ct_tensor *x, const ct_tensor *mean,
                           const ct_tensor *invstd, const ct_tensor *weight) {
    norm_ctx *c = CT_NODE_CTX(n, norm_ctx);
    c->x = ct_node_save(n, x);
    c->mean = ct_node_save(n, mean);
    c->invstd = ct_node_save(n, invstd);
    c->weight = weight ? ct_node_save(n, weight) : -1;
    return c;
}

/* The saved tensors of a norm node; -1 when one was modified in place. */
static int load_norm(ct_node *n, const ct_tensor **x, const ct_tensor **mean,
                     const ct_tensor **invstd, const ct_tensor **w) {
    const norm_ctx *c = n->ctx;
    *x = ct_node_saved(n, c->x);
    *mean = ct_node_saved(n, c->mean);
    *invstd = ct_node_saved(n, c->invstd);
    *w = c->weight >= 0 ? ct_node_saved(n, c->weight) : NULL;
    return *x && *mean && *invstd && (c->weight < 0 || *w) ? 0 : -1;
}

static int batch_norm_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const norm_ctx *c = n->ctx;
    const ct_tensor *x, *mean, *invstd, *w;
    if (load_norm(n, &x, &mean, &invstd, &w) != 0) return -1;
    int (*kern)(ct_tensor *, ct_tensor *, ct_tensor *, const ct_tensor *, const ct_tensor *,
                const ct_tensor *, const ct_tensor *, const ct_tensor *, int) =
        CT_KERNEL(x, batch_norm_backward, "batch_norm backward");
    if (!kern) return -1;
    ct_tensor *gyc = ct_contiguous(gy);
    if (!gyc) return -1;
    const ct_device dev = x->storage->device;
    const int64_t C = x->shape[1];
    ct_tensor *g0 = ct_node_needs_grad(n, 0) ? ct_empty_on(x->shape, x->ndim, x->dtype, dev) : NULL;
    const ct_dtype pdt = n->inputs[1].dtype; /* the parameters' (float32 for a bf16 input) */
    ct_tensor *g1 = ct_node_needs_grad(n, 1) && w ? ct_empty_on(&C, 1, pdt, dev) : NULL;
    ct_tensor *g2 = ct_node_needs_grad(n, 2) ? ct_empty_on(&C, 1, n->inputs[2].dtype, dev) : NULL;
    int rc = -1;
    if ((ct_node_needs_grad(n, 0) && !g0) || (ct_node_needs_grad(n, 1) && w && !g1) ||
        (ct_node_needs_grad(n, 2) && !g2))
        goto done;
    rc = kern(g0, g1, g2, gyc, x, w, mean, invstd, c->training);
done:
    ct_free(gyc);
    return hand_out_grads(rc, g0, g1, g2, gx);
}

/* Runs the forward kernel with contiguous running stats, copying back when the
 * caller's are strided. */
static int run_bn_forward(ct_tensor *y, ct_tensor *smean, ct_tensor *sinv, const ct_tensor *xc,
                          const ct_tensor *weight, const ct_tensor *bias, ct_tensor *rm,
                          ct_tensor *rv, int training, double momentum, double eps) {
    int (*kern)(ct_tensor *, ct_tensor *, ct_tensor *, const ct_tensor *, const ct_tensor *,
                const ct_tensor *, ct_tensor *, ct_tensor *, int, double, double) =
        CT_KERNEL(xc, batch_norm_forward, "batch_norm");
    if (!kern) return -1;
    ct_tensor *wc = weight ? ct_contiguous(weight) : NULL;
    ct_tensor *bc = bias ? ct_contiguous(bias) : NULL;
    ct_tensor *rmc = rm ? (ct_is_contiguous(rm) ? ct_alias(rm) : ct_clone(rm)) : NULL;
    ct_tensor *rvc = rv ? (ct_is_contiguous(rv) ? ct_alias(rv) : ct_clone(rv)) : NULL;
    int rc = -1;
    if ((weight && !wc) || (bias && !bc) || (rm && !rmc) || (rv && !rvc)) goto done;
    rc = kern(y, smean, sinv, xc, wc, bc, rmc, rvc, training, momentum, eps);
    if (rc == 0 && training) {
        if (rm && rmc->storage != rm->storage) {
            int (*copy)(ct_tensor *, const ct_tensor *) = CT_KERNEL(rm, copy, "batch_norm");
            if (!copy || copy(rm, rmc) != 0) rc = -1;
        }
        if (rc == 0 && rv && rvc->storage != rv->storage) {
            int (*copy)(ct_tensor *, const ct_tensor *) = CT_KERNEL(rv, copy, "batch_norm");
            if (!copy || copy(rv, rvc) != 0) rc = -1;
        }
        if (rm) ct_bump_version(rm);
        if (rv) ct_bump_version(rv);
    }
done:
    ct_free(wc);
    ct_free(bc);
    ct_free(rmc);
    ct_free(rvc);
    return rc;
}

ct_tensor *ct_batch_norm(const ct_tensor *x, ct_tensor *running_mean, ct_tensor *running_var,
                         const ct_tensor *weight, const ct_tensor *bias, int training,
                         double momentum, double eps) {
    const char *op = "batch_norm";
    char b[96];
    if (check_floating_input(op, x) != 0) return NULL;
    if (x->ndim < 2)
        return ct_error_null("batch_norm: input %s must have at least 2 dims [N, C, *]; add a "
                             "batch dim with ct_unsqueeze(x, 0)",
                             ct_fmt_shape(x->shape, x->ndim, b, sizeof b));
    const int64_t C = x->shape[1];
    if (check_param(op, "weight", weight, x, &C, 1) != 0 ||
        check_param(op, "bias", bias, x, &C, 1) != 0 ||
        check_param(op, "running_mean", running_mean, x, &C, 1) != 0 ||
        check_param(op, "running_var", running_var, x, &C, 1) != 0)
        return NULL;
    if (!training && (!running_mean || !running_var))
        return ct_error_null("batch_norm: eval mode (training=0) needs running_mean and "
                             "running_var; pass them or use training=1");
    if (!(eps >= 0) || !isfinite(eps))
        return ct_error_null("batch_norm: eps must be a finite value >= 0, got %g", eps);
    if (training) {
        if (!isfinite(momentum))
            return ct_error_null("batch_norm: momentum must be finite, got %g", momentum);
        const int64_t per_channel = C > 0 ? ct_numel(x) / C : 0;
        if (per_channel <= 1 && ct_numel(x) > 0)
            return ct_error_null("batch_norm: expected more than 1 value per channel when "
                                 "training, got input %s; use a larger batch or eval mode "
                                 "(training=0)",
                                 ct_fmt_shape(x->shape, x->ndim, b, sizeof b));
        const ct_tensor *rs[2] = {running_mean, running_var};
        const char *rn[2] = {"running_mean", "running_var"};
        for (int i = 0; i < 2; i++)
            if (rs[i] && rs[i]->requires_grad && ct_is_grad_enabled())
                return ct_error_null("batch_norm: %s requires grad but is updated in place in "
                                     "training; it must be a buffer without requires_grad",
                                     rn[i]);
    }

    const ct_device dev = x->storage->device;
    ct_tensor *xc = ct_contiguous(x);
    ct_tensor *y = ct_empty_on(x->shape, x->ndim, x->dtype, dev);
    ct_tensor *smean = ct_empty_on(&C, 1, stat_dtype(x, weight, running_mean), dev);
    ct_tensor *sinv = ct_empty_on(&C, 1, stat_dtype(x, weight, running_mean), dev);
    if (!xc || !y || !smean || !sinv ||
        run_bn_forward(y, smean, sinv, xc, weight, bias, running_mean, running_var, training,
                       momentum, eps) != 0) {
        ct_free(xc);
        ct_free(y);
        ct_free(smean);
        ct_free(sinv);
        return NULL;
    }
    const ct_tensor *in[3] = {x, weight, bias};
    ct_node *n;
    y = ct_node_record("BatchNormBackward", batch_norm_backward, in, 3, y, &n);
    if (n) save_norm(n, xc, smean, sinv, weight)->training = training != 0;
    ct_free(xc);
    ct_free(smean);
    ct_free(sinv);
    return y;
}

/* ================================================================== layer_norm */
static int layer_norm_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const norm_ctx *c = n->ctx;
    const ct_tensor *x, *mean, *rstd, *w;
    if (load_norm(n, &x, &mean, &rstd, &w) != 0) return -1;
    int (*kern)(ct_tensor *, ct_tensor *, ct_tensor *, const ct_tensor *, const ct_tensor *,
                const ct_tensor *, const ct_tensor *, const ct_tensor *, int64_t, int64_t) =
        CT_KERNEL(x, layer_norm_backward, "layer_norm backward");
    if (!kern) return -1;
    ct_tensor *gyc = ct_contiguous(gy);
    if (!gyc) return -1;
    const ct_device dev = x->storage->device;
    /* weight/bias have normalized_shape: the trailing dims of x recorded on the node. */
    const int nnorm = c->nnorm;
    const int64_t *nshape = x->shape + x->ndim - nnorm;
    const int need0 = ct_node_needs_grad(n, 0), need1 = ct_node_needs_grad(n, 1),
              need2 = ct_node_needs_grad(n, 2);
    ct_tensor *g0 = need0 ? ct_empty_on(x->shape, x->ndim, x->dtype, dev) : NULL;
    ct_tensor *g1 = need1 ? ct_empty_on(nshape, nnorm, n->inputs[1].dtype, dev) : NULL;
    ct_tensor *g2 = need2 ? ct_empty_on(nshape, nnorm, n->inputs[2].dtype, dev) : NULL;
    int rc = -1;
    if ((need0 && !g0) || (need1 && !g1) || (need2 && !g2)) goto done;
    rc = kern(g0, g1, g2, gyc, x, mean, rstd, w, c->M, c->N);
done:
    ct_free(gyc);
    return hand_out_grads(rc, g0, g1, g2, gx);
}

ct_tensor *ct_layer_norm(const ct_tensor *x, const int64_t *normalized_shape, int nnorm,
                         const ct_tensor *weight, const ct_tensor *bias, double eps) {
    CT_AUTOCAST(CT_AC_LAYER_NORM,
                ct_layer_norm(ac[0], normalized_shape, nnorm, ac[1], ac[2], eps), x, weight, bias);
    const char *op = "layer_norm";
    char b1[96], b2[96];
    if (check_floating_input(op, x) != 0) return NULL;
    if (nnorm < 1 || !normalized_shape)
        return ct_error_null("layer_norm: normalized_shape must have at least 1 dim (got %d%s)",
                             nnorm, normalized_shape ? "" : ", NULL");
    if (nnorm > x->ndim)
        return ct_error_null("layer_norm: normalized_shape %s has more dims than input %s",
                             ct_fmt_shape(normalized_shape, nnorm > CT_MAX_DIMS ? CT_MAX_DIMS
                                                                                : nnorm,
                                          b1, sizeof b1),
                             ct_fmt_shape(x->shape, x->ndim, b2, sizeof b2));
    if (memcmp(x->shape + x->ndim - nnorm, normalized_shape, sizeof(int64_t) * (size_t)nnorm) != 0)
        return ct_error_null("layer_norm: input %s does not end with normalized_shape %s; the "
                             "trailing dims of the input must equal normalized_shape",
                             ct_fmt_shape(x->shape, x->ndim, b2, sizeof b2),
                             ct_fmt_shape(normalized_shape, nnorm, b1, sizeof b1));
    if (check_param(op, "weight", weight, x, normalized_shape, nnorm) != 0 ||
        check_param(op, "bias", bias, x, normalized_shape, nnorm) != 0)
        return NULL;
    if (!(eps >= 0) || !isfinite(eps))
        return ct_error_null("layer_norm: eps must be a finite value >= 0, got %g", eps);

    const int64_t N = ct_shape_numel(normalized_shape, nnorm);
    const int64_t M = ct_shape_numel(x->shape, x->ndim - nnorm);
    int (*kern)(ct_tensor *, ct_tensor *, ct_tensor *, const ct_tensor *, const ct_tensor *,
                const ct_tensor *, int64_t, int64_t, double) =
        CT_KERNEL(x, layer_norm_forward, "layer_norm");
    if (!kern) return NULL;
    const ct_device dev = x->storage->device;
    ct_tensor *xc = ct_contiguous(x);
    ct_tensor *wc = weight ? ct_contiguous(weight) : NULL;
    ct_tensor *bc = bias ? ct_contiguous(bias) : NULL;
    ct_tensor *y = ct_empty_on(x->shape, x->ndim, x->dtype, dev);
    ct_tensor *mean = ct_empty_on(&M, 1, stat_dtype(x, weight, NULL), dev);
    ct_tensor *rstd = ct_empty_on(&M, 1, stat_dtype(x, weight, NULL), dev);
    if (!xc || (weight && !wc) || (bias && !bc) || !y || !mean || !rstd ||
        kern(y, mean, rstd, xc, wc, bc, M, N, eps) != 0) {
        ct_free(y);
        y = NULL;
        goto done;
    }
    const ct_tensor *in[3] = {x, weight, bias};
    ct_node *n;
    y = ct_node_record("LayerNormBackward", layer_norm_backward, in, 3, y, &n);
    if (n) {
        norm_ctx *c = save_norm(n, xc, mean, rstd, wc);
        c->M = M;
        c->N = N;
        c->nnorm = nnorm;
    }
done:
    ct_free(xc);
    ct_free(wc);
    ct_free(bc);
    ct_free(mean);
    ct_free(rstd);
    return y;
}
