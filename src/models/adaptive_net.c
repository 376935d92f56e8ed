/* The seed's AdaptiveNet: a backbone, a main head and an auxiliary head used only in
 * training when forward is asked for it, as PyTorch's
 *
 *     class AdaptiveNet(nn.Module):
 *         def __init__(self):
 *             super().__init__()
 *             self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU())
 *             self.main_head = nn.Linear(256, 10)
 *             self.aux_head = nn.Linear(128, 5)
 *         def forward(self, x, use_aux=False):
 *             h = self.backbone(x)
 *             out = self.main_head(h)
 *             if self.training and use_aux:
 *                 return out, self.aux_head(h[:, :128])
 *             return out
 *
 * The seed declares aux_head = nn.Linear(256, 5) but feeds it h[:, :128], 128 features:
 * that forward fails in PyTorch itself ("mat1 and mat2 shapes cannot be multiplied
 * (Nx128 and 256x5)"), so aux_head here is Linear(128, 5), which fits its own slice. */
#include "ctorch_nn.h"
#include "core/error.h"

enum { A_BACKBONE, A_MAIN, A_AUX };
enum { HIDDEN = 256, AUX_FEATURES = 128 };

static const char *const g_kwargs[] = {"use_aux", NULL};

static int adaptive_call(ct_module *m, const ct_module_args *in, ct_module_outputs *out) {
    int use_aux = ct_module_args_get(in, "use_aux", 0) != 0;
    ct_tensor *h = ct_module_forward(m->children[A_BACKBONE], in->tensors[0]);
    if (!h) return -1;
    ct_tensor *y = ct_module_forward(m->children[A_MAIN], h);
    if (y) out->tensors[out->n++] = y;
    if (y && m->training && use_aux) {
        ct_tensor *first = ct_narrow(h, 1, 0, AUX_FEATURES); /* h[:, :128], a view */
        ct_tensor *aux = first ? ct_module_forward(m->children[A_AUX], first) : NULL;
        ct_free(first);
        if (aux) out->tensors[out->n++] = aux;
        else y = NULL;
    }
    ct_free(h);
    return y ? 0 : -1; /* on failure ct_module_call releases what is in out */
}

ct_module *ct_model_adaptive_net(int64_t in_features, int num_classes, int aux_classes) {
    if (in_features < 1 || num_classes < 1 || aux_classes < 1)
        return ct_error_null("AdaptiveNet: in_features (%lld), num_classes (%d) and "
                             "aux_classes (%d) must be >= 1", (long long)in_features,
                             num_classes, aux_classes);
    ct_module *m = ct_module_new("AdaptiveNet", NULL, NULL, NULL);
    if (!m) return NULL;
    ct_module *backbone[3] = {ct_nn_flatten(1, -1), ct_nn_linear_opt(in_features, HIDDEN, NULL),
                              ct_nn_relu()};
    if (ct_module_add_child(m, "backbone", ct_nn_sequential(backbone, 3)) != 0 ||
        ct_module_add_child(m, "main_head", ct_nn_linear_opt(HIDDEN, num_classes, NULL)) != 0 ||
        ct_module_add_child(m, "aux_head", ct_nn_linear_opt(AUX_FEATURES, aux_classes, NULL)) ||
        ct_module_set_call(m, adaptive_call, 1, g_kwargs) != 0) {
        ct_error_context("AdaptiveNet(%lld, %d, %d)", (long long)in_features, num_classes,
                         aux_classes);
        ct_module_free(m);
        return NULL;
    }
    return m;
}
