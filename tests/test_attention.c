/* scaled_dot_product_attention: forward and gradients against PyTorch 2.x (masks bool and
 * float, key padding, causal with L > S and L < S, a custom scale, L != S, Ev != E, batch
 * dims that broadcast, several tiles, a row with nothing to attend; float64 and float32,
 * the AVX2 and the scalar paths), float64 gradcheck (with a mask, causal, dropout),
 * dropout's statistics, the memory bound (linear in L), errors, bfloat16, and the
 * backend suite's cases for its two kernels. Also clip_grad_norm_ against PyTorch.
 * Fixtures: tests/fixtures/gen_attention.py (run with a torch >= 2.0). */
#include "backend_test.h"

#include "backends/cpu/cpu_alloc.h"
#include "backends/cpu/cpu_kernels.h"
#include "ctorch_optim.h"
#include "ops/fused.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const CASES[] = {"basic",       "bool",         "float",    "keypad",
                                    "causal_long", "causal_short", "plain2d",  "big_causal",
                                    "big_mask",    "bcast",        "fullrow"};

static ct_tensor *fx_get(ct_fixture *fx, const char *c, const char *what, ct_dtype dt) {
    char k[64];
    snprintf(k, sizeof k, "%s.%s", c, what);
    ct_tensor *t = ct_fixture_get(fx, k);
    if (!t || t->dtype == CT_BOOL || t->dtype == dt) return t;
    ct_tensor *r = ct_to_dtype(t, dt);
    ct_free(t);
    return r;
}

static void run_case(ct_fixture *fx, const char *c, ct_dtype dt, const char *isa) {
    char k[64], what[128];
    const double tol = dt == CT_FLOAT64 ? 1e-10 : 2e-5;
    ct_tensor *q = fx_get(fx, c, "q", dt), *kk = fx_get(fx, c, "k", dt), *v = fx_get(fx, c, "v", dt);
    ct_tensor *gy = fx_get(fx, c, "gy", dt), *args = fx_get(fx, c, "args", CT_FLOAT64);
    snprintf(k, sizeof k, "%s.mask", c);
    ct_tensor *m = ct_fixture_has(fx, k) ? fx_get(fx, c, "mask", dt) : NULL;
    double a[2] = {0, 0};
    if (args) ct_copy_to_buffer(args, a, sizeof a);
    CHECK_OK(ct_set_requires_grad(q, 1));
    CHECK_OK(ct_set_requires_grad(kk, 1));
    CHECK_OK(ct_set_requires_grad(v, 1));
    ct_tensor *y = ct_scaled_dot_product_attention(q, kk, v, m, 0.0, a[0] != 0, a[1]);
    CHECK_NN(y);
    const char *names[4] = {"y", "gq", "gk", "gv"};
    if (y) CHECK_OK(ct_backward(y, gy, 0));
    const ct_tensor *got[4] = {y, ct_grad(q), ct_grad(kk), ct_grad(v)};
    for (int i = 0; i < 4; i++) {
        ct_tensor *want = fx_get(fx, c, names[i], dt);
        snprintf(what, sizeof what, "sdpa %s %s %s (isa %s)", c, ct_dtype_name(dt), names[i],
                 isa);
        CHECK_CLOSE(got[i], want, tol, what);
        ct_free(want);
    }
    ct_free(q), ct_free(kk), ct_free(v), ct_free(gy), ct_free(args), ct_free(m), ct_free(y);
}

TEST(attention_vs_torch) {
    ct_fixture *fx = ct_fixture_load("attention");
    if (!fx) return;
    const char *isa0 = getenv("CTORCH_CPU_ISA");
    char saved[32] = "";
    if (isa0) snprintf(saved, sizeof saved, "%s", isa0);
    const char *isas[2] = {"default", "none"};
    for (int ii = 0; ii < 2; ii++) {
        if (ii == 1) setenv("CTORCH_CPU_ISA", "none", 1);
        for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++) {
            run_case(fx, CASES[c], CT_FLOAT64, isas[ii]);
            run_case(fx, CASES[c], CT_FLOAT32, isas[ii]);
        }
    }
    if (isa0) setenv("CTORCH_CPU_ISA", saved, 1);
    else unsetenv("CTORCH_CPU_ISA");
    ct_fixture_free(fx);
}

typedef struct {
    const ct_tensor *mask;
    double p;
    int causal;
} gc_ctx;

static ct_tensor *gc_sdpa(ct_tensor *const *in, void *vc) {
    const gc_ctx *c = vc;
    if (c->p > 0) ct_set_rng_state(1234, 0); /* the same dropout mask on every call */
    return ct_scaled_dot_product_attention(in[0], in[1], in[2], c->mask, c->p, c->causal, 0.0);
}

TEST(attention_gradcheck_float64) {
    int64_t qs[3] = {2, 5, 4}, ks[3] = {2, 6, 4}, vs[3] = {2, 6, 3}, ms[2] = {5, 6};
    ct_tensor *in[3] = {ct_test_randn(qs, 3, CT_FLOAT64), ct_test_randn(ks, 3, CT_FLOAT64),
                        ct_test_randn(vs, 3, CT_FLOAT64)};
    for (int i = 0; i < 3; i++) CHECK_OK(ct_set_requires_grad(in[i], 1));
    ct_tensor *fm = ct_test_randn(ms, 2, CT_FLOAT64);
    gc_ctx plain = {NULL, 0, 0}, masked = {fm, 0, 0}, causal = {NULL, 0, 1},
           drop = {fm, 0.3, 0};
    GRADCHECK(gc_sdpa, in, 3, &plain, "sdpa");
    GRADCHECK(gc_sdpa, in, 3, &masked, "sdpa float mask");
    GRADCHECK(gc_sdpa, in, 3, &causal, "sdpa causal");
    GRADCHECK(gc_sdpa, in, 3, &drop, "sdpa dropout 0.3");
    for (int i = 0; i < 3; i++) ct_free(in[i]);
    ct_free(fm);
}

/* ------------------------------------------- MultiheadAttention's packed q, k, v */
typedef struct {
    const ct_tensor *mask;
    double p;
    int causal;
    int64_t heads;
} packed_ctx;

static ct_tensor *gc_packed(ct_tensor *const *in, void *vc) {
    const packed_ctx *c = vc;
    if (c->p > 0) ct_set_rng_state(1234, 0);
    return ct_sdpa_packed_qkv(in[0], c->heads, c->mask, c->p, c->causal, 0.0);
}

/* The same through public ops: narrow, [N, H, L, d] views, the op, the heads merged. */
static ct_tensor *composed_packed(ct_tensor *const *in, void *vc) {
    const packed_ctx *c = vc;
    if (c->p > 0) ct_set_rng_state(1234, 0);
    CT_SCOPE(s);
    const ct_tensor *x = in[0];
    const int64_t N = ct_size(x, 0), L = ct_size(x, 1), E = ct_size(x, 2) / 3, H = c->heads;
    int64_t hs[4] = {N, L, H, E / H}, os[3] = {N, L, E};
    ct_tensor *h[3];
    for (int i = 0; i < 3; i++) h[i] = ct_transpose(ct_reshape(ct_narrow(x, 2, i * E, E), hs, 4), 1, 2);
    ct_tensor *a = ct_scaled_dot_product_attention(h[0], h[1], h[2], c->mask, c->p, c->causal, 0.0);
    return ct_keep(ct_reshape(ct_transpose(a, 1, 2), os, 3));
}

TEST(attention_packed_qkv_matches_composed_ops) {
    const int64_t N = 2, L = 5, E = 6, H = 2;
    int64_t xs[3] = {N, L, 3 * E}, ms[2] = {L, L}, ks[4] = {N, 1, 1, L};
    ct_tensor *x = ct_test_randn(xs, 3, CT_FLOAT64);
    CHECK_OK(ct_set_requires_grad(x, 1));
    ct_tensor *fm = ct_test_randn(ms, 2, CT_FLOAT64);
    ct_tensor *kpm = ct_zeros(ks, 4, CT_FLOAT64); /* the last key of batch 1 padded */
    ((double *)ct_data(kpm))[2 * L - 1] = -INFINITY;
    packed_ctx cases[5] = {{NULL, 0, 0, H}, {fm, 0, 0, H}, {NULL, 0, 1, H}, {kpm, 0, 0, H},
                           {fm, 0.3, 0, 3}};
    const char *names[5] = {"plain", "float mask", "causal", "key padding", "dropout, 3 heads"};
    for (int c = 0; c < 5; c++) {
        char what[96];
        for (int f32 = 0; f32 < 2; f32++) {
            ct_tensor *xi = f32 ? ct_to_dtype(x, CT_FLOAT32) : ct_retain(x);
            ct_tensor *xl = ct_detach(xi);
            CHECK_OK(ct_set_requires_grad(xl, 1));
            ct_tensor *in[1] = {xl}, *y[2], *g[2];
            const ct_tensor *m32 = NULL;
            ct_tensor *mc = NULL;
            packed_ctx pc = cases[c];
            if (f32 && pc.mask) pc.mask = m32 = mc = ct_to_dtype(pc.mask, CT_FLOAT32);
            for (int k = 0; k < 2; k++) {
                y[k] = k ? composed_packed(in, &pc) : gc_packed(in, &pc);
                CHECK_NN(y[k]);
                ct_tensor *gy = ct_ones_like(y[k]);
                CHECK_OK(ct_backward(y[k], gy, 0));
                g[k] = ct_retain(ct_grad(xl));
                ct_zero_grad(xl);
                ct_free(gy);
            }
            snprintf(what, sizeof what, "packed qkv %s %s", names[c], f32 ? "float32" : "float64");
            CHECK_CLOSE(y[0], y[1], f32 ? 1e-6 : 1e-12, what);
            CHECK_CLOSE(g[0], g[1], f32 ? 1e-6 : 1e-12, what);
            for (int k = 0; k < 2; k++) ct_free(y[k]), ct_free(g[k]);
            ct_free(xi), ct_free(xl), ct_free(mc);
            (void)m32;
        }
        ct_tensor *in[1] = {x};
        snprintf(what, sizeof what, "packed qkv gradcheck %s", names[c]);
        GRADCHECK(gc_packed, in, 1, &cases[c], what);
    }
    /* errors name the shape and the fix */
    int64_t bs[3] = {2, 5, 7};
    ct_tensor *bad = ct_zeros(bs, 3, CT_FLOAT32);
    CHECK(ct_sdpa_packed_qkv(bad, 2, NULL, 0, 0, 0.0) == NULL &&
          strstr(ct_last_error(), "multiple of num_heads"));
    ct_free(bad), ct_free(x), ct_free(fm), ct_free(kpm);
}

/* The public op on q, k, v that are strided views (heads of [N, L, H, d]) equals it on
 * contiguous copies, and its output keeps q's memory order ([N, L, H, d]). */
TEST(attention_strided_inputs_and_output_layout) {
    int64_t s[4] = {2, 7, 3, 4};
    ct_tensor *base[3], *h[3], *hc[3];
    for (int i = 0; i < 3; i++) {
        base[i] = ct_test_randn(s, 4, CT_FLOAT32);
        h[i] = ct_transpose(base[i], 1, 2); /* [2, 3, 7, 4], strided */
        hc[i] = ct_contiguous(h[i]);
    }
    ct_tensor *y = ct_scaled_dot_product_attention(h[0], h[1], h[2], NULL, 0, 1, 0.0);
    ct_tensor *yc = ct_scaled_dot_product_attention(hc[0], hc[1], hc[2], NULL, 0, 1, 0.0);
    CHECK_NN(y);
    CHECK_NN(yc);
    CHECK_CLOSE(y, yc, 1e-6, "sdpa on strided heads");
    ct_tensor *yt = y ? ct_transpose(y, 1, 2) : NULL;
    CHECK_MSG(yt && ct_is_contiguous(yt), "the output is not in q's [N, L, H, d] order");
    ct_free(yt), ct_free(y), ct_free(yc);
    for (int i = 0; i < 3; i++) ct_free(base[i]), ct_free(h[i]), ct_free(hc[i]);
}

/* q = k = 0: uniform weights 1/S; v = identity: out[i][j] = dropout factor / S. */
TEST(attention_dropout) {
    const int64_t L = 64, S = 64;
    int64_t qs[3] = {2, L, 4}, vs[2] = {S, S};
    ct_tensor *q = ct_zeros(qs, 3, CT_FLOAT32), *eye = ct_zeros(vs, 2, CT_FLOAT32);
    float *e = (float *)ct_data(eye);
    for (int64_t i = 0; i < S; i++) e[i * S + i] = 1.0f;
    int64_t ks[3] = {2, S, 4};
    ct_tensor *k = ct_zeros(ks, 3, CT_FLOAT32);
    ct_manual_seed(5);
    ct_tensor *y1 = ct_scaled_dot_product_attention(q, k, eye, NULL, 0.25, 0, 0.0);
    ct_manual_seed(5);
    ct_tensor *y2 = ct_scaled_dot_product_attention(q, k, eye, NULL, 0.25, 0, 0.0);
    CHECK_NN(y1);
    CHECK_NN(y2);
    CHECK_CLOSE(y1, y2, 0, "the same seed gives the same dropout");
    int64_t zeros = 0, n = 2 * L * S, bad = 0;
    const float *y = y1 ? (const float *)ct_data(y1) : NULL;
    for (int64_t i = 0; y && i < n; i++) {
        if (y[i] == 0) zeros++;
        else if (fabsf(y[i] - 1.0f / (0.75f * S)) > 1e-5f) bad++;
    }
    CHECK_MSG(bad == 0, "%lld outputs are neither 0 nor 1/((1-p) S)", (long long)bad);
    CHECK_MSG(fabs((double)zeros / n - 0.25) < 0.03, "dropped fraction %.3f, want 0.25",
              (double)zeros / n);
    ct_tensor *y3 = ct_scaled_dot_product_attention(q, k, eye, NULL, 1.0, 0, 0.0);
    CHECK_NN(y3);
    if (y3) CHECK(ct_item(ct_keep(ct_sum(ct_keep(ct_abs(y3)), NULL, 0, 0))) == 0);
    ct_free(q), ct_free(k), ct_free(eye), ct_free(y1), ct_free(y2), ct_free(y3);
}

/* Peak bytes the CPU allocator hands out during forward + backward at sequence L, beyond
 * what was live before, minus the inputs, outputs and gradients (all linear in L). */
static double attention_peak(int64_t L) {
    const int64_t E = 16;
    int64_t sh[3] = {1, L, E};
    ct_tensor *q = ct_randn(sh, 3, CT_FLOAT32), *k = ct_randn(sh, 3, CT_FLOAT32);
    ct_tensor *v = ct_randn(sh, 3, CT_FLOAT32), *gy = ct_randn(sh, 3, CT_FLOAT32);
    ct_set_requires_grad(q, 1), ct_set_requires_grad(k, 1), ct_set_requires_grad(v, 1);
    ct_cpu_alloc_stats s0, s1;
    ct_cpu_alloc_get_stats(&s0);
    ct_cpu_alloc_reset_peak();
    ct_tensor *y = ct_scaled_dot_product_attention(q, k, v, NULL, 0.0, 1, 0.0);
    int rc = y ? ct_backward(y, gy, 0) : -1;
    ct_cpu_alloc_get_stats(&s1);
    ct_free(q), ct_free(k), ct_free(v), ct_free(gy), ct_free(y);
    return rc == 0 ? (double)(s1.peak_bytes - s0.live_bytes) : -1;
}

TEST(attention_memory_linear) {
    const int64_t Ls[3] = {256, 1024, 4096};
    double peak[3];
    for (int i = 0; i < 3; i++) {
        peak[i] = attention_peak(Ls[i]);
        CHECK(peak[i] > 0);
        printf("  sdpa fwd+bwd L=%lld E=16: peak extra %.0f bytes (%.1f per token; the score "
               "matrix alone would be %.0f bytes)\n",
               (long long)Ls[i], peak[i], peak[i] / (double)Ls[i],
               4.0 * (double)Ls[i] * (double)Ls[i]);
    }
    /* linear: x4 per step (plus constant tiles); quadratic would be x16 */
    CHECK_MSG(peak[2] < 6 * peak[1] && peak[1] < 6 * peak[0],
              "peak bytes %.0f, %.0f, %.0f do not grow linearly", peak[0], peak[1], peak[2]);
    CHECK_MSG(peak[2] < 4096.0 * 4096.0, "peak %.0f bytes at L=4096: the score matrix?", peak[2]);
}

TEST(attention_bfloat16) {
    int64_t sh[3] = {2, 70, 16};
    ct_tensor *q = ct_randn(sh, 3, CT_FLOAT32), *k = ct_randn(sh, 3, CT_FLOAT32);
    ct_tensor *v = ct_randn(sh, 3, CT_FLOAT32);
    ct_tensor *qb = ct_to_dtype(q, CT_BFLOAT16), *kb = ct_to_dtype(k, CT_BFLOAT16);
    ct_tensor *vb = ct_to_dtype(v, CT_BFLOAT16);
    ct_tensor *qr = ct_to_dtype(qb, CT_FLOAT32), *kr = ct_to_dtype(kb, CT_FLOAT32);
    ct_tensor *vr = ct_to_dtype(vb, CT_FLOAT32);
    ct_set_requires_grad(qb, 1);
    ct_tensor *y = ct_scaled_dot_product_attention(qb, kb, vb, NULL, 0.0, 1, 0.0);
    ct_tensor *want = ct_scaled_dot_product_attention(qr, kr, vr, NULL, 0.0, 1, 0.0);
    CHECK_NN(y);
    CHECK(y && y->dtype == CT_BFLOAT16);
    ct_tensor *y32 = y ? ct_to_dtype(y, CT_FLOAT32) : NULL;
    CHECK_CLOSE(y32, want, 1e-2, "sdpa bfloat16 vs float32");
    ct_tensor *s = y ? ct_sum(y, NULL, 0, 0) : NULL;
    if (s) CHECK_OK(ct_backward(s, NULL, 0));
    CHECK(ct_grad(qb) && ct_grad(qb)->dtype == CT_BFLOAT16);
    ct_free(q), ct_free(k), ct_free(v), ct_free(qb), ct_free(kb), ct_free(vb), ct_free(qr);
    ct_free(kr), ct_free(vr), ct_free(y), ct_free(want), ct_free(y32), ct_free(s);
}

/* Under a bf16 autocast region q, k, v (and a float mask) are cast: PyTorch's CPU autocast
 * lists scaled_dot_product_attention as lower precision. */
TEST(attention_autocast_bfloat16) {
    int64_t sh[3] = {2, 9, 8}, ms[2] = {9, 9};
    ct_tensor *q = ct_randn(sh, 3, CT_FLOAT32), *m = ct_randn(ms, 2, CT_FLOAT32);
    ct_tensor *qb = ct_to_dtype(q, CT_BFLOAT16), *mb = ct_to_dtype(m, CT_BFLOAT16);
    CHECK_OK(ct_autocast_push(CT_CPU, CT_BFLOAT16));
    ct_tensor *y = ct_scaled_dot_product_attention(q, q, q, m, 0.0, 0, 0.0);
    ct_autocast_pop();
    ct_tensor *want = ct_scaled_dot_product_attention(qb, qb, qb, mb, 0.0, 0, 0.0);
    CHECK_NN(y);
    CHECK(y && y->dtype == CT_BFLOAT16);
    CHECK_CLOSE(y, want, 0, "sdpa under autocast = sdpa of the bf16 casts");
    ct_free(q), ct_free(m), ct_free(qb), ct_free(mb), ct_free(y), ct_free(want);
}

TEST(attention_errors) {
    int64_t qs[3] = {2, 5, 4}, ks[3] = {2, 6, 3}, ms[2] = {5, 5};
    ct_tensor *q = ct_randn(qs, 3, CT_FLOAT32), *kbad = ct_randn(ks, 3, CT_FLOAT32);
    ct_tensor *qd = ct_randn(qs, 3, CT_FLOAT64), *m = ct_zeros(ms, 2, CT_FLOAT32);
    ct_tensor *mi = ct_zeros(ms, 2, CT_INT64);
    CHECK_ERR_PTR(ct_scaled_dot_product_attention(q, kbad, kbad, NULL, 0, 0, 0), "do not fit");
    CHECK_ERR_PTR(ct_scaled_dot_product_attention(q, qd, q, NULL, 0, 0, 0), "one floating dtype");
    CHECK_ERR_PTR(ct_scaled_dot_product_attention(q, q, q, m, 0, 1, 0), "both set");
    CHECK_ERR_PTR(ct_scaled_dot_product_attention(q, q, q, mi, 0, 0, 0), "bool (true = attend)");
    CHECK_ERR_PTR(ct_scaled_dot_product_attention(q, q, q, NULL, 1.5, 0, 0), "dropout_p 1.5");
    CHECK_ERR_PTR(ct_scaled_dot_product_attention(q, q, q, kbad, 0, 0, 0), "does not broadcast");
    CHECK_ERR_PTR(ct_scaled_dot_product_attention(NULL, q, q, NULL, 0, 0, 0), "is NULL");
    ct_free(q), ct_free(kbad), ct_free(qd), ct_free(m), ct_free(mi);
}

/* ------------------------------------------------------------- clip_grad_norm_ */
TEST(clip_grad_norm_vs_torch) {
    ct_fixture *fx = ct_fixture_load("clip_grad_norm");
    if (!fx) return;
    const char *cases[] = {"p2", "p1", "p3", "pinf", "noclip"};
    char k[64], what[96];
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++)
        for (int f32 = 0; f32 < 2; f32++) {
            ct_tensor *p[4] = {NULL, NULL, NULL, NULL};
            for (int i = 0; i < 3; i++) {
                snprintf(k, sizeof k, "g%d", i);
                ct_tensor *g = ct_fixture_get(fx, k);
                ct_tensor *gd = f32 ? ct_to_dtype(g, CT_FLOAT32) : ct_retain(g);
                p[i] = ct_zeros_like(gd);
                ct_set_requires_grad(p[i], 1);
                ct_tensor *prod = ct_keep(ct_sum(ct_keep(ct_mul(p[i], gd)), NULL, 0, 0));
                CHECK_OK(ct_backward(prod, NULL, 0)); /* grad = g */
                ct_free(g), ct_free(gd);
            }
            /* p[3] has no gradient: skipped */
            p[3] = ct_zeros(&(int64_t){3}, 1, f32 ? CT_FLOAT32 : CT_FLOAT64);
            snprintf(k, sizeof k, "%s.args", cases[c]);
            ct_tensor *args = ct_fixture_get(fx, k);
            double a[2] = {0, 0};
            if (args) ct_copy_to_buffer(args, a, sizeof a);
            const double norm_type = a[0] < 0 ? INFINITY : a[0];
            const double total = ct_clip_grad_norm_(p, 4, a[1], norm_type);
            snprintf(k, sizeof k, "%s.total", cases[c]);
            ct_tensor *tw = ct_fixture_get(fx, k);
            const double want = tw ? ct_item(tw) : NAN;
            CHECK_MSG(fabs(total - want) <= 1e-6 * fabs(want), "%s: total %.12g, want %.12g",
                      cases[c], total, want);
            for (int i = 0; i < 3; i++) {
                snprintf(k, sizeof k, "%s.g%d", cases[c], i);
                ct_tensor *gw = ct_fixture_get(fx, k);
                snprintf(what, sizeof what, "clip_grad_norm_ %s g%d %s", cases[c], i,
                         f32 ? "float32" : "float64");
                CHECK_CLOSE(ct_grad(p[i]), gw, f32 ? 1e-6 : 1e-12, what);
                ct_free(gw);
            }
            for (int i = 0; i < 4; i++) ct_free(p[i]);
            ct_free(args), ct_free(tw);
        }
    ct_fixture_free(fx);
    double bad = ct_clip_grad_norm_(NULL, 2, 1.0, 2.0);
    CHECK(bad == -1.0 && strstr(ct_last_error(), "clip_grad_norm_"));
    bad = ct_clip_grad_norm_(NULL, 0, 1.0, -1.0);
    CHECK(bad == -1.0 && strstr(ct_last_error(), "norm_type"));
    CHECK(ct_clip_grad_norm_(NULL, 0, 1.0, 2.0) == 0.0);
}

/* ----------------------------------------------------------- backend cases */
/* A [B1, B2, R, C] operand; strided: a view of [B1, R, B2, C] memory (the heads of a
 * [N, L, H, d] projection, as MultiheadAttention hands them to the kernels). */
static tp sdpa_operand(int64_t B1, int64_t B2, int64_t R, int64_t C, ct_dtype dt, ct_device dev,
                       int strided) {
    if (!strided) return tp_rnd((int64_t[]){B1, B2, R, C}, 4, dt, 0, dev);
    tp x = tp_rnd((int64_t[]){B1, R, B2, C}, 4, dt, 0, dev);
    tp t = tp_transpose(x, 1, 2);
    tp_free(x);
    return t;
}

static void case_sdpa(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64};
    /* B1, B2, L, S, E, Ev; the first with strided operands. One query and one key: the
     * forward only (the weight is 1, so dQ and dK are exactly 0 in theory and each backend's
     * rounding noise around 0 has no relative error to compare). */
    const int64_t shapes[][6] = {{2, 3, 7, 9, 8, 5}, {1, 1, 66, 130, 8, 8}, {1, 1, 1, 1, 4, 4},
                                 {1, 1, 2, 3, 4, 4}};
    for (int di = 0; di < 2; di++)
        for (int si = 0; si < 4; si++)
            for (int mode = 0; mode < 3; mode++) { /* plain, causal, mask + dropout */
                if (si == 1 && di == 1) continue; /* the tiled shape in float32 only (emulator time) */
                if (si == 2 && bwd) continue;
                const ct_dtype dt = dts[di];
                const int64_t B1 = shapes[si][0], B2 = shapes[si][1], B = B1 * B2;
                const int64_t L = shapes[si][2], S = shapes[si][3];
                const int64_t E = shapes[si][4], Ev = shapes[si][5];
                const int st = si == 0;
                int64_t ls[2] = {B, L}, ms[4] = {1, B, L, S};
                char what[128];
                snprintf(what, sizeof what, "sdpa %s B=%lldx%lld L=%lld S=%lld mode %d %s%s",
                         bwd ? "backward" : "forward", (long long)B1, (long long)B2, (long long)L,
                         (long long)S, mode, ct_dtype_name(dt), st ? " strided" : "");
                ct_sdpa_params p = {0.35, mode == 2 ? 0.2 : 0.0, 77, 5, mode == 1};
                tp q = sdpa_operand(B1, B2, L, E, dt, dev, st);
                tp kk = sdpa_operand(B1, B2, S, E, dt, dev, st);
                tp v = sdpa_operand(B1, B2, S, Ev, dt, dev, st);
                tp o = sdpa_operand(B1, B2, L, Ev, dt, dev, st);
                tp lse = tp_rnd(ls, 2, dt, 0, dev);
                tp m = mode == 2 ? tp_rnd(ms, 4, dt, 0, dev) : (tp){NULL, NULL};
                KCALL(what, cpuk()->sdpa_forward(o.c, lse.c, q.c, kk.c, v.c, m.c, &p),
                      k->sdpa_forward(o.d, lse.d, q.d, kk.d, v.d, m.d, &p));
                if (!bwd) {
                    tp_check(o, tol_for(dt), what, bname);
                    tp_check(lse, tol_for(dt), what, bname);
                } else {
                    tp gy = sdpa_operand(B1, B2, L, Ev, dt, dev, st);
                    tp gq = sdpa_operand(B1, B2, L, E, dt, dev, st);
                    tp gk = sdpa_operand(B1, B2, S, E, dt, dev, st);
                    tp gv = sdpa_operand(B1, B2, S, Ev, dt, dev, st);
                    KCALL(what,
                          cpuk()->sdpa_backward(gq.c, gk.c, gv.c, gy.c, q.c, kk.c, v.c, o.c,
                                                lse.c, m.c, &p),
                          k->sdpa_backward(gq.d, gk.d, gv.d, gy.d, q.d, kk.d, v.d, o.d,
                                           lse.d, m.d, &p));
                    tp_check(gq, tol_for(dt), what, bname);
                    tp_check(gk, tol_for(dt), what, bname);
                    tp_check(gv, tol_for(dt), what, bname);
                    tp_free(gy), tp_free(gq), tp_free(gk), tp_free(gv);
                }
                tp_free(q), tp_free(kk), tp_free(v), tp_free(o), tp_free(lse);
                if (m.c) tp_free(m);
            }
}

static void case_sdpa_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_sdpa(dev, k, bname, 0);
}
static void case_sdpa_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    case_sdpa(dev, k, bname, 1);
}
BACKEND_CASE(sdpa_forward, case_sdpa_fwd)
BACKEND_CASE(sdpa_backward, case_sdpa_bwd)

/* The op end to end on CUDA (bool mask made additive there, broadcast batch dims, dropout:
 * the same weights dropped as on the CPU), forward and gradients against the CPU. */
TEST(backends_sdpa_op_vs_cpu) {
    char why[1024];
    if (!backend_cuda_ready(why, sizeof why)) SKIP(why);
    const ct_device dev = {CT_CUDA, 0};
    int64_t qs[4] = {2, 3, 20, 8}, ks[3] = {3, 30, 8}, vs[4] = {1, 3, 30, 6}, ms[2] = {20, 30};
    ct_tensor *q = ct_randn(qs, 4, CT_FLOAT32), *k = ct_randn(ks, 3, CT_FLOAT32);
    ct_tensor *v = ct_randn(vs, 4, CT_FLOAT32), *u = ct_rand(ms, 2, CT_FLOAT32);
    ct_tensor *half = ct_scalar(0.3, CT_FLOAT32), *m = ct_gt(u, half);
    ct_tensor *qd = ct_to_device(q, dev), *kd = ct_to_device(k, dev), *vd = ct_to_device(v, dev);
    ct_tensor *md = ct_to_device(m, dev);
    ct_tensor *in[2][3] = {{q, k, v}, {qd, kd, vd}};
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < 3; i++) CHECK_OK(ct_set_requires_grad(in[d][i], 1));
    ct_set_rng_state(99, 0);
    ct_tensor *yc = ct_scaled_dot_product_attention(q, k, v, m, 0.2, 0, 0.0);
    ct_set_rng_state(99, 0);
    ct_tensor *yd = ct_scaled_dot_product_attention(qd, kd, vd, md, 0.2, 0, 0.0);
    CHECK_NN(yc);
    CHECK_NN(yd);
    ct_tensor *sc = yc ? ct_sum(yc, NULL, 0, 0) : NULL, *sd = yd ? ct_sum(yd, NULL, 0, 0) : NULL;
    if (sc) CHECK_OK(ct_backward(sc, NULL, 0));
    if (sd) CHECK_OK(ct_backward(sd, NULL, 0));
    ct_tensor *yh = yd ? ct_to_device(yd, ct_cpu()) : NULL;
    CHECK_CLOSE(yh, yc, 1e-5, "sdpa cuda forward");
    const char *names[3] = {"gq", "gk", "gv"};
    for (int i = 0; i < 3; i++) {
        ct_tensor *g = ct_grad(in[1][i]) ? ct_to_device(ct_grad(in[1][i]), ct_cpu()) : NULL;
        CHECK_CLOSE(g, ct_grad(in[0][i]), 1e-5, names[i]);
        ct_free(g);
    }
    ct_free(q), ct_free(k), ct_free(v), ct_free(u), ct_free(half), ct_free(m), ct_free(qd);
    ct_free(kd), ct_free(vd), ct_free(md), ct_free(yc), ct_free(yd), ct_free(sc), ct_free(sd);
    ct_free(yh);
}

TEST(attention_nan_and_underflow) {
    /* a NaN in one query row makes that output row NaN and no other (as in PyTorch); keys
     * behind a -200 additive mask (probabilities e^-200: 0 in float32) give the output of
     * attention over the other keys alone. 40 keys: the vector exp and its tail. */
    enum { L = 21, S = 40, E = 16, KEEP = 13 };
    int64_t sq[3] = {1, L, E}, sk[3] = {1, S, E}, sm[2] = {L, S};
    ct_tensor *q = ct_randn(sq, 3, CT_FLOAT32), *k = ct_randn(sk, 3, CT_FLOAT32);
    ct_tensor *v = ct_randn(sk, 3, CT_FLOAT32);
    float *qd = malloc(sizeof(float) * L * E), *md = malloc(sizeof(float) * L * S);
    float *yd = malloc(sizeof(float) * L * E);
    CHECK(ct_copy_to_buffer(q, qd, sizeof(float) * L * E) == 0);
    qd[3 * E + 5] = NAN;
    ct_tensor *qn = ct_from_data(qd, sq, 3, CT_FLOAT32);
    ct_tensor *y = ct_scaled_dot_product_attention(qn, k, v, NULL, 0.0, 0, 0.0);
    CHECK(y && ct_copy_to_buffer(y, yd, sizeof(float) * L * E) == 0);
    for (int i = 0; y && i < L; i++)
        for (int e = 0; e < E; e++)
            CHECK_MSG(i == 3 ? isnan(yd[i * E + e]) : isfinite(yd[i * E + e]),
                      "row %d col %d: %g", i, e, yd[i * E + e]);
    for (int i = 0; i < L; i++)
        for (int j = 0; j < S; j++) md[i * S + j] = j < KEEP ? 0.0f : -200.0f;
    ct_tensor *m = ct_from_data(md, sm, 2, CT_FLOAT32);
    ct_tensor *ym = ct_scaled_dot_product_attention(q, k, v, m, 0.0, 0, 0.0);
    ct_tensor *kk = ct_narrow(k, 1, 0, KEEP), *vk = ct_narrow(v, 1, 0, KEEP);
    ct_tensor *want = ct_scaled_dot_product_attention(q, kk, vk, NULL, 0.0, 0, 0.0);
    CHECK_CLOSE(ym, want, 1e-6, "keys behind a -200 mask");
    ct_free(want), ct_free(kk), ct_free(vk), ct_free(ym), ct_free(m), ct_free(y), ct_free(qn);
    ct_free(q), ct_free(k), ct_free(v);
    free(qd), free(md), free(yd);
}

/* Causal with more keys than queries (PyTorch's top-left alignment): the keys past the
 * last query are seen by none, so their rows of dK and dV are exactly zero, whatever memory
 * the gradients were given (the allocator hands back a block of NaNs freed just before);
 * one query block, four key blocks, one of them partly seen. */
TEST(attention_causal_unseen_keys_get_zero_gradients) {
    enum { H = 2, L = 40, S = 300, E = 16 };
    int64_t sq[3] = {H, L, E}, sk[3] = {H, S, E};
    ct_manual_seed(3);
    ct_tensor *q = ct_randn(sq, 3, CT_FLOAT32), *k = ct_randn(sk, 3, CT_FLOAT32);
    ct_tensor *v = ct_randn(sk, 3, CT_FLOAT32), *go = ct_randn(sq, 3, CT_FLOAT32);
    ct_set_requires_grad(q, 1);
    ct_set_requires_grad(k, 1);
    ct_set_requires_grad(v, 1);
    ct_tensor *y = ct_scaled_dot_product_attention(q, k, v, NULL, 0.0, 1, 0.0);
    CHECK_NN(y);
    for (int rep = 0; rep < 4; rep++) { /* dirty blocks of the gradients' size, freed */
        ct_tensor *junk = ct_full(sk, 3, NAN, CT_FLOAT32);
        ct_free(junk);
    }
    if (y) CHECK_OK(ct_backward(y, go, 0));
    float *gk = malloc(sizeof(float) * H * S * E), *gv = malloc(sizeof(float) * H * S * E);
    CHECK(ct_grad(k) && ct_copy_to_buffer(ct_grad(k), gk, sizeof(float) * H * S * E) == 0);
    CHECK(ct_grad(v) && ct_copy_to_buffer(ct_grad(v), gv, sizeof(float) * H * S * E) == 0);
    int unseen_nonzero = 0, seen_bad = 0, seen_nonzero = 0;
    for (int h = 0; h < H; h++)
        for (int j = 0; j < S; j++)
            for (int e = 0; e < E; e++) {
                float a = gk[(h * S + j) * E + e], b = gv[(h * S + j) * E + e];
                if (j >= L) unseen_nonzero += a != 0.0f || b != 0.0f;
                else {
                    seen_bad += !isfinite(a) || !isfinite(b);
                    seen_nonzero += b != 0.0f;
                }
            }
    CHECK_MSG(unseen_nonzero == 0, "%d gradient values of unseen keys are not 0", unseen_nonzero);
    CHECK(seen_bad == 0 && seen_nonzero > 0);
    free(gk), free(gv);
    ct_free(y), ct_free(q), ct_free(k), ct_free(v), ct_free(go);
}

/* The CPU kernels on bfloat16 q, k, v (the native path: one batch widened at a time) give
 * bit for bit what widening whole tensors, running the float32 kernels and rounding the
 * results gives: outputs, log-sum-exp and all three gradients; with a float32 mask, causal,
 * S != L, and a batch small enough for the backward to split the keys (dQ partial sums). */
static int bits_equal(const ct_tensor *a, const ct_tensor *b) {
    size_t n = (size_t)ct_numel(a) * (a->dtype == CT_BFLOAT16 ? 2 : 4);
    return ct_numel(a) == ct_numel(b) && a->dtype == b->dtype &&
           memcmp(ct_data((ct_tensor *)a), ct_data((ct_tensor *)b), n) == 0;
}

TEST(attention_bf16_kernel_equals_widened_float32) {
    const struct {
        int64_t b1, b2, L, S, E;
        int causal, mask;
    } cs[] = {{2, 3, 70, 70, 16, 0, 0}, {1, 1, 200, 200, 32, 1, 0}, {2, 1, 40, 50, 8, 0, 1}};
    for (size_t t = 0; t < sizeof cs / sizeof *cs; t++) {
        int64_t qs[4] = {cs[t].b1, cs[t].b2, cs[t].L, cs[t].E};
        int64_t ks[4] = {cs[t].b1, cs[t].b2, cs[t].S, cs[t].E};
        int64_t ls[2] = {cs[t].b1 * cs[t].b2, cs[t].L};
        int64_t ms[4] = {cs[t].b1, cs[t].b2, cs[t].L, cs[t].S};
        ct_manual_seed(40 + (uint64_t)t);
        ct_tensor *f[4] = {ct_randn(qs, 4, CT_FLOAT32), ct_randn(ks, 4, CT_FLOAT32),
                           ct_randn(ks, 4, CT_FLOAT32), ct_randn(qs, 4, CT_FLOAT32)};
        ct_tensor *b[4], *w[4]; /* bf16 q k v dO, and their widened values */
        for (int i = 0; i < 4; i++) {
            b[i] = ct_to_dtype(f[i], CT_BFLOAT16);
            w[i] = ct_to_dtype(b[i], CT_FLOAT32);
        }
        ct_tensor *mask = cs[t].mask ? ct_randn(ms, 4, CT_FLOAT32) : NULL;
        ct_sdpa_params p = {1.0 / sqrt((double)cs[t].E), 0.0, 0, 0, cs[t].causal};
        ct_tensor *ob = ct_empty(qs, 4, CT_BFLOAT16), *o32 = ct_empty(qs, 4, CT_FLOAT32);
        ct_tensor *lb = ct_empty(ls, 2, CT_FLOAT32), *l32 = ct_empty(ls, 2, CT_FLOAT32);
        CHECK_OK(cpu_sdpa_forward(ob, lb, b[0], b[1], b[2], mask, &p));
        CHECK_OK(cpu_sdpa_forward_full(o32, l32, w[0], w[1], w[2], mask, &p));
        ct_tensor *oref = ct_to_dtype(o32, CT_BFLOAT16), *ow = ct_to_dtype(ob, CT_FLOAT32);
        CHECK_MSG(bits_equal(ob, oref), "case %zu: bf16 output differs from the widened one", t);
        CHECK_MSG(bits_equal(lb, l32), "case %zu: log-sum-exp differs", t);
        ct_tensor *gb[3] = {ct_empty(qs, 4, CT_BFLOAT16), ct_empty(ks, 4, CT_BFLOAT16),
                            ct_empty(ks, 4, CT_BFLOAT16)};
        ct_tensor *g32[3] = {ct_empty(qs, 4, CT_FLOAT32), ct_empty(ks, 4, CT_FLOAT32),
                             ct_empty(ks, 4, CT_FLOAT32)};
        CHECK_OK(cpu_sdpa_backward(gb[0], gb[1], gb[2], b[3], b[0], b[1], b[2], ob, lb, mask, &p));
        CHECK_OK(cpu_sdpa_backward_full(g32[0], g32[1], g32[2], w[3], w[0], w[1], w[2], ow, l32,
                                        mask, &p));
        const char *names[3] = {"dq", "dk", "dv"};
        for (int i = 0; i < 3; i++) {
            ct_tensor *r = ct_to_dtype(g32[i], CT_BFLOAT16);
            CHECK_MSG(bits_equal(gb[i], r), "case %zu: bf16 %s differs from the widened one", t,
                      names[i]);
            ct_free(r), ct_free(gb[i]), ct_free(g32[i]);
        }
        for (int i = 0; i < 4; i++) ct_free(f[i]), ct_free(b[i]), ct_free(w[i]);
        ct_free(mask), ct_free(ob), ct_free(o32), ct_free(lb), ct_free(l32), ct_free(oref);
        ct_free(ow);
    }
}

/* The float32 tile kernels (AVX-512 or AVX2 register blocks over 96 x 96 score tiles and
 * 64-wide products, ragged edges) against the float64 scalar reference on the same values,
 * forward and the three gradients, causal and not. Two shapes: 200 x 64 (blocks of 96, 96,
 * 8 rows), and 101 x 40 (a last query block of 5 rows: the 4 x 96 register blocks of a key
 * block's scores, then one row left over). */
static void tiles_vs_float64(const int64_t sh[4]) {
    ct_manual_seed(8);
    ct_tensor *base[4];
    for (int i = 0; i < 4; i++) base[i] = ct_randn(sh, 4, CT_FLOAT32);
    for (int causal = 0; causal < 2; causal++) {
        ct_tensor *out[2], *grads[2][3];
        for (int d = 0; d < 2; d++) {
            ct_dtype dt = d ? CT_FLOAT64 : CT_FLOAT32;
            ct_tensor *x[3];
            for (int i = 0; i < 3; i++) { /* fresh leaves (ct_to_dtype may alias base) */
                ct_tensor *cv = ct_to_dtype(base[i], dt);
                x[i] = ct_clone(cv);
                ct_free(cv);
                ct_set_requires_grad(x[i], 1);
            }
            ct_tensor *g = ct_to_dtype(base[3], dt);
            out[d] = ct_scaled_dot_product_attention(x[0], x[1], x[2], NULL, 0.0, causal, 0.0);
            CHECK(out[d] && ct_backward(out[d], g, 0) == 0);
            for (int i = 0; i < 3; i++) grads[d][i] = ct_retain(ct_grad(x[i])), ct_free(x[i]);
            ct_free(g);
        }
        ct_tensor *o64 = ct_to_dtype(out[0], CT_FLOAT64);
        CHECK_CLOSE(o64, out[1], 1e-4, causal ? "causal output vs float64" : "output vs float64");
        for (int i = 0; i < 3; i++) {
            ct_tensor *g64 = ct_to_dtype(grads[0][i], CT_FLOAT64);
            CHECK_CLOSE(g64, grads[1][i], 1e-4, "gradient vs float64");
            ct_free(g64), ct_free(grads[0][i]), ct_free(grads[1][i]);
        }
        ct_free(o64), ct_free(out[0]), ct_free(out[1]);
    }
    for (int i = 0; i < 4; i++) ct_free(base[i]);
}

TEST(attention_float32_tiles_vs_float64_reference) {
    const int64_t a[4] = {1, 2, 200, 64}, b[4] = {1, 2, 101, 40};
    tiles_vs_float64(a);
    tiles_vs_float64(b);
}
