/* Pooling modules: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d. */
#include "ctorch_nn.h"
#include "core/error.h"
#include "core/tensor_impl.h"
#include "nn_fusion.h"

#include <stdlib.h>

typedef struct {
    int kernel[2], stride[2], padding[2];
} pool_cfg;

static void pool_repr(const ct_module *m, char *buf, size_t n) {
    const pool_cfg *c = m->impl;
    snprintf(buf, n, "kernel_size=%d, stride=%d, padding=%d", c->kernel[0], c->stride[0],
             c->padding[0]);
}

static ct_tensor *max_forward(ct_module *m, const ct_tensor *x) {
    const pool_cfg *c = m->impl;
    return ct_max_pool2d(x, c->kernel, c->stride, c->padding, NULL, 0);
}
int ct_nn__max_pool_params(const ct_module *m, int kernel[2], int stride[2], int padding[2]) {
    if (!m || m->forward != max_forward) return 0;
    const pool_cfg *c = m->impl;
    for (int i = 0; i < 2; i++) {
        kernel[i] = c->kernel[i];
        stride[i] = c->stride[i];
        padding[i] = c->padding[i];
    }
    return 1;
}
static ct_tensor *avg_forward(ct_module *m, const ct_tensor *x) {
    const pool_cfg *c = m->impl;
    return ct_avg_pool2d(x, c->kernel, c->stride, c->padding, 0, 1);
}

static ct_module *pool_new(const char *type, ct_module_forward_fn fwd, int k, int stride,
                           int padding) {
    if (k < 1) return ct_error_null("%s: kernel_size must be >= 1, got %d", type, k);
    if (stride <= 0) stride = k;
    if (padding < 0 || 2 * padding > k)
        return ct_error_null("%s: padding (%d) must be between 0 and half the kernel size (%d)",
                             type, padding, k);
    pool_cfg *c = malloc(sizeof *c);
    if (!c) return ct_error_null("%s: out of memory", type);
    *c = (pool_cfg){{k, k}, {stride, stride}, {padding, padding}};
    ct_module *m = ct_module_new(type, fwd, c, free);
    if (m) m->extra_repr = pool_repr;
    return m;
}

ct_module *ct_nn_max_pool2d(int k, int stride, int padding) {
    return pool_new("MaxPool2d", max_forward, k, stride, padding);
}
ct_module *ct_nn_avg_pool2d(int k, int stride, int padding) {
    return pool_new("AvgPool2d", avg_forward, k, stride, padding);
}

static ct_tensor *adaptive_forward(ct_module *m, const ct_tensor *x) {
    return ct_adaptive_avg_pool2d(x, (const int *)m->impl);
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
