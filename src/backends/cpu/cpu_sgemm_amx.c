/* float32 GEMM on AMX tiles, as accurate as a float32 FMA kernel ("bf16x6").
 *
 *   C (M x N) = alpha * op(A) @ op(B) + bias (per column) + beta * C
 *
 * AMX multiplies bfloat16 pairs (8 significant bits) exactly and adds them in float32, at
 * 32 times the float32 FMA rate of AVX-512 on a Sapphire Rapids core. Each float32 operand
 * is split into three bfloat16 parts, x = x0 + x1 + x2: x0 = x rounded to nearest to 8
 * significant bits, x1 = x - x0 rounded the same way, x2 = x - x0 - x1. Then
 * |x1| <= 2^-8 |x|, |x2| <= 2^-16 |x|, and the three hold x's 24 significant bits exactly
 * (values below bfloat16's normal range, which AMX flushes, aside). The product keeps the
 * six partial products down to 2^-16:
 *
 *   a b ~ a0 b0 + (a0 b1 + a1 b0) + (a1 b1 + a0 b2 + a2 b0)
 *
 * and drops a1 b2 + a2 b1 + a2 b2, at most 2^-23 |a b| and typically 2^-28 (Henry, Tang and
 * Heinecke, "Leveraging the bfloat16 Artificial Intelligence Datatype for Higher-Precision
 * Computations", ARITH 2019). The five small products are summed over K first and the
 * leading a0 b0 onto that sum last (a long K in chunks of AMX_KC, each summed so, the
 * chunks' sums added in order as the FMA kernel adds its chunks), so the large terms meet
 * as many float32 roundings as in an FMA kernel. Measured against
 * float64 the error is below our AVX-512 kernel's (test sgemm_amx_as_accurate_as_fma).
 *
 * Blocks of C are 32 x 32 (four 16 x 16 float32 tiles, tmm0-3) as in cpu_gemm_bf16.c. K is
 * padded with zeros to a multiple of 32. Up to AMX_KONE it goes in one pass: A is split and
 * packed by the thread that uses it, one block of 32 rows at a time ([part][32 rows][K]
 * bf16, in L1/L2 while the thread runs the block's row of C), and B once for all threads
 * ([panel of 32 columns][part][K / 2][32 columns][pair]). A longer K (a weight gradient's:
 * the tokens) goes in chunks of AMX_KC: each thread owns a band of C's blocks and packs,
 * chunk by chunk, its band of the longer operand and all of the shorter one, so that both
 * stay in its L2, keeping its blocks' sums in memory in between. Every element of C is
 * summed in one order whatever the threads. */
#include "cpu_sgemm_amx.h"

#include "cpu_alloc.h"
#include "cpu_amx.h"
#include "cpu_gemm_bf16.h"
#include "cpu_isa.h"
#include "core/error.h"
#include "core/parallel.h"
#include "simd512.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && (__GNUC__ >= 11 || defined(__clang__))
#include <immintrin.h>
#define HAVE_SGEMM_AMX 1
#define AMXF                                                                                \
    __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#endif

#define AMX_KONE 1024 /* K (padded) up to this goes in one pass */
#define AMX_KC 256    /* otherwise chunks of this many */

static int g_enabled = -1;

static int usable(void) {
    int e = __atomic_load_n(&g_enabled, __ATOMIC_RELAXED);
    if (e < 0) {
        const char *v = getenv("CTORCH_FP32_AMX");
        e = !(v && !strcmp(v, "0"));
        __atomic_store_n(&g_enabled, e, __ATOMIC_RELAXED);
    }
#ifdef HAVE_SGEMM_AMX
    return e && ct_gemm_bf16_kind() == CT_BF16_AMX && ct_cpu_has_avx512bf16();
#else
    return 0;
#endif
}

int ct_sgemm_amx_available(void) { return usable(); }

int ct_sgemm_amx_set_enabled(int on) {
    usable(); /* reads the environment once */
    int prev = __atomic_load_n(&g_enabled, __ATOMIC_RELAXED);
    __atomic_store_n(&g_enabled, on ? 1 : 0, __ATOMIC_RELAXED);
    return prev;
}

int ct_sgemm_amx_wanted(int ta, int tb, int64_t M, int64_t N, int64_t K) {
    (void)ta, (void)tb;
    if (!usable() || M < 32 || N < 32 || K < 32) return 0;
    /* the scratch stays under 256 MiB: B's packed copy (6 bytes an element) when K goes
     * in one pass, C's block sums (4 bytes an element) when it goes in chunks */
    double kp = (double)((K + 31) / 32 * 32), mp = (double)((M + 31) / 32 * 32);
    double np = (double)((N + 31) / 32 * 32);
    double scratch = kp <= AMX_KONE ? 6.0 * np * kp : 4.0 * mp * np;
    if (scratch > 256.0 * 1024 * 1024) return 0;
    /* splitting costs about a cycle an element of each operand, the products a few per
     * element and 32 columns. Measured against the FMA kernels (2 threads, a Sapphire
     * Rapids Xeon): B's copy needs rows to pay for it (M 64-128 against N and K of
     * 512-4096: 0.6-0.9x), A's needs columns (N 64: 0.85-0.99x, the FMA kernels' panel
     * width; N 96 and up 1.05x and more), and a K in chunks splits both operands per
     * band of C (N 40: 0.64x) */
    if (kp <= AMX_KONE ? M < 256 || N < 96 : M < 128 || N < 128) return 0;
    return 2.0 * (double)M * (double)N * (double)K >= 2e7;
}

#ifdef HAVE_SGEMM_AMX
typedef struct {
    int ta, tb;
    int64_t M, N, K, Kp, lda, ldb, ldc;
    const float *A, *B;
    float *C;
    float alpha, beta;
    const float *bias;
    int64_t MB, NB, nch, kc; /* blocks of 32 rows, of 32 columns; chunks of K, their length */
    uint16_t *bp; /* K in one pass: packed B, panel nb at nb * 96 * Kp */
    float *acc;   /* K in chunks: block (mb, nb)'s sum of the chunks so far at
                   * (mb * NB + nb) * 1024 */
    int64_t parts; /* K in chunks: the bands of C's blocks, one per task */
    /* Rows of A (bit r of rowbad[mb]) and columns of B (bit c of colbad[nb]) holding an
     * infinity or NaN: their elements of C are summed in plain float32 instead (a split
     * infinity would meet the other operand's zero small parts: inf * 0 = NaN). */
    uint32_t *rowbad, *colbad;
    int failed;
} sctx;

static inline __mmask16 lanes(int64_t n) {
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* r[i] = elements (i0 + i, j0 .. j0 + 15) of a matrix whose element (i, j) is p[i * ld + j]
 * (trans 0) or p[j * ld + i] (trans 1), zero outside I x J. */
AMXF static void load16(__m512 r[16], const float *p, int64_t ld, int trans, int64_t i0,
                        int64_t I, int64_t j0, int64_t J) {
    if (!trans) {
        __mmask16 jm = lanes(J - j0);
        for (int i = 0; i < 16; i++)
            r[i] = i0 + i < I ? _mm512_maskz_loadu_ps(jm, p + (i0 + i) * ld + j0)
                              : _mm512_setzero_ps();
        return;
    }
    __mmask16 im = lanes(I - i0);
    __m512i t[16];
    for (int j = 0; j < 16; j++) {
        /* rows ld apart: the hardware prefetchers do not follow, so ask for the rows of
         * the block two steps on */
        if (j0 + j + 32 < J)
            _mm_prefetch((const char *)(p + (j0 + j + 32) * ld + i0), _MM_HINT_T0);
        t[j] = j0 + j < J ? _mm512_maskz_loadu_epi32(im, p + (j0 + j) * ld + i0)
                          : _mm512_setzero_si512();
    }
    ct_transpose16(t);
    for (int i = 0; i < 16; i++) r[i] = _mm512_castsi512_ps(t[i]);
}

/* x rounded to its 8 leading significant bits: Veltkamp's split, t = x (2^16 + 1),
 * x0 = t - (t - x), exact in float32 arithmetic as long as nothing contracts x (2^16 + 1)
 * - x into an FMA: t goes through an empty asm, which the compiler cannot look into
 * (sgemm_amx_as_accurate_as_fma fails otherwise). Cheaper than a round trip through
 * bfloat16 (no shuffles); x0 is x rounded to nearest (ties aside) as a conversion to
 * bfloat16 would round it. An x over 2^128 / 65537 (about 5e33) or not finite gives NaN. */
AMXF static inline __m512 top8(__m512 x) {
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(65537.0f));
    __asm__("" : "+v"(t));
    return _mm512_sub_ps(t, _mm512_sub_ps(t, x));
}

/* Two vectors lo, hi (16 floats each) into their three parts (see the top): p[q] holds
 * part q of lo's 16 then of hi's 16, as bfloat16 (exact: each part has at most 8
 * significant bits). Returns the lanes (lo's | hi's) whose leading part is NaN (x not
 * finite, or too large for the split): C's elements that use them are summed in float32
 * by exact_dot, whatever the parts hold. */
AMXF static inline __mmask16 split3x2(__m512 lo, __m512 hi, __m512i p[3]) {
    __m512 l0 = top8(lo), h0 = top8(hi);
    __mmask16 bad = _mm512_fpclass_ps_mask(l0, 0x99) | _mm512_fpclass_ps_mask(h0, 0x99);
    __m512 l1 = _mm512_sub_ps(lo, l0), h1 = _mm512_sub_ps(hi, h0);
    __m512 l1t = top8(l1), h1t = top8(h1);
    p[0] = (__m512i)_mm512_cvtne2ps_pbh(h0, l0);
    p[1] = (__m512i)_mm512_cvtne2ps_pbh(h1t, l1t);
    p[2] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(h1, h1t), _mm512_sub_ps(l1, l1t));
    return bad;
}

/* Blocks [mb0, mb1) of 32 rows of op(A), K range [k0, k0 + len), block mb into
 * dst + (mb - mb0) * 96 * len as [part][32 rows][len]. Along K outside: a transposed A is
 * read a whole band of each row at a time. */
AMXF static void pack_a(const sctx *s, uint16_t *dst, int64_t mb0, int64_t mb1, int64_t k0,
                        int64_t len) {
    if (!s->ta) { /* rows of A: one after the other (few streams for the prefetchers) */
        for (int64_t mb = mb0; mb < mb1; mb++)
            for (int r = 0; r < 32; r++) {
                int64_t m = mb * 32 + r;
                uint16_t *d = dst + (mb - mb0) * 96 * len + r * len;
                const float *src = s->A + (m < s->M ? m : 0) * s->lda + k0;
                __mmask16 bad = 0;
                for (int64_t k = 0; k < len; k += 32) {
                    __mmask16 k1 = m < s->M ? lanes(s->K - k0 - k) : 0;
                    __mmask16 k2 = m < s->M ? lanes(s->K - k0 - k - 16) : 0;
                    __m512i p[3];
                    bad |= split3x2(_mm512_maskz_loadu_ps(k1, src + k),
                                    _mm512_maskz_loadu_ps(k2, src + k + 16), p);
                    for (int q = 0; q < 3; q++) _mm512_storeu_si512(d + q * 32 * len + k, p[q]);
                }
                if (bad) __atomic_fetch_or(&s->rowbad[mb], 1u << r, __ATOMIC_RELAXED);
            }
        return;
    }
    for (int64_t k = 0; k < len; k += 32)
        for (int64_t mb = mb0; mb < mb1; mb++)
            for (int h = 0; h < 2; h++) {
                __m512 r[16], r2[16];
                load16(r, s->A, s->lda, s->ta, mb * 32 + 16 * h, s->M, k0 + k, s->K);
                load16(r2, s->A, s->lda, s->ta, mb * 32 + 16 * h, s->M, k0 + k + 16, s->K);
                for (int i = 0; i < 16; i++) {
                    __m512i p[3];
                    if (split3x2(r[i], r2[i], p))
                        __atomic_fetch_or(&s->rowbad[mb], 1u << (16 * h + i), __ATOMIC_RELAXED);
                    uint16_t *d = dst + (mb - mb0) * 96 * len + (16 * h + i) * len + k;
                    for (int q = 0; q < 3; q++) _mm512_storeu_si512(d + q * 32 * len, p[q]);
                }
            }
}

/* Panels [nb0, nb1) of 32 columns of op(B), K range [k0, k0 + len), panel nb into
 * dst + (nb - nb0) * 96 * len as [part][len / 2][32 columns] (k, k + 1) pairs. */
AMXF static void pack_b(const sctx *s, uint16_t *dst, int64_t nb0, int64_t nb1, int64_t k0,
                        int64_t len) {
    const __m512i inter = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25,
                                           9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2,
                                           17, 1, 16, 0);
    for (int64_t k = 0; k < len; k += 16)
        for (int64_t nb = nb0; nb < nb1; nb++)
            for (int h = 0; h < 2; h++) {
                __m512 r[16];
                load16(r, s->B, s->ldb, s->tb, k0 + k, s->K, nb * 32 + 16 * h, s->N);
                __mmask16 bad = 0;
                for (int i = 0; i < 16; i += 2) { /* rows k + i and k + i + 1: pairs */
                    __m512i p[3];
                    bad |= split3x2(r[i], r[i + 1], p);
                    uint16_t *d = dst + (nb - nb0) * 96 * len + (k + i) / 2 * 64 + 32 * h;
                    for (int q = 0; q < 3; q++)
                        _mm512_storeu_si512(d + q * 32 * len,
                                            _mm512_permutexvar_epi16(inter, p[q]));
                }
                if (bad)
                    __atomic_fetch_or(&s->colbad[nb], (uint32_t)bad << (16 * h), __ATOMIC_RELAXED);
            }
}

/* Slice `part` of `parts` of the cache lines op(A)'s block mb (32 rows, all K) reads, asked
 * into L2 while the tiles work on the block before it: its rows come from memory, and the
 * hardware prefetchers stay idle while no loads stream. */
static void prefetch_a(const sctx *s, int64_t mb, int64_t part, int64_t parts) {
    if (mb >= s->MB) return;
    int64_t rows = s->M - mb * 32 < 32 ? s->M - mb * 32 : 32;
    /* ta 0: rows rows of K floats; ta 1: K rows of `rows` floats */
    int64_t nrow = s->ta ? s->K : rows, width = (s->ta ? rows : s->K) * 4;
    int64_t lines = (width + 63) / 64, total = nrow * lines;
    int64_t l0 = total * part / parts, l1 = total * (part + 1) / parts;
    for (int64_t l = l0; l < l1; l++) {
        int64_t r = l / lines, c = l % lines;
        const char *p = (const char *)(s->ta ? s->A + r * s->lda + mb * 32
                                             : s->A + (mb * 32 + r) * s->lda);
        _mm_prefetch(p + c * 64, _MM_HINT_T1);
    }
}

/* K in one pass: B's panels [begin, end) into s->bp. */
static void packb_range(void *vc, int64_t begin, int64_t end) {
    const sctx *s = vc;
    pack_b(s, s->bp + begin * 96 * s->Kp, begin, end, 0, s->Kp);
}

/* One step of 32 along K: the A part's two tiles (rows 0-15, 16-31; lda in bytes), the B
 * part's two (columns 0-15, 16-31), four products into tiles 0-3. */
#define LOAD_A(a, k, lda)                                                                   \
    _tile_loadd(4, (a) + (k), (lda));                                                       \
    _tile_loadd(5, (a) + 16 * ((lda) / 2) + (k), (lda))
#define LOAD_B(b, k)                                                                        \
    _tile_loadd(6, (b) + (k) * 32, 128);                                                    \
    _tile_loadd(7, (b) + (k) * 32 + 32, 128)
#define PRODUCTS()                                                                          \
    _tile_dpbf16ps(0, 4, 6);                                                                \
    _tile_dpbf16ps(1, 4, 7);                                                                \
    _tile_dpbf16ps(2, 5, 6);                                                                \
    _tile_dpbf16ps(3, 5, 7)

/* Tiles 0-3 += the five small products (a: [3][32][len], b: [3][len / 2][32] pairs). */
AMXF static void small_terms(const uint16_t *a, const uint16_t *b, int64_t len) {
    const uint16_t *a0 = a, *a1 = a + 32 * len, *a2 = a + 64 * len;
    const uint16_t *b0 = b, *b1 = b + 32 * len, *b2 = b + 64 * len;
    const int64_t lda = len * 2;
    for (int64_t k = 0; k < len; k += 32) {
        LOAD_A(a0, k, lda);
        LOAD_B(b1, k);
        PRODUCTS();
        LOAD_B(b2, k);
        PRODUCTS();
        LOAD_A(a1, k, lda);
        LOAD_B(b1, k);
        PRODUCTS();
        LOAD_B(b0, k);
        PRODUCTS();
        LOAD_A(a2, k, lda);
        PRODUCTS();
    }
}

/* Tiles 0-3 = the block's sum over [0, len): the small products first, then a0 b0 (the
 * kernels' shared 2x2 step, cpu_amx.h) onto them. */
AMXF static void block_products(const uint16_t *a, const uint16_t *b, int64_t len) {
    CT_AMX_ZERO22();
    small_terms(a, b, len);
    for (int64_t k = 0; k < len; k += 32)
        CT_AMX_STEP22(a + k, a + 16 * len + k, len * 2, b + k * 32, b + k * 32 + 32, 128);
}

/* Element (m, n) of op(A) @ op(B) summed in float32, for the rows and columns with an
 * infinity or NaN (rare: the IEEE outcome without a split). */
static float exact_dot(const sctx *s, int64_t m, int64_t n) {
    float acc = 0.0f;
    for (int64_t k = 0; k < s->K; k++) {
        float a = s->ta ? s->A[k * s->lda + m] : s->A[m * s->lda + k];
        float b = s->tb ? s->B[n * s->ldb + k] : s->B[k * s->ldb + n];
        acc = fmaf(a, b, acc);
    }
    return acc;
}

/* C's block (mb, nb) = alpha * buf + bias + beta * C. */
AMXF static void store_block(const sctx *s, float *buf, int64_t mb, int64_t nb) {
    int64_t m0 = mb * 32, n0 = nb * 32;
    int rows = (int)(s->M - m0 < 32 ? s->M - m0 : 32);
    uint32_t rb = __atomic_load_n(&s->rowbad[mb], __ATOMIC_RELAXED);
    uint32_t cb = __atomic_load_n(&s->colbad[nb], __ATOMIC_RELAXED);
    if (rb | cb) {
        int cols = (int)(s->N - n0 < 32 ? s->N - n0 : 32);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                if ((rb >> r & 1) || (cb >> c & 1)) buf[r * 32 + c] = exact_dot(s, m0 + r, n0 + c);
    }
    __mmask16 k0 = lanes(s->N - n0), k1 = lanes(s->N - n0 - 16);
    __m512 al = _mm512_set1_ps(s->alpha), be = _mm512_set1_ps(s->beta);
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    if (s->bias) {
        b0 = _mm512_maskz_loadu_ps(k0, s->bias + n0);
        b1 = _mm512_maskz_loadu_ps(k1, s->bias + n0 + 16);
    }
    for (int r = 0; r < rows; r++) {
        float *c = s->C + (m0 + r) * s->ldc + n0;
        __m512 v0 = _mm512_fmadd_ps(_mm512_load_ps(buf + r * 32), al, b0);
        __m512 v1 = _mm512_fmadd_ps(_mm512_load_ps(buf + r * 32 + 16), al, b1);
        if (s->beta != 0.0f) {
            v0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k0, c), be, v0);
            v1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k1, c + 16), be, v1);
        }
        _mm512_mask_storeu_ps(c, k0, v0);
        _mm512_mask_storeu_ps(c + 16, k1, v1);
    }
}

/* K in one pass: blocks [begin, end) of C (row-major over the blocks), A's rows split and
 * packed here as they come, B packed beforehand for all. */
AMXF static void blocks_range(void *vc, int64_t begin, int64_t end) {
    sctx *s = vc;
    const int64_t len = s->Kp;
    uint16_t *abuf = ct_cpu_alloc((size_t)96 * (size_t)len * sizeof(uint16_t));
    if (!abuf) {
        __atomic_store_n(&s->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    float buf[32 * 32] __attribute__((aligned(64)));
    ct_amx_configure(8, 16, 64);
    const int plain = s->alpha == 1.0f && s->beta == 0.0f && !s->bias;
    int64_t packed = -1;
    for (int64_t t = begin; t < end; t++) {
        int64_t mb = t / s->NB, nb = t % s->NB;
        if (mb != packed) {
            pack_a(s, abuf, mb, mb + 1, 0, len);
            packed = mb;
        }
        const uint16_t *b = s->bp + nb * 96 * len;
        if (t + 1 < end || nb + 1 < s->NB) prefetch_a(s, mb + 1, nb, s->NB);
        block_products(abuf, b, len);
        if (plain && mb * 32 + 32 <= s->M && nb * 32 + 32 <= s->N && !s->colbad[nb] &&
            !__atomic_load_n(&s->rowbad[mb], __ATOMIC_RELAXED)) {
            CT_AMX_STORE22(s->C + mb * 32 * s->ldc + nb * 32, s->ldc);
            continue;
        }
        CT_AMX_STORE22(buf, 32);
        store_block(s, buf, mb, nb);
    }
    _tile_release();
    ct_cpu_free(abuf);
}

/* K in chunks: part `part` of s->parts owns a band of C's blocks along the longer side
 * (whole rows of blocks when MB >= NB, whole columns otherwise). Per chunk it splits and
 * packs its share of the longer operand and all of the shorter one into buffers of its
 * own (in its core's L2), then adds the chunk's products to its blocks' two sums. */
AMXF static void long_range(void *vc, int64_t begin, int64_t end) {
    sctx *s = vc;
    for (int64_t part = begin; part < end; part++) {
        int rows = s->MB >= s->NB;
        int64_t n = rows ? s->MB : s->NB;
        int64_t lo_b = n * part / s->parts, hi_b = n * (part + 1) / s->parts;
        int64_t mb0 = rows ? lo_b : 0, mb1 = rows ? hi_b : s->MB;
        int64_t nb0 = rows ? 0 : lo_b, nb1 = rows ? s->NB : hi_b;
        if (mb1 <= mb0 || nb1 <= nb0) continue;
        size_t per = (size_t)96 * (size_t)s->kc;
        uint16_t *abuf = ct_cpu_alloc(per * (size_t)(mb1 - mb0) * sizeof(uint16_t));
        uint16_t *bbuf = ct_cpu_alloc(per * (size_t)(nb1 - nb0) * sizeof(uint16_t));
        if (!abuf || !bbuf) {
            ct_cpu_free(abuf);
            ct_cpu_free(bbuf);
            __atomic_store_n(&s->failed, 1, __ATOMIC_RELAXED);
            return;
        }
        float buf[32 * 32] __attribute__((aligned(64)));
        ct_amx_configure(8, 16, 64);
        for (int64_t c = 0; c < s->nch; c++) {
            int64_t k0 = c * s->kc, len = s->Kp - k0 < s->kc ? s->Kp - k0 : s->kc;
            pack_a(s, abuf, mb0, mb1, k0, len);
            pack_b(s, bbuf, nb0, nb1, k0, len);
            for (int64_t mb = mb0; mb < mb1; mb++)
                for (int64_t nb = nb0; nb < nb1; nb++) {
                    const uint16_t *a = abuf + (mb - mb0) * 96 * len;
                    const uint16_t *b = bbuf + (nb - nb0) * 96 * len;
                    float *sum = s->acc + (mb * s->NB + nb) * 1024;
                    block_products(a, b, len);
                    CT_AMX_STORE22(c == 0 ? sum : buf, 32);
                    if (c > 0) /* the chunks' sums added in order, as the FMA kernel's */
                        for (int i = 0; i < 1024; i += 16)
                            _mm512_store_ps(sum + i, _mm512_add_ps(_mm512_load_ps(sum + i),
                                                                   _mm512_load_ps(buf + i)));
                    if (c == s->nch - 1) store_block(s, sum, mb, nb);
                }
        }
        _tile_release();
        ct_cpu_free(abuf);
        ct_cpu_free(bbuf);
    }
}

int ct_sgemm_amx(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                 int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc,
                 const float *bias) {
    if (!usable()) return 1;
    if (M <= 0 || N <= 0 || K <= 0) return 1;
    sctx s = {.ta = ta, .tb = tb, .M = M, .N = N, .K = K, .lda = lda, .ldb = ldb, .ldc = ldc,
              .A = A, .B = B, .C = C, .alpha = alpha, .beta = beta, .bias = bias};
    s.Kp = (K + 31) / 32 * 32;
    s.MB = (M + 31) / 32;
    s.NB = (N + 31) / 32;
    s.kc = s.Kp <= AMX_KONE ? s.Kp : AMX_KC;
    s.nch = (s.Kp + s.kc - 1) / s.kc;
    s.rowbad = ct_cpu_alloc(sizeof(uint32_t) * (size_t)(s.MB + s.NB));
    if (s.nch > 1) s.acc = ct_cpu_alloc((size_t)(s.MB * s.NB) * 1024 * sizeof(float));
    else s.bp = ct_cpu_alloc((size_t)s.NB * 96 * (size_t)s.Kp * sizeof(uint16_t));
    if (!s.rowbad || (!s.acc && !s.bp)) {
        ct_cpu_free(s.rowbad);
        ct_cpu_free(s.acc);
        ct_cpu_free(s.bp);
        ct_error_context("float32 GEMM on AMX (%lld x %lld x %lld)", (long long)M,
                         (long long)N, (long long)K);
        return -1;
    }
    s.colbad = s.rowbad + s.MB;
    memset(s.rowbad, 0, sizeof(uint32_t) * (size_t)(s.MB + s.NB));
    if (s.nch > 1) {
        int64_t longer = s.MB >= s.NB ? s.MB : s.NB;
        s.parts = ct_plan_threads() < longer ? ct_plan_threads() : longer;
        ct_parallel_for(s.parts, 1, long_range, &s);
    } else {
        ct_parallel_for(s.NB, 1, packb_range, &s);
        /* whole rows of blocks per task where there are enough of them (A packed once
         * per row), single blocks otherwise */
        int64_t grain = s.MB >= 4 * ct_plan_threads() ? s.NB : 1;
        ct_parallel_for_dynamic(s.MB * s.NB, grain, blocks_range, &s);
    }
    ct_cpu_free(s.rowbad);
    ct_cpu_free(s.acc);
    ct_cpu_free(s.bp);
    if (s.failed) /* a worker's allocation: its message stayed in its thread */
        return ct_error("float32 GEMM on AMX (%lld x %lld x %lld): out of memory for the "
                        "packed operands (%lld bytes)",
                        (long long)M, (long long)N, (long long)K,
                        (long long)(192 * s.kc * (s.nch > 1 ? s.MB + s.NB : 1)));
    return 0;
}
#else
int ct_sgemm_amx(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                 int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc,
                 const float *bias) {
    (void)ta, (void)tb, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda, (void)B;
    (void)ldb, (void)beta, (void)C, (void)ldc, (void)bias;
    return 1;
}
#endif
