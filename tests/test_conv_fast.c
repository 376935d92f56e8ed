/* The fast CPU paths of conv2d and max pooling against the reference paths, over many
 * shapes: conv2d's shifted-copy kernels (AVX-512 and AVX2), Winograd F(2x2,3x3) for the
 * output, the input gradient and the weight gradient, the fused bias gradient and ReLU
 * epilogue; max pooling's window codes (AVX-512 2x2 and portable) against PyTorch-style
 * int64 indices; the fused ReLU + max pool and nn.Sequential's use of it. The reference
 * is selected the way users can: CTORCH_CONV_REFERENCE=1 / CTORCH_POOL_REFERENCE=1. */
#include "test.h"
#include "backends/cpu/conv_fast.h"
#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/pool_fast.h"
#include "core/tensor_impl.h"
#include "ctorch_nn.h"
#include "ops/fused.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t x[4], w[4];
    int stride[2], pad[2], dil[2], groups, bias;
} fcase;

typedef struct {
    ct_tensor *y, *gx, *gw, *gb;
} fres;

static void fres_free(fres *r) {
    ct_free(r->y);
    ct_free(r->gx);
    ct_free(r->gw);
    ct_free(r->gb);
    memset(r, 0, sizeof *r);
}

/* Forward and backward of one convolution with whatever path the environment selects. */
static fres run_conv(const fcase *c, ct_tensor *x, ct_tensor *w, ct_tensor *b, ct_tensor *gy) {
    fres r = {0};
    ct_set_requires_grad(x, 1);
    ct_set_requires_grad(w, 1);
    if (b) ct_set_requires_grad(b, 1);
    ct_tensor *y = ct_conv2d(x, w, b, c->stride, c->pad, c->dil, c->groups);
    CHECK_NN(y);
    if (!y) return r;
    if (ct_backward(y, gy, 0) != 0) {
        CHECK_MSG(0, "backward failed: %s", ct_last_error());
    } else {
        r.gx = ct_clone(ct_grad(x));
        r.gw = ct_clone(ct_grad(w));
        r.gb = b ? ct_clone(ct_grad(b)) : NULL;
    }
    r.y = ct_detach(y);
    ct_free(y);
    ct_zero_grad(x);
    ct_zero_grad(w);
    if (b) ct_zero_grad(b);
    return r;
}

static void compare(const fres *got, const fres *want, double tol, const char *what, int i) {
    char m[128];
    snprintf(m, sizeof m, "%s case %d forward", what, i);
    CHECK_CLOSE(got->y, want->y, tol, m);
    snprintf(m, sizeof m, "%s case %d grad x", what, i);
    CHECK_CLOSE(got->gx, want->gx, tol, m);
    snprintf(m, sizeof m, "%s case %d grad w", what, i);
    CHECK_CLOSE(got->gw, want->gw, tol, m);
    if (want->gb) {
        snprintf(m, sizeof m, "%s case %d grad b", what, i);
        CHECK_CLOSE(got->gb, want->gb, tol, m);
    }
}

static const fcase g_cases[] = {
    /* the simple_cnn layers, batch 1 and odd batches */
    {{3, 3, 32, 32}, {32, 3, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 1},
    {{5, 32, 16, 16}, {64, 32, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 1},
    {{1, 32, 16, 16}, {64, 32, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 0},
    /* odd sizes, Winograd-eligible (3x3, stride 1, pad 1) with enough channels */
    {{2, 17, 7, 9}, {19, 17, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 1},
    {{3, 16, 5, 33}, {16, 16, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 1},
    {{2, 20, 1, 1}, {24, 20, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 1},
    {{4, 24, 4, 4}, {40, 24, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 0},
    {{1, 16, 35, 2}, {17, 16, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 1},
    /* tile rows of 8 tiles (two per vector), odd heights and widths */
    {{2, 16, 7, 15}, {18, 16, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 1},
    {{3, 24, 13, 16}, {16, 24, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 0},
    /* strides, padding, dilation, groups, other kernels */
    {{2, 6, 33, 31}, {12, 6, 5, 3}, {2, 1}, {2, 1}, {1, 2}, 1, 1},
    {{3, 8, 20, 18}, {16, 4, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 2, 1},
    {{2, 32, 12, 12}, {32, 1, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 32, 1},
    {{2, 16, 24, 24}, {32, 16, 1, 1}, {1, 1}, {0, 0}, {1, 1}, 1, 0},
    {{2, 16, 15, 15}, {24, 16, 1, 1}, {2, 2}, {0, 0}, {1, 1}, 1, 1},
    {{2, 12, 17, 16}, {20, 12, 3, 3}, {2, 2}, {1, 1}, {1, 1}, 1, 0},
    {{1, 3, 40, 37}, {8, 3, 7, 7}, {2, 2}, {3, 3}, {1, 1}, 1, 1},
    {{2, 5, 11, 13}, {7, 5, 3, 2}, {1, 1}, {0, 1}, {2, 1}, 1, 1},
    {{2, 4, 9, 10}, {6, 4, 2, 2}, {1, 1}, {0, 0}, {1, 1}, 1, 1},
    {{1, 3, 6, 40}, {5, 3, 3, 5}, {1, 3}, {2, 0}, {1, 1}, 1, 1},
    {{2, 4, 8, 8}, {4, 4, 3, 3}, {1, 1}, {3, 3}, {2, 2}, 1, 1},
    /* many channels: the slabs are built in channel chunks, the Winograd weight gradient
     * uses OpenBLAS (C*O >= 128*128) */
    {{2, 256, 6, 6}, {128, 256, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 1},
    {{3, 128, 9, 9}, {130, 128, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 0},
    {{2, 160, 12, 12}, {8, 160, 3, 3}, {1, 1}, {0, 0}, {1, 1}, 1, 1},
};

static void run_all(const char *what, double tol, const char *var, const char *val) {
    int prev = ct_get_num_threads();
    for (size_t i = 0; i < sizeof g_cases / sizeof g_cases[0]; i++) {
        const fcase *c = &g_cases[i];
        ct_tensor *x = ct_randn(c->x, 4, CT_FLOAT32), *w = ct_randn(c->w, 4, CT_FLOAT32);
        ct_tensor *b = c->bias ? ct_randn(c->w, 1, CT_FLOAT32) : NULL;
        int64_t H = c->x[2], W = c->x[3], kh = c->w[2], kw = c->w[3];
        int64_t ys[4] = {c->x[0], c->w[0],
                         (H + 2 * c->pad[0] - c->dil[0] * (kh - 1) - 1) / c->stride[0] + 1,
                         (W + 2 * c->pad[1] - c->dil[1] * (kw - 1) - 1) / c->stride[1] + 1};
        ct_tensor *gy = ct_randn(ys, 4, CT_FLOAT32);
        setenv("CTORCH_CONV_REFERENCE", "1", 1);
        fres want = run_conv(c, x, w, b, gy);
        unsetenv("CTORCH_CONV_REFERENCE");
        if (var) setenv(var, val, 1);
        for (int t = 0; t < 2; t++) {
            ct_set_num_threads(t == 0 ? 1 : 3);
            fres got = run_conv(c, x, w, b, gy);
            compare(&got, &want, tol, what, (int)i);
            fres_free(&got);
        }
        if (var) unsetenv(var);
        ct_set_num_threads(prev);
        fres_free(&want);
        ct_free(x);
        ct_free(w);
        ct_free(b);
        ct_free(gy);
    }
}

TEST(conv_fast_default_vs_reference) {
    if (!cf_available()) SKIP("no AVX2/AVX-512 on this CPU: only the reference path runs");
    run_all("conv fast", 2e-5, NULL, NULL);
}

TEST(conv_fast_avx2_vs_reference) {
    setenv("CTORCH_CONV_ISA", "avx2", 1);
    int ok = cf_available();
    unsetenv("CTORCH_CONV_ISA");
    if (!ok) SKIP("no AVX2 on this CPU");
    run_all("conv avx2", 2e-5, "CTORCH_CONV_ISA", "avx2");
}

TEST(conv_fast_direct_vs_reference) {
    if (!cf_available()) SKIP("no AVX2/AVX-512 on this CPU");
    run_all("conv direct (no Winograd)", 2e-5, "CTORCH_CONV_WINOGRAD", "0");
}

TEST(conv_fast_winograd_weight_gradient_gemms_vs_reference) {
    if (!cf_available()) SKIP("no AVX2/AVX-512 on this CPU");
    run_all("conv Winograd weight gradient, OpenBLAS GEMMs", 2e-5, "CTORCH_CONV_WINOGRAD_GEMM",
            "blas");
    run_all("conv Winograd weight gradient, own GEMMs", 2e-5, "CTORCH_CONV_WINOGRAD_GEMM", "own");
    run_all("conv direct weight gradient", 2e-5, "CTORCH_CONV_WINOGRAD_WGRAD", "0");
}

/* The fused ReLU epilogue and NaN/inf handling, against the reference + a ReLU. The
 * direct kernels give exactly the reference's special values (a ReLU keeps NaN). Winograd
 * mixes the inputs of a 2x2 output tile in its transforms, so a NaN or inf input may
 * turn the other outputs of its tiles into NaN too (as in other Winograd libraries): there
 * the check is that every reference NaN is a NaN and that finite outputs agree. */
static int64_t relu_diff(const float *a, const float *q, int64_t n, int wino, int64_t *nans) {
    int64_t bad = 0;
    for (int64_t k = 0; k < n; k++) {
        if (a[k] != a[k]) {
            (*nans)++;
            if (q[k] == q[k]) bad++;
        } else if (wino && q[k] != q[k]) {
            continue;
        } else if (isinf(a[k]) || isinf(q[k])) {
            if (!wino && a[k] != q[k]) bad++;
        } else if (a[k] == 0) {
            if (q[k] != 0) bad++;
        } else if (!(fabs(a[k] - q[k]) <= 1e-4 * (1 + fabs(a[k])))) {
            bad++;
        }
    }
    return bad;
}

TEST(conv_fast_relu_epilogue_and_special_values) {
    if (!cf_available()) SKIP("no AVX2/AVX-512 on this CPU");
    static const fcase cs[] = {
        {{2, 32, 16, 16}, {64, 32, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 1}, /* Winograd */
        {{2, 3, 9, 11}, {8, 3, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 1},     /* direct */
    };
    for (int wino = 0; wino < 2; wino++)
        for (int special = 0; special < 3; special++)
            for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
                const fcase *c = &cs[i];
                ct_tensor *x = ct_randn(c->x, 4, CT_FLOAT32), *w = ct_randn(c->w, 4, CT_FLOAT32);
                ct_tensor *b = ct_randn(c->w, 1, CT_FLOAT32);
                float *xp = ct_data(x);
                if (special == 1) xp[5] = NAN;
                if (special == 2) {
                    xp[40] = INFINITY;
                    xp[300] = -INFINITY;
                }
                int64_t ys[4] = {c->x[0], c->w[0], c->x[2], c->x[3]};
                ct_tensor *y0 = ct_empty(ys, 4, CT_FLOAT32), *y1 = ct_empty(ys, 4, CT_FLOAT32);
                ct_conv_params p = {{1, 1}, {1, 1}, {1, 1}, 1};
                setenv("CTORCH_CONV_REFERENCE", "1", 1);
                CHECK_OK(cpu_conv2d_forward_ex(y0, x, w, b, &p, 1));
                unsetenv("CTORCH_CONV_REFERENCE");
                if (!wino) setenv("CTORCH_CONV_WINOGRAD", "0", 1);
                CHECK_OK(cpu_conv2d_forward_ex(y1, x, w, b, &p, 1));
                unsetenv("CTORCH_CONV_WINOGRAD");
                int64_t nans = 0;
                int64_t bad = relu_diff(ct_data(y0), ct_data(y1), ct_numel(y0), wino, &nans);
                if (special == 1)
                    CHECK_MSG(nans > 0, "relu epilogue case %zu: a NaN input gave no NaN", i);
                CHECK_MSG(bad == 0, "relu epilogue case %zu (winograd %d, special %d): %lld "
                          "outputs differ", i, wino, special, (long long)bad);
                ct_free(x);
                ct_free(w);
                ct_free(b);
                ct_free(y0);
                ct_free(y1);
            }
}

/* The weight-gradient entry point with and without the bias gradient. */
TEST(conv_fast_weight_and_bias_gradient_entry) {
    int64_t xs[4] = {3, 5, 7, 6}, wsh[4] = {4, 5, 3, 3}, ysh[4] = {3, 4, 7, 6}, bs = 4;
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32), *gy = ct_randn(ysh, 4, CT_FLOAT32);
    ct_tensor *gw0 = ct_empty(wsh, 4, CT_FLOAT32), *gw1 = ct_empty(wsh, 4, CT_FLOAT32);
    ct_tensor *gb1 = ct_empty(&bs, 1, CT_FLOAT32);
    ct_conv_params p = {{1, 1}, {1, 1}, {1, 1}, 1};
    setenv("CTORCH_CONV_REFERENCE", "1", 1);
    CHECK_OK(cpu_conv2d_backward_weight(gw0, NULL, gy, x, &p));
    unsetenv("CTORCH_CONV_REFERENCE");
    CHECK_OK(cpu_conv2d_backward_weight(gw1, gb1, gy, x, &p));
    CHECK_CLOSE(gw1, gw0, 1e-5, "weight gradient with the bias gradient");
    int dims[3] = {0, 2, 3};
    ct_tensor *want_b = ct_sum(gy, dims, 3, 0);
    CHECK_CLOSE(gb1, want_b, 1e-5, "bias gradient of the fused kernel");
    ct_free(want_b);
    ct_free(x);
    ct_free(gy);
    ct_free(gw0);
    ct_free(gw1);
    ct_free(gb1);
}

/* float64 takes the reference path and stays exact against a float64 gradcheck elsewhere;
 * here: the same results whether or not the fast path is allowed. */
TEST(conv_fast_float64_unchanged) {
    fcase c = {{2, 4, 6, 5}, {3, 4, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1, 1};
    ct_tensor *x = ct_randn(c.x, 4, CT_FLOAT64), *w = ct_randn(c.w, 4, CT_FLOAT64);
    ct_tensor *b = ct_randn(c.w, 1, CT_FLOAT64);
    int64_t ys[4] = {2, 3, 6, 5};
    ct_tensor *gy = ct_randn(ys, 4, CT_FLOAT64);
    fres a = run_conv(&c, x, w, b, gy);
    setenv("CTORCH_CONV_REFERENCE", "1", 1);
    fres r = run_conv(&c, x, w, b, gy);
    unsetenv("CTORCH_CONV_REFERENCE");
    compare(&a, &r, 0, "float64", 0);
    fres_free(&a);
    fres_free(&r);
    ct_free(x);
    ct_free(w);
    ct_free(b);
    ct_free(gy);
}

/* ------------------------------------------------------------------- pooling */

/* Reference: PyTorch-style int64 indices through the backend table's kernels. */
static void pool_ref(const ct_tensor *x, const ct_tensor *gy, const ct_pool_params *p,
                     int64_t *ysh, ct_tensor **y, ct_tensor **gx) {
    *y = ct_empty(ysh, 4, x->dtype);
    ct_tensor *ind = ct_empty(ysh, 4, CT_INT64);
    *gx = ct_empty(ct_shape(x), 4, x->dtype);
    CHECK_OK(cpu_max_pool2d_forward(*y, ind, x, p));
    CHECK_OK(cpu_max_pool2d_backward(*gx, gy, ind, p));
    ct_free(ind);
}

static void pool_fast(const ct_tensor *x, const ct_tensor *gy, const ct_pool_params *p,
                      int64_t *ysh, int relu, ct_tensor **y, ct_tensor **gx) {
    *y = ct_empty(ysh, 4, x->dtype);
    ct_tensor *codes = ct_empty(ysh, 4, CT_UINT8);
    *gx = ct_empty(ct_shape(x), 4, x->dtype);
    CHECK_OK(cpu_max_pool2d_codes_forward(*y, codes, x, p, relu));
    CHECK_OK(cpu_max_pool2d_codes_backward(*gx, gy, codes, p));
    /* and without codes (inference): the same output */
    ct_tensor *y2 = ct_empty(ysh, 4, x->dtype);
    CHECK_OK(cpu_max_pool2d_codes_forward(y2, NULL, x, p, relu));
    CHECK_CLOSE(y2, *y, 0, "max pool without codes");
    ct_free(y2);
    ct_free(codes);
}

static int64_t out_size(int64_t in, int k, int s, int pad, int d, int ceil) {
    int64_t num = in + 2 * pad - d * (k - 1) - 1 + (ceil ? s - 1 : 0);
    int64_t o = num / s + 1;
    if (ceil && (o - 1) * s >= in + pad) o--;
    return o;
}

TEST(max_pool_codes_vs_indices) {
    static const struct {
        int64_t x[4];
        int k[2], s[2], p[2], d[2], ceil;
    } cs[] = {
        {{2, 3, 32, 32}, {2, 2}, {2, 2}, {0, 0}, {1, 1}, 0}, /* AVX-512 2x2 */
        {{3, 5, 17, 35}, {2, 2}, {2, 2}, {0, 0}, {1, 1}, 0}, /* odd sizes, tails */
        {{1, 2, 9, 9}, {2, 2}, {2, 2}, {0, 0}, {1, 1}, 1},   /* ceil mode: partial windows */
        {{2, 3, 11, 10}, {3, 3}, {2, 2}, {1, 1}, {1, 1}, 0}, /* overlapping */
        {{2, 2, 12, 13}, {3, 2}, {1, 2}, {1, 0}, {2, 1}, 0}, /* dilation, stride 1 */
        {{1, 4, 7, 7}, {3, 3}, {3, 3}, {1, 1}, {1, 1}, 1},
        {{2, 3, 1, 64}, {1, 2}, {1, 2}, {0, 0}, {1, 1}, 0},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
        for (int dt = 0; dt < 2; dt++)
            for (int special = 0; special < 2; special++) {
                ct_pool_params p = {{cs[i].k[0], cs[i].k[1]}, {cs[i].s[0], cs[i].s[1]},
                                    {cs[i].p[0], cs[i].p[1]}, {cs[i].d[0], cs[i].d[1]},
                                    cs[i].ceil, 0};
                ct_dtype t = dt ? CT_FLOAT64 : CT_FLOAT32;
                ct_tensor *x = ct_randn(cs[i].x, 4, t);
                if (special) {
                    /* ties, -inf, NaN: the first maximum, NaN always taken */
                    int64_t n = ct_numel(x);
                    for (int64_t k = 0; k < n; k++) {
                        double v = k % 7 == 0 ? 1.0 : k % 11 == 0 ? -INFINITY
                                 : k % 29 == 0 ? NAN : (double)((k * 37) % 5);
                        if (t == CT_FLOAT32)
                            ((float *)ct_data(x))[k] = (float)v;
                        else
                            ((double *)ct_data(x))[k] = v;
                    }
                }
                int64_t ysh[4] = {cs[i].x[0], cs[i].x[1],
                                  out_size(cs[i].x[2], p.kernel[0], p.stride[0], p.padding[0],
                                           p.dilation[0], p.ceil_mode),
                                  out_size(cs[i].x[3], p.kernel[1], p.stride[1], p.padding[1],
                                           p.dilation[1], p.ceil_mode)};
                ct_tensor *gy = ct_randn(ysh, 4, t);
                ct_tensor *ry, *rgx, *fy, *fgx;
                pool_ref(x, gy, &p, ysh, &ry, &rgx);
                for (int portable = 0; portable < 2; portable++) {
                    if (portable) setenv("CTORCH_POOL_REFERENCE", "1", 1);
                    pool_fast(x, gy, &p, ysh, 0, &fy, &fgx);
                    unsetenv("CTORCH_POOL_REFERENCE");
                    char m[96];
                    /* NaN-aware exact comparison */
                    int64_t n = ct_numel(fy), bad = 0;
                    for (int64_t k = 0; k < n; k++) {
                        double a = t == CT_FLOAT32 ? ((float *)ct_data(fy))[k]
                                                   : ((double *)ct_data(fy))[k];
                        double r = t == CT_FLOAT32 ? ((float *)ct_data(ry))[k]
                                                   : ((double *)ct_data(ry))[k];
                        if (!(a == r || (a != a && r != r))) bad++;
                    }
                    CHECK_MSG(bad == 0, "max pool case %zu dt %d special %d portable %d: %lld "
                              "outputs differ", i, dt, special, portable, (long long)bad);
                    snprintf(m, sizeof m, "max pool case %zu dt %d special %d portable %d grad",
                             i, dt, special, portable);
                    CHECK_CLOSE(fgx, rgx, 0, m);
                    ct_free(fy);
                    ct_free(fgx);
                }
                ct_free(ry);
                ct_free(rgx);
                ct_free(gy);
                ct_free(x);
            }
}

/* Fused ReLU + max pool against ct_relu then ct_max_pool2d: values and gradients. */
TEST(relu_max_pool_fused_vs_composed) {
    static const struct {
        int64_t x[4];
        int k, s, p;
    } cs[] = {{{2, 4, 32, 32}, 2, 2, 0}, {{3, 2, 15, 17}, 2, 2, 0}, {{2, 3, 10, 9}, 3, 2, 1}};
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
        for (int portable = 0; portable < 2; portable++) {
            int k[2] = {cs[i].k, cs[i].k}, s[2] = {cs[i].s, cs[i].s}, p[2] = {cs[i].p, cs[i].p};
            ct_tensor *x = ct_randn(cs[i].x, 4, CT_FLOAT32);
            float *xp = ct_data(x);
            xp[3] = NAN;
            xp[77] = 0.0f;
            xp[78] = -0.0f;
            if (portable) setenv("CTORCH_POOL_REFERENCE", "1", 1);
            ct_set_requires_grad(x, 1);
            ct_tensor *r = ct_relu(x);
            ct_tensor *want = ct_max_pool2d(r, k, s, p, NULL, 0);
            ct_tensor *gy = ct_randn(ct_shape(want), 4, CT_FLOAT32);
            CHECK_OK(ct_backward(want, gy, 0));
            ct_tensor *want_gx = ct_clone(ct_grad(x));
            ct_zero_grad(x);
            ct_tensor *got = ct_relu_max_pool2d(x, k, s, p, NULL, 0);
            CHECK_NN(got);
            CHECK_OK(ct_backward(got, gy, 0));
            unsetenv("CTORCH_POOL_REFERENCE");
            int64_t n = ct_numel(want), bad = 0;
            const float *a = ct_data(got), *b = ct_data(want);
            for (int64_t j = 0; j < n; j++)
                if (!(a[j] == b[j] || (a[j] != a[j] && b[j] != b[j]))) bad++;
            CHECK_MSG(bad == 0, "fused relu+pool case %zu portable %d: %lld values differ", i,
                      portable, (long long)bad);
            char m[80];
            snprintf(m, sizeof m, "fused relu+pool case %zu portable %d grad", i, portable);
            CHECK_CLOSE(ct_grad(x), want_gx, 0, m);
            ct_free(want_gx);
            ct_free(gy);
            ct_free(got);
            ct_free(want);
            ct_free(r);
            ct_free(x);
        }
}

/* nn.Sequential(Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, MaxPool2d) runs each triple as one
 * fused op: the same outputs and gradients (exactly) as the modules applied one by one. */
static ct_tensor *seq_by_hand(ct_module *seq, const ct_tensor *x) {
    ct_tensor *cur = ct_retain((ct_tensor *)x);
    for (int i = 0; i < seq->n_children && cur; i++) {
        ct_tensor *n = ct_module_forward(seq->children[i], cur);
        ct_free(cur);
        cur = n;
    }
    return cur;
}

static ct_tensor *double_forward(ct_module *m, const ct_tensor *x) {
    (void)m;
    return ct_mul_scalar(x, 2.0);
}

static void seq_case(int64_t H, int64_t W, int c1, int c2, int replace) {
    ct_module *f[6] = {ct_nn_conv2d(3, c1, 3, 1, 1, 1), ct_nn_relu(), ct_nn_max_pool2d(2, 2, 0),
                       ct_nn_conv2d(c1, c2, 3, 1, 1, 1), ct_nn_relu(), ct_nn_max_pool2d(2, 2, 0)};
    ct_module *seq = ct_nn_sequential(f, 6);
    CHECK_NN(seq);
    if (!seq) return;
    int64_t xs[4] = {3, 3, H, W};
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32);
    ct_set_requires_grad(x, 1);
    int np;
    ct_tensor **ps = ct_module_parameters(seq, &np);
    ct_tensor *grads[2][5] = {{NULL}};
    ct_tensor *ys[2] = {NULL, NULL}, *gy = NULL;
    for (int r = 0; r < 2; r++) {
        ct_tensor *y = r == 0 ? ct_module_forward(seq, x) : seq_by_hand(seq, x);
        CHECK_NN(y);
        if (!y) continue;
        CHECK(!strcmp(ct_grad_fn_name(y), "MaxPool2DWithIndicesBackward"));
        if (!gy) gy = ct_randn(ct_shape(y), 4, CT_FLOAT32);
        ct_tensor *s = ct_mul(y, gy);
        ct_tensor *t = ct_sum(s, NULL, 0, 0);
        CHECK_OK(ct_backward(t, NULL, 0));
        for (int i = 0; i < np && i < 4; i++) {
            grads[r][i] = ct_clone(ct_grad(ps[i]));
            ct_zero_grad(ps[i]);
        }
        grads[r][4] = ct_clone(ct_grad(x));
        ct_zero_grad(x);
        ys[r] = ct_detach(y);
        ct_free(t);
        ct_free(s);
        ct_free(y);
    }
    ct_free(gy);
    char m[96];
    snprintf(m, sizeof m, "fused Sequential output %lldx%lld", (long long)H, (long long)W);
    CHECK_CLOSE(ys[0], ys[1], 0, m);
    for (int i = 0; i < 5; i++) {
        snprintf(m, sizeof m, "fused Sequential %lldx%lld grad %d", (long long)H, (long long)W, i);
        CHECK_CLOSE(grads[0][i], grads[1][i], 0, m);
    }
    /* no-grad (inference) gives the same output too */
    int prev = ct_set_grad_enabled(0);
    ct_tensor *yi = ct_module_forward(seq, x);
    ct_set_grad_enabled(prev);
    CHECK_CLOSE(yi, ys[0], 0, "fused Sequential output under no-grad");
    ct_free(yi);
    if (!replace) goto done;
    /* a ReLU whose forward was replaced is not fused away */
    seq->children[1]->forward = double_forward;
    ct_tensor *y3 = ct_module_forward(seq, x);
    ct_tensor *y4 = seq_by_hand(seq, x);
    CHECK(y3 && y4 && ct_size(y3, 2) == ct_size(y4, 2));
    CHECK_CLOSE(y3, y4, 0, "Sequential with a replaced forward");
    if (y3 && ys[0]) {
        const float *a = ct_data(y3), *b = ct_data(ys[0]);
        int differ = 0;
        for (int64_t k = 0; k < ct_numel(y3); k++) differ |= a[k] != b[k];
        CHECK_MSG(differ, "the replaced ReLU forward was not used");
    }
    ct_free(y3);
    ct_free(y4);
done:
    for (int r = 0; r < 2; r++) {
        ct_free(ys[r]);
        for (int i = 0; i < 5; i++) ct_free(grads[r][i]);
    }
    free(ps);
    ct_free(x);
    ct_module_free(seq);
}

TEST(sequential_fuses_conv_relu_maxpool) {
    seq_case(12, 14, 8, 16, 1);  /* small channels: direct conv, then the fused ReLU+pool */
    seq_case(12, 16, 16, 32, 0); /* second conv: Winograd with pooling in its output */
    seq_case(20, 28, 16, 24, 0); /* 5x7 into the second conv: odd, pooled separately */
    seq_case(32, 32, 32, 64, 0); /* simple_cnn */
}

/* ct_conv2d_relu_max_pool2d against ct_conv2d + ct_relu + ct_max_pool2d over shapes that
 * take each path: pooling in the direct kernel's epilogue (32-wide rows), in the Winograd
 * output transform, and conv-then-pool; with NaN inputs, channel tails, groups. */
TEST(conv_relu_maxpool_fused_op_vs_composed) {
    static const struct {
        int64_t x[4], w[4];
        int groups, bias, nan;
    } cs[] = {
        {{3, 3, 32, 32}, {32, 3, 3, 3}, 1, 1, 0},   /* direct epilogue */
        {{2, 3, 8, 32}, {13, 3, 3, 3}, 1, 1, 1},    /* direct epilogue, channel tail, NaN */
        {{1, 4, 2, 32}, {8, 2, 3, 3}, 2, 0, 0},     /* direct epilogue, groups, 2 rows */
        {{2, 32, 16, 16}, {64, 32, 3, 3}, 1, 1, 0}, /* Winograd output transform */
        {{3, 16, 6, 10}, {20, 16, 3, 3}, 1, 1, 1},  /* Winograd, 3 tiles per row, NaN */
        {{2, 16, 7, 9}, {16, 16, 3, 3}, 1, 1, 0},   /* odd: conv, then pool */
        {{2, 5, 9, 12}, {6, 5, 3, 3}, 1, 0, 0},     /* small channels: conv, then pool */
    };
    int prev = ct_get_num_threads();
    int one[2] = {1, 1}, k2[2] = {2, 2};
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
        for (int t = 0; t < 2; t++) {
            ct_set_num_threads(t ? 3 : 1);
            ct_tensor *x = ct_randn(cs[i].x, 4, CT_FLOAT32), *w = ct_randn(cs[i].w, 4, CT_FLOAT32);
            ct_tensor *b = cs[i].bias ? ct_randn(cs[i].w, 1, CT_FLOAT32) : NULL;
            if (cs[i].nan) ((float *)ct_data(x))[7] = NAN;
            ct_tensor *ins[3] = {x, w, b};
            ct_tensor *ys[2] = {NULL, NULL}, *gs[2][3] = {{NULL}}, *gy = NULL;
            for (int r = 0; r < 2; r++) {
                for (int j = 0; j < 3; j++)
                    if (ins[j]) ct_set_requires_grad(ins[j], 1);
                ct_tensor *y;
                if (r == 0) {
                    y = ct_conv2d_relu_max_pool2d(x, w, b, one, one, one, cs[i].groups, k2, k2,
                                                  (int[2]){0, 0});
                } else {
                    ct_tensor *c = ct_conv2d(x, w, b, one, one, one, cs[i].groups);
                    ct_tensor *rl = c ? ct_relu(c) : NULL;
                    y = rl ? ct_max_pool2d(rl, k2, k2, NULL, NULL, 0) : NULL;
                    ct_free(rl);
                    ct_free(c);
                }
                CHECK_NN(y);
                if (!y) continue;
                if (!gy) gy = ct_randn(ct_shape(y), 4, CT_FLOAT32);
                CHECK_OK(ct_backward(y, gy, 0));
                for (int j = 0; j < 3; j++)
                    if (ins[j]) {
                        gs[r][j] = ct_clone(ct_grad(ins[j]));
                        ct_zero_grad(ins[j]);
                    }
                ys[r] = ct_detach(y);
                ct_free(y);
            }
            if (ys[0] && ys[1]) {
                const float *a = ct_data(ys[0]), *q = ct_data(ys[1]);
                int64_t bad = 0, nans = 0;
                for (int64_t k = 0; k < ct_numel(ys[1]); k++) {
                    nans += q[k] != q[k];
                    if (!(a[k] == q[k] || (a[k] != a[k] && q[k] != q[k]))) bad++;
                }
                CHECK_MSG(bad == 0, "fused conv+relu+pool case %zu: %lld outputs differ", i,
                          (long long)bad);
                CHECK_MSG(!cs[i].nan || nans > 0, "fused case %zu: NaN lost", i);
            }
            if (!cs[i].nan)
                for (int j = 0; j < 3; j++)
                    if (ins[j]) {
                        char m[80];
                        snprintf(m, sizeof m, "fused conv+relu+pool case %zu grad %d", i, j);
                        CHECK_CLOSE(gs[0][j], gs[1][j], 0, m);
                    }
            /* inference: no codes, the same output */
            int pg = ct_set_grad_enabled(0);
            ct_tensor *yi = ct_conv2d_relu_max_pool2d(x, w, b, one, one, one, cs[i].groups, k2,
                                                      k2, (int[2]){0, 0});
            ct_set_grad_enabled(pg);
            if (!cs[i].nan) CHECK_CLOSE(yi, ys[1], 0, "fused conv+relu+pool without grad");
            ct_free(yi);
            for (int r = 0; r < 2; r++) {
                ct_free(ys[r]);
                for (int j = 0; j < 3; j++) ct_free(gs[r][j]);
            }
            ct_free(gy);
            ct_free(x);
            ct_free(w);
            ct_free(b);
        }
    ct_set_num_threads(prev);
}

/* The tests above again at the AVX2 level (CTORCH_CPU_ISA=avx2), as on a CPU without
 * AVX-512: the AVX2 Winograd transforms and fused ReLU + pooling epilogue, its weight
 * gradient on both GEMMs, and the AVX2 2x2 max-pool kernels. */
TEST(conv_fast_paths_at_avx2_level) {
#if defined(__x86_64__) || defined(__i386__)
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        SKIP("no AVX2 on this CPU");
    setenv("CTORCH_CPU_ISA", "avx2", 1);
    CHECK_MSG(!strcmp(cf_isa_name(), "avx2"), "CTORCH_CPU_ISA=avx2 gave the %s kernels",
              cf_isa_name());
    max_pool_codes_vs_indices();
    conv_fast_relu_epilogue_and_special_values();
    conv_relu_maxpool_fused_op_vs_composed();
    conv_fast_winograd_weight_gradient_gemms_vs_reference();
    unsetenv("CTORCH_CPU_ISA");
#else
    SKIP("x86 only");
#endif
}
