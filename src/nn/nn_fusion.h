/* What nn.Sequential needs to recognise fusable module patterns (not public). A module
 * matches only when it is the genuine built-in one (its forward function is ours), so a
 * module whose forward was replaced is always run as is. */
#ifndef CT_NN_FUSION_H
#define CT_NN_FUSION_H

#include "ctorch_nn.h"

int ct_nn__is_relu(const ct_module *m);
/* 1 and its weight, bias (NULL without) and options when m is a built-in Conv2d. */
int ct_nn__conv2d_info(const ct_module *m, ct_tensor **weight, ct_tensor **bias,
                       ct_conv2d_options *o);
/* 1 and the window when m is a built-in MaxPool2d (dilation 1, no ceil mode), else 0. */
int ct_nn__max_pool_params(const ct_module *m, int kernel[2], int stride[2], int padding[2]);

#endif
