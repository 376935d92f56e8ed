/* Backend conformance suite, the analogue of ggml's test-backend-ops: one test case per
 * entry of the ct_kernels table (src/core/backend.h). Each case builds inputs on the CPU,
 * runs the kernel through the CPU backend's table and through the table of every other
 * available backend (today: cuda, when ct_cuda_status says it is available) on copies of
 * the same inputs -- contiguous, transposed, broadcast and sliced views, float32 and
 * float64 (int64 and the storage dtypes where the kernel takes them) -- and compares the
 * results: relative error norm <= 1e-4 for float32 (1e-9 for float64), exact for indices.
 *
 * When no other backend can run (no GPU, no driver, plugin not built) every case reports
 * "skipped: cuda unavailable: <reason>", never "ok".
 *
 * A few more cases exercise the CUDA plugin's own API (allocator statistics, fused
 * optimizer steps) and the op layer end to end (a small CNN's forward and backward). */
#include "backend_test.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static char g_why[1024];
static int cuda_ready(void) { return backend_cuda_ready(g_why, sizeof g_why); }

/* ------------------------------------------------------------------ binary */
/* Operands for binary op `op`: the comparisons get values with ties (multiples of 0.5,
 * small integers) and, for floating dtypes, NaNs; the others randn (a) and [1, 3) (b). */
static tp binary_operand(const int64_t *sh, int nd, ct_dtype dt, int second, int op,
                         ct_device dev) {
    if (!ct_binop_result_bool(op)) return tp_rnd(sh, nd, dt, second ? 1 : 0, dev);
    ct_tensor *r = rnd(sh, nd, CT_FLOAT64, 0), *h = ct_mul_scalar(r, 1.2);
    double *p = ct_data(h);
    for (int64_t i = 0; i < ct_numel(h); i++) {
        p[i] = (double)(int64_t)(p[i] * 2) / 2; /* ties between a and b */
        if (ct_is_floating(dt) && (i + second) % 7 == 3) p[i] = NAN;
    }
    ct_tensor *t = ct_to_dtype(h, dt);
    ct_free(r), ct_free(h);
    return tp_from(t, dev);
}

static void binary_variants(ct_device dev, const ct_kernels *k, const char *bname, int op,
                            ct_dtype dt) {
    const int to_bool = ct_binop_result_bool(op);
    const ct_dtype odt = to_bool ? CT_BOOL : dt;
    const double alpha = op <= CT_BIN_SUB ? (dt == CT_INT64 ? 2 : 0.5) : 1;
    const double tol = dt == CT_INT64 || to_bool ? 0 : tol_for(dt);
    char what[96];
    int64_t sh[3] = {3, 4, 5}, shT[3] = {3, 5, 4}, shb[3] = {1, 4, 1};
    /* contiguous */
    tp a = binary_operand(sh, 3, dt, 0, op, dev), b = binary_operand(sh, 3, dt, 1, op, dev);
    tp o = tp_from(ct_zeros(sh, 3, odt), dev);
    snprintf(what, sizeof what, "binary %s %s contiguous", ct_binop_name((ct_binop)op),
             ct_dtype_name(dt));
    KCALL(what, cpuk()->binary((ct_binop)op, o.c, a.c, b.c, alpha),
          k->binary((ct_binop)op, o.d, a.d, b.d, alpha));
    tp_check(o, tol, what, bname);
    /* transposed a, broadcast b (stride 0 in two dims) */
    tp at0 = binary_operand(shT, 3, dt, 0, op, dev), at = tp_transpose(at0, 1, 2);
    tp b0 = binary_operand(shb, 3, dt, 1, op, dev);
    tp bb = {ct_expand(b0.c, sh, 3), ct_expand(b0.d, sh, 3)};
    snprintf(what, sizeof what, "binary %s %s strided+broadcast", ct_binop_name((ct_binop)op),
             ct_dtype_name(dt));
    KCALL(what, cpuk()->binary((ct_binop)op, o.c, at.c, bb.c, alpha),
          k->binary((ct_binop)op, o.d, at.d, bb.d, alpha));
    tp_check(o, tol, what, bname);
    /* in place, into a non-contiguous output (bool results: bool operands only) */
    if (odt == dt) {
        snprintf(what, sizeof what, "binary %s %s in place", ct_binop_name((ct_binop)op),
                 ct_dtype_name(dt));
        KCALL(what, cpuk()->binary((ct_binop)op, at.c, at.c, b.c, alpha),
              k->binary((ct_binop)op, at.d, at.d, b.d, alpha));
        tp_check(at0, tol, what, bname);
    }
    tp_free(a), tp_free(b), tp_free(o), tp_free(at0), tp_free(at), tp_free(b0), tp_free(bb);
}

static void case_binary(ct_device dev, const ct_kernels *k, const char *bname) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64, CT_INT64, CT_BOOL};
    for (int di = 0; di < 4; di++)
        for (int op = 0; op < CT_BIN_COUNT; op++)
            if (dts[di] != CT_BOOL || ct_binop_result_bool(op))
                binary_variants(dev, k, bname, op, dts[di]);
}

BACKEND_CASE(binary, case_binary)

/* ------------------------------------------------------------------- unary */
typedef struct {
    ct_unop op;
    double p1, p2;
    int positive;
} unary_spec;

/* Every row of CT_UNARY_OPS with its test arguments, and pow with an integer exponent on
 * inputs of both signs. */
#define UNARY_SPEC(ID, name, node, dtypes, saves, api, fwd, der, p1, p2, domain)            \
    {CT_UN_##ID, p1, p2, CT_DOMAIN_##domain == CT_DOMAIN_POS},
static const unary_spec k_unary_specs[] = {CT_UNARY_OPS(UNARY_SPEC){CT_UN_POW, 3, 0, 0}};
#define N_UNARY ((int)(sizeof k_unary_specs / sizeof k_unary_specs[0]))
_Static_assert(N_UNARY == CT_UN_COUNT + 1, "one spec per unary op (and pow3)");

static int int_unary(ct_unop op) { return ct_unop_allows_int64(op); }

static void case_unary(ct_device dev, const ct_kernels *k, const char *bname) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64, CT_INT64};
    for (int di = 0; di < 3; di++)
        for (int i = 0; i < N_UNARY; i++) {
            const unary_spec *s = &k_unary_specs[i];
            const ct_dtype dt = dts[di];
            if (dt == CT_INT64 && !int_unary(s->op)) continue;
            const double tol = dt == CT_INT64 ? 0 : tol_for(dt);
            char what[96];
            snprintf(what, sizeof what, "unary %s %s", ct_unop_name(s->op), ct_dtype_name(dt));
            int64_t sh[2] = {6, 40}, shT[2] = {40, 6};
            tp x0 = tp_rnd(shT, 2, dt, s->positive ? 1 : 0, dev), x = tp_transpose(x0, 0, 1);
            tp o = tp_rnd(sh, 2, dt, 0, dev);
            KCALL(what, cpuk()->unary(s->op, o.c, x.c, s->p1, s->p2),
                  k->unary(s->op, o.d, x.d, s->p1, s->p2));
            tp_check(o, tol, what, bname);
            /* in place on the strided view */
            KCALL(what, cpuk()->unary(s->op, x.c, x.c, s->p1, s->p2),
                  k->unary(s->op, x.d, x.d, s->p1, s->p2));
            tp_check(x0, tol, what, bname);
            tp_free(x0), tp_free(x), tp_free(o);
        }
}

BACKEND_CASE(unary, case_unary)

/* --------------------------------------------------------- unary backward */
static void case_unary_backward(ct_device dev, const ct_kernels *k, const char *bname) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    for (int di = 0; di < 2; di++)
        for (int i = 0; i < N_UNARY; i++) {
            const unary_spec *s = &k_unary_specs[i];
            const ct_dtype dt = dts[di];
            char what[96];
            snprintf(what, sizeof what, "unary backward %s %s", ct_unop_name(s->op),
                     ct_dtype_name(dt));
            int64_t sh[2] = {7, 33};
            ct_tensor *xc = rnd(sh, 2, dt, s->positive ? 1 : 0);
            ct_tensor *yc = ct_empty_on(sh, 2, dt, ct_cpu());
            CHECK_OK(cpuk()->unary(s->op, yc, xc, s->p1, s->p2));
            tp x = tp_from(xc, dev), y = tp_from(yc, dev), gy = tp_rnd(sh, 2, dt, 0, dev);
            tp gx = tp_rnd(sh, 2, dt, 0, dev);
            KCALL(what, cpuk()->unary_backward(s->op, gx.c, gy.c, x.c, y.c, s->p1, s->p2),
                  k->unary_backward(s->op, gx.d, gy.d, x.d, y.d, s->p1, s->p2));
            tp_check(gx, tol_for(dt), what, bname);
            tp_free(x), tp_free(y), tp_free(gy), tp_free(gx);
        }
}

BACKEND_CASE(unary_backward, case_unary_backward)

/* ------------------------------------------------------------------ reduce */
static void reduce_one(ct_device dev, const ct_kernels *k, const char *bname, ct_redop op,
                       tp a, const int *red, ct_dtype out_dt, const char *what) {
    const ct_tensor *ac = a.c;
    int64_t osh[CT_MAX_DIMS];
    for (int d = 0; d < ac->ndim; d++) osh[d] = red[d] ? 1 : ac->shape[d];
    tp o = tp_rnd(osh, ac->ndim, out_dt, 0, dev);
    tp idx = {NULL, NULL};
    if (op == CT_RED_MAX) idx = tp_rnd(osh, ac->ndim, CT_INT64, 0, dev);
    KCALL(what, cpuk()->reduce(op, o.c, idx.c, a.c, red), k->reduce(op, o.d, idx.d, a.d, red));
    tp_check(o, out_dt == CT_INT64 || out_dt == CT_BOOL ? 0 : tol_for(out_dt), what, bname);
    if (op == CT_RED_MAX) tp_check(idx, 0, what, bname);
    tp_free(o);
    tp_free(idx);
}

/* any / all (into bool) over bool and numbers with zeros and NaNs, sums of bool (int64),
 * max of bool; short and split (long) reductions. */
static void case_reduce_bool(ct_device dev, const ct_kernels *k, const char *bname) {
    const ct_dtype dts[] = {CT_BOOL, CT_FLOAT32, CT_FLOAT64, CT_INT64};
    const int r1[3] = {0, 1, 0}, r02[3] = {1, 0, 1}, rall[3] = {1, 1, 1}, r2[3] = {0, 0, 1};
    const int *reds[4] = {r1, r02, rall, r2};
    for (int di = 0; di < 4; di++) {
        int64_t shT[3] = {4, 6, 5};
        ct_tensor *h = rnd(shT, 3, CT_FLOAT64, 0);
        double *p = ct_data(h);
        for (int i = 0; i < 120; i++) p[i] = i % 5 == 0 || (i >= 30 && i < 36) ? 0 : p[i];
        for (int i = 60; i < 66; i++) p[i] = 1; /* a row without zeros */
        if (ct_is_floating(dts[di])) p[7] = NAN;
        ct_tensor *hd = ct_to_dtype(h, dts[di]);
        ct_free(h);
        tp a0 = tp_from(hd, dev), a = tp_transpose(a0, 1, 2);
        for (int r = 0; r < 4; r++) {
            char what[96];
            snprintf(what, sizeof what, "any/all reduction %d of %s", r, ct_dtype_name(dts[di]));
            reduce_one(dev, k, bname, CT_RED_ANY, a, reds[r], CT_BOOL, what);
            reduce_one(dev, k, bname, CT_RED_ALL, a, reds[r], CT_BOOL, what);
            if (dts[di] == CT_BOOL) {
                reduce_one(dev, k, bname, CT_RED_SUM, a, reds[r], CT_INT64, what);
                if (r == 0) reduce_one(dev, k, bname, CT_RED_MAX, a, reds[r], CT_BOOL, what);
            }
        }
        tp_free(a0), tp_free(a);
    }
    /* long rows: the split paths (partial counts combined) */
    int64_t wide[2] = {2, 100000}, tall[2] = {70, 20000};
    const int c1[2] = {0, 1}, c0[2] = {1, 0};
    ct_tensor *w = ct_zeros(wide, 2, CT_BOOL), *t = ct_ones(tall, 2, CT_BOOL);
    ((uint8_t *)ct_data(w))[150000] = 1; /* one true element in row 1 */
    ((uint8_t *)ct_data(t))[12345] = 0;  /* one false element in column 12345 */
    tp wp = tp_from(w, dev), tq = tp_from(t, dev);
    reduce_one(dev, k, bname, CT_RED_ANY, wp, c1, CT_BOOL, "any of 100000 (split)");
    reduce_one(dev, k, bname, CT_RED_ALL, tq, c0, CT_BOOL, "all of columns of 70 rows (split)");
    reduce_one(dev, k, bname, CT_RED_SUM, wp, c1, CT_INT64, "sum of 100000 bools (split)");
    tp_free(wp), tp_free(tq);
}

static void case_reduce(ct_device dev, const ct_kernels *k, const char *bname) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64, CT_INT64};
    for (int di = 0; di < 3; di++) {
        const ct_dtype dt = dts[di];
        int64_t shT[3] = {4, 6, 5};
        tp a0 = tp_rnd(shT, 3, dt, 0, dev), a = tp_transpose(a0, 1, 2); /* [4, 5, 6] strided */
        const int r1[3] = {0, 1, 0}, r02[3] = {1, 0, 1}, rall[3] = {1, 1, 1}, r2[3] = {0, 0, 1},
                  r0[3] = {1, 0, 0}, rnone[3] = {0, 0, 0};
        char what[96];
        snprintf(what, sizeof what, "sum dim 1 %s", ct_dtype_name(dt));
        reduce_one(dev, k, bname, CT_RED_SUM, a, r1, dt, what);
        snprintf(what, sizeof what, "sum dims 0,2 %s", ct_dtype_name(dt));
        reduce_one(dev, k, bname, CT_RED_SUM, a, r02, dt, what);
        snprintf(what, sizeof what, "sum all %s", ct_dtype_name(dt));
        reduce_one(dev, k, bname, CT_RED_SUM, a, rall, dt, what);
        snprintf(what, sizeof what, "sum none %s", ct_dtype_name(dt));
        reduce_one(dev, k, bname, CT_RED_SUM, a, rnone, dt, what);
        if (dt != CT_INT64) {
            snprintf(what, sizeof what, "mean dim 2 %s", ct_dtype_name(dt));
            reduce_one(dev, k, bname, CT_RED_MEAN, a, r2, dt, what);
            snprintf(what, sizeof what, "mean all %s", ct_dtype_name(dt));
            reduce_one(dev, k, bname, CT_RED_MEAN, a, rall, dt, what);
        }
        snprintf(what, sizeof what, "max dim 1 %s", ct_dtype_name(dt));
        reduce_one(dev, k, bname, CT_RED_MAX, a, r1, dt, what);
        snprintf(what, sizeof what, "max dim 0 %s", ct_dtype_name(dt));
        reduce_one(dev, k, bname, CT_RED_MAX, a, r0, dt, what);
        tp_free(a0), tp_free(a);
    }
    /* Large shapes: the split (multi-block) paths and their final combination. */
    int64_t wide[2] = {2, 100000}, tall[2] = {70, 20000}, col[2] = {3, 50000};
    const int r1[2] = {0, 1}, r0[2] = {1, 0};
    tp w = tp_rnd(wide, 2, CT_FLOAT32, 0, dev), t = tp_rnd(tall, 2, CT_FLOAT32, 0, dev);
    tp c = tp_rnd(col, 2, CT_FLOAT64, 0, dev);
    reduce_one(dev, k, bname, CT_RED_SUM, w, r1, CT_FLOAT32, "sum of 100000 (split)");
    reduce_one(dev, k, bname, CT_RED_MAX, w, r1, CT_FLOAT32, "max of 100000 (split)");
    reduce_one(dev, k, bname, CT_RED_SUM, t, r0, CT_FLOAT32, "column sums of 70 rows (split)");
    reduce_one(dev, k, bname, CT_RED_MEAN, c, r0, CT_FLOAT64, "column means of 3 rows");
    tp_free(w), tp_free(t), tp_free(c);
    /* NaN propagation and ties in max: the first NaN / the first maximum wins. */
    double v[12] = {1, 5, 5, 2, -1, NAN, 3, NAN, 0, 0, 0, 0};
    int64_t sh[2] = {3, 4};
    tp n = tp_from(ct_from_data(v, sh, 2, CT_FLOAT64), dev);
    reduce_one(dev, k, bname, CT_RED_MAX, n, r1, CT_FLOAT64, "max with NaN and ties");
    tp_free(n);
    case_reduce_bool(dev, k, bname);
}

BACKEND_CASE(reduce, case_reduce)

/* -------------------------------------------------------------------- copy */
static void case_copy(ct_device dev, const ct_kernels *k, const char *bname) {
    const ct_dtype pairs[][2] = {
        {CT_FLOAT64, CT_FLOAT32}, {CT_FLOAT32, CT_FLOAT64}, {CT_INT64, CT_FLOAT32},
        {CT_FLOAT32, CT_UINT8},   {CT_BFLOAT16, CT_FLOAT32}, {CT_FLOAT16, CT_FLOAT32},
        {CT_FLOAT32, CT_FLOAT16}, {CT_FLOAT32, CT_FLOAT32}, {CT_INT64, CT_INT64},
        {CT_INT32, CT_FLOAT64},   {CT_UINT8, CT_INT64},     {CT_FLOAT64, CT_BFLOAT16},
        {CT_BOOL, CT_FLOAT32},    {CT_BOOL, CT_FLOAT64},    {CT_BOOL, CT_INT64},
        {CT_FLOAT32, CT_BOOL},    {CT_INT64, CT_BOOL},      {CT_BOOL, CT_BOOL},
        {CT_BOOL, CT_FLOAT16},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        const ct_dtype dd = pairs[i][0], sd = pairs[i][1];
        char what[96];
        snprintf(what, sizeof what, "copy %s -> %s", ct_dtype_name(sd), ct_dtype_name(dd));
        int64_t sh[2] = {7, 5}, shT[2] = {5, 7};
        /* uint8 sources/destinations: keep values in range */
        ct_tensor *base = rnd(shT, 2, CT_FLOAT64, sd == CT_UINT8 || dd == CT_UINT8 ? 1 : 0);
        if (sd == CT_BOOL || dd == CT_BOOL) { /* zeros (false) and a NaN (true) among them */
            double *bp = ct_data(base);
            for (int j = 0; j < 35; j += 3) bp[j] = 0;
            if (sd != CT_INT64) bp[4] = NAN;
        }
        ct_tensor *scaled = ct_mul_scalar(base, 20.0);
        ct_tensor *sc = ct_to_dtype(scaled, sd);
        ct_free(base), ct_free(scaled);
        tp s0 = tp_from(sc, dev), s = tp_transpose(s0, 0, 1); /* [7, 5] strided */
        /* contiguous destination */
        tp o = tp_from(ct_zeros(sh, 2, dd), dev);
        KCALL(what, cpuk()->copy(o.c, s.c), k->copy(o.d, s.d));
        tp_check(o, 0, what, bname);
        /* strided destination */
        tp o0 = tp_from(ct_zeros(shT, 2, dd), dev), ot = tp_transpose(o0, 0, 1);
        KCALL(what, cpuk()->copy(ot.c, s.c), k->copy(ot.d, s.d));
        tp_check(o0, 0, what, bname);
        tp_free(s0), tp_free(s), tp_free(o), tp_free(o0), tp_free(ot);
    }
}

BACKEND_CASE(copy, case_copy)

/* -------------------------------------------------------------------- fill */
static void case_fill(ct_device dev, const ct_kernels *k, const char *bname) {
    const double vals[] = {0, 1.25, -3};
    for (int dt = 0; dt < CT_NUM_DTYPES; dt++)
        for (int vi = 0; vi < 3; vi++) {
            if (dt == CT_UINT8 && vals[vi] < 0) continue;
            char what[96];
            snprintf(what, sizeof what, "fill %s with %g", ct_dtype_name((ct_dtype)dt), vals[vi]);
            int64_t sh[2] = {4, 10};
            tp t = tp_from(ct_ones(sh, 2, (ct_dtype)dt), dev);
            KCALL(what, cpuk()->fill(t.c, vals[vi]), k->fill(t.d, vals[vi]));
            tp_check(t, 0, what, bname);
            /* every other column only */
            tp u = tp_from(ct_ones(sh, 2, (ct_dtype)dt), dev);
            tp s = {ct_slice(u.c, 1, 1, 10, 2), ct_slice(u.d, 1, 1, 10, 2)};
            KCALL(what, cpuk()->fill(s.c, vals[vi]), k->fill(s.d, vals[vi]));
            tp_check(u, 0, what, bname);
            tp_free(t), tp_free(u), tp_free(s);
        }
}

BACKEND_CASE(fill, case_fill)

/* --------------------------------------------------------------------- bmm */
static void case_bmm(ct_device dev, const ct_kernels *k, const char *bname) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    for (int di = 0; di < 2; di++) {
        const ct_dtype dt = dts[di];
        const int64_t B = 3, M = 5, K = 7, N = 4;
        int64_t sa[3] = {B, M, K}, sb[3] = {B, K, N}, sc[3] = {B, M, N};
        int64_t saT[3] = {B, K, M}, sbT[3] = {B, N, K}, sa1[3] = {1, M, K};
        for (int variant = 0; variant < 5; variant++) {
            tp a, b, a0 = {NULL, NULL}, b0 = {NULL, NULL}, bias = {NULL, NULL}, bias0 = {NULL, NULL};
            double alpha = 1, beta = 0;
            if (variant == 0) {
                a = tp_rnd(sa, 3, dt, 0, dev);
                b = tp_rnd(sb, 3, dt, 0, dev);
            } else if (variant == 1) { /* both transposed */
                a0 = tp_rnd(saT, 3, dt, 0, dev);
                b0 = tp_rnd(sbT, 3, dt, 0, dev);
                a = tp_transpose(a0, 1, 2);
                b = tp_transpose(b0, 1, 2);
                alpha = 0.7;
            } else if (variant == 2) { /* a broadcast over the batch, beta != 0 */
                a0 = tp_rnd(sa1, 3, dt, 0, dev);
                a.c = ct_expand(a0.c, sa, 3);
                a.d = ct_expand(a0.d, sa, 3);
                b = tp_rnd(sb, 3, dt, 0, dev);
                beta = 0.3;
            } else if (variant == 4) { /* a column bias (every 2nd element of a row), alpha */
                a = tp_rnd(sa, 3, dt, 0, dev);
                b = tp_rnd(sb, 3, dt, 0, dev);
                int64_t n2 = 2 * N;
                bias0 = tp_rnd(&n2, 1, dt, 0, dev);
                bias.c = ct_slice(bias0.c, 0, 0, n2, 2);
                bias.d = ct_slice(bias0.d, 0, 0, n2, 2);
                alpha = 0.5;
            } else { /* b transposed only, alpha and beta */
                a = tp_rnd(sa, 3, dt, 0, dev);
                b0 = tp_rnd(sbT, 3, dt, 0, dev);
                b = tp_transpose(b0, 1, 2);
                alpha = -1.5;
                beta = 1;
            }
            tp c = tp_rnd(sc, 3, dt, 0, dev);
            char what[96];
            snprintf(what, sizeof what, "bmm variant %d %s", variant, ct_dtype_name(dt));
            KCALL(what, cpuk()->bmm(c.c, a.c, b.c, bias.c, alpha, beta),
                  k->bmm(c.d, a.d, b.d, bias.d, alpha, beta));
            tp_check(c, tol_for(dt), what, bname);
            tp_free(a), tp_free(b), tp_free(a0), tp_free(b0), tp_free(c), tp_free(bias), tp_free(bias0);
        }
    }
}

BACKEND_CASE(bmm, case_bmm)

/* bmm's bias refused with a message naming it: the wrong length, the wrong dtype, and a
 * bias with beta != 0 (float32 through the CPU's epilogue path, float64 through its
 * broadcast path). */
TEST(backends_bmm_bad_bias) {
    int64_t sa[3] = {1, 4, 3}, sb[3] = {1, 3, 5}, sc[3] = {1, 4, 5}, n5 = 5, n4 = 4;
    const ct_dtype dts[2] = {CT_FLOAT32, CT_FLOAT64};
    for (int d = 0; d < 2; d++) {
        ct_tensor *a = ct_randn(sa, 3, dts[d]), *b = ct_randn(sb, 3, dts[d]);
        ct_tensor *c = ct_zeros(sc, 3, dts[d]);
        ct_tensor *short_bias = ct_randn(&n4, 1, dts[d]), *bias = ct_randn(&n5, 1, dts[d]);
        ct_tensor *other = ct_randn(&n5, 1, dts[d] == CT_FLOAT32 ? CT_FLOAT64 : CT_FLOAT32);
        CHECK(cpuk()->bmm(c, a, b, short_bias, 1.0, 0.0) != 0);
        CHECK_MSG(strstr(ct_last_error(), "bias") && strstr(ct_last_error(), "[5]"), "%s",
                  ct_last_error());
        CHECK(cpuk()->bmm(c, a, b, other, 1.0, 0.0) != 0);
        CHECK_MSG(strstr(ct_last_error(), "bias"), "%s", ct_last_error());
        CHECK(cpuk()->bmm(c, a, b, bias, 1.0, 0.5) != 0);
        CHECK_MSG(strstr(ct_last_error(), "beta == 0"), "%s", ct_last_error());
        CHECK_OK(cpuk()->bmm(c, a, b, bias, 1.0, 0.0));
        ct_free(a), ct_free(b), ct_free(c), ct_free(short_bias), ct_free(bias), ct_free(other);
    }
}

/* ------------------------------------------------------------------ conv2d */
typedef struct {
    int64_t x[4], w[4];
    ct_conv_params p;
    int bias;
} conv_spec;

static const conv_spec k_convs[] = {
    {{2, 4, 9, 8}, {6, 2, 3, 3}, {{2, 1}, {1, 1}, {1, 2}, 2}, 1},
    {{3, 3, 7, 7}, {5, 3, 1, 1}, {{1, 1}, {0, 0}, {1, 1}, 1}, 0},
    {{2, 3, 12, 10}, {8, 3, 5, 3}, {{1, 2}, {2, 1}, {1, 1}, 1}, 1},
};

static void conv_out_shape(const conv_spec *s, int64_t *y) {
    y[0] = s->x[0];
    y[1] = s->w[0];
    for (int i = 0; i < 2; i++)
        y[2 + i] = (s->x[2 + i] + 2 * s->p.padding[i] - s->p.dilation[i] * (s->w[2 + i] - 1) - 1) /
                       s->p.stride[i] + 1;
}

static void conv_case(ct_device dev, const ct_kernels *k, const char *bname, int dir) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    for (int di = 0; di < 2; di++)
        for (size_t i = 0; i < sizeof k_convs / sizeof k_convs[0]; i++) {
            const conv_spec *s = &k_convs[i];
            const ct_dtype dt = dts[di];
            int64_t ysh[4];
            conv_out_shape(s, ysh);
            tp x = tp_rnd(s->x, 4, dt, 0, dev), w = tp_rnd(s->w, 4, dt, 0, dev);
            tp y = tp_rnd(ysh, 4, dt, 0, dev);
            tp bias = {NULL, NULL};
            if (s->bias) bias = tp_rnd(&s->w[0], 1, dt, 0, dev);
            char what[96];
            snprintf(what, sizeof what, "conv2d %s config %zu %s",
                     dir == 0 ? "forward" : dir == 1 ? "backward input" : "backward weight", i,
                     ct_dtype_name(dt));
            if (dir == 0) {
                KCALL(what, cpuk()->conv2d_forward(y.c, x.c, w.c, bias.c, &s->p),
                      k->conv2d_forward(y.d, x.d, w.d, bias.d, &s->p));
                tp_check(y, tol_for(dt), what, bname);
            } else if (dir == 1) {
                KCALL(what, cpuk()->conv2d_backward_input(x.c, y.c, w.c, &s->p),
                      k->conv2d_backward_input(x.d, y.d, w.d, &s->p));
                tp_check(x, tol_for(dt), what, bname);
            } else {
                tp gb = s->bias ? tp_rnd(&s->w[0], 1, dt, 0, dev) : (tp){NULL, NULL};
                KCALL(what, cpuk()->conv2d_backward_weight(w.c, gb.c, y.c, x.c, &s->p),
                      k->conv2d_backward_weight(w.d, gb.d, y.d, x.d, &s->p));
                tp_check(w, tol_for(dt), what, bname);
                if (s->bias) tp_check(gb, tol_for(dt), what, bname);
                tp_free(gb);
            }
            /* A second call reuses the cached algorithm. */
            if (dir == 0) {
                KCALL(what, cpuk()->conv2d_forward(y.c, x.c, w.c, bias.c, &s->p),
                      k->conv2d_forward(y.d, x.d, w.d, bias.d, &s->p));
                tp_check(y, tol_for(dt), what, bname);
            }
            tp_free(x), tp_free(w), tp_free(y), tp_free(bias);
        }
}

static void case_conv_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    conv_case(dev, k, bname, 0);
}
static void case_conv_bwd_input(ct_device dev, const ct_kernels *k, const char *bname) {
    conv_case(dev, k, bname, 1);
}
static void case_conv_bwd_weight(ct_device dev, const ct_kernels *k, const char *bname) {
    conv_case(dev, k, bname, 2);
}

BACKEND_CASE(conv2d_forward, case_conv_fwd)
BACKEND_CASE(conv2d_backward_input, case_conv_bwd_input)
BACKEND_CASE(conv2d_backward_weight, case_conv_bwd_weight)

/* ----------------------------------------------------------------- pooling */
static int64_t div_rtn(int64_t a, int64_t b) {
    int64_t q = a / b, r = a % b;
    if (r != 0 && ((r < 0) != (b < 0))) q--;
    return q;
}

/* PyTorch's pooling output size (as src/ops/pool.c). */
static int64_t pool_out(int64_t in, int k, int pad, int stride, int dil, int ceil_mode) {
    int64_t span = in + 2 * pad - dil * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0);
    int64_t out = div_rtn(span, stride) + 1;
    if (ceil_mode && (out - 1) * stride >= in + pad) out--;
    return out;
}

static const ct_pool_params k_pools[] = {
    {{3, 2}, {2, 2}, {1, 1}, {1, 1}, 0, 1},
    {{3, 3}, {2, 1}, {1, 0}, {2, 1}, 1, 0},
    {{2, 2}, {2, 2}, {0, 0}, {1, 1}, 0, 0},
    {{3, 3}, {2, 2}, {1, 1}, {1, 1}, 1, 0},
};
#define N_POOLS ((int)(sizeof k_pools / sizeof k_pools[0]))

static void pool_shapes(const ct_pool_params *p, int64_t *x, int64_t *y, int with_dil) {
    x[0] = 2, x[1] = 3, x[2] = 9, x[3] = 8;
    y[0] = 2, y[1] = 3;
    for (int i = 0; i < 2; i++)
        y[2 + i] = pool_out(x[2 + i], p->kernel[i], p->padding[i], p->stride[i],
                            with_dil ? p->dilation[i] : 1, p->ceil_mode);
}

static void case_max_pool(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    for (int di = 0; di < 2; di++)
        for (int i = 0; i < N_POOLS; i++) {
            const ct_dtype dt = dts[di];
            const ct_pool_params *p = &k_pools[i];
            int64_t xs[4], ys[4];
            pool_shapes(p, xs, ys, 1);
            char what[96];
            snprintf(what, sizeof what, "max_pool2d %s config %d %s", bwd ? "backward" : "forward",
                     i, ct_dtype_name(dt));
            tp x = tp_rnd(xs, 4, dt, 0, dev), y = tp_rnd(ys, 4, dt, 0, dev);
            tp ind = tp_from(ct_zeros(ys, 4, CT_INT64), dev);
            if (!bwd) {
                KCALL(what, cpuk()->max_pool2d_forward(y.c, ind.c, x.c, p),
                      k->max_pool2d_forward(y.d, ind.d, x.d, p));
                tp_check(y, tol_for(dt), what, bname);
                tp_check(ind, 0, what, bname);
            } else {
                /* indices from the CPU forward, on both backends */
                CHECK_OK(cpuk()->max_pool2d_forward(y.c, ind.c, x.c, p));
                tp ind2 = tp_from(ct_retain(ind.c), dev);
                tp gy = tp_rnd(ys, 4, dt, 0, dev);
                KCALL(what, cpuk()->max_pool2d_backward(x.c, gy.c, ind2.c, p),
                      k->max_pool2d_backward(x.d, gy.d, ind2.d, p));
                tp_check(x, tol_for(dt), what, bname);
                tp_free(ind2), tp_free(gy);
            }
            tp_free(x), tp_free(y), tp_free(ind);
        }
}

static void case_max_pool_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_max_pool(dev, k, bname, 0);
}
static void case_max_pool_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_max_pool(dev, k, bname, 1);
}
BACKEND_CASE(max_pool2d_forward, case_max_pool_fwd)
BACKEND_CASE(max_pool2d_backward, case_max_pool_bwd)

/* Max pooling with window codes and the fused ReLU (the path ct_max_pool2d and
 * ct_relu_max_pool2d take where a backend has it): outputs and codes must equal the CPU's
 * exactly (NaNs and negative values included), and so must the backward. */
static void case_max_pool_codes(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    if (!k->max_pool2d_codes_forward || !k->max_pool2d_codes_backward) {
        CHECK_MSG(0, "%s lacks the max_pool2d_codes kernels", bname);
        return;
    }
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    for (int di = 0; di < 2; di++)
        for (int i = 0; i < N_POOLS; i++)
            for (int relu = 0; relu < 2; relu++) {
                const ct_dtype dt = dts[di];
                ct_pool_params p = k_pools[i];
                p.ceil_mode = 0; /* the codes path's windows: ceil_mode is the op layer's */
                int64_t xs[4], ys[4];
                pool_shapes(&p, xs, ys, 1);
                char what[112];
                snprintf(what, sizeof what, "max_pool2d codes %s config %d relu %d %s",
                         bwd ? "backward" : "forward", i, relu, ct_dtype_name(dt));
                ct_tensor *xh = rnd(xs, 4, dt, 0);
                if (dt == CT_FLOAT32) ((float *)ct_data(xh))[5] = NAN;
                else ((double *)ct_data(xh))[5] = NAN;
                tp x = tp_from(xh, dev), y = tp_rnd(ys, 4, dt, 0, dev);
                tp codes = tp_from(ct_zeros(ys, 4, CT_UINT8), dev);
                if (!bwd) {
                    KCALL(what, cpuk()->max_pool2d_codes_forward(y.c, codes.c, x.c, &p, relu),
                          k->max_pool2d_codes_forward(y.d, codes.d, x.d, &p, relu));
                    tp_check(y, 0, what, bname);
                    tp_check(codes, 0, what, bname);
                } else {
                    CHECK_OK(cpuk()->max_pool2d_codes_forward(y.c, codes.c, x.c, &p, relu));
                    tp c2 = tp_from(ct_retain(codes.c), dev), gy = tp_rnd(ys, 4, dt, 0, dev);
                    KCALL(what, cpuk()->max_pool2d_codes_backward(x.c, gy.c, c2.c, &p),
                          k->max_pool2d_codes_backward(x.d, gy.d, c2.d, &p));
                    tp_check(x, 0, what, bname);
                    tp_free(c2), tp_free(gy);
                }
                tp_free(x), tp_free(y), tp_free(codes);
            }
}

static void case_max_pool_codes_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_max_pool_codes(dev, k, bname, 0);
}
static void case_max_pool_codes_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_max_pool_codes(dev, k, bname, 1);
}
BACKEND_CASE(max_pool2d_codes_forward, case_max_pool_codes_fwd)
BACKEND_CASE(max_pool2d_codes_backward, case_max_pool_codes_bwd)

static void case_avg_pool(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    for (int di = 0; di < 2; di++)
        for (int i = 0; i < N_POOLS; i++)
            for (int cip = 0; cip < 2; cip++) {
                const ct_dtype dt = dts[di];
                ct_pool_params p = k_pools[i];
                p.dilation[0] = p.dilation[1] = 1;
                p.count_include_pad = cip;
                int64_t xs[4], ys[4];
                pool_shapes(&p, xs, ys, 0);
                char what[96];
                snprintf(what, sizeof what, "avg_pool2d %s config %d cip %d %s",
                         bwd ? "backward" : "forward", i, cip, ct_dtype_name(dt));
                tp x = tp_rnd(xs, 4, dt, 0, dev), y = tp_rnd(ys, 4, dt, 0, dev);
                if (!bwd) {
                    KCALL(what, cpuk()->avg_pool2d_forward(y.c, x.c, &p),
                          k->avg_pool2d_forward(y.d, x.d, &p));
                    tp_check(y, tol_for(dt), what, bname);
                } else {
                    KCALL(what, cpuk()->avg_pool2d_backward(x.c, y.c, &p),
                          k->avg_pool2d_backward(x.d, y.d, &p));
                    tp_check(x, tol_for(dt), what, bname);
                }
                tp_free(x), tp_free(y);
            }
}

static void case_avg_pool_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_avg_pool(dev, k, bname, 0);
}
static void case_avg_pool_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_avg_pool(dev, k, bname, 1);
}
BACKEND_CASE(avg_pool2d_forward, case_avg_pool_fwd)
BACKEND_CASE(avg_pool2d_backward, case_avg_pool_bwd)

static void case_adaptive(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const int64_t cfg[][4] = {{7, 9, 3, 4}, {5, 5, 5, 5}, {3, 3, 5, 4}, {8, 8, 1, 1}};
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    for (int di = 0; di < 2; di++)
        for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
            const ct_dtype dt = dts[di];
            int64_t xs[4] = {2, 3, cfg[i][0], cfg[i][1]}, ys[4] = {2, 3, cfg[i][2], cfg[i][3]};
            char what[96];
            snprintf(what, sizeof what, "adaptive_avg_pool2d %s config %zu %s",
                     bwd ? "backward" : "forward", i, ct_dtype_name(dt));
            tp x = tp_rnd(xs, 4, dt, 0, dev), y = tp_rnd(ys, 4, dt, 0, dev);
            if (!bwd) {
                KCALL(what, cpuk()->adaptive_avg_pool2d_forward(y.c, x.c),
                      k->adaptive_avg_pool2d_forward(y.d, x.d));
                tp_check(y, tol_for(dt), what, bname);
            } else {
                KCALL(what, cpuk()->adaptive_avg_pool2d_backward(x.c, y.c),
                      k->adaptive_avg_pool2d_backward(x.d, y.d));
                tp_check(x, tol_for(dt), what, bname);
            }
            tp_free(x), tp_free(y);
        }
}

static void case_adaptive_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_adaptive(dev, k, bname, 0);
}
static void case_adaptive_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_adaptive(dev, k, bname, 1);
}
BACKEND_CASE(adaptive_avg_pool2d_forward, case_adaptive_fwd)
BACKEND_CASE(adaptive_avg_pool2d_backward, case_adaptive_bwd)

/* ----------------------------------------------------------------- softmax */
typedef struct {
    int64_t sh[3];
    int nd, dim;
} sm_spec;

static const sm_spec k_sms[] = {
    {{6, 10, 0}, 2, 1},   /* rows, a warp each */
    {{3, 1500, 0}, 2, 1}, /* long rows, a block each */
    {{2, 5, 7}, 3, 1},    /* inner > 1 */
    {{4, 6, 0}, 2, 0},    /* over the first dim */
};

static void case_softmax(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    for (int di = 0; di < 2; di++)
        for (size_t i = 0; i < sizeof k_sms / sizeof k_sms[0]; i++)
            for (int lg = 0; lg < 2; lg++) {
                const ct_dtype dt = dts[di];
                const sm_spec *s = &k_sms[i];
                char what[96];
                snprintf(what, sizeof what, "%s%s %s config %zu %s", lg ? "log_" : "", "softmax",
                         bwd ? "backward" : "forward", i, ct_dtype_name(dt));
                tp x = tp_rnd(s->sh, s->nd, dt, 0, dev), y = tp_rnd(s->sh, s->nd, dt, 0, dev);
                if (!bwd) {
                    KCALL(what, cpuk()->softmax_forward(y.c, x.c, s->dim, lg),
                          k->softmax_forward(y.d, x.d, s->dim, lg));
                    tp_check(y, tol_for(dt), what, bname);
                } else {
                    ct_tensor *yc = ct_empty_on(s->sh, s->nd, dt, ct_cpu());
                    CHECK_OK(cpuk()->softmax_forward(yc, x.c, s->dim, lg));
                    tp yy = tp_from(yc, dev), gy = tp_rnd(s->sh, s->nd, dt, 0, dev);
                    KCALL(what, cpuk()->softmax_backward(y.c, gy.c, yy.c, s->dim, lg),
                          k->softmax_backward(y.d, gy.d, yy.d, s->dim, lg));
                    tp_check(y, tol_for(dt), what, bname);
                    tp_free(yy), tp_free(gy);
                }
                tp_free(x), tp_free(y);
            }
}

static void case_softmax_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_softmax(dev, k, bname, 0);
}
static void case_softmax_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_softmax(dev, k, bname, 1);
}
BACKEND_CASE(softmax_forward, case_softmax_fwd)
BACKEND_CASE(softmax_backward, case_softmax_bwd)

/* ---------------------------------------------------------------- nll_loss */
static void case_nll(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    const int64_t N = 7, C = 5;
    const int64_t tgt[2][7] = {{0, 4, 2, -100, 1, 3, 2},
                               {-100, -100, -100, -100, -100, -100, -100}};
    for (int di = 0; di < 2; di++)
        for (int ti = 0; ti < 2; ti++)
            for (int red = 0; red < 3; red++) {
                const ct_dtype dt = dts[di];
                char what[96];
                snprintf(what, sizeof what, "nll_loss %s reduction %d targets %d %s",
                         bwd ? "backward" : "forward", red, ti, ct_dtype_name(dt));
                int64_t sh[2] = {N, C};
                ct_tensor *x = rnd(sh, 2, dt, 0);
                ct_tensor *lp = ct_empty_on(sh, 2, dt, ct_cpu());
                CHECK_OK(cpuk()->softmax_forward(lp, x, 1, 1));
                ct_free(x);
                tp logp = tp_from(lp, dev);
                tp t = tp_from(ct_from_data(tgt[ti], &N, 1, CT_INT64), dev);
                const int nd = red == CT_REDUCTION_NONE ? 1 : 0;
                tp out = tp_rnd(&N, nd, dt, 0, dev), tw = tp_rnd(NULL, 0, dt, 0, dev);
                if (!bwd) {
                    KCALL(what,
                          cpuk()->nll_loss_forward(out.c, tw.c, logp.c, t.c, (ct_reduction)red,
                                                   -100),
                          k->nll_loss_forward(out.d, tw.d, logp.d, t.d, (ct_reduction)red, -100));
                    tp_check(out, tol_for(dt), what, bname);
                    tp_check(tw, 0, what, bname);
                } else {
                    CHECK_OK(cpuk()->nll_loss_forward(out.c, tw.c, logp.c, t.c, (ct_reduction)red,
                                                      -100));
                    tp tw2 = tp_from(ct_retain(tw.c), dev), gout = tp_rnd(&N, nd, dt, 0, dev);
                    tp g = tp_rnd(sh, 2, dt, 0, dev);
                    KCALL(what,
                          cpuk()->nll_loss_backward(g.c, gout.c, t.c, tw2.c, (ct_reduction)red,
                                                    -100),
                          k->nll_loss_backward(g.d, gout.d, t.d, tw2.d, (ct_reduction)red, -100));
                    tp_check(g, tol_for(dt), what, bname);
                    tp_free(tw2), tp_free(gout), tp_free(g);
                }
                tp_free(logp), tp_free(t), tp_free(out), tp_free(tw);
            }
}

static void case_nll_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_nll(dev, k, bname, 0);
}
static void case_nll_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_nll(dev, k, bname, 1);
}
BACKEND_CASE(nll_loss_forward, case_nll_fwd)
BACKEND_CASE(nll_loss_backward, case_nll_bwd)

/* ----------------------------------------------------- fused cross_entropy */
static void case_ce(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    const int64_t N = 7, C = 5, tgt[7] = {0, 4, 2, -100, 1, 3, 2};
    const double smoothing[2] = {0.0, 0.1};
    for (int di = 0; di < 2; di++)
        for (int si = 0; si < 2; si++)
            for (int red = 0; red < 3; red++) {
                const ct_dtype dt = dts[di];
                char what[96];
                snprintf(what, sizeof what, "cross_entropy %s reduction %d smoothing %g %s",
                         bwd ? "backward" : "forward", red, smoothing[si], ct_dtype_name(dt));
                int64_t sh[2] = {N, C};
                const int nd = red == CT_REDUCTION_NONE ? 1 : 0;
                tp x = tp_rnd(sh, 2, dt, 0, dev), t = tp_from(ct_from_data(tgt, &N, 1, CT_INT64), dev);
                tp out = tp_rnd(&N, nd, dt, 0, dev), tw = tp_rnd(NULL, 0, dt, 0, dev);
                tp lp = tp_rnd(sh, 2, dt, 0, dev);
                if (!bwd) {
                    KCALL(what,
                          cpuk()->cross_entropy_forward(out.c, lp.c, tw.c, x.c, t.c,
                                                        (ct_reduction)red, -100, smoothing[si]),
                          k->cross_entropy_forward(out.d, lp.d, tw.d, x.d, t.d, (ct_reduction)red,
                                                   -100, smoothing[si]));
                    tp_check(out, tol_for(dt), what, bname);
                    tp_check(lp, tol_for(dt), what, bname);
                    tp_check(tw, 0, what, bname);
                } else {
                    CHECK_OK(cpuk()->cross_entropy_forward(out.c, lp.c, tw.c, x.c, t.c,
                                                           (ct_reduction)red, -100, smoothing[si]));
                    tp lp2 = tp_from(ct_retain(lp.c), dev), tw2 = tp_from(ct_retain(tw.c), dev);
                    tp gout = tp_rnd(&N, nd, dt, 0, dev), g = tp_rnd(sh, 2, dt, 0, dev);
                    KCALL(what,
                          cpuk()->cross_entropy_backward(g.c, gout.c, lp2.c, t.c, tw2.c,
                                                         (ct_reduction)red, -100, smoothing[si]),
                          k->cross_entropy_backward(g.d, gout.d, lp2.d, t.d, tw2.d,
                                                    (ct_reduction)red, -100, smoothing[si]));
                    tp_check(g, tol_for(dt), what, bname);
                    tp_free(lp2), tp_free(tw2), tp_free(gout), tp_free(g);
                }
                tp_free(x), tp_free(t), tp_free(out), tp_free(tw), tp_free(lp);
            }
}

static void case_ce_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_ce(dev, k, bname, 0);
}
static void case_ce_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_ce(dev, k, bname, 1);
}
BACKEND_CASE(cross_entropy_forward, case_ce_fwd)
BACKEND_CASE(cross_entropy_backward, case_ce_bwd)

/* ---------------------------------------------------------------- dropout */
static void case_dropout(ct_device dev, const ct_kernels *k, const char *bname) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    const double ps[] = {0.0, 0.3, 0.9};
    for (int di = 0; di < 2; di++)
        for (int pi = 0; pi < 3; pi++) {
            const ct_dtype dt = dts[di];
            char what[96];
            snprintf(what, sizeof what, "dropout p=%g %s", ps[pi], ct_dtype_name(dt));
            int64_t sh[2] = {37, 101};
            tp x = tp_rnd(sh, 2, dt, 0, dev), u = tp_from(ct_rand(sh, 2, dt), dev);
            tp y = tp_rnd(sh, 2, dt, 0, dev), m = tp_rnd(sh, 2, dt, 0, dev);
            KCALL(what, cpuk()->dropout_forward(y.c, m.c, x.c, u.c, ps[pi]),
                  k->dropout_forward(y.d, m.d, x.d, u.d, ps[pi]));
            tp_check(y, 0, what, bname);
            tp_check(m, 0, what, bname);
            tp_free(x), tp_free(u), tp_free(y), tp_free(m);
        }
}
BACKEND_CASE(dropout_forward, case_dropout)

/* ------------------------------------------- fused conv2d + relu + max_pool2d */
static void case_conv_relu_pool(ct_device dev, const ct_kernels *k, const char *bname) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    const struct {
        int64_t x[4], w[4];
        ct_conv_params p;
        ct_pool_params pp;
    } specs[] = {
        /* 3x3 padding 1: Winograd on AVX-512 CPUs, pooled 2x2 */
        {{2, 3, 8, 8}, {4, 3, 3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, {{2, 2}, {2, 2}, {0, 0}, {1, 1}, 0, 0}},
        /* rows of 32 pixels: the direct kernels' pooled epilogue */
        {{1, 3, 32, 32}, {6, 3, 3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, {{2, 2}, {2, 2}, {0, 0}, {1, 1}, 0, 0}},
        /* strided 5x3 convolution, 3x3 stride-2 pooling with padding */
        {{2, 4, 11, 9}, {5, 4, 5, 3}, {{2, 1}, {1, 0}, {1, 1}, 1}, {{3, 3}, {2, 2}, {1, 1}, {1, 1}, 0, 0}},
    };
    for (int di = 0; di < 2; di++)
        for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
            const ct_dtype dt = dts[di];
            const ct_conv_params *p = &specs[i].p;
            const ct_pool_params *pp = &specs[i].pp;
            int64_t Ho = (specs[i].x[2] + 2 * p->padding[0] - (specs[i].w[2] - 1) - 1) / p->stride[0] + 1;
            int64_t Wo = (specs[i].x[3] + 2 * p->padding[1] - (specs[i].w[3] - 1) - 1) / p->stride[1] + 1;
            int64_t ysh[4] = {specs[i].x[0], specs[i].w[0],
                              (Ho + 2 * pp->padding[0] - pp->kernel[0]) / pp->stride[0] + 1,
                              (Wo + 2 * pp->padding[1] - pp->kernel[1]) / pp->stride[1] + 1};
            char what[96];
            snprintf(what, sizeof what, "conv2d+relu+max_pool2d config %zu %s", i, ct_dtype_name(dt));
            tp x = tp_rnd(specs[i].x, 4, dt, 0, dev), w = tp_rnd(specs[i].w, 4, dt, 0, dev);
            tp b = tp_rnd(&specs[i].w[0], 1, dt, 0, dev), y = tp_rnd(ysh, 4, dt, 0, dev);
            tp codes = tp_from(ct_zeros(ysh, 4, CT_UINT8), dev);
            KCALL(what, cpuk()->conv2d_relu_max_pool2d_forward(y.c, codes.c, x.c, w.c, b.c, p, pp),
                  k->conv2d_relu_max_pool2d_forward(y.d, codes.d, x.d, w.d, b.d, p, pp));
            tp_check(y, tol_for(dt), what, bname);
            tp_check(codes, 0, what, bname);
            tp_free(x), tp_free(w), tp_free(b), tp_free(y), tp_free(codes);
        }
}
BACKEND_CASE(conv2d_relu_max_pool2d_forward, case_conv_relu_pool)

/* -------------------------------------------------------------- batch_norm */
static void case_bn(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    const int64_t shapes[][4] = {{4, 3, 5, 5}, {6, 3, 0, 0}, {2, 70, 40, 40}};
    const int nds[] = {4, 2, 4};
    for (int di = 0; di < 2; di++)
        for (int si = 0; si < 3; si++)
            for (int training = 0; training < 2; training++) {
                const ct_dtype dt = dts[di];
                const int64_t *sh = shapes[si];
                const int nd = nds[si];
                const int64_t C = sh[1];
                char what[96];
                snprintf(what, sizeof what, "batch_norm %s shape %d training %d %s",
                         bwd ? "backward" : "forward", si, training, ct_dtype_name(dt));
                tp x = tp_rnd(sh, nd, dt, 0, dev), w = tp_rnd(&C, 1, dt, 0, dev);
                tp b = tp_rnd(&C, 1, dt, 0, dev), rm = tp_rnd(&C, 1, dt, 0, dev);
                tp rv = tp_rnd(&C, 1, dt, 1, dev);
                tp y = tp_rnd(sh, nd, dt, 0, dev);
                tp sm = tp_rnd(&C, 1, dt, 0, dev), si2 = tp_rnd(&C, 1, dt, 0, dev);
                if (!bwd) {
                    KCALL(what,
                          cpuk()->batch_norm_forward(y.c, sm.c, si2.c, x.c, w.c, b.c, rm.c, rv.c,
                                                     training, 0.1, 1e-5),
                          k->batch_norm_forward(y.d, sm.d, si2.d, x.d, w.d, b.d, rm.d, rv.d,
                                                training, 0.1, 1e-5));
                    tp_check(y, tol_for(dt), what, bname);
                    tp_check(sm, tol_for(dt), what, bname);
                    tp_check(si2, tol_for(dt), what, bname);
                    tp_check(rm, tol_for(dt), what, bname);
                    tp_check(rv, tol_for(dt), what, bname);
                } else {
                    CHECK_OK(cpuk()->batch_norm_forward(y.c, sm.c, si2.c, x.c, w.c, b.c, rm.c,
                                                        rv.c, training, 0.1, 1e-5));
                    tp sm2 = tp_from(ct_retain(sm.c), dev), is2 = tp_from(ct_retain(si2.c), dev);
                    tp gy = tp_rnd(sh, nd, dt, 0, dev), gx = tp_rnd(sh, nd, dt, 0, dev);
                    tp gw = tp_rnd(&C, 1, dt, 0, dev), gb = tp_rnd(&C, 1, dt, 0, dev);
                    KCALL(what,
                          cpuk()->batch_norm_backward(gx.c, gw.c, gb.c, gy.c, x.c, w.c, sm2.c,
                                                      is2.c, training),
                          k->batch_norm_backward(gx.d, gw.d, gb.d, gy.d, x.d, w.d, sm2.d, is2.d,
                                                 training));
                    tp_check(gx, tol_for(dt), what, bname);
                    tp_check(gw, tol_for(dt), what, bname);
                    tp_check(gb, tol_for(dt), what, bname);
                    /* input gradient only, no weight */
                    KCALL(what,
                          cpuk()->batch_norm_backward(gx.c, NULL, NULL, gy.c, x.c, NULL, sm2.c,
                                                      is2.c, training),
                          k->batch_norm_backward(gx.d, NULL, NULL, gy.d, x.d, NULL, sm2.d, is2.d,
                                                 training));
                    tp_check(gx, tol_for(dt), what, bname);
                    tp_free(sm2), tp_free(is2), tp_free(gy), tp_free(gx), tp_free(gw),
                        tp_free(gb);
                }
                tp_free(x), tp_free(w), tp_free(b), tp_free(rm), tp_free(rv), tp_free(y),
                    tp_free(sm), tp_free(si2);
            }
}

static void case_bn_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_bn(dev, k, bname, 0);
}
static void case_bn_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_bn(dev, k, bname, 1);
}
BACKEND_CASE(batch_norm_forward, case_bn_fwd)
BACKEND_CASE(batch_norm_backward, case_bn_bwd)

/* -------------------------------------------------------------- layer_norm */
static void case_ln(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    const int64_t MN[][2] = {{6, 37}, {6, 8}, {3, 3000}, {2000, 16}};
    for (int di = 0; di < 2; di++)
        for (int si = 0; si < 4; si++)
            for (int affine = 0; affine < 2; affine++) {
                const ct_dtype dt = dts[di];
                const int64_t M = MN[si][0], N = MN[si][1];
                int64_t sh[2] = {M, N};
                char what[96];
                snprintf(what, sizeof what, "layer_norm %s [%lld, %lld] affine %d %s",
                         bwd ? "backward" : "forward", (long long)M, (long long)N, affine,
                         ct_dtype_name(dt));
                tp x = tp_rnd(sh, 2, dt, 0, dev), y = tp_rnd(sh, 2, dt, 0, dev);
                tp w = {NULL, NULL}, b = {NULL, NULL};
                if (affine) w = tp_rnd(&N, 1, dt, 0, dev), b = tp_rnd(&N, 1, dt, 0, dev);
                tp mean = tp_rnd(&M, 1, dt, 0, dev), rstd = tp_rnd(&M, 1, dt, 0, dev);
                if (!bwd) {
                    KCALL(what,
                          cpuk()->layer_norm_forward(y.c, mean.c, rstd.c, x.c, w.c, b.c, M, N,
                                                     1e-5),
                          k->layer_norm_forward(y.d, mean.d, rstd.d, x.d, w.d, b.d, M, N, 1e-5));
                    tp_check(y, tol_for(dt), what, bname);
                    tp_check(mean, tol_for(dt), what, bname);
                    tp_check(rstd, tol_for(dt), what, bname);
                } else {
                    CHECK_OK(cpuk()->layer_norm_forward(y.c, mean.c, rstd.c, x.c, w.c, b.c, M, N,
                                                        1e-5));
                    tp m2 = tp_from(ct_retain(mean.c), dev), r2 = tp_from(ct_retain(rstd.c), dev);
                    tp gy = tp_rnd(sh, 2, dt, 0, dev), gx = tp_rnd(sh, 2, dt, 0, dev);
                    tp gw = tp_rnd(&N, 1, dt, 0, dev), gb = tp_rnd(&N, 1, dt, 0, dev);
                    KCALL(what,
                          cpuk()->layer_norm_backward(gx.c, gw.c, gb.c, gy.c, x.c, m2.c, r2.c, w.c,
                                                      M, N),
                          k->layer_norm_backward(gx.d, gw.d, gb.d, gy.d, x.d, m2.d, r2.d, w.d, M,
                                                 N));
                    tp_check(gx, tol_for(dt), what, bname);
                    tp_check(gw, tol_for(dt), what, bname);
                    tp_check(gb, tol_for(dt), what, bname);
                    tp_free(m2), tp_free(r2), tp_free(gy), tp_free(gx), tp_free(gw), tp_free(gb);
                }
                tp_free(x), tp_free(y), tp_free(w), tp_free(b), tp_free(mean), tp_free(rstd);
            }
}

static void case_ln_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_ln(dev, k, bname, 0);
}
static void case_ln_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_ln(dev, k, bname, 1);
}
BACKEND_CASE(layer_norm_forward, case_ln_fwd)
BACKEND_CASE(layer_norm_backward, case_ln_bwd)

/* ------------------------------------------------------ CUDA availability */
/* ct_cuda_status answers quickly, and when CUDA cannot be used says why and how to fix
 * it; a CUDA allocation then fails with that reason instead of crashing. */
TEST(backends_cuda_status_reason) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int avail = -1;
    const char *r = ct_cuda_status(&avail);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    CHECK(r != NULL);
    CHECK(avail == 0 || avail == 1);
    fprintf(stderr, "    cuda: %s (%.3f s)\n", r ? r : "(null)", secs);
    char name[256];
    if (avail) {
        CHECK(r && strcmp(r, "available") == 0);
        const int n = ct_cuda_device_count();
        CHECK_MSG(n >= 1, "%d CUDA devices while CUDA is available", n);
        CHECK_OK(ct_cuda_device_name(0, name, sizeof name));
        CHECK_MSG(strstr(name, " SMs, ") != NULL, "cuda:0 described as \"%s\"", name);
        CHECK_ERR_INT(ct_cuda_device_name(n, name, sizeof name), "no such device");
        return;
    }
    CHECK(ct_cuda_device_count() == 0);
    CHECK_ERR_INT(ct_cuda_device_name(0, NULL, 0), "NULL");
    CHECK_ERR_INT(ct_cuda_device_name(0, name, sizeof name), "cuda unavailable");
    CHECK_MSG(secs < 1.0, "ct_cuda_status took %.2f s without a usable GPU", secs);
    CHECK_MSG(r && strlen(r) > 20, "reason too short: \"%s\"", r ? r : "");
    CHECK_MSG(r && (strstr(r, "Fix") || strstr(r, "install") || strstr(r, "rebuild")),
              "reason says no fix: \"%s\"", r ? r : "");
    int64_t n = 4;
    ct_clear_error();
    ct_tensor *t = ct_empty_on(&n, 1, CT_FLOAT32, (ct_device){CT_CUDA, 0});
    CHECK(t == NULL);
    CHECK_MSG(strstr(ct_last_error(), "cuda unavailable") != NULL, "error: %s", ct_last_error());
    ct_free(t);
}

/* --------------------------------------------------------- plugin extras */
/* The plugin's own API (src/backends/cuda/cuda_plugin.h), from the loaded plugin. */
static void *plugin_sym(const char *name) { return ct_backend_proc(CT_CUDA, name); }

/* Mirrors ct_cuda_memory_stats in src/backends/cuda/cuda_plugin.h. */
typedef struct {
    size_t allocated, reserved, peak_allocated, peak_reserved;
    uint64_t alloc_calls, cache_hits, cuda_mallocs, ooms;
} mem_stats;

TEST(backends_cuda_caching_allocator) {
    if (!cuda_ready()) SKIP(g_why);
    const ct_device dev[1] = {{CT_CUDA, 0}};
    int (*stats)(int, mem_stats *) =
        (int (*)(int, mem_stats *))plugin_sym("ct_cuda_memory_stats_get");
    int (*empty)(int) = (int (*)(int))plugin_sym("ct_cuda_empty_cache");
    CHECK(stats != NULL && empty != NULL);
    if (!stats || !empty) return;
    mem_stats s0, s1, s2, s3;
    int64_t sh[2] = {1000, 1000}; /* 4 MB */
    CHECK_OK(stats(0, &s0));
    ct_tensor *a = ct_empty_on(sh, 2, CT_FLOAT32, dev[0]);
    CHECK_NN(a);
    CHECK_OK(stats(0, &s1));
    CHECK(s1.allocated >= s0.allocated + 4000000);
    CHECK(s1.peak_allocated >= s1.allocated);
    ct_free(a);
    /* the same size again comes from the cache */
    ct_tensor *b = ct_empty_on(sh, 2, CT_FLOAT32, dev[0]);
    CHECK_NN(b);
    CHECK_OK(stats(0, &s2));
    CHECK(s2.cache_hits > s1.cache_hits);
    CHECK(s2.cuda_mallocs == s1.cuda_mallocs);
    CHECK(s2.reserved == s1.reserved);
    ct_free(b);
    CHECK_OK(empty(0));
    CHECK_OK(stats(0, &s3));
    CHECK(s3.reserved < s2.reserved);
    CHECK(s3.allocated == s0.allocated);
    /* an impossible allocation fails with the statistics in the message */
    int64_t huge = (int64_t)1 << 47;
    ct_clear_error();
    ct_tensor *h = ct_empty_on(&huge, 1, CT_UINT8, dev[0]);
    CHECK(h == NULL);
    CHECK_MSG(strstr(ct_last_error(), "out of memory") && strstr(ct_last_error(), "reserved") &&
                  strstr(ct_last_error(), "Try"),
              "OOM message: %s", ct_last_error());
    ct_free(h);
}

/* ------------------------------------------------------- fused optimizers */
/* 30 parameters: more than one kernel launch's tensor list (24 on CUDA), one larger than a
 * kernel chunk (65536 elements) in the middle of a list, and an empty one. */
enum { NP = 30 };

typedef struct {
    int adam, nesterov, first, decoupled, amsgrad, maximize;
    double mom, damp, wd;
} opt_cfg;

static const opt_cfg k_opt_cfgs[] = {
    {0, 1, 0, 0, 0, 0, 0.9, 0.1, 0.01},  /* SGD nesterov, dampening, weight decay */
    {0, 0, 1, 0, 0, 0, 0.9, 0.0, 0.0},   /* SGD momentum, first step: buffer = gradient */
    {0, 0, 0, 0, 0, 1, 0.0, 0.0, 0.001}, /* plain SGD, maximize */
    {1, 0, 0, 1, 0, 0, 0, 0, 0.05},      /* AdamW */
    {1, 0, 0, 0, 0, 0, 0, 0, 0.01},      /* Adam with L2 weight decay */
    {1, 0, 0, 1, 1, 1, 0, 0, 0.01},      /* AdamW, amsgrad, maximize */
};

static void case_optim(ct_device dev, const ct_kernels *k, const char *bname, int adam) {
    int64_t sizes[NP];
    for (int i = 0; i < NP; i++) sizes[i] = 1 + (i * 37) % 300;
    sizes[3] = 70000, sizes[22] = 140000, sizes[7] = 0;
    for (int di = 0; di < 2; di++)
        for (size_t ci = 0; ci < sizeof k_opt_cfgs / sizeof *k_opt_cfgs; ci++) {
            const opt_cfg *c = &k_opt_cfgs[ci];
            if (c->adam != adam) continue;
            const ct_dtype dt = di ? CT_FLOAT64 : CT_FLOAT32;
            tp p[NP], g[NP], m[NP], v[NP], vm[NP];
            ct_tensor *pc[NP], *gc[NP], *mc[NP], *vc[NP], *vmc[NP];
            ct_tensor *pd[NP], *gd[NP], *md[NP], *vd[NP], *vmd[NP];
            for (int i = 0; i < NP; i++) {
                p[i] = tp_rnd(&sizes[i], 1, dt, 0, dev), g[i] = tp_rnd(&sizes[i], 1, dt, 0, dev);
                m[i] = tp_rnd(&sizes[i], 1, dt, 0, dev), v[i] = tp_rnd(&sizes[i], 1, dt, 2, dev);
                vm[i] = tp_rnd(&sizes[i], 1, dt, 2, dev);
                pc[i] = p[i].c, gc[i] = g[i].c, mc[i] = m[i].c, vc[i] = v[i].c, vmc[i] = vm[i].c;
                pd[i] = p[i].d, gd[i] = g[i].d, md[i] = m[i].d, vd[i] = v[i].d, vmd[i] = vm[i].d;
            }
            char what[96];
            snprintf(what, sizeof what, "%s config %zu %s", adam ? "adam_step" : "sgd_step", ci,
                     ct_dtype_name(dt));
            if (adam) {
                ct_adam_args a = {0.1, 0.9, 0.999, 1e-8, c->wd, c->decoupled, c->amsgrad,
                                  c->maximize, 3};
                KCALL(what, cpuk()->adam_step(pc, gc, mc, vc, vmc, NP, &a),
                      k->adam_step(pd, gd, md, vd, vmd, NP, &a));
            } else {
                ct_sgd_args a = {0.1, c->mom, c->damp, c->wd, c->nesterov, c->maximize};
                KCALL(what, cpuk()->sgd_step(pc, gc, c->mom != 0 ? mc : NULL, NP, &a, c->first),
                      k->sgd_step(pd, gd, c->mom != 0 ? md : NULL, NP, &a, c->first));
            }
            for (int i = 0; i < NP; i++) {
                tp_check(p[i], tol_for(dt), what, bname);
                tp_check(m[i], tol_for(dt), what, bname);
                if (adam) tp_check(v[i], tol_for(dt), what, bname);
                if (c->amsgrad) tp_check(vm[i], tol_for(dt), what, bname);
                tp_free(p[i]), tp_free(g[i]), tp_free(m[i]), tp_free(v[i]), tp_free(vm[i]);
            }
        }
}

static void case_sgd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_optim(dev, k, bname, 0);
}
static void case_adam(ct_device dev, const ct_kernels *k, const char *bname) {
    case_optim(dev, k, bname, 1);
}
BACKEND_CASE(sgd_step, case_sgd)
BACKEND_CASE(adam_step, case_adam)

/* ||got - want|| / ||want|| of a CUDA float32 result against a CPU one. */
static double rel_err_vs(const ct_tensor *got_dev, const ct_tensor *want) {
    ct_tensor *h = ct_to_device(got_dev, ct_cpu());
    ct_tensor *hc = h ? ct_contiguous(h) : NULL, *wc = ct_contiguous(want);
    double num = 0, den = 0;
    if (hc && wc && ct_numel(hc) == ct_numel(wc)) {
        const float *g = ct_data(hc), *w = ct_data(wc);
        for (int64_t i = 0; i < ct_numel(wc); i++) {
            num += ((double)g[i] - w[i]) * ((double)g[i] - w[i]);
            den += (double)w[i] * w[i];
        }
    } else {
        num = 1, den = 0;
    }
    ct_free(h), ct_free(hc), ct_free(wc);
    return den > 0 ? sqrt(num / den) : INFINITY;
}

/* CTORCH_TF32 / ct_cuda_set_tf32 reaches cuBLAS and cuDNN: float32 matmul and conv2d are
 * full float32 with TF32 off (the default), and within TF32's precision with it on; the
 * matmul then really uses TF32 (its error is well above float32's). */
TEST(backends_cuda_tf32_switch) {
    if (!cuda_ready()) SKIP(g_why);
    void (*set_tf32)(int) = (void (*)(int))plugin_sym("ct_cuda_set_tf32");
    int (*get_tf32)(void) = (int (*)(void))plugin_sym("ct_cuda_get_tf32");
    CHECK(set_tf32 != NULL && get_tf32 != NULL);
    if (!set_tf32 || !get_tf32) return;
    const int saved = get_tf32();
    const ct_device dev = {CT_CUDA, 0};
    int64_t as[2] = {64, 256}, bs[2] = {256, 48}, xs[4] = {4, 16, 12, 12}, ws[4] = {8, 16, 3, 3};
    ct_tensor *a = rnd(as, 2, CT_FLOAT32, 0), *b = rnd(bs, 2, CT_FLOAT32, 0);
    ct_tensor *x = rnd(xs, 4, CT_FLOAT32, 0), *w = rnd(ws, 4, CT_FLOAT32, 0);
    ct_tensor *ad = ct_to_device(a, dev), *bd = ct_to_device(b, dev);
    ct_tensor *xd = ct_to_device(x, dev), *wd = ct_to_device(w, dev);
    const int st[2] = {1, 1}, pd[2] = {1, 1}, dl[2] = {1, 1};
    ct_tensor *mm = ct_matmul(a, b), *cv = ct_conv2d(x, w, NULL, st, pd, dl, 1);
    for (int on = 0; on < 2; on++) {
        set_tf32(on);
        ct_tensor *mmd = ct_matmul(ad, bd), *cvd = ct_conv2d(xd, wd, NULL, st, pd, dl, 1);
        const double em = rel_err_vs(mmd, mm), ec = rel_err_vs(cvd, cv);
        fprintf(stderr, "    tf32 %s: matmul relative error %.2e, conv2d %.2e\n",
                on ? "on " : "off", em, ec);
        if (!on) {
            CHECK_MSG(em < 1e-5 && ec < 1e-5,
                      "TF32 off: matmul %.2e, conv2d %.2e (want full float32, < 1e-5)", em, ec);
        } else {
            CHECK_MSG(em < 5e-3 && ec < 5e-3, "TF32 on: matmul %.2e, conv2d %.2e (want < 5e-3)",
                      em, ec);
            CHECK_MSG(em > 2e-5, "TF32 on: matmul error %.2e is float32's: TF32 not used", em);
        }
        ct_free(mmd), ct_free(cvd);
    }
    set_tf32(saved);
    ct_free(a), ct_free(b), ct_free(x), ct_free(w), ct_free(ad), ct_free(bd), ct_free(xd);
    ct_free(wd), ct_free(mm), ct_free(cv);
}

/* An out-of-range class index found by the nll_loss kernel is reported, naming the target,
 * at the next synchronisation (here: the copy of the loss to the CPU). */
TEST(backends_cuda_nll_target_out_of_range) {
    if (!cuda_ready()) SKIP(g_why);
    const ct_device dev = {CT_CUDA, 0};
    int64_t sh[2] = {4, 5}, n = 4, tg[4] = {1, 7, 0, 2};
    ct_tensor *x = rnd(sh, 2, CT_FLOAT32, 0), *t = ct_from_data(tg, &n, 1, CT_INT64);
    ct_tensor *xd = ct_to_device(x, dev), *td = ct_to_device(t, dev);
    ct_tensor *lp = ct_log_softmax(xd, 1);
    ct_clear_error();
    /* with CTORCH_CUDA_SYNC=1 the op itself fails; otherwise the next synchronisation */
    ct_tensor *loss = lp ? ct_nll_loss(lp, td, CT_REDUCTION_MEAN, -100) : NULL;
    ct_tensor *h = loss ? ct_to_device(loss, ct_cpu()) : NULL;
    CHECK_MSG(h == NULL, "an out-of-range target must make the synchronisation fail");
    CHECK_MSG(strstr(ct_last_error(), "target 7 at position 1") != NULL, "error: %s",
              ct_last_error());
    /* reported once: the device is usable afterwards */
    ct_tensor *again = ct_to_device(xd, ct_cpu());
    CHECK_NN(again);
    ct_free(again), ct_free(h), ct_free(loss), ct_free(lp), ct_free(xd), ct_free(td);
    ct_free(x), ct_free(t);
}

/* A NaN in one query row makes that row of the CUDA attention's output NaN and leaves the
 * others equal to the CPU's (tests/test_attention.c checks the CPU). */
TEST(backends_cuda_sdpa_nan_row) {
    if (!cuda_ready()) SKIP(g_why);
    enum { L = 9, S = 40, E = 8 };
    const ct_device dev = {CT_CUDA, 0};
    int64_t sq[3] = {1, L, E}, sk[3] = {1, S, E};
    ct_tensor *q0 = rnd(sq, 3, CT_FLOAT32, 0), *k = rnd(sk, 3, CT_FLOAT32, 1);
    ct_tensor *v = rnd(sk, 3, CT_FLOAT32, 2);
    float qd[L * E], got[L * E], want[L * E];
    CHECK(ct_copy_to_buffer(q0, qd, sizeof qd) == 0);
    qd[4 * E + 1] = NAN;
    ct_tensor *q = ct_from_data(qd, sq, 3, CT_FLOAT32);
    ct_tensor *qg = ct_to_device(q, dev), *kg = ct_to_device(k, dev), *vg = ct_to_device(v, dev);
    ct_tensor *yc = ct_scaled_dot_product_attention(q, k, v, NULL, 0.0, 0, 0.0);
    ct_tensor *yg = qg && kg && vg ? ct_scaled_dot_product_attention(qg, kg, vg, NULL, 0.0, 0, 0.0)
                                   : NULL;
    ct_tensor *yh = yg ? ct_to_device(yg, ct_cpu()) : NULL;
    CHECK(yc && yh && ct_copy_to_buffer(yh, got, sizeof got) == 0 &&
          ct_copy_to_buffer(yc, want, sizeof want) == 0);
    for (int i = 0; yh && i < L * E; i++)
        CHECK_MSG(i / E == 4 ? isnan(got[i]) : fabsf(got[i] - want[i]) <= 1e-5f,
                  "element %d: cuda %g cpu %g", i, got[i], want[i]);
    ct_free(yh), ct_free(yg), ct_free(yc), ct_free(qg), ct_free(kg), ct_free(vg);
    ct_free(q), ct_free(q0), ct_free(k), ct_free(v);
}

/* ------------------------------------------------------ op layer, end to end */
/* A small CNN (conv, batch_norm, relu, max_pool, linear, cross_entropy) forward and
 * backward through the public API on the CPU and on each other backend. */
static void case_cnn(ct_device dev, const ct_kernels *k, const char *bname) {
    (void)k;
    int64_t xs[4] = {4, 3, 8, 8}, ws[4] = {6, 3, 3, 3}, c6 = 6, ls[2] = {10, 6 * 4 * 4}, l10 = 10;
    int64_t tg[4] = {1, 7, 3, 3}, four = 4;
    ct_tensor *cpu[6] = {rnd(xs, 4, CT_FLOAT32, 0), rnd(ws, 4, CT_FLOAT32, 0),
                         rnd(&c6, 1, CT_FLOAT32, 0), rnd(ls, 2, CT_FLOAT32, 0),
                         rnd(&l10, 1, CT_FLOAT32, 0), ct_from_data(tg, &four, 1, CT_INT64)};
    ct_tensor *gpu[6];
    for (int i = 0; i < 6; i++) gpu[i] = ct_to_device(cpu[i], dev);
    ct_tensor *loss[2], *grads[2][5];
    for (int side = 0; side < 2; side++) {
        ct_tensor **t = side ? gpu : cpu;
        for (int i = 1; i < 5; i++) ct_set_requires_grad(t[i], 1);
        const int st[2] = {1, 1}, pd[2] = {1, 1}, dl[2] = {1, 1}, kk[2] = {2, 2};
        /* relu before batch_norm: after a batch_norm in training mode the conv bias
         * gradient is zero up to rounding, and a relative comparison of rounding noise
         * would say nothing */
        ct_tensor *h = ct_conv2d(t[0], t[1], t[2], st, pd, dl, 1);
        ct_tensor *hr = h ? ct_relu(h) : NULL;
        ct_tensor *hb = hr ? ct_batch_norm(hr, NULL, NULL, NULL, NULL, 1, 0.1, 1e-5) : NULL;
        ct_tensor *hp = hb ? ct_max_pool2d(hb, kk, kk, NULL, NULL, 0) : NULL;
        ct_tensor *hf = hp ? ct_flatten(hp, 1, -1) : NULL;
        ct_tensor *lo = hf ? ct_linear(hf, t[3], t[4]) : NULL;
        loss[side] = lo ? ct_cross_entropy(lo, t[5], CT_REDUCTION_MEAN, 0.1, -100) : NULL;
        CHECK_MSG(loss[side] != NULL, "forward on %s: %s", side ? bname : "cpu", ct_last_error());
        if (loss[side]) CHECK_OK(ct_backward(loss[side], NULL, 0));
        for (int i = 0; i < 5; i++) grads[side][i] = i ? ct_grad(t[i]) : NULL;
        ct_free(h), ct_free(hb), ct_free(hr), ct_free(hp), ct_free(hf), ct_free(lo);
    }
    tp l = {loss[0], loss[1]};
    tp_check(l, 1e-4, "cnn loss", bname);
    const char *names[5] = {"", "conv weight grad", "conv bias grad", "linear weight grad",
                            "linear bias grad"};
    for (int i = 1; i < 5; i++) {
        tp g = {grads[0][i], grads[1][i]};
        if (g.c && g.d) tp_check(g, 1e-4, names[i], bname);
        else CHECK_MSG(0, "%s missing", names[i]);
    }
    ct_free(loss[0]), ct_free(loss[1]);
    for (int i = 0; i < 6; i++) ct_free(cpu[i]), ct_free(gpu[i]);
}

TEST(backends_ops_cnn_forward_backward) {
    if (backend_run_cases(case_cnn, g_why, sizeof g_why) == 0) SKIP(g_why);
}
