/* nn.BatchNorm2d with PyTorch's parameters (weight, bias) and buffers (running_mean,
 * running_var, num_batches_tracked). */
#include "ctorch_nn.h"
#include "core/error.h"
#include "core/tensor_impl.h"

#include <stdlib.h>

typedef struct {
    int64_t c;
    double eps, momentum; /* momentum < 0: None (cumulative moving average) */
    int affine, track;
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
    *c = (bn_cfg){num_features, eps, momentum, affine != 0, track_running_stats != 0};
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
