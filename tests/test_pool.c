/* max_pool2d, avg_pool2d, adaptive_avg_pool2d: forward/backward against PyTorch
 * (tests/fixtures/gen_linalg.py), float64 gradcheck, window edge rules, and every
 * error path. */
#include "test.h"

#include <stdlib.h>
#include <string.h>

static ct_tensor *fx_get(ct_fixture *fx, int i, const char *name) {
    char key[64];
    snprintf(key, sizeof key, "c%d_%s", i, name);
    return ct_fixture_get(fx, key);
}

static const char *kind_name(int kind) {
    return kind == 0 ? "max_pool2d" : kind == 1 ? "avg_pool2d" : "adaptive_avg_pool2d";
}

/* cfg: kind, k0, k1, s0, s1, p0, p1, d0, d1, ceil_mode, count_include_pad, nc
 * (adaptive: kind, out0, out1, ..., nc). */
static ct_tensor *run_pool(const int64_t *c, const ct_tensor *x) {
    int k[2] = {(int)c[1], (int)c[2]}, s[2] = {(int)c[3], (int)c[4]};
    int p[2] = {(int)c[5], (int)c[6]}, d[2] = {(int)c[7], (int)c[8]};
    switch (c[0]) {
    case 0: return ct_max_pool2d(x, k, s, p, d, (int)c[9]);
    case 1: return ct_avg_pool2d(x, k, s, p, (int)c[9], (int)c[10]);
    default: return ct_adaptive_avg_pool2d(x, k);
    }
}

TEST(pool_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("linalg_pool");
    if (!fx) return;
    ct_tensor *cnt = ct_fixture_get(fx, "count");
    int n = cnt ? (int)ct_item(cnt) : 0;
    ct_free(cnt);
    CHECK(n > 0);
    for (int i = 0; i < n; i++) {
        char what[80];
        ct_tensor *cfg = fx_get(fx, i, "cfg");
        const int64_t *c = ct_data(cfg);
        ct_tensor *x = fx_get(fx, i, "x");
        if (c[11]) {
            ct_tensor *v = ct_test_noncontig(x);
            ct_free(x);
            x = v;
            CHECK(!ct_is_contiguous(x));
        }
        ct_tensor *gy = fx_get(fx, i, "gy"), *wy = fx_get(fx, i, "y"), *wgx = fx_get(fx, i, "gx");
        CHECK_OK(ct_set_requires_grad(x, 1));
        ct_tensor *y = run_pool(c, x);
        CHECK_NN(y);
        snprintf(what, sizeof what, "%s case %d forward", kind_name((int)c[0]), i);
        CHECK_CLOSE(y, wy, 1e-5, what);
        if (y) {
            CHECK_OK(ct_backward(y, gy, 0));
            snprintf(what, sizeof what, "%s case %d grad x", kind_name((int)c[0]), i);
            CHECK_CLOSE(ct_grad(x), wgx, 1e-5, what);
        }
        ct_free(y);
        ct_free(x);
        ct_free(gy);
        ct_free(wy);
        ct_free(wgx);
        ct_free(cfg);
    }
    ct_fixture_free(fx);
}

/* ---------------------------------------------------------------- gradcheck */

static ct_tensor *pool_fn(ct_tensor *const *in, void *ctx) { return run_pool(ctx, in[0]); }

TEST(pool_gradcheck) {
    static const struct {
        int nx;
        int64_t x[4];
        int64_t cfg[12];
    } cases[] = {
        {4, {2, 2, 5, 5}, {0, 2, 2, 2, 2, 0, 0, 1, 1, 0, 0, 0}},
        {4, {1, 2, 6, 5}, {0, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0, 0}},
        {4, {1, 1, 7, 7}, {0, 2, 3, 2, 2, 1, 1, 2, 2, 1, 0, 0}},
        {3, {2, 4, 4}, {0, 2, 2, 1, 1, 1, 0, 1, 1, 0, 0, 0}},
        {4, {2, 2, 5, 5}, {1, 2, 2, 2, 2, 0, 0, 1, 1, 0, 1, 0}},
        {4, {1, 2, 6, 5}, {1, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0}},
        {4, {1, 2, 6, 5}, {1, 3, 3, 2, 2, 1, 1, 1, 1, 1, 0, 0}},
        {3, {2, 5, 4}, {1, 2, 3, 2, 1, 1, 1, 1, 1, 0, 0, 0}},
        {4, {2, 2, 5, 7}, {2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
        {4, {1, 2, 3, 4}, {2, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
        {3, {2, 4, 4}, {2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ct_tensor *x = ct_randn(cases[i].x, cases[i].nx, CT_FLOAT64);
        ct_set_requires_grad(x, 1);
        char what[64];
        snprintf(what, sizeof what, "%s gradcheck case %zu", kind_name((int)cases[i].cfg[0]), i);
        GRADCHECK(pool_fn, &x, 1, (void *)cases[i].cfg, what);
        ct_free(x);
    }
}

/* ------------------------------------------------------------- edge rules */

TEST(max_pool2d_nan_and_indices) {
    /* A NaN wins its window (PyTorch propagates NaN); the gradient goes to it. */
    float v[16] = {1, 2, 3, 4, 5, NAN, 7, 8, 9, 10, 11, 12, 13, 14, 16, 15};
    int64_t sh[4] = {1, 1, 4, 4};
    ct_tensor *x = ct_from_data(v, sh, 4, CT_FLOAT32);
    ct_set_requires_grad(x, 1);
    int k[2] = {2, 2};
    ct_tensor *y = ct_max_pool2d(x, k, NULL, NULL, NULL, 0);
    CHECK_NN(y);
    if (y) {
        const float *o = ct_data(y);
        CHECK(isnan(o[0]));
        CHECK(o[1] == 8 && o[2] == 14 && o[3] == 16);
        ct_tensor *g = ct_ones_like(y);
        CHECK_OK(ct_backward(y, g, 0));
        ct_free(g);
        const float *gx = ct_grad(x) ? ct_data(ct_grad(x)) : NULL;
        CHECK(gx && gx[5] == 1 && gx[7] == 1 && gx[13] == 1 && gx[14] == 1 && gx[0] == 0);
    }
    ct_free(y);
    ct_free(x);
}

TEST(avg_pool2d_count_include_pad_values) {
    /* 3x3 ones, kernel 3, stride 1, padding 1: corner windows cover 4 real cells. */
    int64_t sh[4] = {1, 1, 3, 3};
    ct_tensor *x = ct_ones(sh, 4, CT_FLOAT64);
    int k[2] = {3, 3}, s[2] = {1, 1}, p[2] = {1, 1};
    ct_tensor *inc = ct_avg_pool2d(x, k, s, p, 0, 1), *exc = ct_avg_pool2d(x, k, s, p, 0, 0);
    CHECK_NN(inc);
    CHECK_NN(exc);
    if (inc && exc) {
        const double *a = ct_data(inc), *b = ct_data(exc);
        CHECK(fabs(a[0] - 4.0 / 9) < 1e-15 && fabs(a[1] - 6.0 / 9) < 1e-15 && a[4] == 1);
        for (int i = 0; i < 9; i++) CHECK(b[i] == 1);
    }
    ct_free(inc);
    ct_free(exc);
    ct_free(x);
}

TEST(adaptive_avg_pool2d_global_and_empty) {
    int64_t sh[4] = {2, 3, 5, 4};
    ct_tensor *x = ct_randn(sh, 4, CT_FLOAT32);
    int one[2] = {1, 1};
    ct_tensor *y = ct_adaptive_avg_pool2d(x, one);
    int dims[2] = {2, 3};
    ct_tensor *m = ct_mean(x, dims, 2, 1);
    CHECK_CLOSE(y, m, 1e-6, "global average");
    ct_free(y);
    ct_free(m);
    int zero[2] = {0, 2};
    ct_tensor *e = ct_adaptive_avg_pool2d(x, zero);
    CHECK_NN(e);
    CHECK(e && ct_numel(e) == 0 && ct_size(e, 3) == 2);
    ct_free(e);
    ct_free(x);
}

TEST(pool_large_thread_invariant) {
    int64_t sh[4] = {8, 16, 33, 31};
    ct_tensor *x = ct_randn(sh, 4, CT_FLOAT64);
    int k[2] = {3, 3}, s[2] = {2, 2}, p[2] = {1, 1}, d[2] = {1, 1}, o[2] = {7, 5};
    int prev = ct_get_num_threads();
    ct_tensor *r[2][3], *g[2][3];
    for (int t = 0; t < 2; t++) {
        ct_set_num_threads(t == 0 ? 1 : (prev > 1 ? prev : 4));
        for (int kind = 0; kind < 3; kind++) {
            ct_set_requires_grad(x, 1);
            r[t][kind] = kind == 0   ? ct_max_pool2d(x, k, s, p, d, 1)
                         : kind == 1 ? ct_avg_pool2d(x, k, s, p, 1, 0)
                                     : ct_adaptive_avg_pool2d(x, o);
            ct_tensor *gy = ct_ones_like(r[t][kind]);
            CHECK_OK(ct_backward(r[t][kind], gy, 0));
            ct_free(gy);
            g[t][kind] = ct_clone(ct_grad(x));
            ct_zero_grad(x);
        }
    }
    ct_set_num_threads(prev);
    for (int kind = 0; kind < 3; kind++) {
        CHECK_CLOSE(r[1][kind], r[0][kind], 0, kind_name(kind));
        CHECK_CLOSE(g[1][kind], g[0][kind], 0, kind_name(kind));
        for (int t = 0; t < 2; t++) {
            ct_free(r[t][kind]);
            ct_free(g[t][kind]);
        }
    }
    ct_free(x);
}

/* ------------------------------------------------------------------ errors */

TEST(pool_errors) {
    int64_t s4[4] = {1, 2, 5, 5}, s2[2] = {5, 5}, s5[5] = {1, 1, 2, 5, 5}, s0[4] = {1, 0, 5, 5};
    ct_tensor *x = ct_randn(s4, 4, CT_FLOAT32), *x2 = ct_randn(s2, 2, CT_FLOAT32);
    ct_tensor *x5 = ct_randn(s5, 5, CT_FLOAT32), *xi = ct_zeros(s4, 4, CT_INT64);
    ct_tensor *xe = ct_zeros(s0, 4, CT_FLOAT32);
    int k2[2] = {2, 2}, k3[2] = {3, 3}, k7[2] = {7, 7}, k0[2] = {0, 2};
    int s1[2] = {1, 1}, sz[2] = {0, 1}, p0[2] = {0, 0}, p2[2] = {2, 2}, pn[2] = {-1, 0};
    int d1[2] = {1, 1}, dz[2] = {1, 0}, o2[2] = {2, 2}, on[2] = {-1, 2};

    CHECK_ERR_PTR(ct_max_pool2d(x2, k2, s1, p0, d1, 0), "max_pool2d");    /* 2-D */
    CHECK_ERR_PTR(ct_max_pool2d(x2, k2, s1, p0, d1, 0), "[5, 5]");
    CHECK_ERR_PTR(ct_max_pool2d(x5, k2, s1, p0, d1, 0), "max_pool2d");    /* 5-D */
    CHECK_ERR_PTR(ct_max_pool2d(xi, k2, s1, p0, d1, 0), "max_pool2d");    /* int64 */
    CHECK_ERR_PTR(ct_max_pool2d(xe, k2, s1, p0, d1, 0), "max_pool2d");    /* C = 0 */
    CHECK_ERR_PTR(ct_max_pool2d(x, k0, s1, p0, d1, 0), "kernel");
    CHECK_ERR_PTR(ct_max_pool2d(x, k2, sz, p0, d1, 0), "stride");
    CHECK_ERR_PTR(ct_max_pool2d(x, k2, s1, p0, dz, 0), "dilation");
    CHECK_ERR_PTR(ct_max_pool2d(x, k3, s1, p2, d1, 0), "padding");       /* pad > k/2 */
    CHECK_ERR_PTR(ct_max_pool2d(x, k3, s1, pn, d1, 0), "padding");
    CHECK_ERR_PTR(ct_max_pool2d(x, k7, s1, p0, d1, 0), "too small");     /* window > input */
    CHECK_ERR_PTR(ct_max_pool2d(NULL, k2, s1, p0, d1, 0), "max_pool2d");
    CHECK_ERR_PTR(ct_max_pool2d(x, NULL, s1, p0, d1, 0), "max_pool2d");

    CHECK_ERR_PTR(ct_avg_pool2d(x2, k2, s1, p0, 0, 1), "avg_pool2d");
    CHECK_ERR_PTR(ct_avg_pool2d(xi, k2, s1, p0, 0, 1), "avg_pool2d");
    CHECK_ERR_PTR(ct_avg_pool2d(x, k0, s1, p0, 0, 1), "avg_pool2d");
    CHECK_ERR_PTR(ct_avg_pool2d(x, k2, sz, p0, 0, 1), "avg_pool2d");
    CHECK_ERR_PTR(ct_avg_pool2d(x, k3, s1, p2, 0, 1), "avg_pool2d");
    CHECK_ERR_PTR(ct_avg_pool2d(x, k7, s1, p0, 0, 1), "avg_pool2d");
    CHECK_ERR_PTR(ct_avg_pool2d(NULL, k2, s1, p0, 0, 1), "avg_pool2d");

    CHECK_ERR_PTR(ct_adaptive_avg_pool2d(x2, o2), "adaptive_avg_pool2d");
    CHECK_ERR_PTR(ct_adaptive_avg_pool2d(x2, o2), "[5, 5]");
    CHECK_ERR_PTR(ct_adaptive_avg_pool2d(xi, o2), "adaptive_avg_pool2d");
    CHECK_ERR_PTR(ct_adaptive_avg_pool2d(xe, o2), "adaptive_avg_pool2d");
    CHECK_ERR_PTR(ct_adaptive_avg_pool2d(x, on), "adaptive_avg_pool2d");
    CHECK_ERR_PTR(ct_adaptive_avg_pool2d(x, NULL), "adaptive_avg_pool2d");
    CHECK_ERR_PTR(ct_adaptive_avg_pool2d(NULL, o2), "adaptive_avg_pool2d");
    ct_free(x);
    ct_free(x2);
    ct_free(x5);
    ct_free(xi);
    ct_free(xe);
}
