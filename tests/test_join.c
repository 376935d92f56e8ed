/* cat and stack: forward/backward against PyTorch (tests/fixtures/gen_norm_join.py),
 * float64 gradcheck, and the error paths. */
#include "test.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

static ct_tensor *fx_get(ct_fixture *fx, int c, const char *key) {
    char name[64];
    snprintf(name, sizeof name, "c%d_%s", c, key);
    return ct_fixture_has(fx, name) ? ct_fixture_get(fx, name) : NULL;
}

/* Must mirror CAT_CASES / STACK_CASES in gen_norm_join.py. */
static const struct {
    int n, dim, noncontig; /* noncontig: index of the input fed strided, or -1 */
} CAT_CASES[] = {{2, 0, 1}, {3, -2, 0}, {2, 2, 1}, {3, 0, -1}};
static const struct {
    int n, dim, noncontig;
} STACK_CASES[] = {{3, 0, 2}, {2, 1, -1}, {3, -1, 0}};

static void run_join_case(ct_fixture *fx, int c, int n, int dim, int noncontig, int stack) {
    const char *op = stack ? "stack" : "cat";
    char what[64];
    ct_tensor *raw[4] = {0}, *xs[4] = {0};
    for (int j = 0; j < n; j++) {
        char key[16];
        snprintf(key, sizeof key, "x%d", j);
        raw[j] = fx_get(fx, c, key);
        CHECK(raw[j] != NULL);
        if (!raw[j]) goto done;
        xs[j] = j == noncontig ? ct_test_noncontig(raw[j]) : ct_retain(raw[j]);
        CHECK_OK(ct_set_requires_grad(xs[j], 1));
    }
    ct_tensor *y = stack ? ct_stack(xs, n, dim) : ct_cat(xs, n, dim);
    CHECK_NN(y);
    if (y) {
        ct_tensor *ry = fx_get(fx, c, "y"), *gy = fx_get(fx, c, "gy");
        snprintf(what, sizeof what, "%s case %d y", op, c);
        CHECK_CLOSE(y, ry, 0, what);
        CHECK(ct_is_contiguous(y));
        CHECK_OK(ct_backward(y, gy, 0));
        for (int j = 0; j < n; j++) {
            char key[16];
            snprintf(key, sizeof key, "gx%d", j);
            ct_tensor *rg = fx_get(fx, c, key);
            snprintf(what, sizeof what, "%s case %d gx%d", op, c, j);
            CHECK_CLOSE(ct_grad(xs[j]), rg, 0, what);
            ct_free(rg);
        }
        ct_free(ry);
        ct_free(gy);
        ct_free(y);
    }
done:
    for (int j = 0; j < n; j++) {
        ct_free(xs[j]);
        ct_free(raw[j]);
    }
}

TEST(cat_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("join_cat");
    if (!fx) return;
    for (int c = 0; c < (int)(sizeof CAT_CASES / sizeof CAT_CASES[0]); c++)
        run_join_case(fx, c, CAT_CASES[c].n, CAT_CASES[c].dim, CAT_CASES[c].noncontig, 0);
    ct_fixture_free(fx);
}

TEST(stack_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("join_stack");
    if (!fx) return;
    for (int c = 0; c < (int)(sizeof STACK_CASES / sizeof STACK_CASES[0]); c++)
        run_join_case(fx, c, STACK_CASES[c].n, STACK_CASES[c].dim, STACK_CASES[c].noncontig, 1);
    ct_fixture_free(fx);
}

/* The same tensor twice, and a mix of inputs with and without requires_grad. */
TEST(cat_repeated_and_partial_grad) {
    int64_t s[2] = {2, 3};
    ct_tensor *a = ct_randn(s, 2, CT_FLOAT32), *b = ct_randn(s, 2, CT_FLOAT32);
    ct_set_requires_grad(a, 1);
    ct_tensor *in[3] = {a, b, a};
    ct_tensor *y = ct_cat(in, 3, 1);
    CHECK_NN(y);
    if (y) {
        CHECK(ct_size(y, 1) == 9);
        CHECK(strcmp(ct_grad_fn_name(y), "CatBackward") == 0);
        int64_t ys[2] = {2, 9};
        ct_tensor *gy = ct_randn(ys, 2, CT_FLOAT32);
        CHECK_OK(ct_backward(y, gy, 0));
        ct_tensor *g0 = ct_narrow(gy, 1, 0, 3), *g2 = ct_narrow(gy, 1, 6, 3);
        ct_tensor *want = ct_add(g0, g2);
        CHECK_CLOSE(ct_grad(a), want, 1e-7, "cat repeated input gradient");
        CHECK(ct_grad(b) == NULL);
        ct_free(want);
        ct_free(g0);
        ct_free(g2);
        ct_free(gy);
        ct_free(y);
    }
    /* No input requires grad: no graph. */
    ct_tensor *in2[2] = {b, b};
    ct_tensor *y2 = ct_cat(in2, 2, 0);
    CHECK_NN(y2);
    if (y2) CHECK(!ct_requires_grad(y2) && ct_grad_fn_name(y2) == NULL);
    ct_free(y2);
    /* A single input is copied. */
    ct_tensor *y3 = ct_cat(&b, 1, -1);
    CHECK_NN(y3);
    CHECK_CLOSE(y3, b, 0, "cat of one tensor");
    ct_free(y3);
    ct_free(a);
    ct_free(b);
}

/* Large enough to go through multithreaded copies; float64. */
TEST(cat_float64_large) {
    int64_t s0[3] = {3, 100, 70}, s1[3] = {3, 100, 50};
    ct_tensor *a = ct_randn(s0, 3, CT_FLOAT64), *b = ct_randn(s1, 3, CT_FLOAT64);
    ct_tensor *in[2] = {a, b};
    ct_tensor *y = ct_cat(in, 2, -1);
    CHECK_NN(y);
    if (y) {
        CHECK(ct_size(y, 2) == 120);
        ct_tensor *na = ct_narrow(y, 2, 0, 70), *nb = ct_narrow(y, 2, 70, 50);
        CHECK_CLOSE(na, a, 0, "cat large part a");
        CHECK_CLOSE(nb, b, 0, "cat large part b");
        ct_free(na);
        ct_free(nb);
    }
    ct_free(y);
    ct_free(a);
    ct_free(b);
}

typedef struct {
    int n, dim, stack;
} join_gc_ctx;

static ct_tensor *join_gc_fn(ct_tensor *const *in, void *vctx) {
    join_gc_ctx *c = vctx;
    return c->stack ? ct_stack(in, c->n, c->dim) : ct_cat(in, c->n, c->dim);
}

TEST(cat_stack_gradcheck) {
    int64_t s0[3] = {2, 3, 2}, s1[3] = {2, 1, 2}, s2[3] = {2, 4, 2};
    ct_tensor *in[3] = {ct_randn(s0, 3, CT_FLOAT64), ct_randn(s1, 3, CT_FLOAT64),
                        ct_randn(s2, 3, CT_FLOAT64)};
    for (int i = 0; i < 3; i++) ct_set_requires_grad(in[i], 1);
    join_gc_ctx c1 = {3, 1, 0};
    GRADCHECK(join_gc_fn, in, 3, &c1, "cat dim 1");
    ct_tensor *st[3] = {ct_randn(s0, 3, CT_FLOAT64), ct_randn(s0, 3, CT_FLOAT64),
                        ct_randn(s0, 3, CT_FLOAT64)};
    for (int i = 0; i < 3; i++) ct_set_requires_grad(st[i], 1);
    join_gc_ctx c2 = {3, 2, 1};
    GRADCHECK(join_gc_fn, st, 3, &c2, "stack dim 2");
    join_gc_ctx c3 = {3, -4, 1};
    GRADCHECK(join_gc_fn, st, 3, &c3, "stack dim -4");
    for (int i = 0; i < 3; i++) {
        ct_free(in[i]);
        ct_free(st[i]);
    }
}

TEST(cat_stack_errors) {
    int64_t s23[2] = {2, 3}, s24[2] = {2, 4}, s33[2] = {3, 3}, s3[1] = {3};
    int64_t s8[8] = {1, 1, 1, 1, 1, 1, 1, 2};
    ct_tensor *a = ct_randn(s23, 2, CT_FLOAT32), *b = ct_randn(s24, 2, CT_FLOAT32);
    ct_tensor *c = ct_randn(s33, 2, CT_FLOAT32), *d = ct_randn(s3, 1, CT_FLOAT32);
    ct_tensor *a64 = ct_randn(s23, 2, CT_FLOAT64), *sc = ct_scalar(1.0, CT_FLOAT32);
    ct_tensor *e8 = ct_randn(s8, 8, CT_FLOAT32);
    ct_tensor *ab[2] = {a, b}, *ac[2] = {a, c}, *ad[2] = {a, d}, *aa64[2] = {a, a64};
    ct_tensor *anull[2] = {a, NULL}, *scs[2] = {sc, sc}, *e8s[2] = {e8, e8}, *aa[2] = {a, a};
    CHECK_ERR_PTR(ct_cat(NULL, 0, 0), "cat: expected a non-empty list");
    CHECK_ERR_PTR(ct_cat(ab, 0, 0), "cat: expected a non-empty list");
    CHECK_ERR_PTR(ct_cat(anull, 2, 0), "cat: tensor 1");
    CHECK_ERR_PTR(ct_cat(ab, 2, 0), "cat: sizes of tensors must match");
    CHECK_ERR_PTR(ct_cat(ac, 2, 1), "[3, 3]");
    CHECK_ERR_PTR(ct_cat(ad, 2, 0), "cat: tensor 1 [3] has 1 dims");
    CHECK_ERR_PTR(ct_cat(aa64, 2, 0), "cat: tensor 1 has dtype float64");
    CHECK_ERR_PTR(ct_cat(ab, 2, 2), "cat: dimension 2 out of range");
    CHECK_ERR_PTR(ct_cat(ab, 2, -3), "cat: dimension -3 out of range");
    CHECK_ERR_PTR(ct_cat(scs, 2, 0), "cat: zero-dimensional");
    CHECK_ERR_PTR(ct_stack(NULL, 0, 0), "stack: expected a non-empty list");
    CHECK_ERR_PTR(ct_stack(anull, 2, 0), "stack: tensor 1");
    CHECK_ERR_PTR(ct_stack(ab, 2, 0), "stack: expects each tensor to be equal size");
    CHECK_ERR_PTR(ct_stack(aa64, 2, 0), "stack: tensor 1 has dtype float64");
    CHECK_ERR_PTR(ct_stack(aa, 2, 3), "stack: dimension 3 out of range");
    CHECK_ERR_PTR(ct_stack(aa, 2, -4), "stack: dimension -4 out of range");
    CHECK_ERR_PTR(ct_stack(e8s, 2, 0), "stack");
    /* Stacking 0-dim tensors is fine: [2]. */
    ct_tensor *st = ct_stack(scs, 2, 0);
    CHECK_NN(st);
    if (st) CHECK(ct_ndim(st) == 1 && ct_size(st, 0) == 2);
    ct_free(st);
    ct_tensor *all[] = {a, b, c, d, a64, sc, e8};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ct_free(all[i]);
}
