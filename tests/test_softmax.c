/* softmax / log_softmax: forward and backward against PyTorch (tests/fixtures/softmax.ctf,
 * written by gen_softmax_loss.py), float64 gradcheck, large multithreaded shapes against
 * a naive reference, and error paths. */
#include "test.h"

#include <stdlib.h>
#include <string.h>

static ct_tensor *fx_get(ct_fixture *fx, const char *cs, const char *k) {
    char key[96];
    snprintf(key, sizeof key, "%s.%s", cs, k);
    return ct_fixture_get(fx, key);
}

static int64_t fx_int(ct_fixture *fx, const char *cs, const char *k) {
    ct_tensor *t = fx_get(fx, cs, k);
    int64_t v = t ? (int64_t)ct_item(t) : 0;
    ct_free(t);
    return v;
}

TEST(softmax_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("softmax");
    if (!fx) return;
    ct_tensor *nt = ct_fixture_get(fx, "ncases");
    int n = nt ? (int)ct_item(nt) : 0;
    ct_free(nt);
    for (int i = 0; i < n; i++) {
        char cs[16];
        snprintf(cs, sizeof cs, "s%d", i);
        ct_tensor *x = fx_get(fx, cs, "x");
        ct_tensor *gy = fx_get(fx, cs, "gy");
        int dim = (int)fx_int(fx, cs, "dim");
        if (!x || !gy) break;
        if (fx_int(fx, cs, "noncontig")) {
            ct_tensor *v = ct_test_noncontig(x);
            ct_free(x);
            x = v;
            CHECK(ct_ndim(x) < 2 || !ct_is_contiguous(x));
        }
        CHECK_OK(ct_set_requires_grad(x, 1));
        for (int lg = 0; lg < 2; lg++) {
            char what[64];
            snprintf(what, sizeof what, "%s %s dim %d", cs, lg ? "log_softmax" : "softmax", dim);
            ct_tensor *y = lg ? ct_log_softmax(x, dim) : ct_softmax(x, dim);
            CHECK_NN(y);
            ct_tensor *wy = fx_get(fx, cs, lg ? "lsm_y" : "sm_y");
            ct_tensor *wg = fx_get(fx, cs, lg ? "lsm_gx" : "sm_gx");
            CHECK_CLOSE(y, wy, 1e-5, what);
            CHECK(y && strcmp(ct_grad_fn_name(y), lg ? "LogSoftmaxBackward" : "SoftmaxBackward") == 0);
            ct_zero_grad(x);
            if (y) CHECK_OK(ct_backward(y, gy, 0));
            CHECK_CLOSE(ct_grad(x), wg, 1e-5, what);
            ct_free(y);
            ct_free(wy);
            ct_free(wg);
        }
        ct_free(x);
        ct_free(gy);
    }
    ct_fixture_free(fx);
}

static ct_tensor *sm_fn(ct_tensor *const *in, void *ctx) {
    int dim = ((int *)ctx)[0], lg = ((int *)ctx)[1];
    return lg ? ct_log_softmax(in[0], dim) : ct_softmax(in[0], dim);
}

TEST(softmax_gradcheck_float64) {
    int64_t shapes[3][3] = {{3, 4, 5}, {2, 70, 1}, {6, 1, 3}};
    for (int s = 0; s < 3; s++) {
        for (int dim = -3; dim < 3; dim++) {
            for (int lg = 0; lg < 2; lg++) {
                ct_tensor *x = ct_randn(shapes[s], 3, CT_FLOAT64);
                ct_set_requires_grad(x, 1);
                int ctx[2] = {dim, lg};
                char what[64];
                snprintf(what, sizeof what, "%s shape %d dim %d", lg ? "log_softmax" : "softmax",
                         s, dim);
                GRADCHECK(sm_fn, &x, 1, ctx, what);
                ct_free(x);
            }
        }
    }
    /* 1-D and 0-d inputs */
    int64_t n = 7;
    ct_tensor *v = ct_randn(&n, 1, CT_FLOAT64);
    ct_set_requires_grad(v, 1);
    int ctx[2] = {0, 1};
    GRADCHECK(sm_fn, &v, 1, ctx, "log_softmax 1-D");
    ctx[1] = 0;
    GRADCHECK(sm_fn, &v, 1, ctx, "softmax 1-D");
    ct_free(v);
}

/* Naive double-precision references over dim of a contiguous float tensor [o, C, in]:
 * y = (log_)softmax(x) and gx for upstream gy (from the reference y). */
static void naive_softmax(const float *x, const float *gy, double *y, double *gx, int64_t o,
                          int64_t C, int64_t in, int lg) {
    for (int64_t a = 0; a < o; a++)
        for (int64_t b = 0; b < in; b++) {
            const int64_t base = a * C * in + b;
            const float *p = x + base, *g = gy + base;
            double *q = y + base, *h = gx + base;
            double m = -INFINITY, s = 0, d = 0;
            for (int64_t c = 0; c < C; c++) m = fmax(m, p[c * in]);
            for (int64_t c = 0; c < C; c++) s += exp(p[c * in] - m);
            for (int64_t c = 0; c < C; c++)
                q[c * in] = lg ? p[c * in] - m - log(s) : exp(p[c * in] - m) / s;
            for (int64_t c = 0; c < C; c++) d += lg ? g[c * in] : g[c * in] * q[c * in];
            for (int64_t c = 0; c < C; c++)
                h[c * in] = lg ? g[c * in] - exp(q[c * in]) * d : q[c * in] * (g[c * in] - d);
        }
}

TEST(softmax_large_multithreaded_vs_naive) {
    int64_t shape[3] = {16, 300, 130};
    ct_tensor *x = ct_randn(shape, 3, CT_FLOAT32);
    ct_tensor *x3 = ct_mul_scalar(x, 3.0);
    ct_tensor *gy = ct_randn(shape, 3, CT_FLOAT32);
    int64_t numel = ct_numel(x3);
    double *ref = malloc(sizeof(double) * (size_t)numel);
    double *gref = malloc(sizeof(double) * (size_t)numel);
    for (int dim = 0; dim < 3; dim++) {
        int64_t o = 1, in = 1, C = shape[dim];
        for (int d = 0; d < dim; d++) o *= shape[d];
        for (int d = dim + 1; d < 3; d++) in *= shape[d];
        for (int lg = 0; lg < 2; lg++) {
            naive_softmax((const float *)ct_data(x3), (const float *)ct_data(gy), ref, gref, o,
                          C, in, lg);
            ct_tensor *want = ct_from_data(ref, shape, 3, CT_FLOAT64);
            ct_tensor *gwant = ct_from_data(gref, shape, 3, CT_FLOAT64);
            ct_tensor *xl = ct_detach(x3);
            ct_set_requires_grad(xl, 1);
            ct_tensor *y = lg ? ct_log_softmax(xl, dim) : ct_softmax(xl, dim);
            char what[64];
            snprintf(what, sizeof what, "%s dim %d", lg ? "log_softmax" : "softmax", dim);
            CHECK_CLOSE(y, want, 1e-6, what);
            if (y) CHECK_OK(ct_backward(y, gy, 0));
            CHECK_CLOSE(ct_grad(xl), gwant, 1e-5, what);
            /* identical results with one thread */
            int nt = ct_get_num_threads();
            ct_set_num_threads(1);
            ct_tensor *y1 = lg ? ct_log_softmax(x3, dim) : ct_softmax(x3, dim);
            ct_set_num_threads(nt);
            CHECK(y && y1 && memcmp(ct_data(y), ct_data(y1), sizeof(float) * (size_t)numel) == 0);
            ct_free(y);
            ct_free(y1);
            ct_free(xl);
            ct_free(want);
            ct_free(gwant);
        }
    }
    free(ref);
    free(gref);
    ct_free(x);
    ct_free(x3);
    ct_free(gy);
}

TEST(softmax_special_values) {
    /* 0-d input: softmax is 1, log_softmax is 0 */
    ct_tensor *s = ct_scalar(2.5, CT_FLOAT32);
    ct_tensor *y = ct_softmax(s, -1);
    CHECK_NN(y);
    CHECK(y && ct_ndim(y) == 0 && ct_item(y) == 1.0);
    ct_free(y);
    y = ct_log_softmax(s, 0);
    CHECK(y && ct_item(y) == 0.0);
    ct_free(y);
    ct_free(s);
    /* -inf entries (masking) and huge logits stay finite */
    float v[6] = {0.0f, -INFINITY, 1.0f, 1000.0f, -1000.0f, 999.0f};
    int64_t sh[2] = {2, 3};
    ct_tensor *x = ct_from_data(v, sh, 2, CT_FLOAT32);
    y = ct_softmax(x, 1);
    CHECK_NN(y);
    if (y) {
        const float *p = ct_data(y);
        CHECK(fabs(p[0] - 1.0 / (1.0 + exp(1.0))) < 1e-6 && p[1] == 0.0f);
        CHECK(fabs(p[3] - 1.0 / (1.0 + exp(-1.0))) < 1e-6 && p[4] == 0.0f);
    }
    ct_free(y);
    y = ct_log_softmax(x, 1);
    if (y) {
        const float *p = ct_data(y);
        CHECK(isinf(p[1]) && p[1] < 0 && isfinite(p[3]) && isfinite(p[4]));
        CHECK(fabs(p[4] - (-2000.0 - log1p(exp(-1.0)))) < 1e-3);
    }
    ct_free(y);
    ct_free(x);
}

TEST(softmax_saved_output_modified_in_place_is_error) {
    int64_t sh[2] = {2, 3};
    ct_tensor *x = ct_randn(sh, 2, CT_FLOAT32);
    ct_set_requires_grad(x, 1);
    ct_tensor *y = ct_softmax(x, 1);
    CHECK_NN(y);
    ct_tensor *s = ct_sum(y, NULL, 0, 0);
    ct_tensor *yd = ct_detach(y); /* shares y's storage (and version counter) */
    CHECK_OK(ct_mul_scalar_(yd, 2.0));
    CHECK_ERR_INT(ct_backward(s, NULL, 0), "SoftmaxBackward");
    ct_free(yd);
    ct_free(s);
    ct_free(y);
    ct_free(x);
}

TEST(softmax_errors) {
    int64_t sh[2] = {2, 3};
    ct_tensor *x = ct_randn(sh, 2, CT_FLOAT32);
    CHECK_ERR_PTR(ct_softmax(x, 2), "softmax");
    CHECK_ERR_PTR(ct_softmax(x, -3), "[2, 3]");
    CHECK_ERR_PTR(ct_log_softmax(x, 5), "log_softmax");
    CHECK_ERR_PTR(ct_log_softmax(x, -3), "out of range");
    CHECK_ERR_PTR(ct_softmax(NULL, 0), "softmax");
    ct_tensor *s = ct_scalar(1.0, CT_FLOAT64);
    CHECK_ERR_PTR(ct_softmax(s, 1), "softmax");
    CHECK_ERR_PTR(ct_log_softmax(s, -2), "log_softmax");
    ct_free(s);
    ct_tensor *xi = ct_to_dtype(x, CT_INT64);
    CHECK_ERR_PTR(ct_softmax(xi, 0), "softmax");
    CHECK_ERR_PTR(ct_log_softmax(xi, 1), "int64");
    ct_free(xi);
    ct_free(x);
}
