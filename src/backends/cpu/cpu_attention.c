/* CPU scaled_dot_product_attention, the flash-attention way: for each block of QB query
 * rows the keys are visited in blocks of KB; a block's scores (QB x KB) are computed,
 * masked, and folded into the output with an online softmax (running max m and sum l per
 * row, the output rescaled when the max grows). Only the log-sum-exp of each row
 * (m + log l) is kept for the backward, which recomputes each tile's probabilities from
 * it. Per thread the scratch is a few tiles (O((QB + E + Ev) * KB)), whatever L and S:
 * memory grows linearly with the sequence (tests/test_attention.c measures it).
 *
 * Work is split over (batch, query block) in the forward and over the batch in the
 * backward (dK and dV of a batch are sums over all its query blocks, so one thread owns
 * a batch: the result does not depend on the thread count). The tile products are one
 * small GEMM (C += A B, row-major) with an AVX2+FMA register-blocked kernel for float32
 * and a scalar reference (float64, or CPUs without AVX2; CTORCH_CPU_ISA=none).
 *
 * This file is a template of itself: the part under SDPA_TMPL is compiled once for float
 * and once for double (no extra header: every object depends on every header). */
#ifndef SDPA_TMPL

#include "core/backend.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/random.h"
#include "cpu_alloc.h"
#include "cpu_isa.h"
#include "cpu_kernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu_vexp.h"
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SDPA_X86 1
#define AVX2_FN __attribute__((target("avx2,fma")))
#endif

#define QB 96 /* query rows per block */
#define KB 96 /* keys per block */

typedef struct {
    const char *q, *k, *v, *mask, *o, *gout;
    char *out, *lse, *gq, *gk, *gv;
    int64_t B, L, S, E, Ev, mB2, ms0, ms1, ms2, nqb;
    int64_t nsplit; /* backward: key ranges per batch (dQ partial sums in dqp when > 1) */
    char *D, *dqp;  /* backward: rowsum(dO * O) [B, L]; dQ partials [B, nsplit, L, E] */
    ct_sdpa_params p;
    int avx2, err;
} sdpa_ctx;

/* The dropout factor of weight (b, i, j): 0 or 1/(1-p). */
static inline double drop_factor(const sdpa_ctx *c, int64_t b, int64_t i, int64_t j) {
    const uint64_t n = ((uint64_t)(b * c->L + i)) * (uint64_t)c->S + (uint64_t)j;
    return ct_rng_uniform(c->p.seed, c->p.offset + n) > c->p.dropout_p
               ? 1.0 / (1.0 - c->p.dropout_p)
               : 0.0;
}

#ifdef SDPA_X86
/* max(m, x[0..n)) (NaN ignored, as the scalar loop's comparisons do). */
AVX2_FN static float max_avx2(const float *x, int n, float m) {
    __m256 acc = _mm256_set1_ps(m);
    int i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_max_ps(_mm256_loadu_ps(x + i), acc);
    float t[8];
    _mm256_storeu_ps(t, acc);
    for (int j = 0; j < 8; j++) m = t[j] > m ? t[j] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* x[i] = exp(x[i] - mx) (mx finite, x[i] <= mx); returns the sum. */
AVX2_FN static float exp_sub_sum_avx2(float *x, int n, float mx) {
    const __m256 m = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = ct_exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float t[8], s = 0;
    _mm256_storeu_ps(t, acc);
    for (int j = 0; j < 8; j++) s += t[j];
    for (; i < n; i++) {
        x[i] = ct_vexpf(x[i] - mx);
        s += x[i];
    }
    return s;
}

/* R rows x 16 columns of C += A B (R <= 6: 2R accumulators stay in registers). */
#define MM_BLOCK(R)                                                                         \
    AVX2_FN static inline void mm_blk##R(int k, const float *a, int ars, int acs,          \
                                         const float *B, int ldb, float *c, int ldc) {     \
        __m256 x0[R], x1[R];                                                                \
        _Pragma("GCC unroll 6") for (int r = 0; r < R; r++) {                               \
            x0[r] = _mm256_loadu_ps(c + (size_t)r * ldc);                                   \
            x1[r] = _mm256_loadu_ps(c + (size_t)r * ldc + 8);                               \
        }                                                                                   \
        for (int p = 0; p < k; p++, a += acs, B += ldb) {                                   \
            const __m256 b0 = _mm256_loadu_ps(B), b1 = _mm256_loadu_ps(B + 8);              \
            _Pragma("GCC unroll 6") for (int r = 0; r < R; r++) {                           \
                const __m256 v = _mm256_broadcast_ss(a + (size_t)r * ars);                  \
                x0[r] = _mm256_fmadd_ps(v, b0, x0[r]);                                      \
                x1[r] = _mm256_fmadd_ps(v, b1, x1[r]);                                      \
            }                                                                               \
        }                                                                                   \
        _Pragma("GCC unroll 6") for (int r = 0; r < R; r++) {                               \
            _mm256_storeu_ps(c + (size_t)r * ldc, x0[r]);                                   \
            _mm256_storeu_ps(c + (size_t)r * ldc + 8, x1[r]);                               \
        }                                                                                   \
    }
MM_BLOCK(6)
MM_BLOCK(4)
MM_BLOCK(1)

/* C[m x n] += A[m x k] B[k x n]; A's element (i, p) at A[i * ars + p * acs] (row-major:
 * ars = lda, acs = 1; transposed: ars = 1, acs = lda), B and C row-major; register blocks
 * of 6 (then 4, then 1) rows x 16 columns, the columns left over scalar. */
AVX2_FN static void mm_acc_avx2(int m, int n, int k, const float *A, int ars, int acs,
                                const float *B, int ldb, float *C, int ldc) {
    const int n16 = n & ~15;
    for (int j = 0; j < n16; j += 16) {
        int i = 0;
        for (; i + 6 <= m; i += 6)
            mm_blk6(k, A + (size_t)i * ars, ars, acs, B + j, ldb, C + (size_t)i * ldc + j, ldc);
        for (; i + 4 <= m; i += 4)
            mm_blk4(k, A + (size_t)i * ars, ars, acs, B + j, ldb, C + (size_t)i * ldc + j, ldc);
        for (; i < m; i++)
            mm_blk1(k, A + (size_t)i * ars, ars, acs, B + j, ldb, C + (size_t)i * ldc + j, ldc);
    }
    if (n16 == n) return;
    for (int i = 0; i < m; i++)
        for (int p = 0; p < k; p++) {
            const float a = A[(size_t)i * ars + (size_t)p * acs];
            for (int jj = n16; jj < n; jj++) C[(size_t)i * ldc + jj] += a * B[(size_t)p * ldb + jj];
        }
}
#endif

/* ---------------------------------------------------------------- the templates */
#define SDPA_TMPL
#define T float
#define F(name) name##_f32
#define EXP expf
#define LOG logf
#define AVX2_F32 1
#include "cpu_attention.c"
#undef T
#undef F
#undef EXP
#undef LOG
#undef AVX2_F32
#define T double
#define F(name) name##_f64
#define EXP exp
#define LOG log
#define AVX2_F32 0
#include "cpu_attention.c"
#undef SDPA_TMPL

/* ---------------------------------------------------------------- entry points */
static int fill_ctx(sdpa_ctx *c, const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,
                    const ct_tensor *mask, const ct_sdpa_params *p, const char *op) {
    if (q->dtype != CT_FLOAT32 && q->dtype != CT_FLOAT64)
        return ct_error("%s: dtype %s not supported (float32 or float64)", op,
                        ct_dtype_name(q->dtype));
    memset(c, 0, sizeof *c);
    c->q = ct_ptr(q), c->k = ct_ptr(k), c->v = ct_ptr(v);
    c->B = q->shape[0], c->L = q->shape[1], c->E = q->shape[2];
    c->S = k->shape[1], c->Ev = v->shape[2];
    c->nqb = (c->L + QB - 1) / QB;
    if (mask) {
        if (mask->dtype != q->dtype || mask->ndim != 4 || (mask->stride[3] != 1 && c->S > 1) ||
            mask->shape[0] * mask->shape[1] != c->B)
            return ct_error("%s: the mask must have q's dtype, shape [B1, B2, L, S] and a "
                            "contiguous last dim", op);
        c->mask = ct_ptr(mask), c->mB2 = mask->shape[1];
        c->ms0 = mask->stride[0], c->ms1 = mask->stride[1], c->ms2 = mask->stride[2];
    }
    c->p = *p;
#ifdef SDPA_X86
    c->avx2 = ct_cpu_isa_level() >= CT_ISA_AVX2;
#endif
    return 0;
}

int cpu_sdpa_forward_full(ct_tensor *out, ct_tensor *lse, const ct_tensor *q, const ct_tensor *k,
                          const ct_tensor *v, const ct_tensor *mask, const ct_sdpa_params *p) {
    sdpa_ctx c;
    if (fill_ctx(&c, q, k, v, mask, p, "scaled_dot_product_attention") != 0) return -1;
    c.out = ct_ptr(out), c.lse = ct_ptr(lse);
    const int64_t n = c.B * c.nqb;
    if (n == 0) return 0;
    ct_parallel_for(n, 1, q->dtype == CT_FLOAT32 ? fwd_range_f32 : fwd_range_f64, &c);
    return c.err ? ct_error("scaled_dot_product_attention: out of memory for the tiles") : 0;
}

int cpu_sdpa_backward_full(ct_tensor *gq, ct_tensor *gk, ct_tensor *gv, const ct_tensor *gout,
                           const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,
                           const ct_tensor *out, const ct_tensor *lse, const ct_tensor *mask,
                           const ct_sdpa_params *p) {
    sdpa_ctx c;
    if (fill_ctx(&c, q, k, v, mask, p, "scaled_dot_product_attention backward") != 0) return -1;
    c.o = ct_ptr(out), c.gout = ct_ptr(gout), c.lse = ct_ptr(lse);
    c.gq = gq ? ct_ptr(gq) : NULL, c.gk = gk ? ct_ptr(gk) : NULL, c.gv = gv ? ct_ptr(gv) : NULL;
    if (c.B == 0) return 0;
    const int f32 = q->dtype == CT_FLOAT32;
    const size_t es = f32 ? sizeof(float) : sizeof(double);
    /* enough items for the threads: the keys of a batch split into ranges when B is small
     * (a fixed count under deterministic mode: ct_plan_threads) */
    const int64_t nkb = (c.S + KB - 1) / KB, want = 2 * (int64_t)ct_plan_threads();
    c.nsplit = c.B >= want || !gq ? 1 : (want + c.B - 1) / c.B;
    if (c.nsplit > nkb) c.nsplit = nkb > 0 ? nkb : 1;
    c.D = ct_cpu_alloc(es * (size_t)(c.B * c.L) + 1);
    c.dqp = c.nsplit > 1 ? ct_cpu_alloc(es * (size_t)(c.B * c.nsplit * c.L * c.E)) : NULL;
    if (!c.D || (c.nsplit > 1 && !c.dqp)) {
        ct_cpu_free(c.D), ct_cpu_free(c.dqp);
        return -1;
    }
    const int64_t grain = 4096 / (c.Ev + c.E + 1) + 1;
    ct_parallel_for(c.B * c.L, grain, f32 ? rowdot_f32 : rowdot_f64, &c);
    ct_parallel_for(c.B * c.nsplit, 1, f32 ? bwd_range_f32 : bwd_range_f64, &c);
    if (!c.err && c.nsplit > 1)
        ct_parallel_for(c.B * c.L, grain, f32 ? sum_parts_f32 : sum_parts_f64, &c);
    ct_cpu_free(c.D), ct_cpu_free(c.dqp);
    return c.err ? ct_error("scaled_dot_product_attention backward: out of memory for the "
                            "tiles")
                 : 0;
}

#else /* SDPA_TMPL: compiled for T = float and T = double */

/* C[m x n] += A[m x k] B[k x n]; A's element (i, p) at A[i * ars + p * acs] (row-major or
 * transposed), B and C row-major. */
static void F(mm_acc)(const sdpa_ctx *c, int m, int n, int k, const T *A, int ars, int acs,
                      const T *B, int ldb, T *C, int ldc) {
#if AVX2_F32 && defined(SDPA_X86)
    if (c->avx2) {
        mm_acc_avx2(m, n, k, A, ars, acs, B, ldb, C, ldc);
        return;
    }
#endif
    (void)c;
    for (int i = 0; i < m; i++)
        for (int p = 0; p < k; p++) {
            const T a = A[(size_t)i * ars + (size_t)p * acs];
            T *cr = C + (size_t)i * ldc;
            const T *br = B + (size_t)p * ldb;
            for (int j = 0; j < n; j++) cr[j] += a * br[j];
        }
}

/* dst[cc * ldd + r] = src[r * lds + cc] for r < rows, cc < cols. */
static void F(transpose)(const T *src, int rows, int cols, int64_t lds, T *dst, int ldd) {
    for (int r = 0; r < rows; r++)
        for (int cc = 0; cc < cols; cc++) dst[(size_t)cc * ldd + r] = src[(size_t)r * lds + cc];
}

/* x[i] = exp(x[i] - mx) for i < n (mx finite); returns the sum (the softmax's, or ignored
 * when the backward applies the saved log-sum-exp). */
static T F(exp_sub_sum)(const sdpa_ctx *c, T *x, int n, T mx) {
#if AVX2_F32 && defined(SDPA_X86)
    if (c->avx2) return exp_sub_sum_avx2(x, n, mx);
#endif
    (void)c;
    T s = 0;
    for (int i = 0; i < n; i++) {
        x[i] = EXP(x[i] - mx);
        s += x[i];
    }
    return s;
}

/* s[r * KB + j] = mask + q[i0 + r] . (scale k[j0 + j]), -inf where causal hides the key;
 * kt: scratch [E x KB]. */
static void F(scale_kt)(const sdpa_ctx *c, int64_t b, int64_t j0, int nk, T *kt) {
    const int E = (int)c->E;
    const T *K = (const T *)c->k + (b * c->S + j0) * c->E;
    const T sc = (T)c->p.scale;
    for (int r = 0; r < nk; r++) /* kt = scale * K^T */
        for (int e = 0; e < E; e++) kt[(size_t)e * KB + r] = sc * K[(size_t)r * E + e];
}

/* The same with kt (scale * K^T of the key block) made already (new_kt == 0). */
static void F(scores)(const sdpa_ctx *c, int64_t b, int64_t i0, int nq, int64_t j0, int nk,
                      T *kt, T *s, int new_kt) {
    const int E = (int)c->E;
    const T *Q = (const T *)c->q + (b * c->L + i0) * c->E;
    if (new_kt) F(scale_kt)(c, b, j0, nk, kt);
    for (int r = 0; r < nq; r++) {
        T *sr = s + (size_t)r * KB;
        if (c->mask)
            memcpy(sr, (const T *)c->mask + (b / c->mB2) * c->ms0 + (b % c->mB2) * c->ms1 +
                           (i0 + r) * c->ms2 + j0,
                   sizeof(T) * (size_t)nk);
        else
            memset(sr, 0, sizeof(T) * (size_t)nk);
    }
    F(mm_acc)(c, nq, nk, E, Q, E, 1, kt, KB, s, KB);
    if (c->p.causal)
        for (int r = 0; r < nq; r++)
            for (int j = (int)(i0 + r - j0 + 1 > 0 ? i0 + r - j0 + 1 : 0); j < nk; j++)
                s[(size_t)r * KB + j] = -INFINITY;
}

/* The keys a block of queries [i0, i0 + nq) sees: [0, end). */
static int64_t F(key_end)(const sdpa_ctx *c, int64_t i0, int nq) {
    return c->p.causal && i0 + nq < c->S ? i0 + nq : c->S;
}

/* Multiplies row r of the probability tile by its dropout factors. */
static void F(drop_row)(const sdpa_ctx *c, T *pr, int64_t b, int64_t i, int64_t j0, int nk) {
    for (int j = 0; j < nk; j++)
        if (pr[j] != 0) pr[j] *= (T)drop_factor(c, b, i, j0 + j);
}

/* The online-softmax step of one key block for rows [i0, i0 + nq): s holds the block's
 * scores and becomes its (dropped-out) probabilities against the running max; m, l and
 * the output rows are updated. */
static void F(online_step)(const sdpa_ctx *c, int64_t b, int64_t i0, int nq, int64_t j0, int nk,
                           T *s, T *m, T *l) {
    const int Ev = (int)c->Ev;
    T *O = (T *)c->out + (b * c->L + i0) * c->Ev;
    for (int r = 0; r < nq; r++) {
        T *sr = s + (size_t)r * KB;
        T mx = m[r];
#if AVX2_F32 && defined(SDPA_X86)
        if (c->avx2) mx = max_avx2(sr, nk, mx);
        else
#endif
            for (int j = 0; j < nk; j++) mx = sr[j] > mx ? sr[j] : mx;
        if (mx == -INFINITY) { /* nothing to attend in this block yet */
            memset(sr, 0, sizeof(T) * (size_t)nk);
            continue;
        }
        const T alpha = m[r] == -INFINITY ? 0 : EXP(m[r] - mx);
        const T sum = F(exp_sub_sum)(c, sr, nk, mx);
        l[r] = l[r] * alpha + sum;
        m[r] = mx;
        if (alpha != 1)
            for (int e = 0; e < Ev; e++) O[(size_t)r * Ev + e] *= alpha;
        if (c->p.dropout_p > 0) F(drop_row)(c, sr, b, i0 + r, j0, nk);
    }
    const T *V = (const T *)c->v + (b * c->S + j0) * c->Ev;
    F(mm_acc)(c, nq, Ev, nk, s, KB, 1, V, Ev, O, Ev);
}

/* One block of query rows: (b, qb) = item / nqb, item % nqb. */
static void F(fwd_block)(const sdpa_ctx *c, int64_t item, T *s, T *kt, T *m, T *l) {
    const int64_t b = item / c->nqb, i0 = (item % c->nqb) * QB;
    const int nq = (int)(c->L - i0 < QB ? c->L - i0 : QB);
    T *O = (T *)c->out + (b * c->L + i0) * c->Ev;
    memset(O, 0, sizeof(T) * (size_t)(nq * c->Ev));
    for (int r = 0; r < nq; r++) m[r] = -INFINITY, l[r] = 0;
    const int64_t jend = F(key_end)(c, i0, nq);
    for (int64_t j0 = 0; j0 < jend; j0 += KB) {
        const int nk = (int)(jend - j0 < KB ? jend - j0 : KB);
        F(scores)(c, b, i0, nq, j0, nk, kt, s, 1);
        F(online_step)(c, b, i0, nq, j0, nk, s, m, l);
    }
    T *lse = (T *)c->lse + b * c->L + i0;
    for (int r = 0; r < nq; r++) {
        T *orow = O + (size_t)r * c->Ev;
        const T inv = l[r] > 0 ? 1 / l[r] : 0;
        for (int64_t e = 0; e < c->Ev; e++) orow[e] *= inv;
        lse[r] = l[r] > 0 ? m[r] + LOG(l[r]) : -INFINITY;
    }
}

static void F(fwd_range)(void *vc, int64_t begin, int64_t end) {
    sdpa_ctx *c = vc;
    const size_t n = (size_t)QB * KB + (size_t)c->E * KB + 2 * QB;
    T *buf = ct_cpu_alloc(n * sizeof(T));
    if (!buf) {
        c->err = 1;
        return;
    }
    T *s = buf, *kt = s + (size_t)QB * KB, *m = kt + (size_t)c->E * KB, *l = m + QB;
    for (int64_t it = begin; it < end; it++) F(fwd_block)(c, it, s, kt, m, l);
    ct_cpu_free(buf);
}

/* Backward scratch of one thread. */
typedef struct {
    T *s, *dp, *kt, *vt;
} F(bwd_buf);

/* The gradients of one tile (rows [i0, i0+nq), keys [j0, j0+nk)): P from the saved
 * log-sum-exp, dV += P~^T dO, dP = (dO V^T) * dropout, dS = P (dP - D) scale,
 * dQ += dS K, dK += dS^T Q. */
static void F(bwd_tile)(const sdpa_ctx *c, const F(bwd_buf) * w, T *dq, int64_t b, int64_t i0,
                        int nq, int64_t j0, int nk) {
    const int E = (int)c->E, Ev = (int)c->Ev;
    const T *D = (const T *)c->D + b * c->L + i0;
    const T *lse = (const T *)c->lse + b * c->L + i0;
    const T *dO = (const T *)c->gout + (b * c->L + i0) * c->Ev;
    F(scores)(c, b, i0, nq, j0, nk, w->kt, w->s, 0); /* kt, vt: made by bwd_item */
    for (int r = 0; r < nq; r++) {
        T *sr = w->s + (size_t)r * KB;
        if (lse[r] == -INFINITY) memset(sr, 0, sizeof(T) * (size_t)nk);
        else F(exp_sub_sum)(c, sr, nk, lse[r]);
        memset(w->dp + (size_t)r * KB, 0, sizeof(T) * (size_t)nk);
    }
    F(mm_acc)(c, nq, nk, Ev, dO, Ev, 1, w->vt, KB, w->dp, KB); /* dP~ = dO V^T */
    const int drop = c->p.dropout_p > 0;
    const T sc = (T)c->p.scale;
    for (int r = 0; r < nq; r++) {
        T *sr = w->s + (size_t)r * KB, *dpr = w->dp + (size_t)r * KB;
        const T dr = D[r];
        if (drop) {
            for (int j = 0; j < nk; j++) {
                const T z = (T)drop_factor(c, b, i0 + r, j0 + j);
                dpr[j] = sr[j] * (dpr[j] * z - dr) * sc; /* dS */
                sr[j] *= z;                              /* P~ */
            }
        } else {
            for (int j = 0; j < nk; j++) dpr[j] = sr[j] * (dpr[j] - dr) * sc;
        }
    }
    /* dV += P~^T dO, dK += dS^T Q: the tiles read transposed (no copies) */
    if (c->gv)
        F(mm_acc)(c, nk, Ev, nq, w->s, 1, KB, dO, Ev, (T *)c->gv + (b * c->S + j0) * c->Ev, Ev);
    if (dq) {
        const T *K = (const T *)c->k + (b * c->S + j0) * c->E;
        F(mm_acc)(c, nq, E, nk, w->dp, KB, 1, K, E, dq + i0 * c->E, E);
    }
    if (c->gk) {
        const T *Q = (const T *)c->q + (b * c->L + i0) * c->E;
        F(mm_acc)(c, nk, E, nq, w->dp, 1, KB, Q, E, (T *)c->gk + (b * c->S + j0) * c->E, E);
    }
}

/* D = rowsum(dO * O) for rows [b, e) of [B*L]. */
static void F(rowdot)(void *vc, int64_t b, int64_t e) {
    const sdpa_ctx *c = vc;
    for (int64_t i = b; i < e; i++) {
        const T *dO = (const T *)c->gout + i * c->Ev, *O = (const T *)c->o + i * c->Ev;
        T acc = 0;
        for (int64_t k = 0; k < c->Ev; k++) acc += dO[k] * O[k];
        ((T *)c->D)[i] = acc;
    }
}

/* Item (b, part): the key blocks of part against every query block; dK and dV of those
 * keys are this item's alone, dQ goes to gq (one part) or to the part's partial sums. */
static void F(bwd_item)(const sdpa_ctx *c, const F(bwd_buf) * w, int64_t item) {
    const int64_t b = item / c->nsplit, part = item % c->nsplit;
    const int64_t nkb = (c->S + KB - 1) / KB;
    const int64_t j_lo = nkb * part / c->nsplit * KB, j_hi = nkb * (part + 1) / c->nsplit * KB;
    const int64_t j_end = j_hi < c->S ? j_hi : c->S;
    T *dq = c->nsplit > 1 ? (T *)c->dqp + item * c->L * c->E
                          : c->gq ? (T *)c->gq + b * c->L * c->E : NULL;
    if (dq) memset(dq, 0, sizeof(T) * (size_t)(c->L * c->E));
    if (c->gk && j_end > j_lo)
        memset((T *)c->gk + (b * c->S + j_lo) * c->E, 0, sizeof(T) * (size_t)((j_end - j_lo) * c->E));
    if (c->gv && j_end > j_lo)
        memset((T *)c->gv + (b * c->S + j_lo) * c->Ev, 0,
               sizeof(T) * (size_t)((j_end - j_lo) * c->Ev));
    for (int64_t j0 = j_lo; j0 < j_end; j0 += KB) {
        const int nk = (int)(j_end - j0 < KB ? j_end - j0 : KB);
        F(scale_kt)(c, b, j0, nk, w->kt);
        F(transpose)((const T *)c->v + (b * c->S + j0) * c->Ev, nk, (int)c->Ev, c->Ev, w->vt, KB);
        for (int64_t i0 = 0; i0 < c->L; i0 += QB) {
            const int nq = (int)(c->L - i0 < QB ? c->L - i0 : QB);
            const int64_t jend = F(key_end)(c, i0, nq);
            if (j0 >= jend) continue; /* causal: these queries see none of these keys */
            F(bwd_tile)(c, w, dq, b, i0, nq, j0, (int)(jend - j0 < nk ? jend - j0 : nk));
        }
    }
}

static void F(bwd_range)(void *vc, int64_t begin, int64_t end) {
    sdpa_ctx *c = vc;
    const size_t tile = (size_t)QB * KB;
    const size_t n = 2 * tile + (size_t)(c->E + c->Ev) * KB;
    T *buf = ct_cpu_alloc(n * sizeof(T));
    if (!buf) {
        c->err = 1;
        return;
    }
    F(bwd_buf) w = {buf, buf + tile, buf + 2 * tile, NULL};
    w.vt = w.kt + (size_t)c->E * KB;
    for (int64_t it = begin; it < end; it++) F(bwd_item)(c, &w, it);
    ct_cpu_free(buf);
}

/* gq rows [b, e) of [B*L] = the sum of the parts' partial rows, in part order. */
static void F(sum_parts)(void *vc, int64_t b, int64_t e) {
    const sdpa_ctx *c = vc;
    for (int64_t r = b; r < e; r++) {
        const int64_t bb = r / c->L, i = r % c->L;
        T *dst = (T *)c->gq + r * c->E;
        const T *src = (const T *)c->dqp + (bb * c->nsplit * c->L + i) * c->E;
        for (int64_t k = 0; k < c->E; k++) dst[k] = src[k];
        for (int64_t part = 1; part < c->nsplit; part++) {
            src += c->L * c->E;
            for (int64_t k = 0; k < c->E; k++) dst[k] += src[k];
        }
    }
}

#endif /* SDPA_TMPL */
