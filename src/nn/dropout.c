/* nn.Dropout: zeroes elements with probability p in training, scales by 1/(1-p). */
#include "ctorch_nn.h"
#include "core/error.h"
#include "nn_config.h"

#include <math.h>
#include <stdlib.h>

static ct_tensor *dropout_forward(ct_module *m, const ct_tensor *x) {
    return ct_dropout(x, *(double *)m->impl, m->training);
}
int ct_nn__is_dropout(const ct_module *m) { return m && m->forward == dropout_forward; }
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

ct_module *ct_nn_dropout_opt(const ct_dropout_opts *o) {
    double p = o ? o->p : 0.0;
    if (p == 0.0) return ct_nn_dropout(0.5);
    if (!(p > 0 && p <= 1))
        return ct_error_null("Dropout: options .p = %g must be in (0, 1] (0 means PyTorch's "
                             "default 0.5; a dropout that keeps everything is ct_nn_dropout(0))",
                             p);
    return ct_nn_dropout(p);
}
