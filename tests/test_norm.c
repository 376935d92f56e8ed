/* batch_norm and layer_norm: forward, backward and running statistics against PyTorch
 * (tests/fixtures/gen_norm_join.py), float64 gradcheck, and the error paths. */
#include "test.h"

#include <math.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

static ct_tensor *fx_get(ct_fixture *fx, int c, const char *key) {
    char name[64];
    snprintf(name, sizeof name, "c%d_%s", c, key);
    return ct_fixture_has(fx, name) ? ct_fixture_get(fx, name) : NULL;
}

/* Must mirror BN_CASES in gen_norm_join.py. */
static const struct {
    int training, affine, running, noncontig;
    double momentum, eps;
} BN_CASES[] = {
    {1, 1, 1, 0, 0.1, 1e-5}, {1, 1, 1, 1, 0.3, 1e-5}, {0, 1, 1, 0, 0.1, 1e-5},
    {1, 0, 0, 1, 0.1, 1e-3}, {0, 0, 1, 1, 0.1, 1e-5}, {1, 1, 1, 0, 0.0, 1e-5},
};

TEST(batch_norm_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("norm_batch_norm");
    if (!fx) return;
    for (int c = 0; c < (int)(sizeof BN_CASES / sizeof BN_CASES[0]); c++) {
        char what[64];
        ct_tensor *x0 = fx_get(fx, c, "x"), *gy = fx_get(fx, c, "gy");
        ct_tensor *w = fx_get(fx, c, "w"), *b = fx_get(fx, c, "b");
        ct_tensor *rm = fx_get(fx, c, "rm_in"), *rv = fx_get(fx, c, "rv_in");
        CHECK(x0 && gy);
        CHECK(!!w == BN_CASES[c].affine && !!rm == BN_CASES[c].running);
        ct_tensor *x = BN_CASES[c].noncontig ? ct_test_noncontig(x0) : ct_retain(x0);
        if (BN_CASES[c].noncontig) CHECK(!ct_is_contiguous(x));
        CHECK_OK(ct_set_requires_grad(x, 1));
        if (w) CHECK_OK(ct_set_requires_grad(w, 1));
        if (b) CHECK_OK(ct_set_requires_grad(b, 1));
        uint64_t vm = rm ? ct_version(rm) : 0, vv = rv ? ct_version(rv) : 0;
        ct_tensor *y = ct_batch_norm(x, rm, rv, w, b, BN_CASES[c].training, BN_CASES[c].momentum,
                                     BN_CASES[c].eps);
        CHECK_NN(y);
        if (!y) goto next;
        CHECK(strcmp(ct_grad_fn_name(y), "BatchNormBackward") == 0);
        snprintf(what, sizeof what, "batch_norm case %d y", c);
        ct_tensor *ry = fx_get(fx, c, "y");
        CHECK_CLOSE(y, ry, 1e-5, what);
        ct_free(ry);
        if (rm) {
            ct_tensor *rm_out = fx_get(fx, c, "rm_out"), *rv_out = fx_get(fx, c, "rv_out");
            snprintf(what, sizeof what, "batch_norm case %d running_mean", c);
            CHECK_CLOSE(rm, rm_out, 1e-6, what);
            snprintf(what, sizeof what, "batch_norm case %d running_var", c);
            CHECK_CLOSE(rv, rv_out, 1e-6, what);
            /* Training bumps the version counters of the updated buffers; eval does not. */
            CHECK(ct_version(rm) == vm + (BN_CASES[c].training ? 1 : 0));
            CHECK(ct_version(rv) == vv + (BN_CASES[c].training ? 1 : 0));
            ct_free(rm_out);
            ct_free(rv_out);
        }
        CHECK_OK(ct_backward(y, gy, 0));
        ct_tensor *rgx = fx_get(fx, c, "gx");
        snprintf(what, sizeof what, "batch_norm case %d gx", c);
        CHECK_CLOSE(ct_grad(x), rgx, 1e-5, what);
        ct_free(rgx);
        if (w) {
            ct_tensor *rgw = fx_get(fx, c, "gw"), *rgb = fx_get(fx, c, "gb");
            snprintf(what, sizeof what, "batch_norm case %d gw", c);
            CHECK_CLOSE(ct_grad(w), rgw, 1e-5, what);
            snprintf(what, sizeof what, "batch_norm case %d gb", c);
            CHECK_CLOSE(ct_grad(b), rgb, 1e-5, what);
            ct_free(rgw);
            ct_free(rgb);
        }
        ct_free(y);
    next:
        ct_free(x);
        ct_free(x0);
        ct_free(gy);
        ct_free(w);
        ct_free(b);
        ct_free(rm);
        ct_free(rv);
    }
    ct_fixture_free(fx);
}

/* Strided running statistics are updated in place like contiguous ones. */
TEST(batch_norm_strided_running_stats) {
    int64_t xs[3] = {4, 3, 5}, big = 6, c = 3;
    ct_tensor *x = ct_randn(xs, 3, CT_FLOAT32);
    ct_tensor *rm_buf = ct_zeros(&big, 1, CT_FLOAT32), *rv_buf = ct_ones(&big, 1, CT_FLOAT32);
    ct_tensor *rm = ct_slice(rm_buf, 0, 0, 6, 2), *rv = ct_slice(rv_buf, 0, 1, 6, 2);
    ct_tensor *rm2 = ct_zeros(&c, 1, CT_FLOAT32), *rv2 = ct_ones(&c, 1, CT_FLOAT32);
    CHECK(!ct_is_contiguous(rm));
    uint64_t v0 = ct_version(rm_buf);
    ct_tensor *y1 = ct_batch_norm(x, rm, rv, NULL, NULL, 1, 0.25, 1e-5);
    ct_tensor *y2 = ct_batch_norm(x, rm2, rv2, NULL, NULL, 1, 0.25, 1e-5);
    CHECK_NN(y1);
    CHECK_NN(y2);
    CHECK_CLOSE(y1, y2, 0, "strided running stats: output");
    CHECK_CLOSE(rm, rm2, 0, "strided running_mean");
    CHECK_CLOSE(rv, rv2, 0, "strided running_var");
    CHECK(ct_version(rm_buf) > v0);
    /* The untouched interleaved elements keep their values. */
    float *pm = ct_data(rm_buf), *pv = ct_data(rv_buf);
    CHECK(pm[1] == 0.0f && pm[3] == 0.0f && pv[0] == 1.0f && pv[2] == 1.0f);
    /* Eval with strided running stats reads them correctly. */
    ct_tensor *e1 = ct_batch_norm(x, rm, rv, NULL, NULL, 0, 0.1, 1e-5);
    ct_tensor *e2 = ct_batch_norm(x, rm2, rv2, NULL, NULL, 0, 0.1, 1e-5);
    CHECK_CLOSE(e1, e2, 0, "strided running stats: eval output");
    ct_free(e1);
    ct_free(e2);
    ct_free(y1);
    ct_free(y2);
    ct_free(rm);
    ct_free(rv);
    ct_free(rm2);
    ct_free(rv2);
    ct_free(rm_buf);
    ct_free(rv_buf);
    ct_free(x);
}

/* Empty batches give empty outputs and leave the running statistics alone. */
TEST(batch_norm_layer_norm_empty_batch) {
    int64_t xs[3] = {0, 3, 2}, c = 3, ls[2] = {0, 4}, n4 = 4;
    ct_tensor *x = ct_zeros(xs, 3, CT_FLOAT32);
    ct_tensor *rm = ct_full(&c, 1, 0.5, CT_FLOAT32), *rv = ct_full(&c, 1, 2.0, CT_FLOAT32);
    ct_tensor *want_m = ct_clone(rm), *want_v = ct_clone(rv);
    ct_tensor *y = ct_batch_norm(x, rm, rv, NULL, NULL, 1, 0.1, 1e-5);
    CHECK_NN(y);
    if (y) CHECK(ct_numel(y) == 0 && ct_ndim(y) == 3 && ct_size(y, 1) == 3);
    CHECK_CLOSE(rm, want_m, 0, "batch_norm empty batch running_mean");
    CHECK_CLOSE(rv, want_v, 0, "batch_norm empty batch running_var");
    ct_tensor *lx = ct_zeros(ls, 2, CT_FLOAT32);
    ct_tensor *ly = ct_layer_norm(lx, &n4, 1, NULL, NULL, 1e-5);
    CHECK_NN(ly);
    if (ly) CHECK(ct_numel(ly) == 0 && ct_size(ly, 1) == 4);
    ct_free(ly);
    ct_free(lx);
    ct_free(y);
    ct_free(x);
    ct_free(rm);
    ct_free(rv);
    ct_free(want_m);
    ct_free(want_v);
}

/* A shape big enough for the multithreaded paths: float32 against float64, and the
 * same bits whatever the thread count. */
TEST(batch_norm_large_threads_match_float64) {
    int64_t xs[4] = {8, 24, 12, 12}, c = 24;
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32);
    ct_tensor *gy = ct_randn(xs, 4, CT_FLOAT32);
    ct_tensor *w = ct_randn(&c, 1, CT_FLOAT32), *b = ct_randn(&c, 1, CT_FLOAT32);
    ct_tensor *x64 = ct_to_dtype(x, CT_FLOAT64), *gy64 = ct_to_dtype(gy, CT_FLOAT64);
    ct_tensor *w64 = ct_to_dtype(w, CT_FLOAT64), *b64 = ct_to_dtype(b, CT_FLOAT64);
    ct_tensor *xs_[2] = {x, x64}, *ws[2] = {w, w64}, *bs[2] = {b, b64}, *gys[2] = {gy, gy64};
    ct_tensor *ys[2] = {0}, *gxs[2] = {0}, *gws[2] = {0};
    int saved = ct_get_num_threads();
    for (int k = 0; k < 2; k++) {
        CHECK_OK(ct_set_requires_grad(xs_[k], 1));
        CHECK_OK(ct_set_requires_grad(ws[k], 1));
        ys[k] = ct_batch_norm(xs_[k], NULL, NULL, ws[k], bs[k], 1, 0.1, 1e-5);
        CHECK_NN(ys[k]);
        if (!ys[k]) continue;
        CHECK_OK(ct_backward(ys[k], gys[k], 0));
        gxs[k] = ct_grad(xs_[k]);
        gws[k] = ct_grad(ws[k]);
    }
    CHECK_CLOSE(ys[0], ys[1], 1e-6, "batch_norm float32 vs float64 y");
    CHECK_CLOSE(gxs[0], gxs[1], 1e-6, "batch_norm float32 vs float64 gx");
    CHECK_CLOSE(gws[0], gws[1], 1e-6, "batch_norm float32 vs float64 gw");
    ct_set_num_threads(1);
    ct_tensor *y1 = ct_batch_norm(x, NULL, NULL, w, b, 1, 0.1, 1e-5);
    ct_set_num_threads(saved);
    CHECK_CLOSE(y1, ys[0], 0, "batch_norm 1 thread vs many");
    ct_free(y1);
    for (int k = 0; k < 2; k++) {
        ct_free(ys[k]);
        ct_free(xs_[k]);
        ct_free(ws[k]);
        ct_free(bs[k]);
        ct_free(gys[k]);
    }
}

typedef struct {
    int training, use_running; /* inputs array always has 3 slots (NULL when absent) */
    ct_tensor *rm, *rv;
} bn_gc_ctx;

/* inputs: x, weight, bias (weight/bias may be absent: n_inputs 1). */
static ct_tensor *bn_gc_fn(ct_tensor *const *in, void *vctx) {
    bn_gc_ctx *c = vctx;
    return ct_batch_norm(in[0], c->use_running ? c->rm : NULL, c->use_running ? c->rv : NULL,
                         in[1], in[2], c->training, 0.1, 1e-5);
}

TEST(batch_norm_gradcheck) {
    int64_t xs3[3] = {3, 2, 4}, xs2[2] = {5, 3}, c2 = 2, c3 = 3;
    /* training, with weight and bias */
    {
        ct_tensor *in[3] = {ct_randn(xs3, 3, CT_FLOAT64), ct_randn(&c2, 1, CT_FLOAT64),
                            ct_randn(&c2, 1, CT_FLOAT64)};
        for (int i = 0; i < 3; i++) ct_set_requires_grad(in[i], 1);
        ct_tensor *rm = ct_zeros(&c2, 1, CT_FLOAT64), *rv = ct_ones(&c2, 1, CT_FLOAT64);
        bn_gc_ctx ctx = {1, 1, rm, rv};
        GRADCHECK(bn_gc_fn, in, 3, &ctx, "batch_norm train affine");
        ctx.training = 0; /* eval, running stats from the updates above */
        GRADCHECK(bn_gc_fn, in, 3, &ctx, "batch_norm eval affine");
        for (int i = 0; i < 3; i++) ct_free(in[i]);
        ct_free(rm);
        ct_free(rv);
    }
    /* training, no affine parameters, no running stats, 2-D input */
    {
        ct_tensor *in[3] = {ct_randn(xs2, 2, CT_FLOAT64), NULL, NULL};
        ct_set_requires_grad(in[0], 1);
        bn_gc_ctx ctx = {1, 0, NULL, NULL};
        GRADCHECK(bn_gc_fn, in, 1, &ctx, "batch_norm train plain");
        ct_free(in[0]);
    }
    /* weight only requires grad; bias given but frozen */
    {
        ct_tensor *in[3] = {ct_randn(xs2, 2, CT_FLOAT64), ct_randn(&c3, 1, CT_FLOAT64),
                            ct_randn(&c3, 1, CT_FLOAT64)};
        ct_set_requires_grad(in[1], 1);
        bn_gc_ctx ctx = {1, 0, NULL, NULL};
        GRADCHECK(bn_gc_fn, in, 3, &ctx, "batch_norm train weight only");
        for (int i = 0; i < 3; i++) ct_free(in[i]);
    }
}

TEST(batch_norm_errors) {
    int64_t xs[3] = {2, 3, 4}, one[2] = {1, 3}, c = 3, c4 = 4, c33[2] = {3, 3};
    ct_tensor *x = ct_randn(xs, 3, CT_FLOAT32);
    ct_tensor *xi = ct_zeros(xs, 3, CT_INT64);
    ct_tensor *x1 = ct_randn(&c, 1, CT_FLOAT32);
    ct_tensor *x_one = ct_randn(one, 2, CT_FLOAT32);
    ct_tensor *w = ct_ones(&c, 1, CT_FLOAT32), *w4 = ct_ones(&c4, 1, CT_FLOAT32);
    ct_tensor *w64 = ct_ones(&c, 1, CT_FLOAT64), *w2d = ct_ones(c33, 2, CT_FLOAT32);
    ct_tensor *rm = ct_zeros(&c, 1, CT_FLOAT32), *rv = ct_ones(&c, 1, CT_FLOAT32);
    ct_tensor *rm_g = ct_zeros(&c, 1, CT_FLOAT32);
    ct_set_requires_grad(rm_g, 1);

    CHECK_ERR_PTR(ct_batch_norm(NULL, NULL, NULL, NULL, NULL, 1, 0.1, 1e-5), "batch_norm");
    CHECK_ERR_PTR(ct_batch_norm(xi, NULL, NULL, NULL, NULL, 1, 0.1, 1e-5), "int64");
    CHECK_ERR_PTR(ct_batch_norm(x1, NULL, NULL, NULL, NULL, 1, 0.1, 1e-5), "batch_norm: input [3]");
    CHECK_ERR_PTR(ct_batch_norm(x, NULL, NULL, w4, NULL, 1, 0.1, 1e-5), "batch_norm: weight");
    CHECK_ERR_PTR(ct_batch_norm(x, NULL, NULL, w64, NULL, 1, 0.1, 1e-5), "float64");
    CHECK_ERR_PTR(ct_batch_norm(x, NULL, NULL, NULL, w2d, 1, 0.1, 1e-5), "batch_norm: bias");
    CHECK_ERR_PTR(ct_batch_norm(x, w4, rv, NULL, NULL, 1, 0.1, 1e-5), "running_mean");
    CHECK_ERR_PTR(ct_batch_norm(x, rm, w64, NULL, NULL, 1, 0.1, 1e-5), "running_var");
    CHECK_ERR_PTR(ct_batch_norm(x, NULL, NULL, w, NULL, 0, 0.1, 1e-5), "eval");
    CHECK_ERR_PTR(ct_batch_norm(x, rm, NULL, w, NULL, 0, 0.1, 1e-5), "running_var");
    CHECK_ERR_PTR(ct_batch_norm(x_one, NULL, NULL, NULL, NULL, 1, 0.1, 1e-5),
                  "more than 1 value per channel");
    CHECK_ERR_PTR(ct_batch_norm(x, rm_g, rv, NULL, NULL, 1, 0.1, 1e-5), "requires grad");
    CHECK_ERR_PTR(ct_batch_norm(x, rm, rv, NULL, NULL, 1, 0.1, -1.0), "eps");
    CHECK_ERR_PTR(ct_batch_norm(x, rm, rv, NULL, NULL, 1, NAN, 1e-5), "momentum");
    /* A rejected call leaves the running stats alone. */
    float *prm = ct_data(rm);
    CHECK(prm[0] == 0.0f && prm[1] == 0.0f && prm[2] == 0.0f);
    /* One value per channel is fine in eval mode. */
    ct_tensor *ok = ct_batch_norm(x_one, rm, rv, NULL, NULL, 0, 0.1, 1e-5);
    CHECK_NN(ok);
    ct_free(ok);

    /* Backward after the saved input was modified in place. */
    ct_tensor *xv = ct_randn(xs, 3, CT_FLOAT32), *wg = ct_ones(&c, 1, CT_FLOAT32);
    ct_tensor *gy = ct_ones(xs, 3, CT_FLOAT32);
    ct_set_requires_grad(wg, 1);
    ct_tensor *y = ct_batch_norm(xv, NULL, NULL, wg, NULL, 1, 0.1, 1e-5);
    CHECK_NN(y);
    CHECK_OK(ct_add_scalar_(xv, 1.0));
    CHECK_ERR_INT(ct_backward(y, gy, 0), "BatchNormBackward");
    ct_free(y);
    ct_free(xv);
    ct_free(wg);
    ct_free(gy);

    ct_tensor *all[] = {x, xi, x1, x_one, w, w4, w64, w2d, rm, rv, rm_g};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ct_free(all[i]);
}

/* ================================================================== layer_norm */
/* Must mirror LN_CASES in gen_norm_join.py. */
static const struct {
    int nnorm, noncontig;
    double eps;
} LN_CASES[] = {{1, 0, 1e-5}, {2, 1, 1e-5}, {1, 1, 1e-5}, {3, 0, 1e-3}, {1, 1, 1e-5}};

TEST(layer_norm_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("norm_layer_norm");
    if (!fx) return;
    for (int c = 0; c < (int)(sizeof LN_CASES / sizeof LN_CASES[0]); c++) {
        char what[64];
        ct_tensor *x0 = fx_get(fx, c, "x"), *gy = fx_get(fx, c, "gy");
        ct_tensor *w = fx_get(fx, c, "w"), *b = fx_get(fx, c, "b");
        CHECK(x0 && gy);
        if (!x0 || !gy) continue;
        ct_tensor *x = LN_CASES[c].noncontig ? ct_test_noncontig(x0) : ct_retain(x0);
        CHECK_OK(ct_set_requires_grad(x, 1));
        if (w) CHECK_OK(ct_set_requires_grad(w, 1));
        if (b) CHECK_OK(ct_set_requires_grad(b, 1));
        const int nn = LN_CASES[c].nnorm;
        const int64_t *ns = ct_shape(x) + ct_ndim(x) - nn;
        ct_tensor *y = ct_layer_norm(x, ns, nn, w, b, LN_CASES[c].eps);
        CHECK_NN(y);
        if (y) {
            CHECK(strcmp(ct_grad_fn_name(y), "LayerNormBackward") == 0);
            ct_tensor *ry = fx_get(fx, c, "y"), *rgx = fx_get(fx, c, "gx");
            snprintf(what, sizeof what, "layer_norm case %d y", c);
            CHECK_CLOSE(y, ry, 1e-5, what);
            CHECK_OK(ct_backward(y, gy, 0));
            snprintf(what, sizeof what, "layer_norm case %d gx", c);
            CHECK_CLOSE(ct_grad(x), rgx, 1e-5, what);
            if (w) {
                ct_tensor *rgw = fx_get(fx, c, "gw");
                snprintf(what, sizeof what, "layer_norm case %d gw", c);
                CHECK_CLOSE(ct_grad(w), rgw, 1e-5, what);
                ct_free(rgw);
            }
            if (b) {
                ct_tensor *rgb = fx_get(fx, c, "gb");
                snprintf(what, sizeof what, "layer_norm case %d gb", c);
                CHECK_CLOSE(ct_grad(b), rgb, 1e-5, what);
                ct_free(rgb);
            }
            ct_free(ry);
            ct_free(rgx);
            ct_free(y);
        }
        ct_free(x);
        ct_free(x0);
        ct_free(gy);
        ct_free(w);
        ct_free(b);
    }
    ct_fixture_free(fx);
}

TEST(layer_norm_large_threads_match_float64) {
    int64_t xs[3] = {16, 33, 200}, ns = 200;
    ct_tensor *x = ct_randn(xs, 3, CT_FLOAT32), *gy = ct_randn(xs, 3, CT_FLOAT32);
    ct_tensor *w = ct_randn(&ns, 1, CT_FLOAT32), *b = ct_randn(&ns, 1, CT_FLOAT32);
    ct_tensor *x64 = ct_to_dtype(x, CT_FLOAT64), *gy64 = ct_to_dtype(gy, CT_FLOAT64);
    ct_tensor *w64 = ct_to_dtype(w, CT_FLOAT64), *b64 = ct_to_dtype(b, CT_FLOAT64);
    ct_tensor *X[2] = {x, x64}, *W[2] = {w, w64}, *B[2] = {b, b64}, *G[2] = {gy, gy64};
    ct_tensor *Y[2] = {0};
    for (int k = 0; k < 2; k++) {
        CHECK_OK(ct_set_requires_grad(X[k], 1));
        CHECK_OK(ct_set_requires_grad(W[k], 1));
        CHECK_OK(ct_set_requires_grad(B[k], 1));
        Y[k] = ct_layer_norm(X[k], &ns, 1, W[k], B[k], 1e-5);
        CHECK_NN(Y[k]);
        if (Y[k]) CHECK_OK(ct_backward(Y[k], G[k], 0));
    }
    CHECK_CLOSE(Y[0], Y[1], 1e-6, "layer_norm float32 vs float64 y");
    CHECK_CLOSE(ct_grad(x), ct_grad(x64), 1e-6, "layer_norm float32 vs float64 gx");
    CHECK_CLOSE(ct_grad(w), ct_grad(w64), 1e-6, "layer_norm float32 vs float64 gw");
    CHECK_CLOSE(ct_grad(b), ct_grad(b64), 1e-6, "layer_norm float32 vs float64 gb");
    int saved = ct_get_num_threads();
    ct_set_num_threads(1);
    ct_tensor *y1 = ct_layer_norm(x, &ns, 1, w, b, 1e-5);
    /* the backward on one thread, on fresh leaves: gx and the column sums of gw and gb
     * (528 rows: chunks of 64 and a partial one) the same bits as on many */
    ct_tensor *x1 = ct_detach(x), *w1 = ct_detach(w), *b1 = ct_detach(b);
    ct_set_requires_grad(x1, 1), ct_set_requires_grad(w1, 1), ct_set_requires_grad(b1, 1);
    ct_tensor *y1b = ct_layer_norm(x1, &ns, 1, w1, b1, 1e-5);
    CHECK_NN(y1b);
    if (y1b) CHECK_OK(ct_backward(y1b, gy, 0));
    ct_set_num_threads(saved);
    CHECK_CLOSE(y1, Y[0], 0, "layer_norm 1 thread vs many");
    CHECK_CLOSE(ct_grad(x1), ct_grad(x), 0, "layer_norm gx, 1 thread vs many");
    CHECK_CLOSE(ct_grad(w1), ct_grad(w), 0, "layer_norm gw, 1 thread vs many");
    CHECK_CLOSE(ct_grad(b1), ct_grad(b), 0, "layer_norm gb, 1 thread vs many");
    ct_free(y1b), ct_free(x1), ct_free(w1), ct_free(b1);
    ct_free(y1);
    for (int k = 0; k < 2; k++) {
        ct_free(Y[k]);
        ct_free(X[k]);
        ct_free(W[k]);
        ct_free(B[k]);
        ct_free(G[k]);
    }
}

typedef struct {
    int nnorm;
} ln_gc_ctx;

static ct_tensor *ln_gc_fn(ct_tensor *const *in, void *vctx) {
    ln_gc_ctx *c = vctx;
    const int64_t *ns = ct_shape(in[0]) + ct_ndim(in[0]) - c->nnorm;
    return ct_layer_norm(in[0], ns, c->nnorm, in[1], in[2], 1e-5);
}

TEST(layer_norm_gradcheck) {
    int64_t xs[3] = {2, 3, 4}, n1 = 4, n2[2] = {3, 4};
    {
        ct_tensor *in[3] = {ct_randn(xs, 3, CT_FLOAT64), ct_randn(&n1, 1, CT_FLOAT64),
                            ct_randn(&n1, 1, CT_FLOAT64)};
        for (int i = 0; i < 3; i++) ct_set_requires_grad(in[i], 1);
        ln_gc_ctx ctx = {1};
        GRADCHECK(ln_gc_fn, in, 3, &ctx, "layer_norm affine last dim");
        for (int i = 0; i < 3; i++) ct_free(in[i]);
    }
    {
        ct_tensor *in[3] = {ct_randn(xs, 3, CT_FLOAT64), ct_randn(n2, 2, CT_FLOAT64), NULL};
        for (int i = 0; i < 2; i++) ct_set_requires_grad(in[i], 1);
        ln_gc_ctx ctx = {2};
        GRADCHECK(ln_gc_fn, in, 3, &ctx, "layer_norm weight only, 2 dims");
        for (int i = 0; i < 2; i++) ct_free(in[i]);
    }
    {
        ct_tensor *in[3] = {ct_randn(xs, 3, CT_FLOAT64), NULL, NULL};
        ct_set_requires_grad(in[0], 1);
        ln_gc_ctx ctx = {3};
        GRADCHECK(ln_gc_fn, in, 3, &ctx, "layer_norm plain, all dims");
        ct_free(in[0]);
    }
    {
        ct_tensor *in[3] = {ct_randn(xs, 3, CT_FLOAT64), NULL, ct_randn(&n1, 1, CT_FLOAT64)};
        ct_set_requires_grad(in[0], 1);
        ct_set_requires_grad(in[2], 1);
        ln_gc_ctx ctx = {1};
        GRADCHECK(ln_gc_fn, in, 3, &ctx, "layer_norm bias only");
        ct_free(in[0]);
        ct_free(in[2]);
    }
}

TEST(layer_norm_errors) {
    int64_t xs[3] = {2, 3, 4}, n4 = 4, n5 = 5, n34[2] = {3, 4}, big[4] = {1, 2, 3, 4};
    ct_tensor *x = ct_randn(xs, 3, CT_FLOAT32), *xi = ct_zeros(xs, 3, CT_INT64);
    ct_tensor *w4 = ct_ones(&n4, 1, CT_FLOAT32), *w5 = ct_ones(&n5, 1, CT_FLOAT32);
    ct_tensor *w64 = ct_ones(&n4, 1, CT_FLOAT64), *w34 = ct_ones(n34, 2, CT_FLOAT32);
    CHECK_ERR_PTR(ct_layer_norm(NULL, &n4, 1, NULL, NULL, 1e-5), "layer_norm");
    CHECK_ERR_PTR(ct_layer_norm(xi, &n4, 1, NULL, NULL, 1e-5), "layer_norm: input [2, 3, 4]");
    CHECK_ERR_PTR(ct_layer_norm(x, &n4, 0, NULL, NULL, 1e-5), "layer_norm");
    CHECK_ERR_PTR(ct_layer_norm(x, NULL, 1, NULL, NULL, 1e-5), "layer_norm");
    CHECK_ERR_PTR(ct_layer_norm(x, &n5, 1, NULL, NULL, 1e-5), "normalized_shape [5]");
    CHECK_ERR_PTR(ct_layer_norm(x, big, 4, NULL, NULL, 1e-5), "more dims");
    CHECK_ERR_PTR(ct_layer_norm(x, &n4, 1, w5, NULL, 1e-5), "layer_norm: weight");
    CHECK_ERR_PTR(ct_layer_norm(x, &n4, 1, w34, NULL, 1e-5), "layer_norm: weight");
    CHECK_ERR_PTR(ct_layer_norm(x, &n4, 1, NULL, w64, 1e-5), "layer_norm: bias");
    CHECK_ERR_PTR(ct_layer_norm(x, n34, 2, w4, NULL, 1e-5), "[3, 4]");
    CHECK_ERR_PTR(ct_layer_norm(x, &n4, 1, NULL, NULL, -1e-5), "eps");
    ct_tensor *all[] = {x, xi, w4, w5, w64, w34};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ct_free(all[i]);
}

/* Training statistics of data far from zero (mean 3e4, standard deviation ~1) against a
 * two-pass float64 reference: the one-pass shifted sums must not lose the variance. */
TEST(batch_norm_large_mean_statistics) {
    int64_t xs[4] = {3, 2, 7, 5}, c = 2;
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32);
    float *px = ct_data(x);
    for (int64_t i = 0; i < ct_numel(x); i++) px[i] = 30000.0f + px[i];
    ct_tensor *rm = ct_zeros(&c, 1, CT_FLOAT32), *rv = ct_zeros(&c, 1, CT_FLOAT32);
    ct_tensor *y = ct_batch_norm(x, rm, rv, NULL, NULL, 1, 1.0, 1e-5);
    CHECK_NN(y);
    if (!y) return;
    const float *py = ct_data(y), *pv = ct_data(rv);
    for (int ch = 0; ch < 2; ch++) {
        double m = 0, v = 0, M = 3 * 35;
        for (int n = 0; n < 3; n++)
            for (int i = 0; i < 35; i++) m += px[(n * 2 + ch) * 35 + i];
        m /= M;
        for (int n = 0; n < 3; n++)
            for (int i = 0; i < 35; i++) v += (px[(n * 2 + ch) * 35 + i] - m) * (px[(n * 2 + ch) * 35 + i] - m);
        CHECK_MSG(fabs(pv[ch] - v / (M - 1)) <= 1e-4 * v / (M - 1),
                  "channel %d running_var %g, want %g", ch, pv[ch], v / (M - 1));
        double is = 1.0 / sqrt(v / M + 1e-5);
        for (int n = 0; n < 3; n++)
            for (int i = 0; i < 35; i++) {
                int64_t k = (n * 2 + ch) * 35 + i;
                CHECK_MSG(fabs(py[k] - (px[k] - m) * is) <= 1e-4, "y[%lld] %g, want %g",
                          (long long)k, py[k], (px[k] - m) * is);
            }
    }
    ct_free(y);
    ct_free(rm);
    ct_free(rv);
    ct_free(x);
}
