/* The model builders shared by the factory (models.c) and torchvision.c. */
#ifndef CT_MODELS_INTERNAL_H
#define CT_MODELS_INTERNAL_H

#include "ctorch_nn.h"

typedef enum { CT_RESNET18_CIFAR, CT_RESNET18, CT_RESNET34, CT_RESNET50 } ct_resnet_kind;

/* torchvision's ResNet of that depth (CT_RESNET18_CIFAR: the CIFAR stem) with c input
 * channels, initialised as torchvision does. */
ct_module *ct__model_resnet(ct_resnet_kind kind, int classes, int c);
/* torchvision's mobilenet_v2 (width_mult 1.0) with c input channels. */
ct_module *ct__model_mobilenet_v2(int classes, int c);

/* torchvision's VisionTransformer (no representation layer, no conv stem) with c input
 * channels, initialised as torchvision does (vit.c). */
ct_module *ct__model_vit(int image_size, int patch_size, int num_layers, int num_heads,
                         int hidden, int mlp_dim, int classes, int c);

#endif
