/* CPU scaled_dot_product_attention, the flash-attention way: for each block of QB query
 * rows the keys are visited in blocks of KB; a block's scores (QB x KB) are computed,
 * masked, and folded into the output with an online softmax (running max m and sum l per
 * row, the output rescaled when the max grows). Only the log-sum-exp of each row
 * (m + log l) is kept for the backward, which recomputes each tile's probabilities from
 * it. Per thread the scratch is a few tiles (O((QB + E + Ev) * KB)) and, in the forward,
 * scale * K^T of one batch's keys (E x S, made once for all its query blocks): memory
 * grows linearly with the sequence (tests/test_attention.c measures it).
 *
 * Work is split over (batch, query block) in the forward and over the batch in the
 * backward (dK and dV of a batch are sums over all its query blocks, so one thread owns
 * a batch: the result does not depend on the thread count), in more chunks than threads
 * that the threads claim as they get free (ct_parallel_for_dynamic). The tile products are one
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
#include "core/half.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu_vexp.h" /* CT_VEXP_X86, CT_AVX2_FMA and the 8-wide helpers on x86 */
#ifdef CT_VEXP_X86
#include "simd512.h" /* ct_transpose16 */
#endif

#define QB 96 /* query rows per block */
#define KB 96 /* keys per block */

/* One operand of the kernel contract: a [B1, B2, rows, cols] view (src/core/backend.h),
 * its element strides of dims 0-2 (dim 3 is contiguous). */
typedef struct {
    char *p;
    int64_t s0, s1, s2;
} sdpa_view;

typedef struct {
    sdpa_view q, k, v, o, gout, out, gq, gk, gv;
    const char *mask;
    char *lse;
    int64_t B, B2, L, S, E, Ev, mB2, ms0, ms1, ms2, nqb;
    int64_t nsplit; /* backward: key ranges per batch (dQ partial sums in dqp when > 1) */
    char *D, *dqp;  /* backward: rowsum(dO * O) [B, L]; dQ partials [B, nsplit, L, E] */
    ct_sdpa_params p;
    int avx2, avx512, err;
} sdpa_ctx;

/* The keys [*lo, *hi) of backward part `part` of a batch: ranges of equal length
 * (multiples of 16, the tile GEMM's column block), so that the threads' items cost the
 * same. */
static inline void key_range(const sdpa_ctx *c, int64_t part, int64_t *lo, int64_t *hi) {
    *lo = c->S * part / c->nsplit / 16 * 16;
    *hi = part + 1 == c->nsplit ? c->S : c->S * (part + 1) / c->nsplit / 16 * 16;
}

/* The dropout factor of weight (b, i, j): 0 or 1/(1-p). */
static inline double drop_factor(const sdpa_ctx *c, int64_t b, int64_t i, int64_t j) {
    const uint64_t n = ((uint64_t)(b * c->L + i)) * (uint64_t)c->S + (uint64_t)j;
    return ct_rng_uniform(c->p.seed, c->p.offset + n) > c->p.dropout_p
               ? 1.0 / (1.0 - c->p.dropout_p)
               : 0.0;
}

#ifdef CT_VEXP_X86
/* max(m, x[0..n)) (NaN ignored, as the scalar loop's comparisons do). */
CT_AVX2_FMA static float max_avx2(const float *x, int n, float m) {
    __m256 acc = _mm256_set1_ps(m);
    int i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_max_ps(_mm256_loadu_ps(x + i), acc);
    float t[8];
    _mm256_storeu_ps(t, acc);
    for (int j = 0; j < 8; j++) m = t[j] > m ? t[j] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* e^d, 8 lanes; 0 below e^-87 (1.6e-38, where exp's results become subnormal); NaN stays
 * NaN (max(lo, d) returns d when d is NaN, and the reduction and the exponent's integer add
 * carry it through). */
CT_AVX2_FMA static inline __m256 exp8_or_zero_avx2(__m256 d) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    return _mm256_andnot_ps(_mm256_cmp_ps(d, lo, _CMP_LT_OQ),
                            ct_exp8_normal_avx2(_mm256_max_ps(lo, d)));
}

/* x[i] = exp(x[i] - mx) (mx finite, x[i] <= mx); returns the sum. */
CT_AVX2_FMA static float exp_sub_sum_avx2(float *x, int n, float mx) {
    const __m256 m = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp8_or_zero_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
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

/* alphas_avx512 (below) 8 lanes at a time, with exp_sub_sum_avx2's exp. */
CT_AVX2_FMA static void alphas_avx2(const float *m, const float *mx, float *a, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(a + i, exp8_or_zero_avx2(_mm256_sub_ps(_mm256_loadu_ps(m + i),
                                                                _mm256_loadu_ps(mx + i))));
    for (; i < n; i++) a[i] = m[i] == -INFINITY ? 0.0f : ct_vexpf(m[i] - mx[i]);
}

/* 8 x 8 transposes of transpose_scale_avx512 (below) for AVX2. */
CT_AVX2_FMA static void transpose_scale_avx2(const float *src, int rows, int cols, int64_t lds,
                                             float *dst, int ldd, float sc) {
    const __m256 scv = _mm256_set1_ps(sc);
    int r0 = 0;
    for (; r0 + 8 <= rows; r0 += 8) {
        int c0 = 0;
        for (; c0 + 8 <= cols; c0 += 8) {
            __m256 r[8], t[8];
            for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + (size_t)(r0 + i) * lds + c0);
            for (int i = 0; i < 8; i += 2) {
                t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
                t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
            }
            for (int i = 0; i < 8; i += 4) {
                r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
                r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
                r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
                r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
            }
            for (int i = 0; i < 4; i++) {
                t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
                t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
            }
            for (int j = 0; j < 8; j++) {
                __m256 v = sc != 1.0f ? _mm256_mul_ps(t[j], scv) : t[j];
                _mm256_storeu_ps(dst + (size_t)(c0 + j) * ldd + r0, v);
            }
        }
        for (; c0 < cols; c0++)
            for (int i = 0; i < 8; i++)
                dst[(size_t)c0 * ldd + r0 + i] = sc * src[(size_t)(r0 + i) * lds + c0];
    }
    for (; r0 < rows; r0++)
        for (int cc = 0; cc < cols; cc++) dst[(size_t)cc * ldd + r0] = sc * src[(size_t)r0 * lds + cc];
}

/* e^d, 16 lanes: ct_exp8_normal_avx2's reduction and polynomial, the power of two applied
 * by vscalefps (exact where the result is normal, as the exponent add). Between e^-87 and
 * e^-103 the result is subnormal (the AVX2 kernels give 0 below e^-87); below, 0 (d clamped
 * to -110: 2^-159 p rounds to 0); -inf gives 0, NaN stays NaN (max(lo, d) returns d when d
 * is NaN). */
CT_AVX512_FMA static inline __m512 exp16_scalef(__m512 d) {
    d = _mm512_max_ps(_mm512_set1_ps(-110.0f), d);
    const __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(d, _mm512_set1_ps(1.44269504088896341f)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 p;
    CT_EXP_POLY(_mm512, __m512, d, fx, p);
    return _mm512_scalef_ps(p, fx);
}

/* exp_sub_sum_avx2 16 lanes at a time (the last ones masked) through exp16_scalef, the sum
 * in another order. */
CT_AVX512_FMA static float exp_sub_sum_avx512(float *x, int n, float mx) {
    const __m512 m = _mm512_set1_ps(mx);
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 e = exp16_scalef(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), m));
        _mm512_mask_storeu_ps(x + i, k, e);
        acc = _mm512_mask_add_ps(acc, k, acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}

/* dst[cc * ldd + r] = sc * src[r * lds + cc] for r < rows, cc < cols (one rounding, as the
 * scalar loop): 16 x 16 blocks through registers, the edges masked. */
CT_AVX512_FMA static void transpose_scale_avx512(const float *src, int rows, int cols,
                                                 int64_t lds, float *dst, int ldd, float sc) {
    const __m512 scv = _mm512_set1_ps(sc);
    for (int r0 = 0; r0 < rows; r0 += 16) {
        const __mmask16 rm = rows - r0 >= 16 ? 0xffff : (__mmask16)((1u << (rows - r0)) - 1);
        for (int c0 = 0; c0 < cols; c0 += 16) {
            const int nc = cols - c0 < 16 ? cols - c0 : 16;
            const __mmask16 cm = nc == 16 ? 0xffff : (__mmask16)((1u << nc) - 1);
            __m512i t[16];
            for (int i = 0; i < 16; i++)
                t[i] = r0 + i < rows ? _mm512_maskz_loadu_epi32(cm, src + (size_t)(r0 + i) * lds + c0)
                                     : _mm512_setzero_si512();
            ct_transpose16(t);
            for (int j = 0; j < nc; j++) {
                __m512 v = _mm512_castsi512_ps(t[j]);
                if (sc != 1.0f) v = _mm512_mul_ps(v, scv);
                _mm512_mask_storeu_ps(dst + (size_t)(c0 + j) * ldd + r0, rm, v);
            }
        }
    }
}

/* max_avx2 16 wide (the tail's lanes start from m). */
CT_AVX512_FMA static float max_avx512(const float *x, int n, float m) {
    __m512 acc = _mm512_set1_ps(m);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        acc = _mm512_max_ps(_mm512_mask_loadu_ps(acc, k, x + i), acc);
    }
    return _mm512_reduce_max_ps(acc);
}

/* a[r] = exp(m[r] - mx[r]) for r < n, the online softmax's rescaling of the rows whose max
 * grew (0 where m[r] is -inf; 1 exactly where mx[r] == m[r]). */
CT_AVX512_FMA static void alphas_avx512(const float *m, const float *mx, float *a, int n) {
    for (int i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, m + i),
                                       _mm512_maskz_loadu_ps(k, mx + i));
        _mm512_mask_storeu_ps(a + i, k, exp16_scalef(d));
    }
}

/* R rows x 16 columns of C += A B (R <= 6: 2R accumulators stay in registers); zero: C
 * starts from 0 instead of its contents (C = A B, C not read). */
#define MM_BLOCK(R)                                                                         \
    CT_AVX2_FMA static inline void mm_blk##R(int k, const float *a, int ars, int acs,          \
                                         const float *B, int ldb, float *c, int ldc,       \
                                         int zero) {                                       \
        __m256 x0[R], x1[R];                                                                \
        _Pragma("GCC unroll 6") for (int r = 0; r < R; r++) {                               \
            x0[r] = zero ? _mm256_setzero_ps() : _mm256_loadu_ps(c + (size_t)r * ldc);      \
            x1[r] = zero ? _mm256_setzero_ps() : _mm256_loadu_ps(c + (size_t)r * ldc + 8);  \
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

/* The same for the last nr < 8 columns (lanes masked: nothing read or written past them). */
CT_AVX2_FMA static inline void mm_tail(int rows, int k, const float *a, int ars, int acs,
                                   const float *B, int ldb, float *c, int ldc, __m256i msk,
                                   int zero) {
    __m256 x[6];
    for (int r = 0; r < rows; r++)
        x[r] = zero ? _mm256_setzero_ps() : _mm256_maskload_ps(c + (size_t)r * ldc, msk);
    for (int p = 0; p < k; p++, a += acs, B += ldb) {
        const __m256 b0 = _mm256_maskload_ps(B, msk);
        for (int r = 0; r < rows; r++)
            x[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + (size_t)r * ars), b0, x[r]);
    }
    for (int r = 0; r < rows; r++) _mm256_maskstore_ps(c + (size_t)r * ldc, msk, x[r]);
}

/* C[m x n] += A[m x k] B[k x n] (zero: C = A B); A's element (i, p) at A[i * ars + p * acs]
 * (row-major: ars = lda, acs = 1; transposed: ars = 1, acs = lda), B and C row-major;
 * register blocks of 6 (then 4, then 1) rows x 16 columns, the columns left over in blocks
 * of 8 (the last one masked). */
CT_AVX2_FMA static void mm_acc_avx2(int m, int n, int k, const float *A, int ars, int acs,
                                const float *B, int ldb, float *C, int ldc, int zero) {
    const int n16 = n & ~15;
    for (int j = 0; j < n16; j += 16) {
        int i = 0;
        for (; i + 6 <= m; i += 6)
            mm_blk6(k, A + (size_t)i * ars, ars, acs, B + j, ldb, C + (size_t)i * ldc + j, ldc,
                    zero);
        for (; i + 4 <= m; i += 4)
            mm_blk4(k, A + (size_t)i * ars, ars, acs, B + j, ldb, C + (size_t)i * ldc + j, ldc,
                    zero);
        for (; i < m; i++)
            mm_blk1(k, A + (size_t)i * ars, ars, acs, B + j, ldb, C + (size_t)i * ldc + j, ldc,
                    zero);
    }
    for (int j = n16; j < n; j += 8) {
        const int nr = n - j < 8 ? n - j : 8;
        const __m256i msk = ct_lanes8_avx2(nr);
        for (int i = 0; i < m; i += 6)
            mm_tail(m - i < 6 ? m - i : 6, k, A + (size_t)i * ars, ars, acs, B + j, ldb,
                    C + (size_t)i * ldc + j, ldc, msk, zero);
    }
}

/* The same product with AVX-512: register blocks of R rows x 32 columns (two zmm per row,
 * the last block's columns masked), R = 6, then 4, then 1. Each element sums its products
 * in the same order as the AVX2 kernel: the same values. */
#define MM512_BLOCK(R)                                                                      \
    CT_AVX512_FMA static inline void mm5_blk##R(int k, const float *a, int ars, int acs,    \
                                                const float *B, int ldb, float *c, int ldc, \
                                                __mmask16 m0, __mmask16 m1, int zero) {     \
        __m512 x0[R], x1[R];                                                                \
        _Pragma("GCC unroll 6") for (int r = 0; r < R; r++) {                               \
            x0[r] = _mm512_maskz_loadu_ps(zero ? 0 : m0, c + (size_t)r * ldc);              \
            x1[r] = _mm512_maskz_loadu_ps(zero ? 0 : m1, c + (size_t)r * ldc + 16);         \
        }                                                                                   \
        for (int p = 0; p < k; p++, a += acs, B += ldb) {                                   \
            const __m512 b0 = _mm512_maskz_loadu_ps(m0, B);                                 \
            const __m512 b1 = _mm512_maskz_loadu_ps(m1, B + 16);                            \
            _Pragma("GCC unroll 6") for (int r = 0; r < R; r++) {                           \
                const __m512 v = _mm512_set1_ps(a[(size_t)r * ars]);                        \
                x0[r] = _mm512_fmadd_ps(v, b0, x0[r]);                                      \
                x1[r] = _mm512_fmadd_ps(v, b1, x1[r]);                                      \
            }                                                                               \
        }                                                                                   \
        _Pragma("GCC unroll 6") for (int r = 0; r < R; r++) {                               \
            _mm512_mask_storeu_ps(c + (size_t)r * ldc, m0, x0[r]);                          \
            _mm512_mask_storeu_ps(c + (size_t)r * ldc + 16, m1, x1[r]);                     \
        }                                                                                   \
    }
MM512_BLOCK(6)
MM512_BLOCK(4)
MM512_BLOCK(1)

/* R rows x 16Q columns, R Q = 24 accumulators (the same sums in the same order as the
 * blocks above): 6 x 64 (10 loads per 24 FMAs instead of 8 per 12), and 4 x 96 for a key
 * block's 96 columns (scores, dP) in one pass instead of 64 + 32. */
#define MM512_WIDE(R, Q, NAME)                                                              \
    CT_AVX512_FMA static inline void NAME(int k, const float *a, int ars, int acs,          \
                                          const float *B, int ldb, float *c, int ldc,       \
                                          int zero) {                                       \
        __m512 x[R][Q];                                                                     \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                 \
            _Pragma("GCC unroll 8") for (int q = 0; q < Q; q++)                             \
                x[r][q] = zero ? _mm512_setzero_ps()                                        \
                               : _mm512_loadu_ps(c + (size_t)r * ldc + 16 * q);             \
        for (int p = 0; p < k; p++, a += acs, B += ldb) {                                   \
            __m512 b[Q];                                                                    \
            _Pragma("GCC unroll 8") for (int q = 0; q < Q; q++) b[q] =                      \
                _mm512_loadu_ps(B + 16 * q);                                                \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                           \
                const __m512 v = _mm512_set1_ps(a[(size_t)r * ars]);                        \
                _Pragma("GCC unroll 8") for (int q = 0; q < Q; q++)                         \
                    x[r][q] = _mm512_fmadd_ps(v, b[q], x[r][q]);                            \
            }                                                                               \
        }                                                                                   \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                 \
            _Pragma("GCC unroll 8") for (int q = 0; q < Q; q++)                             \
                _mm512_storeu_ps(c + (size_t)r * ldc + 16 * q, x[r][q]);                    \
    }
MM512_WIDE(6, 4, mm5_blk6x64)
MM512_WIDE(4, 6, mm5_blk4x96)

CT_AVX512_FMA static void mm_acc_avx512(int m, int n, int k, const float *A, int ars, int acs,
                                        const float *B, int ldb, float *C, int ldc, int zero) {
    int j0 = 0;
    if (n == 96 && m >= 4) { /* rows in fours; the rest (m % 4) below as blocks of 64 + 32 */
        const int m4 = m & ~3;
        for (int i = 0; i < m4; i += 4)
            mm5_blk4x96(k, A + (size_t)i * ars, ars, acs, B, ldb, C + (size_t)i * ldc, ldc, zero);
        if (m4 == m) return;
        A += (size_t)m4 * ars, C += (size_t)m4 * ldc, m -= m4;
    }
    for (; j0 + 64 <= n; j0 += 64) {
        int i = 0;
        for (; i + 6 <= m; i += 6)
            mm5_blk6x64(k, A + (size_t)i * ars, ars, acs, B + j0, ldb, C + (size_t)i * ldc + j0,
                        ldc, zero);
        for (; i < m; i++)
            for (int h = 0; h < 64; h += 32)
                mm5_blk1(k, A + (size_t)i * ars, ars, acs, B + j0 + h, ldb,
                         C + (size_t)i * ldc + j0 + h, ldc, 0xffff, 0xffff, zero);
    }
    for (int j = j0; j < n; j += 32) {
        const int nr = n - j < 32 ? n - j : 32;
        const __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
        const __mmask16 m1 = nr >= 32 ? 0xffff : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
        int i = 0;
        for (; i + 6 <= m; i += 6)
            mm5_blk6(k, A + (size_t)i * ars, ars, acs, B + j, ldb, C + (size_t)i * ldc + j, ldc,
                     m0, m1, zero);
        for (; i + 4 <= m; i += 4)
            mm5_blk4(k, A + (size_t)i * ars, ars, acs, B + j, ldb, C + (size_t)i * ldc + j, ldc,
                     m0, m1, zero);
        for (; i < m; i++)
            mm5_blk1(k, A + (size_t)i * ars, ars, acs, B + j, ldb, C + (size_t)i * ldc + j, ldc,
                     m0, m1, zero);
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
/* w = t's [B1, B2, rows, cols] view (NULL t: an empty view); -1 with an error when t is
 * not 4-D, its last dim is strided or a row stride does not fit the tile GEMM's int. */
static int sdpa_view_of(sdpa_view *w, const ct_tensor *t, const char *op) {
    memset(w, 0, sizeof *w);
    if (!t) return 0;
    if (t->ndim != 4 || (t->stride[3] != 1 && t->shape[3] > 1) || t->stride[2] > INT32_MAX ||
        t->stride[2] < 0)
        return ct_error("%s: an operand is not a [B1, B2, rows, cols] view with contiguous "
                        "rows", op);
    w->p = (char *)ct_ptr(t), w->s0 = t->stride[0], w->s1 = t->stride[1], w->s2 = t->stride[2];
    return 0;
}

static int fill_ctx(sdpa_ctx *c, const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,
                    const ct_tensor *mask, const ct_sdpa_params *p, const char *op) {
    if (q->dtype != CT_FLOAT32 && q->dtype != CT_FLOAT64 && q->dtype != CT_BFLOAT16)
        return ct_error("%s: dtype %s not supported (float32 or float64)", op,
                        ct_dtype_name(q->dtype));
    /* bfloat16 operands are computed in float32: a float32 mask */
    const ct_dtype mdt = q->dtype == CT_BFLOAT16 ? CT_FLOAT32 : q->dtype;
    memset(c, 0, sizeof *c);
    if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4 || k->shape[0] != q->shape[0] ||
        v->shape[0] != q->shape[0] || k->shape[1] != q->shape[1] || v->shape[1] != q->shape[1])
        return ct_error("%s: q, k and v must be [B1, B2, rows, cols] views with the same B1, B2",
                        op);
    if (sdpa_view_of(&c->q, q, op) || sdpa_view_of(&c->k, k, op) || sdpa_view_of(&c->v, v, op))
        return -1;
    c->B2 = q->shape[1], c->B = q->shape[0] * q->shape[1];
    c->L = q->shape[2], c->E = q->shape[3];
    c->S = k->shape[2], c->Ev = v->shape[3];
    c->nqb = (c->L + QB - 1) / QB;
    if (mask) {
        if (mask->dtype != mdt || mask->ndim != 4 || (mask->stride[3] != 1 && c->S > 1) ||
            mask->shape[0] * mask->shape[1] != c->B)
            return ct_error("%s: the mask must have q's dtype (float32 beside bfloat16 q), "
                            "shape [B1, B2, L, S] and a contiguous last dim", op);
        c->mask = ct_ptr(mask), c->mB2 = mask->shape[1];
        c->ms0 = mask->stride[0], c->ms1 = mask->stride[1], c->ms2 = mask->stride[2];
    }
    c->p = *p;
#ifdef CT_VEXP_X86
    c->avx2 = ct_cpu_isa_level() >= CT_ISA_AVX2;
    c->avx512 = ct_cpu_isa_level() >= CT_ISA_AVX512;
#endif
    return 0;
}

/* The forward over (batch, query block) items with the given per-range function. */
static int forward_run(ct_tensor *out, ct_tensor *lse, const ct_tensor *q, const ct_tensor *k,
                       const ct_tensor *v, const ct_tensor *mask, const ct_sdpa_params *p,
                       void (*range)(void *, int64_t, int64_t)) {
    sdpa_ctx c;
    if (fill_ctx(&c, q, k, v, mask, p, "scaled_dot_product_attention") != 0) return -1;
    if (sdpa_view_of(&c.out, out, "scaled_dot_product_attention") != 0) return -1;
    c.lse = ct_ptr(lse);
    const int64_t n = c.B * c.nqb;
    if (n == 0) return 0;
    ct_parallel_for_dynamic(n, 1, range, &c);
    return c.err ? ct_error("scaled_dot_product_attention: out of memory for the tiles") : 0;
}

int cpu_sdpa_forward_full(ct_tensor *out, ct_tensor *lse, const ct_tensor *q, const ct_tensor *k,
                          const ct_tensor *v, const ct_tensor *mask, const ct_sdpa_params *p) {
    return forward_run(out, lse, q, k, v, mask, p,
                       q->dtype == CT_FLOAT32 ? fwd_range_f32 : fwd_range_f64);
}

/* The backward's three passes (D = rowsum(dO * O); the items; dQ's parts summed) with the
 * given functions; es: the size of the float type the passes compute in. */
typedef struct {
    void (*rowdot)(void *, int64_t, int64_t), (*items)(void *, int64_t, int64_t);
    void (*sum_parts)(void *, int64_t, int64_t);
    size_t es;
} bwd_fns;

static int backward_run(ct_tensor *gq, ct_tensor *gk, ct_tensor *gv, const ct_tensor *gout,
                        const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,
                        const ct_tensor *out, const ct_tensor *lse, const ct_tensor *mask,
                        const ct_sdpa_params *p, const bwd_fns *f) {
    sdpa_ctx c;
    const char *op = "scaled_dot_product_attention backward";
    if (fill_ctx(&c, q, k, v, mask, p, op) != 0) return -1;
    if (sdpa_view_of(&c.o, out, op) || sdpa_view_of(&c.gout, gout, op) ||
        sdpa_view_of(&c.gq, gq, op) || sdpa_view_of(&c.gk, gk, op) || sdpa_view_of(&c.gv, gv, op))
        return -1;
    c.lse = ct_ptr(lse);
    if (c.B == 0) return 0;
    /* enough items for the threads: the keys of a batch split into ranges when B is small
     * (a fixed count under deterministic mode: ct_plan_threads) */
    const int64_t nkb = (c.S + KB - 1) / KB, want = 2 * (int64_t)ct_plan_threads();
    c.nsplit = c.B >= want || !gq ? 1 : (want + c.B - 1) / c.B;
    if (c.nsplit > nkb) c.nsplit = nkb > 0 ? nkb : 1;
    c.D = ct_cpu_alloc(f->es * (size_t)(c.B * c.L) + 1);
    c.dqp = c.nsplit > 1 ? ct_cpu_alloc(f->es * (size_t)(c.B * c.nsplit * c.L * c.E)) : NULL;
    if (!c.D || (c.nsplit > 1 && !c.dqp)) {
        ct_cpu_free(c.D), ct_cpu_free(c.dqp);
        return ct_error("%s: out of memory", op);
    }
    const int64_t grain = 4096 / (c.Ev + c.E + 1) + 1;
    ct_parallel_for(c.B * c.L, grain, f->rowdot, &c);
    ct_parallel_for_dynamic(c.B * c.nsplit, 1, f->items, &c);
    if (!c.err && c.nsplit > 1) ct_parallel_for(c.B * c.L, grain, f->sum_parts, &c);
    ct_cpu_free(c.D), ct_cpu_free(c.dqp);
    return c.err ? ct_error("%s: out of memory for the tiles", op) : 0;
}

int cpu_sdpa_backward_full(ct_tensor *gq, ct_tensor *gk, ct_tensor *gv, const ct_tensor *gout,
                           const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,
                           const ct_tensor *out, const ct_tensor *lse, const ct_tensor *mask,
                           const ct_sdpa_params *p) {
    static const bwd_fns f32 = {rowdot_f32, bwd_range_f32, sum_parts_f32, sizeof(float)};
    static const bwd_fns f64 = {rowdot_f64, bwd_range_f64, sum_parts_f64, sizeof(double)};
    return backward_run(gq, gk, gv, gout, q, k, v, out, lse, mask, p,
                        q->dtype == CT_FLOAT32 ? &f32 : &f64);
}

/* ------------------------------------------------------- bfloat16 operands
 * The float32 kernel on one batch at a time: each thread widens the batch's q, k, v (and
 * in the backward dO, O) into float32 staging buffers, runs the float32 blocks on them
 * through a copy of the context whose views point there, and rounds its results back.
 * The values are those of widening whole tensors and rounding the float32 results (the
 * same sums in the same order), without the whole-tensor copies. */
static const uint16_t *bf16_row(const sdpa_ctx *c, const sdpa_view *w, int64_t b, int64_t i) {
    return (const uint16_t *)w->p + (b / c->B2) * w->s0 + (b % c->B2) * w->s1 + i * w->s2;
}

/* Rows [0, rows) of batch b of view w into dst (rows x cols, packed). */
static void stage_rows(const sdpa_ctx *c, const sdpa_view *w, int64_t b, int64_t rows,
                       int64_t cols, float *dst) {
    for (int64_t i = 0; i < rows; i++) cpu_bf16_to_f32_row(dst + i * cols, bf16_row(c, w, b, i), cols);
}

/* Rows [r0, r1) of src (packed, cols wide) into batch b of view w. */
static void unstage_rows(const sdpa_ctx *c, const sdpa_view *w, int64_t b, int64_t r0,
                         int64_t r1, int64_t cols, const float *src) {
    for (int64_t i = r0; i < r1; i++)
        cpu_f32_to_bf16_row((uint16_t *)bf16_row(c, w, b, i), src + i * cols, cols);
}

static sdpa_view packed_view(float *p, int64_t cols) {
    return (sdpa_view){(char *)p, 0, 0, cols};
}

static void fwd_range_bf16(void *vc, int64_t begin, int64_t end) {
    sdpa_ctx *c = vc;
    const int64_t nkb = (c->S + KB - 1) / KB;
    const size_t n = (size_t)QB * KB + 2 * QB + (size_t)c->E * KB * (size_t)nkb;
    const size_t st = (size_t)(c->L * c->E + c->S * c->E + c->S * c->Ev + c->L * c->Ev);
    float *buf = ct_cpu_alloc((n + st) * sizeof(float) + (size_t)nkb);
    if (!buf) {
        c->err = 1;
        return;
    }
    fwd_buf_f32 w = {buf, buf + (size_t)QB * KB, buf + (size_t)QB * KB + QB, NULL, NULL, -1};
    w.kt = w.l + QB;
    float *qf = w.kt + (size_t)c->E * KB * (size_t)nkb, *kf = qf + c->L * c->E;
    float *vf = kf + c->S * c->E, *of = vf + c->S * c->Ev;
    w.have = (unsigned char *)(of + c->L * c->Ev);
    sdpa_ctx lc = *c; /* the views on the staging buffers (batch-independent) */
    lc.q = packed_view(qf, c->E), lc.k = packed_view(kf, c->E);
    lc.v = packed_view(vf, c->Ev), lc.out = packed_view(of, c->Ev);
    int64_t staged = -1;
    for (int64_t it = begin; it < end; it++) {
        const int64_t b = it / c->nqb, i0 = (it % c->nqb) * QB;
        if (b != staged) {
            stage_rows(c, &c->q, b, c->L, c->E, qf);
            stage_rows(c, &c->k, b, c->S, c->E, kf);
            stage_rows(c, &c->v, b, c->S, c->Ev, vf);
            staged = b;
        }
        fwd_block_f32(&lc, it, &w);
        unstage_rows(c, &c->out, b, i0, i0 + QB < c->L ? i0 + QB : c->L, c->Ev, of);
    }
    if (lc.err) c->err = 1;
    ct_cpu_free(buf);
}

/* D = rowsum(dO * O) of bf16 rows [b, e) of [B*L], in float32 as the float32 kernel. */
static void rowdot_bf16(void *vc, int64_t b, int64_t e) {
    const sdpa_ctx *c = vc;
    for (int64_t i = b; i < e; i++) {
        const uint16_t *dO = bf16_row(c, &c->gout, i / c->L, i % c->L);
        const uint16_t *O = bf16_row(c, &c->o, i / c->L, i % c->L);
        float acc = 0;
        for (int64_t k = 0; k < c->Ev; k++) acc += ct_bf16_to_f32(dO[k]) * ct_bf16_to_f32(O[k]);
        ((float *)c->D)[i] = acc;
    }
}

static void bwd_range_bf16(void *vc, int64_t begin, int64_t end) {
    sdpa_ctx *c = vc;
    const size_t tile = (size_t)QB * KB;
    const size_t n = 2 * tile + (size_t)(c->E + c->Ev) * KB;
    const int64_t LE = c->L * c->E, SE = c->S * c->E, SV = c->S * c->Ev, LV = c->L * c->Ev;
    const size_t nf = n + (size_t)(2 * LE + 2 * SE + 2 * SV + LV);
    float *buf = ct_cpu_alloc(nf * sizeof(float) + (size_t)c->nqb);
    if (!buf) {
        c->err = 1;
        return;
    }
    bwd_buf_f32 w = {buf, buf + tile, buf + 2 * tile, NULL, (unsigned char *)(buf + nf)};
    w.vt = w.kt + (size_t)c->E * KB;
    float *qf = buf + n, *kf = qf + LE, *vf = kf + SE, *gof = vf + SV, *gqf = gof + LV;
    float *gkf = gqf + LE, *gvf = gkf + SE;
    sdpa_ctx lc = *c;
    lc.q = packed_view(qf, c->E), lc.k = packed_view(kf, c->E), lc.v = packed_view(vf, c->Ev);
    lc.gout = packed_view(gof, c->Ev);
    if (c->gq.p && c->nsplit == 1) lc.gq = packed_view(gqf, c->E);
    if (c->gk.p) lc.gk = packed_view(gkf, c->E);
    if (c->gv.p) lc.gv = packed_view(gvf, c->Ev);
    int64_t staged = -1;
    for (int64_t it = begin; it < end; it++) {
        const int64_t b = it / c->nsplit, part = it % c->nsplit;
        if (b != staged) {
            stage_rows(c, &c->q, b, c->L, c->E, qf);
            stage_rows(c, &c->k, b, c->S, c->E, kf);
            stage_rows(c, &c->v, b, c->S, c->Ev, vf);
            stage_rows(c, &c->gout, b, c->L, c->Ev, gof);
            staged = b;
        }
        bwd_item_f32(&lc, &w, it);
        int64_t j_lo, j_end; /* the item's keys */
        key_range(c, part, &j_lo, &j_end);
        if (c->gk.p) unstage_rows(c, &c->gk, b, j_lo, j_end, c->E, gkf);
        if (c->gv.p) unstage_rows(c, &c->gv, b, j_lo, j_end, c->Ev, gvf);
        if (c->gq.p && c->nsplit == 1) unstage_rows(c, &c->gq, b, 0, c->L, c->E, gqf);
    }
    if (lc.err) c->err = 1;
    ct_cpu_free(buf);
}

/* gq rows [b, e) = the sum of the float32 parts in part order, rounded once. */
static void sum_parts_bf16(void *vc, int64_t b, int64_t e) {
    const sdpa_ctx *c = vc;
    float row[256];
    for (int64_t r = b; r < e; r++) {
        const int64_t bb = r / c->L, i = r % c->L;
        for (int64_t k0 = 0; k0 < c->E; k0 += 256) {
            const int64_t m = c->E - k0 < 256 ? c->E - k0 : 256;
            const float *src = (const float *)c->dqp + (bb * c->nsplit * c->L + i) * c->E + k0;
            for (int64_t k = 0; k < m; k++) row[k] = src[k];
            for (int64_t part = 1; part < c->nsplit; part++) {
                src += c->L * c->E;
                for (int64_t k = 0; k < m; k++) row[k] += src[k];
            }
            cpu_f32_to_bf16_row((uint16_t *)bf16_row(c, &c->gq, bb, i) + k0, row, m);
        }
    }
}

static int all_bf16(const ct_tensor *const *t, int n) {
    for (int i = 0; i < n; i++)
        if (t[i] && t[i]->dtype != CT_BFLOAT16) return 0;
    return 1;
}

int cpu_sdpa_bf16_forward(ct_tensor *out, ct_tensor *lse, const ct_tensor *q, const ct_tensor *k,
                          const ct_tensor *v, const ct_tensor *mask, const ct_sdpa_params *p) {
    const ct_tensor *ops[4] = {out, q, k, v};
    if (!all_bf16(ops, 4) || lse->dtype != CT_FLOAT32) return 1;
    return forward_run(out, lse, q, k, v, mask, p, fwd_range_bf16);
}

int cpu_sdpa_bf16_backward(ct_tensor *gq, ct_tensor *gk, ct_tensor *gv, const ct_tensor *gout,
                           const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,
                           const ct_tensor *out, const ct_tensor *lse, const ct_tensor *mask,
                           const ct_sdpa_params *p) {
    const ct_tensor *ops[8] = {gq, gk, gv, gout, q, k, v, out};
    if (!all_bf16(ops, 8) || lse->dtype != CT_FLOAT32) return 1;
    static const bwd_fns f = {rowdot_bf16, bwd_range_bf16, sum_parts_bf16, sizeof(float)};
    return backward_run(gq, gk, gv, gout, q, k, v, out, lse, mask, p, &f);
}

#else /* SDPA_TMPL: compiled for T = float and T = double */

/* Row i of batch b (in [0, B1*B2)) of an operand view. */
#define ROW(w, b, i)                                                                        \
    ((T *)(w).p + ((b) / c->B2) * (w).s0 + ((b) % c->B2) * (w).s1 + (int64_t)(i) * (w).s2)

/* C[m x n] += A[m x k] B[k x n], or with zero C = A B (C's old values not read); A's
 * element (i, p) at A[i * ars + p * acs] (row-major or transposed), B and C row-major. */
static void F(mm_acc)(const sdpa_ctx *c, int m, int n, int k, const T *A, int ars, int acs,
                      const T *B, int ldb, T *C, int ldc, int zero) {
#if AVX2_F32 && defined(CT_VEXP_X86)
    if (c->avx512) {
        mm_acc_avx512(m, n, k, A, ars, acs, B, ldb, C, ldc, zero);
        return;
    }
    if (c->avx2) {
        mm_acc_avx2(m, n, k, A, ars, acs, B, ldb, C, ldc, zero);
        return;
    }
#endif
    (void)c;
    if (zero)
        for (int i = 0; i < m; i++) memset(C + (size_t)i * ldc, 0, sizeof(T) * (size_t)n);
    for (int i = 0; i < m; i++)
        for (int p = 0; p < k; p++) {
            const T a = A[(size_t)i * ars + (size_t)p * acs];
            T *cr = C + (size_t)i * ldc;
            const T *br = B + (size_t)p * ldb;
            for (int j = 0; j < n; j++) cr[j] += a * br[j];
        }
}

/* dst[cc * ldd + r] = src[r * lds + cc] for r < rows, cc < cols. */
static void F(transpose)(const sdpa_ctx *c, const T *src, int rows, int cols, int64_t lds,
                         T *dst, int ldd) {
#if AVX2_F32 && defined(CT_VEXP_X86)
    if (c->avx512) {
        transpose_scale_avx512(src, rows, cols, lds, dst, ldd, 1.0f);
        return;
    }
    if (c->avx2) {
        transpose_scale_avx2(src, rows, cols, lds, dst, ldd, 1.0f);
        return;
    }
#endif
    (void)c;
    for (int r = 0; r < rows; r++)
        for (int cc = 0; cc < cols; cc++) dst[(size_t)cc * ldd + r] = src[(size_t)r * lds + cc];
}

/* x[i] = exp(x[i] - mx) for i < n (mx finite); returns the sum (the softmax's, or ignored
 * when the backward applies the saved log-sum-exp). */
static T F(exp_sub_sum)(const sdpa_ctx *c, T *x, int n, T mx) {
#if AVX2_F32 && defined(CT_VEXP_X86)
    if (c->avx512) return exp_sub_sum_avx512(x, n, mx);
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
    const T *K = ROW(c->k, b, j0);
    const int64_t ks = c->k.s2;
    const T sc = (T)c->p.scale;
#if AVX2_F32 && defined(CT_VEXP_X86)
    if (c->avx512) {
        transpose_scale_avx512(K, nk, E, ks, kt, KB, sc);
        return;
    }
    if (c->avx2) {
        transpose_scale_avx2(K, nk, E, ks, kt, KB, sc);
        return;
    }
#endif
    for (int r = 0; r < nk; r++) /* kt = scale * K^T */
        for (int e = 0; e < E; e++) kt[(size_t)e * KB + r] = sc * K[r * ks + e];
}

/* The same with kt (scale * K^T of the key block) made already (new_kt == 0). */
static void F(scores)(const sdpa_ctx *c, int64_t b, int64_t i0, int nq, int64_t j0, int nk,
                      T *kt, T *s, int new_kt) {
    const int E = (int)c->E;
    const T *Q = ROW(c->q, b, i0);
    if (new_kt) F(scale_kt)(c, b, j0, nk, kt);
    for (int r = 0; c->mask && r < nq; r++) /* the mask, or (zero below) nothing */
        memcpy(s + (size_t)r * KB, (const T *)c->mask + (b / c->mB2) * c->ms0 +
                                       (b % c->mB2) * c->ms1 + (i0 + r) * c->ms2 + j0,
               sizeof(T) * (size_t)nk);
    F(mm_acc)(c, nq, nk, E, Q, (int)c->q.s2, 1, kt, KB, s, KB, !c->mask);
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
    T *O = ROW(c->out, b, i0);
    const int os = (int)c->out.s2;
    T mxs[QB] = {0}, al[QB]; /* AVX2 / AVX-512: the rows' new maxima, their rescaling */
    int vec = 0;
#if AVX2_F32 && defined(CT_VEXP_X86)
    if (c->avx512) {
        for (int r = 0; r < nq; r++) mxs[r] = max_avx512(s + (size_t)r * KB, nk, m[r]);
        alphas_avx512(m, mxs, al, nq);
        vec = 1;
    } else if (c->avx2) {
        for (int r = 0; r < nq; r++) mxs[r] = max_avx2(s + (size_t)r * KB, nk, m[r]);
        alphas_avx2(m, mxs, al, nq);
        vec = 1;
    }
#endif
    for (int r = 0; r < nq; r++) {
        T *sr = s + (size_t)r * KB;
        T mx = m[r];
        if (vec) mx = mxs[r];
        else
            for (int j = 0; j < nk; j++) mx = sr[j] > mx ? sr[j] : mx;
        if (mx == -INFINITY) { /* nothing to attend in this block yet */
            for (int j = 0; j < nk; j++) /* but NaN scores make the row NaN, as in PyTorch */
                if (sr[j] != sr[j]) l[r] = (T)NAN;
            memset(sr, 0, sizeof(T) * (size_t)nk);
            continue;
        }
        const T alpha = vec ? al[r] : m[r] == -INFINITY ? 0 : EXP(m[r] - mx);
        const T sum = F(exp_sub_sum)(c, sr, nk, mx);
        l[r] = l[r] * alpha + sum;
        m[r] = mx;
        if (alpha != 1)
            for (int e = 0; e < Ev; e++) O[(size_t)r * os + e] *= alpha;
        if (c->p.dropout_p > 0) F(drop_row)(c, sr, b, i0 + r, j0, nk);
    }
    F(mm_acc)(c, nq, Ev, nk, s, KB, 1, ROW(c->v, b, j0), (int)c->v.s2, O, os, 0);
}

/* One thread's forward scratch: a score tile, the running max and sum of its rows, and
 * scale * K^T of every key block of batch kb (made when first needed, reused by the
 * thread's next query blocks of that batch: E x S in all, linear in the sequence). */
typedef struct {
    T *s, *m, *l, *kt;
    unsigned char *have; /* per key block: kt made for batch kb */
    int64_t kb;
} F(fwd_buf);

/* One block of query rows: (b, qb) = item / nqb, item % nqb. */
static void F(fwd_block)(const sdpa_ctx *c, int64_t item, F(fwd_buf) * w) {
    T *s = w->s, *m = w->m, *l = w->l;
    const int64_t b = item / c->nqb, i0 = (item % c->nqb) * QB;
    const int nq = (int)(c->L - i0 < QB ? c->L - i0 : QB);
    T *O = ROW(c->out, b, i0);
    for (int r = 0; r < nq; r++) memset(O + r * c->out.s2, 0, sizeof(T) * (size_t)c->Ev);
    for (int r = 0; r < nq; r++) m[r] = -INFINITY, l[r] = 0;
    const int64_t jend = F(key_end)(c, i0, nq);
    for (int64_t j0 = 0; j0 < jend; j0 += KB) {
        const int nk = (int)(jend - j0 < KB ? jend - j0 : KB);
        T *kt = w->kt + (size_t)(j0 / KB) * c->E * KB;
        if (w->kb != b) {
            memset(w->have, 0, (size_t)((c->S + KB - 1) / KB));
            w->kb = b;
        }
        F(scores)(c, b, i0, nq, j0, nk, kt, s, !w->have[j0 / KB]);
        w->have[j0 / KB] = 1;
        F(online_step)(c, b, i0, nq, j0, nk, s, m, l);
    }
    T *lse = (T *)c->lse + b * c->L + i0;
    for (int r = 0; r < nq; r++) {
        T *orow = O + r * c->out.s2;
        /* l is NaN when a score of the row was (the row's output and lse are NaN) */
        const T inv = l[r] > 0 ? 1 / l[r] : l[r] != l[r] ? l[r] : 0;
        for (int64_t e = 0; e < c->Ev; e++) orow[e] *= inv;
        lse[r] = l[r] > 0 ? m[r] + LOG(l[r]) : l[r] != l[r] ? l[r] : -INFINITY;
    }
}

static void F(fwd_range)(void *vc, int64_t begin, int64_t end) {
    sdpa_ctx *c = vc;
    const int64_t nkb = (c->S + KB - 1) / KB;
    const size_t n = (size_t)QB * KB + 2 * QB + (size_t)c->E * KB * (size_t)nkb;
    T *buf = ct_cpu_alloc(n * sizeof(T) + (size_t)nkb);
    if (!buf) {
        c->err = 1;
        return;
    }
    F(fwd_buf) w = {buf, buf + (size_t)QB * KB, buf + (size_t)QB * KB + QB, NULL, NULL, -1};
    w.kt = w.l + QB;
    w.have = (unsigned char *)(w.kt + (size_t)c->E * KB * (size_t)nkb);
    for (int64_t it = begin; it < end; it++) F(fwd_block)(c, it, &w);
    ct_cpu_free(buf);
}

/* Backward scratch of one thread. */
typedef struct {
    T *s, *dp, *kt, *vt;
    unsigned char *dq_set; /* per query block of the item: its dQ rows hold sums already */
} F(bwd_buf);

/* The gradients of one tile (rows [i0, i0+nq), keys [j0, j0+nk)): P from the saved
 * log-sum-exp, dV += P~^T dO, dP = (dO V^T) * dropout, dS = P (dP - D) scale,
 * dQ += dS K, dK += dS^T Q. zero_dq, zero_kv: the tile is the first to reach those rows of
 * dQ, of dK and dV, which it then writes instead of adding to (the same values as adding to
 * zeros). */
static void F(bwd_tile)(const sdpa_ctx *c, const F(bwd_buf) * w, T *dq, int dqs, int64_t b,
                        int64_t i0, int nq, int64_t j0, int nk, int zero_dq, int zero_kv) {
    const int E = (int)c->E, Ev = (int)c->Ev;
    const T *D = (const T *)c->D + b * c->L + i0;
    const T *lse = (const T *)c->lse + b * c->L + i0;
    const T *dO = ROW(c->gout, b, i0);
    const int dos = (int)c->gout.s2;
    F(scores)(c, b, i0, nq, j0, nk, w->kt, w->s, 0); /* kt, vt: made by bwd_item */
    for (int r = 0; r < nq; r++) {
        T *sr = w->s + (size_t)r * KB;
        if (lse[r] == -INFINITY) memset(sr, 0, sizeof(T) * (size_t)nk);
        else F(exp_sub_sum)(c, sr, nk, lse[r]);
    }
    F(mm_acc)(c, nq, nk, Ev, dO, dos, 1, w->vt, KB, w->dp, KB, 1); /* dP~ = dO V^T */
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
    if (c->gv.p)
        F(mm_acc)(c, nk, Ev, nq, w->s, 1, KB, dO, dos, ROW(c->gv, b, j0), (int)c->gv.s2,
                  zero_kv);
    if (dq)
        F(mm_acc)(c, nq, E, nk, w->dp, KB, 1, ROW(c->k, b, j0), (int)c->k.s2,
                  dq + i0 * dqs, dqs, zero_dq);
    if (c->gk.p)
        F(mm_acc)(c, nk, E, nq, w->dp, 1, KB, ROW(c->q, b, i0), (int)c->q.s2,
                  ROW(c->gk, b, j0), (int)c->gk.s2, zero_kv);
}

/* D = rowsum(dO * O) for rows [b, e) of [B*L]. */
static void F(rowdot)(void *vc, int64_t b, int64_t e) {
    const sdpa_ctx *c = vc;
    for (int64_t i = b; i < e; i++) {
        const T *dO = ROW(c->gout, i / c->L, i % c->L), *O = ROW(c->o, i / c->L, i % c->L);
        T acc = 0;
        for (int64_t k = 0; k < c->Ev; k++) acc += dO[k] * O[k];
        ((T *)c->D)[i] = acc;
    }
}

/* Zeros rows [j0, j0 + nk) of dK and dV of batch b. */
static void F(zero_kv_rows)(const sdpa_ctx *c, int64_t b, int64_t j0, int nk) {
    for (int64_t j = j0; j < j0 + nk; j++) {
        if (c->gk.p) memset(ROW(c->gk, b, j), 0, sizeof(T) * (size_t)c->E);
        if (c->gv.p) memset(ROW(c->gv, b, j), 0, sizeof(T) * (size_t)c->Ev);
    }
}

/* Item (b, part): the key blocks of part against every query block; dK and dV of those
 * keys are this item's alone, dQ goes to gq (one part) or to the part's partial sums. */
static void F(bwd_item)(const sdpa_ctx *c, const F(bwd_buf) * w, int64_t item) {
    const int64_t b = item / c->nsplit, part = item % c->nsplit;
    int64_t j_lo, j_end; /* this part's keys, in blocks of KB below */
    key_range(c, part, &j_lo, &j_end);
    T *dq = c->nsplit > 1 ? (T *)c->dqp + item * c->L * c->E
                          : c->gq.p ? ROW(c->gq, b, 0) : NULL;
    const int dqs = c->nsplit > 1 ? (int)c->E : (int)c->gq.s2;
    /* Rows of dQ, dK, dV are written by the first tile that reaches them (zero flags) and
     * zeroed here only where no tile covers them whole: no pass of zeros over the rows. */
    memset(w->dq_set, 0, (size_t)c->nqb);
    for (int64_t j0 = j_lo; j0 < j_end; j0 += KB) {
        const int nk = (int)(j_end - j0 < KB ? j_end - j0 : KB);
        F(scale_kt)(c, b, j0, nk, w->kt);
        F(transpose)(c, ROW(c->v, b, j0), nk, (int)c->Ev, c->v.s2, w->vt, KB);
        int kv_set = 0; /* dK, dV of this key block hold sums (or zeros) */
        for (int64_t i0 = 0; i0 < c->L; i0 += QB) {
            const int nq = (int)(c->L - i0 < QB ? c->L - i0 : QB);
            const int64_t jend = F(key_end)(c, i0, nq);
            if (j0 >= jend) continue; /* causal: these queries see none of these keys */
            const int nt = (int)(jend - j0 < nk ? jend - j0 : nk);
            if (!kv_set && nt < nk) { /* the first tile covers some of the keys only */
                F(zero_kv_rows)(c, b, j0, nk);
                kv_set = 1;
            }
            F(bwd_tile)(c, w, dq, dqs, b, i0, nq, j0, nt, dq && !w->dq_set[i0 / QB], !kv_set);
            kv_set = 1;
            w->dq_set[i0 / QB] = 1;
        }
        if (!kv_set) F(zero_kv_rows)(c, b, j0, nk); /* keys no query sees */
    }
    if (dq) /* queries that see none of this part's keys */
        for (int64_t i0 = 0; i0 < c->L; i0 += QB)
            if (!w->dq_set[i0 / QB])
                for (int64_t i = i0; i < i0 + QB && i < c->L; i++)
                    memset(dq + i * dqs, 0, sizeof(T) * (size_t)c->E);
}

static void F(bwd_range)(void *vc, int64_t begin, int64_t end) {
    sdpa_ctx *c = vc;
    const size_t tile = (size_t)QB * KB;
    const size_t n = 2 * tile + (size_t)(c->E + c->Ev) * KB;
    T *buf = ct_cpu_alloc(n * sizeof(T) + (size_t)c->nqb);
    if (!buf) {
        c->err = 1;
        return;
    }
    F(bwd_buf) w = {buf, buf + tile, buf + 2 * tile, NULL, (unsigned char *)(buf + n)};
    w.vt = w.kt + (size_t)c->E * KB;
    for (int64_t it = begin; it < end; it++) F(bwd_item)(c, &w, it);
    ct_cpu_free(buf);
}

/* gq rows [b, e) of [B*L] = the sum of the parts' partial rows, in part order. */
static void F(sum_parts)(void *vc, int64_t b, int64_t e) {
    const sdpa_ctx *c = vc;
    for (int64_t r = b; r < e; r++) {
        const int64_t bb = r / c->L, i = r % c->L;
        T *dst = ROW(c->gq, bb, i);
        const T *src = (const T *)c->dqp + (bb * c->nsplit * c->L + i) * c->E;
        for (int64_t k = 0; k < c->E; k++) dst[k] = src[k];
        for (int64_t part = 1; part < c->nsplit; part++) {
            src += c->L * c->E;
            for (int64_t k = 0; k < c->E; k++) dst[k] += src[k];
        }
    }
}

#undef ROW
#endif /* SDPA_TMPL */
