/* Pooling modules: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d. */
#include "ctorch_nn.h"
#include "core/error.h"
#include "nn_config.h"
#include "core/tensor_impl.h"
#include "nn_fusion.h"

#include <stdlib.h>

typedef struct {
    int kernel[2], stride[2], padding[2], dilation[2];
    int ceil_mode, count_include_pad;
} pool_cfg;

static void pool_repr(const ct_module *m, char *buf, size_t n) {
    const pool_cfg *c = m->impl;
    int w = snprintf(buf, n, "kernel_size=%d, stride=%d, padding=%d", c->kernel[0], c->stride[0],
                     c->padding[0]);
    if (w > 0 && (size_t)w < n && c->dilation[0] != 1)
        w += snprintf(buf + w, n - (size_t)w, ", dilation=%d", c->dilation[0]);
    if (w > 0 && (size_t)w < n && c->ceil_mode)
        w += snprintf(buf + w, n - (size_t)w, ", ceil_mode=True");
    if (w > 0 && (size_t)w < n && !c->count_include_pad)
        snprintf(buf + w, n - (size_t)w, ", count_include_pad=False");
}

static ct_tensor *max_forward(ct_module *m, const ct_tensor *x) {
    const pool_cfg *c = m->impl;
    return ct_max_pool2d(x, c->kernel, c->stride, c->padding, c->dilation, c->ceil_mode);
}
int ct_nn__max_pool_params(const ct_module *m, int kernel[2], int stride[2], int padding[2]) {
    if (!m || m->forward != max_forward) return 0;
    const pool_cfg *c = m->impl;
    if (c->dilation[0] != 1 || c->dilation[1] != 1 || c->ceil_mode) return 0; /* not fusable */
    for (int i = 0; i < 2; i++) {
        kernel[i] = c->kernel[i];
        stride[i] = c->stride[i];
        padding[i] = c->padding[i];
    }
    return 1;
}
static ct_tensor *avg_forward(ct_module *m, const ct_tensor *x) {
    const pool_cfg *c = m->impl;
    return ct_avg_pool2d(x, c->kernel, c->stride, c->padding, c->ceil_mode, c->count_include_pad);
}
int ct_nn__pool2d_info(const ct_module *m, ct_nn_pool2d_info *out) {
    if (!m || (m->forward != max_forward && m->forward != avg_forward)) return 0;
    const pool_cfg *c = m->impl;
    out->is_max = m->forward == max_forward;
    for (int i = 0; i < 2; i++) {
        out->kernel[i] = c->kernel[i];
        out->stride[i] = c->stride[i];
        out->padding[i] = c->padding[i];
        out->dilation[i] = c->dilation[i];
    }
    out->ceil_mode = c->ceil_mode;
    out->count_include_pad = c->count_include_pad;
    return 1;
}

/* Validates a square window (stride <= 0: = kernel) and makes the module. */
static ct_module *pool_new(const char *type, ct_module_forward_fn fwd, int k, int stride,
                           int padding, int dilation, int ceil_mode, int count_include_pad) {
    if (k < 1) return ct_error_null("%s: kernel_size must be >= 1, got %d", type, k);
    if (dilation < 1) return ct_error_null("%s: dilation must be >= 1, got %d", type, dilation);
    if (stride <= 0) stride = k;
    int effective = (k - 1) * dilation + 1;
    if (padding < 0 || 2 * padding > effective)
        return ct_error_null("%s: padding (%d) must be between 0 and half the kernel size (%d)",
                             type, padding, effective);
    pool_cfg *c = malloc(sizeof *c);
    if (!c) return ct_error_null("%s: out of memory", type);
    *c = (pool_cfg){{k, k}, {stride, stride}, {padding, padding}, {dilation, dilation},
                    ceil_mode != 0, count_include_pad != 0};
    ct_module *m = ct_module_new(type, fwd, c, free);
    if (m) m->extra_repr = pool_repr;
    return m;
}

ct_module *ct_nn_max_pool2d(int k, int stride, int padding) {
    return pool_new("MaxPool2d", max_forward, k, stride, padding, 1, 0, 1);
}
ct_module *ct_nn_avg_pool2d(int k, int stride, int padding) {
    return pool_new("AvgPool2d", avg_forward, k, stride, padding, 1, 0, 1);
}

/* The options' checks that pool_new does not do: what 0 means, fields of the other pool. */
static int check_pool_opts(const char *type, const ct_pool2d_opts *o, int is_max) {
    if (!o)
        return ct_error("%s: options are NULL; kernel_size is required, e.g. "
                        "&(ct_pool2d_opts){.kernel_size = 2}", type);
    if (o->kernel_size == 0)
        return ct_error("%s: options .kernel_size is required (0 is not a size)", type);
    if (o->stride < 0)
        return ct_error("%s: options .stride = %d must be >= 1 (0 means the kernel size, "
                        "PyTorch's stride=None)", type, o->stride);
    if (!is_max && o->dilation != 0)
        return ct_error("%s: options .dilation = %d: AvgPool2d has no dilation (MaxPool2d has)",
                        type, o->dilation);
    if (is_max && o->no_count_include_pad)
        return ct_error("%s: options .no_count_include_pad: MaxPool2d has no count_include_pad "
                        "(AvgPool2d has)", type);
    return 0;
}

ct_module *ct_nn_max_pool2d_opt(const ct_pool2d_opts *o) {
    if (check_pool_opts("MaxPool2d", o, 1) != 0) return NULL;
    return pool_new("MaxPool2d", max_forward, o->kernel_size, o->stride, o->padding,
                    o->dilation == 0 ? 1 : o->dilation, o->ceil_mode, 1);
}
ct_module *ct_nn_avg_pool2d_opt(const ct_pool2d_opts *o) {
    if (check_pool_opts("AvgPool2d", o, 0) != 0) return NULL;
    return pool_new("AvgPool2d", avg_forward, o->kernel_size, o->stride, o->padding, 1,
                    o->ceil_mode, !o->no_count_include_pad);
}

static ct_tensor *adaptive_forward(ct_module *m, const ct_tensor *x) {
    return ct_adaptive_avg_pool2d(x, (const int *)m->impl);
}
int ct_nn__adaptive_avg_pool2d_info(const ct_module *m, int out[2]) {
    if (!m || m->forward != adaptive_forward) return 0;
    out[0] = ((const int *)m->impl)[0];
    out[1] = ((const int *)m->impl)[1];
    return 1;
}
static void adaptive_repr(const ct_module *m, char *buf, size_t n) {
    const int *o = m->impl;
    snprintf(buf, n, "output_size=(%d, %d)", o[0], o[1]);
}
ct_module *ct_nn_adaptive_avg_pool2d(int out_h, int out_w) {
    if (out_h < 1 || out_w < 1)
        return ct_error_null("AdaptiveAvgPool2d: output size must be >= 1, got (%d, %d)", out_h,
                             out_w);
    int *c = malloc(2 * sizeof *c);
    if (!c) return ct_error_null("AdaptiveAvgPool2d: out of memory");
    c[0] = out_h;
    c[1] = out_w;
    ct_module *m = ct_module_new("AdaptiveAvgPool2d", adaptive_forward, c, free);
    if (m) m->extra_repr = adaptive_repr;
    return m;
}
