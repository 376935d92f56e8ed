/* nll_loss, cross_entropy, mse_loss: forward and backward against PyTorch (fixtures
 * loss_nll / loss_cross_entropy / loss_mse from gen_softmax_loss.py), float64 gradcheck,
 * fused vs composed cross entropy, ignore_index corner cases and error paths. */
#include "test.h"

#include <stdlib.h>
#include <string.h>

/* src/ops/loss.c testing hook: non-zero makes cross_entropy use its composed path. */
extern int ct__cross_entropy_unfused;

static const ct_reduction REDS[3] = {CT_REDUCTION_NONE, CT_REDUCTION_MEAN, CT_REDUCTION_SUM};
static const char *RED_NAMES[3] = {"none", "mean", "sum"};

static ct_tensor *fx_get(ct_fixture *fx, const char *cs, const char *k) {
    char key[96];
    snprintf(key, sizeof key, "%s.%s", cs, k);
    return ct_fixture_get(fx, key);
}

static double fx_num(ct_fixture *fx, const char *cs, const char *k) {
    ct_tensor *t = fx_get(fx, cs, k);
    double v = t ? ct_item(t) : 0;
    ct_free(t);
    return v;
}

static int fx_count(ct_fixture *fx, const char *k) {
    ct_tensor *t = ct_fixture_get(fx, k);
    int v = t ? (int)ct_item(t) : 0;
    ct_free(t);
    return v;
}

/* Input x from the fixture, non-contiguous when the case says so, requiring grad. */
static ct_tensor *fx_input(ct_fixture *fx, const char *cs, const char *k) {
    ct_tensor *x = fx_get(fx, cs, k);
    if (x && fx_num(fx, cs, "noncontig") != 0) {
        ct_tensor *v = ct_test_noncontig(x);
        ct_free(x);
        x = v;
        CHECK(ct_ndim(x) < 2 || !ct_is_contiguous(x));
    }
    if (x) ct_set_requires_grad(x, 1);
    return x;
}

/* Runs nll_loss (ce=0) or cross_entropy (ce=1) over every case and reduction. */
static void run_class_loss_fixture(const char *file, const char *prefix, const char *count_key,
                                   int ce) {
    ct_fixture *fx = ct_fixture_load(file);
    if (!fx) return;
    int n = fx_count(fx, count_key);
    for (int i = 0; i < n; i++) {
        char cs[16];
        snprintf(cs, sizeof cs, "%s%d", prefix, i);
        ct_tensor *x = fx_input(fx, cs, "x");
        ct_tensor *t = fx_get(fx, cs, "t");
        int64_t ig = (int64_t)fx_num(fx, cs, "ignore");
        double eps = ce ? fx_num(fx, cs, "eps") : 0;
        if (!x || !t) break;
        for (int r = 0; r < 3; r++) {
            char k[32], what[96];
            snprintf(what, sizeof what, "%s %s reduction %s%s", ce ? "cross_entropy" : "nll_loss",
                     cs, RED_NAMES[r], ce && ct__cross_entropy_unfused ? " (composed)" : "");
            ct_tensor *y = ce ? ct_cross_entropy(x, t, REDS[r], eps, ig)
                              : ct_nll_loss(x, t, REDS[r], ig);
            CHECK_NN(y);
            snprintf(k, sizeof k, "%s_y", RED_NAMES[r]);
            ct_tensor *wy = fx_get(fx, cs, k);
            CHECK_CLOSE(y, wy, 1e-5, what);
            snprintf(k, sizeof k, "%s_gy", RED_NAMES[r]);
            ct_tensor *gy = fx_get(fx, cs, k);
            ct_zero_grad(x);
            if (y) CHECK_OK(ct_backward(y, gy, 0));
            snprintf(k, sizeof k, "%s_gx", RED_NAMES[r]);
            ct_tensor *wg = fx_get(fx, cs, k);
            CHECK_CLOSE(ct_grad(x), wg, 1e-5, what);
            ct_free(y);
            ct_free(wy);
            ct_free(gy);
            ct_free(wg);
        }
        ct_free(x);
        ct_free(t);
    }
    ct_fixture_free(fx);
}

TEST(loss_nll_forward_backward_vs_torch) {
    run_class_loss_fixture("loss_nll", "n", "n_nll", 0);
}

TEST(loss_cross_entropy_forward_backward_vs_torch) {
    run_class_loss_fixture("loss_cross_entropy", "c", "n_ce", 1);
}

TEST(loss_cross_entropy_composed_vs_torch) {
    ct__cross_entropy_unfused = 1;
    run_class_loss_fixture("loss_cross_entropy", "c", "n_ce", 1);
    ct__cross_entropy_unfused = 0;
}

TEST(loss_mse_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("loss_mse");
    if (!fx) return;
    int n = fx_count(fx, "n_mse");
    for (int i = 0; i < n; i++) {
        char cs[16];
        snprintf(cs, sizeof cs, "m%d", i);
        ct_tensor *x = fx_input(fx, cs, "x");
        ct_tensor *t = fx_input(fx, cs, "t");
        if (!x || !t) break;
        for (int r = 0; r < 3; r++) {
            char k[32], what[64];
            snprintf(what, sizeof what, "mse_loss %s reduction %s", cs, RED_NAMES[r]);
            ct_tensor *y = ct_mse_loss(x, t, REDS[r]);
            CHECK_NN(y);
            snprintf(k, sizeof k, "%s_y", RED_NAMES[r]);
            ct_tensor *wy = fx_get(fx, cs, k);
            CHECK_CLOSE(y, wy, 1e-5, what);
            snprintf(k, sizeof k, "%s_gy", RED_NAMES[r]);
            ct_tensor *gy = fx_get(fx, cs, k);
            ct_zero_grad(x);
            ct_zero_grad(t);
            if (y) CHECK_OK(ct_backward(y, gy, 0));
            snprintf(k, sizeof k, "%s_gx", RED_NAMES[r]);
            ct_tensor *wgx = fx_get(fx, cs, k);
            snprintf(k, sizeof k, "%s_gt", RED_NAMES[r]);
            ct_tensor *wgt = fx_get(fx, cs, k);
            CHECK_CLOSE(ct_grad(x), wgx, 1e-5, what);
            CHECK_CLOSE(ct_grad(t), wgt, 1e-5, what);
            ct_free(y);
            ct_free(wy);
            ct_free(gy);
            ct_free(wgx);
            ct_free(wgt);
        }
        ct_free(x);
        ct_free(t);
    }
    ct_fixture_free(fx);
}

/* ---------------------------------------------------------------- gradcheck */
typedef struct {
    const ct_tensor *target;
    ct_reduction red;
    int64_t ignore;
    double eps;
    int ce;
} cls_ctx;

static ct_tensor *cls_fn(ct_tensor *const *in, void *vctx) {
    const cls_ctx *c = vctx;
    return c->ce ? ct_cross_entropy(in[0], c->target, c->red, c->eps, c->ignore)
                 : ct_nll_loss(in[0], c->target, c->red, c->ignore);
}

/* Random int64 targets in [0, C), with every `every`-th one set to ignore. */
static ct_tensor *rand_target(const int64_t *shape, int nd, int64_t C, int64_t ignore,
                              int every) {
    ct_tensor *u = ct_rand(shape, nd, CT_FLOAT64);
    int64_t n = ct_numel(u);
    int64_t *v = malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
    const double *p = ct_data(u);
    for (int64_t i = 0; i < n; i++) {
        v[i] = (int64_t)(p[i] * (double)C);
        if (v[i] >= C) v[i] = C - 1;
        if (every && i % every == every - 1) v[i] = ignore;
    }
    ct_tensor *t = ct_from_data(v, shape, nd, CT_INT64);
    free(v);
    ct_free(u);
    return t;
}

TEST(loss_class_gradcheck_float64) {
    int64_t s2[2] = {5, 4}, t2[1] = {5};
    int64_t s4[4] = {2, 3, 2, 2}, t4[3] = {2, 2, 2};
    int64_t s1[1] = {6};
    for (int ce = 0; ce < 2; ce++) {
        for (int composed = 0; composed < (ce ? 2 : 1); composed++) {
            ct__cross_entropy_unfused = composed;
            for (int r = 0; r < 3; r++) {
                for (int shp = 0; shp < 3; shp++) {
                    const int64_t *xs = shp == 0 ? s2 : shp == 1 ? s4 : s1;
                    int xnd = shp == 0 ? 2 : shp == 1 ? 4 : 1;
                    const int64_t *ts = shp == 0 ? t2 : shp == 1 ? t4 : NULL;
                    int tnd = xnd - 1;
                    int64_t C = shp == 2 ? 6 : xs[1];
                    int64_t ignore = shp == 1 ? 1 : -100;
                    ct_tensor *x = ct_randn(xs, xnd, CT_FLOAT64);
                    ct_tensor *t = rand_target(ts, tnd, C, ignore, shp == 2 ? 0 : 3);
                    ct_set_requires_grad(x, 1);
                    cls_ctx c = {t, REDS[r], ignore, ce ? 0.15 : 0.0, ce};
                    char what[96];
                    snprintf(what, sizeof what, "%s%s %s shape %d", ce ? "cross_entropy" : "nll_loss",
                             composed ? " (composed)" : "", RED_NAMES[r], shp);
                    GRADCHECK(cls_fn, &x, 1, &c, what);
                    ct_free(x);
                    ct_free(t);
                }
            }
        }
    }
    ct__cross_entropy_unfused = 0;
}

static ct_tensor *mse_fn(ct_tensor *const *in, void *vctx) {
    return ct_mse_loss(in[0], in[1], *(ct_reduction *)vctx);
}

TEST(loss_mse_gradcheck_float64) {
    int64_t sh[3] = {2, 3, 4};
    for (int r = 0; r < 3; r++) {
        ct_tensor *in[2] = {ct_randn(sh, 3, CT_FLOAT64), ct_randn(sh, 3, CT_FLOAT64)};
        ct_set_requires_grad(in[0], 1);
        ct_set_requires_grad(in[1], 1);
        ct_reduction red = REDS[r];
        GRADCHECK(mse_fn, in, 2, &red, RED_NAMES[r]);
        ct_free(in[0]);
        ct_free(in[1]);
    }
}

/* ---------------------------------------------------------- corner cases */
TEST(loss_all_targets_ignored) {
    int64_t sh[2] = {3, 4}, ts = 3;
    int64_t tv[3] = {-100, -100, -100};
    ct_tensor *t = ct_from_data(tv, &ts, 1, CT_INT64);
    for (int which = 0; which < 3; which++) {
        ct__cross_entropy_unfused = which == 2;
        ct_tensor *x = ct_randn(sh, 2, CT_FLOAT32);
        ct_set_requires_grad(x, 1);
        /* mean over zero targets: NaN like PyTorch, with a zero gradient */
        ct_tensor *y = which == 0 ? ct_nll_loss(x, t, CT_REDUCTION_MEAN, -100)
                                  : ct_cross_entropy(x, t, CT_REDUCTION_MEAN, 0.1, -100);
        CHECK_NN(y);
        if (y) {
            CHECK(isnan(ct_item(y)));
            CHECK_OK(ct_backward(y, NULL, 0));
            ct_tensor *g = ct_grad(x);
            CHECK_NN(g);
            for (int i = 0; g && i < 12; i++) CHECK(((const float *)ct_data(g))[i] == 0.0f);
        }
        ct_free(y);
        y = which == 0 ? ct_nll_loss(x, t, CT_REDUCTION_SUM, -100)
                       : ct_cross_entropy(x, t, CT_REDUCTION_SUM, 0.1, -100);
        CHECK(y && ct_item(y) == 0.0);
        ct_free(y);
        ct_free(x);
    }
    ct__cross_entropy_unfused = 0;
    ct_free(t);
}

TEST(loss_cross_entropy_large_fused_matches_composed) {
    int64_t sh[2] = {512, 1000}, ts = 512;
    ct_tensor *x0 = ct_randn(sh, 2, CT_FLOAT32);
    ct_tensor *x = ct_mul_scalar(x0, 4.0);
    ct_free(x0);
    ct_tensor *t = rand_target(&ts, 1, 1000, -100, 7);
    ct_tensor *y[2] = {NULL, NULL}, *g[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        ct__cross_entropy_unfused = k;
        ct_tensor *xl = ct_detach(x);
        ct_set_requires_grad(xl, 1);
        y[k] = ct_cross_entropy(xl, t, CT_REDUCTION_MEAN, 0.1, -100);
        CHECK_NN(y[k]);
        if (y[k]) CHECK_OK(ct_backward(y[k], NULL, 0));
        g[k] = ct_grad(xl) ? ct_retain(ct_grad(xl)) : NULL;
        ct_free(xl);
    }
    ct__cross_entropy_unfused = 0;
    CHECK_CLOSE(y[0], y[1], 1e-6, "cross_entropy fused vs composed loss");
    CHECK_CLOSE(g[0], g[1], 1e-6, "cross_entropy fused vs composed grad");
    /* bit-identical with a single thread */
    int nt = ct_get_num_threads();
    ct_set_num_threads(1);
    ct_tensor *y1 = ct_cross_entropy(x, t, CT_REDUCTION_MEAN, 0.1, -100);
    ct_set_num_threads(nt);
    CHECK(y1 && y[0] && ct_item(y1) == ct_item(y[0]));
    ct_free(y1);
    for (int k = 0; k < 2; k++) {
        ct_free(y[k]);
        ct_free(g[k]);
    }
    ct_free(x);
    ct_free(t);
}

TEST(loss_no_grad_and_grad_fn_names) {
    int64_t sh[2] = {4, 3}, ts = 4;
    ct_tensor *x = ct_randn(sh, 2, CT_FLOAT32);
    ct_tensor *t = rand_target(&ts, 1, 3, -100, 0);
    ct_set_requires_grad(x, 1);
    ct_tensor *y = ct_cross_entropy(x, t, CT_REDUCTION_MEAN, 0.0, -100);
    CHECK(y && ct_grad_fn_name(y) && strcmp(ct_grad_fn_name(y), "CrossEntropyLossBackward") == 0);
    ct_free(y);
    y = ct_nll_loss(x, t, CT_REDUCTION_SUM, -100);
    CHECK(y && ct_grad_fn_name(y) && strcmp(ct_grad_fn_name(y), "NllLossBackward") == 0);
    ct_free(y);
    int prev = ct_set_grad_enabled(0);
    y = ct_cross_entropy(x, t, CT_REDUCTION_NONE, 0.2, -100);
    CHECK(y && !ct_requires_grad(y) && ct_grad_fn_name(y) == NULL);
    ct_free(y);
    ct_set_grad_enabled(prev);
    ct_free(x);
    ct_free(t);
}

/* ------------------------------------------------------------------ errors */
TEST(loss_errors) {
    int64_t sh[2] = {4, 3}, ts = 4;
    ct_tensor *x = ct_randn(sh, 2, CT_FLOAT32);
    ct_tensor *t = rand_target(&ts, 1, 3, -100, 0);

    /* target not int64 */
    ct_tensor *tf = ct_to_dtype(t, CT_FLOAT32);
    CHECK_ERR_PTR(ct_nll_loss(x, tf, CT_REDUCTION_MEAN, -100), "nll_loss");
    CHECK_ERR_PTR(ct_cross_entropy(x, tf, CT_REDUCTION_MEAN, 0.0, -100), "int64");
    ct_tensor *t32 = ct_to_dtype(t, CT_INT32);
    CHECK_ERR_PTR(ct_cross_entropy(x, t32, CT_REDUCTION_SUM, 0.0, -100), "cross_entropy");
    ct_free(t32);
    ct_free(tf);

    /* target out of range: >= C, negative non-ignored; error, no crash */
    int64_t bad1[4] = {0, 1, 3, 2}, bad2[4] = {0, -1, 2, 2};
    ct_tensor *tb1 = ct_from_data(bad1, &ts, 1, CT_INT64);
    ct_tensor *tb2 = ct_from_data(bad2, &ts, 1, CT_INT64);
    for (int r = 0; r < 3; r++) {
        CHECK_ERR_PTR(ct_nll_loss(x, tb1, REDS[r], -100), "out of bounds");
        CHECK_ERR_PTR(ct_nll_loss(x, tb2, REDS[r], -100), "nll_loss");
        CHECK_ERR_PTR(ct_cross_entropy(x, tb1, REDS[r], 0.1, -100), "cross_entropy");
        CHECK_ERR_PTR(ct_cross_entropy(x, tb2, REDS[r], 0.0, -100), "out of bounds");
        ct__cross_entropy_unfused = 1;
        CHECK_ERR_PTR(ct_cross_entropy(x, tb1, REDS[r], 0.1, -100), "out of bounds");
        ct__cross_entropy_unfused = 0;
    }
    /* ... but -1 is fine when it is the ignore_index */
    ct_tensor *ok = ct_nll_loss(x, tb2, CT_REDUCTION_MEAN, -1);
    CHECK_NN(ok);
    ct_free(ok);
    ct_free(tb1);
    ct_free(tb2);

    /* shape mismatches */
    int64_t t5 = 5;
    ct_tensor *tw = ct_zeros(&t5, 1, CT_INT64);
    CHECK_ERR_PTR(ct_nll_loss(x, tw, CT_REDUCTION_MEAN, -100), "[5]");
    CHECK_ERR_PTR(ct_cross_entropy(x, tw, CT_REDUCTION_MEAN, 0.0, -100), "cross_entropy");
    ct_free(tw);
    int64_t t2sh[2] = {4, 1};
    ct_tensor *t2d = ct_zeros(t2sh, 2, CT_INT64);
    CHECK_ERR_PTR(ct_nll_loss(x, t2d, CT_REDUCTION_MEAN, -100), "[4, 3]");
    ct_free(t2d);
    int64_t x4s[4] = {2, 3, 4, 5}, t4bad[3] = {2, 5, 4}, t4ok[3] = {2, 4, 5};
    ct_tensor *x4 = ct_randn(x4s, 4, CT_FLOAT32);
    ct_tensor *tk = ct_zeros(t4bad, 3, CT_INT64);
    CHECK_ERR_PTR(ct_cross_entropy(x4, tk, CT_REDUCTION_NONE, 0.0, -100), "[2, 4, 5]");
    ct_free(tk);
    tk = ct_zeros(t4ok, 3, CT_INT64);
    ct_tensor *yk = ct_cross_entropy(x4, tk, CT_REDUCTION_NONE, 0.0, -100);
    CHECK(yk && ct_ndim(yk) == 3 && ct_size(yk, 1) == 4 && ct_size(yk, 2) == 5);
    ct_free(yk);
    CHECK_ERR_PTR(ct_nll_loss(x4, t, CT_REDUCTION_MEAN, -100), "nll_loss");
    ct_free(tk);
    ct_free(x4);
    ct_tensor *s = ct_scalar(1.0, CT_FLOAT32), *st = ct_scalar(0, CT_INT64);
    CHECK_ERR_PTR(ct_nll_loss(s, st, CT_REDUCTION_MEAN, -100), "0-d");
    ct_free(s);
    ct_free(st);

    /* input not floating, bad reduction, bad label_smoothing, NULLs */
    ct_tensor *xi = ct_to_dtype(x, CT_INT64);
    CHECK_ERR_PTR(ct_nll_loss(xi, t, CT_REDUCTION_MEAN, -100), "nll_loss");
    ct_free(xi);
    CHECK_ERR_PTR(ct_nll_loss(x, t, (ct_reduction)7, -100), "reduction");
    CHECK_ERR_PTR(ct_cross_entropy(x, t, CT_REDUCTION_MEAN, 1.5, -100), "label_smoothing");
    CHECK_ERR_PTR(ct_cross_entropy(x, t, CT_REDUCTION_MEAN, -0.1, -100), "cross_entropy");
    CHECK_ERR_PTR(ct_cross_entropy(x, t, CT_REDUCTION_MEAN, NAN, -100), "label_smoothing");
    CHECK_ERR_PTR(ct_nll_loss(NULL, t, CT_REDUCTION_MEAN, -100), "nll_loss");
    CHECK_ERR_PTR(ct_cross_entropy(x, NULL, CT_REDUCTION_MEAN, 0.0, -100), "cross_entropy");

    /* mse_loss */
    int64_t m5 = 5, m34[2] = {3, 4};
    ct_tensor *a = ct_randn(m34, 2, CT_FLOAT32), *b = ct_randn(&m5, 1, CT_FLOAT32);
    CHECK_ERR_PTR(ct_mse_loss(a, b, CT_REDUCTION_MEAN), "mse_loss");
    CHECK_ERR_PTR(ct_mse_loss(a, b, CT_REDUCTION_SUM), "[3, 4]");
    ct_tensor *a64 = ct_to_dtype(a, CT_FLOAT64);
    CHECK_ERR_PTR(ct_mse_loss(a, a64, CT_REDUCTION_MEAN), "mse_loss");
    ct_tensor *ai = ct_to_dtype(a, CT_INT64);
    CHECK_ERR_PTR(ct_mse_loss(ai, ai, CT_REDUCTION_MEAN), "dtype");
    CHECK_ERR_PTR(ct_mse_loss(a, a, (ct_reduction)-1), "mse_loss");
    CHECK_ERR_PTR(ct_mse_loss(NULL, a, CT_REDUCTION_MEAN), "mse_loss");
    ct_free(ai);
    ct_free(a64);
    ct_free(a);
    ct_free(b);

    ct_free(x);
    ct_free(t);
}

/* The options form: zero fields are PyTorch's defaults and give the positional results. */
TEST(loss_options_structs) {
    int64_t sh[2] = {6, 4}, n = 6, t[6] = {0, 3, -100, 1, 2, 0};
    ct_tensor *x = ct_randn(sh, 2, CT_FLOAT64), *y = ct_from_data(t, &n, 1, CT_INT64);
    ct_scope *s = ct_scope_push();
    CHECK_CLOSE(ct_cross_entropy_opt(x, y, NULL), ct_cross_entropy(x, y, CT_REDUCTION_MEAN, 0, -100),
                0, "cross_entropy defaults");
    CHECK_CLOSE(ct_cross_entropy_opt(x, y, &(ct_loss_opts){.reduction = "sum", .label_smoothing = 0.1}),
                ct_cross_entropy(x, y, CT_REDUCTION_SUM, 0.1, -100), 0, "cross_entropy sum, smoothing");
    ct_tensor *y0 = ct_clamp(y, 0, 3); /* no -100: class 0 is the one ignored */
    CHECK_CLOSE(ct_cross_entropy_opt(x, y0, &(ct_loss_opts){.reduction = "none", .has_ignore_index = 1}),
                ct_cross_entropy(x, y0, CT_REDUCTION_NONE, 0, 0), 0,
                "cross_entropy none, ignore_index 0");
    ct_tensor *lp = ct_log_softmax(x, 1);
    CHECK_CLOSE(ct_nll_loss_opt(lp, y, NULL), ct_nll_loss(lp, y, CT_REDUCTION_MEAN, -100), 0,
                "nll_loss defaults");
    CHECK_ERR_PTR(ct_cross_entropy_opt(x, y, &(ct_loss_opts){.reduction = "avg"}), "\"avg\" is not one of");
    CHECK_ERR_PTR(ct_nll_loss_opt(lp, y, &(ct_loss_opts){.label_smoothing = 0.1}), "cross_entropy option");
    ct_scope_pop(s);
    ct_free(x);
    ct_free(y);
}
