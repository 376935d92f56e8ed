/* torchvision's VisionTransformer (torchvision/models/vision_transformer.py) with its
 * architecture, state_dict names and initialisation:
 *   conv_proj      Conv2d(C, hidden, patch, stride=patch): trunc_normal_(std=sqrt(1/fan_in)),
 *                  bias 0
 *   class_token    [1, 1, hidden], zeros
 *   encoder        pos_embedding [1, seq, hidden] normal_(std=0.02), dropout,
 *                  layers.encoder_layer_N (EncoderBlock: ln_1, self_attention
 *                  (MultiheadAttention, batch_first), dropout, ln_2, mlp = MLPBlock
 *                  (0 Linear(hidden, mlp), 1 GELU, 2 Dropout, 3 Linear(mlp, hidden),
 *                  4 Dropout; Linear weights xavier_uniform_, biases normal_(std=1e-6))),
 *                  ln (LayerNorm eps 1e-6)
 *   heads.head     Linear(hidden, classes), zeros
 * vit_tiny: image 32, patch 4, 12 layers, 3 heads, hidden 192, MLP 768.
 * vit_b_16: image 224, patch 16, 12 layers, 12 heads, hidden 768, MLP 3072. */
#include "models_internal.h"
#include "core/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int image_size, patch_size;
    int64_t hidden;
} vit_cfg;

enum { B_LN1, B_ATTN, B_DROP, B_LN2, B_MLP };

/* EncoderBlock: x = input + dropout(self_attention(ln_1(input))); x + mlp(ln_2(x)) */
static ct_tensor *encoder_block_forward(ct_module *m, const ct_tensor *input) {
    CT_SCOPE(s);
    char sh[96];
    if (ct_ndim(input) != 3)
        return ct_error_null("Expected (batch_size, seq_length, hidden_dim) got %s",
                             ct_shape_str(input, sh, sizeof sh));
    ct_tensor *x = ct_module_forward(m->children[B_LN1], input);
    if (x) x = ct_nn_multihead_attention_forward(m->children[B_ATTN], x, x, x, NULL, NULL);
    if (x) x = ct_module_forward(m->children[B_DROP], x);
    if (x) x = ct_add(x, input);
    ct_tensor *y = x ? ct_module_forward(m->children[B_LN2], x) : NULL;
    if (y) y = ct_module_forward(m->children[B_MLP], y);
    return ct_keep(y ? ct_add(x, y) : NULL);
}

static ct_module *layer_norm6(int64_t d) {
    return ct_nn_layer_norm(&d, 1, &(ct_layer_norm_opts){.eps = 1e-6});
}

static ct_module *encoder_block(int64_t heads, int64_t hidden, int64_t mlp_dim) {
    ct_module *m = ct_module_new("EncoderBlock", encoder_block_forward, NULL, NULL);
    if (!m) return NULL;
    int rc = ct_module_add_child(m, "ln_1", layer_norm6(hidden));
    if (!rc)
        rc = ct_module_add_child(m, "self_attention", ct_nn_multihead_attention(
                                     hidden, heads, &(ct_mha_opts){.batch_first = 1}));
    if (!rc) rc = ct_module_add_child(m, "dropout", ct_nn_dropout(0));
    if (!rc) rc = ct_module_add_child(m, "ln_2", layer_norm6(hidden));
    ct_module *mlp[5] = {NULL};
    if (!rc) {
        mlp[0] = ct_nn_linear(hidden, mlp_dim, 1);
        mlp[1] = ct_nn_gelu(0);
        mlp[2] = ct_nn_dropout(0);
        mlp[3] = ct_nn_linear(mlp_dim, hidden, 1);
        mlp[4] = ct_nn_dropout(0);
        /* MLPBlock: xavier_uniform_ weights, normal_(std=1e-6) biases */
        for (int i = 0; i < 5 && !rc; i += 3)
            if (!mlp[i] || ct_init_xavier_uniform_(mlp[i]->params[0], 1.0) != 0 ||
                ct_init_normal_(mlp[i]->params[1], 0, 1e-6) != 0)
                rc = -1;
        if (!rc) rc = ct_module_add_child(m, "mlp", ct_nn_sequential(mlp, 5));
        else
            for (int i = 0; i < 5; i++) ct_module_free(mlp[i]);
    }
    if (rc) {
        ct_module_free(m);
        return NULL;
    }
    return m;
}

/* Encoder: ln(layers(dropout(input + pos_embedding))) */
static ct_tensor *encoder_forward(ct_module *m, const ct_tensor *input) {
    CT_SCOPE(s);
    char sh[96], sp[96];
    ct_tensor *pos = m->params[0];
    if (ct_ndim(input) != 3 || ct_size(input, 1) != ct_size(pos, 1) ||
        ct_size(input, 2) != ct_size(pos, 2))
        return ct_error_null("input %s must be [N, %lld, %lld] (pos_embedding %s): the image "
                             "size must be the model's",
                             ct_shape_str(input, sh, sizeof sh), (long long)ct_size(pos, 1),
                             (long long)ct_size(pos, 2), ct_shape_str(pos, sp, sizeof sp));
    ct_tensor *x = ct_add(input, pos);
    for (int i = 0; i < m->n_children && x; i++) x = ct_module_forward(m->children[i], x);
    return ct_keep(x);
}

static ct_tensor *vit_forward(ct_module *m, const ct_tensor *x) {
    const vit_cfg *c = m->impl;
    CT_SCOPE(s);
    char sh[96];
    if (ct_ndim(x) != 4 || ct_size(x, 2) != c->image_size || ct_size(x, 3) != c->image_size)
        return ct_error_null("input %s must be a batch of images [N, C, %d, %d] (the model's "
                             "image size)", ct_shape_str(x, sh, sizeof sh), c->image_size,
                             c->image_size);
    int64_t n = ct_size(x, 0), g = c->image_size / c->patch_size;
    ct_tensor *p = ct_module_forward(m->children[0], x); /* [N, hidden, g, g] */
    int64_t ps[3] = {n, c->hidden, g * g};
    p = p ? ct_reshape(p, ps, 3) : NULL;
    p = p ? ct_permute(p, (const int[]){0, 2, 1}, 3) : NULL; /* [N, g*g, hidden] */
    if (!p) return NULL;
    int64_t cs[3] = {n, 1, c->hidden};
    ct_tensor *cls = ct_expand(m->params[0], cs, 3);
    /* autocast: the patches come in 16 bits, the class token in float32; torch.cat
     * promotes to the wider type, as here */
    if (cls && ct_dtype_of(p) != ct_dtype_of(cls)) p = ct_to_dtype(p, ct_dtype_of(cls));
    if (!p) return NULL;
    ct_tensor *parts[2] = {cls, p};
    ct_tensor *seq = cls ? ct_cat(parts, 2, 1) : NULL;
    ct_tensor *e = seq ? ct_module_forward(m->children[1], seq) : NULL;
    ct_tensor *first = e ? ct_narrow(e, 1, 0, 1) : NULL;
    first = first ? ct_squeeze(first, 1) : NULL; /* x[:, 0] */
    ct_tensor *y = first ? ct_module_forward(m->children[2], first) : NULL;
    return ct_keep(y);
}

/* nn.init.trunc_normal_(t, std=std) with torch's default bounds [-2, 2]: normal draws,
 * those outside redrawn (with std well below 1 none are). */
static int trunc_normal(ct_tensor *t, double std) {
    if (ct_init_normal_(t, 0, std) != 0) return -1;
    float *p = ct_data(t);
    int64_t n = ct_numel(t);
    for (int64_t i = 0; i < n; i++)
        while (p[i] < -2 || p[i] > 2) {
            int64_t one = 1;
            ct_tensor *r = ct_randn(&one, 1, CT_FLOAT32);
            if (!r) return -1;
            p[i] = (float)(*(float *)ct_data(r) * std);
            ct_free(r);
        }
    return 0;
}

ct_module *ct__model_vit(int image_size, int patch_size, int num_layers, int num_heads,
                         int hidden, int mlp_dim, int classes, int c) {
    if (image_size % patch_size)
        return ct_error_null("VisionTransformer: image size %d must be a multiple of the patch "
                             "size %d", image_size, patch_size);
    vit_cfg *cfg = malloc(sizeof *cfg);
    if (!cfg) return ct_error_null("VisionTransformer: out of memory");
    cfg->image_size = image_size;
    cfg->patch_size = patch_size;
    cfg->hidden = hidden;
    ct_module *m = ct_module_new("VisionTransformer", vit_forward, cfg, free);
    if (!m) return NULL;
    int64_t seq = (int64_t)(image_size / patch_size) * (image_size / patch_size) + 1;
    /* registration order as torchvision's: conv_proj, class_token, encoder, heads */
    int rc = ct_module_add_child(m, "conv_proj", ct_nn_conv2d(c, hidden, patch_size, patch_size, 0, 1));
    int64_t cs[3] = {1, 1, hidden}, ps[3] = {1, seq, hidden};
    ct_tensor *cls = rc ? NULL : ct_zeros(cs, 3, CT_FLOAT32);
    if (!rc) rc = cls && ct_module_add_parameter(m, "class_token", cls) >= 0 ? 0 : -1;
    ct_free(cls);
    ct_module *enc = rc ? NULL : ct_module_new("Encoder", encoder_forward, NULL, NULL);
    ct_tensor *pos = enc ? ct_empty(ps, 3, CT_FLOAT32) : NULL;
    rc = rc || !pos || ct_init_normal_(pos, 0, 0.02) != 0 ||
         ct_module_add_parameter(enc, "pos_embedding", pos) < 0;
    ct_free(pos);
    if (!rc) rc = ct_module_add_child(enc, "dropout", ct_nn_dropout(0));
    ct_module *layers = rc ? NULL : ct_nn_sequential(NULL, 0);
    if (!rc && !layers) rc = -1;
    for (int i = 0; i < num_layers && !rc; i++) {
        char name[32];
        snprintf(name, sizeof name, "encoder_layer_%d", i);
        rc = ct_module_add_child(layers, name, encoder_block(num_heads, hidden, mlp_dim));
    }
    if (!rc) {
        rc = ct_module_add_child(enc, "layers", layers);
        layers = NULL;
    }
    if (!rc) rc = ct_module_add_child(enc, "ln", layer_norm6(hidden));
    if (!rc) {
        rc = ct_module_add_child(m, "encoder", enc);
        enc = NULL;
    }
    if (!rc) {
        ct_module *head = ct_nn_linear(hidden, classes, 1);
        ct_module *hl = ct_nn_sequential(NULL, 0);
        rc = hl && head ? 0 : -1;
        if (!rc) rc = ct_module_add_child(hl, "head", head);
        else ct_module_free(head);
        if (!rc) rc = ct_module_add_child(m, "heads", hl);
        else ct_module_free(hl);
    }
    if (!rc) {
        ct_module *conv = m->children[0];
        rc = trunc_normal(conv->params[0], sqrt(1.0 / ((double)c * patch_size * patch_size))) ||
             ct_init_zeros_(conv->params[1]);
    }
    if (!rc) {
        ct_module *head = ct_module_get(m, "heads.head");
        rc = ct_init_zeros_(head->params[0]) || ct_init_zeros_(head->params[1]);
    }
    ct_module_free(layers);
    ct_module_free(enc);
    if (rc) {
        ct_module_free(m);
        return NULL;
    }
    return m;
}
