/* Built-in models: simple_cnn (the seed's SimpleCNN), mlp, and torchvision's (torchvision.c):
 * resnet18_cifar, resnet18, resnet34, resnet50, mobilenet_v2, with PyTorch's/torchvision's
 * state_dict names. */
#include "models_internal.h"
#include "core/error.h"

#include <string.h>

static const char *const g_names[] = {"simple_cnn", "mlp", "resnet18_cifar", "resnet18",
                                      "resnet34", "resnet50", "mobilenet_v2", "vit_tiny",
                                      "vit_b_16", NULL};
static const char g_choices[] = "simple_cnn, mlp, resnet18_cifar, resnet18, resnet34, resnet50, "
                                "mobilenet_v2, vit_tiny or vit_b_16";
const char *const *ct_model_names(void) { return g_names; }

const char *ct_model_head(const char *name) {
    if (!name) return NULL;
    if (!strcmp(name, "simple_cnn")) return "classifier.";
    if (!strcmp(name, "mlp")) return "fc2.";
    if (!strcmp(name, "mobilenet_v2")) return "classifier.1.";
    if (!strncmp(name, "resnet", 6)) return "fc.";
    if (!strncmp(name, "vit_", 4)) return "heads.head.";
    return NULL;
}

/* ---------------------------------------------------------------- SimpleCNN */
static ct_tensor *simple_cnn_forward(ct_module *m, const ct_tensor *x) {
    char s[96];
    if (ct_ndim(x) != 4)
        return ct_error_null("input %s must be a batch of images [N, C, H, W]",
                             ct_shape_str(x, s, sizeof s));
    ct_tensor *f = ct_module_forward(m->children[0], x);
    ct_tensor *flat = f ? ct_flatten(f, 1, -1) : NULL;
    ct_free(f);
    ct_tensor *y = flat ? ct_module_forward(m->children[1], flat) : NULL;
    ct_free(flat);
    return y;
}

static ct_module *simple_cnn(int classes, int c, int h, int w) {
    ct_module *m = ct_module_new("SimpleCNN", simple_cnn_forward, NULL, NULL);
    if (!m) return NULL;
    ct_module *f[6] = {ct_nn_conv2d(c, 32, 3, 1, 1, 1), ct_nn_relu(), ct_nn_max_pool2d(2, 2, 0),
                       ct_nn_conv2d(32, 64, 3, 1, 1, 1), ct_nn_relu(), ct_nn_max_pool2d(2, 2, 0)};
    int64_t feat = 64 * (int64_t)(h / 4) * (int64_t)(w / 4);
    if (ct_module_add_child(m, "features", ct_nn_sequential(f, 6)) != 0 ||
        ct_module_add_child(m, "classifier", ct_nn_linear(feat, classes, 1)) != 0) {
        ct_module_free(m);
        return NULL;
    }
    return m;
}

/* ---------------------------------------------------------------------- MLP */
static ct_tensor *mlp_forward(ct_module *m, const ct_tensor *x) {
    char s[96];
    if (ct_ndim(x) < 1)
        return ct_error_null("input %s must have a batch dimension", ct_shape_str(x, s, sizeof s));
    ct_tensor *flat = ct_ndim(x) > 1 ? ct_flatten(x, 1, -1) : ct_retain((ct_tensor *)x);
    ct_tensor *h = flat ? ct_module_forward(m->children[0], flat) : NULL;
    ct_free(flat);
    ct_tensor *a = h ? ct_module_forward(m->children[1], h) : NULL;
    ct_free(h);
    ct_tensor *y = a ? ct_module_forward(m->children[2], a) : NULL;
    ct_free(a);
    return y;
}

static ct_module *mlp(int classes, int c, int h, int w) {
    ct_module *m = ct_module_new("MLP", mlp_forward, NULL, NULL);
    if (!m) return NULL;
    int64_t in = (int64_t)c * h * w;
    if (ct_module_add_child(m, "fc1", ct_nn_linear(in, 128, 1)) != 0 ||
        ct_module_add_child(m, "relu", ct_nn_relu()) != 0 ||
        ct_module_add_child(m, "fc2", ct_nn_linear(128, classes, 1)) != 0) {
        ct_module_free(m);
        return NULL;
    }
    return m;
}

/* ------------------------------------------------------------------ factory */
ct_module *ct_model_create_ex(const char *name, int num_classes, int in_channels, int height,
                              int width) {
    if (!name) return ct_error_null("model: name is NULL; choose %s", g_choices);
    if (num_classes < 1)
        return ct_error_null("model %s: num_classes must be >= 1, got %d", name, num_classes);
    if (in_channels < 1 || height < 1 || width < 1)
        return ct_error_null("model %s: input size %dx%dx%d (C x H x W) must be positive", name,
                             in_channels, height, width);
    ct_module *m = NULL;
    if (!strcmp(name, "simple_cnn")) {
        if (height < 4 || width < 4)
            return ct_error_null("model simple_cnn: images must be at least 4x4 (two 2x2 "
                                 "max-pools), got %dx%d", height, width);
        m = simple_cnn(num_classes, in_channels, height, width);
    } else if (!strcmp(name, "mlp")) {
        m = mlp(num_classes, in_channels, height, width);
    } else if (!strcmp(name, "resnet18_cifar")) {
        m = ct__model_resnet(CT_RESNET18_CIFAR, num_classes, in_channels);
    } else if (!strcmp(name, "resnet18")) {
        m = ct__model_resnet(CT_RESNET18, num_classes, in_channels);
    } else if (!strcmp(name, "resnet34")) {
        m = ct__model_resnet(CT_RESNET34, num_classes, in_channels);
    } else if (!strcmp(name, "resnet50")) {
        m = ct__model_resnet(CT_RESNET50, num_classes, in_channels);
    } else if (!strcmp(name, "mobilenet_v2")) {
        m = ct__model_mobilenet_v2(num_classes, in_channels);
    } else if (!strcmp(name, "vit_tiny") || !strcmp(name, "vit_b_16")) {
        int tiny = name[4] == 't', size = tiny ? 32 : 224;
        if (height != size || width != size)
            return ct_error_null("model %s: takes %dx%d images (its position embeddings are "
                                 "for that size), got %dx%d; resize the images (--image-size "
                                 "%d)", name, size, size, height, width, size);
        m = tiny ? ct__model_vit(32, 4, 12, 3, 192, 768, num_classes, in_channels)
                 : ct__model_vit(224, 16, 12, 12, 768, 3072, num_classes, in_channels);
    } else {
        return ct_error_null("model: unknown model \"%s\"; choose %s", name, g_choices);
    }
    if (!m) ct_error_context("model %s", name);
    return m;
}

ct_module *ct_model_create(const char *name, int num_classes) {
    if (name && !strcmp(name, "vit_b_16")) return ct_model_create_ex(name, num_classes, 3, 224, 224);
    if (name && !strcmp(name, "mlp")) return ct_model_create_ex(name, num_classes, 1, 28, 28);
    return ct_model_create_ex(name, num_classes, 3, 32, 32);
}
