/* Mixed precision: bfloat16 / float16 conversions bit for bit against PyTorch, autocast's
 * dtype choices op by op against torch.autocast("cpu"), bf16 results within PyTorch's own
 * bf16 tolerances, the bf16 GEMM paths against each other, and the autocast API's errors.
 * Fixtures: tests/fixtures/gen_amp.py (PyTorch 2.x). */
#include "backends/cpu/cpu_conv_amx.h"
#include "backends/cpu/cpu_gemm_bf16.h"
#include "ctorch.h"
#include "ops/fused.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A tensor of dtype dt (16-bit) whose elements have the bit patterns of `bits` (int64). */
static ct_tensor *from_bits(const ct_tensor *bits, ct_dtype dt) {
    int64_t n = ct_numel(bits);
    ct_tensor *t = ct_empty(&n, 1, dt);
    const int64_t *b = ct_data(bits);
    uint16_t *p = ct_data(t);
    for (int64_t i = 0; i < n; i++) p[i] = (uint16_t)b[i];
    return t;
}

/* Counts elements whose 16-bit patterns differ from `want` (int64 patterns). */
static int64_t count_bits_differ(const ct_tensor *got, const ct_tensor *want, int64_t *first) {
    const uint16_t *g = ct_data(got);
    const int64_t *w = ct_data(want);
    int64_t bad = 0;
    *first = -1;
    for (int64_t i = 0; i < ct_numel(want); i++)
        if (g[i] != (uint16_t)w[i]) {
            if (*first < 0) *first = i;
            bad++;
        }
    return bad;
}

TEST(amp_conversions_bit_identical_to_torch) {
    ct_fixture *fx = ct_fixture_load("amp_convert");
    if (!fx) return;
    ct_tensor *x = ct_fixture_get(fx, "f32");
    const float *xv = ct_data(x);
    const char *names[2] = {"f32_to_bf16", "f32_to_f16"};
    const ct_dtype dts[2] = {CT_BFLOAT16, CT_FLOAT16};
    for (int k = 0; k < 2; k++) {
        ct_tensor *want = ct_fixture_get(fx, names[k]);
        ct_tensor *got = ct_to_dtype(x, dts[k]);
        int64_t first = -1, bad = got ? count_bits_differ(got, want, &first) : -1;
        CHECK_MSG(bad == 0, "%s: %lld of %lld patterns differ from PyTorch (first: %.9g -> 0x%04x, "
                  "PyTorch 0x%04x)", names[k], (long long)bad, (long long)ct_numel(want),
                  first >= 0 ? xv[first] : 0.0,
                  first >= 0 ? ((const uint16_t *)ct_data(got))[first] : 0,
                  first >= 0 ? (unsigned)((const int64_t *)ct_data(want))[first] : 0);
        ct_free(got), ct_free(want);
    }
    /* every 16-bit pattern back to float32, bit for bit (NaN payloads included) */
    int64_t n = 65536;
    ct_tensor *all = ct_empty(&n, 1, CT_INT64);
    for (int64_t i = 0; i < n; i++) ((int64_t *)ct_data(all))[i] = i;
    const char *back[2] = {"bf16_to_f32", "f16_to_f32"};
    for (int k = 0; k < 2; k++) {
        ct_tensor *h = from_bits(all, dts[k]), *got = ct_to_dtype(h, CT_FLOAT32);
        ct_tensor *want = ct_fixture_get(fx, back[k]);
        int64_t bad = 0, first = -1;
        for (int64_t i = 0; i < n; i++)
            if (memcmp((const float *)ct_data(got) + i, (const float *)ct_data(want) + i, 4)) {
                if (first < 0) first = i;
                bad++;
            }
        CHECK_MSG(bad == 0, "%s: %lld patterns differ (first 0x%04llx)", back[k], (long long)bad,
                  (long long)first);
        ct_free(h), ct_free(got), ct_free(want);
    }
    ct_free(all), ct_free(x);
    ct_fixture_free(fx);
}

/* ---------------------------------------------------------- the autocast table */
typedef struct {
    ct_dtype low;
    ct_tensor *keep[16];
    int nkeep;
} actx;

static ct_tensor *K(actx *c, ct_tensor *t) {
    if (t && c->nkeep < 16) c->keep[c->nkeep++] = t;
    return t;
}
static ct_tensor *rnd(actx *c, ct_dtype dt, int64_t a, int64_t b) {
    int64_t s[2] = {a, b};
    ct_tensor *f = K(c, ct_randn(s, 2, CT_FLOAT32));
    return dt == CT_FLOAT32 ? f : K(c, ct_to_dtype(f, dt));
}
static ct_tensor *rnd4(actx *c, ct_dtype dt) {
    int64_t s[4] = {2, 3, 6, 6};
    ct_tensor *f = K(c, ct_randn(s, 4, CT_FLOAT32));
    return dt == CT_FLOAT32 ? f : K(c, ct_to_dtype(f, dt));
}

/* The ctorch counterpart of each case of gen_amp.py's table (inputs: "_low" ones in the
 * table's 16-bit dtype, the others float32). */
static ct_tensor *run_case(const char *name, actx *c) {
    const ct_dtype L = c->low, F = CT_FLOAT32;
    int one[2] = {1, 1}, pad1[2] = {1, 1}, zero[2] = {0, 0}, two[2] = {2, 2};
    int64_t w4s[4] = {4, 3, 3, 3}, four = 4, three = 3, five = 5;
    int64_t tv[3] = {1, 0, 4};
    ct_tensor *tgt = K(c, ct_empty(&three, 1, CT_INT64));
    memcpy(ct_data(tgt), tv, sizeof tv);
    if (!strcmp(name, "conv2d"))
        return ct_conv2d(rnd4(c, F), K(c, ct_randn(w4s, 4, F)), K(c, ct_randn(&four, 1, F)), one,
                         pad1, one, 1);
    if (!strcmp(name, "conv2d_f64")) {
        int64_t s[4] = {2, 3, 6, 6};
        return ct_conv2d(K(c, ct_randn(s, 4, CT_FLOAT64)), K(c, ct_randn(w4s, 4, CT_FLOAT64)), NULL,
                         one, zero, one, 1);
    }
    if (!strcmp(name, "linear"))
        return ct_linear(rnd(c, F, 3, 5), rnd(c, F, 4, 5), K(c, ct_randn(&four, 1, F)));
    if (!strcmp(name, "matmul")) return ct_matmul(rnd(c, F, 3, 5), rnd(c, F, 5, 2));
    if (!strcmp(name, "matmul_bmm")) {
        int64_t a[3] = {2, 3, 5}, b[3] = {2, 5, 4};
        return ct_matmul(K(c, ct_randn(a, 3, F)), K(c, ct_randn(b, 3, F)));
    }
    if (!strcmp(name, "matmul_mixed")) return ct_matmul(rnd(c, L, 3, 5), rnd(c, F, 5, 2));
    if (!strcmp(name, "relu_f32")) return ct_relu(rnd(c, F, 3, 5));
    if (!strcmp(name, "relu_low")) return ct_relu(rnd(c, L, 3, 5));
    if (!strcmp(name, "max_pool2d_low")) return ct_max_pool2d(rnd4(c, L), two, two, zero, one, 0);
    if (!strcmp(name, "avg_pool2d_low")) return ct_avg_pool2d(rnd4(c, L), two, two, zero, 0, 1);
    if (!strcmp(name, "adaptive_avg_pool2d_low")) return ct_adaptive_avg_pool2d(rnd4(c, L), one);
    if (!strcmp(name, "batch_norm_low")) {
        ct_tensor *rm = K(c, ct_zeros(&three, 1, F)), *rv = K(c, ct_ones(&three, 1, F));
        return ct_batch_norm(rnd4(c, L), rm, rv, K(c, ct_ones(&three, 1, F)),
                             K(c, ct_zeros(&three, 1, F)), 1, 0.1, 1e-5);
    }
    if (!strcmp(name, "layer_norm_low"))
        return ct_layer_norm(rnd(c, L, 3, 5), &five, 1, K(c, ct_ones(&five, 1, F)),
                             K(c, ct_zeros(&five, 1, F)), 1e-5);
    if (!strcmp(name, "softmax_low")) return ct_softmax(rnd(c, L, 3, 5), 1);
    if (!strcmp(name, "log_softmax_low")) return ct_log_softmax(rnd(c, L, 3, 5), 1);
    if (!strcmp(name, "cross_entropy_low"))
        return ct_cross_entropy(rnd(c, L, 3, 5), tgt, CT_REDUCTION_MEAN, 0, -100);
    if (!strcmp(name, "cross_entropy_f32"))
        return ct_cross_entropy(rnd(c, F, 3, 5), tgt, CT_REDUCTION_MEAN, 0, -100);
    if (!strcmp(name, "nll_loss_low"))
        return ct_nll_loss(rnd(c, L, 3, 5), tgt, CT_REDUCTION_MEAN, -100);
    if (!strcmp(name, "mse_loss_low"))
        return ct_mse_loss(rnd(c, L, 3, 5), rnd(c, F, 3, 5), CT_REDUCTION_MEAN);
    if (!strcmp(name, "add_mixed")) return ct_add(rnd(c, L, 3, 5), rnd(c, F, 3, 5));
    if (!strcmp(name, "add_low")) return ct_add(rnd(c, L, 3, 5), rnd(c, L, 3, 5));
    if (!strcmp(name, "mul_mixed")) return ct_mul(rnd(c, L, 3, 5), rnd(c, F, 3, 5));
    if (!strcmp(name, "sum_low")) return ct_sum(rnd(c, L, 3, 5), NULL, 0, 0);
    if (!strcmp(name, "mean_low")) return ct_mean(rnd(c, L, 3, 5), NULL, 0, 0);
    if (!strcmp(name, "exp_low")) return ct_exp(rnd(c, L, 3, 5));
    if (!strcmp(name, "log_low")) return ct_log(K(c, ct_abs(rnd(c, L, 3, 5))));
    if (!strcmp(name, "pow_low")) return ct_pow_scalar(rnd(c, L, 3, 5), 2);
    if (!strcmp(name, "sigmoid_low")) return ct_sigmoid(rnd(c, L, 3, 5));
    if (!strcmp(name, "tanh_low")) return ct_tanh(rnd(c, L, 3, 5));
    if (!strcmp(name, "gelu_low")) return ct_gelu(rnd(c, L, 3, 5), 0);
    if (!strcmp(name, "dropout_low")) return ct_dropout(rnd(c, L, 3, 5), 0.5, 1);
    if (!strcmp(name, "exp_f32")) return ct_exp(rnd(c, F, 3, 5));
    if (!strcmp(name, "sum_f32")) return ct_sum(rnd(c, F, 3, 5), NULL, 0, 0);
    if (!strcmp(name, "softmax_f32")) return ct_softmax(rnd(c, F, 3, 5), 1);
    return NULL;
}

static const char *const CASES[] = {
    "conv2d", "conv2d_f64", "linear", "matmul", "matmul_bmm", "matmul_mixed", "relu_f32",
    "relu_low", "max_pool2d_low", "avg_pool2d_low", "adaptive_avg_pool2d_low",
    "batch_norm_low", "layer_norm_low", "softmax_low", "log_softmax_low", "cross_entropy_low",
    "cross_entropy_f32", "nll_loss_low", "mse_loss_low", "add_mixed", "add_low", "mul_mixed",
    "sum_low", "mean_low", "exp_low", "log_low", "pow_low", "sigmoid_low", "tanh_low",
    "gelu_low", "dropout_low", "exp_f32", "sum_f32", "softmax_f32", NULL};

TEST(amp_autocast_output_dtypes_match_torch_cpu) {
    ct_fixture *fx = ct_fixture_load("amp_autocast");
    if (!fx) return;
    const char *tags[2] = {"bf16", "fp16"};
    const ct_dtype lows[2] = {CT_BFLOAT16, CT_FLOAT16};
    int checked = 0;
    for (int k = 0; k < 2; k++)
        for (int i = 0; CASES[i]; i++) {
            char key[96];
            snprintf(key, sizeof key, "cpu.%s.%s", tags[k], CASES[i]);
            if (!ct_fixture_has(fx, key)) {
                ct_test_fail(__FILE__, __LINE__, "fixture has no %s", key);
                continue;
            }
            ct_tensor *w = ct_fixture_get(fx, key);
            ct_dtype want = (ct_dtype) * (const int64_t *)ct_data(w);
            actx c = {.low = lows[k]};
            CHECK_OK(ct_autocast_push(CT_CPU, lows[k]));
            ct_tensor *y = run_case(CASES[i], &c);
            CHECK_OK(ct_autocast_pop());
            CHECK_MSG(y && ct_dtype_of(y) == want, "autocast %s %s: ctorch gives %s, PyTorch %s%s%s",
                      tags[k], CASES[i], y ? ct_dtype_name(ct_dtype_of(y)) : "an error",
                      ct_dtype_name(want), y ? "" : ": ", y ? "" : ct_last_error());
            checked++;
            ct_free(y), ct_free(w);
            for (int j = 0; j < c.nkeep; j++) ct_free(c.keep[j]);
        }
    CHECK(checked == 2 * 34);
    ct_fixture_free(fx);
}

/* ------------------------------------------------------- bf16 results vs PyTorch */
/* |got - want| <= atol + rtol * |want| elementwise (torch.testing.assert_close). */
static void check_allclose(const ct_tensor *got, const ct_tensor *want, double rtol, double atol,
                           const char *what) {
    ct_tensor *g = got ? ct_to_dtype(got, CT_FLOAT64) : NULL, *w = ct_to_dtype(want, CT_FLOAT64);
    if (!g || ct_numel(g) != ct_numel(w)) {
        ct_test_fail(__FILE__, __LINE__, "%s: missing or wrong size (%s)", what, ct_last_error());
        ct_free(g), ct_free(w);
        return;
    }
    ct_tensor *gc = ct_contiguous(g), *wc = ct_contiguous(w);
    const double *a = ct_data(gc), *b = ct_data(wc);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < ct_numel(gc); i++)
        if (!(fabs(a[i] - b[i]) <= atol + rtol * fabs(b[i]))) {
            if (first < 0) first = i;
            bad++;
        }
    CHECK_MSG(bad == 0, "%s: %lld of %lld elements beyond rtol %g atol %g (first [%lld]: %g vs %g)",
              what, (long long)bad, (long long)ct_numel(gc), rtol, atol, (long long)first,
              first >= 0 ? a[first] : 0, first >= 0 ? b[first] : 0);
    ct_free(g), ct_free(w), ct_free(gc), ct_free(wc);
}

/* grad(sum(y * gy)) for inputs xs, with y computed under bf16 autocast. */
static void bf16_case(ct_fixture *fx, const char *p, int conv, const char *isa) {
    char k[64];
    const char *in[3] = {"x", "w", "b"}, *gin[3] = {"gx", "gw", "gb"};
    ct_tensor *xs[3], *ref[3];
    for (int i = 0; i < 3; i++) {
        snprintf(k, sizeof k, "%s.%s", p, in[i]);
        xs[i] = ct_fixture_get(fx, k);
        ct_set_requires_grad(xs[i], 1);
        snprintf(k, sizeof k, "%s.%s", p, gin[i]);
        ref[i] = ct_fixture_get(fx, k);
    }
    snprintf(k, sizeof k, "%s.y", p);
    ct_tensor *yref = ct_fixture_get(fx, k);
    snprintf(k, sizeof k, "%s.gy", p);
    ct_tensor *gy = ct_fixture_get(fx, k), *gyb = ct_to_dtype(gy, CT_BFLOAT16);
    int one[2] = {1, 1};
    ct_autocast_push(CT_CPU, CT_BFLOAT16);
    ct_tensor *y = conv ? ct_conv2d(xs[0], xs[1], xs[2], one, one, one, 1)
                        : ct_linear(xs[0], xs[1], xs[2]);
    ct_autocast_pop();
    CHECK_MSG(y && ct_dtype_of(y) == CT_BFLOAT16, "%s: bf16 output", p);
    char what[96];
    snprintf(what, sizeof what, "%s forward (bf16, %s)", p, isa);
    /* PyTorch's own bf16 tolerances (torch.testing: rtol 1.6e-2, atol 1e-5) */
    check_allclose(y, yref, 1.6e-2, 1e-5, what);
    ct_tensor *yf = y ? ct_to_dtype(y, CT_FLOAT32) : NULL, *gyf = ct_to_dtype(gyb, CT_FLOAT32);
    ct_tensor *prod = yf ? ct_mul(yf, gyf) : NULL, *l = prod ? ct_sum(prod, NULL, 0, 0) : NULL;
    CHECK_OK(ct_backward(l, NULL, 0));
    for (int i = 0; i < 3; i++) {
        snprintf(what, sizeof what, "%s %s (bf16 backward, %s)", p, gin[i], isa);
        CHECK(ct_dtype_of(ct_grad(xs[i])) == CT_FLOAT32);
        /* a gradient summed over the batch: one bf16 rounding of a float32 sum */
        check_allclose(ct_grad(xs[i]), ref[i], 1.6e-2, 1e-3, what);
    }
    for (int i = 0; i < 3; i++) ct_free(xs[i]), ct_free(ref[i]);
    ct_free(yref), ct_free(gy), ct_free(gyb), ct_free(y), ct_free(yf), ct_free(gyf);
    ct_free(prod), ct_free(l);
}

TEST(amp_bf16_conv_linear_vs_torch_both_isa_levels) {
    ct_fixture *fx = ct_fixture_load("amp_ops");
    if (!fx) return;
    const char *saved = getenv("CTORCH_CPU_ISA");
    char *keep = saved ? strdup(saved) : NULL;
    const char *levels[2] = {"", "avx2"}; /* native (AVX512_BF16 where present), then AVX2 */
    for (int l = 0; l < 2; l++) {
        setenv("CTORCH_CPU_ISA", levels[l], 1);
        bf16_case(fx, "conv", 1, l ? "avx2" : "native");
        bf16_case(fx, "lin", 0, l ? "avx2" : "native");
    }
    if (keep) setenv("CTORCH_CPU_ISA", keep, 1);
    else unsetenv("CTORCH_CPU_ISA");
    free(keep);
    ct_fixture_free(fx);
}

/* The bf16 GEMM (vdpbf16ps) against the float32 fallback on the same bf16 inputs: both
 * accumulate exact products in float32, so they agree to float32 rounding; every layout
 * (transposed operands, batch broadcast), odd K, ragged M and N, alpha and beta. */
TEST(amp_bf16_gemm_matches_widened_fallback) {
    /* M N K; with AMX, {48, 35, 96} reads A's first 32 rows in place and packs the other 16,
     * {37, 33, 70} and {192, 64, 1040} transpose 16 x 16 blocks of pairs with ragged tails */
    const int64_t dims[][3] = {{1, 1, 1},    {7, 33, 5},   {6, 32, 64},     {13, 70, 129},
                               {64, 10, 4096}, {100, 3, 2}, {48, 35, 96},   {37, 33, 70},
                               {192, 64, 1040}};
    for (size_t d = 0; d < sizeof dims / sizeof *dims; d++) {
        int64_t M = dims[d][0], N = dims[d][1], Kd = dims[d][2];
        for (int tr = 0; tr < 4; tr++) {
            int64_t as[3] = {2, tr & 1 ? Kd : M, tr & 1 ? M : Kd};
            int64_t bs[3] = {2, tr & 2 ? N : Kd, tr & 2 ? Kd : N};
            ct_tensor *a0 = ct_randn(as, 3, CT_FLOAT32), *b0 = ct_randn(bs, 3, CT_FLOAT32);
            ct_tensor *ab = ct_to_dtype(a0, CT_BFLOAT16), *bb = ct_to_dtype(b0, CT_BFLOAT16);
            ct_tensor *a = tr & 1 ? ct_transpose(ab, 1, 2) : ct_retain(ab);
            ct_tensor *b = tr & 2 ? ct_transpose(bb, 1, 2) : ct_retain(bb);
            setenv("CTORCH_CPU_ISA", "avx2", 1);
            ct_tensor *slow = ct_matmul(a, b);
            /* native (AMX where present), then AVX512_BF16 only */
            const char *levels[2] = {"", "avx512"};
            for (int l = 0; l < 2; l++) {
                setenv("CTORCH_CPU_ISA", levels[l], 1);
                ct_tensor *fast = ct_matmul(a, b);
                char what[112];
                snprintf(what, sizeof what, "bf16 matmul %lldx%lldx%lld layout %d (%s)",
                         (long long)M, (long long)N, (long long)Kd, tr, l ? "avx512" : "native");
                CHECK_MSG(fast && ct_dtype_of(fast) == CT_BFLOAT16, "%s: bf16 result", what);
                /* the same float32 sums rounded once to bf16: at most one bf16 ulp apart */
                check_allclose(fast, slow, 8e-3, 4e-6 * sqrt((double)Kd), what);
                ct_free(fast);
            }
            unsetenv("CTORCH_CPU_ISA");
            ct_free(a0), ct_free(b0), ct_free(ab), ct_free(bb), ct_free(a), ct_free(b);
            ct_free(slow);
        }
    }
}

/* A bf16 linear layer with bias, forward and backward, natively (AMX's in-place A blocks,
 * whole-block stores with the bias already in C, the transposed pack of gy^T for the weight
 * gradient) against the float32 fallback (CTORCH_CPU_ISA=avx2) on the same bf16 values. */
TEST(amp_bf16_linear_with_bias_matches_widened_fallback) {
    const int64_t shapes[][3] = {{70, 96, 64}, {128, 192, 96}, {33, 64, 40}}; /* rows in out */
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int64_t R = shapes[s][0], in = shapes[s][1], out = shapes[s][2];
        int64_t xs[2] = {R, in}, ws[2] = {out, in}, bs[1] = {out}, ys[2] = {R, out};
        ct_manual_seed(11 + (uint64_t)s);
        ct_tensor *x0 = ct_randn(xs, 2, CT_FLOAT32), *gy0 = ct_randn(ys, 2, CT_FLOAT32);
        ct_tensor *xb = ct_to_dtype(x0, CT_BFLOAT16), *gyb = ct_to_dtype(gy0, CT_BFLOAT16);
        ct_tensor *res[2][4] = {{NULL}};
        const char *levels[2] = {"avx2", ""};
        for (int l = 0; l < 2; l++) {
            setenv("CTORCH_CPU_ISA", levels[l], 1);
            ct_manual_seed(5);
            ct_tensor *w = ct_randn(ws, 2, CT_FLOAT32), *b = ct_randn(bs, 1, CT_FLOAT32);
            ct_tensor *x = ct_to_dtype(xb, CT_BFLOAT16);
            ct_set_requires_grad(w, 1), ct_set_requires_grad(b, 1), ct_set_requires_grad(x, 1);
            CHECK_OK(ct_autocast_push(CT_CPU, CT_BFLOAT16));
            ct_tensor *y = ct_linear(x, w, b);
            ct_autocast_pop();
            CHECK(y && ct_dtype_of(y) == CT_BFLOAT16);
            if (y) CHECK_OK(ct_backward(y, gyb, 0));
            res[l][0] = y ? ct_to_dtype(y, CT_FLOAT32) : NULL;
            res[l][1] = ct_retain(ct_grad(x));
            res[l][2] = ct_retain(ct_grad(w));
            res[l][3] = ct_retain(ct_grad(b));
            ct_free(w), ct_free(b), ct_free(x), ct_free(y);
        }
        unsetenv("CTORCH_CPU_ISA");
        const char *names[4] = {"y", "x.grad", "weight.grad", "bias.grad"};
        for (int i = 0; i < 4; i++) {
            char what[96];
            snprintf(what, sizeof what, "bf16 linear %lldx%lld->%lld %s", (long long)R,
                     (long long)in, (long long)out, names[i]);
            CHECK_MSG(res[0][i] && res[1][i], "%s: computed", what);
            /* the same float32 sums, each rounded to bf16 (the bias in y once more) */
            if (res[0][i] && res[1][i]) check_allclose(res[1][i], res[0][i], 1.6e-2, 1e-2, what);
            ct_free(res[0][i]), ct_free(res[1][i]);
        }
        ct_free(x0), ct_free(gy0), ct_free(xb), ct_free(gyb);
    }
}

/* bfloat16 GELU backward and bias-gradient column sums run on bf16 data chunk by chunk;
 * they must give exactly what widening whole tensors to float32, computing there and
 * rounding once gives (the fallback's values), GELU's and a non-GELU row's. */
static int64_t count_bf16_differ(const ct_tensor *a, const ct_tensor *b) {
    if (!a || !b || ct_numel(a) != ct_numel(b)) return -1;
    const uint16_t *p = ct_data(a), *q = ct_data(b);
    int64_t bad = 0;
    for (int64_t i = 0; i < ct_numel(a); i++) bad += p[i] != q[i];
    return bad;
}

TEST(amp_bf16_unary_backward_and_column_sum_equal_widened) {
    int64_t sh[3] = {3, 700, 40}; /* 84000 elements: several chunks per thread */
    ct_manual_seed(21);
    ct_tensor *x0 = ct_randn(sh, 3, CT_FLOAT32), *g0 = ct_randn(sh, 3, CT_FLOAT32);
    ct_tensor *xb = ct_to_dtype(x0, CT_BFLOAT16), *gb = ct_to_dtype(g0, CT_BFLOAT16);
    for (int op = 0; op < 2; op++) {
        ct_tensor *res[2] = {NULL, NULL};
        for (int wide = 0; wide < 2; wide++) {
            /* fresh leaves (xb's own values: x0 rounded once) */
            ct_tensor *x = wide ? ct_to_dtype(xb, CT_FLOAT32) : ct_to_dtype(x0, CT_BFLOAT16);
            ct_tensor *g = wide ? ct_to_dtype(gb, CT_FLOAT32) : ct_to_dtype(g0, CT_BFLOAT16);
            ct_set_requires_grad(x, 1);
            ct_tensor *y = op ? ct_silu(x) : ct_gelu(x, 0);
            CHECK(y && ct_backward(y, g, 0) == 0);
            res[wide] = ct_grad(x) ? ct_to_dtype(ct_grad(x), CT_BFLOAT16) : NULL;
            ct_free(x), ct_free(g), ct_free(y);
        }
        int64_t bad = count_bf16_differ(res[0], res[1]);
        CHECK_MSG(bad == 0, "%s backward in bf16: %lld of %lld differ from the widened values",
                  op ? "silu" : "gelu", (long long)bad, (long long)ct_numel(x0));
        ct_free(res[0]), ct_free(res[1]);
    }
    const int dims[2][2] = {{0, 1}, {0, 0}};
    const int nd[2] = {2, 1};
    for (int k = 0; k < 2; k++)
        for (int mean = 0; mean < 2; mean++) {
            ct_tensor *a = mean ? ct_mean(gb, dims[k], nd[k], 0) : ct_sum(gb, dims[k], nd[k], 0);
            ct_tensor *w = ct_to_dtype(gb, CT_FLOAT32);
            ct_tensor *r32 = mean ? ct_mean(w, dims[k], nd[k], 0) : ct_sum(w, dims[k], nd[k], 0);
            ct_tensor *r = r32 ? ct_to_dtype(r32, CT_BFLOAT16) : NULL;
            CHECK(a && ct_dtype_of(a) == CT_BFLOAT16);
            int64_t bad = count_bf16_differ(a, r);
            CHECK_MSG(bad == 0, "bf16 %s over %d outer dims: %lld differ from the widened values",
                      mean ? "mean" : "sum", nd[k], (long long)bad);
            ct_free(a), ct_free(w), ct_free(r32), ct_free(r);
        }
    ct_free(x0), ct_free(g0), ct_free(xb), ct_free(gb);
}

TEST(amp_training_step_master_weights_and_cache) {
    ct_manual_seed(3);
    int64_t ws[2] = {4, 6}, xs[2] = {8, 6}, n8 = 8;
    ct_tensor *w = ct_randn(ws, 2, CT_FLOAT32), *x = ct_randn(xs, 2, CT_FLOAT32);
    ct_tensor *t = ct_zeros(&n8, 1, CT_INT64);
    ct_set_requires_grad(w, 1);
    CHECK_OK(ct_autocast_push(CT_CPU, CT_BFLOAT16));
    CHECK(ct_autocast_dtype(CT_CPU) == CT_BFLOAT16 && ct_autocast_dtype(CT_CUDA) == CT_FLOAT32);
    ct_tensor *h1 = ct_linear(x, w, NULL), *h2 = ct_linear(x, w, NULL);
    /* the weight is converted once per region: both products see the same bf16 copy, so
     * one backward reaches w through one conversion node */
    CHECK(h1 && h2 && ct_dtype_of(h1) == CT_BFLOAT16);
    ct_tensor *s = ct_add(h1, h2);
    /* autocast(enabled=False) inside: float32 again */
    CHECK_OK(ct_autocast_push(CT_CPU, CT_FLOAT32));
    ct_tensor *plain = ct_linear(x, w, NULL);
    CHECK(plain && ct_dtype_of(plain) == CT_FLOAT32);
    CHECK_OK(ct_autocast_pop());
    ct_tensor *loss = ct_cross_entropy(s, t, CT_REDUCTION_MEAN, 0, -100);
    CHECK(loss && ct_dtype_of(loss) == CT_FLOAT32);
    CHECK_OK(ct_autocast_pop());
    CHECK_OK(ct_backward(loss, NULL, 0));
    CHECK(ct_grad(w) && ct_dtype_of(ct_grad(w)) == CT_FLOAT32);
    ct_free(w), ct_free(x), ct_free(t), ct_free(h1), ct_free(h2), ct_free(s), ct_free(plain);
    ct_free(loss);
}

TEST(amp_autocast_errors) {
    CHECK_ERR_INT(ct_autocast_pop(), "ct_autocast_pop without a matching push");
    CHECK_ERR_INT(ct_autocast_push(CT_CPU, CT_INT64), "use CT_BFLOAT16 or CT_FLOAT16");
    CHECK_ERR_INT(ct_autocast_push((ct_device_type)9, CT_BFLOAT16), "unknown device type 9");
    int pushed = 0;
    while (ct_autocast_push(CT_CPU, CT_BFLOAT16) == 0) pushed++;
    CHECK_MSG(strstr(ct_last_error(), "nested regions") != NULL, "depth error: %s", ct_last_error());
    while (pushed--) CHECK_OK(ct_autocast_pop());
    CHECK(ct_autocast_dtype(CT_CPU) == CT_FLOAT32);
    /* a bf16 tensor where an op has no 16-bit kernel: a message, not a crash */
    int64_t n = 4;
    ct_tensor *h = ct_ones(&n, 1, CT_BFLOAT16);
    CHECK_ERR_PTR(ct_topk(h, 2, 0, 1, 1, NULL), "bfloat16");
    ct_free(h);
}

/* The bf16 convolutions (im2col into the bf16 GEMM) against the widened float32 path on the
 * same bf16 operands, forward and both gradients, over strides, padding, dilation, 1x1,
 * odd sizes and bias; and the fused convolution + ReLU + max-pool. */
static ct_tensor *conv_grads(const ct_tensor *x, const ct_tensor *w, const ct_tensor *b,
                             const int st[2], const int pd[2], const int dl[2], int fused,
                             ct_tensor **gx, ct_tensor **gw, ct_tensor **gb) {
    ct_tensor *xs = ct_detach(x), *ws = ct_detach(w), *bs = b ? ct_detach(b) : NULL;
    ct_set_requires_grad(xs, 1), ct_set_requires_grad(ws, 1);
    if (bs) ct_set_requires_grad(bs, 1);
    int two[2] = {2, 2}, zero[2] = {0, 0};
    ct_tensor *y = fused ? ct_conv2d_relu_max_pool2d(xs, ws, bs, st, pd, dl, 1, two, two, zero)
                         : ct_conv2d(xs, ws, bs, st, pd, dl, 1);
    ct_tensor *yf = y ? ct_to_dtype(y, CT_FLOAT32) : NULL;
    ct_tensor *l = yf ? ct_sum(ct_mul(yf, yf), NULL, 0, 0) : NULL;
    if (l) ct_backward(l, NULL, 0);
    *gx = ct_grad(xs) ? ct_clone(ct_grad(xs)) : NULL;
    *gw = ct_grad(ws) ? ct_clone(ct_grad(ws)) : NULL;
    *gb = bs && ct_grad(bs) ? ct_clone(ct_grad(bs)) : NULL;
    ct_free(xs), ct_free(ws), ct_free(bs), ct_free(yf), ct_free(l);
    return y;
}

TEST(amp_bf16_conv_paths_match_widened_fallback) {
    struct { int64_t n, c, h, w, o, k; int s, p, d, bias, fused; } cs[] = {
        {2, 3, 9, 11, 5, 3, 1, 1, 1, 1, 0}, {3, 4, 8, 8, 6, 3, 2, 1, 1, 0, 0},
        {2, 5, 7, 7, 4, 1, 1, 0, 1, 1, 0},  {2, 4, 10, 10, 3, 3, 1, 2, 2, 1, 0},
        {1, 2, 6, 6, 7, 1, 2, 0, 1, 0, 0},  {3, 3, 8, 8, 8, 3, 1, 1, 1, 1, 1},
        /* 8x8 outputs: whole panels, several images in one product */
        {6, 3, 8, 8, 40, 3, 1, 1, 1, 1, 0}, {5, 16, 16, 16, 8, 3, 2, 1, 1, 0, 0},
    };
    ct_scope *sc = ct_scope_push();
    for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
        int64_t xs[4] = {cs[i].n, cs[i].c, cs[i].h, cs[i].w}, ws[4] = {cs[i].o, cs[i].c, cs[i].k, cs[i].k};
        ct_tensor *x = ct_to_dtype(ct_randn(xs, 4, CT_FLOAT32), CT_BFLOAT16);
        ct_tensor *w = ct_to_dtype(ct_randn(ws, 4, CT_FLOAT32), CT_BFLOAT16);
        ct_tensor *b = cs[i].bias ? ct_to_dtype(ct_randn(&ws[0], 1, CT_FLOAT32), CT_BFLOAT16) : NULL;
        int st[2] = {cs[i].s, cs[i].s}, pd[2] = {cs[i].p, cs[i].p}, dl[2] = {cs[i].d, cs[i].d};
        ct_tensor *g[3][3], *y[3];
        const char *levels[3] = {"avx2", "", "avx512"}; /* the widened reference first */
        for (int l = 0; l < 3; l++) {
            setenv("CTORCH_CPU_ISA", levels[l], 1);
            /* the AVX512_BF16 convolution path is opt-in (without AMX the widened float32
             * kernels are the default) */
            if (l == 2) setenv("CTORCH_BF16_CONV", "gemm", 1);
            y[l] = conv_grads(x, w, b, st, pd, dl, cs[i].fused, &g[l][0], &g[l][1], &g[l][2]);
            unsetenv("CTORCH_BF16_CONV");
        }
        unsetenv("CTORCH_CPU_ISA");
        for (int l = 1; l < 3; l++) {
            char what[96];
            snprintf(what, sizeof what, "bf16 %sconv case %zu (%s)", cs[i].fused ? "fused " : "",
                     i, l == 1 ? "native" : "avx512");
            CHECK_MSG(y[l] && ct_dtype_of(y[l]) == CT_BFLOAT16, "%s: bf16 output (%s)", what,
                      ct_last_error());
            check_allclose(y[l], y[0], 8e-3, 1e-5, what);
            const char *gn[3] = {"grad input", "grad weight", "grad bias"};
            for (int k = 0; k < 3; k++) {
                if (!g[0][k]) continue;
                char w2[128];
                snprintf(w2, sizeof w2, "%s %s", what, gn[k]);
                check_allclose(g[l][k], g[0][k], 1.6e-2, 1e-3, w2);
            }
        }
        for (int l = 0; l < 3; l++) for (int k = 0; k < 3; k++) ct_free(g[l][k]);
    }
    ct_scope_pop(sc);
}

/* batch_norm on bf16 activations (float32 weight, bias and statistics, as under autocast)
 * runs natively in bf16: output, running statistics and gradients against the float32
 * computation on the same (widened) values, rounded once: within bf16 rounding. */
static void bf16_batch_norm_case(void) {
    int64_t xs[4] = {5, 6, 7, 9}, c = 6;
    ct_tensor *x32 = ct_randn(xs, 4, CT_FLOAT32), *gy32 = ct_randn(xs, 4, CT_FLOAT32);
    float *px = ct_data(x32);
    for (int64_t i = 0; i < ct_numel(x32); i++) px[i] = 3.0f + 2.0f * px[i];
    ct_tensor *xb = ct_to_dtype(x32, CT_BFLOAT16), *gyb = ct_to_dtype(gy32, CT_BFLOAT16);
    ct_tensor *xw = ct_to_dtype(xb, CT_FLOAT32), *gyw = ct_to_dtype(gyb, CT_FLOAT32);
    ct_tensor *w = ct_randn(&c, 1, CT_FLOAT32), *b = ct_randn(&c, 1, CT_FLOAT32);
    ct_tensor *ys[2], *gx[2], *gw[2], *gb[2], *rm[2], *rv[2];
    ct_tensor *in[2] = {xb, xw}, *g[2] = {gyb, gyw};
    for (int r = 0; r < 2; r++) {
        rm[r] = ct_zeros(&c, 1, CT_FLOAT32);
        rv[r] = ct_ones(&c, 1, CT_FLOAT32);
        ct_set_requires_grad(in[r], 1);
        ct_set_requires_grad(w, 1);
        ct_set_requires_grad(b, 1);
        ys[r] = ct_batch_norm(in[r], rm[r], rv[r], w, b, 1, 0.1, 1e-5);
        CHECK_NN(ys[r]);
        if (!ys[r]) return;
        CHECK(ct_dtype_of(ys[r]) == (r ? CT_FLOAT32 : CT_BFLOAT16));
        CHECK_OK(ct_backward(ys[r], g[r], 0));
        gx[r] = ct_clone(ct_grad(in[r]));
        gw[r] = ct_clone(ct_grad(w));
        gb[r] = ct_clone(ct_grad(b));
        ct_zero_grad(w);
        ct_zero_grad(b);
    }
    check_allclose(ys[0], ys[1], 1.6e-2, 1e-2, "bf16 batch_norm output");
    check_allclose(rm[0], rm[1], 1e-5, 1e-6, "bf16 batch_norm running_mean");
    check_allclose(rv[0], rv[1], 1e-5, 1e-6, "bf16 batch_norm running_var");
    check_allclose(gx[0], gx[1], 1.6e-2, 1e-2, "bf16 batch_norm grad input");
    check_allclose(gw[0], gw[1], 1e-4, 1e-4, "bf16 batch_norm grad weight");
    check_allclose(gb[0], gb[1], 1e-4, 1e-4, "bf16 batch_norm grad bias");
    CHECK(ct_dtype_of(gx[0]) == CT_BFLOAT16);
    for (int r = 0; r < 2; r++) {
        ct_free(ys[r]), ct_free(gx[r]), ct_free(gw[r]), ct_free(gb[r]);
        ct_free(rm[r]), ct_free(rv[r]);
    }
    ct_free(x32), ct_free(gy32), ct_free(xb), ct_free(gyb), ct_free(xw), ct_free(gyw);
    ct_free(w), ct_free(b);
}

/* The implicit-GEMM AMX convolutions (cpu_conv_amx.c: stride 1, C >= 16; the input
 * gradient where O >= 16 and padding <= K - 1) against the widened float32 path, and
 * against the im2col + GEMM path they replace (CTORCH_CONV_AMX=0) and AVX512_BF16: channel
 * counts off multiples of 32, narrow and non-square images, padding 0 to 2 (per axis),
 * 1x1 / 3x3 / 5x5 / 3x1 kernels, batch 1 and odd batches, with and without bias. On an AMX
 * machine, ct_conv_amx_calls() checks that every shape took the new path natively and
 * none did with CTORCH_CONV_AMX=0. */
/* conv_grads with loss sum(y * gy) for a fixed gy (bf16 values): the gradients see the
 * same output gradient on every path, so they compare the backward kernels alone (with
 * sum(y * y), a one-ulp difference of a large y moves a gradient that cancels by more
 * than its own rounding). */
static ct_tensor *conv_grads_gy(const ct_tensor *x, const ct_tensor *w, const ct_tensor *b,
                                const int st[2], const int pd[2], const ct_tensor *gy,
                                ct_tensor **gx, ct_tensor **gw, ct_tensor **gb) {
    ct_tensor *xs = ct_detach(x), *ws = ct_detach(w), *bs = b ? ct_detach(b) : NULL;
    ct_set_requires_grad(xs, 1), ct_set_requires_grad(ws, 1);
    if (bs) ct_set_requires_grad(bs, 1);
    int one[2] = {1, 1};
    ct_tensor *y = ct_conv2d(xs, ws, bs, st, pd, one, 1);
    ct_tensor *yf = y ? ct_to_dtype(y, CT_FLOAT32) : NULL;
    ct_tensor *l = yf ? ct_sum(ct_mul(yf, gy), NULL, 0, 0) : NULL;
    if (l) ct_backward(l, NULL, 0);
    *gx = ct_grad(xs) ? ct_clone(ct_grad(xs)) : NULL;
    *gw = ct_grad(ws) ? ct_clone(ct_grad(ws)) : NULL;
    *gb = bs && ct_grad(bs) ? ct_clone(ct_grad(bs)) : NULL;
    ct_free(xs), ct_free(ws), ct_free(bs), ct_free(yf), ct_free(l);
    return y;
}

TEST(amp_bf16_conv_amx_implicit_gemm_matches_fallback) {
    struct { int64_t n, c, h, w, o, kh, kw; int ph, pw, bias; } cs[] = {
        {3, 20, 9, 7, 24, 3, 3, 1, 1, 1},   /* C, O off 32; H != W; odd batch */
        {1, 16, 4, 4, 16, 3, 3, 1, 1, 0},   /* C = 16, W = 4, batch 1 */
        {5, 32, 6, 8, 40, 3, 3, 0, 0, 1},   /* no padding, W = 8, O = 40 */
        {2, 24, 10, 12, 20, 5, 5, 2, 2, 1}, /* 5x5 */
        {3, 17, 7, 9, 33, 3, 1, 1, 0, 0},   /* 3x1, padding (1, 0) */
        {2, 48, 5, 6, 64, 1, 1, 1, 1, 1},   /* 1x1 padded: input gradient not (p > K-1) */
        {2, 40, 16, 20, 36, 3, 3, 1, 1, 1}, /* several pixel blocks, C = 40 (two blocks) */
        {1, 16, 3, 20, 18, 3, 3, 2, 1, 1},  /* padding 2 on a 3x3: the gradient's is 0 */
        {3, 20, 8, 4, 16, 5, 5, 1, 2, 0},   /* padding (1, 2), W = 4 */
        {2, 64, 16, 16, 64, 3, 3, 1, 1, 1}, /* as simple_cnn's conv2 */
        /* small images, many outputs: gathered pixel rows rather than the padded grid */
        {2, 32, 4, 4, 96, 3, 3, 1, 1, 0},   /* forward gathers, the input gradient not */
        {3, 24, 5, 3, 70, 3, 3, 1, 1, 1},   /* 15 pixels: pixel pairs across images */
        {3, 80, 4, 5, 80, 3, 3, 1, 1, 1},   /* both ways gathered */
        {3, 32, 90, 84, 32, 3, 3, 1, 1, 1}, /* large images: several groups per thread */
    };
    const char *saved = getenv("CTORCH_CPU_ISA");
    char *keep = saved ? strdup(saved) : NULL;
    unsetenv("CTORCH_CPU_ISA");
    unsetenv("CTORCH_CONV_AMX");
    const int amx = ct_gemm_bf16_kind() == CT_BF16_AMX;
    ct_scope *sc = ct_scope_push();
    for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
        int64_t xs[4] = {cs[i].n, cs[i].c, cs[i].h, cs[i].w};
        int64_t ws[4] = {cs[i].o, cs[i].c, cs[i].kh, cs[i].kw};
        ct_tensor *x = ct_to_dtype(ct_randn(xs, 4, CT_FLOAT32), CT_BFLOAT16);
        ct_tensor *w = ct_to_dtype(ct_randn(ws, 4, CT_FLOAT32), CT_BFLOAT16);
        ct_tensor *b = cs[i].bias ? ct_to_dtype(ct_randn(&ws[0], 1, CT_FLOAT32), CT_BFLOAT16) : NULL;
        int st[2] = {1, 1}, pd[2] = {cs[i].ph, cs[i].pw};
        int64_t ys[4] = {cs[i].n, cs[i].o, cs[i].h + 2 * cs[i].ph - cs[i].kh + 1,
                         cs[i].w + 2 * cs[i].pw - cs[i].kw + 1};
        ct_tensor *gy = ct_to_dtype(ct_to_dtype(ct_randn(ys, 4, CT_FLOAT32), CT_BFLOAT16),
                                    CT_FLOAT32);
        /* the widened reference; the AMX convolutions (their choice, then each way of
         * forming pixel rows forced); im2col + GEMM; AVX512_BF16 */
        enum { NL = 6 };
        const char *levels[NL] = {"avx2", "", "", "", "", "avx512"};
        const char *modes[NL] = {NULL, NULL, "virtual", "gather", "0", NULL};
        const char *names[NL] = {"avx2", "amx conv", "amx conv, virtual grid",
                                 "amx conv, gathered rows", "CTORCH_CONV_AMX=0", "avx512"};
        const int64_t want = 2 + (cs[i].o >= 16 && cs[i].ph <= cs[i].kh - 1 &&
                                  cs[i].pw <= cs[i].kw - 1);
        ct_tensor *g[NL][3], *y[NL];
        for (int l = 0; l < NL; l++) {
            setenv("CTORCH_CPU_ISA", levels[l], 1);
            if (modes[l]) setenv("CTORCH_CONV_AMX", modes[l], 1);
            if (l == NL - 1) setenv("CTORCH_BF16_CONV", "gemm", 1); /* AVX512_BF16 GEMM path */
            int64_t before = ct_conv_amx_calls();
            y[l] = conv_grads_gy(x, w, b, st, pd, gy, &g[l][0], &g[l][1], &g[l][2]);
            int64_t took = ct_conv_amx_calls() - before;
            unsetenv("CTORCH_CONV_AMX");
            unsetenv("CTORCH_BF16_CONV");
            int64_t expect = amx && l >= 1 && l <= 3 ? want : 0;
            CHECK_MSG(took == expect, "amx conv case %zu (%s): %lld of the three convolutions "
                      "took the AMX path, expected %lld", i, names[l], (long long)took,
                      (long long)expect);
        }
        unsetenv("CTORCH_CPU_ISA");
        for (int l = 1; l < NL; l++) {
            char what[96];
            snprintf(what, sizeof what, "bf16 conv case %zu (%s)", i, names[l]);
            CHECK_MSG(y[l] && ct_dtype_of(y[l]) == CT_BFLOAT16, "%s: bf16 output (%s)", what,
                      ct_last_error());
            /* both sides round float32 sums of the same products (in another order) once:
             * one bf16 ulp apart, or the sums' float32 rounding where they cancel (as the
             * GEMM test: 4e-6 * sqrt(terms)) */
            const double P = (double)(ys[0] * ys[2] * ys[3]);
            const double terms[4] = {(double)(cs[i].c * cs[i].kh * cs[i].kw),
                                     (double)(cs[i].o * cs[i].kh * cs[i].kw), P, P};
            check_allclose(y[l], y[0], 8e-3, fmax(1e-5, 4e-6 * sqrt(terms[0])), what);
            const char *gn[3] = {"grad input", "grad weight", "grad bias"};
            for (int k = 0; k < 3; k++) {
                if (!g[0][k]) continue;
                char w2[128];
                snprintf(w2, sizeof w2, "%s %s", what, gn[k]);
                /* the same gy on every path (conv_grads_gy) */
                check_allclose(g[l][k], g[0][k], 8e-3, fmax(1e-5, 4e-6 * sqrt(terms[1 + k])), w2);
            }
        }
        for (int l = 0; l < NL; l++) for (int k = 0; k < 3; k++) ct_free(g[l][k]);
    }
    ct_scope_pop(sc);
    if (keep) setenv("CTORCH_CPU_ISA", keep, 1);
    free(keep);
}

TEST(amp_bf16_batch_norm_native_vs_float32) {
    bf16_batch_norm_case(); /* the AVX-512 passes where the CPU has them */
    setenv("CTORCH_CPU_ISA", "avx2", 1); /* the portable passes */
    bf16_batch_norm_case();
    unsetenv("CTORCH_CPU_ISA");
}
