/* nn.Sequential: children "0", "1", … applied in order.
 *
 * Fusion: Conv2d, ReLU, MaxPool2d in a row run as one fused op
 * (ct_conv2d_relu_max_pool2d), and a ReLU directly followed by a MaxPool2d as another
 * (ct_relu_max_pool2d): the same outputs and gradients in fewer passes over the
 * activations, without keeping the intermediate results for the backward. Those
 * intermediates are not observable from outside a Sequential, so nothing else changes;
 * when a fused op fails the modules run one by one (and report their own errors). */
#include "ctorch_nn.h"
#include "core/error.h"
#include "nn_fusion.h"
#include "ops/fused.h"

#include <stdio.h>

static ct_tensor *seq_forward(ct_module *m, const ct_tensor *x) {
    ct_tensor *cur = ct_retain((ct_tensor *)x);
    for (int i = 0; i < m->n_children && cur; i++) {
        int k[2], s[2], p[2];
        ct_tensor *w, *b;
        ct_conv2d_options o;
        if (i + 2 < m->n_children && ct_nn__conv2d_info(m->children[i], &w, &b, &o) &&
            ct_nn__is_relu(m->children[i + 1]) &&
            ct_nn__max_pool_params(m->children[i + 2], k, s, p) && ct_ndim(cur) == 4 &&
            ct_size(cur, 1) == ct_size(w, 1) * o.groups) {
            ct_tensor *fused = ct_conv2d_relu_max_pool2d(cur, w, b, o.stride, o.padding,
                                                         o.dilation, o.groups, k, s, p);
            if (fused) {
                ct_free(cur);
                cur = fused;
                i += 2;
                continue;
            }
            ct_clear_error();
        }
        if (i + 1 < m->n_children && ct_nn__is_relu(m->children[i]) &&
            ct_nn__max_pool_params(m->children[i + 1], k, s, p)) {
            ct_tensor *fused = ct_relu_max_pool2d(cur, k, s, p, NULL, 0);
            if (fused) {
                ct_free(cur);
                cur = fused;
                i++;
                continue;
            }
            ct_clear_error();
        }
        ct_tensor *next = ct_module_forward(m->children[i], cur);
        ct_free(cur);
        cur = next;
    }
    return cur;
}

int ct_nn_sequential_append(ct_module *seq, ct_module *mod) {
    if (!seq) {
        ct_module_free(mod);
        return ct_error("Sequential append: NULL Sequential");
    }
    char name[16];
    snprintf(name, sizeof name, "%d", seq->n_children);
    return ct_module_add_child(seq, name, mod);
}

ct_module *ct_nn_sequential(ct_module *const *mods, int n) {
    ct_module *m = ct_module_new("Sequential", seq_forward, NULL, NULL);
    int i = 0;
    if (m && n > 0 && !mods) {
        ct_module_free(m);
        return ct_error_null("Sequential: modules array is NULL but n = %d", n);
    }
    for (; m && i < n; i++) {
        if (!mods[i]) {
            ct_error_context("Sequential: module %d", i); /* keeps the constructor's message */
            break;
        }
        if (ct_nn_sequential_append(m, mods[i]) != 0) {
            i++;
            break;
        }
    }
    if (!m || i < n || m->n_children < n) {
        for (int j = i; j < n; j++) ct_module_free(mods ? mods[j] : NULL);
        ct_module_free(m);
        return NULL;
    }
    return m;
}
