/* torch.nn.init: in-place initialisations drawn from ctorch's seeded stream. */
#include "ctorch_nn.h"
#include "core/error.h"
#include "core/tensor_impl.h"

#include <math.h>
#include <string.h>

int ct_init_calculate_fan(const ct_tensor *t, int64_t *fan_in, int64_t *fan_out) {
    if (!t) return ct_error("init: NULL tensor");
    if (t->ndim < 2) {
        char s[96];
        return ct_error("init: fan in and fan out can not be computed for tensor %s with fewer "
                        "than 2 dimensions",
                        ct_shape_str(t, s, sizeof s));
    }
    int64_t rf = 1;
    for (int d = 2; d < t->ndim; d++) rf *= t->shape[d];
    if (fan_in) *fan_in = t->shape[1] * rf;
    if (fan_out) *fan_out = t->shape[0] * rf;
    return 0;
}

double ct_init_calculate_gain(const char *nl, double param) {
    if (!nl) nl = "leaky_relu";
    static const char *linear_fns[] = {"linear", "conv1d", "conv2d", "conv3d",
                                       "conv_transpose1d", "conv_transpose2d",
                                       "conv_transpose3d", "sigmoid", NULL};
    for (int i = 0; linear_fns[i]; i++)
        if (!strcmp(nl, linear_fns[i])) return 1.0;
    if (!strcmp(nl, "tanh")) return 5.0 / 3;
    if (!strcmp(nl, "relu")) return sqrt(2.0);
    if (!strcmp(nl, "leaky_relu")) {
        double slope = param < 0 ? 0.01 : param;
        return sqrt(2.0 / (1 + slope * slope));
    }
    if (!strcmp(nl, "selu")) return 3.0 / 4;
    ct_error("init: unsupported nonlinearity \"%s\" (linear, conv2d, sigmoid, tanh, relu, "
             "leaky_relu, selu)", nl);
    return NAN;
}

/* Draws numel(t) uniform [0,1) (normal = 0) or N(0,1) numbers in float64, maps them with
 * v*scale + shift, and copies them into t (any dtype/device/strides). */
static int fill_random(ct_tensor *t, int normal, double scale, double shift, const char *op) {
    if (!t) return ct_error("%s: NULL tensor", op);
    if (!ct_is_floating(t->dtype))
        return ct_error("%s: tensor dtype %s is not floating point", op, ct_dtype_name(t->dtype));
    if (ct_numel(t) == 0) return 0;
    ct_tensor *r = normal ? ct_randn(t->shape, t->ndim, CT_FLOAT64)
                          : ct_rand(t->shape, t->ndim, CT_FLOAT64);
    if (!r) return -1;
    double *p = ct_data(r);
    int64_t n = ct_numel(r);
    for (int64_t i = 0; i < n; i++) p[i] = p[i] * scale + shift;
    int prev = ct_set_grad_enabled(0);
    int rc = ct_copy_(t, r);
    ct_set_grad_enabled(prev);
    ct_free(r);
    if (rc) ct_error_context("%s", op);
    return rc;
}

int ct_init_uniform_(ct_tensor *t, double low, double high) {
    if (!(low <= high)) return ct_error("uniform_: low %g must not exceed high %g", low, high);
    return fill_random(t, 0, high - low, low, "uniform_");
}

int ct_init_normal_(ct_tensor *t, double mean, double std) {
    if (!(std >= 0)) return ct_error("normal_: std must be >= 0, got %g", std);
    return fill_random(t, 1, std, mean, "normal_");
}

int ct_init_constant_(ct_tensor *t, double value) {
    if (!t) return ct_error("constant_: NULL tensor");
    int prev = ct_set_grad_enabled(0);
    int rc = ct_fill_(t, value);
    ct_set_grad_enabled(prev);
    return rc;
}
int ct_init_zeros_(ct_tensor *t) { return ct_init_constant_(t, 0); }
int ct_init_ones_(ct_tensor *t) { return ct_init_constant_(t, 1); }

static int kaiming_std(const ct_tensor *t, double a, ct_fan_mode mode, const char *nl,
                       const char *op, double *std) {
    int64_t fi, fo;
    if (ct_init_calculate_fan(t, &fi, &fo) != 0) {
        ct_error_context("%s", op);
        return -1;
    }
    if (mode != CT_FAN_IN && mode != CT_FAN_OUT)
        return ct_error("%s: mode must be CT_FAN_IN or CT_FAN_OUT", op);
    int64_t fan = mode == CT_FAN_IN ? fi : fo;
    double gain = ct_init_calculate_gain(nl ? nl : "leaky_relu", a);
    if (isnan(gain)) {
        ct_error_context("%s", op);
        return -1;
    }
    *std = fan > 0 ? gain / sqrt((double)fan) : 0.0;
    return 0;
}

int ct_init_kaiming_uniform_(ct_tensor *t, double a, ct_fan_mode mode, const char *nl) {
    if (t && ct_numel(t) == 0) return 0; /* PyTorch: warns and does nothing */
    double std = 0;
    if (kaiming_std(t, a, mode, nl, "kaiming_uniform_", &std) != 0) return -1;
    double bound = sqrt(3.0) * std;
    return fill_random(t, 0, 2 * bound, -bound, "kaiming_uniform_");
}

int ct_init_kaiming_normal_(ct_tensor *t, double a, ct_fan_mode mode, const char *nl) {
    if (t && ct_numel(t) == 0) return 0;
    double std = 0;
    if (kaiming_std(t, a, mode, nl, "kaiming_normal_", &std) != 0) return -1;
    return fill_random(t, 1, std, 0, "kaiming_normal_");
}

static int xavier_std(const ct_tensor *t, double gain, const char *op, double *std) {
    int64_t fi, fo;
    if (ct_init_calculate_fan(t, &fi, &fo) != 0) {
        ct_error_context("%s", op);
        return -1;
    }
    *std = gain * sqrt(2.0 / (double)(fi + fo));
    return 0;
}

int ct_init_xavier_uniform_(ct_tensor *t, double gain) {
    double std = 0;
    if (xavier_std(t, gain, "xavier_uniform_", &std) != 0) return -1;
    double a = sqrt(3.0) * std;
    return fill_random(t, 0, 2 * a, -a, "xavier_uniform_");
}

int ct_init_xavier_normal_(ct_tensor *t, double gain) {
    double std = 0;
    if (xavier_std(t, gain, "xavier_normal_", &std) != 0) return -1;
    return fill_random(t, 1, std, 0, "xavier_normal_");
}

int ct_init_linear_conv_default(ct_tensor *weight, ct_tensor *bias) {
    if (ct_init_kaiming_uniform_(weight, sqrt(5.0), CT_FAN_IN, "leaky_relu") != 0) return -1;
    if (!bias) return 0;
    int64_t fi;
    if (ct_init_calculate_fan(weight, &fi, NULL) != 0) return -1;
    double bound = fi > 0 ? 1.0 / sqrt((double)fi) : 0.0;
    return ct_init_uniform_(bias, -bound, bound);
}
