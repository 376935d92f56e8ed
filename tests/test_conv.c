/* conv2d: forward/backward against PyTorch (tests/fixtures/gen_linalg.py), float64
 * gradcheck, larger problems against a naive convolution (exercising the chunked,
 * multithreaded paths and workspace reuse), and every error path. */
#include "test.h"

#include <stdlib.h>
#include <string.h>

static ct_tensor *maybe_noncontig(ct_tensor *t, int nc) {
    if (!nc || !t) return t;
    ct_tensor *r = ct_test_noncontig(t);
    ct_free(t);
    return r;
}

static ct_tensor *fx_get(ct_fixture *fx, int i, const char *name) {
    char key[64];
    snprintf(key, sizeof key, "c%d_%s", i, name);
    return ct_fixture_get(fx, key);
}

TEST(conv2d_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("linalg_conv2d");
    if (!fx) return;
    ct_tensor *cnt = ct_fixture_get(fx, "count");
    int n = cnt ? (int)ct_item(cnt) : 0;
    ct_free(cnt);
    CHECK(n > 0);
    for (int i = 0; i < n; i++) {
        char what[64];
        ct_tensor *cfg = fx_get(fx, i, "cfg");
        const int64_t *c = ct_data(cfg);
        int stride[2] = {(int)c[0], (int)c[1]}, pad[2] = {(int)c[2], (int)c[3]};
        int dil[2] = {(int)c[4], (int)c[5]}, groups = (int)c[6], has_b = (int)c[7];
        int nc = (int)c[8];
        ct_tensor *x = maybe_noncontig(fx_get(fx, i, "x"), nc & 1);
        ct_tensor *w = maybe_noncontig(fx_get(fx, i, "w"), nc & 2);
        ct_tensor *b = has_b ? fx_get(fx, i, "b") : NULL;
        ct_tensor *gy = fx_get(fx, i, "gy"), *wy = fx_get(fx, i, "y");
        ct_tensor *wgx = fx_get(fx, i, "gx"), *wgw = fx_get(fx, i, "gw");
        ct_tensor *wgb = has_b ? fx_get(fx, i, "gb") : NULL;
        CHECK_OK(ct_set_requires_grad(x, 1));
        CHECK_OK(ct_set_requires_grad(w, 1));
        if (b) CHECK_OK(ct_set_requires_grad(b, 1));
        ct_tensor *y = ct_conv2d(x, w, b, stride, pad, dil, groups);
        CHECK_NN(y);
        snprintf(what, sizeof what, "conv2d case %d forward", i);
        CHECK_CLOSE(y, wy, 1e-4, what);
        if (y) {
            CHECK_OK(ct_backward(y, gy, 0));
            snprintf(what, sizeof what, "conv2d case %d grad x", i);
            CHECK_CLOSE(ct_grad(x), wgx, 1e-4, what);
            snprintf(what, sizeof what, "conv2d case %d grad w", i);
            CHECK_CLOSE(ct_grad(w), wgw, 1e-4, what);
            if (b) {
                snprintf(what, sizeof what, "conv2d case %d grad b", i);
                CHECK_CLOSE(ct_grad(b), wgb, 1e-4, what);
            }
        }
        ct_free(y);
        ct_free(x);
        ct_free(w);
        ct_free(b);
        ct_free(gy);
        ct_free(wy);
        ct_free(wgx);
        ct_free(wgw);
        ct_free(wgb);
        ct_free(cfg);
    }
    ct_fixture_free(fx);
}

/* ---------------------------------------------------------------- gradcheck */

typedef struct {
    int stride[2], pad[2], dil[2], groups, bias;
} conv_cfg;

static ct_tensor *conv_fn(ct_tensor *const *in, void *ctx) {
    const conv_cfg *c = ctx;
    return ct_conv2d(in[0], in[1], c->bias ? in[2] : NULL, c->stride, c->pad, c->dil, c->groups);
}

TEST(conv2d_gradcheck) {
    static const struct {
        int nx;
        int64_t x[4], w[4];
        conv_cfg c;
    } cases[] = {
        {4, {1, 2, 4, 4}, {2, 2, 2, 2}, {{1, 1}, {0, 0}, {1, 1}, 1, 1}},
        {4, {2, 2, 5, 4}, {2, 1, 3, 2}, {{2, 1}, {1, 1}, {1, 1}, 2, 1}},
        {4, {1, 1, 5, 5}, {2, 1, 2, 2}, {{1, 2}, {1, 0}, {2, 2}, 1, 0}},
        {4, {2, 3, 3, 3}, {2, 3, 1, 1}, {{1, 1}, {0, 0}, {1, 1}, 1, 1}},
        {3, {2, 4, 3}, {3, 2, 2, 2}, {{1, 1}, {1, 1}, {1, 1}, 1, 1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ct_tensor *in[3] = {ct_randn(cases[i].x, cases[i].nx, CT_FLOAT64),
                            ct_randn(cases[i].w, 4, CT_FLOAT64),
                            ct_randn(cases[i].w, 1, CT_FLOAT64)};
        for (int k = 0; k < 3; k++) ct_set_requires_grad(in[k], 1);
        conv_cfg c = cases[i].c;
        char what[48];
        snprintf(what, sizeof what, "conv2d gradcheck case %zu", i);
        GRADCHECK(conv_fn, in, c.bias ? 3 : 2, &c, what);
        for (int k = 0; k < 3; k++) ct_free(in[k]);
    }
}

/* --------------------------------------------------- larger problems, naive */

/* Direct convolution in double. x [N,C,H,W], w [O,C/g,kh,kw] -> [N,O,Ho,Wo]. */
static ct_tensor *naive_conv(const ct_tensor *x, const ct_tensor *w, const ct_tensor *b,
                             const conv_cfg *c) {
    ct_tensor *x64 = ct_to_dtype(x, CT_FLOAT64), *w64 = ct_to_dtype(w, CT_FLOAT64);
    int64_t N = ct_size(x, 0), C = ct_size(x, 1), H = ct_size(x, 2), W = ct_size(x, 3);
    int64_t O = ct_size(w, 0), Cg = ct_size(w, 1), kh = ct_size(w, 2), kw = ct_size(w, 3);
    int64_t Og = O / c->groups;
    int64_t Ho = (H + 2 * c->pad[0] - c->dil[0] * (kh - 1) - 1) / c->stride[0] + 1;
    int64_t Wo = (W + 2 * c->pad[1] - c->dil[1] * (kw - 1) - 1) / c->stride[1] + 1;
    double *X = malloc(sizeof(double) * (size_t)ct_numel(x));
    double *Wt = malloc(sizeof(double) * (size_t)ct_numel(w));
    ct_copy_to_buffer(x64, X, sizeof(double) * (size_t)ct_numel(x));
    ct_copy_to_buffer(w64, Wt, sizeof(double) * (size_t)ct_numel(w));
    double *B = NULL;
    if (b) {
        ct_tensor *b64 = ct_to_dtype(b, CT_FLOAT64);
        B = malloc(sizeof(double) * (size_t)O);
        ct_copy_to_buffer(b64, B, sizeof(double) * (size_t)O);
        ct_free(b64);
    }
    int64_t ysh[4] = {N, O, Ho, Wo};
    ct_tensor *y = ct_zeros(ysh, 4, CT_FLOAT64);
    double *Y = ct_data(y);
    (void)C;
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++) {
            int64_t g = o / Og;
            for (int64_t oh = 0; oh < Ho; oh++)
                for (int64_t ow = 0; ow < Wo; ow++) {
                    double s = B ? B[o] : 0;
                    for (int64_t ci = 0; ci < Cg; ci++)
                        for (int64_t i = 0; i < kh; i++)
                            for (int64_t j = 0; j < kw; j++) {
                                int64_t ih = oh * c->stride[0] - c->pad[0] + i * c->dil[0];
                                int64_t iw = ow * c->stride[1] - c->pad[1] + j * c->dil[1];
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                s += X[((n * C + g * Cg + ci) * H + ih) * W + iw] *
                                     Wt[((o * Cg + ci) * kh + i) * kw + j];
                            }
                    Y[((n * O + o) * Ho + oh) * Wo + ow] = s;
                }
        }
    free(X);
    free(Wt);
    free(B);
    ct_free(x64);
    ct_free(w64);
    return y;
}

static double dot_all(const ct_tensor *a, const ct_tensor *b) {
    ct_tensor *a64 = ct_to_dtype(a, CT_FLOAT64), *b64 = ct_to_dtype(b, CT_FLOAT64);
    ct_tensor *p = ct_mul(a64, b64);
    ct_tensor *s = ct_sum(p, NULL, 0, 0);
    double v = ct_item(s);
    ct_free(s);
    ct_free(p);
    ct_free(a64);
    ct_free(b64);
    return v;
}

/* Forward against the naive convolution; backward through the bilinear identities
 * <conv(x, w), gy> = <x, gx> = <w, gw> (bias-free) and gb = sum(gy). Each size runs
 * single-threaded and multithreaded and twice (workspace reuse). */
TEST(conv2d_large_vs_naive) {
    static const struct {
        int64_t x[4], w[4];
        conv_cfg c;
    } cases[] = {
        {{4, 8, 20, 18}, {16, 4, 3, 3}, {{1, 1}, {1, 1}, {1, 1}, 2, 1}},
        {{2, 6, 33, 31}, {12, 6, 5, 3}, {{2, 1}, {2, 1}, {1, 2}, 1, 1}},
        {{1, 16, 24, 24}, {32, 16, 1, 1}, {{1, 1}, {0, 0}, {1, 1}, 1, 0}},
        {{3, 32, 12, 12}, {32, 1, 3, 3}, {{1, 1}, {1, 1}, {1, 1}, 32, 1}},
        {{1, 3, 64, 64}, {8, 3, 7, 7}, {{2, 2}, {3, 3}, {1, 1}, 1, 1}},
    };
    int prev = ct_get_num_threads();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const conv_cfg *c = &cases[i].c;
        ct_tensor *x = ct_randn(cases[i].x, 4, CT_FLOAT32);
        ct_tensor *w = ct_randn(cases[i].w, 4, CT_FLOAT32);
        ct_tensor *b = c->bias ? ct_randn(cases[i].w, 1, CT_FLOAT32) : NULL;
        ct_tensor *want = naive_conv(x, w, b, c);
        ct_tensor *want_nb = naive_conv(x, w, NULL, c);
        for (int run = 0; run < 4; run++) {
            ct_set_num_threads(run < 2 ? 1 : prev);
            char what[80];
            ct_set_requires_grad(x, 1);
            ct_set_requires_grad(w, 1);
            if (b) ct_set_requires_grad(b, 1);
            ct_tensor *y = ct_conv2d(x, w, b, c->stride, c->pad, c->dil, c->groups);
            snprintf(what, sizeof what, "large conv2d case %zu run %d forward", i, run);
            CHECK_CLOSE(y, want, 1e-5, what);
            ct_tensor *gy = ct_randn(ct_shape(want), 4, CT_FLOAT32);
            if (y) CHECK_OK(ct_backward(y, gy, 0));
            double ref = dot_all(want_nb, gy);
            double gxd = ct_grad(x) ? dot_all(x, ct_grad(x)) : 0;
            double gwd = ct_grad(w) ? dot_all(w, ct_grad(w)) : 0;
            CHECK_MSG(fabs(gxd - ref) <= 1e-4 * fabs(ref) + 1e-3,
                      "large conv2d case %zu run %d: <x,gx> %.8g vs %.8g", i, run, gxd, ref);
            CHECK_MSG(fabs(gwd - ref) <= 1e-4 * fabs(ref) + 1e-3,
                      "large conv2d case %zu run %d: <w,gw> %.8g vs %.8g", i, run, gwd, ref);
            if (b) {
                int dims[3] = {0, 2, 3};
                ct_tensor *gb = ct_sum(gy, dims, 3, 0);
                snprintf(what, sizeof what, "large conv2d case %zu run %d grad b", i, run);
                CHECK_CLOSE(ct_grad(b), gb, 1e-5, what);
                ct_free(gb);
            }
            ct_zero_grad(x);
            ct_zero_grad(w);
            if (b) ct_zero_grad(b);
            ct_free(gy);
            ct_free(y);
        }
        ct_set_num_threads(prev);
        ct_free(want);
        ct_free(want_nb);
        ct_free(x);
        ct_free(w);
        ct_free(b);
    }
}

/* The gradients themselves, single- vs multi-threaded, on a shape where the weight
 * gradient is reduced over several per-thread accumulators. */
TEST(conv2d_backward_thread_invariant) {
    int64_t sx[4] = {6, 4, 10, 10}, sw[4] = {8, 4, 3, 3};
    conv_cfg c = {{1, 1}, {1, 1}, {1, 1}, 1, 0};
    ct_tensor *x = ct_randn(sx, 4, CT_FLOAT64), *w = ct_randn(sw, 4, CT_FLOAT64);
    ct_tensor *gx[2] = {NULL, NULL}, *gw[2] = {NULL, NULL};
    int prev = ct_get_num_threads();
    for (int r = 0; r < 2; r++) {
        ct_set_num_threads(r == 0 ? 1 : (prev > 1 ? prev : 4));
        ct_set_requires_grad(x, 1);
        ct_set_requires_grad(w, 1);
        ct_tensor *y = ct_conv2d(x, w, NULL, c.stride, c.pad, c.dil, c.groups);
        ct_tensor *s = ct_sum(y, NULL, 0, 0);
        CHECK_OK(ct_backward(s, NULL, 0));
        gx[r] = ct_clone(ct_grad(x));
        gw[r] = ct_clone(ct_grad(w));
        ct_zero_grad(x);
        ct_zero_grad(w);
        ct_free(s);
        ct_free(y);
    }
    ct_set_num_threads(prev);
    CHECK_CLOSE(gx[1], gx[0], 1e-12, "grad x threads");
    CHECK_CLOSE(gw[1], gw[0], 1e-12, "grad w threads");
    for (int r = 0; r < 2; r++) {
        ct_free(gx[r]);
        ct_free(gw[r]);
    }
    ct_free(x);
    ct_free(w);
}

TEST(conv2d_defaults_and_empty_batch) {
    /* NULL stride/padding/dilation mean 1/0/1. */
    int64_t sx[4] = {2, 3, 6, 5}, sw[4] = {4, 3, 3, 3};
    ct_tensor *x = ct_randn(sx, 4, CT_FLOAT32), *w = ct_randn(sw, 4, CT_FLOAT32);
    int one[2] = {1, 1}, zero[2] = {0, 0};
    ct_tensor *a = ct_conv2d(x, w, NULL, NULL, NULL, NULL, 1);
    ct_tensor *b = ct_conv2d(x, w, NULL, one, zero, one, 1);
    CHECK_CLOSE(a, b, 0, "defaults");
    CHECK(a && ct_size(a, 2) == 4 && ct_size(a, 3) == 3);
    ct_free(a);
    ct_free(b);
    /* N = 0 gives an empty output, and gradients of the right shapes. */
    int64_t se[4] = {0, 3, 6, 5};
    ct_tensor *e = ct_zeros(se, 4, CT_FLOAT32);
    ct_set_requires_grad(e, 1);
    ct_set_requires_grad(w, 1);
    ct_tensor *y = ct_conv2d(e, w, NULL, NULL, NULL, NULL, 1);
    CHECK_NN(y);
    if (y) {
        CHECK(ct_size(y, 0) == 0 && ct_size(y, 1) == 4);
        ct_tensor *s = ct_sum(y, NULL, 0, 0);
        CHECK_OK(ct_backward(s, NULL, 0));
        ct_tensor *zw = ct_zeros(sw, 4, CT_FLOAT32);
        CHECK_CLOSE(ct_grad(w), zw, 0, "grad w of an empty batch");
        ct_free(zw);
        ct_free(s);
    }
    ct_free(y);
    ct_free(e);
    ct_free(x);
    ct_free(w);
}

TEST(conv2d_saved_input_modified_in_place) {
    int64_t sx[4] = {1, 2, 4, 4}, sw[4] = {2, 2, 3, 3};
    ct_tensor *x = ct_randn(sx, 4, CT_FLOAT32), *w = ct_randn(sw, 4, CT_FLOAT32);
    ct_set_requires_grad(w, 1);
    ct_tensor *y = ct_conv2d(x, w, NULL, NULL, NULL, NULL, 1);
    ct_tensor *s = ct_sum(y, NULL, 0, 0);
    CHECK_OK(ct_mul_scalar_(x, 2.0)); /* x is saved for grad w */
    CHECK_ERR_INT(ct_backward(s, NULL, 0), "in-place");
    ct_free(s);
    ct_free(y);
    ct_free(x);
    ct_free(w);
}

/* ------------------------------------------------------------------ errors */

TEST(conv2d_errors) {
    int64_t sx[4] = {2, 4, 8, 8}, sx2[2] = {4, 8}, sw[4] = {6, 4, 3, 3}, sw3[3] = {6, 4, 3},
            swg[4] = {6, 2, 3, 3}, sw5[4] = {5, 2, 3, 3}, sbig[4] = {6, 4, 9, 9}, sb = 6,
            sbb = 5;
    ct_tensor *x = ct_randn(sx, 4, CT_FLOAT32), *x2 = ct_randn(sx2, 2, CT_FLOAT32);
    ct_tensor *w = ct_randn(sw, 4, CT_FLOAT32), *w3 = ct_randn(sw3, 3, CT_FLOAT32);
    ct_tensor *wg = ct_randn(swg, 4, CT_FLOAT32), *w5 = ct_randn(sw5, 4, CT_FLOAT32);
    ct_tensor *wbig = ct_randn(sbig, 4, CT_FLOAT32), *b = ct_randn(&sb, 1, CT_FLOAT32);
    ct_tensor *bb = ct_randn(&sbb, 1, CT_FLOAT32), *b64 = ct_randn(&sb, 1, CT_FLOAT64);
    ct_tensor *x64 = ct_randn(sx, 4, CT_FLOAT64), *xi = ct_zeros(sx, 4, CT_INT64);
    ct_tensor *wi = ct_zeros(sw, 4, CT_INT64);
    int one[2] = {1, 1}, zero[2] = {0, 0}, bad0[2] = {0, 1}, neg[2] = {-1, 0};
    CHECK_ERR_PTR(ct_conv2d(x2, w, NULL, one, zero, one, 1), "conv2d");  /* 2-D input */
    CHECK_ERR_PTR(ct_conv2d(x2, w, NULL, one, zero, one, 1), "[4, 8]");
    CHECK_ERR_PTR(ct_conv2d(x, w3, NULL, one, zero, one, 1), "conv2d");  /* 3-D weight */
    CHECK_ERR_PTR(ct_conv2d(x, wg, NULL, one, zero, one, 1), "channels"); /* 2 != 4 channels */
    CHECK_ERR_PTR(ct_conv2d(x, w5, NULL, one, zero, one, 2), "groups");  /* 5 % 2 */
    CHECK_ERR_PTR(ct_conv2d(x, w, NULL, one, zero, one, 0), "conv2d");   /* groups 0 */
    CHECK_ERR_PTR(ct_conv2d(x, w, NULL, one, zero, one, 3), "conv2d");   /* 4 channels / 3 */
    CHECK_ERR_PTR(ct_conv2d(x, w, bb, one, zero, one, 1), "bias");       /* bias size */
    CHECK_ERR_PTR(ct_conv2d(x, w, b64, one, zero, one, 1), "conv2d");    /* bias dtype */
    CHECK_ERR_PTR(ct_conv2d(x64, w, b, one, zero, one, 1), "conv2d");    /* dtype mix */
    CHECK_ERR_PTR(ct_conv2d(xi, wi, NULL, one, zero, one, 1), "conv2d"); /* int64 */
    CHECK_ERR_PTR(ct_conv2d(x, w, NULL, bad0, zero, one, 1), "stride");
    CHECK_ERR_PTR(ct_conv2d(x, w, NULL, one, neg, one, 1), "padding");
    CHECK_ERR_PTR(ct_conv2d(x, w, NULL, one, zero, bad0, 1), "dilation");
    CHECK_ERR_PTR(ct_conv2d(x, wbig, NULL, one, zero, one, 1), "conv2d"); /* kernel > input */
    CHECK_ERR_PTR(ct_conv2d(NULL, w, NULL, one, zero, one, 1), "conv2d");
    CHECK_ERR_PTR(ct_conv2d(x, NULL, NULL, one, zero, one, 1), "conv2d");
    ct_free(x);
    ct_free(x2);
    ct_free(w);
    ct_free(w3);
    ct_free(wg);
    ct_free(w5);
    ct_free(wbig);
    ct_free(b);
    ct_free(bb);
    ct_free(b64);
    ct_free(x64);
    ct_free(xi);
    ct_free(wi);
}

/* The weight gradient's row-split plan (used when per-thread accumulators would take
 * too much memory), forced here through a tiny budget, against the default plan. */
TEST(conv2d_backward_weight_row_split_plan) {
    int64_t sx[4] = {3, 8, 12, 12}, sw[4] = {40, 4, 3, 3};
    conv_cfg c = {{1, 1}, {1, 1}, {1, 1}, 2, 0};
    ct_tensor *x = ct_randn(sx, 4, CT_FLOAT64), *w = ct_randn(sw, 4, CT_FLOAT64);
    int prev = ct_get_num_threads();
    ct_set_num_threads(4);
    ct_tensor *gw[2] = {NULL, NULL};
    for (int r = 0; r < 2; r++) {
        if (r == 1) setenv("CTORCH_CONV_WGRAD_BUDGET", "1", 1);
        ct_set_requires_grad(w, 1);
        ct_tensor *y = ct_conv2d(x, w, NULL, c.stride, c.pad, c.dil, c.groups);
        ct_tensor *s = ct_sum(y, NULL, 0, 0);
        CHECK_OK(ct_backward(s, NULL, 0));
        gw[r] = ct_clone(ct_grad(w));
        ct_zero_grad(w);
        ct_free(s);
        ct_free(y);
    }
    unsetenv("CTORCH_CONV_WGRAD_BUDGET");
    ct_set_num_threads(prev);
    CHECK_CLOSE(gw[1], gw[0], 1e-12, "grad w, row-split plan");
    ct_free(gw[0]);
    ct_free(gw[1]);
    ct_free(x);
    ct_free(w);
}
