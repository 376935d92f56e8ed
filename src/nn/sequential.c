/* nn.Sequential: children "0", "1", … applied in order. */
#include "ctorch_nn.h"
#include "core/error.h"

#include <stdio.h>

static ct_tensor *seq_forward(ct_module *m, const ct_tensor *x) {
    ct_tensor *cur = ct_retain((ct_tensor *)x);
    for (int i = 0; i < m->n_children && cur; i++) {
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
