/* nn.Conv2d: weight [out, in/groups, kh, kw] (OIHW), bias [out]. */
#include "ctorch_nn.h"
#include "core/error.h"
#include "core/tensor_impl.h"
#include "nn_fusion.h"

#include <stdlib.h>

typedef struct {
    int64_t in, out;
    ct_conv2d_options o;
} conv_cfg;

static void conv_repr(const ct_module *m, char *buf, size_t n) {
    const conv_cfg *c = m->impl;
    const ct_conv2d_options *o = &c->o;
    int w = snprintf(buf, n, "%lld, %lld, kernel_size=(%d, %d), stride=(%d, %d)", (long long)c->in,
                     (long long)c->out, o->kernel[0], o->kernel[1], o->stride[0], o->stride[1]);
    if (w < 0 || (size_t)w >= n) return;
    if (o->padding[0] || o->padding[1])
        w += snprintf(buf + w, n - (size_t)w, ", padding=(%d, %d)", o->padding[0], o->padding[1]);
    if ((size_t)w < n && (o->dilation[0] != 1 || o->dilation[1] != 1))
        w += snprintf(buf + w, n - (size_t)w, ", dilation=(%d, %d)", o->dilation[0], o->dilation[1]);
    if ((size_t)w < n && o->groups != 1)
        w += snprintf(buf + w, n - (size_t)w, ", groups=%d", o->groups);
    if ((size_t)w < n && !o->bias) snprintf(buf + w, n - (size_t)w, ", bias=False");
}

static ct_tensor *conv_forward(ct_module *m, const ct_tensor *x) {
    const conv_cfg *c = m->impl;
    char s[96];
    if (x->ndim != 4 && x->ndim != 3)
        return ct_error_null("input %s must be 4-D [N, C, H, W] (or 3-D [C, H, W])",
                             ct_shape_str(x, s, sizeof s));
    if (x->shape[x->ndim - 3] != c->in)
        return ct_error_null("input %s has %lld channels but the layer expects in_channels = %lld",
                             ct_shape_str(x, s, sizeof s), (long long)x->shape[x->ndim - 3],
                             (long long)c->in);
    return ct_conv2d(x, m->params[0], c->o.bias ? m->params[1] : NULL, c->o.stride, c->o.padding,
                     c->o.dilation, c->o.groups);
}

int ct_nn__conv2d_info(const ct_module *m, ct_tensor **weight, ct_tensor **bias,
                       ct_conv2d_options *o) {
    if (!m || m->forward != conv_forward) return 0;
    const conv_cfg *c = m->impl;
    *weight = m->params[0];
    *bias = c->o.bias ? m->params[1] : NULL;
    *o = c->o;
    return 1;
}

ct_module *ct_nn_conv2d_ex(int64_t in, int64_t out, const ct_conv2d_options *o) {
    if (!o) return ct_error_null("Conv2d: options are NULL");
    if (in < 1 || out < 1)
        return ct_error_null("Conv2d: in_channels (%lld) and out_channels (%lld) must be >= 1",
                             (long long)in, (long long)out);
    if (o->groups < 1) return ct_error_null("Conv2d: groups must be >= 1, got %d", o->groups);
    if (in % o->groups || out % o->groups)
        return ct_error_null("Conv2d: groups (%d) must divide in_channels (%lld) and out_channels "
                             "(%lld)", o->groups, (long long)in, (long long)out);
    for (int i = 0; i < 2; i++) {
        if (o->kernel[i] < 1)
            return ct_error_null("Conv2d: kernel_size must be >= 1, got (%d, %d)", o->kernel[0],
                                 o->kernel[1]);
        if (o->stride[i] < 1)
            return ct_error_null("Conv2d: stride must be >= 1, got (%d, %d)", o->stride[0],
                                 o->stride[1]);
        if (o->padding[i] < 0)
            return ct_error_null("Conv2d: padding must be >= 0, got (%d, %d)", o->padding[0],
                                 o->padding[1]);
        if (o->dilation[i] < 1)
            return ct_error_null("Conv2d: dilation must be >= 1, got (%d, %d)", o->dilation[0],
                                 o->dilation[1]);
    }
    conv_cfg *c = malloc(sizeof *c);
    if (!c) return ct_error_null("Conv2d: out of memory");
    c->in = in;
    c->out = out;
    c->o = *o;
    c->o.bias = o->bias != 0;
    ct_module *m = ct_module_new("Conv2d", conv_forward, c, free);
    if (!m) return NULL;
    m->extra_repr = conv_repr;
    int64_t ws[4] = {out, in / o->groups, o->kernel[0], o->kernel[1]};
    ct_tensor *w = ct_empty(ws, 4, CT_FLOAT32);
    ct_tensor *b = c->o.bias ? ct_empty(&out, 1, CT_FLOAT32) : NULL;
    int ok = w && (!c->o.bias || b) && ct_init_linear_conv_default(w, b) == 0 &&
             ct_module_add_parameter(m, "weight", w) >= 0 &&
             (!c->o.bias || ct_module_add_parameter(m, "bias", b) >= 0);
    ct_free(w);
    ct_free(b);
    if (!ok) {
        ct_error_context("Conv2d(%lld, %lld)", (long long)in, (long long)out);
        ct_module_free(m);
        return NULL;
    }
    return m;
}

ct_module *ct_nn_conv2d(int64_t in, int64_t out, int k, int stride, int padding, int bias) {
    ct_conv2d_options o = {{k, k}, {stride, stride}, {padding, padding}, {1, 1}, 1, bias};
    return ct_nn_conv2d_ex(in, out, &o);
}

/* One (height, width) setting of ct_conv2d_opts: the pair when it has a non-zero element,
 * else the scalar; 0 then means PyTorch's default `def`. */
static void resolve_pair(int scalar, const int pair[2], int def, int out[2]) {
    int use_pair = pair[0] != 0 || pair[1] != 0;
    for (int i = 0; i < 2; i++) {
        out[i] = use_pair ? pair[i] : scalar;
        if (!use_pair && scalar == 0) out[i] = def;
    }
}

ct_module *ct_nn_conv2d_opt(int64_t in, int64_t out, const ct_conv2d_opts *o) {
    if (!o)
        return ct_error_null("Conv2d(%lld, %lld): options are NULL; kernel_size is required, "
                             "e.g. &(ct_conv2d_opts){.kernel_size = 3}", (long long)in,
                             (long long)out);
    ct_conv2d_options c;
    resolve_pair(o->kernel_size, o->kernel_size_hw, 0, c.kernel);
    if (c.kernel[0] == 0 && c.kernel[1] == 0)
        return ct_error_null("Conv2d(%lld, %lld): options .kernel_size is required (0 is not "
                             "a size; PyTorch has no default either)", (long long)in,
                             (long long)out);
    resolve_pair(o->stride, o->stride_hw, 1, c.stride);
    resolve_pair(o->padding, o->padding_hw, 0, c.padding);
    resolve_pair(o->dilation, o->dilation_hw, 1, c.dilation);
    c.groups = o->groups == 0 ? 1 : o->groups;
    c.bias = !o->no_bias;
    return ct_nn_conv2d_ex(in, out, &c);
}
