/* Read-only configuration of the built-in modules (not public), for code that describes a
 * module tree rather than running it: the ONNX exporter (src/nn/onnx_export.c). Each
 * accessor answers 1 and fills its outputs only when m is the genuine built-in module (its
 * forward function is the one of its source file), so a user module that merely reuses a
 * type name is never mistaken for it; otherwise 0. Conv2d: ct_nn__conv2d_info
 * (nn_fusion.h). */
#ifndef CT_NN_CONFIG_H
#define CT_NN_CONFIG_H

#include "ctorch_nn.h"

typedef struct {
    int is_max; /* MaxPool2d (1) or AvgPool2d (0) */
    int kernel[2], stride[2], padding[2], dilation[2];
    int ceil_mode, count_include_pad;
} ct_nn_pool2d_info;

int ct_nn__pool2d_info(const ct_module *m, ct_nn_pool2d_info *out);
/* AdaptiveAvgPool2d: its output size (height, width). */
int ct_nn__adaptive_avg_pool2d_info(const ct_module *m, int out[2]);
/* BatchNorm2d: eps, affine (weight, bias are params[0], params[1]), track_running_stats
 * (running_mean, running_var are buffers[0], buffers[1]). */
int ct_nn__batch_norm2d_info(const ct_module *m, double *eps, int *affine, int *track);
/* Linear: its weight and bias (NULL without). */
int ct_nn__linear_info(const ct_module *m, ct_tensor **weight, ct_tensor **bias);
int ct_nn__flatten_info(const ct_module *m, int *start_dim, int *end_dim);
int ct_nn__gelu_info(const ct_module *m, int *approximate_tanh);
int ct_nn__is_dropout(const ct_module *m);
int ct_nn__is_identity(const ct_module *m);

#endif
