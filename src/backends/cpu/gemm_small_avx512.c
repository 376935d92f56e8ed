/* SGEMM kernels for AVX-512, chosen at run time (see cpu_gemm_small.h): small products,
 * and (section "large products") the same idea inside cache blocks for tall ones.
 *
 * No packing: both layouts met by linear layers are read in place (the large products'
 * weight gradient alone copies A's slabs into contiguous rows, below).
 *  - B rows contiguous in n (NN, TN: x @ W and the weight gradient gy^T @ x): an
 *    outer-product kernel. A tile of up to 12 rows x 32 columns of C lives in 24 zmm
 *    registers; per k it loads two vectors of B's row k and broadcasts 12 scalars of A
 *    (any strides, so A may be transposed).
 *  - B stored as [N, K] (NT: x @ W^T, the linear forward): a dot-product kernel that
 *    vectorizes over K. A tile of 4 rows of A x 6 rows of B keeps 24 accumulators;
 *    per 16 k it loads 4 + 6 vectors, and sums each accumulator's lanes at the end.
 * Tiles are balanced (64 rows become 6 tiles of 10-11, not 5 of 12 and one of 4).
 * Every tile size is its own instantiation so that the accumulators stay in registers.
 * The summation order differs from BLAS's; results agree to rounding. */
#include "cpu_alloc.h"
#include "cpu_gemm_small.h"
#include "cpu_isa.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include "simd512.h"
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

static int g_avail = -1;

int ct_sgemm_small_available(void) {
    int a = __atomic_load_n(&g_avail, __ATOMIC_RELAXED);
    if (a >= 0) return a;
#if HAVE_X86
    __builtin_cpu_init();
    a = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#else
    a = 0;
#endif
    const char *e = getenv("CTORCH_GEMM");
    if (e && !strcmp(e, "blas")) a = 0;
    __atomic_store_n(&g_avail, a, __ATOMIC_RELAXED);
    return a;
}

int ct_sgemm_small_set_enabled(int on) {
    int prev = ct_sgemm_small_available();
    int a = 0;
#if HAVE_X86
    if (on) {
        __builtin_cpu_init();
        a = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    }
#endif
    __atomic_store_n(&g_avail, a, __ATOMIC_RELAXED);
    return prev;
}

int ct_sgemm_small_wanted(int ta, int tb, int64_t M, int64_t N, int64_t K) {
    if (!ct_sgemm_small_available() || ct_cpu_isa_level() < CT_ISA_AVX512 || (ta && tb) ||
        M <= 0 || N <= 0 || K <= 0)
        return CT_SGEMM_BLAS;
    /* Measured against OpenBLAS 0.3.21 (its AVX-512 kernels) on this AMD EPYC, one thread.
     * Without packing, one operand is read again for every tile column: A once per 6
     * columns of C in the dot kernel, once per 32 in the outer-product kernel. Ours wins while that
     * re-reading stays cheap (few columns, or operands in L2); beyond, BLAS's packing pays. */
    double a_bytes = 4.0 * (double)M * (double)K, b_bytes = 4.0 * (double)K * (double)N;
    double l2ish = 1.5 * 1024 * 1024;
    if (tb) {
        if (!(K < 16 && M * N > 4096) &&
            (N <= 32 || (M <= 256 && a_bytes + b_bytes <= l2ish)))
            return CT_SGEMM_SMALL;
    } else if (4.0 * (double)M * (double)N <= 4.0 * 1024 * 1024 &&
               (a_bytes <= 256.0 * 1024 || a_bytes + b_bytes <= l2ish)) {
        return CT_SGEMM_SMALL;
    }
    /* The cache-blocked tiles, where they beat OpenBLAS on one thread of a Sapphire Rapids
     * (bench/RESULTS.md, session 15): a tall A against at most 768 columns (a linear layer
     * over a batch of tokens, forward and input gradient: 1.02-1.22x on vit_tiny's shapes,
     * 1.3x on [8192, 576] x [576, 64]), and a weight gradient (A^T B) whose C is small and
     * whose K is long (1.12-1.26x). Wider C (squares: 0.6-0.85x) stays with BLAS, whose
     * packed panels serve more columns. */
    if (!ta && M >= 1024 && N >= 64 && N <= 768 && K >= 32 && K <= 4096) return CT_SGEMM_BLOCKED;
    if (ta && !tb && K >= 1024 && M <= 768 && N <= 768 && M * N <= 150000) return CT_SGEMM_BLOCKED;
    return CT_SGEMM_BLAS;
}

#if HAVE_X86
#define TGT __attribute__((target("avx512f,fma")))
#define AI static inline __attribute__((always_inline)) TGT

/* ------------------------------------------------------------ outer product */
enum { OMR = 12 };

/* MR rows x NV vectors of 16 columns of C (MR * NV <= 24 accumulators in registers): per k,
 * NV vectors of B's row k and MR broadcasts of A (any strides, so A may be transposed).
 * Every vector but the last is whole; the last one's lanes are klast. Then C = alpha acc
 * (+ bias) (+ beta C). The outer-product tiles (up to 12 x 32) and the blocked kernels'
 * panels (6 x 64) are this function. */
AI void outer_tile(const int MR, const int NV, int64_t K, const float *A, int64_t ars,
                   int64_t acs, const float *B, int64_t ldb, float *C, int64_t ldc,
                   __mmask16 klast, float alpha, float beta, const float *bias) {
    __m512 acc[OMR][4];
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++) acc[i][j] = _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int64_t k = 0; k < K; k++) {
        const float *b = B + k * ldb;
        const float *a = A + k * acs;
        __m512 bv[4];
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++)
            bv[j] = j == NV - 1 ? _mm512_maskz_loadu_ps(klast, b + 16 * j) : _mm512_loadu_ps(b + 16 * j);
#pragma GCC unroll 12
        for (int i = 0; i < MR; i++) {
            __m512 av = _mm512_set1_ps(a[i * ars]);
#pragma GCC unroll 4
            for (int j = 0; j < NV; j++) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta), bs[4];
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++)
        bs[j] = bias ? _mm512_maskz_loadu_ps(j == NV - 1 ? klast : 0xffff, bias + 16 * j)
                     : _mm512_setzero_ps();
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++) {
            const __mmask16 m = j == NV - 1 ? klast : 0xffff;
            float *c = C + i * ldc + 16 * j;
            __m512 r = _mm512_mul_ps(acc[i][j], va);
            if (bias) r = _mm512_add_ps(r, bs[j]);
            if (beta != 0) r = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, c), r);
            _mm512_mask_storeu_ps(c, m, r);
        }
}

typedef void (*outer_fn)(int64_t K, const float *A, int64_t ars, int64_t acs, const float *B,
                         int64_t ldb, float *C, int64_t ldc, __mmask16 klast, float alpha,
                         float beta, const float *bias);

#define DEF_OUTER(MR, NV)                                                                      \
    static TGT void outer_##MR##_##NV(int64_t K, const float *A, int64_t ars, int64_t acs,     \
                                      const float *B, int64_t ldb, float *C, int64_t ldc,      \
                                      __mmask16 klast, float alpha, float beta,                \
                                      const float *bias) {                                     \
        outer_tile(MR, NV, K, A, ars, acs, B, ldb, C, ldc, klast, alpha, beta, bias);          \
    }
#define DEF_OUTER2(MR) DEF_OUTER(MR, 1) DEF_OUTER(MR, 2)
DEF_OUTER2(1) DEF_OUTER2(2) DEF_OUTER2(3) DEF_OUTER2(4) DEF_OUTER2(5) DEF_OUTER2(6)
DEF_OUTER2(7) DEF_OUTER2(8) DEF_OUTER2(9) DEF_OUTER2(10) DEF_OUTER2(11) DEF_OUTER2(12)

static const outer_fn g_outer[OMR][2] = {
    {outer_1_1, outer_1_2},   {outer_2_1, outer_2_2},   {outer_3_1, outer_3_2},
    {outer_4_1, outer_4_2},   {outer_5_1, outer_5_2},   {outer_6_1, outer_6_2},
    {outer_7_1, outer_7_2},   {outer_8_1, outer_8_2},   {outer_9_1, outer_9_2},
    {outer_10_1, outer_10_2}, {outer_11_1, outer_11_2}, {outer_12_1, outer_12_2},
};

static __mmask16 lane_mask(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

/* Splits n into ceil(n / max) near-equal parts: part i covers [start(i), start(i+1)). */
static int64_t part_start(int64_t n, int64_t parts, int64_t i) { return n * i / parts; }

/* bias: NULL, or added to every row of C (bias[0..N), after alpha; beta is 0 then). */
static void outer_driver(int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                         int64_t ars, int64_t acs, const float *B, int64_t ldb, float beta,
                         float *C, int64_t ldc, const float *bias) {
    int64_t mt = (M + OMR - 1) / OMR;
    for (int64_t n0 = 0; n0 < N; n0 += 32) {
        int64_t nr = N - n0 < 32 ? N - n0 : 32;
        int nv = nr > 16 ? 2 : 1;
        __mmask16 klast = lane_mask(nr > 16 ? nr - 16 : nr);
        for (int64_t t = 0; t < mt; t++) {
            int64_t m0 = part_start(M, mt, t), mr = part_start(M, mt, t + 1) - m0;
            g_outer[mr - 1][nv - 1](K, A + m0 * ars, ars, acs, B + n0, ldb, C + m0 * ldc + n0,
                                    ldc, klast, alpha, beta, bias ? bias + n0 : NULL);
        }
    }
}

/* ------------------------------------------------------------ large products
 * A linear layer over a whole batch of tokens (M in the thousands, N and K in the
 * hundreds; or the weight gradient, K the thousands): tiles of up to 6 rows x 64 columns
 * (24 zmm accumulators; per k four vectors of B, six broadcasts of A) inside cache blocks,
 * BLAS's loops without its packing of B (outer_tile with four vectors). K in chunks of at
 * most KC_MAX (C accumulates across chunks: beta for the first, 1 after); rows of A in
 * slabs of about A_SLAB bytes per chunk (a transposed A copied into rows first),
 * so that a slab meets every 64-column panel of B while it sits in L2 and each panel's
 * chunk serves the slab's tiles from L1. Columns past the last whole panel go through the
 * 32-column tiles above. The chunks depend on K alone, so the order of each element's sums
 * does not depend on how the caller tiles C. B stored as [N, K] (x @ W^T) is first
 * transposed into a K x N buffer (16 x 16 blocks in registers). */
enum { PMR = 6, PNV = 4, KC_MAX = 384, A_SLAB = 160 * 1024 };

typedef void (*panel_fn)(int64_t K, const float *A, int64_t ars, int64_t acs, const float *B,
                         int64_t ldb, float *C, int64_t ldc, float alpha, float beta,
                         const float *bias);
#define DEF_PANEL(MR)                                                                          \
    static TGT void panel_##MR(int64_t K, const float *A, int64_t ars, int64_t acs,            \
                               const float *B, int64_t ldb, float *C, int64_t ldc, float alpha, \
                               float beta, const float *bias) {                                \
        outer_tile(MR, PNV, K, A, ars, acs, B, ldb, C, ldc, 0xffff, alpha, beta, bias);        \
    }
DEF_PANEL(1) DEF_PANEL(2) DEF_PANEL(3) DEF_PANEL(4) DEF_PANEL(5) DEF_PANEL(6)
static const panel_fn g_panel[PMR] = {panel_1, panel_2, panel_3, panel_4, panel_5, panel_6};

static void blocked_driver(int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                           int64_t ars, int64_t acs, const float *B, int64_t ldb, float beta,
                           float *C, int64_t ldc, const float *bias) {
    const int64_t nk = (K + KC_MAX - 1) / KC_MAX, kc = (K + nk - 1) / nk;
    int64_t mc = A_SLAB / (4 * kc) / PMR * PMR;
    if (mc < PMR) mc = PMR;
    const int64_t nfull = N / (16 * PNV) * (16 * PNV);
    /* A transposed (a weight gradient: op(A)[m][k] = A[k * acs + m], acs the whole row of
     * the activations): each k of a tile is on its own line and, with rows of kilobytes, on
     * its own page. The slab's chunk is copied first as [kl][ml] rows, so the tiles' k
     * follow one another a few hundred bytes apart (the same values, the same sums). Without
     * the buffer, the kernels read A in place. */
    float *pa = ars == 1 && acs > 1 ? ct_cpu_alloc(sizeof(float) * (size_t)(mc * kc)) : NULL;
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
        const int64_t kl = K - k0 < kc ? K - k0 : kc;
        const float bt = k0 ? 1.0f : beta, *bs = k0 ? NULL : bias; /* bias: first chunk */
        const float *Ak = A + k0 * acs, *Bk = B + k0 * ldb;
        for (int64_t m0 = 0; m0 < M; m0 += mc) {
            const int64_t ml = M - m0 < mc ? M - m0 : mc, mt = (ml + PMR - 1) / PMR;
            const float *As = Ak + m0 * ars; /* the slab's first row */
            int64_t sars = ars, sacs = acs;
            if (pa) {
                for (int64_t k = 0; k < kl; k++)
                    memcpy(pa + k * ml, As + k * acs, sizeof(float) * (size_t)ml);
                As = pa, sacs = ml;
            }
            for (int64_t n0 = 0; n0 < nfull; n0 += 16 * PNV)
                for (int64_t t = 0; t < mt; t++) {
                    int64_t r0 = part_start(ml, mt, t), mr = part_start(ml, mt, t + 1) - r0;
                    g_panel[mr - 1](kl, As + r0 * sars, sars, sacs, Bk + n0, ldb,
                                    C + (m0 + r0) * ldc + n0, ldc, alpha, bt, bs ? bs + n0 : NULL);
                }
            if (nfull < N)
                outer_driver(ml, N - nfull, kl, alpha, As, sars, sacs, Bk + nfull, ldb, bt,
                             C + m0 * ldc + nfull, ldc, bs ? bs + nfull : NULL);
        }
    }
    ct_cpu_free(pa);
}

/* dst[k][n] = src[n][k] for n < N, k < K (src rows lds apart, dst rows N long). */
static TGT __attribute__((target("avx512bw,avx512vl"))) void transpose_into(
    float *dst, const float *src, int64_t N, int64_t K, int64_t lds) {
    int64_t n0 = 0;
    for (; n0 + 16 <= N; n0 += 16) {
        int64_t k0 = 0;
        for (; k0 + 16 <= K; k0 += 16) {
            __m512i r[16];
            for (int i = 0; i < 16; i++)
                r[i] = _mm512_castps_si512(_mm512_loadu_ps(src + (n0 + i) * lds + k0));
            ct_transpose16(r);
            for (int i = 0; i < 16; i++)
                _mm512_storeu_ps(dst + (k0 + i) * N + n0, _mm512_castsi512_ps(r[i]));
        }
        for (; k0 < K; k0++)
            for (int i = 0; i < 16; i++) dst[k0 * N + n0 + i] = src[(n0 + i) * lds + k0];
    }
    for (; n0 < N; n0++)
        for (int64_t k = 0; k < K; k++) dst[k * N + n0] = src[n0 * lds + k];
}

/* -------------------------------------------------------------- dot product */
enum { DMR = 4, DNR = 6 };

AI void dot_tile(const int MR, const int NR, int64_t K, const float *A, int64_t lda,
                 const float *B, int64_t ldb, float *C, int64_t ldc, float alpha, float beta) {
    __m512 acc[DMR][DNR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 6
        for (int j = 0; j < NR; j++) acc[i][j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 a[DMR];
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) a[i] = _mm512_loadu_ps(A + i * lda + k);
#pragma GCC unroll 6
        for (int j = 0; j < NR; j++) {
            __m512 b = _mm512_loadu_ps(B + j * ldb + k);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) acc[i][j] = _mm512_fmadd_ps(a[i], b, acc[i][j]);
        }
    }
    if (k < K) {
        __mmask16 km = lane_mask(K - k);
        __m512 a[DMR];
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) a[i] = _mm512_maskz_loadu_ps(km, A + i * lda + k);
#pragma GCC unroll 6
        for (int j = 0; j < NR; j++) {
            __m512 b = _mm512_maskz_loadu_ps(km, B + j * ldb + k);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) acc[i][j] = _mm512_fmadd_ps(a[i], b, acc[i][j]);
        }
    }
    /* Four accumulators (one column j, rows 0..3) reduced together: 13 shuffles and adds
     * instead of four separate 16-lane reductions. */
    float out[DNR][4];
#pragma GCC unroll 6
    for (int j = 0; j < NR; j++) {
        __m512 z = _mm512_setzero_ps();
        __m512 a0 = acc[0][j], a1 = MR > 1 ? acc[1][j] : z, a2 = MR > 2 ? acc[2][j] : z,
               a3 = MR > 3 ? acc[3][j] : z;
        __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
        __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
        __m512 s = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE));
        /* per 128-bit lane: partial sums of rows 0..3; add the four lanes */
        s = _mm512_add_ps(s, _mm512_shuffle_f32x4(s, s, 0x4E));
        s = _mm512_add_ps(s, _mm512_shuffle_f32x4(s, s, 0xB1));
        _mm_storeu_ps(out[j], _mm512_castps512_ps128(s));
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
        float *c = C + i * ldc;
#pragma GCC unroll 6
        for (int j = 0; j < NR; j++) {
            float v = alpha * out[j][i];
            c[j] = beta != 0 ? v + beta * c[j] : v;
        }
    }
}

typedef void (*dot_fn)(int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                       float *C, int64_t ldc, float alpha, float beta);

#define DEF_DOT(MR, NR)                                                                        \
    static TGT void dot_##MR##_##NR(int64_t K, const float *A, int64_t lda, const float *B,    \
                                    int64_t ldb, float *C, int64_t ldc, float alpha,           \
                                    float beta) {                                              \
        dot_tile(MR, NR, K, A, lda, B, ldb, C, ldc, alpha, beta);                              \
    }
#define DEF_DOT6(MR) DEF_DOT(MR, 1) DEF_DOT(MR, 2) DEF_DOT(MR, 3) DEF_DOT(MR, 4) DEF_DOT(MR, 5) DEF_DOT(MR, 6)
DEF_DOT6(1) DEF_DOT6(2) DEF_DOT6(3) DEF_DOT6(4)
#define DOT_ROW(MR) {dot_##MR##_1, dot_##MR##_2, dot_##MR##_3, dot_##MR##_4, dot_##MR##_5, dot_##MR##_6}
static const dot_fn g_dot[DMR][DNR] = {DOT_ROW(1), DOT_ROW(2), DOT_ROW(3), DOT_ROW(4)};

static void dot_driver(int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                       const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    int64_t mt = (M + DMR - 1) / DMR, nt = (N + DNR - 1) / DNR;
    /* A block of 6 rows of B stays in L1 while the rows of A stream past it. */
    for (int64_t u = 0; u < nt; u++) {
        int64_t n0 = part_start(N, nt, u), nr = part_start(N, nt, u + 1) - n0;
        for (int64_t t = 0; t < mt; t++) {
            int64_t m0 = part_start(M, mt, t), mr = part_start(M, mt, t + 1) - m0;
            g_dot[mr - 1][nr - 1](K, A + m0 * lda, lda, B + n0 * ldb, ldb, C + m0 * ldc + n0, ldc,
                                  alpha, beta);
        }
    }
}
#endif /* HAVE_X86 */

/* C = beta * C (K == 0, or alpha == 0). */
static void scale_only(int64_t M, int64_t N, float beta, float *C, int64_t ldc) {
    for (int64_t m = 0; m < M; m++) {
        float *c = C + m * ldc;
        if (beta == 0) memset(c, 0, sizeof(float) * (size_t)N);
        else for (int64_t n = 0; n < N; n++) c[n] *= beta;
    }
}

int ct_sgemm_small(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                   int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    if (!ct_sgemm_small_available() || (ta && tb)) return 1;
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0) {
        scale_only(M, N, beta, C, ldc);
        return 0;
    }
#if HAVE_X86
    if (!tb) {
        /* op(A)[m][k] = A[m*ars + k*acs] */
        int64_t ars = ta ? 1 : lda, acs = ta ? lda : 1;
        outer_driver(M, N, K, alpha, A, ars, acs, B, ldb, beta, C, ldc, NULL);
    } else {
        dot_driver(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
    return 0;
#else
    (void)alpha; (void)A; (void)lda; (void)B; (void)ldb;
    return 1;
#endif
}

int ct_sgemm_blocked(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                     float *C, int64_t ldc, const float *bias) {
    if (!ct_sgemm_small_available() || (ta && tb)) return 1;
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0) {
        scale_only(M, N, beta, C, ldc);
        if (bias)
            for (int64_t m = 0; m < M; m++)
                for (int64_t n = 0; n < N; n++) C[m * ldc + n] += bias[n];
        return 0;
    }
#if HAVE_X86
    const int64_t ars = ta ? 1 : lda, acs = ta ? lda : 1;
    if (!tb) {
        blocked_driver(M, N, K, alpha, A, ars, acs, B, ldb, beta, C, ldc, bias);
        return 0;
    }
    float *bt = ct_cpu_alloc(sizeof(float) * (size_t)(K * N));
    if (!bt) return 1; /* BLAS then, which needs no buffer of this size */
    transpose_into(bt, B, N, K, ldb);
    blocked_driver(M, N, K, alpha, A, ars, acs, bt, N, beta, C, ldc, bias);
    ct_cpu_free(bt);
    return 0;
#else
    (void)alpha; (void)A; (void)lda; (void)B; (void)ldb;
    return 1;
#endif
}
