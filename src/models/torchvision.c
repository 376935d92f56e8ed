/* torchvision's classification models with torchvision's architectures, state_dict names
 * and default initialisation (torchvision/models/resnet.py, mobilenetv2.py):
 *   resnet18, resnet34 (BasicBlock), resnet50 (Bottleneck, v1.5) with the ImageNet stem
 *   (conv1 7x7 stride 2 padding 3, bn1, relu, maxpool 3x3 stride 2 padding 1);
 *   resnet18_cifar: resnet18 with the CIFAR stem (conv1 3x3 stride 1 padding 1, no
 *   maxpool), ctorch's resnet18 before torchvision's existed (not a torchvision model);
 *   mobilenet_v2: features (Conv2dNormActivation, InvertedResidual blocks with ReLU6),
 *   classifier = Sequential(Dropout(0.2), Linear(1280, classes)). */
#include "models_internal.h"
#include "core/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* -------------------------------------------------------------------- ResNet */
/* Every child in order, the last one (fc) after flattening: conv1, bn1, relu[, maxpool],
 * layer1..layer4, avgpool, fc. */
static ct_tensor *resnet_forward(ct_module *m, const ct_tensor *x) {
    char s[96];
    if (ct_ndim(x) != 4)
        return ct_error_null("input %s must be a batch of images [N, C, H, W]",
                             ct_shape_str(x, s, sizeof s));
    int last = m->n_children - 1;
    ct_tensor *cur = ct_retain((ct_tensor *)x);
    for (int i = 0; i < last && cur; i++) {
        ct_tensor *next = ct_module_forward(m->children[i], cur);
        ct_free(cur);
        cur = next;
    }
    ct_tensor *flat = cur ? ct_flatten(cur, 1, -1) : NULL;
    ct_free(cur);
    ct_tensor *y = flat ? ct_module_forward(m->children[last], flat) : NULL;
    ct_free(flat);
    return y;
}

/* torchvision's _make_layer: `blocks` blocks, the first with the stride. */
static ct_module *make_layer(int bottleneck, int64_t *inplanes, int64_t planes, int blocks,
                             int stride) {
    ct_module *b[8] = {NULL};
    for (int i = 0; i < blocks; i++) {
        b[i] = bottleneck ? ct_nn_bottleneck(*inplanes, planes, i ? 1 : stride)
                          : ct_nn_basic_block(*inplanes, planes, i ? 1 : stride);
        *inplanes = planes * (bottleneck ? 4 : 1);
    }
    return ct_nn_sequential(b, blocks);
}

/* Convs: kaiming_normal_(mode="fan_out", nonlinearity="relu"); BatchNorm weight 1 and
 * bias 0 (their constructors' values); Linear keeps PyTorch's default (torchvision's
 * ResNet and, for its convs, MobileNetV2: leaky_relu with a = 0 is the same gain). */
static int kaiming_convs(ct_module *m) {
    if (!strcmp(m->type, "Conv2d")) {
        if (ct_init_kaiming_normal_(m->params[0], 0, CT_FAN_OUT, "relu") != 0) return -1;
        if (m->n_params > 1 && ct_init_zeros_(m->params[1]) != 0) return -1;
    }
    for (int i = 0; i < m->n_children; i++)
        if (kaiming_convs(m->children[i]) != 0) return -1;
    return 0;
}

ct_module *ct__model_resnet(ct_resnet_kind kind, int classes, int c) {
    static const int depth[3][4] = {{2, 2, 2, 2}, {3, 4, 6, 3}, {3, 4, 6, 3}};
    int d = kind == CT_RESNET34 ? 1 : kind == CT_RESNET50 ? 2 : 0;
    int bottleneck = kind == CT_RESNET50, cifar = kind == CT_RESNET18_CIFAR;
    ct_module *m = ct_module_new("ResNet", resnet_forward, NULL, NULL);
    if (!m) return NULL;
    int64_t inplanes = 64;
    int rc = ct_module_add_child(m, "conv1", cifar ? ct_nn_conv2d(c, 64, 3, 1, 1, 0)
                                                   : ct_nn_conv2d(c, 64, 7, 2, 3, 0));
    if (!rc) rc = ct_module_add_child(m, "bn1", ct_nn_batch_norm2d(64));
    if (!rc) rc = ct_module_add_child(m, "relu", ct_nn_relu());
    if (!rc && !cifar) rc = ct_module_add_child(m, "maxpool", ct_nn_max_pool2d(3, 2, 1));
    static const char *const layer[4] = {"layer1", "layer2", "layer3", "layer4"};
    for (int i = 0; i < 4 && !rc; i++)
        rc = ct_module_add_child(m, layer[i], make_layer(bottleneck, &inplanes, 64 << i,
                                                         depth[d][i], i ? 2 : 1));
    if (!rc) rc = ct_module_add_child(m, "avgpool", ct_nn_adaptive_avg_pool2d(1, 1));
    if (!rc) rc = ct_module_add_child(m, "fc", ct_nn_linear(inplanes, classes, 1));
    if (!rc) rc = kaiming_convs(m);
    if (rc) {
        ct_module_free(m);
        return NULL;
    }
    return m;
}

/* --------------------------------------------------------------- MobileNetV2 */
/* torchvision's Conv2dNormActivation(in, out, kernel_size, stride, groups) with BatchNorm2d
 * and ReLU6: Sequential(Conv2d(padding (k - 1) / 2, bias=False), BatchNorm2d, ReLU6). */
static ct_module *conv_bn_relu6(int64_t in, int64_t out, int k, int stride, int groups) {
    ct_conv2d_options o = {{k, k}, {stride, stride}, {(k - 1) / 2, (k - 1) / 2}, {1, 1},
                           groups, 0};
    ct_module *parts[3] = {ct_nn_conv2d_ex(in, out, &o), ct_nn_batch_norm2d(out),
                           ct_nn_relu6()};
    return ct_nn_sequential(parts, 3);
}

/* InvertedResidual: child "conv" = Sequential([expand 1x1 CNA,] depthwise 3x3 CNA,
 * Conv2d 1x1 (bias=False), BatchNorm2d); out = x + conv(x) when stride 1 and in == out. */
static ct_tensor *inverted_residual_forward(ct_module *m, const ct_tensor *x) {
    ct_tensor *y = ct_module_forward(m->children[0], x);
    if (!y || !*(const int *)m->impl) return y;
    ct_tensor *sum = ct_add(x, y);
    ct_free(y);
    return sum;
}

static ct_module *inverted_residual(int64_t in, int64_t out, int stride, int expand) {
    int *res = malloc(sizeof *res);
    if (!res) return ct_error_null("InvertedResidual: out of memory");
    *res = stride == 1 && in == out;
    ct_module *m = ct_module_new("InvertedResidual", inverted_residual_forward, res, free);
    if (!m) return NULL;
    int64_t hidden = (int64_t)llround((double)in * expand);
    ct_module *seq = ct_nn_sequential(NULL, 0);
    int rc = seq ? 0 : -1;
    if (!rc && expand != 1) rc = ct_nn_sequential_append(seq, conv_bn_relu6(in, hidden, 1, 1, 1));
    if (!rc) rc = ct_nn_sequential_append(seq, conv_bn_relu6(hidden, hidden, 3, stride, (int)hidden));
    if (!rc) rc = ct_nn_sequential_append(seq, ct_nn_conv2d(hidden, out, 1, 1, 0, 0));
    if (!rc) rc = ct_nn_sequential_append(seq, ct_nn_batch_norm2d(out));
    if (!rc) rc = ct_module_add_child(m, "conv", seq);
    else ct_module_free(seq);
    if (rc) {
        ct_error_context("InvertedResidual(%lld, %lld, stride=%d, expand_ratio=%d)",
                         (long long)in, (long long)out, stride, expand);
        ct_module_free(m);
        return NULL;
    }
    return m;
}

/* features, adaptive_avg_pool2d(1x1), flatten, classifier */
static ct_tensor *mobilenet_forward(ct_module *m, const ct_tensor *x) {
    char s[96];
    if (ct_ndim(x) != 4)
        return ct_error_null("input %s must be a batch of images [N, C, H, W]",
                             ct_shape_str(x, s, sizeof s));
    static const int one[2] = {1, 1};
    ct_tensor *f = ct_module_forward(m->children[0], x);
    ct_tensor *p = f ? ct_adaptive_avg_pool2d(f, one) : NULL;
    ct_free(f);
    ct_tensor *flat = p ? ct_flatten(p, 1, -1) : NULL;
    ct_free(p);
    ct_tensor *y = flat ? ct_module_forward(m->children[1], flat) : NULL;
    ct_free(flat);
    return y;
}

/* Convs kaiming_normal_(fan_out) (bias 0), BatchNorm 1 / 0, Linear normal_(0, 0.01) with
 * bias 0: torchvision's MobileNetV2.__init__. */
static int mobilenet_init(ct_module *m) {
    if (!strcmp(m->type, "Linear")) {
        if (ct_init_normal_(m->params[0], 0, 0.01) != 0) return -1;
        if (m->n_params > 1 && ct_init_zeros_(m->params[1]) != 0) return -1;
    }
    for (int i = 0; i < m->n_children; i++)
        if (mobilenet_init(m->children[i]) != 0) return -1;
    return 0;
}

ct_module *ct__model_mobilenet_v2(int classes, int c) {
    /* t (expansion), c (channels), n (blocks), s (stride of the first) */
    static const int cfg[7][4] = {{1, 16, 1, 1}, {6, 24, 2, 2}, {6, 32, 3, 2}, {6, 64, 4, 2},
                                  {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
    ct_module *m = ct_module_new("MobileNetV2", mobilenet_forward, NULL, NULL);
    ct_module *features = m ? ct_nn_sequential(NULL, 0) : NULL;
    int rc = features ? ct_nn_sequential_append(features, conv_bn_relu6(c, 32, 3, 2, 1)) : -1;
    int64_t in = 32;
    for (int i = 0; i < 7 && !rc; i++)
        for (int j = 0; j < cfg[i][2] && !rc; j++) {
            rc = ct_nn_sequential_append(features, inverted_residual(in, cfg[i][1],
                                                                     j ? 1 : cfg[i][3], cfg[i][0]));
            in = cfg[i][1];
        }
    if (!rc) rc = ct_nn_sequential_append(features, conv_bn_relu6(in, 1280, 1, 1, 1));
    if (!rc) {
        rc = ct_module_add_child(m, "features", features);
        features = NULL;
    }
    ct_module *head[2] = {NULL, NULL};
    if (!rc) {
        head[0] = ct_nn_dropout(0.2);
        head[1] = ct_nn_linear(1280, classes, 1);
        rc = ct_module_add_child(m, "classifier", ct_nn_sequential(head, 2));
    }
    if (!rc) rc = kaiming_convs(m);
    if (!rc) rc = mobilenet_init(m);
    ct_module_free(features);
    if (rc) {
        ct_module_free(m);
        return NULL;
    }
    return m;
}
