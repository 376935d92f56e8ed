/* Pointwise ops and activations: forward/backward against PyTorch fixtures (also with
 * non-contiguous inputs), float64 gradcheck, and error paths. */
#include "test.h"

#include "core/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef ct_tensor *(*un_fn)(const ct_tensor *);
typedef ct_tensor *(*bin_fn)(const ct_tensor *, const ct_tensor *);

/* The unary cases: every row of the op table (src/core/op_tables.h) with its test
 * arguments, fixture "<name>.<k>" in unary.ctf (tests/fixtures/gen_pointwise.py), and pow
 * with an integer exponent on inputs of both signs. A row without fixtures fails here. */
typedef struct {
    const char *name;
    ct_unop op;
    double p1, p2;
    int positive;
} un_case;

#define UN_CASE(ID, name, node, dtypes, saves, api, fwd, der, p1, p2, domain)               \
    {#name, CT_UN_##ID, p1, p2, CT_DOMAIN_##domain == CT_DOMAIN_POS},
static const un_case UNARY[] = {CT_UNARY_OPS(UN_CASE){"pow3", CT_UN_POW, 3, 0, 0}};
_Static_assert(sizeof UNARY / sizeof *UNARY == CT_UN_COUNT + 1, "one case per unary op");

/* A unary case as a function of one tensor (for check_case and gradcheck). */
static _Thread_local const un_case *t_case;
static ct_tensor *run_unary(const ct_tensor *x) {
    return ct__unary(t_case->op, x, t_case->p1, t_case->p2);
}

/* The binary cases: every row of CT_BINARY_OPS with its public ct_<name>(a, b) (a row
 * without a declaration in ctorch.h fails to compile here), fixture "<name>.<k>" in
 * binary.ctf (gen_pointwise.py: forward and gradients, or forward only for the rows with
 * a bool result). */
#define BIN_ROW(ID, name, node, result, fwd) {#name, ct_##name, CT_BIN_##ID, CT_RESULT_##result},
static const struct {
    const char *name;
    bin_fn fn;
    ct_binop op;
    int to_bool;
} BINARY[] = {CT_BINARY_OPS(BIN_ROW)};
_Static_assert(sizeof BINARY / sizeof *BINARY == CT_BIN_COUNT, "one case per binary op");

/* Runs fn on fixture inputs (optionally made non-contiguous) and compares y and grads. */
static void check_case(ct_fixture *fx, const char *prefix, int nin, void *fn, int noncontig) {
    char key[128], what[160];
    ct_tensor *x[2] = {0}, *xin[2] = {0};
    for (int i = 0; i < nin; i++) {
        snprintf(key, sizeof key, "%s.x%d", prefix, i);
        ct_tensor *raw = ct_fixture_get(fx, key);
        if (!raw) return;
        x[i] = noncontig ? ct_test_noncontig(raw) : ct_retain(raw);
        ct_free(raw);
        CHECK_OK(ct_set_requires_grad(x[i], 1));
        xin[i] = ct_retain(x[i]);
    }
    ct_tensor *y = nin == 1 ? ((un_fn)fn)(xin[0]) : ((bin_fn)fn)(xin[0], xin[1]);
    CHECK_NN(y);
    snprintf(key, sizeof key, "%s.y", prefix);
    ct_tensor *want = ct_fixture_get(fx, key);
    snprintf(what, sizeof what, "%s%s forward", prefix, noncontig ? " (non-contiguous)" : "");
    CHECK_CLOSE(y, want, 1e-5, what);
    snprintf(key, sizeof key, "%s.gy", prefix);
    ct_tensor *gy = ct_fixture_get(fx, key);
    if (y) CHECK_OK(ct_backward(y, gy, 0));
    for (int i = 0; i < nin; i++) {
        snprintf(key, sizeof key, "%s.gx%d", prefix, i);
        ct_tensor *gw = ct_fixture_get(fx, key);
        snprintf(what, sizeof what, "%s grad %d%s", prefix, i, noncontig ? " (non-contiguous)" : "");
        CHECK_CLOSE(ct_grad(x[i]), gw, 1e-5, what);
        ct_free(gw);
        ct_free(x[i]);
        ct_free(xin[i]);
    }
    ct_free(y);
    ct_free(want);
    ct_free(gy);
}

TEST(pointwise_unary_vs_torch) {
    ct_fixture *fx = ct_fixture_load("unary");
    if (!fx) return;
    char prefix[64];
    for (size_t u = 0; u < sizeof UNARY / sizeof *UNARY; u++)
        for (int k = 0; k < 3; k++)
            for (int nc = 0; nc < 2; nc++) {
                snprintf(prefix, sizeof prefix, "%s.%d", UNARY[u].name, k);
                t_case = &UNARY[u];
                check_case(fx, prefix, 1, (void *)run_unary, nc);
            }
    ct_fixture_free(fx);
}

/* The public wrappers compute their table row: the generated ct_<name>(x) of every row
 * whose api column is A0, and the hand-written ones with scalars. */
#define A0_ROW(ID, name, node, dtypes, saves, api, ...) CT_IF_##api({#name, ct_##name, CT_UN_##ID, 0, 0},)
static ct_tensor *pow25(const ct_tensor *x) { return ct_pow_scalar(x, 2.5); }
static ct_tensor *clampf(const ct_tensor *x) { return ct_clamp(x, -0.5, 0.7); }
static ct_tensor *leaky(const ct_tensor *x) { return ct_leaky_relu(x, 0.1); }
static ct_tensor *hardtanhf(const ct_tensor *x) { return ct_hardtanh(x, -0.5, 0.7); }
static ct_tensor *relu6f(const ct_tensor *x) { return ct_relu6(x); }
static ct_tensor *gelu_exact(const ct_tensor *x) { return ct_gelu(x, 0); }
static ct_tensor *gelu_tanh(const ct_tensor *x) { return ct_gelu(x, 1); }
static ct_tensor *add_s(const ct_tensor *x) { return ct_add_scalar(x, 1.5); }
static ct_tensor *mul_s(const ct_tensor *x) { return ct_mul_scalar(x, -2.0); }
static const struct {
    const char *name;
    un_fn fn;
    ct_unop op;
    double p1, p2;
} WRAPPERS[] = {CT_UNARY_OPS(A0_ROW){"pow_scalar", pow25, CT_UN_POW, 2.5, 0},
                {"clamp", clampf, CT_UN_CLAMP, -0.5, 0.7},
                {"leaky_relu", leaky, CT_UN_LEAKY_RELU, 0.1, 0},
                {"hardtanh", hardtanhf, CT_UN_HARDTANH, -0.5, 0.7},
                {"relu6", relu6f, CT_UN_HARDTANH, 0, 6},
                {"gelu", gelu_exact, CT_UN_GELU, 0, 0},
                {"gelu tanh", gelu_tanh, CT_UN_GELU_TANH, 0, 0},
                {"add_scalar", add_s, CT_UN_ADD_SCALAR, 1.5, 0},
                {"mul_scalar", mul_s, CT_UN_MUL_SCALAR, -2.0, 0}};

TEST(pointwise_public_wrappers_are_their_table_rows) {
    int64_t sh[2] = {3, 5};
    ct_tensor *x = ct_rand(sh, 2, CT_FLOAT64);
    CHECK_OK(ct_set_requires_grad(x, 1));
    for (size_t i = 0; i < sizeof WRAPPERS / sizeof *WRAPPERS; i++) {
        ct_tensor *a = WRAPPERS[i].fn(x), *b = ct__unary(WRAPPERS[i].op, x, WRAPPERS[i].p1,
                                                         WRAPPERS[i].p2);
        CHECK_CLOSE(a, b, 0, WRAPPERS[i].name);
        CHECK_MSG(a && b && strcmp(ct_grad_fn_name(a), ct_grad_fn_name(b)) == 0,
                  "%s: grad_fn differs", WRAPPERS[i].name);
        ct_free(a);
        ct_free(b);
    }
    ct_free(x);
}

/* A row with a bool result: the values, exactly, a bool tensor that does not require grad
 * even from operands that do, and the row's public wrapper equal to ct__binary. */
static void check_bool_case(ct_fixture *fx, const char *prefix, int b, int noncontig) {
    char key[128], what[160];
    ct_tensor *x[2];
    for (int i = 0; i < 2; i++) {
        snprintf(key, sizeof key, "%s.x%d", prefix, i);
        ct_tensor *raw = ct_fixture_get(fx, key);
        x[i] = raw && noncontig ? ct_test_noncontig(raw) : ct_retain(raw);
        ct_free(raw);
        if (x[i]) CHECK_OK(ct_set_requires_grad(x[i], 1));
    }
    snprintf(key, sizeof key, "%s.y", prefix);
    ct_tensor *want = ct_fixture_get(fx, key);
    ct_tensor *y = BINARY[b].fn(x[0], x[1]), *y2 = ct__binary(BINARY[b].op, x[0], x[1], 1);
    snprintf(what, sizeof what, "%s%s", prefix, noncontig ? " (non-contiguous)" : "");
    CHECK_NN(y);
    CHECK_MSG(y && ct_dtype_of(y) == CT_BOOL && !ct_requires_grad(y) && !ct_grad_fn_name(y),
              "%s: want a bool result without grad", what);
    CHECK_CLOSE(y, want, 0, what);
    CHECK_CLOSE(y2, want, 0, what);
    ct_free(x[0]), ct_free(x[1]), ct_free(want), ct_free(y), ct_free(y2);
}

TEST(pointwise_binary_broadcast_vs_torch) {
    ct_fixture *fx = ct_fixture_load("binary");
    if (!fx) return;
    char prefix[64];
    for (size_t b = 0; b < sizeof BINARY / sizeof *BINARY; b++)
        for (int k = 0; k < 4; k++)
            for (int nc = 0; nc < 2; nc++) {
                snprintf(prefix, sizeof prefix, "%s.%d", BINARY[b].name, k);
                if (BINARY[b].to_bool) check_bool_case(fx, prefix, (int)b, nc);
                else check_case(fx, prefix, 2, (void *)BINARY[b].fn, nc);
            }
    ct_fixture_free(fx);
}

static ct_tensor *gc_unary(ct_tensor *const *in, void *ctx) { return ((un_fn)ctx)(in[0]); }
static ct_tensor *gc_binary(ct_tensor *const *in, void *ctx) { return ((bin_fn)ctx)(in[0], in[1]); }

TEST(pointwise_gradcheck_float64) {
    int64_t shape[2] = {3, 4};
    for (size_t u = 0; u < sizeof UNARY / sizeof *UNARY; u++) {
        ct_tensor *x = ct_randn(shape, 2, CT_FLOAT64);
        if (UNARY[u].positive) {
            ct_tensor *a = ct_abs(x);
            ct_free(x);
            x = ct_add_scalar(a, 0.2);
            ct_free(a);
        }
        /* keep clear of the kinks of abs/relu/clamp where derivatives jump */
        double *p = ct_data(x);
        for (int i = 0; i < 12; i++)
            if (p[i] > -0.05 && p[i] < 0.05) p[i] += 0.2;
        for (int i = 0; i < 12; i++)
            if (fabs(p[i] + 0.5) < 0.02 || fabs(p[i] - 0.7) < 0.02) p[i] += 0.1;
        ct_set_requires_grad(x, 1);
        t_case = &UNARY[u];
        GRADCHECK(gc_unary, &x, 1, (void *)run_unary, UNARY[u].name);
        ct_free(x);
    }
    int64_t sa[3] = {2, 3, 4}, sb[2] = {1, 4};
    for (size_t b = 0; b < sizeof BINARY / sizeof *BINARY; b++) {
        if (BINARY[b].to_bool) continue; /* no gradient */
        ct_tensor *in[2] = {ct_randn(sa, 3, CT_FLOAT64), ct_randn(sb, 2, CT_FLOAT64)};
        if (BINARY[b].op == CT_BIN_DIV) {
            double *p = ct_data(in[1]);
            for (int i = 0; i < 4; i++) p[i] = p[i] > 0 ? p[i] + 0.5 : p[i] - 0.5;
        }
        ct_set_requires_grad(in[0], 1);
        ct_set_requires_grad(in[1], 1);
        GRADCHECK(gc_binary, in, 2, (void *)BINARY[b].fn, BINARY[b].name);
        ct_free(in[0]);
        ct_free(in[1]);
    }
}

TEST(pointwise_errors) {
    int64_t s1[2] = {2, 3}, s2[2] = {4, 3};
    ct_tensor *a = ct_ones(s1, 2, CT_FLOAT32), *b = ct_ones(s2, 2, CT_FLOAT32);
    ct_tensor *d = ct_ones(s1, 2, CT_FLOAT64), *i64 = ct_ones(s1, 2, CT_INT64);
    CHECK_ERR_PTR(ct_add(a, b), "add: shapes [2, 3] and [4, 3] cannot be broadcast");
    ct_tensor *u8 = ct_ones(s1, 2, CT_UINT8);
    CHECK_ERR_PTR(ct_mul(a, u8), "mul: dtype mismatch (float32 and uint8)");
    ct_free(u8);
    /* float32 with float64 promotes (PyTorch's type promotion); the gradient comes back in
     * each operand's own dtype */
    ct_tensor *ag = ct_full(s1, 2, 2.0, CT_FLOAT32);
    ct_set_requires_grad(ag, 1);
    ct_tensor *pm = ct_mul(ag, d), *ps = pm ? ct_sum(pm, NULL, 0, 0) : NULL;
    CHECK(pm && ct_dtype_of(pm) == CT_FLOAT64 && ps && ct_item(ps) == 12.0);
    CHECK_OK(ct_backward(ps, NULL, 0));
    ct_tensor *gs = ct_grad(ag) ? ct_sum(ct_grad(ag), NULL, 0, 0) : NULL;
    CHECK(gs && ct_dtype_of(ct_grad(ag)) == CT_FLOAT32 && ct_item(gs) == 6.0);
    ct_free(ag), ct_free(pm), ct_free(ps), ct_free(gs);
    CHECK_ERR_PTR(ct_sub(a, NULL), "sub");
    CHECK_ERR_PTR(ct_exp(i64), "exp: needs a floating-point tensor");
    CHECK_ERR_PTR(ct_clamp(a, 1, 0), "clamp");
    CHECK_ERR_PTR(ct_hardtanh(a, 1, 0), "hardtanh: min_val 1 must not exceed max_val 0");
    CHECK_ERR_INT(ct_add_(a, b, 1), "add_");
    ct_free(a);
    ct_free(b);
    ct_free(d);
    ct_free(i64);
}

TEST(pointwise_inplace_ops) {
    int64_t s[2] = {2, 3};
    ct_tensor *a = ct_full(s, 2, 2.0, CT_FLOAT32), *b = ct_full(s, 2, 3.0, CT_FLOAT32);
    CHECK_OK(ct_add_(a, b, 0.5)); /* 3.5 */
    CHECK_OK(ct_mul_scalar_(a, 2)); /* 7 */
    CHECK_OK(ct_add_scalar_(a, -1)); /* 6 */
    CHECK_OK(ct_mul_(a, b)); /* 18 */
    float *p = ct_data(a);
    for (int i = 0; i < 6; i++) CHECK(p[i] == 18.0f);
    CHECK(ct_version(a) == 4);
    int64_t one = 3;
    ct_tensor *row = ct_arange(0, 3, 1, CT_FLOAT32);
    CHECK_OK(ct_copy_(a, row)); /* broadcast copy */
    CHECK(p[3] == 0 && p[4] == 1 && p[5] == 2);
    (void)one;
    CHECK_OK(ct_zero_(a));
    CHECK(p[5] == 0);
    ct_free(a);
    ct_free(b);
    ct_free(row);
}

/* GELU's float32 CPU kernels (vectorised erfc, not libm's erff) against the float64 formula
 * over [-12, 12] in steps of 1/512, forward and derivative, contiguous and strided, plus
 * inf and NaN. The bound is 2e-6 relative plus what float32 cannot avoid in the tail: exp's
 * argument -x^2/2 is a rounded float, worth 2^-24 x^2/2 relative (the bound allows twice that). The derivative
 * Phi + x phi crosses 0 near x = -0.75, so its error is measured against the size of
 * its terms. Run at the CPU's level (the AVX2+FMA kernels where it has them) and at
 * CTORCH_CPU_ISA=none (the auto-vectorised loops); N is not a multiple of 8, and short
 * runs of every length 1..17 (the 8-wide kernels' masked tails) must give the values the
 * long run gave. */
/* gelu over xs[0..n) as a leaf: *x the leaf, the result returned, its gradient (of the
 * sum) in x's .grad. */
static ct_tensor *gelu_leaf_run(const float *xs, int64_t n, ct_tensor **x) {
    *x = ct_from_data(xs, &n, 1, CT_FLOAT32);
    CHECK_NN(*x);
    CHECK_OK(ct_set_requires_grad(*x, 1));
    ct_tensor *y = ct_gelu(*x, 0);
    CHECK_NN(y);
    ct_tensor *s = ct_sum(y, NULL, 0, 0);
    CHECK_OK(ct_backward(s, NULL, 0));
    ct_free(s);
    return y;
}

static void gelu_f32_case(const char *isa) {
    enum { N = 24 * 512 + 1 + 3 };
    static float xs[N];
    for (int i = 0; i < N - 3; i++) xs[i] = -12.0f + (float)i / 512.0f;
    xs[N - 3] = INFINITY;
    xs[N - 2] = -INFINITY;
    xs[N - 1] = NAN;
    ct_tensor *x, *y = gelu_leaf_run(xs, N, &x);
    const float *yv = ct_data(y), *gv = ct_data(ct_grad(x));
    double worst_y = 0, worst_g = 0, worst_y4 = 0, worst_g4 = 0; /* over all, over |x| <= 4 */
    int bad = 0;
    for (int i = 0; i < N - 3; i++) {
        double xd = xs[i], cdf = 0.5 * erfc(-xd / sqrt(2.0));
        double xpdf = xd * exp(-0.5 * xd * xd) / sqrt(2.0 * M_PI);
        double ry = xd * cdf, rg = cdf + xpdf;
        double ey = fabs(ry) > 1e-37 ? fabs(yv[i] - ry) / fabs(ry) : 0;
        double eg = fabs(cdf) + fabs(xpdf) > 1e-37 ? fabs(gv[i] - rg) / (fabs(cdf) + fabs(xpdf)) : 0;
        double tol = 2e-6 + ldexp(0.5 * xd * xd, -23);
        if (fabs(ry) <= 1e-37 && fabs(yv[i] - ry) > 1e-37) ey = 1;
        if (fabs(cdf) + fabs(xpdf) <= 1e-37 && fabs(gv[i] - rg) > 1e-37) eg = 1;
        if ((ey > tol || eg > tol) && bad++ < 5)
            ct_test_fail(__FILE__, __LINE__, "gelu(%.9g) = %.9g, d = %.9g; want %.9g, %.9g", xd,
                         yv[i], gv[i], ry, rg);
        worst_y = fmax(worst_y, ey);
        worst_g = fmax(worst_g, eg);
        if (fabs(xd) <= 4) {
            worst_y4 = fmax(worst_y4, ey);
            worst_g4 = fmax(worst_g4, eg);
        }
    }
    CHECK(yv[N - 3] == INFINITY && isnan(yv[N - 2]) && isnan(yv[N - 1]));
    /* Phi + x phi at +-inf is 1 + inf * 0: NaN, as the float64 formula and PyTorch give */
    CHECK_MSG(isnan(gv[N - 3]) && isnan(gv[N - 2]) && isnan(gv[N - 1]),
              "gelu'(inf, -inf, nan) = %g %g %g", gv[N - 3], gv[N - 2], gv[N - 1]);
    /* a strided view gives the same values as the contiguous run */
    const int64_t nv = (N - 3 + 1) / 2;
    ct_tensor *v = ct_slice(x, 0, 0, N - 3, 2);
    CHECK_NN(v);
    ct_tensor *yv2 = ct_gelu(v, 0);
    CHECK_NN(yv2);
    ct_tensor *yc = ct_contiguous(yv2);
    CHECK_NN(yc);
    const float *w = ct_data(yc);
    int same = 1;
    for (int64_t i = 0; i < nv; i++) same &= w[i] == yv[2 * i];
    CHECK_MSG(same, "gelu on a strided view differs from the contiguous kernel");
    /* short runs at an odd offset: each value as in the long run, forward and derivative */
    int same_short = 1;
    for (int64_t len = 1; len <= 17; len++) {
        ct_tensor *xs2, *y2 = gelu_leaf_run(xs + 3, len, &xs2);
        const float *y2v = ct_data(y2), *g2v = ct_data(ct_grad(xs2));
        for (int64_t i = 0; i < len; i++) same_short &= y2v[i] == yv[3 + i] && g2v[i] == gv[3 + i];
        ct_free(y2);
        ct_free(xs2);
    }
    CHECK_MSG(same_short, "gelu on short runs (%s) differs from the long run", isa);
    printf("    gelu float32 (%s) max relative error, |x| <= 4: forward %.2e, derivative %.2e; "
           "|x| <= 12: %.2e, %.2e\n", isa, worst_y4, worst_g4, worst_y, worst_g);
    ct_free(yc);
    ct_free(yv2);
    ct_free(v);
    ct_free(y);
    ct_free(x);
}

TEST(pointwise_gelu_float32_kernel_accuracy) {
    const char *isa0 = getenv("CTORCH_CPU_ISA");
    char saved[32] = "";
    if (isa0) snprintf(saved, sizeof saved, "%s", isa0);
    gelu_f32_case(isa0 && *isa0 ? saved : "native");
    setenv("CTORCH_CPU_ISA", "none", 1);
    gelu_f32_case("none");
    if (isa0) setenv("CTORCH_CPU_ISA", saved, 1);
    else unsetenv("CTORCH_CPU_ISA");
}

/* GELU's 16-wide AVX-512 kernels do lane by lane what the 8-wide AVX2 ones do: the same
 * values bit for bit, forward and derivative, over [-12, 12] plus inf, NaN, huge and tiny
 * values, in runs of every length 1..40 (the masked tails of both widths) and one long run. */
TEST(pointwise_gelu_float32_avx512_equals_avx2) {
    if (!__builtin_cpu_supports("avx512f")) SKIP("this CPU has no AVX-512");
    enum { N = 24 * 512 + 8 };
    static float xs[N];
    for (int i = 0; i < N - 8; i++) xs[i] = -12.0f + (float)i / 512.0f + 1e-4f * (float)(i % 7);
    const float special[8] = {INFINITY, -INFINITY, NAN, 3e38f, -3e38f, 1e-40f, -1e-30f, 0.0f};
    memcpy(xs + N - 8, special, sizeof special);
    const char *isa0 = getenv("CTORCH_CPU_ISA");
    char saved[32] = "";
    if (isa0) snprintf(saved, sizeof saved, "%s", isa0);
    const int64_t lens[] = {N, 1, 2, 7, 8, 9, 15, 16, 17, 23, 31, 32, 33, 40};
    int differ = 0;
    for (size_t c = 0; c < sizeof lens / sizeof *lens; c++) {
        /* short runs end among or after the special values */
        const int64_t n = lens[c], off = N - 8 - n / 2 < N - n ? N - 8 - n / 2 : N - n;
        ct_tensor *x[2], *y[2];
        const char *levels[2] = {"avx2", "avx512"};
        for (int l = 0; l < 2; l++) {
            setenv("CTORCH_CPU_ISA", levels[l], 1);
            y[l] = gelu_leaf_run(xs + off, n, &x[l]);
        }
        const uint32_t *y0 = ct_data(y[0]), *y1 = ct_data(y[1]);
        const uint32_t *g0 = ct_data(ct_grad(x[0])), *g1 = ct_data(ct_grad(x[1]));
        for (int64_t i = 0; i < n; i++)
            if ((y0[i] != y1[i] || g0[i] != g1[i]) && differ++ < 5)
                ct_test_fail(__FILE__, __LINE__, "gelu run of %lld, element %lld: avx512 %08x %08x, "
                             "avx2 %08x %08x (value, derivative bits)", (long long)n,
                             (long long)i, y1[i], g1[i], y0[i], g0[i]);
        for (int l = 0; l < 2; l++) ct_free(y[l]), ct_free(x[l]);
    }
    if (isa0) setenv("CTORCH_CPU_ISA", saved, 1);
    else unsetenv("CTORCH_CPU_ISA");
}
