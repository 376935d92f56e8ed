/* nn.BatchNorm2d with PyTorch's parameters (weight, bias) and buffers (running_mean,
 * running_var, num_batches_tracked). */
#include "ctorch_nn.h"
#include "ctorch_dist.h"
#include "core/error.h"
#include "nn_config.h"
#include "core/tensor_impl.h"

#include <stdlib.h>

typedef struct {
    int64_t c;
    double eps, momentum; /* momentum < 0: None (cumulative moving average) */
    int affine, track;
    int sync; /* SyncBatchNorm (ct_nn_convert_sync_batchnorm) */
} bn_cfg;

static void bn_repr(const ct_module *m, char *buf, size_t n) {
    const bn_cfg *c = m->impl;
    char mom[32];
    if (c->momentum < 0)
        snprintf(mom, sizeof mom, "None");
    else
        snprintf(mom, sizeof mom, "%g", c->momentum);
    snprintf(buf, n, "%lld, eps=%g, momentum=%s, affine=%s, track_running_stats=%s",
             (long long)c->c, c->eps, mom, c->affine ? "True" : "False",
             c->track ? "True" : "False");
}

/* SyncBatchNorm in training: the batch statistics of every rank's batch. The per-channel
 * sum and element count, then the centred sum of squares, are all-reduced by the
 * differentiable all-reduce, so the gradient through the statistics is exact on every
 * rank (as PyTorch's). It is composed of ops, in float64 like the CPU kernel's
 * accumulators: BatchNorm's input gradient is a difference of nearly equal terms, and
 * float32 sums would make it differ from BatchNorm's by ~1e-3. */
static ct_tensor *sync_bn_forward(ct_module *m, const bn_cfg *c, const ct_tensor *x32) {
    ct_tensor *x = ct_to_dtype(x32, CT_FLOAT64);
    ct_tensor *w = c->affine ? ct_to_dtype(m->params[0], CT_FLOAT64) : NULL;
    ct_tensor *b = c->affine ? ct_to_dtype(m->params[1], CT_FLOAT64) : NULL;
    if (!x || (c->affine && (!w || !b))) {
        ct_free(x), ct_free(w), ct_free(b);
        return NULL;
    }
    ct_tensor *rm = c->track ? m->buffers[0] : NULL, *rv = c->track ? m->buffers[1] : NULL;
    ct_tensor *nbt = c->track ? m->buffers[2] : NULL;
    int dims[3] = {0, 2, 3};
    int64_t C = c->c, cshape[4] = {1, C, 1, 1}, one = 1;
    double local_n = (double)(x->shape[0] * x->shape[2] * x->shape[3]);
    /* two passes (mean, then the centred second moment), as accurate as BatchNorm's own */
    ct_tensor *s1 = ct_sum(x, dims, 3, 0);
    ct_tensor *cnt = ct_full(&one, 1, local_n, x->dtype);
    ct_tensor *parts[2] = {s1, cnt};
    ct_tensor *packed = s1 && cnt ? ct_cat(parts, 2, 0) : NULL;
    ct_tensor *tot = packed ? ct_dist_all_reduce_sum_autograd(packed) : NULL;
    ct_tensor *S1 = tot ? ct_narrow(tot, 0, 0, C) : NULL;
    ct_tensor *ncell = tot ? ct_narrow(tot, 0, C, 1) : NULL;
    double n = ncell ? ct_item(ncell) : 0;
    ct_tensor *mean = S1 ? ct_mul_scalar(S1, 1.0 / n) : NULL;
    ct_tensor *mean4 = mean ? ct_view(mean, cshape, 4) : NULL;
    ct_tensor *xc = mean4 ? ct_sub(x, mean4) : NULL;
    ct_tensor *xx = xc ? ct_mul(xc, xc) : NULL;
    ct_tensor *s2 = xx ? ct_sum(xx, dims, 3, 0) : NULL;
    ct_tensor *S2 = s2 ? ct_dist_all_reduce_sum_autograd(s2) : NULL;
    ct_tensor *var = S2 ? ct_mul_scalar(S2, 1.0 / n) : NULL;
    ct_tensor *ve = var ? ct_add_scalar(var, c->eps) : NULL;
    ct_tensor *invstd = ve ? ct_pow_scalar(ve, -0.5) : NULL;
    ct_tensor *scale = invstd && w ? ct_mul(invstd, w) : invstd ? ct_retain(invstd) : NULL;
    ct_tensor *scale4 = scale ? ct_view(scale, cshape, 4) : NULL;
    ct_tensor *y = xc && scale4 ? ct_mul(xc, scale4) : NULL;
    if (y && b) {
        ct_tensor *b4 = ct_view(b, cshape, 4), *yb = b4 ? ct_add(y, b4) : NULL;
        ct_free(b4);
        ct_free(y);
        y = yb;
    }
    int rc = y ? 0 : -1;
    if (rc == 0 && c->track) { /* running statistics, unbiased variance, without autograd */
        int prev = ct_set_grad_enabled(0);
        double mom = c->momentum < 0 ? 1.0 / (ct_item(nbt) + 1) : c->momentum;
        ct_tensor *vu = ct_mul_scalar(var, n > 1 ? n / (n - 1) : 1.0);
        rc = vu ? 0 : -1;
        ct_tensor *mean32 = ct_to_dtype(mean, rm->dtype), *vu32 = vu ? ct_to_dtype(vu, rv->dtype) : NULL;
        if (!mean32 || !vu32) rc = -1;
        if (rc == 0) rc = ct_mul_scalar_(rm, 1 - mom);
        if (rc == 0) rc = ct_add_(rm, mean32, mom);
        if (rc == 0) rc = ct_mul_scalar_(rv, 1 - mom);
        if (rc == 0) rc = ct_add_(rv, vu32, mom);
        ct_free(mean32);
        ct_free(vu32);
        if (rc == 0) rc = ct_add_scalar_(nbt, 1);
        ct_free(vu);
        ct_set_grad_enabled(prev);
    }
    ct_tensor *tmp[] = {s1, cnt, packed, tot, S1, ncell, mean, mean4, xc, xx, s2, S2, var, ve,
                        invstd, scale, scale4, x, w, b};
    for (size_t i = 0; i < sizeof tmp / sizeof *tmp; i++) ct_free(tmp[i]);
    ct_tensor *y32 = rc == 0 ? ct_to_dtype(y, x32->dtype) : NULL;
    ct_free(y);
    return y32;
}

static ct_tensor *bn_forward(ct_module *m, const ct_tensor *x) {
    const bn_cfg *c = m->impl;
    char s[96];
    if (x->ndim != 4)
        return ct_error_null("expected 4-D input [N, C, H, W], got %dD input %s", x->ndim,
                             ct_shape_str(x, s, sizeof s));
    if (x->shape[1] != c->c)
        return ct_error_null("input %s has %lld channels but num_features is %lld",
                             ct_shape_str(x, s, sizeof s), (long long)x->shape[1],
                             (long long)c->c);
    if (c->sync && m->training && ct_dist_world_size() > 1) return sync_bn_forward(m, c, x);
    ct_tensor *w = c->affine ? m->params[0] : NULL, *b = c->affine ? m->params[1] : NULL;
    ct_tensor *rm = c->track ? m->buffers[0] : NULL, *rv = c->track ? m->buffers[1] : NULL;
    ct_tensor *nbt = c->track ? m->buffers[2] : NULL;
    double eaf = c->momentum < 0 ? 0.0 : c->momentum;
    int update = m->training && c->track;
    if (update && c->momentum < 0) {
        double nb = ct_item(nbt);
        eaf = 1.0 / (nb + 1);
    }
    int bn_training = m->training || !c->track;
    ct_tensor *y = ct_batch_norm(x, (!m->training || c->track) ? rm : NULL,
                                 (!m->training || c->track) ? rv : NULL, w, b, bn_training, eaf,
                                 c->eps);
    if (y && update) {
        int prev = ct_set_grad_enabled(0);
        int rc = ct_add_scalar_(nbt, 1);
        ct_set_grad_enabled(prev);
        if (rc) {
            ct_free(y);
            return NULL;
        }
    }
    return y;
}
int ct_nn__batch_norm2d_info(const ct_module *m, double *eps, int *affine, int *track) {
    if (!m || m->forward != bn_forward) return 0;
    const bn_cfg *c = m->impl;
    *eps = c->eps;
    *affine = c->affine;
    *track = c->track;
    return 1;
}

ct_module *ct_nn_batch_norm2d_ex(int64_t num_features, double eps, double momentum, int affine,
                                 int track_running_stats) {
    if (num_features < 1)
        return ct_error_null("BatchNorm2d: num_features must be >= 1, got %lld",
                             (long long)num_features);
    if (!(eps > 0)) return ct_error_null("BatchNorm2d: eps must be > 0, got %g", eps);
    if (momentum > 1)
        return ct_error_null("BatchNorm2d: momentum must be in [0, 1] (or < 0 for None), got %g",
                             momentum);
    bn_cfg *c = malloc(sizeof *c);
    if (!c) return ct_error_null("BatchNorm2d: out of memory");
    *c = (bn_cfg){num_features, eps, momentum, affine != 0, track_running_stats != 0, 0};
    ct_module *m = ct_module_new("BatchNorm2d", bn_forward, c, free);
    if (!m) return NULL;
    m->extra_repr = bn_repr;
    int ok = 1;
    if (c->affine) {
        ct_tensor *w = ct_ones(&num_features, 1, CT_FLOAT32);
        ct_tensor *b = ct_zeros(&num_features, 1, CT_FLOAT32);
        ok = w && b && ct_module_add_parameter(m, "weight", w) >= 0 &&
             ct_module_add_parameter(m, "bias", b) >= 0;
        ct_free(w);
        ct_free(b);
    }
    if (ok && c->track) {
        ct_tensor *rm = ct_zeros(&num_features, 1, CT_FLOAT32);
        ct_tensor *rv = ct_ones(&num_features, 1, CT_FLOAT32);
        ct_tensor *nb = ct_scalar(0, CT_INT64);
        ok = rm && rv && nb && ct_module_add_buffer(m, "running_mean", rm) >= 0 &&
             ct_module_add_buffer(m, "running_var", rv) >= 0 &&
             ct_module_add_buffer(m, "num_batches_tracked", nb) >= 0;
        ct_free(rm);
        ct_free(rv);
        ct_free(nb);
    }
    if (!ok) {
        ct_error_context("BatchNorm2d(%lld)", (long long)num_features);
        ct_module_free(m);
        return NULL;
    }
    return m;
}

ct_module *ct_nn_batch_norm2d(int64_t num_features) {
    return ct_nn_batch_norm2d_ex(num_features, 1e-5, 0.1, 1, 1);
}

ct_module *ct_nn_batch_norm2d_opt(int64_t num_features, const ct_batch_norm2d_opts *o) {
    ct_batch_norm2d_opts d = {0};
    if (!o) o = &d;
    if (!(o->eps >= 0))
        return ct_error_null("BatchNorm2d(%lld): options .eps = %g must be > 0 (0 means "
                             "PyTorch's default 1e-5)", (long long)num_features, o->eps);
    if (o->momentum_none && o->momentum != 0)
        return ct_error_null("BatchNorm2d(%lld): options .momentum = %g and .momentum_none "
                             "contradict each other; set one of them", (long long)num_features,
                             o->momentum);
    if (!(o->momentum >= 0 && o->momentum <= 1))
        return ct_error_null("BatchNorm2d(%lld): options .momentum = %g must be in (0, 1] (0 "
                             "means PyTorch's default 0.1; momentum=None is .momentum_none = "
                             "1)", (long long)num_features, o->momentum);
    double eps = o->eps == 0 ? 1e-5 : o->eps;
    double momentum = o->momentum_none ? -1.0 : o->momentum == 0 ? 0.1 : o->momentum;
    return ct_nn_batch_norm2d_ex(num_features, eps, momentum, !o->no_affine,
                                 !o->no_track_running_stats);
}

/* SyncBatchNorm.convert_sync_batchnorm: marks every BatchNorm2d below m (m included). */
int ct_nn_convert_sync_batchnorm(ct_module *m) {
    if (!m) return ct_error("convert_sync_batchnorm: NULL module");
    int n = 0;
    if (m->forward == bn_forward) {
        ((bn_cfg *)m->impl)->sync = 1;
        n++;
    }
    for (int i = 0; i < m->n_children; i++) {
        int k = ct_nn_convert_sync_batchnorm(m->children[i]);
        if (k < 0) return -1;
        n += k;
    }
    return n;
}
