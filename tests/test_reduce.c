/* sum / mean / max / argmax against PyTorch, gradcheck and errors. */
#include "test.h"

#include <string.h>

static void check_red(ct_fixture *fx, const char *name, ct_tensor *(*fn)(const ct_tensor *)) {
    char key[96];
    snprintf(key, sizeof key, "%s.x0", name);
    ct_tensor *x = ct_fixture_get(fx, key);
    if (!x) return;
    ct_set_requires_grad(x, 1);
    ct_tensor *y = fn(x);
    CHECK_NN(y);
    snprintf(key, sizeof key, "%s.y", name);
    ct_tensor *want = ct_fixture_get(fx, key);
    CHECK_CLOSE(y, want, 1e-6, name);
    snprintf(key, sizeof key, "%s.gy", name);
    ct_tensor *gy = ct_fixture_get(fx, key);
    if (y) CHECK_OK(ct_backward(y, gy, 0));
    snprintf(key, sizeof key, "%s.gx0", name);
    ct_tensor *gw = ct_fixture_get(fx, key);
    CHECK_CLOSE(ct_grad(x), gw, 1e-6, name);
    ct_free(x);
    ct_free(y);
    ct_free(want);
    ct_free(gy);
    ct_free(gw);
}

static ct_tensor *sum_all(const ct_tensor *x) { return ct_sum(x, NULL, 0, 0); }
static ct_tensor *sum_1(const ct_tensor *x) { int d = 1; return ct_sum(x, &d, 1, 0); }
static ct_tensor *sum_02k(const ct_tensor *x) { int d[2] = {0, 2}; return ct_sum(x, d, 2, 1); }
static ct_tensor *mean_all(const ct_tensor *x) { return ct_mean(x, NULL, 0, 0); }
static ct_tensor *mean_m1(const ct_tensor *x) { int d = -1; return ct_mean(x, &d, 1, 0); }
static ct_tensor *mean_01k(const ct_tensor *x) { int d[2] = {0, 1}; return ct_mean(x, d, 2, 1); }
static ct_tensor *max_1(const ct_tensor *x) { return ct_max(x, 1, 0, NULL); }
static ct_tensor *max_2k(const ct_tensor *x) { return ct_max(x, 2, 1, NULL); }
static ct_tensor *max_all(const ct_tensor *x) { return ct_max_all(x); }

static const struct {
    const char *name;
    ct_tensor *(*fn)(const ct_tensor *);
} RED[] = {{"sum_all", sum_all},   {"sum_1", sum_1},       {"sum_02_keep", sum_02k},
           {"mean_all", mean_all}, {"mean_m1", mean_m1},   {"mean_01_keep", mean_01k},
           {"max_1", max_1},       {"max_2_keep", max_2k}, {"max_all", max_all}};

TEST(reduce_vs_torch) {
    ct_fixture *fx = ct_fixture_load("reduce");
    if (!fx) return;
    for (size_t i = 0; i < sizeof RED / sizeof *RED; i++) check_red(fx, RED[i].name, RED[i].fn);
    ct_tensor *x = ct_fixture_get(fx, "sum_all.x0");
    ct_tensor *xn = ct_test_noncontig(x);
    ct_tensor *a1 = ct_argmax(xn, 1, 0), *w1 = ct_fixture_get(fx, "argmax_1");
    ct_tensor *a0 = ct_argmax(x, 0, 1), *w0 = ct_fixture_get(fx, "argmax_0_keep");
    CHECK(a1 && w1 && ct_numel(a1) == ct_numel(w1) &&
          memcmp(ct_data(a1), ct_data(w1), 8 * (size_t)ct_numel(a1)) == 0);
    CHECK(a0 && w0 && ct_ndim(a0) == 3 &&
          memcmp(ct_data(a0), ct_data(w0), 8 * (size_t)ct_numel(a0)) == 0);
    /* sums over non-contiguous input */
    ct_tensor *s1 = sum_02k(xn), *s2 = sum_02k(x);
    CHECK_CLOSE(s1, s2, 1e-6, "sum of non-contiguous view");
    ct_free(s1); ct_free(s2);
    ct_free(x); ct_free(xn); ct_free(a1); ct_free(w1); ct_free(a0); ct_free(w0);
    ct_fixture_free(fx);
}

static ct_tensor *gc_red(ct_tensor *const *in, void *ctx) {
    return ((ct_tensor * (*)(const ct_tensor *)) ctx)(in[0]);
}

TEST(reduce_gradcheck_float64) {
    int64_t s[3] = {2, 3, 4};
    for (size_t i = 0; i < sizeof RED / sizeof *RED; i++) {
        ct_tensor *x = ct_randn(s, 3, CT_FLOAT64);
        ct_set_requires_grad(x, 1);
        GRADCHECK(gc_red, &x, 1, (void *)RED[i].fn, RED[i].name);
        ct_free(x);
    }
}

TEST(reduce_errors) {
    int64_t s[2] = {2, 3};
    ct_tensor *x = ct_ones(s, 2, CT_FLOAT32);
    int bad = 2, dup[2] = {0, -2};
    CHECK_ERR_PTR(ct_sum(x, &bad, 1, 0), "sum: dimension 2 out of range");
    CHECK_ERR_PTR(ct_sum(x, dup, 2, 0), "sum: dimension -2 appears twice");
    CHECK_ERR_PTR(ct_max(x, -3, 0, NULL), "max: dimension -3 out of range");
    CHECK_ERR_PTR(ct_argmax(x, 5, 0), "argmax");
    ct_tensor *i = ct_ones(s, 2, CT_INT64);
    CHECK_ERR_PTR(ct_mean(i, NULL, 0, 0), "mean: needs a floating-point");
    int64_t z[2] = {0, 3};
    ct_tensor *e = ct_empty(z, 2, CT_FLOAT32);
    CHECK_ERR_PTR(ct_max_all(e), "max");
    ct_free(x); ct_free(i); ct_free(e);
}
