/* embedding: forward and weight gradient against PyTorch (float64 and float32, repeated
 * indices, padding rows), float64 gradcheck, errors, and the backend suite's cases for its
 * two kernels (every backend against the CPU). */
#include "backend_test.h"

#include <string.h>

static const struct {
    const char *key;
    int64_t padding_idx;
} CASES[] = {{"pad", 2}, {"plain", CT_NO_PADDING}, {"negpad", -1}};

TEST(embedding_vs_torch) {
    ct_fixture *fx = ct_fixture_load("embedding");
    if (!fx) return;
    char k[64], what[96];
    for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++)
        for (int f32 = 0; f32 < 2; f32++) {
            const char *p = CASES[c].key;
            snprintf(k, sizeof k, "%s.indices", p);
            ct_tensor *idx = ct_fixture_get(fx, k);
            snprintf(k, sizeof k, "%s.weight", p);
            ct_tensor *w64 = ct_fixture_get(fx, k), *w = f32 ? ct_to_dtype(w64, CT_FLOAT32) : ct_retain(w64);
            snprintf(k, sizeof k, "%s.gy", p);
            ct_tensor *gy64 = ct_fixture_get(fx, k), *gy = f32 ? ct_to_dtype(gy64, CT_FLOAT32) : ct_retain(gy64);
            CHECK_OK(ct_set_requires_grad(w, 1));
            ct_tensor *y = ct_embedding(idx, w, CASES[c].padding_idx);
            CHECK_NN(y);
            snprintf(k, sizeof k, "%s.y", p);
            ct_tensor *want = ct_fixture_get(fx, k);
            snprintf(what, sizeof what, "embedding %s %s forward", p, f32 ? "float32" : "float64");
            CHECK_CLOSE(y, want, f32 ? 1e-6 : 1e-12, what);
            CHECK(y && strcmp(ct_grad_fn_name(y), "EmbeddingBackward") == 0);
            if (y) CHECK_OK(ct_backward(y, gy, 0));
            snprintf(k, sizeof k, "%s.gweight", p);
            ct_tensor *gw = ct_fixture_get(fx, k);
            snprintf(what, sizeof what, "embedding %s %s weight grad", p, f32 ? "float32" : "float64");
            CHECK_CLOSE(ct_grad(w), gw, f32 ? 1e-6 : 1e-12, what);
            ct_free(idx), ct_free(w64), ct_free(w), ct_free(gy64), ct_free(gy), ct_free(y);
            ct_free(want), ct_free(gw);
        }
    ct_fixture_free(fx);
}

static ct_tensor *gc_embedding(ct_tensor *const *in, void *ctx) {
    const ct_tensor *idx = ctx;
    return ct_embedding(idx, in[0], 4); /* a row no index picks: padding rows get no gradient */
}

TEST(embedding_gradcheck_float64) {
    int64_t ws[2] = {6, 3}, is[2] = {2, 4}, v[8] = {0, 1, 5, 1, 3, 3, 2, 0};
    ct_tensor *w = ct_randn(ws, 2, CT_FLOAT64), *idx = ct_from_data(v, is, 2, CT_INT64);
    CHECK_OK(ct_set_requires_grad(w, 1));
    GRADCHECK(gc_embedding, &w, 1, idx, "embedding");
    ct_free(w);
    ct_free(idx);
}

TEST(embedding_errors) {
    int64_t ws[2] = {4, 3}, n = 3, bad[3] = {0, 4, 1}, neg[3] = {1, -1, 0};
    ct_tensor *w = ct_randn(ws, 2, CT_FLOAT32), *i_bad = ct_from_data(bad, &n, 1, CT_INT64);
    ct_tensor *i_neg = ct_from_data(neg, &n, 1, CT_INT64), *i_f = ct_ones(&n, 1, CT_FLOAT32);
    ct_tensor *w1 = ct_ones(&n, 1, CT_FLOAT32), *wi = ct_zeros(ws, 2, CT_INT64);
    CHECK_ERR_PTR(ct_embedding(i_bad, w, CT_NO_PADDING), "index 4 at position 1 is out of range for 4");
    CHECK_ERR_PTR(ct_embedding(i_neg, w, CT_NO_PADDING), "index -1 at position 1");
    CHECK_ERR_PTR(ct_embedding(i_f, w, CT_NO_PADDING), "must be int64");
    CHECK_ERR_PTR(ct_embedding(i_neg, w1, CT_NO_PADDING), "2-D floating");
    CHECK_ERR_PTR(ct_embedding(i_neg, wi, CT_NO_PADDING), "2-D floating");
    CHECK_ERR_PTR(ct_embedding(i_neg, w, 4), "padding_idx 4 must be within [-4, 4)");
    CHECK_ERR_PTR(ct_embedding(i_neg, w, -5), "padding_idx -5");
    CHECK_ERR_PTR(ct_embedding(NULL, w, CT_NO_PADDING), "indices is NULL");
    CHECK_ERR_PTR(ct_embedding(i_neg, NULL, CT_NO_PADDING), "weight is NULL");
    ct_free(w), ct_free(i_bad), ct_free(i_neg), ct_free(i_f), ct_free(w1), ct_free(wi);
}

/* ----------------------------------------------------------- backend cases */
static tp rand_indices(int64_t n, int64_t num, ct_device dev) {
    ct_tensor *u = ct_rand(&n, 1, CT_FLOAT64), *s = ct_mul_scalar(u, (double)num - 1e-9);
    ct_tensor *i = ct_to_dtype(s, CT_INT64);
    ct_free(u), ct_free(s);
    return tp_from(i, dev);
}

static void case_embedding(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    const int64_t shapes[][3] = {{37, 11, 5}, {300, 50, 64}, {0, 4, 3}}; /* n, num, dim */
    for (int di = 0; di < 2; di++)
        for (int si = 0; si < 3; si++) {
            const ct_dtype dt = dts[di];
            const int64_t n = shapes[si][0], num = shapes[si][1], dim = shapes[si][2];
            int64_t ws[2] = {num, dim}, ys[2] = {n, dim};
            char what[96];
            snprintf(what, sizeof what, "embedding %s n=%lld num=%lld dim=%lld %s",
                     bwd ? "backward" : "forward", (long long)n, (long long)num, (long long)dim,
                     ct_dtype_name(dt));
            tp idx = rand_indices(n, num, dev);
            if (!bwd) {
                tp w = tp_rnd(ws, 2, dt, 0, dev), y = tp_rnd(ys, 2, dt, 0, dev);
                KCALL(what, cpuk()->embedding_forward(y.c, w.c, idx.c),
                      k->embedding_forward(y.d, w.d, idx.d));
                tp_check(y, 0, what, bname);
                tp_free(w), tp_free(y);
            } else {
                tp gy = tp_rnd(ys, 2, dt, 0, dev), gw = tp_rnd(ws, 2, dt, 0, dev);
                KCALL(what, cpuk()->embedding_backward(gw.c, gy.c, idx.c, 3),
                      k->embedding_backward(gw.d, gy.d, idx.d, 3));
                tp_check(gw, tol_for(dt), what, bname);
                tp_free(gy), tp_free(gw);
            }
            tp_free(idx);
        }
}

static void case_embedding_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_embedding(dev, k, bname, 0);
}
static void case_embedding_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_embedding(dev, k, bname, 1);
}
BACKEND_CASE(embedding_forward, case_embedding_fwd)
BACKEND_CASE(embedding_backward, case_embedding_bwd)

/* On CUDA an index out of range is found by the kernel and reported, naming it, at the next
 * synchronisation (here: the copy to the CPU); the device is usable afterwards. */
TEST(backends_cuda_embedding_index_out_of_range) {
    char why[1024];
    if (!backend_cuda_ready(why, sizeof why)) SKIP(why);
    const ct_device dev = {CT_CUDA, 0};
    int64_t ws[2] = {5, 3}, n = 4, v[4] = {0, 2, 9, 1};
    ct_tensor *w = ct_randn(ws, 2, CT_FLOAT32), *i = ct_from_data(v, &n, 1, CT_INT64);
    ct_tensor *wd = ct_to_device(w, dev), *id = ct_to_device(i, dev);
    ct_clear_error();
    ct_tensor *y = wd && id ? ct_embedding(id, wd, CT_NO_PADDING) : NULL;
    ct_tensor *h = y ? ct_to_device(y, ct_cpu()) : NULL;
    CHECK_MSG(h == NULL, "an out-of-range index must make the synchronisation fail");
    CHECK_MSG(strstr(ct_last_error(), "embedding: index 9 at position 2") != NULL, "error: %s",
              ct_last_error());
    ct_tensor *again = ct_to_device(wd, ct_cpu());
    CHECK_NN(again);
    ct_free(w), ct_free(i), ct_free(wd), ct_free(id), ct_free(y), ct_free(h), ct_free(again);
}
