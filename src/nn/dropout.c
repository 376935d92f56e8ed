/* nn.Dropout: zeroes elements with probability p in training, scales by 1/(1-p). */
#include "ctorch_nn.h"
#include "core/error.h"

#include <math.h>
#include <stdlib.h>

static ct_tensor *dropout_forward(ct_module *m, const ct_tensor *x) {
    return ct_dropout(x, *(double *)m->impl, m->training);
}
static void dropout_repr(const ct_module *m, char *buf, size_t n) {
    snprintf(buf, n, "p=%g", *(double *)m->impl);
}

ct_module *ct_nn_dropout(double p) {
    if (!(p >= 0 && p <= 1))
        return ct_error_null("Dropout: probability has to be between 0 and 1, but got %g", p);
    double *c = malloc(sizeof *c);
    if (!c) return ct_error_null("Dropout: out of memory");
    *c = p;
    ct_module *m = ct_module_new("Dropout", dropout_forward, c, free);
    if (m) m->extra_repr = dropout_repr;
    return m;
}
