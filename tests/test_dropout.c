/* dropout: tested statistically (not against torch's RNG): the zeroed fraction is about
 * p, kept values are scaled by 1/(1-p), the gradient is the same mask, the mask depends
 * only on the seed (not on the thread count); eval/p=0 are the identity, p=1 zeros. */
#include "test.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static double *values(const ct_tensor *t) {
    ct_tensor *d = ct_to_dtype(t, CT_FLOAT64);
    int64_t n = ct_numel(t);
    double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
    if (d) ct_copy_to_buffer(d, v, sizeof(double) * (size_t)n);
    ct_free(d);
    return v;
}

TEST(dropout_statistics_and_scaling) {
    const double ps[3] = {0.1, 0.5, 0.8};
    int64_t shape[2] = {200, 250}; /* 50000 elements */
    for (int k = 0; k < 3; k++) {
        const double p = ps[k];
        ct_tensor *x = ct_full(shape, 2, 1.5, CT_FLOAT32);
        ct_set_requires_grad(x, 1);
        ct_tensor *y = ct_dropout(x, p, 1);
        CHECK_NN(y);
        if (!y) {
            ct_free(x);
            continue;
        }
        CHECK(strcmp(ct_grad_fn_name(y), "DropoutBackward") == 0);
        const int64_t n = ct_numel(y);
        double *v = values(y);
        int64_t zeros = 0, bad = 0;
        const double kept = 1.5 / (1.0 - p);
        for (int64_t i = 0; i < n; i++) {
            if (v[i] == 0.0) zeros++;
            else if (fabs(v[i] - kept) > 1e-6 * kept) bad++;
        }
        /* Binomial(n, p): 6 standard deviations. */
        const double frac = (double)zeros / (double)n;
        const double sd = sqrt(p * (1 - p) / (double)n);
        CHECK_MSG(fabs(frac - p) < 6 * sd, "dropout p=%g: zeroed fraction %g", p, frac);
        CHECK_MSG(bad == 0, "dropout p=%g: %lld kept values not scaled by 1/(1-p)", p,
                  (long long)bad);
        /* Gradient: upstream * mask, where mask = y / x. */
        ct_tensor *gy = ct_randn(shape, 2, CT_FLOAT32);
        CHECK_OK(ct_backward(y, gy, 0));
        double *g = values(ct_grad(x)), *u = values(gy);
        int64_t gbad = 0;
        for (int64_t i = 0; i < n; i++) {
            const double want = v[i] == 0.0 ? 0.0 : u[i] / (1.0 - p);
            if (fabs(g[i] - want) > 1e-6 * (fabs(want) + 1e-6)) gbad++;
        }
        CHECK_MSG(gbad == 0, "dropout p=%g: %lld gradient entries differ from gy*mask", p,
                  (long long)gbad);
        free(v);
        free(g);
        free(u);
        ct_free(gy);
        ct_free(y);
        ct_free(x);
    }
}

/* Mean is preserved in expectation: E[dropout(x)] = x. */
TEST(dropout_float64_mean_preserved) {
    int64_t n = 100000;
    ct_tensor *x = ct_ones(&n, 1, CT_FLOAT64);
    ct_tensor *y = ct_dropout(x, 0.3, 1);
    CHECK_NN(y);
    if (y) {
        double *v = values(y), s = 0;
        for (int64_t i = 0; i < n; i++) s += v[i];
        const double mean = s / (double)n;
        /* sd of one element: sqrt(p/(1-p)) ~ 0.65; of the mean ~ 0.0021 */
        CHECK_MSG(fabs(mean - 1.0) < 0.013, "dropout mean %g, expected about 1", mean);
        free(v);
    }
    ct_free(y);
    ct_free(x);
}

TEST(dropout_same_seed_same_mask_any_threads) {
    int64_t shape[3] = {7, 33, 129};
    ct_tensor *x = ct_randn(shape, 3, CT_FLOAT32);
    ct_tensor *xt = ct_test_noncontig(x); /* same values, strided */
    const int saved = ct_get_num_threads();
    const int counts[3] = {1, 3, 0};
    ct_tensor *ys[3] = {0};
    for (int k = 0; k < 3; k++) {
        ct_set_num_threads(counts[k]);
        ct_manual_seed(99);
        ys[k] = ct_dropout(k == 2 ? xt : x, 0.4, 1);
        CHECK_NN(ys[k]);
    }
    ct_set_num_threads(saved);
    CHECK_CLOSE(ys[1], ys[0], 0, "dropout mask with 3 threads vs 1");
    CHECK_CLOSE(ys[2], ys[0], 0, "dropout mask with all threads (strided input) vs 1");
    /* A different seed gives a different mask. */
    ct_manual_seed(100);
    ct_tensor *y4 = ct_dropout(x, 0.4, 1);
    ct_tensor *d = ct_sub(y4, ys[0]);
    ct_tensor *a = ct_abs(d);
    ct_tensor *m = ct_max_all(a);
    CHECK(m && ct_item(m) > 0);
    ct_free(m);
    ct_free(a);
    ct_free(d);
    ct_free(y4);
    for (int k = 0; k < 3; k++) ct_free(ys[k]);
    ct_free(xt);
    ct_free(x);
}

TEST(dropout_identity_cases_and_p1) {
    int64_t shape[2] = {4, 5}, zero[2] = {0, 3};
    ct_tensor *x = ct_randn(shape, 2, CT_FLOAT32);
    ct_set_requires_grad(x, 1);
    ct_tensor *gy = ct_randn(shape, 2, CT_FLOAT32);
    /* eval and p == 0: the same values, and the gradient passes through unchanged */
    const struct {
        double p;
        int training;
    } id[3] = {{0.5, 0}, {0.0, 1}, {1.0, 0}};
    for (int k = 0; k < 3; k++) {
        ct_tensor *y = ct_dropout(x, id[k].p, id[k].training);
        CHECK_NN(y);
        if (!y) continue;
        CHECK_CLOSE(y, x, 0, "dropout identity values");
        ct_zero_grad(x);
        /* y is differentiable: route through an op so backward has a graph. */
        ct_tensor *z = ct_mul_scalar(y, 2.0);
        CHECK_OK(ct_backward(z, gy, 0));
        ct_tensor *g2 = ct_mul_scalar(gy, 2.0);
        CHECK_CLOSE(ct_grad(x), g2, 0, "dropout identity gradient");
        ct_free(g2);
        ct_free(z);
        ct_free(y);
    }
    /* p == 1 in training: zeros, zero gradient */
    ct_zero_grad(x);
    ct_tensor *y1 = ct_dropout(x, 1.0, 1);
    CHECK_NN(y1);
    if (y1) {
        ct_tensor *zeros = ct_zeros(shape, 2, CT_FLOAT32);
        CHECK_CLOSE(y1, zeros, 0, "dropout p=1 output");
        CHECK_OK(ct_backward(y1, gy, 0));
        CHECK_CLOSE(ct_grad(x), zeros, 0, "dropout p=1 gradient");
        ct_free(zeros);
        ct_free(y1);
    }
    /* empty input */
    ct_tensor *e = ct_zeros(zero, 2, CT_FLOAT32);
    ct_tensor *ye = ct_dropout(e, 0.5, 1);
    CHECK_NN(ye);
    if (ye) CHECK(ct_numel(ye) == 0 && ct_ndim(ye) == 2);
    ct_free(ye);
    ct_free(e);
    ct_free(gy);
    ct_free(x);
}

static ct_tensor *dropout_gc_fn(ct_tensor *const *in, void *ctx) {
    (void)ctx;
    ct_manual_seed(7); /* the same mask on every evaluation */
    return ct_dropout(in[0], 0.35, 1);
}

TEST(dropout_gradcheck) {
    int64_t shape[3] = {3, 4, 5};
    ct_tensor *x = ct_randn(shape, 3, CT_FLOAT64);
    ct_set_requires_grad(x, 1);
    GRADCHECK(dropout_gc_fn, &x, 1, NULL, "dropout p=0.35");
    ct_free(x);
}

TEST(dropout_errors) {
    int64_t shape[2] = {3, 4};
    ct_tensor *x = ct_randn(shape, 2, CT_FLOAT32), *xi = ct_zeros(shape, 2, CT_INT64);
    CHECK_ERR_PTR(ct_dropout(NULL, 0.5, 1), "dropout");
    CHECK_ERR_PTR(ct_dropout(x, -0.1, 1), "dropout: probability");
    CHECK_ERR_PTR(ct_dropout(x, 1.5, 1), "dropout: probability");
    CHECK_ERR_PTR(ct_dropout(x, NAN, 1), "dropout: probability");
    CHECK_ERR_PTR(ct_dropout(x, 2.0, 0), "dropout: probability"); /* checked in eval too */
    CHECK_ERR_PTR(ct_dropout(xi, 0.5, 1), "dropout: input [3, 4]");
    ct_free(x);
    ct_free(xi);
}
