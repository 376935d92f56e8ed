/* CPU softmax / log_softmax kernels (forward and backward), float32 and float64, and
 * the fused cross-entropy kernels (log_softmax + nll_loss + label smoothing) that
 * src/ops/loss.c calls for CPU tensors.
 *
 * The tensor is viewed as [outer, C, inner] around the softmax dim (all contiguous).
 *  - inner == 1: each row of C elements is contiguous; rows are split over threads.
 *  - inner  > 1: work items are (outer index, block of BLK inner positions); each item
 *    walks the C planes with the inner positions as the fast, contiguous loop, keeping
 *    per-position running max / sums in small stack buffers (no allocation).
 * Numerically stable: exponentials are taken of x - max.
 *
 * Speed: float32 uses a vectorisable exp (ct_vexpf below) that GCC vectorises in plain
 * loops, and SSE2 (x86-64 baseline) for the row max and the row sums, which GCC does
 * not vectorise by itself; other targets take the scalar loops. Sums accumulate in
 * double. float64 uses libm's exp. With GCC the file is compiled with
 * -fno-trapping-math (pragma below) so that the float comparisons in ct_vexpf can be
 * if-converted inside vector loops; no code here reads FP exception flags. Results do
 * not depend on the thread count (each row/column is reduced by one thread, in a
 * fixed order). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "cpu_kernels.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/parallel.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_vexp.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define SM_BLK 64            /* inner positions per work item (strided case) */
#define SM_GRAIN_ELEMS 16384 /* elements of work per chunk, at least */

typedef struct {
    const void *x;  /* forward: input; backward: y */
    const void *gy; /* backward only */
    void *out;      /* forward: y; backward: gx */
    int64_t outer, C, inner, nblk;
    int log;
} sm_ctx;

static void sm_split(const ct_tensor *t, int dim, int64_t *outer, int64_t *C, int64_t *inner) {
    int64_t o = 1, c = 1, in = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (d < dim) o *= t->shape[d];
        else if (d == dim) c = t->shape[d];
        else in *= t->shape[d];
    }
    *outer = o;
    *C = c;
    *inner = in;
}

/* Row maximum. NaNs are skipped here (like maxps); they still poison the row through
 * exp(x - m) afterwards, so a NaN input gives a NaN output, as in PyTorch. GCC does not
 * vectorise this reduction on its own, hence SSE2 where available. */
static inline float row_max_f32(const float *x, int64_t n) {
    float m = -INFINITY;
    int64_t i = 0;
#if defined(__SSE2__)
    __m128 m0 = _mm_set1_ps(-INFINITY), m1 = m0;
    for (; i + 8 <= n; i += 8) {
        m0 = _mm_max_ps(_mm_loadu_ps(x + i), m0);
        m1 = _mm_max_ps(_mm_loadu_ps(x + i + 4), m1);
    }
    float t[4];
    _mm_storeu_ps(t, _mm_max_ps(m0, m1));
    for (int j = 0; j < 4; j++) m = t[j] > m ? t[j] : m;
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static inline double row_max_f64(const double *x, int64_t n) {
    double m = -INFINITY;
    int64_t i = 0;
#if defined(__SSE2__)
    __m128d m0 = _mm_set1_pd(-INFINITY), m1 = m0;
    for (; i + 4 <= n; i += 4) {
        m0 = _mm_max_pd(_mm_loadu_pd(x + i), m0);
        m1 = _mm_max_pd(_mm_loadu_pd(x + i + 2), m1);
    }
    double t[2];
    _mm_storeu_pd(t, _mm_max_pd(m0, m1));
    for (int j = 0; j < 2; j++) m = t[j] > m ? t[j] : m;
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* Row sums (double accumulators) of a, or of a*b when b != NULL. */
static inline double row_dot_f32(const float *a, const float *b, int64_t n) {
    double s = 0;
    int64_t i = 0;
#if defined(__SSE2__)
    __m128d a0 = _mm_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    for (; i + 8 <= n; i += 8) {
        __m128 v0 = _mm_loadu_ps(a + i), v1 = _mm_loadu_ps(a + i + 4);
        if (b) {
            v0 = _mm_mul_ps(v0, _mm_loadu_ps(b + i));
            v1 = _mm_mul_ps(v1, _mm_loadu_ps(b + i + 4));
        }
        a0 = _mm_add_pd(a0, _mm_cvtps_pd(v0));
        a1 = _mm_add_pd(a1, _mm_cvtps_pd(_mm_movehl_ps(v0, v0)));
        a2 = _mm_add_pd(a2, _mm_cvtps_pd(v1));
        a3 = _mm_add_pd(a3, _mm_cvtps_pd(_mm_movehl_ps(v1, v1)));
    }
    double t[2];
    _mm_storeu_pd(t, _mm_add_pd(_mm_add_pd(a0, a1), _mm_add_pd(a2, a3)));
    s = t[0] + t[1];
#endif
    if (b)
        for (; i < n; i++) s += (double)(a[i] * b[i]);
    else
        for (; i < n; i++) s += (double)a[i];
    return s;
}

static inline double row_dot_f64(const double *a, const double *b, int64_t n) {
    double acc[4] = {0, 0, 0, 0}, s = 0;
    int64_t i = 0;
    if (b)
        for (; i + 4 <= n; i += 4)
            for (int j = 0; j < 4; j++) acc[j] += a[i + j] * b[i + j];
    else
        for (; i + 4 <= n; i += 4)
            for (int j = 0; j < 4; j++) acc[j] += a[i + j];
    if (b)
        for (; i < n; i++) s += a[i] * b[i];
    else
        for (; i < n; i++) s += a[i];
    return s + ((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

/* sum_i exp(x[i] - m); also stores the exponentials in y when y != NULL. The float
 * version computes exponentials in stack blocks with a plain (vectorised) loop and
 * sums them with row_dot_f32. */
#define SM_EXP_BLOCK 512
static inline double row_sumexp_f32(const float *x, float m, float *y, int64_t n) {
    float tmp[SM_EXP_BLOCK];
    double s = 0;
    for (int64_t i0 = 0; i0 < n; i0 += SM_EXP_BLOCK) {
        int64_t len = n - i0 < SM_EXP_BLOCK ? n - i0 : SM_EXP_BLOCK;
        float *dst = y ? y + i0 : tmp;
        const float *src = x + i0;
        for (int64_t i = 0; i < len; i++) dst[i] = ct_vexpf(src[i] - m);
        s += row_dot_f32(dst, NULL, len);
    }
    return s;
}

static inline double row_sumexp_f64(const double *x, double m, double *y, int64_t n) {
    double s = 0;
    if (y)
        for (int64_t i = 0; i < n; i++) {
            y[i] = exp(x[i] - m);
            s += y[i];
        }
    else
        for (int64_t i = 0; i < n; i++) s += exp(x[i] - m);
    return s;
}

/* Type-generic bodies. T: element type, A: accumulator type (double for both: sums of
 * thousands of floats stay accurate), EXPF: exp in T. */
#define SM_DEFINE(T, A, SFX, EXPF)                                                           \
    static void sm_fwd_rows_##SFX(void *vctx, int64_t b, int64_t e) {                       \
        const sm_ctx *c = vctx;                                                              \
        const int64_t C = c->C;                                                              \
        for (int64_t r = b; r < e; r++) {                                                    \
            const T *x = (const T *)c->x + r * C;                                            \
            T *y = (T *)c->out + r * C;                                                      \
            T m = row_max_##SFX(x, C);                                                       \
            if (c->log) {                                                                    \
                A s = row_sumexp_##SFX(x, m, NULL, C);                                       \
                T lse = (T)((A)m + (A)log((double)s));                                       \
                for (int64_t i = 0; i < C; i++) y[i] = x[i] - lse;                           \
            } else {                                                                         \
                A s = row_sumexp_##SFX(x, m, y, C);                                          \
                T inv = (T)((A)1 / s);                                                       \
                for (int64_t i = 0; i < C; i++) y[i] *= inv;                                 \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    static void sm_fwd_strided_##SFX(void *vctx, int64_t b, int64_t e) {                    \
        const sm_ctx *c = vctx;                                                              \
        const int64_t C = c->C, inner = c->inner;                                            \
        T mx[SM_BLK];                                                                        \
        A sm[SM_BLK];                                                                        \
        for (int64_t w = b; w < e; w++) {                                                    \
            int64_t o = w / c->nblk, j0 = (w % c->nblk) * SM_BLK;                            \
            int64_t nj = inner - j0 < SM_BLK ? inner - j0 : SM_BLK;                          \
            const T *x = (const T *)c->x + o * C * inner + j0;                               \
            T *y = (T *)c->out + o * C * inner + j0;                                         \
            for (int64_t j = 0; j < nj; j++) {                                               \
                mx[j] = -INFINITY;                                                           \
                sm[j] = 0;                                                                   \
            }                                                                                \
            for (int64_t i = 0; i < C; i++) {                                                \
                const T *xi = x + i * inner;                                                 \
                for (int64_t j = 0; j < nj; j++) mx[j] = xi[j] > mx[j] ? xi[j] : mx[j];      \
            }                                                                                \
            if (c->log) {                                                                    \
                for (int64_t i = 0; i < C; i++) {                                            \
                    const T *xi = x + i * inner;                                             \
                    for (int64_t j = 0; j < nj; j++) sm[j] += EXPF(xi[j] - mx[j]);           \
                }                                                                            \
                for (int64_t j = 0; j < nj; j++)                                             \
                    mx[j] = (T)((A)mx[j] + (A)log((double)sm[j]));                           \
                for (int64_t i = 0; i < C; i++) {                                            \
                    const T *xi = x + i * inner;                                             \
                    T *yi = y + i * inner;                                                   \
                    for (int64_t j = 0; j < nj; j++) yi[j] = xi[j] - mx[j];                  \
                }                                                                            \
            } else {                                                                         \
                for (int64_t i = 0; i < C; i++) {                                            \
                    const T *xi = x + i * inner;                                             \
                    T *yi = y + i * inner;                                                   \
                    for (int64_t j = 0; j < nj; j++) {                                       \
                        T ex = EXPF(xi[j] - mx[j]);                                          \
                        yi[j] = ex;                                                          \
                        sm[j] += ex;                                                         \
                    }                                                                        \
                }                                                                            \
                for (int64_t j = 0; j < nj; j++) mx[j] = (T)((A)1 / sm[j]);                  \
                for (int64_t i = 0; i < C; i++) {                                            \
                    T *yi = y + i * inner;                                                   \
                    for (int64_t j = 0; j < nj; j++) yi[j] *= mx[j];                         \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    /* softmax: gx = y * (gy - sum(gy*y));  log_softmax: gx = gy - exp(y) * sum(gy) */      \
    static void sm_bwd_rows_##SFX(void *vctx, int64_t b, int64_t e) {                       \
        const sm_ctx *c = vctx;                                                              \
        const int64_t C = c->C;                                                              \
        for (int64_t r = b; r < e; r++) {                                                    \
            const T *y = (const T *)c->x + r * C;                                            \
            const T *gy = (const T *)c->gy + r * C;                                          \
            T *gx = (T *)c->out + r * C;                                                     \
            if (c->log) {                                                                    \
                T ts = (T)row_dot_##SFX(gy, NULL, C);                                        \
                for (int64_t i = 0; i < C; i++) gx[i] = gy[i] - EXPF(y[i]) * ts;             \
            } else {                                                                         \
                T ts = (T)row_dot_##SFX(gy, y, C);                                           \
                for (int64_t i = 0; i < C; i++) gx[i] = y[i] * (gy[i] - ts);                 \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    static void sm_bwd_strided_##SFX(void *vctx, int64_t b, int64_t e) {                    \
        const sm_ctx *c = vctx;                                                              \
        const int64_t C = c->C, inner = c->inner;                                            \
        A sm[SM_BLK];                                                                        \
        T ts[SM_BLK];                                                                        \
        for (int64_t w = b; w < e; w++) {                                                    \
            int64_t o = w / c->nblk, j0 = (w % c->nblk) * SM_BLK;                            \
            int64_t nj = inner - j0 < SM_BLK ? inner - j0 : SM_BLK;                          \
            int64_t base = o * C * inner + j0;                                               \
            const T *y = (const T *)c->x + base;                                             \
            const T *gy = (const T *)c->gy + base;                                           \
            T *gx = (T *)c->out + base;                                                      \
            for (int64_t j = 0; j < nj; j++) sm[j] = 0;                                      \
            for (int64_t i = 0; i < C; i++) {                                                \
                const T *yi = y + i * inner, *gi = gy + i * inner;                           \
                if (c->log)                                                                  \
                    for (int64_t j = 0; j < nj; j++) sm[j] += gi[j];                         \
                else                                                                         \
                    for (int64_t j = 0; j < nj; j++) sm[j] += gi[j] * yi[j];                 \
            }                                                                                \
            for (int64_t j = 0; j < nj; j++) ts[j] = (T)sm[j];                               \
            for (int64_t i = 0; i < C; i++) {                                                \
                const T *yi = y + i * inner, *gi = gy + i * inner;                           \
                T *xi = gx + i * inner;                                                      \
                if (c->log)                                                                  \
                    for (int64_t j = 0; j < nj; j++) xi[j] = gi[j] - EXPF(yi[j]) * ts[j];    \
                else                                                                         \
                    for (int64_t j = 0; j < nj; j++) xi[j] = yi[j] * (gi[j] - ts[j]);        \
            }                                                                                \
        }                                                                                    \
    }

SM_DEFINE(float, double, f32, ct_vexpf)
SM_DEFINE(double, double, f64, exp)

static int sm_run(sm_ctx *c, ct_dtype dt, int backward, const char *op) {
    ct_range_fn rows, strided;
    if (dt == CT_FLOAT32) {
        rows = backward ? sm_bwd_rows_f32 : sm_fwd_rows_f32;
        strided = backward ? sm_bwd_strided_f32 : sm_fwd_strided_f32;
    } else if (dt == CT_FLOAT64) {
        rows = backward ? sm_bwd_rows_f64 : sm_fwd_rows_f64;
        strided = backward ? sm_bwd_strided_f64 : sm_fwd_strided_f64;
    } else {
        return ct_error("%s: dtype %s is not supported on cpu (use float32 or float64)", op,
                        ct_dtype_name(dt));
    }
    if (c->outer == 0 || c->C == 0 || c->inner == 0) return 0;
    if (c->inner == 1) {
        int64_t grain = SM_GRAIN_ELEMS / c->C;
        ct_parallel_for(c->outer, grain < 1 ? 1 : grain, rows, c);
    } else {
        c->nblk = (c->inner + SM_BLK - 1) / SM_BLK;
        int64_t per = c->C * (c->inner < SM_BLK ? c->inner : SM_BLK);
        int64_t grain = SM_GRAIN_ELEMS / per;
        ct_parallel_for(c->outer * c->nblk, grain < 1 ? 1 : grain, strided, c);
    }
    return 0;
}

int cpu_softmax_forward_full(ct_tensor *y, const ct_tensor *x, int dim, int is_log) {
    sm_ctx c = {0};
    sm_split(x, dim, &c.outer, &c.C, &c.inner);
    c.x = ct_ptr(x);
    c.out = ct_ptr(y);
    c.log = is_log;
    return sm_run(&c, x->dtype, 0, is_log ? "log_softmax" : "softmax");
}

int cpu_softmax_backward_full(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *y, int dim,
                         int is_log) {
    sm_ctx c = {0};
    sm_split(y, dim, &c.outer, &c.C, &c.inner);
    c.x = ct_ptr(y);
    c.gy = ct_ptr(gy);
    c.out = ct_ptr(gx);
    c.log = is_log;
    return sm_run(&c, y->dtype, 1, is_log ? "log_softmax backward" : "softmax backward");
}

/* ------------------------------------------------------------ cross entropy
 * Fused log_softmax + nll_loss + label smoothing over class indices (PyTorch 1.13):
 *   loss_i = (1-eps) * (-logp[i,t_i]) + (eps/C) * (-sum_c logp[i,c]),  0 if t_i ignored
 *          = (1-eps) * (log s - (x_t - m)) + eps * (log s - mean_c(x_c - m))
 * with m = max_c x, s = sum_c exp(x - m). Backward (g_i: upstream gradient of row i,
 * divided by the number of non-ignored rows for mean):
 *   gx[i,c] = g_i * (exp(logp[i,c]) - eps/C - (1-eps) [c == t_i]),  0 for ignored rows.
 * logits/logp/glogits [N, C], target int64 [N], all contiguous. */
int64_t cpu_loss_check_targets(const int64_t *t, int64_t N, int64_t C, int64_t ignore_index,
                               const char *op); /* cpu_loss.c */

typedef struct {
    const void *x;   /* forward: logits; backward: logp */
    void *logp;      /* forward: receives log_softmax (may be NULL) */
    double *rowv;    /* forward: per-row losses for mean/sum, or NULL */
    void *out;       /* forward: per-row losses for none; backward: glogits */
    const void *gout;
    const int64_t *t;
    int64_t C, ignore_index;
    double eps, scale;
    ct_reduction red;
} ce_ctx;

#define CE_DEFINE(T, SFX, EXPF)                                                              \
    static void ce_fwd_##SFX(void *vctx, int64_t b, int64_t e) {                            \
        const ce_ctx *c = vctx;                                                              \
        const int64_t C = c->C;                                                              \
        for (int64_t r = b; r < e; r++) {                                                    \
            const T *x = (const T *)c->x + r * C;                                            \
            const T m = row_max_##SFX(x, C);                                                 \
            const double ls = log(row_sumexp_##SFX(x, m, NULL, C));                          \
            if (c->logp) {                                                                   \
                T *lp = (T *)c->logp + r * C;                                                \
                const T lse = (T)((double)m + ls);                                           \
                for (int64_t i = 0; i < C; i++) lp[i] = x[i] - lse;                          \
            }                                                                                \
            const int64_t t = c->t[r];                                                       \
            double loss = 0;                                                                 \
            if (t != c->ignore_index) {                                                      \
                loss = (1.0 - c->eps) * (ls - ((double)x[t] - (double)m));                   \
                if (c->eps != 0) {                                                           \
                    double sx = (double)row_dot_##SFX(x, NULL, C) - (double)C * (double)m;   \
                    loss += c->eps * (ls - sx / (double)C);                                  \
                }                                                                            \
            }                                                                                \
            if (c->rowv) c->rowv[r] = loss;                                                  \
            else ((T *)c->out)[r] = (T)loss;                                                 \
        }                                                                                    \
    }                                                                                        \
    static void ce_bwd_##SFX(void *vctx, int64_t b, int64_t e) {                            \
        const ce_ctx *c = vctx;                                                              \
        const int64_t C = c->C;                                                              \
        for (int64_t r = b; r < e; r++) {                                                    \
            const T *lp = (const T *)c->x + r * C;                                           \
            T *gx = (T *)c->out + r * C;                                                     \
            const int64_t t = c->t[r];                                                       \
            if (t == c->ignore_index) {                                                      \
                memset(gx, 0, sizeof(T) * (size_t)C);                                        \
                continue;                                                                    \
            }                                                                                \
            const T g = c->red == CT_REDUCTION_NONE ? ((const T *)c->gout)[r] : (T)c->scale; \
            const T off = (T)(c->eps / (double)C);                                           \
            for (int64_t i = 0; i < C; i++) gx[i] = g * (EXPF(lp[i]) - off);                 \
            gx[t] -= g * (T)(1.0 - c->eps);                                                  \
        }                                                                                    \
    }

CE_DEFINE(float, f32, ct_vexpf)
CE_DEFINE(double, f64, exp)

static int ce_dtype_ok(ct_dtype dt, const char *op) {
    if (dt == CT_FLOAT32 || dt == CT_FLOAT64) return 0;
    return ct_error("%s: dtype %s is not supported on cpu (use float32 or float64)", op,
                    ct_dtype_name(dt));
}

/* logp ([N, C], may be NULL) receives log_softmax(logits) for the backward. */
int cpu_cross_entropy_forward_full(ct_tensor *out, ct_tensor *logp, ct_tensor *total_weight,
                              const ct_tensor *logits, const ct_tensor *target,
                              ct_reduction red, int64_t ignore_index, double label_smoothing) {
    if (ce_dtype_ok(logits->dtype, "cross_entropy") != 0) return -1;
    const int64_t N = logits->shape[0], C = logits->shape[1];
    const int64_t *t = (const int64_t *)ct_ptr(target);
    int64_t count = cpu_loss_check_targets(t, N, C, ignore_index, "cross_entropy");
    if (count < 0) return -1;
    ce_ctx c = {0};
    c.x = ct_ptr(logits);
    c.logp = logp ? ct_ptr(logp) : NULL;
    c.t = t;
    c.C = C;
    c.ignore_index = ignore_index;
    c.eps = label_smoothing;
    double *rowv = NULL;
    if (red == CT_REDUCTION_NONE) {
        c.out = ct_ptr(out);
    } else {
        rowv = calloc((size_t)(N > 0 ? N : 1), sizeof(double));
        if (!rowv) return ct_error("cross_entropy: out of memory for %lld rows", (long long)N);
        c.rowv = rowv;
    }
    if (N > 0 && C > 0) {
        int64_t grain = SM_GRAIN_ELEMS / C;
        ct_parallel_for(N, grain < 1 ? 1 : grain,
                        logits->dtype == CT_FLOAT32 ? ce_fwd_f32 : ce_fwd_f64, &c);
    }
    cpu_loss_reduce_rows(out, total_weight, rowv, N, count, red);
    free(rowv);
    return 0;
}

int cpu_cross_entropy_backward_full(ct_tensor *glogits, const ct_tensor *gout, const ct_tensor *logp,
                               const ct_tensor *target, const ct_tensor *total_weight,
                               ct_reduction red, int64_t ignore_index, double label_smoothing) {
    if (ce_dtype_ok(glogits->dtype, "cross_entropy backward") != 0) return -1;
    if (gout->dtype != glogits->dtype)
        return ct_error("cross_entropy backward: gradient dtype %s differs from %s",
                        ct_dtype_name(gout->dtype), ct_dtype_name(glogits->dtype));
    const int64_t N = glogits->shape[0], C = glogits->shape[1];
    ce_ctx c = {0};
    c.x = ct_ptr(logp);
    c.out = ct_ptr(glogits);
    c.gout = ct_ptr(gout);
    c.t = (const int64_t *)ct_ptr(target);
    c.C = C;
    c.ignore_index = ignore_index;
    c.eps = label_smoothing;
    c.red = red;
    if (red != CT_REDUCTION_NONE) {
        const void *go = ct_ptr(gout);
        c.scale = gout->dtype == CT_FLOAT32 ? (double)*(const float *)go : *(const double *)go;
        if (red == CT_REDUCTION_MEAN) {
            const void *tw = total_weight ? ct_ptr(total_weight) : NULL;
            double w = !tw ? 0
                       : total_weight->dtype == CT_FLOAT32 ? (double)*(const float *)tw
                                                           : *(const double *)tw;
            c.scale = w != 0 ? c.scale / w : 0; /* all ignored: zero gradient */
        }
    }
    if (N > 0 && C > 0) {
        int64_t grain = SM_GRAIN_ELEMS / C;
        ct_parallel_for(N, grain < 1 ? 1 : grain,
                        glogits->dtype == CT_FLOAT32 ? ce_bwd_f32 : ce_bwd_f64, &c);
    }
    return 0;
}
