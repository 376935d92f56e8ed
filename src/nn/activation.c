/* Parameter-free modules: ReLU, ReLU6, GELU, Identity, Flatten. */
#include "ctorch_nn.h"
#include "core/error.h"
#include "nn_config.h"
#include "core/tensor_impl.h"
#include "nn_fusion.h"

#include <stdlib.h>

static ct_tensor *relu_forward(ct_module *m, const ct_tensor *x) {
    (void)m;
    return ct_relu(x);
}
ct_module *ct_nn_relu(void) { return ct_module_new("ReLU", relu_forward, NULL, NULL); }
int ct_nn__is_relu(const ct_module *m) { return m && m->forward == relu_forward; }

static ct_tensor *relu6_forward(ct_module *m, const ct_tensor *x) {
    (void)m;
    return ct_relu6(x);
}
ct_module *ct_nn_relu6(void) { return ct_module_new("ReLU6", relu6_forward, NULL, NULL); }

static ct_tensor *gelu_forward(ct_module *m, const ct_tensor *x) {
    return ct_gelu(x, *(int *)m->impl);
}
int ct_nn__gelu_info(const ct_module *m, int *approximate_tanh) {
    if (!m || m->forward != gelu_forward) return 0;
    *approximate_tanh = *(const int *)m->impl;
    return 1;
}
static void gelu_repr(const ct_module *m, char *buf, size_t n) {
    snprintf(buf, n, "approximate='%s'", *(int *)m->impl ? "tanh" : "none");
}
ct_module *ct_nn_gelu(int approximate_tanh) {
    int *c = malloc(sizeof *c);
    if (!c) return ct_error_null("GELU: out of memory");
    *c = approximate_tanh != 0;
    ct_module *m = ct_module_new("GELU", gelu_forward, c, free);
    if (m) m->extra_repr = gelu_repr;
    return m;
}

static ct_tensor *identity_forward(ct_module *m, const ct_tensor *x) {
    (void)m;
    return ct_retain((ct_tensor *)x);
}
int ct_nn__is_identity(const ct_module *m) { return m && m->forward == identity_forward; }
ct_module *ct_nn_identity(void) { return ct_module_new("Identity", identity_forward, NULL, NULL); }

typedef struct {
    int start, end;
} flatten_cfg;

static ct_tensor *flatten_forward(ct_module *m, const ct_tensor *x) {
    const flatten_cfg *c = m->impl;
    return ct_flatten(x, c->start, c->end);
}
int ct_nn__flatten_info(const ct_module *m, int *start_dim, int *end_dim) {
    if (!m || m->forward != flatten_forward) return 0;
    *start_dim = ((const flatten_cfg *)m->impl)->start;
    *end_dim = ((const flatten_cfg *)m->impl)->end;
    return 1;
}
static void flatten_repr(const ct_module *m, char *buf, size_t n) {
    const flatten_cfg *c = m->impl;
    snprintf(buf, n, "start_dim=%d, end_dim=%d", c->start, c->end);
}
ct_module *ct_nn_flatten(int start_dim, int end_dim) {
    flatten_cfg *c = malloc(sizeof *c);
    if (!c) return ct_error_null("Flatten: out of memory");
    c->start = start_dim;
    c->end = end_dim;
    ct_module *m = ct_module_new("Flatten", flatten_forward, c, free);
    if (m) m->extra_repr = flatten_repr;
    return m;
}
