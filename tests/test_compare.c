/* Comparisons, logical ops, where, any/all, sums of bool tensors, topk and the accuracy
 * chain: against PyTorch (tests/fixtures/gen_compare.py -> compare.ctf), float64
 * gradcheck where there is a gradient, errors, and the backend suite's cases for the
 * kernels of where and topk (every backend against the CPU). */
#include "backend_test.h"

#include "ctorch_nn.h"
#include "ctorch_optim.h"

#include <stdlib.h>
#include <string.h>

typedef ct_tensor *(*bin_fn)(const ct_tensor *, const ct_tensor *);
typedef ct_tensor *(*scalar_fn)(const ct_tensor *, double);

/* The rows of CT_BINARY_OPS with a bool result and their public functions. */
#define BOOL_ROW(ID, name, node, result, fwd) CT_IF_BOOL_ROW_##result({#name, ct_##name},)
static const struct {
    const char *name;
    bin_fn fn;
} CMP[] = {CT_BINARY_OPS(BOOL_ROW)};
#define N_CMP ((int)(sizeof CMP / sizeof *CMP))

static const struct {
    const char *name;
    scalar_fn fn;
} CMP_SCALAR[] = {{"eq", ct_eq_scalar}, {"ne", ct_ne_scalar}, {"lt", ct_lt_scalar},
                  {"le", ct_le_scalar}, {"gt", ct_gt_scalar}, {"ge", ct_ge_scalar}};
/* gen_compare.py's SCALARS */
static const double SCALARS[] = {0.5, 1.0, 0.1, NAN, -2.0, 0.0, 1e30};

static const char *const DT_NAMES[] = {"float32", "float64", "int64", "bool"};

/* got must be a bool tensor equal to want, without gradient. */
static void check_bool(ct_tensor *got, ct_tensor *want, const char *what) {
    CHECK_MSG(got != NULL, "%s: %s", what, ct_last_error());
    if (!got) return;
    CHECK_MSG(ct_dtype_of(got) == CT_BOOL, "%s: dtype %s, want bool", what,
              ct_dtype_name(ct_dtype_of(got)));
    CHECK_MSG(!ct_requires_grad(got) && !ct_grad_fn_name(got), "%s: must not require grad",
              what);
    CHECK_CLOSE(got, want, 0, what);
}

TEST(compare_dtypes_vs_torch) {
    ct_fixture *fx = ct_fixture_load("compare");
    if (!fx) return;
    char k[96];
    for (int d = 1; d < 4; d++) { /* float64, int64, bool (float32: binary.ctf) */
        snprintf(k, sizeof k, "cmp.%s.a", DT_NAMES[d]);
        ct_tensor *a = ct_fixture_get(fx, k);
        snprintf(k, sizeof k, "cmp.%s.b", DT_NAMES[d]);
        ct_tensor *b = ct_fixture_get(fx, k);
        for (int i = 0; i < N_CMP; i++) {
            snprintf(k, sizeof k, "cmp.%s.%s", DT_NAMES[d], CMP[i].name);
            ct_tensor *want = ct_fixture_get(fx, k), *y = CMP[i].fn(a, b);
            check_bool(y, want, k);
            ct_free(want), ct_free(y);
        }
        snprintf(k, sizeof k, "cmp.%s.logical_not", DT_NAMES[d]);
        ct_tensor *want = ct_fixture_get(fx, k), *y = ct_logical_not(a);
        check_bool(y, want, k);
        ct_free(want), ct_free(y), ct_free(a), ct_free(b);
    }
    ct_fixture_free(fx);
}

TEST(compare_scalars_vs_torch) {
    ct_fixture *fx = ct_fixture_load("compare");
    if (!fx) return;
    char k[96];
    for (int d = 0; d < 4; d++) {
        snprintf(k, sizeof k, "scalar.%s.x", DT_NAMES[d]);
        ct_tensor *x = ct_fixture_get(fx, k);
        for (size_t o = 0; o < sizeof CMP_SCALAR / sizeof *CMP_SCALAR; o++)
            for (size_t j = 0; j < sizeof SCALARS / sizeof *SCALARS; j++) {
                snprintf(k, sizeof k, "scalar.%s.%s.%zu", DT_NAMES[d], CMP_SCALAR[o].name, j);
                ct_tensor *want = ct_fixture_get(fx, k), *y = CMP_SCALAR[o].fn(x, SCALARS[j]);
                char what[128];
                snprintf(what, sizeof what, "%s (%s %g)", k, CMP_SCALAR[o].name, SCALARS[j]);
                check_bool(y, want, what);
                ct_free(want), ct_free(y);
            }
        snprintf(k, sizeof k, "scalar.%s.logical_not", DT_NAMES[d]);
        ct_tensor *want = ct_fixture_get(fx, k), *y = ct_logical_not(x);
        check_bool(y, want, k);
        ct_free(want), ct_free(y), ct_free(x);
    }
    ct_fixture_free(fx);
}

/* Comparisons of operands that require grad give a plain bool tensor; a graph built on
 * the other operand is not disturbed. */
TEST(compare_records_no_graph) {
    int64_t s[2] = {2, 3};
    ct_tensor *a = ct_randn(s, 2, CT_FLOAT64), *b = ct_randn(s, 2, CT_FLOAT64);
    CHECK_OK(ct_set_requires_grad(a, 1));
    ct_tensor *y = ct_mul(a, b), *m = ct_gt(y, b), *z = ct_logical_not(m);
    CHECK(m && !ct_requires_grad(m) && ct_is_leaf(m) && ct_grad_fn_name(m) == NULL);
    CHECK(z && !ct_requires_grad(z));
    ct_tensor *l = ct_sum(y, NULL, 0, 0);
    CHECK_OK(ct_backward(l, NULL, 0));
    CHECK_CLOSE(ct_grad(a), b, 0, "gradient of sum(a * b) beside a comparison");
    ct_free(a), ct_free(b), ct_free(y), ct_free(m), ct_free(z), ct_free(l);
}

TEST(compare_errors) {
    int64_t s1[2] = {2, 3}, s2[2] = {4, 3};
    ct_tensor *a = ct_ones(s1, 2, CT_FLOAT32), *b = ct_ones(s2, 2, CT_FLOAT32);
    ct_tensor *d = ct_ones(s1, 2, CT_FLOAT64), *i32 = ct_ones(s1, 2, CT_INT32);
    ct_tensor *m = ct_ones(s1, 2, CT_BOOL);
    CHECK_ERR_PTR(ct_eq(a, b), "eq: shapes [2, 3] and [4, 3] cannot be broadcast");
    CHECK_ERR_PTR(ct_lt(a, i32), "lt: dtype mismatch (float32 and int32)");
    ct_tensor *mixed = ct_lt(a, d); /* float32 with float64 promotes, as in PyTorch */
    ct_tensor *nmixed = mixed ? ct_sum(mixed, NULL, 0, 0) : NULL;
    CHECK(mixed && ct_dtype_of(mixed) == CT_BOOL && nmixed && ct_item(nmixed) == 0);
    ct_free(mixed), ct_free(nmixed);
    CHECK_ERR_PTR(ct_logical_and(a, m), "logical_and: dtype mismatch");
    CHECK_ERR_PTR(ct_ge(i32, i32), "ge: dtype int32 is not supported (a floating dtype, int64 or bool)");
    CHECK_ERR_PTR(ct_gt(NULL, a), "gt: NULL tensor");
    CHECK_ERR_PTR(ct_eq_scalar(NULL, 1), "eq_scalar: NULL tensor");
    CHECK_ERR_PTR(ct_le_scalar(i32, 1), "le_scalar");
    CHECK_ERR_PTR(ct_logical_not(i32), "logical_not");
    CHECK_ERR_PTR(ct_add(m, m), "add: bool tensors have no arithmetic");
    CHECK_ERR_PTR(ct_mul(m, m), "ct_logical_and");
    ct_free(a), ct_free(b), ct_free(d), ct_free(i32), ct_free(m);
}

/* ------------------------------------------------------------------ any / all */
TEST(compare_any_all_vs_torch) {
    ct_fixture *fx = ct_fixture_load("compare");
    if (!fx) return;
    static const char *const dts[] = {"float32", "int64", "bool"};
    const int d2[1] = {2}, dm2[1] = {-2}, d0[1] = {0}, d02[2] = {0, 2};
    char k[96];
    for (int d = 0; d < 3; d++) {
        snprintf(k, sizeof k, "red.%s.x", dts[d]);
        ct_tensor *x = ct_fixture_get(fx, k);
        struct {
            const char *key;
            ct_tensor *y;
        } c[] = {{"any_all", ct_any(x, NULL, 0, 0)},     {"all_all", ct_all(x, NULL, 0, 0)},
                 {"any_2", ct_any(x, d2, 1, 0)},         {"all_2", ct_all(x, d2, 1, 0)},
                 {"any_m2", ct_any(x, dm2, 1, 0)},       {"all_0_keep", ct_all(x, d0, 1, 1)},
                 {"any_02_keep", ct_any(x, d02, 2, 1)}, {"all_02_keep", ct_all(x, d02, 2, 1)}};
        for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
            snprintf(k, sizeof k, "red.%s.%s", dts[d], c[i].key);
            ct_tensor *want = ct_fixture_get(fx, k);
            check_bool(c[i].y, want, k);
            ct_free(want), ct_free(c[i].y);
        }
        ct_free(x);
    }
    /* no elements: any is false, all true */
    int64_t s0[2] = {0, 3};
    ct_tensor *e = ct_zeros(s0, 2, CT_FLOAT32), *an = ct_any(e, d0, 1, 0), *al = ct_all(e, d0, 1, 0);
    ct_tensor *nan_ = ct_sum(an, NULL, 0, 0), *nal = ct_sum(al, NULL, 0, 0);
    CHECK(an && al && ct_numel(an) == 3 && ct_item(nan_) == 0 && ct_item(nal) == 3);
    ct_fixture_free(fx);
    ct_free(e), ct_free(an), ct_free(al), ct_free(nan_), ct_free(nal);
}

TEST(compare_sum_of_bool_vs_torch) {
    ct_fixture *fx = ct_fixture_load("compare");
    if (!fx) return;
    const int d1[1] = {1}, d02[2] = {0, 2};
    ct_tensor *m = ct_fixture_get(fx, "sumbool.x");
    ct_tensor *y[3] = {ct_sum(m, NULL, 0, 0), ct_sum(m, d1, 1, 0), ct_sum(m, d02, 2, 1)};
    const char *keys[3] = {"sumbool.all", "sumbool.1", "sumbool.02_keep"};
    for (int i = 0; i < 3; i++) {
        ct_tensor *want = ct_fixture_get(fx, keys[i]);
        CHECK_MSG(y[i] && ct_dtype_of(y[i]) == CT_INT64, "%s: want an int64 count", keys[i]);
        CHECK_CLOSE(y[i], want, 0, keys[i]);
        ct_free(want), ct_free(y[i]);
    }
    ct_free(m);
    ct_fixture_free(fx);
}

TEST(compare_reduce_errors) {
    int64_t s[2] = {2, 3};
    ct_tensor *m = ct_ones(s, 2, CT_BOOL), *i32 = ct_ones(s, 2, CT_INT32);
    const int bad[1] = {2}, twice[2] = {1, -1};
    CHECK_ERR_PTR(ct_mean(m, NULL, 0, 0), "mean: needs a floating-point tensor, got bool");
    CHECK_ERR_PTR(ct_mean(m, NULL, 0, 0), "ct_to_dtype(t, CT_FLOAT32)");
    CHECK_ERR_PTR(ct_any(m, bad, 1, 0), "any: dimension 2 out of range");
    CHECK_ERR_PTR(ct_all(m, twice, 2, 0), "all: dimension -1 appears twice");
    CHECK_ERR_PTR(ct_any(i32, NULL, 0, 0), "any: dtype int32 is not supported");
    CHECK_ERR_PTR(ct_all(NULL, NULL, 0, 0), "all: NULL tensor");
    ct_free(m), ct_free(i32);
}

/* ---------------------------------------------------------------------- where */
TEST(compare_where_vs_torch) {
    ct_fixture *fx = ct_fixture_load("compare");
    if (!fx) return;
    ct_tensor *cond = ct_fixture_get(fx, "where.cond");
    char k[96];
    static const char *const dts[] = {"float64", "float32"};
    for (int d = 0; d < 2; d++)
        for (int nc = 0; nc < 2; nc++) {
            ct_tensor *v[6];
            static const char *const names[6] = {"a", "b", "y", "gy", "ga", "gb"};
            for (int i = 0; i < 6; i++) {
                snprintf(k, sizeof k, "where.%s.%s", dts[d], names[i]);
                v[i] = ct_fixture_get(fx, k);
            }
            ct_tensor *a = nc ? ct_test_noncontig(v[0]) : ct_retain(v[0]);
            CHECK_OK(ct_set_requires_grad(a, 1));
            CHECK_OK(ct_set_requires_grad(v[1], 1));
            ct_tensor *y = ct_where(cond, a, v[1]);
            snprintf(k, sizeof k, "where %s%s", dts[d], nc ? " (non-contiguous)" : "");
            CHECK_CLOSE(y, v[2], 0, k);
            CHECK(y && strcmp(ct_grad_fn_name(y), "WhereBackward") == 0);
            if (y) CHECK_OK(ct_backward(y, v[3], 0));
            CHECK_CLOSE(ct_grad(a), v[4], 1e-6, k);
            CHECK_CLOSE(ct_grad(v[1]), v[5], 1e-6, k);
            for (int i = 0; i < 6; i++) ct_free(v[i]);
            ct_free(a), ct_free(y);
        }
    static const char *const other[] = {"int64", "bool"};
    for (int d = 0; d < 2; d++) {
        ct_tensor *v[3];
        static const char *const names[3] = {"a", "b", "y"};
        for (int i = 0; i < 3; i++) {
            snprintf(k, sizeof k, "where.%s.%s", other[d], names[i]);
            v[i] = ct_fixture_get(fx, k);
        }
        ct_tensor *y = ct_where(cond, v[0], v[1]);
        snprintf(k, sizeof k, "where %s", other[d]);
        CHECK(y && ct_dtype_of(y) == ct_dtype_of(v[2]));
        CHECK_CLOSE(y, v[2], 0, k);
        for (int i = 0; i < 3; i++) ct_free(v[i]);
        ct_free(y);
    }
    ct_free(cond);
    ct_fixture_free(fx);
}

static ct_tensor *gc_where(ct_tensor *const *in, void *ctx) {
    return ct_where((const ct_tensor *)ctx, in[0], in[1]);
}

TEST(compare_where_gradcheck_float64) {
    int64_t sc[2] = {3, 1}, sa[3] = {2, 3, 4}, sb[1] = {4};
    ct_tensor *r = ct_randn(sc, 2, CT_FLOAT64), *cond = ct_gt_scalar(r, 0);
    ct_tensor *in[2] = {ct_randn(sa, 3, CT_FLOAT64), ct_randn(sb, 1, CT_FLOAT64)};
    CHECK_OK(ct_set_requires_grad(in[0], 1));
    CHECK_OK(ct_set_requires_grad(in[1], 1));
    GRADCHECK(gc_where, in, 2, cond, "where");
    ct_free(r), ct_free(cond), ct_free(in[0]), ct_free(in[1]);
}

TEST(compare_where_errors) {
    int64_t s[2] = {2, 3}, s4[1] = {4};
    ct_tensor *m = ct_ones(s, 2, CT_BOOL), *f = ct_ones(s, 2, CT_FLOAT32);
    ct_tensor *d = ct_ones(s, 2, CT_FLOAT64), *f4 = ct_ones(s4, 1, CT_FLOAT32);
    CHECK_ERR_PTR(ct_where(f, f, f), "where: cond has dtype float32; it must be bool");
    CHECK_ERR_PTR(ct_where(m, f, d), "where: a and b have different dtypes (float32 and float64)");
    CHECK_ERR_PTR(ct_where(m, f, f4), "where: shapes [2, 3] (cond), [2, 3] (a) and [4] (b) "
                                      "cannot be broadcast");
    CHECK_ERR_PTR(ct_where(NULL, f, f), "where: cond is NULL");
    CHECK_ERR_PTR(ct_where(m, f, NULL), "where: b is NULL");
    ct_free(m), ct_free(f), ct_free(d), ct_free(f4);
}

/* ------------------------------------------------------------- backend cases */
static void case_where(ct_device dev, const ct_kernels *k, const char *bname) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64, CT_INT64, CT_BOOL, CT_FLOAT16};
    for (int di = 0; di < 5; di++) {
        const ct_dtype dt = dts[di];
        int64_t sh[3] = {3, 4, 5}, shT[3] = {3, 5, 4}, sc[3] = {3, 1, 5}, sb[3] = {1, 4, 1};
        char what[96];
        snprintf(what, sizeof what, "where %s", ct_dtype_name(dt));
        ct_tensor *r = rnd(sc, 3, CT_FLOAT64, 0), *c0 = ct_gt_scalar(r, 0);
        tp c1 = tp_from(c0, dev);
        tp cond = {ct_expand(c1.c, sh, 3), ct_expand(c1.d, sh, 3)}; /* broadcast */
        tp a0 = tp_rnd(shT, 3, dt, 0, dev), a = tp_transpose(a0, 1, 2); /* strided */
        tp b0 = tp_rnd(sb, 3, dt, 0, dev), b = {ct_expand(b0.c, sh, 3), ct_expand(b0.d, sh, 3)};
        tp o = tp_from(ct_zeros(sh, 3, dt), dev);
        KCALL(what, cpuk()->where(o.c, cond.c, a.c, b.c), k->where(o.d, cond.d, a.d, b.d));
        tp_check(o, 0, what, bname);
        /* contiguous operands, one element */
        tp ca = tp_from(ct_contiguous(cond.c), dev), aa = tp_from(ct_contiguous(a.c), dev);
        KCALL(what, cpuk()->where(o.c, ca.c, aa.c, aa.c), k->where(o.d, ca.d, aa.d, aa.d));
        tp_check(o, 0, what, bname);
        ct_free(r);
        tp_free(c1), tp_free(cond), tp_free(a0), tp_free(a), tp_free(b0), tp_free(b), tp_free(o);
        tp_free(ca), tp_free(aa);
    }
}
BACKEND_CASE(where, case_where)

/* ----------------------------------------------------------------------- topk */
static const struct {
    const char *key;
    int64_t k;
    int dim, largest, grad, exact_indices;
} TOPK[] = {
    {"topk.largest", 3, 1, 1, 1, 1},        {"topk.smallest_dim0", 2, 0, 0, 1, 1},
    {"topk.dim1_3d", 4, 1, 1, 1, 1},        {"topk.full", 5, -1, 0, 1, 1},
    {"topk.vector", 1, 0, 1, 1, 1},         {"topk.int64", 3, 1, 1, 0, 1},
    {"topk.nan_largest", 3, 1, 1, 0, 0},    {"topk.nan_smallest", 4, 1, 0, 0, 0},
    {"topk.ties", 2, 0, 1, 0, 0},
};

/* idx picks v's values out of x along dim (NaN matching NaN); v contiguous. */
static void check_gathered(const ct_tensor *x, const ct_tensor *v, const ct_tensor *idx, int dim,
                           const char *what) {
    ct_tensor *x64 = ct_to_dtype(x, CT_FLOAT64), *xd = ct_contiguous(x64);
    ct_tensor *vd = ct_to_dtype(v, CT_FLOAT64);
    const double *xp = ct_data(xd), *vp = ct_data(vd);
    const int64_t *ip = ct_data(idx);
    int nd = ct_ndim(x), d = dim < 0 ? dim + nd : dim;
    int64_t inner = 1, n = ct_size(x, d), k = ct_size(v, d);
    for (int i = d + 1; i < nd; i++) inner *= ct_size(x, i);
    for (int64_t s = 0; s < ct_numel(v); s++) {
        int64_t o = s / (k * inner), in = s % inner;
        double want = xp[(o * n + ip[s]) * inner + in];
        CHECK_MSG(want == vp[s] || (isnan(want) && isnan(vp[s])), "%s: index %lld holds %g, "
                  "value %g", what, (long long)ip[s], want, vp[s]);
    }
    ct_free(x64), ct_free(xd), ct_free(vd);
}

/* got == want elementwise, NaN matching NaN, same shape. */
static void check_values(const ct_tensor *got, const ct_tensor *want, const char *what) {
    CHECK_MSG(ct_numel(got) == ct_numel(want) && ct_ndim(got) == ct_ndim(want), "%s: shape", what);
    if (ct_numel(got) != ct_numel(want)) return;
    ct_tensor *g = ct_to_dtype(got, CT_FLOAT64), *w = ct_to_dtype(want, CT_FLOAT64);
    const double *gp = ct_data(g), *wp = ct_data(w);
    for (int64_t i = 0; i < ct_numel(g); i++)
        CHECK_MSG(gp[i] == wp[i] || (isnan(gp[i]) && isnan(wp[i])), "%s: value %lld is %g, want %g",
                  what, (long long)i, gp[i], wp[i]);
    ct_free(g), ct_free(w);
}

TEST(compare_topk_vs_torch) {
    ct_fixture *fx = ct_fixture_load("compare");
    if (!fx) return;
    char k[96];
    for (size_t c = 0; c < sizeof TOPK / sizeof *TOPK; c++)
        for (int nc = 0; nc < 2; nc++) {
            const char *p = TOPK[c].key;
            snprintf(k, sizeof k, "%s.x", p);
            ct_tensor *x0 = ct_fixture_get(fx, k);
            ct_tensor *x = nc && ct_ndim(x0) >= 2 ? ct_test_noncontig(x0) : ct_retain(x0);
            if (TOPK[c].grad) CHECK_OK(ct_set_requires_grad(x, 1));
            ct_tensor *idx = NULL, *v = ct_topk(x, TOPK[c].k, TOPK[c].dim, TOPK[c].largest, nc, &idx);
            CHECK_NN(v);
            snprintf(k, sizeof k, "%s.values", p);
            ct_tensor *wv = ct_fixture_get(fx, k);
            snprintf(k, sizeof k, "%s.indices", p);
            ct_tensor *wi = ct_fixture_get(fx, k);
            char what[128];
            snprintf(what, sizeof what, "%s%s", p, nc ? " (non-contiguous)" : "");
            CHECK(v && ct_dtype_of(v) == ct_dtype_of(x) && idx && ct_dtype_of(idx) == CT_INT64);
            if (!v || !idx) goto next;
            /* NaN-aware: the values as they come, and the indices pick them out of x */
            check_values(v, wv, what);
            check_gathered(x, v, idx, TOPK[c].dim, what);
            if (TOPK[c].exact_indices) CHECK_CLOSE(idx, wi, 0, what);
            if (TOPK[c].grad) {
                CHECK(strcmp(ct_grad_fn_name(v), "TopkBackward") == 0);
                snprintf(k, sizeof k, "%s.gy", p);
                ct_tensor *gy = ct_fixture_get(fx, k);
                snprintf(k, sizeof k, "%s.gx", p);
                ct_tensor *gx = ct_fixture_get(fx, k);
                CHECK_OK(ct_backward(v, gy, 0));
                CHECK_CLOSE(ct_grad(x), gx, 0, what);
                ct_free(gy), ct_free(gx);
            }
        next:
            ct_free(x0), ct_free(x), ct_free(v), ct_free(idx), ct_free(wv), ct_free(wi);
        }
    ct_fixture_free(fx);
}

/* Equal values come by the smaller index; k = 0 and 0-dim tensors as in PyTorch. */
TEST(compare_topk_ties_and_edges) {
    const double v[5] = {1, 3, 3, 2, 3};
    int64_t n = 5;
    ct_tensor *x = ct_from_data(v, &n, 1, CT_FLOAT64), *idx = NULL;
    ct_tensor *t = ct_topk(x, 2, 0, 1, 1, &idx);
    CHECK(t && idx && ((int64_t *)ct_data(idx))[0] == 1 && ((int64_t *)ct_data(idx))[1] == 2);
    ct_free(t), ct_free(idx);
    t = ct_topk(x, 3, 0, 0, 1, &idx); /* smallest: 1, 2, then the first 3 */
    CHECK(t && idx && ((int64_t *)ct_data(idx))[2] == 1);
    ct_free(t), ct_free(idx);
    t = ct_topk(x, 0, 0, 1, 1, &idx);
    CHECK(t && idx && ct_ndim(t) == 1 && ct_numel(t) == 0 && ct_numel(idx) == 0);
    ct_free(t), ct_free(idx);
    ct_tensor *s = ct_scalar(4.5, CT_FLOAT64);
    CHECK_OK(ct_set_requires_grad(s, 1));
    t = ct_topk(s, 1, -1, 1, 1, &idx);
    CHECK(t && idx && ct_ndim(t) == 0 && ct_ndim(idx) == 0 && ct_item(t) == 4.5 && ct_item(idx) == 0);
    if (t) CHECK_OK(ct_backward(t, NULL, 0));
    CHECK(ct_grad(s) && ct_item(ct_grad(s)) == 1);
    ct_free(t), ct_free(idx), ct_free(s), ct_free(x);
    /* indices not asked for */
    int64_t sh[2] = {3, 4};
    ct_tensor *r = ct_randn(sh, 2, CT_FLOAT32), *m = ct_topk(r, 2, 1, 1, 1, NULL);
    CHECK(m && ct_size(m, 1) == 2);
    ct_free(r), ct_free(m);
}

static ct_tensor *gc_topk(ct_tensor *const *in, void *ctx) {
    const int *p = ctx; /* k, dim, largest */
    return ct_topk(in[0], p[0], p[1], p[2], 1, NULL);
}

TEST(compare_topk_gradcheck_float64) {
    int64_t sh[3] = {3, 5, 4};
    const int cases[3][3] = {{2, 1, 1}, {3, 0, 0}, {4, -1, 1}};
    for (int c = 0; c < 3; c++) {
        ct_tensor *x = ct_randn(sh, 3, CT_FLOAT64);
        CHECK_OK(ct_set_requires_grad(x, 1));
        GRADCHECK(gc_topk, &x, 1, (void *)cases[c], "topk");
        ct_free(x);
    }
}

TEST(compare_topk_errors) {
    int64_t sh[2] = {4, 3};
    ct_tensor *x = ct_randn(sh, 2, CT_FLOAT32), *m = ct_ones(sh, 2, CT_BOOL), *idx = NULL;
    CHECK_ERR_PTR(ct_topk(x, 5, 1, 1, 1, &idx),
                  "topk: k = 5 is out of range for dimension 1 of size 3 (tensor [4, 3]); k must be in [0, 3]");
    CHECK(idx == NULL);
    CHECK_ERR_PTR(ct_topk(x, -1, 0, 1, 1, NULL), "topk: k = -1 is out of range");
    CHECK_ERR_PTR(ct_topk(x, 1, 2, 1, 1, NULL), "topk: dimension 2 out of range");
    CHECK_ERR_PTR(ct_topk(m, 1, 0, 1, 1, NULL), "topk: dtype bool is not supported");
    CHECK_ERR_PTR(ct_topk(NULL, 1, 0, 1, 1, NULL), "topk: NULL tensor");
    ct_free(x), ct_free(m);
}

static void case_topk(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64, CT_INT64};
    /* shape, dim, k: rows along the last dim, a middle dim, the first; k = n; k = 0 */
    const struct {
        int64_t sh[3];
        int dim;
        int64_t k;
    } cs[] = {{{4, 6, 37}, 2, 5}, {{3, 40, 5}, 1, 7}, {{9, 2, 3}, 0, 9}, {{2, 3, 8}, 2, 0},
              {{1, 1, 300}, 2, 3}};
    for (int di = 0; di < (bwd ? 2 : 3); di++)
        for (size_t c = 0; c < sizeof cs / sizeof *cs; c++)
            for (int largest = 0; largest < 2; largest++) {
                const ct_dtype dt = dts[di];
                char what[96];
                snprintf(what, sizeof what, "topk %s case %zu largest %d %s",
                         bwd ? "backward" : "forward", c, largest, ct_dtype_name(dt));
                /* ties (values rounded) and, for floats, NaNs */
                ct_tensor *h = rnd(cs[c].sh, 3, CT_FLOAT64, 0), *hr = ct_mul_scalar(h, 3);
                double *p = ct_data(hr);
                for (int64_t i = 0; i < ct_numel(hr); i++) {
                    p[i] = (double)(int64_t)p[i];
                    if (dt != CT_INT64 && i % 11 == 4) p[i] = NAN;
                }
                tp x = tp_from(ct_to_dtype(hr, dt), dev);
                ct_free(h), ct_free(hr);
                int64_t osh[3] = {cs[c].sh[0], cs[c].sh[1], cs[c].sh[2]};
                osh[cs[c].dim] = cs[c].k;
                tp v = tp_from(ct_zeros(osh, 3, dt), dev), ix = tp_from(ct_zeros(osh, 3, CT_INT64), dev);
                if (!bwd) {
                    KCALL(what, cpuk()->topk_forward(v.c, ix.c, x.c, cs[c].dim, cs[c].k, largest),
                          k->topk_forward(v.d, ix.d, x.d, cs[c].dim, cs[c].k, largest));
                    tp_check(ix, 0, what, bname);
                    ct_tensor *vh = ct_to_device(v.d, ct_cpu());
                    check_values(vh, v.c, what);
                    ct_free(vh);
                } else {
                    CHECK_OK(cpuk()->topk_forward(v.c, ix.c, x.c, cs[c].dim, cs[c].k, largest));
                    tp i2 = tp_from(ct_retain(ix.c), dev), gy = tp_rnd(osh, 3, dt, 0, dev);
                    tp gx = tp_rnd(cs[c].sh, 3, dt, 0, dev); /* fully overwritten */
                    KCALL(what, cpuk()->topk_backward(gx.c, gy.c, i2.c, cs[c].dim),
                          k->topk_backward(gx.d, gy.d, i2.d, cs[c].dim));
                    tp_check(gx, 0, what, bname);
                    tp_free(i2), tp_free(gy), tp_free(gx);
                }
                tp_free(x), tp_free(v), tp_free(ix);
            }
}
static void case_topk_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_topk(dev, k, bname, 0);
}
static void case_topk_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_topk(dev, k, bname, 1);
}
BACKEND_CASE(topk_forward, case_topk_fwd)
BACKEND_CASE(topk_backward, case_topk_bwd)

/* ------------------------------------------------------------------- accuracy */
/* (pred == y).sum() in one expression chain inside a scope, no frees: an int64 count. */
TEST(compare_accuracy_chain_vs_torch) {
    ct_fixture *fx = ct_fixture_load("compare");
    if (!fx) return;
    ct_tensor *logits = ct_fixture_get(fx, "acc.logits"), *y = ct_fixture_get(fx, "acc.y");
    ct_tensor *want = ct_fixture_get(fx, "acc.correct");
    long long live = ct__live_tensors();
    ct_scope *s = ct_scope_push();
    ct_tensor *count = ct_sum(ct_eq(ct_argmax(logits, 1, 0), y), NULL, 0, 0);
    CHECK(count && ct_dtype_of(count) == CT_INT64 && ct_ndim(count) == 0);
    double correct = ct_item(count);
    ct_scope_pop(s);
    CHECK_MSG(ct__live_tensors() == live, "%lld tensors left by the chain",
              ct__live_tensors() - live);
    CHECK_MSG(correct == ct_item(want), "correct %g, want %g", correct, ct_item(want));
    ct_free(logits), ct_free(y), ct_free(want);
    ct_fixture_free(fx);
}

/* Three Gaussian blobs in 2-D; a linear classifier trained a few SGD steps. Its accuracy
 * by the chain equals the hand-written loop's, and it learned. */
static double hand_accuracy(const ct_tensor *logits, const ct_tensor *y) {
    ct_tensor *p = ct_argmax(logits, 1, 0);
    const int64_t *pp = ct_data(p), *yp = ct_data(y);
    int64_t c = 0;
    for (int64_t i = 0; i < ct_numel(y); i++) c += pp[i] == yp[i];
    ct_free(p);
    return (double)c;
}

TEST(compare_accuracy_of_a_trained_classifier) {
    enum { N = 300, C = 3 };
    ct_manual_seed(11);
    int64_t xs[2] = {N, 2}, n = N;
    ct_tensor *x = ct_randn(xs, 2, CT_FLOAT32), *y = ct_empty(&n, 1, CT_INT64);
    float *xp = ct_data(x);
    int64_t *yp = ct_data(y);
    const float centers[C][2] = {{3, 0}, {-3, 1}, {0, -3}};
    for (int i = 0; i < N; i++) {
        yp[i] = i % C;
        xp[2 * i] += centers[i % C][0];
        xp[2 * i + 1] += centers[i % C][1];
    }
    ct_module *model = ct_nn_linear(2, C, 1);
    int np = 0;
    ct_tensor **params = ct_module_parameters(model, &np);
    ct_optimizer *opt = ct_optim_sgd(params, np, 0.1, 0.9, 0, 0, 0);
    free(params);
    for (int step = 0; step < 30; step++) {
        CT_SCOPE(s);
        ct_tensor *loss = ct_cross_entropy(ct_module_forward(model, x), y, CT_REDUCTION_MEAN, 0, -100);
        CHECK_OK(ct_backward(loss, NULL, 0));
        CHECK_OK(ct_optim_step(opt));
        ct_optim_zero_grad(opt);
    }
    int prev = ct_set_grad_enabled(0);
    ct_scope *s = ct_scope_push();
    ct_tensor *logits = ct_module_forward(model, x);
    double chain = ct_item(ct_sum(ct_eq(ct_argmax(logits, 1, 0), y), NULL, 0, 0));
    double hand = hand_accuracy(logits, y);
    /* the same as a fraction: mean of the bool converted to float, as PyTorch needs */
    double frac = ct_item(ct_mean(ct_to_dtype(ct_eq(ct_argmax(logits, 1, 0), y), CT_FLOAT32),
                                  NULL, 0, 0));
    ct_scope_pop(s);
    ct_set_grad_enabled(prev);
    CHECK_MSG(chain == hand, "chain %g, hand-written %g", chain, hand);
    CHECK_MSG(chain / N > 0.9, "accuracy %g after training", chain / N);
    CHECK(fabs(frac - chain / N) < 1e-6);
    ct_optim_free(opt);
    ct_module_free(model);
    ct_free(x), ct_free(y);
}

/* The ops end to end on CUDA (the emulator's run included): the accuracy chain, where
 * with its gradient, topk, any over a comparison, each against the CPU. */
TEST(backends_cuda_compare_ops_end_to_end) {
    char why[1024];
    if (!backend_cuda_ready(why, sizeof why)) SKIP(why);
    const ct_device dev = {CT_CUDA, 0};
    CT_SCOPE(s);
    int64_t ls[2] = {50, 7}, n = 50;
    ct_tensor *logits = ct_randn(ls, 2, CT_FLOAT32);
    ct_tensor *y = ct_to_dtype(ct_mul_scalar(ct_rand(&n, 1, CT_FLOAT32), 6.999), CT_INT64);
    ct_tensor *ld = ct_to_device(logits, dev), *yd = ct_to_device(y, dev);
    double host = ct_item(ct_sum(ct_eq(ct_argmax(logits, 1, 0), y), NULL, 0, 0));
    double cuda = ct_item(ct_sum(ct_eq(ct_argmax(ld, 1, 0), yd), NULL, 0, 0));
    CHECK_MSG(host == cuda, "accuracy count: cpu %g, cuda %g", host, cuda);
    /* where with gradients */
    ct_tensor *a = ct_randn(ls, 2, CT_FLOAT64), *b = ct_randn(&ls[1], 1, CT_FLOAT64);
    ct_tensor *ad = ct_detach(ct_to_device(a, dev)), *bd = ct_detach(ct_to_device(b, dev));
    ct_tensor *ins[4] = {a, b, ad, bd};
    for (int i = 0; i < 4; i++) CHECK_OK(ct_set_requires_grad(ins[i], 1));
    ct_tensor *w = ct_where(ct_gt_scalar(a, 0.3), a, b);
    ct_tensor *wd = ct_where(ct_gt_scalar(ad, 0.3), ad, bd);
    CHECK_OK(ct_backward(ct_sum(ct_mul(w, w), NULL, 0, 0), NULL, 0));
    CHECK_OK(ct_backward(ct_sum(ct_mul(wd, wd), NULL, 0, 0), NULL, 0));
    CHECK_CLOSE(ct_to_device(wd, ct_cpu()), w, 1e-12, "where on cuda");
    CHECK_CLOSE(ct_to_device(ct_grad(ad), ct_cpu()), ct_grad(a), 1e-12, "where grad a on cuda");
    CHECK_CLOSE(ct_to_device(ct_grad(bd), ct_cpu()), ct_grad(b), 1e-12, "where grad b on cuda");
    /* topk values, indices and gradient */
    ct_tensor *ic = NULL, *id = NULL;
    ct_tensor *tc = ct_topk(a, 3, 1, 1, 1, &ic), *td = ct_topk(ad, 3, 1, 1, 1, &id);
    CHECK_CLOSE(ct_to_device(td, ct_cpu()), tc, 0, "topk values on cuda");
    CHECK_CLOSE(ct_to_device(id, ct_cpu()), ic, 0, "topk indices on cuda");
    ct_tensor *anyc = ct_any(ct_lt(a, ct_to_dtype(logits, CT_FLOAT64)), (int[]){1}, 1, 0);
    ct_tensor *anyd = ct_any(ct_lt(ad, ct_to_device(ct_to_dtype(logits, CT_FLOAT64), dev)),
                             (int[]){1}, 1, 0);
    CHECK_CLOSE(ct_to_device(anyd, ct_cpu()), anyc, 0, "any of a comparison on cuda");
}
