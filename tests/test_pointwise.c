/* Pointwise ops and activations: forward/backward against PyTorch fixtures (also with
 * non-contiguous inputs), float64 gradcheck, and error paths. */
#include "test.h"

#include <stdio.h>
#include <string.h>

typedef ct_tensor *(*un_fn)(const ct_tensor *);
typedef ct_tensor *(*bin_fn)(const ct_tensor *, const ct_tensor *);

static ct_tensor *pow25(const ct_tensor *x) { return ct_pow_scalar(x, 2.5); }
static ct_tensor *pow3(const ct_tensor *x) { return ct_pow_scalar(x, 3); }
static ct_tensor *clampf(const ct_tensor *x) { return ct_clamp(x, -0.5, 0.7); }
static ct_tensor *leaky(const ct_tensor *x) { return ct_leaky_relu(x, 0.1); }
static ct_tensor *gelu_exact(const ct_tensor *x) { return ct_gelu(x, 0); }
static ct_tensor *gelu_tanh(const ct_tensor *x) { return ct_gelu(x, 1); }
static ct_tensor *add_s(const ct_tensor *x) { return ct_add_scalar(x, 1.5); }
static ct_tensor *mul_s(const ct_tensor *x) { return ct_mul_scalar(x, -2.0); }

static const struct {
    const char *name;
    un_fn fn;
    int positive;
} UNARY[] = {
    {"neg", ct_neg, 0},         {"exp", ct_exp, 0},         {"log", ct_log, 1},
    {"sqrt", ct_sqrt, 1},       {"pow2.5", pow25, 1},       {"pow3", pow3, 0},
    {"abs", ct_abs, 0},         {"clamp", clampf, 0},       {"relu", ct_relu, 0},
    {"leaky_relu", leaky, 0},   {"gelu", gelu_exact, 0},    {"gelu_tanh", gelu_tanh, 0},
    {"sigmoid", ct_sigmoid, 0}, {"tanh", ct_tanh, 0},       {"add_scalar", add_s, 0},
    {"mul_scalar", mul_s, 0},
};

static const struct {
    const char *name;
    bin_fn fn;
} BINARY[] = {{"add", ct_add}, {"sub", ct_sub}, {"mul", ct_mul}, {"div", ct_div}};

/* Runs fn on fixture inputs (optionally made non-contiguous) and compares y and grads. */
static void check_case(ct_fixture *fx, const char *prefix, int nin, void *fn, int noncontig) {
    char key[128], what[160];
    ct_tensor *x[2] = {0}, *xin[2] = {0};
    for (int i = 0; i < nin; i++) {
        snprintf(key, sizeof key, "%s.x%d", prefix, i);
        ct_tensor *raw = ct_fixture_get(fx, key);
        if (!raw) return;
        x[i] = noncontig ? ct_test_noncontig(raw) : ct_retain(raw);
        ct_free(raw);
        CHECK_OK(ct_set_requires_grad(x[i], 1));
        xin[i] = ct_retain(x[i]);
    }
    ct_tensor *y = nin == 1 ? ((un_fn)fn)(xin[0]) : ((bin_fn)fn)(xin[0], xin[1]);
    CHECK_NN(y);
    snprintf(key, sizeof key, "%s.y", prefix);
    ct_tensor *want = ct_fixture_get(fx, key);
    snprintf(what, sizeof what, "%s%s forward", prefix, noncontig ? " (non-contiguous)" : "");
    CHECK_CLOSE(y, want, 1e-5, what);
    snprintf(key, sizeof key, "%s.gy", prefix);
    ct_tensor *gy = ct_fixture_get(fx, key);
    if (y) CHECK_OK(ct_backward(y, gy, 0));
    for (int i = 0; i < nin; i++) {
        snprintf(key, sizeof key, "%s.gx%d", prefix, i);
        ct_tensor *gw = ct_fixture_get(fx, key);
        snprintf(what, sizeof what, "%s grad %d%s", prefix, i, noncontig ? " (non-contiguous)" : "");
        CHECK_CLOSE(ct_grad(x[i]), gw, 1e-5, what);
        ct_free(gw);
        ct_free(x[i]);
        ct_free(xin[i]);
    }
    ct_free(y);
    ct_free(want);
    ct_free(gy);
}

TEST(pointwise_unary_vs_torch) {
    ct_fixture *fx = ct_fixture_load("unary");
    if (!fx) return;
    char prefix[64];
    for (size_t u = 0; u < sizeof UNARY / sizeof *UNARY; u++)
        for (int k = 0; k < 3; k++)
            for (int nc = 0; nc < 2; nc++) {
                snprintf(prefix, sizeof prefix, "%s.%d", UNARY[u].name, k);
                check_case(fx, prefix, 1, (void *)UNARY[u].fn, nc);
            }
    ct_fixture_free(fx);
}

TEST(pointwise_binary_broadcast_vs_torch) {
    ct_fixture *fx = ct_fixture_load("binary");
    if (!fx) return;
    char prefix[64];
    for (size_t b = 0; b < sizeof BINARY / sizeof *BINARY; b++)
        for (int k = 0; k < 4; k++)
            for (int nc = 0; nc < 2; nc++) {
                snprintf(prefix, sizeof prefix, "%s.%d", BINARY[b].name, k);
                check_case(fx, prefix, 2, (void *)BINARY[b].fn, nc);
            }
    ct_fixture_free(fx);
}

static ct_tensor *gc_unary(ct_tensor *const *in, void *ctx) { return ((un_fn)ctx)(in[0]); }
static ct_tensor *gc_binary(ct_tensor *const *in, void *ctx) { return ((bin_fn)ctx)(in[0], in[1]); }

TEST(pointwise_gradcheck_float64) {
    int64_t shape[2] = {3, 4};
    for (size_t u = 0; u < sizeof UNARY / sizeof *UNARY; u++) {
        ct_tensor *x = ct_randn(shape, 2, CT_FLOAT64);
        if (UNARY[u].positive) {
            ct_tensor *a = ct_abs(x);
            ct_free(x);
            x = ct_add_scalar(a, 0.2);
            ct_free(a);
        }
        /* keep clear of the kinks of abs/relu/clamp where derivatives jump */
        double *p = ct_data(x);
        for (int i = 0; i < 12; i++)
            if (p[i] > -0.05 && p[i] < 0.05) p[i] += 0.2;
        for (int i = 0; i < 12; i++)
            if (fabs(p[i] + 0.5) < 0.02 || fabs(p[i] - 0.7) < 0.02) p[i] += 0.1;
        ct_set_requires_grad(x, 1);
        GRADCHECK(gc_unary, &x, 1, (void *)UNARY[u].fn, UNARY[u].name);
        ct_free(x);
    }
    int64_t sa[3] = {2, 3, 4}, sb[2] = {1, 4};
    for (size_t b = 0; b < sizeof BINARY / sizeof *BINARY; b++) {
        ct_tensor *in[2] = {ct_randn(sa, 3, CT_FLOAT64), ct_randn(sb, 2, CT_FLOAT64)};
        if (b == 3) {
            double *p = ct_data(in[1]);
            for (int i = 0; i < 4; i++) p[i] = p[i] > 0 ? p[i] + 0.5 : p[i] - 0.5;
        }
        ct_set_requires_grad(in[0], 1);
        ct_set_requires_grad(in[1], 1);
        GRADCHECK(gc_binary, in, 2, (void *)BINARY[b].fn, BINARY[b].name);
        ct_free(in[0]);
        ct_free(in[1]);
    }
}

TEST(pointwise_errors) {
    int64_t s1[2] = {2, 3}, s2[2] = {4, 3};
    ct_tensor *a = ct_ones(s1, 2, CT_FLOAT32), *b = ct_ones(s2, 2, CT_FLOAT32);
    ct_tensor *d = ct_ones(s1, 2, CT_FLOAT64), *i64 = ct_ones(s1, 2, CT_INT64);
    CHECK_ERR_PTR(ct_add(a, b), "add: shapes [2, 3] and [4, 3] cannot be broadcast");
    CHECK_ERR_PTR(ct_mul(a, d), "mul: dtype mismatch");
    CHECK_ERR_PTR(ct_sub(a, NULL), "sub");
    CHECK_ERR_PTR(ct_exp(i64), "exp: needs a floating-point tensor");
    CHECK_ERR_PTR(ct_clamp(a, 1, 0), "clamp");
    CHECK_ERR_INT(ct_add_(a, b, 1), "add_");
    ct_free(a);
    ct_free(b);
    ct_free(d);
    ct_free(i64);
}

TEST(pointwise_inplace_ops) {
    int64_t s[2] = {2, 3};
    ct_tensor *a = ct_full(s, 2, 2.0, CT_FLOAT32), *b = ct_full(s, 2, 3.0, CT_FLOAT32);
    CHECK_OK(ct_add_(a, b, 0.5)); /* 3.5 */
    CHECK_OK(ct_mul_scalar_(a, 2)); /* 7 */
    CHECK_OK(ct_add_scalar_(a, -1)); /* 6 */
    CHECK_OK(ct_mul_(a, b)); /* 18 */
    float *p = ct_data(a);
    for (int i = 0; i < 6; i++) CHECK(p[i] == 18.0f);
    CHECK(ct_version(a) == 4);
    int64_t one = 3;
    ct_tensor *row = ct_arange(0, 3, 1, CT_FLOAT32);
    CHECK_OK(ct_copy_(a, row)); /* broadcast copy */
    CHECK(p[3] == 0 && p[4] == 1 && p[5] == 2);
    (void)one;
    CHECK_OK(ct_zero_(a));
    CHECK(p[5] == 0);
    ct_free(a);
    ct_free(b);
    ct_free(row);
}
