/* matmul and linear: forward/backward against PyTorch (tests/fixtures/gen_linalg.py),
 * float64 gradcheck, large products against a naive reference (exercising the
 * multithreaded tiling), and every error path. */
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

static int fx_has(ct_fixture *fx, int i, const char *name) {
    char key[64];
    snprintf(key, sizeof key, "c%d_%s", i, name);
    return ct_fixture_has(fx, key);
}

static int fx_count(ct_fixture *fx) {
    ct_tensor *c = ct_fixture_get(fx, "count");
    int n = c ? (int)ct_item(c) : 0;
    ct_free(c);
    return n;
}

TEST(matmul_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("linalg_matmul");
    if (!fx) return;
    int n = fx_count(fx);
    CHECK(n > 0);
    for (int i = 0; i < n; i++) {
        char what[64];
        ct_tensor *cfg = fx_get(fx, i, "cfg");
        int nc = (int)((int64_t *)ct_data(cfg))[0];
        ct_tensor *a = maybe_noncontig(fx_get(fx, i, "a"), nc & 1);
        ct_tensor *b = maybe_noncontig(fx_get(fx, i, "b"), nc & 2);
        ct_tensor *gy = fx_get(fx, i, "gy"), *wy = fx_get(fx, i, "y");
        ct_tensor *wga = fx_get(fx, i, "ga"), *wgb = fx_get(fx, i, "gb");
        if (nc) CHECK(!ct_is_contiguous(nc & 1 ? a : b));
        CHECK_OK(ct_set_requires_grad(a, 1));
        CHECK_OK(ct_set_requires_grad(b, 1));
        ct_tensor *y = ct_matmul(a, b);
        CHECK_NN(y);
        snprintf(what, sizeof what, "matmul case %d forward", i);
        CHECK_CLOSE(y, wy, 1e-4, what);
        if (y) {
            CHECK(ct_grad_fn_name(y) != NULL);
            CHECK_OK(ct_backward(y, gy, 0));
            snprintf(what, sizeof what, "matmul case %d grad a", i);
            CHECK_CLOSE(ct_grad(a), wga, 1e-4, what);
            snprintf(what, sizeof what, "matmul case %d grad b", i);
            CHECK_CLOSE(ct_grad(b), wgb, 1e-4, what);
        }
        ct_free(y);
        ct_free(a);
        ct_free(b);
        ct_free(gy);
        ct_free(wy);
        ct_free(wga);
        ct_free(wgb);
        ct_free(cfg);
    }
    ct_fixture_free(fx);
}

TEST(linear_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("linalg_linear");
    if (!fx) return;
    int n = fx_count(fx);
    CHECK(n > 0);
    for (int i = 0; i < n; i++) {
        char what[64];
        ct_tensor *cfg = fx_get(fx, i, "cfg");
        const int64_t *c = ct_data(cfg);
        int has_b = (int)c[0], nc = (int)c[1];
        CHECK(has_b == fx_has(fx, i, "b"));
        ct_tensor *x = maybe_noncontig(fx_get(fx, i, "x"), nc & 1);
        ct_tensor *w = maybe_noncontig(fx_get(fx, i, "w"), nc & 2);
        ct_tensor *b = has_b ? fx_get(fx, i, "b") : NULL;
        ct_tensor *gy = fx_get(fx, i, "gy"), *wy = fx_get(fx, i, "y");
        ct_tensor *wgx = fx_get(fx, i, "gx"), *wgw = fx_get(fx, i, "gw");
        ct_tensor *wgb = has_b ? fx_get(fx, i, "gb") : NULL;
        CHECK_OK(ct_set_requires_grad(x, 1));
        CHECK_OK(ct_set_requires_grad(w, 1));
        if (b) CHECK_OK(ct_set_requires_grad(b, 1));
        ct_tensor *y = ct_linear(x, w, b);
        CHECK_NN(y);
        snprintf(what, sizeof what, "linear case %d forward", i);
        CHECK_CLOSE(y, wy, 1e-4, what);
        if (y) {
            CHECK_OK(ct_backward(y, gy, 0));
            snprintf(what, sizeof what, "linear case %d grad x", i);
            CHECK_CLOSE(ct_grad(x), wgx, 1e-4, what);
            snprintf(what, sizeof what, "linear case %d grad w", i);
            CHECK_CLOSE(ct_grad(w), wgw, 1e-4, what);
            if (b) {
                snprintf(what, sizeof what, "linear case %d grad b", i);
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

static ct_tensor *matmul_fn(ct_tensor *const *in, void *ctx) {
    (void)ctx;
    return ct_matmul(in[0], in[1]);
}

static ct_tensor *linear_fn(ct_tensor *const *in, void *ctx) {
    int has_bias = *(int *)ctx;
    return ct_linear(in[0], in[1], has_bias ? in[2] : NULL);
}

TEST(matmul_gradcheck) {
    static const struct {
        int na, nb;
        int64_t a[4], b[4];
    } cases[] = {
        {1, 1, {4}, {4}},
        {1, 2, {3}, {3, 2}},
        {2, 1, {2, 3}, {3}},
        {2, 2, {3, 4}, {4, 2}},
        {3, 2, {2, 3, 2}, {2, 3}},
        {3, 3, {2, 2, 3}, {2, 3, 2}},
        {4, 3, {2, 1, 2, 3}, {3, 3, 2}},
        {2, 3, {2, 3}, {2, 3, 2}},
        {1, 3, {3}, {2, 3, 2}},
        {3, 1, {2, 2, 3}, {3}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ct_tensor *in[2] = {ct_randn(cases[i].a, cases[i].na, CT_FLOAT64),
                            ct_randn(cases[i].b, cases[i].nb, CT_FLOAT64)};
        ct_set_requires_grad(in[0], 1);
        ct_set_requires_grad(in[1], 1);
        char what[48];
        snprintf(what, sizeof what, "matmul gradcheck case %zu", i);
        GRADCHECK(matmul_fn, in, 2, NULL, what);
        ct_free(in[0]);
        ct_free(in[1]);
    }
}

TEST(linear_gradcheck) {
    static const struct {
        int nx;
        int64_t x[4];
        int64_t out;
        int bias;
    } cases[] = {
        {2, {3, 4}, 2, 1},
        {3, {2, 2, 3}, 3, 0},
        {1, {4}, 2, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t in_f = cases[i].x[cases[i].nx - 1];
        int64_t ws[2] = {cases[i].out, in_f};
        ct_tensor *in[3] = {ct_randn(cases[i].x, cases[i].nx, CT_FLOAT64),
                            ct_randn(ws, 2, CT_FLOAT64), ct_randn(&cases[i].out, 1, CT_FLOAT64)};
        for (int k = 0; k < 3; k++) ct_set_requires_grad(in[k], 1);
        int has_bias = cases[i].bias;
        char what[48];
        snprintf(what, sizeof what, "linear gradcheck case %zu", i);
        GRADCHECK(linear_fn, in, has_bias ? 3 : 2, &has_bias, what);
        for (int k = 0; k < 3; k++) ct_free(in[k]);
    }
}

/* Gradient only where asked: a frozen operand gets none, the other is still right. */
TEST(matmul_partial_requires_grad) {
    int64_t sa[3] = {2, 3, 4}, sb[2] = {4, 5};
    ct_tensor *a = ct_randn(sa, 3, CT_FLOAT32), *b = ct_randn(sb, 2, CT_FLOAT32);
    ct_set_requires_grad(b, 1);
    ct_tensor *y = ct_matmul(a, b);
    ct_tensor *s = ct_sum(y, NULL, 0, 0);
    CHECK_OK(ct_backward(s, NULL, 0));
    CHECK(ct_grad(a) == NULL);
    CHECK(ct_grad(b) != NULL);
    /* d sum(a@b)/db[k][n] = sum over batch and rows of a[.., k]. */
    ct_tensor *ones = ct_ones(sb, 2, CT_FLOAT32);
    int d01[2] = {0, 1};
    ct_tensor *colsum = ct_sum(a, d01, 2, 0); /* [4] */
    ct_tensor *cs2 = ct_unsqueeze(colsum, 1);
    ct_tensor *want = ct_mul(ones, cs2);
    CHECK_CLOSE(ct_grad(b), want, 1e-5, "grad b");
    ct_free(want);
    ct_free(cs2);
    ct_free(colsum);
    ct_free(ones);
    ct_free(s);
    ct_free(y);
    ct_free(a);
    ct_free(b);
}

/* --------------------------------------------------- large, multithreaded */

/* Naive c = a @ b over 2-D views read through ct_copy_to_buffer (double). */
static ct_tensor *naive_mm(const ct_tensor *a, const ct_tensor *b) {
    int64_t M = ct_size(a, 0), K = ct_size(a, 1), N = ct_size(b, 1);
    ct_tensor *a64 = ct_to_dtype(a, CT_FLOAT64), *b64 = ct_to_dtype(b, CT_FLOAT64);
    double *A = malloc(sizeof(double) * (size_t)(M * K)), *B = malloc(sizeof(double) * (size_t)(K * N));
    double *C = calloc((size_t)(M * N), sizeof(double));
    ct_copy_to_buffer(a64, A, sizeof(double) * (size_t)(M * K));
    ct_copy_to_buffer(b64, B, sizeof(double) * (size_t)(K * N));
    for (int64_t i = 0; i < M; i++)
        for (int64_t k = 0; k < K; k++)
            for (int64_t j = 0; j < N; j++) C[i * N + j] += A[i * K + k] * B[k * N + j];
    int64_t sh[2] = {M, N};
    ct_tensor *c = ct_from_data(C, sh, 2, CT_FLOAT64);
    free(A);
    free(B);
    free(C);
    ct_free(a64);
    ct_free(b64);
    return c;
}

TEST(matmul_large_tiled_vs_naive) {
    /* Shapes big enough for the kernel to tile one product over threads, with
     * row-major and transposed operands. */
    int64_t sa[2] = {203, 151}, sb[2] = {151, 137};
    ct_tensor *a = ct_randn(sa, 2, CT_FLOAT32), *b = ct_randn(sb, 2, CT_FLOAT32);
    ct_tensor *want = naive_mm(a, b);
    for (int variant = 0; variant < 4; variant++) {
        ct_tensor *aa = variant & 1 ? ct_test_noncontig(a) : ct_retain(a);
        ct_tensor *bb = variant & 2 ? ct_test_noncontig(b) : ct_retain(b);
        ct_tensor *y = ct_matmul(aa, bb);
        char what[48];
        snprintf(what, sizeof what, "large matmul variant %d", variant);
        CHECK_CLOSE(y, want, 1e-5, what);
        ct_free(y);
        ct_free(aa);
        ct_free(bb);
    }
    /* Same product in float64, single-threaded and multithreaded. */
    ct_tensor *a64 = ct_to_dtype(a, CT_FLOAT64), *b64 = ct_to_dtype(b, CT_FLOAT64);
    int prev = ct_get_num_threads();
    ct_set_num_threads(1);
    ct_tensor *y1 = ct_matmul(a64, b64);
    ct_set_num_threads(prev);
    ct_tensor *yn = ct_matmul(a64, b64);
    CHECK_CLOSE(y1, want, 1e-12, "large matmul float64, 1 thread");
    CHECK_CLOSE(yn, want, 1e-12, "large matmul float64, all threads");
    ct_free(y1);
    ct_free(yn);
    ct_free(a64);
    ct_free(b64);
    ct_free(want);
    ct_free(a);
    ct_free(b);
}

/* ct_linear(x, w, b) against x w^T + b in float64. */
static void check_linear_vs_naive(const ct_tensor *x, const ct_tensor *w, const ct_tensor *b,
                                  const char *what) {
    ct_tensor *wt = ct_transpose(w, 0, 1), *xw = naive_mm(x, wt);
    ct_tensor *b64 = ct_to_dtype(b, CT_FLOAT64), *want = ct_add(xw, b64);
    ct_tensor *y = ct_linear(x, w, b);
    CHECK_CLOSE(y, want, 1e-5, what);
    ct_free(y);
    ct_free(want);
    ct_free(b64);
    ct_free(xw);
    ct_free(wt);
}

/* Results of two runs equal to the bit. */
static int same_bits(const ct_tensor *x, const ct_tensor *y) {
    size_t n = sizeof(float) * (size_t)ct_numel(x);
    float *a = malloc(n), *b = malloc(n);
    int same = a && b && ct_copy_to_buffer(x, a, n) == 0 && ct_copy_to_buffer(y, b, n) == 0 &&
               memcmp(a, b, n) == 0;
    free(a);
    free(b);
    return same;
}

TEST(matmul_split_k_vs_naive) {
    /* K (2100) far longer than the output's sides (a weight gradient's shape): the CPU
     * kernel sums K in parts; every layout, 1 thread against all threads to the bit, and
     * a linear layer (its bias is the GEMM's beta = 1 start) */
    int64_t sa[2] = {40, 2100}, sb[2] = {2100, 24}, sw[2] = {24, 2100}, sbias = 24;
    ct_tensor *a = ct_randn(sa, 2, CT_FLOAT32), *b = ct_randn(sb, 2, CT_FLOAT32);
    ct_tensor *want = naive_mm(a, b);
    int prev = ct_get_num_threads();
    for (int variant = 0; variant < 4; variant++) {
        ct_tensor *aa = variant & 1 ? ct_test_noncontig(a) : ct_retain(a);
        ct_tensor *bb = variant & 2 ? ct_test_noncontig(b) : ct_retain(b);
        ct_tensor *y = ct_matmul(aa, bb);
        ct_set_num_threads(1);
        ct_tensor *y1 = ct_matmul(aa, bb);
        ct_set_num_threads(prev > 1 ? prev : 2);
        ct_tensor *y2 = ct_matmul(aa, bb);
        ct_set_num_threads(prev);
        char what[64];
        snprintf(what, sizeof what, "split-K matmul variant %d", variant);
        CHECK_CLOSE(y, want, 1e-5, what);
        CHECK(y1 && y2 && same_bits(y1, y2));
        ct_free(y);
        ct_free(y1);
        ct_free(y2);
        ct_free(aa);
        ct_free(bb);
    }
    ct_tensor *w = ct_randn(sw, 2, CT_FLOAT32), *bias = ct_randn(&sbias, 1, CT_FLOAT32);
    check_linear_vs_naive(a, w, bias, "split-K linear with bias");
    ct_free(w);
    ct_free(bias);
    ct_free(want);
    ct_free(a);
    ct_free(b);
}

static ct_tensor *select0(const ct_tensor *t, int64_t i) {
    ct_tensor *n = ct_narrow(t, 0, i, 1);
    ct_tensor *s = ct_squeeze(n, 0);
    ct_free(n);
    return s;
}

TEST(matmul_batched_large_vs_naive) {
    int64_t sa[3] = {5, 40, 64}, sb[3] = {5, 64, 48};
    ct_tensor *a = ct_randn(sa, 3, CT_FLOAT32), *b = ct_randn(sb, 3, CT_FLOAT32);
    ct_tensor *y = ct_matmul(a, b);
    CHECK_NN(y);
    for (int64_t i = 0; y && i < 5; i++) {
        ct_tensor *ai = select0(a, i), *bi = select0(b, i), *yi = select0(y, i);
        ct_tensor *w = naive_mm(ai, bi);
        CHECK_CLOSE(yi, w, 1e-5, "batched matmul item");
        ct_free(w);
        ct_free(ai);
        ct_free(bi);
        ct_free(yi);
    }
    ct_free(y);
    ct_free(a);
    ct_free(b);
}

TEST(linear_large_vs_naive) {
    int64_t sx[2] = {300, 128}, sw[2] = {96, 128}, sbias = 96;
    ct_tensor *x = ct_randn(sx, 2, CT_FLOAT32), *w = ct_randn(sw, 2, CT_FLOAT32);
    ct_tensor *b = ct_randn(&sbias, 1, CT_FLOAT32);
    check_linear_vs_naive(x, w, b, "large linear");
    ct_free(x);
    ct_free(w);
    ct_free(b);
}

/* ------------------------------------------------------------------ errors */

TEST(matmul_errors) {
    int64_t s23[2] = {2, 3}, s34[2] = {3, 4}, s44[2] = {4, 4}, s234[3] = {2, 3, 4},
            s345[3] = {3, 4, 5};
    ct_tensor *a = ct_randn(s23, 2, CT_FLOAT32), *b = ct_randn(s34, 2, CT_FLOAT32);
    ct_tensor *c = ct_randn(s44, 2, CT_FLOAT32), *d = ct_randn(s34, 2, CT_FLOAT64);
    ct_tensor *e = ct_randn(s234, 3, CT_FLOAT32), *f = ct_randn(s345, 3, CT_FLOAT32);
    ct_tensor *s = ct_scalar(2.0, CT_FLOAT32), *ai = ct_zeros(s23, 2, CT_INT64);
    ct_tensor *bi = ct_zeros(s34, 2, CT_INT64);
    CHECK_ERR_PTR(ct_matmul(a, c), "matmul");          /* inner dims 3 vs 4 */
    CHECK_ERR_PTR(ct_matmul(a, c), "[2, 3]");          /* message names the shapes */
    CHECK_ERR_PTR(ct_matmul(s, b), "matmul");          /* 0-dim operand */
    CHECK_ERR_PTR(ct_matmul(a, d), "matmul");          /* float32 @ float64 */
    CHECK_ERR_PTR(ct_matmul(ai, bi), "matmul");        /* int64 */
    CHECK_ERR_PTR(ct_matmul(e, f), "broadcast");       /* batch 2 vs 3 */
    CHECK_ERR_PTR(ct_matmul(NULL, b), "matmul");
    CHECK_ERR_PTR(ct_matmul(a, NULL), "matmul");
    ct_free(a);
    ct_free(b);
    ct_free(c);
    ct_free(d);
    ct_free(e);
    ct_free(f);
    ct_free(s);
    ct_free(ai);
    ct_free(bi);
}

TEST(linear_errors) {
    int64_t sx[2] = {5, 4}, sw[2] = {3, 4}, sw_bad[2] = {3, 5}, sw3[3] = {3, 4, 1}, sb = 3,
            sb_bad = 4;
    ct_tensor *x = ct_randn(sx, 2, CT_FLOAT32), *w = ct_randn(sw, 2, CT_FLOAT32);
    ct_tensor *wbad = ct_randn(sw_bad, 2, CT_FLOAT32), *w3 = ct_randn(sw3, 3, CT_FLOAT32);
    ct_tensor *b = ct_randn(&sb, 1, CT_FLOAT32), *bbad = ct_randn(&sb_bad, 1, CT_FLOAT32);
    ct_tensor *b64 = ct_randn(&sb, 1, CT_FLOAT64), *x64 = ct_randn(sx, 2, CT_FLOAT64);
    ct_tensor *s = ct_scalar(1.0, CT_FLOAT32), *xi = ct_zeros(sx, 2, CT_INT64);
    CHECK_ERR_PTR(ct_linear(x, wbad, b), "linear");   /* in_features 4 vs 5 */
    CHECK_ERR_PTR(ct_linear(x, wbad, b), "[5, 4]");
    CHECK_ERR_PTR(ct_linear(x, w3, NULL), "linear");  /* weight not 2-D */
    CHECK_ERR_PTR(ct_linear(x, w, bbad), "linear");   /* bias size */
    CHECK_ERR_PTR(ct_linear(x, w, b64), "linear");    /* bias dtype */
    CHECK_ERR_PTR(ct_linear(x64, w, b), "linear");    /* input dtype */
    CHECK_ERR_PTR(ct_linear(xi, w, NULL), "linear");  /* int64 input */
    CHECK_ERR_PTR(ct_linear(s, w, NULL), "linear");   /* 0-dim input */
    CHECK_ERR_PTR(ct_linear(NULL, w, NULL), "linear");
    CHECK_ERR_PTR(ct_linear(x, NULL, NULL), "linear");
    ct_free(x);
    ct_free(w);
    ct_free(wbad);
    ct_free(w3);
    ct_free(b);
    ct_free(bbad);
    ct_free(b64);
    ct_free(x64);
    ct_free(s);
    ct_free(xi);
}

/* Changing a saved operand in place makes backward fail instead of returning a wrong
 * gradient. */
TEST(matmul_saved_tensor_modified_in_place) {
    int64_t sa[2] = {3, 4}, sb[2] = {4, 2};
    ct_tensor *a = ct_randn(sa, 2, CT_FLOAT32), *b = ct_randn(sb, 2, CT_FLOAT32);
    ct_set_requires_grad(b, 1);
    ct_tensor *y = ct_matmul(a, b);
    ct_tensor *s = ct_sum(y, NULL, 0, 0);
    CHECK_OK(ct_add_scalar_(a, 1.0)); /* a is saved for grad b */
    CHECK_ERR_INT(ct_backward(s, NULL, 0), "modified by an in-place operation");
    ct_free(s);
    ct_free(y);
    ct_free(a);
    ct_free(b);
}
