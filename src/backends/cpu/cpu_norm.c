/* CPU kernels for batch_norm and layer_norm (float32 and float64).
 *
 * Statistics are accumulated in double with two passes (mean, then the sum of squared
 * deviations), which is exact enough that float32 results match PyTorch to rounding.
 * Work is split with ct_parallel_for: batch_norm reductions over channel blocks (each
 * block walks the batch in memory order and keeps one double accumulator per channel),
 * elementwise passes over (n, c) planes; layer_norm over rows, its weight/bias
 * gradients over column blocks. Scratch buffers are allocated once per call, never
 * inside the loops. */
#include "backends/cpu/cpu_kernels.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/half.h"
#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/simd512.h"
#include "core/parallel.h"

#include <math.h>
#include <stdlib.h>

/* Elements per parallel chunk for elementwise passes. */
#define NORM_GRAIN_ELEMS 32768

static int64_t grain_for(int64_t per_item) {
    if (per_item <= 0) return 1;
    int64_t g = NORM_GRAIN_ELEMS / per_item;
    return g < 1 ? 1 : g;
}

static int check_float(const ct_tensor *x, const char *op) {
    if (x->dtype != CT_FLOAT32 && x->dtype != CT_FLOAT64)
        return ct_error("%s: dtype %s is not supported by the cpu kernel (float32, float64)", op,
                        ct_dtype_name(x->dtype));
    return 0;
}

/* Per-channel parameters, computed in double before the elementwise passes. */
typedef struct {
    double *mean, *invstd; /* [C] statistics in double */
    double *a, *b, *k;     /* [C] per-channel coefficients */
    double *acc0, *acc1;   /* [C] reduction accumulators */
} bn_scratch;

typedef struct {
    const void *x, *gy;
    void *y, *gx;
    int64_t N, C, S;
    bn_scratch *s;
    int pass; /* for the reduction: 0 shifted sums of x and x^2 (forward), 2 backward sums */
} bn_ctx;

/* ---------------------------------------------------------------- templates */
#define BN_LANES 16
static inline double bn_lanes_sum(const double *l) {
    double s = 0.0;
    for (int j = 0; j < BN_LANES; j++) s += l[j];
    return s;
}

#define DEFINE_BN(T, SFX, LD, ST)                                                                    \
    /* Reductions over a block of channels [c0, c1): walks n outer so memory is read in    \
     * order, accumulating per channel in double. */                                        \
    static void bn_reduce_##SFX(void *vctx, int64_t c0, int64_t c1) {                        \
        bn_ctx *ctx = vctx;                                                                  \
        const T *x = ctx->x;                                                                 \
        const T *gy = ctx->gy;                                                               \
        const int64_t N = ctx->N, C = ctx->C, S = ctx->S;                                    \
        double *acc0 = ctx->s->acc0, *acc1 = ctx->s->acc1;                                   \
        const double *mean = ctx->s->mean;                                                   \
        for (int64_t c = c0; c < c1; c++) acc0[c] = acc1[c] = 0.0;                           \
        for (int64_t n = 0; n < N; n++) {                                                    \
            for (int64_t c = c0; c < c1; c++) {                                              \
                const T *xp = x + (n * C + c) * S;                                           \
                /* BN_LANES independent double sums (lane j: elements i = j mod BN_LANES), \
                 * which the compiler turns into vector lanes, added up at the end */       \
                double l0[BN_LANES] = {0}, l1[BN_LANES] = {0};                               \
                const int64_t Sv = S / BN_LANES * BN_LANES;                                  \
                if (ctx->pass == 0) { /* shifted sums of x and x^2 (shift: mean[c]) */    \
                    const double m = mean[c];                                                \
                    for (int64_t i = 0; i < Sv; i += BN_LANES)                               \
                        for (int j = 0; j < BN_LANES; j++) {                                 \
                            const double d = LD(xp[i + j]) - m;                          \
                            l0[j] += d;                                                      \
                            l1[j] += d * d;                                                  \
                        }                                                                    \
                    for (int64_t i = Sv; i < S; i++) {                                       \
                        const double d = LD(xp[i]) - m;                                  \
                        l0[0] += d;                                                          \
                        l1[0] += d * d;                                                      \
                    }                                                                        \
                    acc0[c] += bn_lanes_sum(l0);                                             \
                    acc1[c] += bn_lanes_sum(l1);                                             \
                } else {                                                                     \
                    const T *gp = gy + (n * C + c) * S;                                      \
                    const double m = mean[c];                                                \
                    for (int64_t i = 0; i < Sv; i += BN_LANES)                               \
                        for (int j = 0; j < BN_LANES; j++) {                                 \
                            const double g = LD(gp[i + j]);                              \
                            l0[j] += g;                                                      \
                            l1[j] += g * (LD(xp[i + j]) - m);                            \
                        }                                                                    \
                    for (int64_t i = Sv; i < S; i++) {                                       \
                        const double g = LD(gp[i]);                                      \
                        l0[0] += g;                                                          \
                        l1[0] += g * (LD(xp[i]) - m);                                    \
                    }                                                                        \
                    acc0[c] += bn_lanes_sum(l0);                                             \
                    acc1[c] += bn_lanes_sum(l1);                                             \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    /* y = x*a[c] + b[c] over planes [p0, p1) of the [N*C, S] view. */                       \
    static void bn_apply_##SFX(void *vctx, int64_t p0, int64_t p1) {                         \
        bn_ctx *ctx = vctx;                                                                  \
        const T *x = ctx->x;                                                                 \
        T *y = ctx->y;                                                                       \
        const int64_t C = ctx->C, S = ctx->S;                                                \
        for (int64_t p = p0; p < p1; p++) {                                                  \
            const int64_t c = p % C;                                                         \
            const double a = ctx->s->a[c], b = ctx->s->b[c];                                 \
            const T *xp = x + p * S;                                                         \
            T *yp = y + p * S;                                                               \
            for (int64_t i = 0; i < S; i++) yp[i] = ST(LD(xp[i]) * a + b);              \
        }                                                                                    \
    }                                                                                        \
    /* gx = gy*a[c] + x*b[c] + k[c] over planes [p0, p1). */                                 \
    static void bn_grad_input_##SFX(void *vctx, int64_t p0, int64_t p1) {                    \
        bn_ctx *ctx = vctx;                                                                  \
        const T *x = ctx->x, *gy = ctx->gy;                                                  \
        T *gx = ctx->gx;                                                                     \
        const int64_t C = ctx->C, S = ctx->S;                                                \
        for (int64_t p = p0; p < p1; p++) {                                                  \
            const int64_t c = p % C;                                                         \
            const double a = ctx->s->a[c], b = ctx->s->b[c], k = ctx->s->k[c];               \
            const T *xp = x + p * S, *gp = gy + p * S;                                       \
            T *op = gx + p * S;                                                              \
            for (int64_t i = 0; i < S; i++)                                                  \
                op[i] = ST(LD(gp[i]) * a + LD(xp[i]) * b + k);                      \
        }                                                                                    \
    }

#define BN_LD(v) ((double)(v))
#define BN_ST_F32(d) ((float)(d))
#define BN_ST_F64(d) (d)
/* bfloat16 planes (autocast keeps activations in bf16; the statistics and parameters are
 * float32): widened on load, rounded once on store, as the float32 stand-ins would. */
#define BN_LD_BF16(v) ((double)ct_bf16_to_f32(v))
#define BN_ST_BF16(d) ct_f32_to_bf16((float)(d))
DEFINE_BN(float, f32, BN_LD, BN_ST_F32)
DEFINE_BN(double, f64, BN_LD, BN_ST_F64)
DEFINE_BN(uint16_t, bf16, BN_LD_BF16, BN_ST_BF16)

/* The bf16 passes with AVX-512: 16 float32 lanes per step (values widened exactly, the
 * per-channel coefficients in float32, sums of a plane in float32 lanes then added in
 * double), rounded once on store as the template's. */
#ifdef CT_HAVE_SIMD512
CT_V512 static inline __m512 bn_ld16(const uint16_t *p, __mmask16 k) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16));
}
static inline __mmask16 bn_tail(int64_t n) { return (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1u); }

CT_V512 static void bn_reduce_bf16v(void *vctx, int64_t c0, int64_t c1) {
    bn_ctx *ctx = vctx;
    const uint16_t *x = ctx->x, *gy = ctx->gy;
    const int64_t N = ctx->N, C = ctx->C, S = ctx->S;
    double *acc0 = ctx->s->acc0, *acc1 = ctx->s->acc1;
    for (int64_t c = c0; c < c1; c++) acc0[c] = acc1[c] = 0.0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = c0; c < c1; c++) {
            const uint16_t *xp = x + (n * C + c) * S, *gp = gy ? gy + (n * C + c) * S : NULL;
            const __m512 m = _mm512_set1_ps((float)ctx->s->mean[c]);
            __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
            for (int64_t i = 0; i < S; i += 16) {
                __mmask16 k = bn_tail(S - i);
                __m512 d = _mm512_maskz_sub_ps(k, bn_ld16(xp + i, k), m);
                if (ctx->pass == 0) {
                    s0 = _mm512_add_ps(s0, d);
                    s1 = _mm512_fmadd_ps(d, d, s1);
                } else { /* pass 2: sum(gy), sum(gy * (x - mean)) */
                    __m512 g = bn_ld16(gp + i, k);
                    s0 = _mm512_add_ps(s0, g);
                    s1 = _mm512_fmadd_ps(g, d, s1);
                }
            }
            acc0[c] += (double)_mm512_reduce_add_ps(s0);
            acc1[c] += (double)_mm512_reduce_add_ps(s1);
        }
}

CT_V512 static void bn_apply_bf16v(void *vctx, int64_t p0, int64_t p1) {
    bn_ctx *ctx = vctx;
    const uint16_t *x = ctx->x;
    uint16_t *y = ctx->y;
    const int64_t C = ctx->C, S = ctx->S;
    for (int64_t p = p0; p < p1; p++) {
        const int64_t c = p % C;
        const __m512 a = _mm512_set1_ps((float)ctx->s->a[c]), b = _mm512_set1_ps((float)ctx->s->b[c]);
        for (int64_t i = 0; i < S; i += 16) {
            __mmask16 k = bn_tail(S - i);
            __m512 v = _mm512_fmadd_ps(bn_ld16(x + p * S + i, k), a, b);
            _mm256_mask_storeu_epi16(y + p * S + i, k, ct_f32x16_to_bf16(v));
        }
    }
}

CT_V512 static void bn_grad_input_bf16v(void *vctx, int64_t p0, int64_t p1) {
    bn_ctx *ctx = vctx;
    const uint16_t *x = ctx->x, *gy = ctx->gy;
    uint16_t *gx = ctx->gx;
    const int64_t C = ctx->C, S = ctx->S;
    for (int64_t p = p0; p < p1; p++) {
        const int64_t c = p % C;
        const __m512 a = _mm512_set1_ps((float)ctx->s->a[c]), b = _mm512_set1_ps((float)ctx->s->b[c]);
        const __m512 kk = _mm512_set1_ps((float)ctx->s->k[c]);
        for (int64_t i = 0; i < S; i += 16) {
            __mmask16 k = bn_tail(S - i);
            __m512 v = _mm512_fmadd_ps(bn_ld16(gy + p * S + i, k), a,
                                       _mm512_fmadd_ps(bn_ld16(x + p * S + i, k), b, kk));
            _mm256_mask_storeu_epi16(gx + p * S + i, k, ct_f32x16_to_bf16(v));
        }
    }
}

/* The vector bf16 passes where the CPU (and CTORCH_CPU_ISA) allows AVX-512. */
static int bn_v512(void) { return ct_cpu_isa_level() >= CT_ISA_AVX512; }
#define BN_BF16(name) (bn_v512() ? name##_bf16v : name##_bf16)
#else
#define BN_BF16(name) name##_bf16
#endif

static double load1(const ct_tensor *t, int64_t i) {
    const char *p = ct_ptr(t);
    int64_t off = i * t->stride[0];
    return t->dtype == CT_FLOAT64 ? ((const double *)p)[off] : (double)((const float *)p)[off];
}

static void store1(ct_tensor *t, int64_t i, double v) {
    char *p = ct_ptr(t);
    int64_t off = i * t->stride[0];
    if (t->dtype == CT_FLOAT64) ((double *)p)[off] = v;
    else ((float *)p)[off] = (float)v;
}

/* Element i of a contiguous float32 / float64 tensor (any shape). */
static double load_flat(const ct_tensor *t, int64_t i) {
    const char *p = ct_ptr(t);
    if (t->dtype == CT_BFLOAT16) return ct_bf16_to_f32(((const uint16_t *)p)[i]);
    return t->dtype == CT_FLOAT64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

/* Element i of a contiguous tensor (any shape). */
static void store_flat(ct_tensor *t, int64_t i, double v) {
    char *p = ct_ptr(t);
    if (t->dtype == CT_FLOAT64) ((double *)p)[i] = v;
    else ((float *)p)[i] = (float)v;
}

/* One allocation holding the seven [C] double arrays of bn_scratch. */
static double *scratch_alloc(int64_t C, bn_scratch *s) {
    const size_t c = (size_t)(C > 0 ? C : 1);
    double *buf = malloc(sizeof(double) * c * 7);
    if (!buf) return NULL;
    double **slots[7] = {&s->mean, &s->invstd, &s->a, &s->b, &s->k, &s->acc0, &s->acc1};
    for (int i = 0; i < 7; i++) *slots[i] = buf + c * (size_t)i;
    return buf;
}

static void bn_dims(const ct_tensor *x, int64_t *N, int64_t *C, int64_t *S) {
    *N = x->shape[0];
    *C = x->shape[1];
    *S = 1;
    for (int d = 2; d < x->ndim; d++) *S *= x->shape[d];
}

int cpu_batch_norm_forward_full(ct_tensor *y, ct_tensor *save_mean, ct_tensor *save_invstd,
                           const ct_tensor *x, const ct_tensor *weight, const ct_tensor *bias,
                           ct_tensor *running_mean, ct_tensor *running_var, int training,
                           double momentum, double eps) {
    if (x->dtype != CT_BFLOAT16 && check_float(x, "batch_norm") != 0) return -1;
    int64_t N, C, S;
    bn_dims(x, &N, &C, &S);
    const int64_t M = N * S; /* values per channel */
    bn_scratch s = {0};
    double *buf = scratch_alloc(C, &s);
    if (!buf) return ct_error("batch_norm: out of memory for %lld channels", (long long)C);
    const int f64 = x->dtype == CT_FLOAT64, bf = x->dtype == CT_BFLOAT16;
    bn_ctx ctx = {.x = ct_ptr(x), .y = ct_ptr(y), .N = N, .C = C, .S = S, .s = &s};
    ct_range_fn reduce = f64 ? bn_reduce_f64 : bf ? BN_BF16(bn_reduce) : bn_reduce_f32;

    if (training) {
        /* one pass: sums of (x - k) and (x - k)^2 with k a value of the channel (its first),
         * so that the variance E[(x-k)^2] - E[x-k]^2 suffers no cancellation from a large
         * mean; in double */
        for (int64_t c = 0; c < C; c++)
            s.mean[c] = M > 0 ? load_flat(x, c * S) : 0.0;
        ctx.pass = 0;
        ct_parallel_for(C, grain_for(M), reduce, &ctx);
        for (int64_t c = 0; c < C; c++) {
            const double d = M > 0 ? s.acc0[c] / (double)M : 0.0;
            double var = M > 0 ? s.acc1[c] / (double)M - d * d : 0.0; /* biased */
            if (var < 0) var = 0;
            s.mean[c] += d;
            s.acc1[c] = var * (double)M; /* the sum of squared deviations, as before */
            s.invstd[c] = 1.0 / sqrt(var + eps);
            /* An empty batch leaves the running statistics alone (as PyTorch does). */
            if (M == 0) continue;
            if (running_mean)
                store1(running_mean, c,
                       (1.0 - momentum) * load1(running_mean, c) + momentum * s.mean[c]);
            if (running_var) {
                const double unbiased = M > 1 ? s.acc1[c] / (double)(M - 1) : NAN;
                store1(running_var, c,
                       (1.0 - momentum) * load1(running_var, c) + momentum * unbiased);
            }
        }
    } else {
        for (int64_t c = 0; c < C; c++) {
            s.mean[c] = load1(running_mean, c);
            s.invstd[c] = 1.0 / sqrt(load1(running_var, c) + eps);
        }
    }
    for (int64_t c = 0; c < C; c++) {
        const double w = weight ? load1(weight, c) : 1.0;
        const double b = bias ? load1(bias, c) : 0.0;
        s.a[c] = s.invstd[c] * w;
        s.b[c] = b - s.mean[c] * s.a[c];
        if (save_mean) store1(save_mean, c, s.mean[c]);
        if (save_invstd) store1(save_invstd, c, s.invstd[c]);
    }
    ct_parallel_for(N * C, grain_for(S), f64 ? bn_apply_f64 : bf ? BN_BF16(bn_apply) : bn_apply_f32,
                    &ctx);
    free(buf);
    return 0;
}

int cpu_batch_norm_backward_full(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                            const ct_tensor *x, const ct_tensor *weight,
                            const ct_tensor *save_mean, const ct_tensor *save_invstd,
                            int training) {
    if (x->dtype != CT_BFLOAT16 && check_float(x, "batch_norm_backward") != 0) return -1;
    int64_t N, C, S;
    bn_dims(x, &N, &C, &S);
    const int64_t M = N * S;
    bn_scratch s = {0};
    double *buf = scratch_alloc(C, &s);
    if (!buf) return ct_error("batch_norm_backward: out of memory for %lld channels", (long long)C);
    const int f64 = x->dtype == CT_FLOAT64, bf = x->dtype == CT_BFLOAT16;
    bn_ctx ctx = {.x = ct_ptr(x), .gy = ct_ptr(gy), .gx = gx ? ct_ptr(gx) : NULL,
                  .N = N, .C = C, .S = S, .s = &s, .pass = 2};
    for (int64_t c = 0; c < C; c++) {
        s.mean[c] = load1(save_mean, c);
        s.invstd[c] = load1(save_invstd, c);
    }
    /* sum(gy) and sum(gy * (x - mean)) per channel: needed for gw, gb and the training gx. */
    const int need_sums = gw || gb || (gx && training);
    if (need_sums)
        ct_parallel_for(C, grain_for(M), f64 ? bn_reduce_f64 : bf ? BN_BF16(bn_reduce) : bn_reduce_f32,
                        &ctx);
    for (int64_t c = 0; c < C; c++) {
        if (gw) store1(gw, c, s.acc1[c] * s.invstd[c]);
        if (gb) store1(gb, c, s.acc0[c]);
    }
    if (gx) {
        for (int64_t c = 0; c < C; c++) {
            const double w = weight ? load1(weight, c) : 1.0;
            const double is = s.invstd[c];
            const double a = w * is;
            if (training && M > 0) {
                /* gx = a*(gy - sum_gy/M - (x-mean)*is^2*dot/M) */
                const double b = -a * is * is * s.acc1[c] / (double)M;
                s.a[c] = a;
                s.b[c] = b;
                s.k[c] = -a * s.acc0[c] / (double)M - b * s.mean[c];
            } else {
                s.a[c] = a;
                s.b[c] = 0.0;
                s.k[c] = 0.0;
            }
        }
        ct_parallel_for(N * C, grain_for(S),
                        f64 ? bn_grad_input_f64 : bf ? BN_BF16(bn_grad_input) : bn_grad_input_f32, &ctx);
    }
    free(buf);
    return 0;
}

/* ------------------------------------------------------------------ layer_norm */
typedef struct {
    const void *x, *gy, *w, *b;
    void *y, *gx, *mean, *rstd;
    int64_t M, N;
    double eps;
    int want_w, want_b;
    double *part; /* backward: [chunks][2][N] column sums (gw, gb) of each LN_ROWS-row chunk */
} ln_ctx;

/* The backward's row chunk for the parameter gradients: fixed, so that the column sums
 * (added chunk by chunk in chunk order) do not depend on the thread count. */
enum { LN_ROWS = 64 };

/* The row sums of layer_norm in double, in 8 interleaved partial sums (added in a fixed
 * order at the end): without reassociation the compiler keeps one sum a scalar chain of
 * dependent adds; this way it vectorises. */
#define DEFINE_LN_SUMS(T, SFX)                                                               \
    static inline double ln_fold8_##SFX(const double *s) {                                   \
        return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));            \
    }                                                                                        \
    /* sum of x[j] (sq == 0) or of (x[j] - mean)^2 (sq == 1) */                              \
    static inline double ln_rowsum_##SFX(const T *x, int64_t n, double mean, int sq) {       \
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                              \
        int64_t j = 0;                                                                       \
        if (sq)                                                                              \
            for (; j + 8 <= n; j += 8)                                                       \
                for (int u = 0; u < 8; u++) {                                                \
                    const double d = (double)x[j + u] - mean;                                \
                    s[u] += d * d;                                                           \
                }                                                                            \
        else                                                                                 \
            for (; j + 8 <= n; j += 8)                                                       \
                for (int u = 0; u < 8; u++) s[u] += (double)x[j + u];                        \
        for (; j < n; j++) {                                                                 \
            const double d = sq ? (double)x[j] - mean : (double)x[j];                        \
            s[j & 7] += sq ? d * d : d;                                                      \
        }                                                                                    \
        return ln_fold8_##SFX(s);                                                            \
    }                                                                                        \
    /* *sg = sum of g[j] w[j], *sgx = sum of g[j] w[j] (x[j] - mean) rstd */                 \
    static inline void ln_gradsums_##SFX(const T *g, const T *w, const T *x, int64_t n,      \
                                         double mean, double rstd, double *sg, double *sgx) { \
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, b[8] = {0, 0, 0, 0, 0, 0, 0, 0};            \
        int64_t j = 0;                                                                       \
        for (; j + 8 <= n; j += 8)                                                           \
            for (int u = 0; u < 8; u++) {                                                    \
                const double gv = (double)g[j + u] * (w ? (double)w[j + u] : 1.0);          \
                a[u] += gv;                                                                  \
                b[u] += gv * ((double)x[j + u] - mean) * rstd;                               \
            }                                                                                \
        for (; j < n; j++) {                                                                 \
            const double gv = (double)g[j] * (w ? (double)w[j] : 1.0);                       \
            a[j & 7] += gv;                                                                  \
            b[j & 7] += gv * ((double)x[j] - mean) * rstd;                                   \
        }                                                                                    \
        *sg = ln_fold8_##SFX(a), *sgx = ln_fold8_##SFX(b);                                   \
    }
DEFINE_LN_SUMS(float, f32)
DEFINE_LN_SUMS(double, f64)

/* Asks for the row two rows on (rows of `bytes`): on their own the hardware prefetchers
 * leave LayerNorm's passes over each row waiting for memory (forward over 8320 x 192
 * floats, one thread, this Xeon: 3.3 -> 2.5 cycles per element). Prefetches do not fault,
 * past the end included. */
static inline void ln_prefetch(const void *row, size_t bytes) {
    const uintptr_t next = (uintptr_t)row + 2 * bytes;
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch((const void *)(next + o));
}
#define DEFINE_LN(T, SFX)                                                                    \
    CT_MULTIVERSION static void ln_forward_##SFX(void *vctx, int64_t r0, int64_t r1) {       \
        ln_ctx *ctx = vctx;                                                                  \
        const int64_t N = ctx->N;                                                            \
        const T *w = ctx->w, *b = ctx->b;                                                    \
        for (int64_t r = r0; r < r1; r++) {                                                  \
            const T *xp = (const T *)ctx->x + r * N;                                         \
            ln_prefetch(xp, sizeof(T) * (size_t)N);                                          \
            T *yp = (T *)ctx->y + r * N;                                                     \
            const double sum = ln_rowsum_##SFX(xp, N, 0.0, 0);                               \
            const double mean = N > 0 ? sum / (double)N : NAN;                               \
            const double sq = ln_rowsum_##SFX(xp, N, mean, 1);                               \
            const double rstd = 1.0 / sqrt((N > 0 ? sq / (double)N : NAN) + ctx->eps);       \
            ((T *)ctx->mean)[r] = (T)mean;                                                   \
            ((T *)ctx->rstd)[r] = (T)rstd;                                                   \
            for (int64_t j = 0; j < N; j++) {                                                \
                double v = ((double)xp[j] - mean) * rstd;                                    \
                if (w) v *= (double)w[j];                                                    \
                if (b) v += (double)b[j];                                                    \
                yp[j] = (T)v;                                                                \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    /* gx of rows [r0, r1) (when ctx->gx): rstd (g - mean(g) - xhat mean(g xhat)), g = gy w; \
     * and into pw / pb (when not NULL) the rows' column sums of gy xhat (gw) and gy (gb),  \
     * while the rows are in L1. */                                                          \
    static inline void ln_backward_rows_##SFX(const ln_ctx *ctx, int64_t r0, int64_t r1,     \
                                              double *pw, double *pb) {                      \
        const int64_t N = ctx->N;                                                            \
        const T *w = ctx->w;                                                                 \
        for (int64_t r = r0; r < r1; r++) {                                                  \
            const T *xp = (const T *)ctx->x + r * N;                                         \
            const T *gp = (const T *)ctx->gy + r * N;                                        \
            ln_prefetch(xp, sizeof(T) * (size_t)N);                                          \
            ln_prefetch(gp, sizeof(T) * (size_t)N);                                          \
            const double mean = (double)((const T *)ctx->mean)[r];                           \
            const double rstd = (double)((const T *)ctx->rstd)[r];                           \
            if (ctx->gx) {                                                                   \
                T *op = (T *)ctx->gx + r * N;                                                \
                double sg, sgx;                                                              \
                ln_gradsums_##SFX(gp, w, xp, N, mean, rstd, &sg, &sgx);                      \
                const double mg = N > 0 ? sg / (double)N : 0.0;                              \
                const double mgx = N > 0 ? sgx / (double)N : 0.0;                           \
                for (int64_t j = 0; j < N; j++) {                                            \
                    const double g = (double)gp[j] * (w ? (double)w[j] : 1.0);               \
                    const double xh = ((double)xp[j] - mean) * rstd;                         \
                    op[j] = (T)(rstd * (g - mg - xh * mgx));                                 \
                }                                                                            \
            }                                                                                \
            if (pw)                                                                          \
                for (int64_t j = 0; j < N; j++)                                              \
                    pw[j] += (double)gp[j] * ((double)xp[j] - mean) * rstd;                  \
            if (pb)                                                                          \
                for (int64_t j = 0; j < N; j++) pb[j] += (double)gp[j];                      \
        }                                                                                    \
    }                                                                                        \
    CT_MULTIVERSION static void ln_backward_input_##SFX(void *vctx, int64_t r0, int64_t r1) { \
        ln_backward_rows_##SFX(vctx, r0, r1, NULL, NULL);                                    \
    }                                                                                        \
    /* Chunks [c0, c1) of LN_ROWS rows: gx (when wanted) and each chunk's column sums. */                  \
    CT_MULTIVERSION static void ln_backward_fused_##SFX(void *vctx, int64_t c0, int64_t c1) { \
        const ln_ctx *ctx = vctx;                                                            \
        const int64_t N = ctx->N;                                                            \
        for (int64_t c = c0; c < c1; c++) {                                                  \
            double *pw = ctx->part + (size_t)(2 * c * N), *pb = pw + N;                      \
            memset(pw, 0, sizeof(double) * (size_t)(2 * N));                                 \
            const int64_t r1 = (c + 1) * LN_ROWS < ctx->M ? (c + 1) * LN_ROWS : ctx->M;      \
            ln_backward_rows_##SFX(ctx, c * LN_ROWS, r1, ctx->want_w ? pw : NULL,            \
                                   ctx->want_b ? pb : NULL);                                 \
        }                                                                                    \
    }

DEFINE_LN(float, f32)
DEFINE_LN(double, f64)

int cpu_layer_norm_forward_full(ct_tensor *y, ct_tensor *mean, ct_tensor *rstd, const ct_tensor *x,
                           const ct_tensor *weight, const ct_tensor *bias, int64_t M, int64_t N,
                           double eps) {
    if (check_float(x, "layer_norm") != 0) return -1;
    ln_ctx ctx = {.x = ct_ptr(x), .y = ct_ptr(y), .mean = ct_ptr(mean), .rstd = ct_ptr(rstd),
                  .w = weight ? ct_ptr(weight) : NULL, .b = bias ? ct_ptr(bias) : NULL,
                  .M = M, .N = N, .eps = eps};
    ct_parallel_for(M, grain_for(N), x->dtype == CT_FLOAT64 ? ln_forward_f64 : ln_forward_f32,
                    &ctx);
    return 0;
}

int cpu_layer_norm_backward_full(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                            const ct_tensor *x, const ct_tensor *mean, const ct_tensor *rstd,
                            const ct_tensor *weight, int64_t M, int64_t N) {
    if (check_float(x, "layer_norm_backward") != 0) return -1;
    const int f64 = x->dtype == CT_FLOAT64;
    ln_ctx ctx = {.x = ct_ptr(x), .gy = ct_ptr(gy), .gx = gx ? ct_ptr(gx) : NULL,
                  .mean = ct_ptr(mean), .rstd = ct_ptr(rstd),
                  .w = weight ? ct_ptr(weight) : NULL, .M = M, .N = N,
                  .want_w = gw != NULL, .want_b = gb != NULL};
    if (!gw && !gb) {
        if (gx) ct_parallel_for(M, grain_for(N), f64 ? ln_backward_input_f64 : ln_backward_input_f32,
                                &ctx);
        return 0;
    }
    /* one pass over the rows: gx (if wanted) and the column sums of each chunk of rows */
    const int64_t nch = (M + LN_ROWS - 1) / LN_ROWS;
    ctx.part = malloc(sizeof(double) * 2 * (size_t)(nch * N > 0 ? nch * N : 1));
    if (!ctx.part)
        return ct_error("layer_norm_backward: out of memory for %lld x %lld column sums",
                        (long long)nch, (long long)N);
    ct_parallel_for(nch, 1, f64 ? ln_backward_fused_f64 : ln_backward_fused_f32, &ctx);
    for (int64_t j = 0; j < N; j++) { /* the chunks' sums in chunk order */
        double aw = 0, ab = 0;
        for (int64_t c = 0; c < nch; c++) {
            aw += ctx.part[(size_t)(2 * c * N + j)];
            ab += ctx.part[(size_t)((2 * c + 1) * N + j)];
        }
        if (gw) store_flat(gw, j, aw);
        if (gb) store_flat(gb, j, ab);
    }
    free(ctx.part);
    return 0;
}
