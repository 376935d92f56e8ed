/* torch.nn.utils.clip_grad_norm_ (error_if_nonfinite=False): the norm of all gradients
 * taken together is the norm of the per-gradient norms (PyTorch's formula, the foreach
 * path); every gradient is scaled in place by min(max_norm / (total + 1e-6), 1). The
 * per-gradient norms are computed with the ops (on the gradient's device, in float64) and
 * combined on the host. */
#include "ctorch.h"
#include "ctorch_optim.h"
#include "core/error.h"

#include <math.h>

/* *out = the p-norm of g (float64 arithmetic); -1 with an error on failure. */
static int grad_norm(const ct_tensor *g, double p, double *out) {
    ct_tensor *d = ct_to_dtype(g, CT_FLOAT64), *a = d ? ct_abs(d) : NULL, *r = NULL;
    double v = NAN;
    if (a && ct_numel(a) == 0) {
        v = 0.0;
    } else if (a && isinf(p)) {
        r = ct_max_all(a);
    } else if (a) {
        ct_tensor *t = p == 1.0 ? ct_retain(a) : p == 2.0 ? ct_mul(a, a) : ct_pow_scalar(a, p);
        r = t ? ct_sum(t, NULL, 0, 0) : NULL;
        ct_free(t);
    }
    const int ok = r || (a && ct_numel(a) == 0);
    if (r) v = ct_item(r);
    if (r && !isinf(p)) v = p == 1.0 ? v : p == 2.0 ? sqrt(v) : pow(v, 1.0 / p);
    ct_free(d), ct_free(a), ct_free(r);
    *out = v;
    return ok ? 0 : -1;
}

double ct_clip_grad_norm_(ct_tensor *const *params, int n, double max_norm, double norm_type) {
    if (n < 0 || (n > 0 && !params))
        return ct_error("clip_grad_norm_: params is NULL or n (%d) is negative", n), -1.0;
    if (!(norm_type > 0.0))
        return ct_error("clip_grad_norm_: norm_type %g is not supported; use a p > 0 "
                        "(2.0 for the Euclidean norm) or INFINITY", norm_type), -1.0;
    const int prev = ct_set_grad_enabled(0);
    double total = 0.0;
    int rc = 0, any = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const ct_tensor *g = params[i] ? ct_grad(params[i]) : NULL;
        if (!g) continue;
        double v = 0.0;
        if (grad_norm(g, norm_type, &v) != 0) rc = -1;
        any = 1;
        if (isinf(norm_type)) total = (v > total || isnan(v)) ? v : total;
        else total += norm_type == 1.0 ? v : norm_type == 2.0 ? v * v : pow(v, norm_type);
    }
    if (rc == 0 && any && !isinf(norm_type))
        total = norm_type == 1.0 ? total : norm_type == 2.0 ? sqrt(total) : pow(total, 1.0 / norm_type);
    const double coef = max_norm / (total + 1e-6);
    if (rc == 0 && !(coef >= 1.0)) /* coef < 1 or NaN: scaled (by NaN too, as PyTorch) */
        for (int i = 0; i < n && rc == 0; i++) {
            ct_tensor *g = params[i] ? ct_grad(params[i]) : NULL;
            if (g && ct_mul_scalar_(g, coef) != 0) rc = -1;
        }
    ct_set_grad_enabled(prev);
    return rc == 0 ? total : -1.0;
}
