/* torchvision's residual blocks, convs with BatchNorm and an identity or 1x1-conv shortcut:
 * BasicBlock (ResNet-18/34), children conv1, bn1, relu, conv2, bn2[, downsample], and
 * Bottleneck (ResNet-50), children conv1, bn1, conv2, bn2, conv3, bn3, relu[, downsample]. */
#include "ctorch_nn.h"
#include "core/error.h"

#include <stdlib.h>

enum { B_CONV1, B_BN1, B_RELU, B_CONV2, B_BN2, B_DOWN };

static ct_tensor *block_forward(ct_module *m, const ct_tensor *x) {
    ct_module **c = m->children;
    ct_tensor *t1 = ct_module_forward(c[B_CONV1], x);
    ct_tensor *t2 = t1 ? ct_module_forward(c[B_BN1], t1) : NULL;
    ct_free(t1);
    ct_tensor *t3 = t2 ? ct_module_forward(c[B_RELU], t2) : NULL;
    ct_free(t2);
    ct_tensor *t4 = t3 ? ct_module_forward(c[B_CONV2], t3) : NULL;
    ct_free(t3);
    ct_tensor *t5 = t4 ? ct_module_forward(c[B_BN2], t4) : NULL;
    ct_free(t4);
    if (!t5) return NULL;
    ct_tensor *id = m->n_children > B_DOWN ? ct_module_forward(c[B_DOWN], x)
                                           : ct_retain((ct_tensor *)x);
    ct_tensor *sum = id ? ct_add(t5, id) : NULL;
    ct_free(t5);
    ct_free(id);
    if (!sum) return NULL;
    ct_tensor *out = ct_module_forward(c[B_RELU], sum);
    ct_free(sum);
    return out;
}

ct_module *ct_nn_basic_block(int64_t inplanes, int64_t planes, int stride) {
    if (inplanes < 1 || planes < 1)
        return ct_error_null("BasicBlock: inplanes (%lld) and planes (%lld) must be >= 1",
                             (long long)inplanes, (long long)planes);
    if (stride < 1) return ct_error_null("BasicBlock: stride must be >= 1, got %d", stride);
    ct_module *m = ct_module_new("BasicBlock", block_forward, NULL, NULL);
    if (!m) return NULL;
    int rc = ct_module_add_child(m, "conv1", ct_nn_conv2d(inplanes, planes, 3, stride, 1, 0));
    if (!rc) rc = ct_module_add_child(m, "bn1", ct_nn_batch_norm2d(planes));
    if (!rc) rc = ct_module_add_child(m, "relu", ct_nn_relu());
    if (!rc) rc = ct_module_add_child(m, "conv2", ct_nn_conv2d(planes, planes, 3, 1, 1, 0));
    if (!rc) rc = ct_module_add_child(m, "bn2", ct_nn_batch_norm2d(planes));
    if (!rc && (stride != 1 || inplanes != planes)) {
        ct_module *parts[2] = {ct_nn_conv2d(inplanes, planes, 1, stride, 0, 0),
                               ct_nn_batch_norm2d(planes)};
        rc = ct_module_add_child(m, "downsample", ct_nn_sequential(parts, 2));
    }
    if (rc) {
        ct_error_context("BasicBlock(%lld, %lld, stride=%d)", (long long)inplanes,
                         (long long)planes, stride);
        ct_module_free(m);
        return NULL;
    }
    return m;
}

/* torchvision's Bottleneck (ResNet-50/101/152, "v1.5": the stride is on the 3x3 conv):
 * conv1 1x1, bn1, conv2 3x3 (stride), bn2, conv3 1x1 (planes * 4), bn3, relu, and when
 * stride != 1 or inplanes != planes * 4 a downsample Sequential (conv 1x1 stride, bn). */
enum { K_CONV1, K_BN1, K_CONV2, K_BN2, K_CONV3, K_BN3, K_RELU, K_DOWN };

static ct_tensor *bottleneck_forward(ct_module *m, const ct_tensor *x) {
    ct_module **c = m->children;
    ct_tensor *cur = ct_retain((ct_tensor *)x);
    /* conv1 bn1 relu conv2 bn2 relu conv3 bn3 */
    static const int order[8] = {K_CONV1, K_BN1, K_RELU, K_CONV2, K_BN2, K_RELU, K_CONV3, K_BN3};
    for (int i = 0; i < 8 && cur; i++) {
        ct_tensor *next = ct_module_forward(c[order[i]], cur);
        ct_free(cur);
        cur = next;
    }
    if (!cur) return NULL;
    ct_tensor *id = m->n_children > K_DOWN ? ct_module_forward(c[K_DOWN], x)
                                           : ct_retain((ct_tensor *)x);
    ct_tensor *sum = id ? ct_add(cur, id) : NULL;
    ct_free(cur);
    ct_free(id);
    if (!sum) return NULL;
    ct_tensor *out = ct_module_forward(c[K_RELU], sum);
    ct_free(sum);
    return out;
}

ct_module *ct_nn_bottleneck(int64_t inplanes, int64_t planes, int stride) {
    if (inplanes < 1 || planes < 1)
        return ct_error_null("Bottleneck: inplanes (%lld) and planes (%lld) must be >= 1",
                             (long long)inplanes, (long long)planes);
    if (stride < 1) return ct_error_null("Bottleneck: stride must be >= 1, got %d", stride);
    ct_module *m = ct_module_new("Bottleneck", bottleneck_forward, NULL, NULL);
    if (!m) return NULL;
    int64_t out = planes * 4;
    int rc = ct_module_add_child(m, "conv1", ct_nn_conv2d(inplanes, planes, 1, 1, 0, 0));
    if (!rc) rc = ct_module_add_child(m, "bn1", ct_nn_batch_norm2d(planes));
    if (!rc) rc = ct_module_add_child(m, "conv2", ct_nn_conv2d(planes, planes, 3, stride, 1, 0));
    if (!rc) rc = ct_module_add_child(m, "bn2", ct_nn_batch_norm2d(planes));
    if (!rc) rc = ct_module_add_child(m, "conv3", ct_nn_conv2d(planes, out, 1, 1, 0, 0));
    if (!rc) rc = ct_module_add_child(m, "bn3", ct_nn_batch_norm2d(out));
    if (!rc) rc = ct_module_add_child(m, "relu", ct_nn_relu());
    if (!rc && (stride != 1 || inplanes != out)) {
        ct_module *parts[2] = {ct_nn_conv2d(inplanes, out, 1, stride, 0, 0),
                               ct_nn_batch_norm2d(out)};
        rc = ct_module_add_child(m, "downsample", ct_nn_sequential(parts, 2));
    }
    if (rc) {
        ct_error_context("Bottleneck(%lld, %lld, stride=%d)", (long long)inplanes,
                         (long long)planes, stride);
        ct_module_free(m);
        return NULL;
    }
    return m;
}
