/* nn.Linear: y = x W^T + b, weight [out, in], bias [out]. */
#include "ctorch_nn.h"
#include "core/error.h"
#include "nn_config.h"
#include "core/tensor_impl.h"

#include <stdlib.h>

typedef struct {
    int64_t in, out;
    int bias;
} linear_cfg;

static void linear_repr(const ct_module *m, char *buf, size_t n) {
    const linear_cfg *c = m->impl;
    snprintf(buf, n, "in_features=%lld, out_features=%lld, bias=%s", (long long)c->in,
             (long long)c->out, c->bias ? "True" : "False");
}

static ct_tensor *linear_forward(ct_module *m, const ct_tensor *x) {
    const linear_cfg *c = m->impl;
    char s[96];
    if (x->ndim < 1 || x->shape[x->ndim - 1] != c->in)
        return ct_error_null("input %s must end with in_features = %lld (got last dim %lld); "
                             "flatten the input or fix in_features",
                             ct_shape_str(x, s, sizeof s), (long long)c->in,
                             x->ndim ? (long long)x->shape[x->ndim - 1] : 0LL);
    return ct_linear(x, m->params[0], c->bias ? m->params[1] : NULL);
}
int ct_nn__linear_info(const ct_module *m, ct_tensor **weight, ct_tensor **bias) {
    if (!m || m->forward != linear_forward) return 0;
    *weight = m->params[0];
    *bias = ((const linear_cfg *)m->impl)->bias ? m->params[1] : NULL;
    return 1;
}

ct_module *ct_nn_linear(int64_t in_features, int64_t out_features, int bias) {
    if (in_features < 1 || out_features < 1)
        return ct_error_null("Linear: in_features (%lld) and out_features (%lld) must be >= 1",
                             (long long)in_features, (long long)out_features);
    linear_cfg *c = malloc(sizeof *c);
    if (!c) return ct_error_null("Linear: out of memory");
    c->in = in_features;
    c->out = out_features;
    c->bias = bias != 0;
    ct_module *m = ct_module_new("Linear", linear_forward, c, free);
    if (!m) return NULL;
    m->extra_repr = linear_repr;
    int64_t ws[2] = {out_features, in_features};
    ct_tensor *w = ct_empty(ws, 2, CT_FLOAT32);
    ct_tensor *b = c->bias ? ct_empty(&out_features, 1, CT_FLOAT32) : NULL;
    int ok = w && (!c->bias || b) && ct_init_linear_conv_default(w, b) == 0 &&
             ct_module_add_parameter(m, "weight", w) >= 0 &&
             (!c->bias || ct_module_add_parameter(m, "bias", b) >= 0);
    ct_free(w);
    ct_free(b);
    if (!ok) {
        ct_error_context("Linear(%lld, %lld)", (long long)in_features, (long long)out_features);
        ct_module_free(m);
        return NULL;
    }
    return m;
}

ct_module *ct_nn_linear_opt(int64_t in_features, int64_t out_features, const ct_linear_opts *o) {
    return ct_nn_linear(in_features, out_features, !(o && o->no_bias));
}
