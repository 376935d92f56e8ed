/* Losses: nll_loss, cross_entropy (class indices, label smoothing, ignore_index) and
 * mse_loss, with PyTorch 1.13 semantics.
 *
 * nll_loss / cross_entropy accept input [C] with a 0-d target, [N, C] with target [N],
 * or [N, C, d1, ...] with target [N, d1, ...]. The K-d case is brought to [N*d1*..., C]
 * by public view ops (so autograd flows through them) and handled by the 2-D core.
 *
 * cross_entropy (PyTorch 1.13, no class weights):
 *   logp = log_softmax(x, 1)
 *   loss = (1 - eps) * nll_loss(logp, t) + (eps / C) * smooth,
 *   smooth_i = -sum_c logp[i, c] (0 where t_i == ignore_index), reduced like nll_loss
 *   (mean divides by the number of non-ignored targets).
 * On the CPU this runs as one fused kernel (forward and backward); other devices use
 * the composed path built from log_softmax, nll_loss and pointwise/reduction ops. */
#include "core/autocast.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

#include <string.h>

#include <math.h>

/* Fused CPU cross-entropy kernels (src/backends/cpu/cpu_softmax.c). They are not in the
 * ct_kernels table yet, so they are called directly for CPU tensors. */

/* Testing hook: non-zero makes cross_entropy take the composed (non-fused) path. */
int ct__cross_entropy_unfused = 0;

static int check_reduction(ct_reduction r, const char *op) {
    if (r == CT_REDUCTION_NONE || r == CT_REDUCTION_MEAN || r == CT_REDUCTION_SUM) return 0;
    return ct_error("%s: unknown reduction %d (use CT_REDUCTION_NONE, CT_REDUCTION_MEAN or "
                    "CT_REDUCTION_SUM)",
                    op, (int)r);
}

/* Validates (input, target) for nll_loss / cross_entropy and flattens them to
 * x2 [M, C] and t1 [M] (contiguous int64). tshape/tnd receive the target's shape
 * (the shape of the unreduced loss). */
static int flatten_nd(const char *op, const ct_tensor *input, const ct_tensor *target,
                      ct_reduction red, ct_tensor **x2, ct_tensor **t1, int64_t *tshape,
                      int *tnd) {
    *x2 = *t1 = NULL;
    if (!input || !target) return ct_error("%s: input or target is NULL", op);
    if (ct__check_tensor(input, op) || ct__check_tensor(target, op)) return -1; /* a released tensor */
    if (check_reduction(red, op) != 0) return -1;
    char sa[128], sb[128];
    ct_fmt_shape(input->shape, input->ndim, sa, sizeof sa);
    ct_fmt_shape(target->shape, target->ndim, sb, sizeof sb);
    if (!ct_is_floating(input->dtype))
        return ct_error("%s: input %s has dtype %s; it must be floating (float32 or float64)",
                        op, sa, ct_dtype_name(input->dtype));
    if (target->dtype != CT_INT64)
        return ct_error("%s: target %s has dtype %s; class-index targets must be int64 "
                        "(convert with ct_to_dtype(target, CT_INT64))",
                        op, sb, ct_dtype_name(target->dtype));
    if (!ct_same_device(input, target))
        return ct_error("%s: input %s and target %s are on different devices; move them to "
                        "the same device",
                        op, sa, sb);
    const int nd = input->ndim;
    int ok;
    if (nd == 0) {
        return ct_error("%s: input %s is 0-d; expected [C], [N, C] or [N, C, d1, ...]", op, sa);
    } else if (nd == 1) {
        ok = target->ndim == 0;
    } else {
        ok = target->ndim == nd - 1 && target->shape[0] == input->shape[0];
        for (int i = 1; ok && i < nd - 1; i++) ok = target->shape[i] == input->shape[i + 1];
    }
    if (!ok) {
        int64_t want[CT_MAX_DIMS];
        int wn = 0;
        for (int i = 0; i < nd; i++)
            if (i != (nd == 1 ? 0 : 1)) want[wn++] = input->shape[i];
        char sw[128];
        return ct_error("%s: target %s does not match input %s; expected target %s (input [C] "
                        "takes a 0-d target, [N, C, d1, ...] takes [N, d1, ...])",
                        op, sb, sa, ct_fmt_shape(want, wn, sw, sizeof sw));
    }
    *tnd = target->ndim;
    for (int i = 0; i < target->ndim; i++) tshape[i] = target->shape[i];

    const int64_t C = nd == 1 ? input->shape[0] : input->shape[1];
    const int64_t M = ct_numel(target);
    int64_t s2[2] = {M, C};
    if (nd == 1) {
        *x2 = ct_unsqueeze(input, 0);
    } else if (nd == 2) {
        *x2 = ct_retain((ct_tensor *)input);
    } else {
        int perm[CT_MAX_DIMS], k = 0;
        perm[k++] = 0;
        for (int i = 2; i < nd; i++) perm[k++] = i;
        perm[k++] = 1;
        ct_tensor *p = ct_permute(input, perm, nd);
        *x2 = p ? ct_reshape(p, s2, 2) : NULL;
        ct_free(p);
    }
    ct_tensor *tr = ct_reshape(target, &M, 1);
    *t1 = tr ? ct_contiguous(tr) : NULL;
    ct_free(tr);
    if (!*x2 || !*t1) {
        ct_free(*x2);
        ct_free(*t1);
        *x2 = *t1 = NULL;
        return -1;
    }
    return 0;
}

/* Reshapes an unreduced [M] loss back to the target's shape (consumes `out`). */
static ct_tensor *unflatten(ct_tensor *out, ct_reduction red, const int64_t *tshape, int tnd) {
    if (!out || red != CT_REDUCTION_NONE || (tnd == 1 && out->ndim == 1)) return out;
    ct_tensor *r = ct_reshape(out, tshape, tnd);
    ct_free(out);
    return r;
}

/* The backward context of nll_loss and the fused cross_entropy. */
typedef struct {
    ct_reduction red;
    int64_t ignore_index;
    int64_t classes;        /* nll_loss: C */
    double label_smoothing; /* cross_entropy */
    int target, total_weight, logp; /* saved tensors (logp: cross_entropy) */
} loss_ctx;

/* ------------------------------------------------------------------ nll_loss */
static int nll_backward_fn(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    if (!ct_node_needs_grad(n, 0)) return 0;
    const loss_ctx *c = n->ctx;
    const ct_tensor *target = ct_node_saved(n, c->target);
    const ct_tensor *tw = target ? ct_node_saved(n, c->total_weight) : NULL;
    if (!tw) return -1;
    int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_tensor *, ct_reduction,
             int64_t) = CT_KERNEL(target, nll_loss_backward, "nll_loss backward");
    if (!k) return -1;
    ct_tensor *gyc = ct_contiguous(gy);
    int64_t shape[2] = {target->shape[0], c->classes};
    ct_tensor *g = gyc ? ct_empty_on(shape, 2, gy->dtype, target->storage->device) : NULL;
    if (!g || k(g, gyc, target, tw, c->red, c->ignore_index) != 0) {
        ct_free(gyc);
        ct_free(g);
        return -1;
    }
    ct_free(gyc);
    gx[0] = g;
    return 0;
}

/* x2 [M, C] floating, t1 [M] contiguous int64. */
static ct_tensor *nll_core(const ct_tensor *x2, const ct_tensor *t1, ct_reduction red,
                           int64_t ignore_index) {
    int (*k)(ct_tensor *, ct_tensor *, const ct_tensor *, const ct_tensor *, ct_reduction,
             int64_t) = CT_KERNEL(x2, nll_loss_forward, "nll_loss");
    if (!k) return NULL;
    ct_tensor *xc = ct_contiguous(x2);
    if (!xc) return NULL;
    const ct_device dev = x2->storage->device;
    ct_tensor *out = ct_empty_on(x2->shape, red == CT_REDUCTION_NONE ? 1 : 0, x2->dtype, dev);
    ct_tensor *tw = ct_empty_on(NULL, 0, x2->dtype, dev);
    if (!out || !tw || k(out, tw, xc, t1, red, ignore_index) != 0) {
        ct_free(xc);
        ct_free(out);
        ct_free(tw);
        return NULL;
    }
    ct_free(xc);
    ct_node *n;
    out = ct_node_record("NllLossBackward", nll_backward_fn, &x2, 1, out, &n);
    if (n) {
        loss_ctx *c = CT_NODE_CTX(n, loss_ctx);
        *c = (loss_ctx){.red = red, .ignore_index = ignore_index, .classes = x2->shape[1],
                        .logp = -1};
        c->target = ct_node_save(n, t1);
        c->total_weight = ct_node_save(n, tw);
    }
    ct_free(tw);
    return out;
}

ct_tensor *ct_nll_loss(const ct_tensor *log_probs, const ct_tensor *target,
                       ct_reduction reduction, int64_t ignore_index) {
    CT_AUTOCAST(CT_AC_NLL_LOSS, ct_nll_loss(ac[0], target, reduction, ignore_index), log_probs);
    ct_tensor *x2, *t1;
    int64_t tshape[CT_MAX_DIMS];
    int tnd = 0;
    if (flatten_nd("nll_loss", log_probs, target, reduction, &x2, &t1, tshape, &tnd) != 0)
        return NULL;
    ct_tensor *out = nll_core(x2, t1, reduction, ignore_index);
    ct_free(x2);
    ct_free(t1);
    return unflatten(out, reduction, tshape, tnd);
}

/* ------------------------------------------------------------- cross_entropy */
static int ce_backward_fn(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    if (!ct_node_needs_grad(n, 0)) return 0;
    const loss_ctx *c = n->ctx;
    const ct_tensor *logp = ct_node_saved(n, c->logp);
    const ct_tensor *target = logp ? ct_node_saved(n, c->target) : NULL;
    const ct_tensor *tw = target ? ct_node_saved(n, c->total_weight) : NULL;
    if (!tw) return -1;
    /* The fused kernel reads gy in logp's dtype. */
    ct_tensor *gyc = gy->dtype == logp->dtype ? ct_contiguous(gy) : ct_to_dtype(gy, logp->dtype);
    ct_tensor *g = gyc ? ct_empty_on(logp->shape, 2, logp->dtype, logp->storage->device) : NULL;
    if (!g || ct_backend_of(g)->k.cross_entropy_backward(g, gyc, logp, target, tw, c->red,
                                                         c->ignore_index,
                                                         c->label_smoothing) != 0) {
        ct_free(gyc);
        ct_free(g);
        return -1;
    }
    ct_free(gyc);
    gx[0] = g;
    return 0;
}

static ct_tensor *ce_fused(const ct_tensor *x2, const ct_tensor *t1, ct_reduction red,
                           int64_t ignore_index, double eps) {
    ct_tensor *xc = ct_contiguous(x2);
    if (!xc) return NULL;
    const ct_device dev = x2->storage->device;
    const int need = ct_needs_grad1(x2);
    ct_tensor *out = ct_empty_on(x2->shape, red == CT_REDUCTION_NONE ? 1 : 0, x2->dtype, dev);
    ct_tensor *tw = ct_empty_on(NULL, 0, x2->dtype, dev);
    ct_tensor *logp = need ? ct_empty_on(x2->shape, 2, x2->dtype, dev) : NULL;
    if (!out || !tw || (need && !logp) ||
        ct_backend_of(out)->k.cross_entropy_forward(out, logp, tw, xc, t1, red, ignore_index, eps) != 0) {
        ct_free(xc);
        ct_free(out);
        ct_free(tw);
        ct_free(logp);
        return NULL;
    }
    ct_free(xc);
    ct_node *n;
    out = ct_node_record("CrossEntropyLossBackward", ce_backward_fn, &x2, 1, out, &n);
    if (n) {
        loss_ctx *c = CT_NODE_CTX(n, loss_ctx);
        *c = (loss_ctx){.red = red, .ignore_index = ignore_index, .label_smoothing = eps};
        c->logp = ct_node_save(n, logp);
        c->target = ct_node_save(n, t1);
        c->total_weight = ct_node_save(n, tw);
    }
    ct_free(tw);
    ct_free(logp);
    return out;
}

/* Composed from log_softmax, nll_loss and sums; autograd flows through the individual ops.
 * The tests compare the fused kernels with it (ct__cross_entropy_unfused = 1). */
static ct_tensor *ce_composed(const ct_tensor *x2, const ct_tensor *t1, ct_reduction red,
                              int64_t ignore_index, double eps) {
    ct_tensor *logp = ct_log_softmax(x2, 1);
    if (!logp) return NULL;
    ct_tensor *nll = nll_core(logp, t1, red, ignore_index);
    if (!nll || eps == 0) {
        ct_free(logp);
        return nll;
    }
    const double C = (double)x2->shape[1];
    /* mask_i = 1 where t_i != ignore_index, else 0: nll_loss of a tensor of -1s. */
    int prev = ct_set_grad_enabled(0);
    ct_tensor *neg1 = ct_full(x2->shape, 2, -1.0, x2->dtype);
    ct_tensor *neg1d = neg1 ? ct_to_device(neg1, x2->storage->device) : NULL;
    ct_tensor *mask = neg1d ? nll_core(neg1d, t1, CT_REDUCTION_NONE, ignore_index) : NULL;
    ct_set_grad_enabled(prev);
    ct_free(neg1);
    ct_free(neg1d);

    int cdim = 1;
    ct_tensor *rs = mask ? ct_sum(logp, &cdim, 1, 0) : NULL; /* sum_c logp, [M] */
    ct_tensor *sm = rs ? ct_mul(rs, mask) : NULL;             /* -smooth_i */
    ct_tensor *ret = NULL;
    if (sm) {
        if (red == CT_REDUCTION_NONE) {
            ret = ct_retain(sm);
        } else {
            ret = ct_sum(sm, NULL, 0, 0);
            if (ret && red == CT_REDUCTION_MEAN) {
                /* max(count, 1): with every target ignored the nll term is already NaN,
                 * and the smoothing term must not turn the zero gradient into NaN. */
                ct_tensor *cnt = ct_sum(mask, NULL, 0, 0);
                ct_tensor *cc = cnt ? ct_clamp(cnt, 1.0, INFINITY) : NULL;
                ct_tensor *q = cc ? ct_div(ret, cc) : NULL;
                ct_free(cnt);
                ct_free(cc);
                ct_free(ret);
                ret = q;
            }
        }
    }
    ct_tensor *a = ret ? ct_mul_scalar(nll, 1.0 - eps) : NULL;
    ct_tensor *b = a ? ct_mul_scalar(ret, -eps / C) : NULL;
    ct_tensor *out = b ? ct_add(a, b) : NULL;
    ct_free(logp);
    ct_free(nll);
    ct_free(mask);
    ct_free(rs);
    ct_free(sm);
    ct_free(ret);
    ct_free(a);
    ct_free(b);
    return out;
}

ct_tensor *ct_cross_entropy(const ct_tensor *logits, const ct_tensor *target,
                            ct_reduction reduction, double label_smoothing,
                            int64_t ignore_index) {
    CT_AUTOCAST(CT_AC_CROSS_ENTROPY,
                ct_cross_entropy(ac[0], target, reduction, label_smoothing, ignore_index), logits);
    if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0))
        return ct_error_null("cross_entropy: label_smoothing must be between 0.0 and 1.0, "
                             "got %g",
                             label_smoothing);
    ct_tensor *x2, *t1;
    int64_t tshape[CT_MAX_DIMS];
    int tnd = 0;
    if (flatten_nd("cross_entropy", logits, target, reduction, &x2, &t1, tshape, &tnd) != 0)
        return NULL;
    ct_tensor *out;
    if (!ct__cross_entropy_unfused) /* the composition stays as the tests' reference */
        out = ce_fused(x2, t1, reduction, ignore_index, label_smoothing);
    else
        out = ce_composed(x2, t1, reduction, ignore_index, label_smoothing);
    ct_free(x2);
    ct_free(t1);
    return unflatten(out, reduction, tshape, tnd);
}

/* ------------------------------------------------------------------ mse_loss */
ct_tensor *ct_mse_loss(const ct_tensor *input, const ct_tensor *target, ct_reduction reduction) {
    CT_AUTOCAST(CT_AC_MSE_LOSS, ct_mse_loss(ac[0], ac[1], reduction), input, target);
    if (!input || !target) return ct_error_null("mse_loss: input or target is NULL");
    if (ct__check_tensor(input, "mse_loss") || ct__check_tensor(target, "mse_loss")) return NULL; /* a released tensor */
    if (check_reduction(reduction, "mse_loss") != 0) return NULL;
    char sa[128], sb[128];
    ct_fmt_shape(input->shape, input->ndim, sa, sizeof sa);
    ct_fmt_shape(target->shape, target->ndim, sb, sizeof sb);
    if (!ct_is_floating(input->dtype) || input->dtype != target->dtype)
        return ct_error_null("mse_loss: input %s (%s) and target %s (%s) must have the same "
                             "floating dtype; convert with ct_to_dtype",
                             sa, ct_dtype_name(input->dtype), sb, ct_dtype_name(target->dtype));
    /* Same shape, or shapes that broadcast (PyTorch broadcasts, with a warning). */
    int nd = input->ndim > target->ndim ? input->ndim : target->ndim;
    for (int i = 0; i < nd; i++) {
        int ia = input->ndim - 1 - i, ib = target->ndim - 1 - i;
        int64_t a = ia >= 0 ? input->shape[ia] : 1, b = ib >= 0 ? target->shape[ib] : 1;
        if (a != b && a != 1 && b != 1)
            return ct_error_null("mse_loss: input %s and target %s have different shapes "
                                 "(and do not broadcast); give target the input's shape",
                                 sa, sb);
    }
    ct_tensor *d = ct_sub(input, target);
    ct_tensor *sq = d ? ct_mul(d, d) : NULL;
    ct_free(d);
    if (!sq || reduction == CT_REDUCTION_NONE) return sq;
    ct_tensor *out = reduction == CT_REDUCTION_MEAN ? ct_mean(sq, NULL, 0, 0)
                                                    : ct_sum(sq, NULL, 0, 0);
    ct_free(sq);
    return out;
}

/* ------------------------------------------------------------ options structs */
static int loss_opts(const ct_loss_opts *o, const char *op, ct_reduction *red, int64_t *ignore) {
    *red = CT_REDUCTION_MEAN;
    *ignore = o && o->has_ignore_index ? o->ignore_index : -100;
    const char *r = o ? o->reduction : NULL;
    if (!r || strcmp(r, "mean") == 0) return 0;
    if (strcmp(r, "sum") == 0) *red = CT_REDUCTION_SUM;
    else if (strcmp(r, "none") == 0) *red = CT_REDUCTION_NONE;
    else return ct_error("%s: reduction \"%s\" is not one of \"mean\", \"sum\", \"none\"", op, r);
    return 0;
}

ct_tensor *ct_cross_entropy_opt(const ct_tensor *logits, const ct_tensor *target,
                                const ct_loss_opts *o) {
    ct_reduction red;
    int64_t ignore;
    if (loss_opts(o, "cross_entropy", &red, &ignore) != 0) return NULL;
    return ct_cross_entropy(logits, target, red, o ? o->label_smoothing : 0.0, ignore);
}

ct_tensor *ct_nll_loss_opt(const ct_tensor *log_probs, const ct_tensor *target,
                           const ct_loss_opts *o) {
    ct_reduction red;
    int64_t ignore;
    if (loss_opts(o, "nll_loss", &red, &ignore) != 0) return NULL;
    if (o && o->label_smoothing != 0)
        return ct_error_null("nll_loss: label_smoothing is a cross_entropy option");
    return ct_nll_loss(log_probs, target, red, ignore);
}
