/* bfloat16 GEMM on AVX512_BF16 (vdpbf16ps: 16 float32 lanes, each += the dot product of a
 * pair of bf16 values), float32 accumulation.
 *
 *   C (M x N, float32) = alpha * A (M x K) @ B (K x N) + beta * C
 *
 * A and B are bf16 matrices with any strides. B is packed into panels of 32 columns whose
 * elements are (k, k+1) pairs. With AMX (Sapphire Rapids and later), A is packed in rows
 * and 32 x 32 blocks of C are four tiles updated by tdpbf16ps; with AVX512_BF16 only
 * (Cooper Lake, Zen 4), A is packed in blocks of 6 rows of pairs and a 6 x 32 micro-kernel
 * keeps 12 zmm accumulators. K is padded with zeros. Where the CPU has neither (or
 * CTORCH_CPU_ISA asks for less), ct_gemm_bf16_kind() is 0 and callers widen to float32
 * (OpenBLAS's FMA kernels) instead. */
#include "cpu_gemm_bf16.h"

#include "cpu_alloc.h"
#include "cpu_amx.h"
#include "cpu_isa.h"
#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "simd512.h"

#include <stdlib.h>
#include <string.h>

#define MR 6
#define NR CT_BF16_NR

#if defined(__x86_64__) && defined(__GNUC__) && (__GNUC__ >= 10 || defined(__clang__))
#include <immintrin.h>
#define HAVE_BF16_KERNEL 1
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

int ct_gemm_bf16_available(void) { return ct_gemm_bf16_kind() != 0; }

#ifdef HAVE_BF16_KERNEL
typedef struct {
    int64_t M, N, K2;
    const uint32_t *ap; /* AVX-512: [ceil(M/MR)][K2][MR] pairs; AMX: [M rounded to 32][K2] */
    const uint32_t *bp; /* [ceil(N/NR)][K2][NR] pairs */
    float *c;      /* float32 C, or NULL: */
    uint16_t *cb;  /* bfloat16 C (rounded to nearest even, NaN -> 0xffff as half.h) */
    int64_t ldc;
    float alpha, beta;
    int64_t mblocks, nblocks;
    const float *bias; /* added to row i of the product (after alpha), or NULL */
    int64_t group, gstride; /* > 0: column j lives in block j / group, gstride apart */
    const uint16_t *direct; /* AMX: A read in place for row blocks [0, dblocks) */
    int64_t lda, dblocks;
    int rows_outer; /* AMX: consecutive tasks share an A block (A the larger operand) */
    /* AMX over a long K in chunks: this pass covers bf16 elements [k0, k1) of the packed K;
     * acc (float32, ldacc apart, whole blocks) carries the sums between passes; last: this
     * pass writes C. Without chunks: k0 = 0, k1 = K2 * 2, acc NULL, last 1. */
    int64_t k0, k1;
    float *acc;
    int64_t ldacc;
    int last;
} gctx;

/* Offset of C's element (row, col); col is a panel start, so a panel stays in a group. */
static inline int64_t c_offset(const gctx *g, int64_t row, int64_t col) {
    if (g->group <= 0) return row * g->ldc + col;
    return col / g->group * g->gstride + row * g->ldc + col % g->group;
}

/* Row of 32 results (v0, v1 = alpha * acc) into C: float32 or bf16, with beta. */
BF16_TARGET static inline void store_row(const gctx *g, int64_t row, int64_t n0, __m512 v0,
                                         __m512 v1, __mmask16 k0, __mmask16 k1) {
    __m512 be = _mm512_set1_ps(g->beta);
    if (g->bias) {
        __m512 bv = _mm512_set1_ps(g->bias[row]);
        v0 = _mm512_add_ps(v0, bv);
        v1 = _mm512_add_ps(v1, bv);
    }
    if (g->c) {
        float *c = g->c + c_offset(g, row, n0);
        if (g->beta != 0) {
            v0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k0, c), be, v0);
            v1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k1, c + 16), be, v1);
        }
        _mm512_mask_storeu_ps(c, k0, v0);
        _mm512_mask_storeu_ps(c + 16, k1, v1);
        return;
    }
    uint16_t *c = g->cb + c_offset(g, row, n0);
    __m512 vs[2] = {v0, v1};
    __mmask16 ks[2] = {k0, k1};
    for (int h = 0; h < 2; h++) {
        __m512 v = vs[h];
        if (g->beta != 0) {
            __m256i old = _mm256_maskz_loadu_epi16(ks[h], c + 16 * h);
            __m512 of = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(old), 16));
            v = _mm512_fmadd_ps(of, be, v);
        }
        _mm256_mask_storeu_epi16(c + 16 * h, ks[h], ct_f32x16_to_bf16(v));
    }
}

/* acc[r][0..31] = sum over k2 of A pairs (row r) . B pairs. */
BF16_TARGET static void micro(const uint32_t *a, const uint32_t *b, int64_t K2, __m512 acc[MR][2]) {
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K2; k++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + k * NR);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + k * NR + 16);
        const uint32_t *ak = a + k * MR;
#define ROW(r)                                                                            \
    {                                                                                     \
        __m512bh av = (__m512bh)_mm512_set1_epi32((int)ak[r]);                            \
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);                                  \
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);                                  \
    }
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
#undef ROW
    }
}

BF16_TARGET static void tile_range(void *vc, int64_t begin, int64_t end) {
    const gctx *g = vc;
    for (int64_t t = begin; t < end; t++) {
        int64_t nb = t / g->mblocks, mb = t % g->mblocks; /* consecutive tasks share a B panel */
        __m512 acc[MR][2];
        micro(g->ap + mb * g->K2 * MR, g->bp + nb * g->K2 * NR, g->K2, acc);
        int64_t m0 = mb * MR, n0 = nb * NR;
        int rows = (int)(g->M - m0 < MR ? g->M - m0 : MR);
        int cols = (int)(g->N - n0 < NR ? g->N - n0 : NR);
        __mmask16 k0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
        __mmask16 k1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
        __m512 al = _mm512_set1_ps(g->alpha);
        for (int r = 0; r < rows; r++)
            store_row(g, m0 + r, n0, _mm512_mul_ps(acc[r][0], al), _mm512_mul_ps(acc[r][1], al),
                      k0, k1);
    }
}
#endif

/* The pair (m[i][2k], m[i][2k+1]) of a strided bf16 matrix, 0 past the end. */
static inline uint32_t pair_at(const uint16_t *p, int64_t rs, int64_t cs, int64_t i, int64_t k,
                               int64_t K) {
    uint32_t lo = k < K ? p[i * rs + k * cs] : 0;
    uint32_t hi = k + 1 < K ? p[i * rs + (k + 1) * cs] : 0;
    return lo | hi << 16;
}

/* Row i of A as K2 pairs (zeros past K). */
static void pack_row(uint32_t *dst, ct_bf16_mat A, int64_t i, int64_t K, int64_t K2) {
    const uint16_t *r = A.p + i * A.rs;
    int64_t k = 0;
    if (A.cs == 1) { /* the pairs are already adjacent */
        if (K / 2 > 0) memcpy(dst, r, (size_t)(K / 2) * 4);
        k = K / 2;
    }
    for (; k < K2; k++) dst[k] = pair_at(r, 0, A.cs, 0, 2 * k, K);
}

/* Panel nb of B (32 columns, K2 pair rows) into dst[K2][32]. */
static void pack_b_panel(uint32_t *dst, ct_bf16_mat B, int64_t nb, int64_t N, int64_t K,
                         int64_t K2) {
    int64_t n0 = nb * NR, ncol = N - n0 < NR ? N - n0 : NR;
    if (B.rs == 1 && B.cs != 1) { /* K runs along memory: each column's pairs adjacent */
        for (int c = 0; c < NR; c++) {
            if (c >= ncol) {
                for (int64_t k = 0; k < K2; k++) dst[k * NR + c] = 0;
                continue;
            }
            const uint16_t *col = B.p + (n0 + c) * B.cs;
            int64_t k = 0;
            for (; 2 * k + 1 < K; k++) {
                uint32_t v;
                memcpy(&v, col + 2 * k, 4);
                dst[k * NR + c] = v;
            }
            for (; k < K2; k++) dst[k * NR + c] = pair_at(col, 0, 1, 0, 2 * k, K);
        }
        return;
    }
    for (int64_t k = 0; k < K2; k++) {
        const uint16_t *r0 = B.p + 2 * k * B.rs + n0 * B.cs;
        uint32_t *d = dst + k * NR;
        if (B.cs == 1 && ncol == NR && 2 * k + 1 < K) { /* two rows, interleaved */
            const uint16_t *r1 = r0 + B.rs;
            for (int c = 0; c < NR; c++) d[c] = (uint32_t)r0[c] | (uint32_t)r1[c] << 16;
            continue;
        }
        for (int c = 0; c < NR; c++)
            d[c] = c < ncol ? pair_at(B.p, B.cs, B.rs, n0 + c, 2 * k, K) : 0;
    }
}

typedef struct {
    uint32_t *bp;
    ct_bf16_mat B;
    int64_t N, K, K2;
} packb_ctx;

static void packb_range(void *vc, int64_t begin, int64_t end) {
    const packb_ctx *c = vc;
    for (int64_t nb = begin; nb < end; nb++)
        pack_b_panel(c->bp + nb * c->K2 * NR, c->B, nb, c->N, c->K, c->K2);
}

#ifdef HAVE_BF16_KERNEL
/* ------------------------------------------------------------------- AMX tiles
 * C blocks of 32 x 32 as four 16 x 16 float32 tiles (tmm0-3); per step of 32 along K two
 * A tiles (16 rows x 32 bf16, tmm4-5) and two B tiles (16 pairs x 16 columns, tmm6-7) and
 * four tdpbf16ps. A is packed row-major with K padded to a multiple of 32, B in the pair
 * panels above with K2 padded to a multiple of 16. */
#define BF16_KCHUNK 1024 /* bf16 elements of K per pass when K is long */
#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl")))

/* A full 32 x 32 block from buf into a bf16 C (alpha 1, any beta, no bias, no column
 * groups) without store_row's generality; 0 when the block is not such a case. (A float32
 * C without beta takes the tiles' own stores in amx_range.) */
AMX_TARGET static int store_block_fast(const gctx *g, const float *buf, int64_t m0, int64_t n0) {
    if (g->c || g->group > 0 || g->bias || g->alpha != 1.0f) return 0;
    uint16_t *c = g->cb + m0 * g->ldc + n0;
    __m512 be = _mm512_set1_ps(g->beta);
    for (int r = 0; r < 32; r++) {
        __m512 v0 = _mm512_load_ps(buf + r * 32), v1 = _mm512_load_ps(buf + r * 32 + 16);
        uint16_t *cr = c + r * g->ldc;
        if (g->beta != 0.0f) {
            __m512i old = _mm512_loadu_si512(cr);
            __m512 o0 = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm512_castsi512_si256(old)), 16));
            __m512 o1 = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(old, 1)), 16));
            v0 = _mm512_fmadd_ps(o0, be, v0);
            v1 = _mm512_fmadd_ps(o1, be, v1);
        }
        __m512i out = _mm512_inserti64x4(_mm512_castsi256_si512(ct_f32x16_to_bf16(v0)),
                                         ct_f32x16_to_bf16(v1), 1);
        _mm512_storeu_si512(cr, out);
    }
    return 1;
}

AMX_TARGET static void amx_range(void *vc, int64_t begin, int64_t end) {
    const gctx *g = vc;
    ct_amx_configure(8, 16, 64);
    const int64_t Kp = g->K2 * 2; /* bf16 elements per packed A row */
    float buf[32 * 32] __attribute__((aligned(64)));
    for (int64_t t = begin; t < end; t++) {
        int64_t nb, mb;
        if (g->rows_outer) nb = t % g->nblocks, mb = t / g->nblocks;
        else nb = t / g->mblocks, mb = t % g->mblocks;
        const uint16_t *a;
        int64_t lda;
        if (mb < g->dblocks) { /* A in place: Kp == K, a whole number of tiles */
            a = g->direct + mb * 32 * g->lda;
            lda = g->lda;
        } else {
            a = (const uint16_t *)g->ap + (mb - g->dblocks) * 32 * Kp;
            lda = Kp;
        }
        const uint32_t *b = g->bp + nb * g->K2 * NR;
        int64_t m0 = mb * 32, n0 = nb * NR;
        float *acc = g->acc ? g->acc + m0 * g->ldacc + n0 : NULL;
        if (g->k0 == 0) CT_AMX_ZERO22();
        else CT_AMX_LOAD22(acc, g->ldacc);
        for (int64_t k = g->k0; k < g->k1; k += 32)
            CT_AMX_STEP22(a + k, a + 16 * lda + k, lda * 2, b + k / 2 * NR, b + k / 2 * NR + 16,
                          NR * 4);
        if (!g->last) {
            CT_AMX_STORE22(acc, g->ldacc);
            continue;
        }
        int rows = (int)(g->M - m0 < 32 ? g->M - m0 : 32);
        int cols = (int)(g->N - n0 < NR ? g->N - n0 : NR);
        if (rows == 32 && cols == 32 && g->c && g->group <= 0 && !g->bias &&
            g->alpha == 1.0f && g->beta == 0.0f) { /* straight into C */
            CT_AMX_STORE22(g->c + m0 * g->ldc + n0, g->ldc);
            continue;
        }
        CT_AMX_STORE22(buf, 32);
        if (rows == 32 && cols == 32 && store_block_fast(g, buf, m0, n0)) continue;
        __mmask16 k0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
        __mmask16 k1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
        __m512 al = _mm512_set1_ps(g->alpha);
        for (int r = 0; r < rows; r++)
            store_row(g, m0 + r, n0, _mm512_mul_ps(_mm512_load_ps(buf + r * 32), al),
                      _mm512_mul_ps(_mm512_load_ps(buf + r * 32 + 16), al), k0, k1);
    }
    _tile_release();
}
#endif

int ct_gemm_bf16_kind(void) {
#ifdef HAVE_BF16_KERNEL
    ct_isa_level l = ct_cpu_isa_level();
    if (l >= CT_ISA_AMX && ct_cpu_has_amx()) return CT_BF16_AMX;
    if (l >= CT_ISA_AVX512 && ct_cpu_has_avx512bf16()) return CT_BF16_AVX512;
#endif
    return 0;
}

/* Rows [r0, r1) of A into the AMX layout (row i: pairs 0..K2-1; zero rows past M). A
 * whose rows are adjacent in memory (rs == 1: a transposed operand such as gy^T of a
 * weight gradient) goes through 16 x 16 blocks of pairs transposed in registers. */
#ifdef HAVE_BF16_KERNEL
BF16_TARGET static void pack_rows_amx(uint32_t *ap, int64_t base, ct_bf16_mat A, int64_t M,
                                      int64_t K, int64_t K2, int64_t r0, int64_t r1) {
    /* row i goes to ap + (i - base) * K2 */
    int64_t i = r0;
    if (A.rs == 1 && A.cs != 1)
        for (; i + 16 <= r1 && i + 16 <= M; i += 16) {
            int64_t k2 = 0;
            for (; 2 * (k2 + 16) <= K; k2 += 16) {
                __m512i v[16];
                for (int j = 0; j < 16; j++) {
                    const uint16_t *p0 = A.p + i + 2 * (k2 + j) * A.cs;
                    __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p0));
                    __m512i hi =
                        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p0 + A.cs)));
                    v[j] = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
                }
                ct_transpose16(v); /* v[r] = pairs k2 .. k2+15 of row i + r */
                for (int r = 0; r < 16; r++)
                    _mm512_storeu_si512(ap + (i + r - base) * K2 + k2, v[r]);
            }
            for (int r = 0; r < 16; r++)
                for (int64_t k = k2; k < K2; k++)
                    ap[(i + r - base) * K2 + k] = pair_at(A.p, A.rs, A.cs, i + r, 2 * k, K);
        }
    for (; i < r1; i++) {
        if (i < M) pack_row(ap + (i - base) * K2, A, i, K, K2);
        else memset(ap + (i - base) * K2, 0, (size_t)K2 * 4);
    }
}
#endif

typedef struct {
    uint32_t *ap;
    ct_bf16_mat A;
    int64_t M, K, K2, row0; /* row0: the first packed row (the rows before are direct) */
    int amx;
} packa_ctx;

/* Row groups [begin, end) of 32 (AMX) or MR rows (AVX-512) of the packed A. */
static void packa_range(void *vc, int64_t begin, int64_t end) {
    const packa_ctx *c = vc;
#ifdef HAVE_BF16_KERNEL
    if (c->amx) {
        pack_rows_amx(c->ap, c->row0, c->A, c->M, c->K, c->K2, c->row0 + begin * 32,
                      c->row0 + end * 32);
        return;
    }
#endif
    const ct_bf16_mat A = c->A;
    for (int64_t mb = begin; mb < end; mb++) { /* blocks of MR rows, pair-interleaved */
        uint32_t *d = c->ap + mb * c->K2 * MR;
        int64_t k = 0;
        if ((mb + 1) * MR <= c->M) { /* a whole block: the pairs inside K without checks */
            const uint16_t *p0 = A.p + mb * MR * A.rs;
            for (; 2 * k + 1 < c->K; k++, d += MR)
                for (int r = 0; r < MR; r++) {
                    const uint16_t *e = p0 + r * A.rs + 2 * k * A.cs;
                    d[r] = (uint32_t)e[0] | (uint32_t)e[A.cs] << 16;
                }
        }
        for (; k < c->K2; k++, d += MR)
            for (int r = 0; r < MR; r++) {
                int64_t i = mb * MR + r;
                d[r] = i < c->M ? pair_at(A.p, A.rs, A.cs, i, 2 * k, c->K) : 0;
            }
    }
}

int ct_gemm_bf16_pack_a(ct_bf16_pack *pa, int64_t M, int64_t K, ct_bf16_mat A) {
    memset(pa, 0, sizeof *pa);
    int kind = ct_gemm_bf16_kind();
    if (!kind) return 1;
    int amx = kind == CT_BF16_AMX;
    int64_t K2 = amx ? (K + 31) / 32 * 16 : (K + 1) / 2;
    int64_t mblk = amx ? 32 : MR, mblocks = (M + mblk - 1) / mblk;
    /* AMX reads a row-major A with whole tiles along K in place, all but its tail rows */
    int64_t dblocks = amx && A.cs == 1 && K % 32 == 0 && A.rs >= K ? M / 32 : 0;
    int64_t packed = mblocks - dblocks;
    uint32_t *ap = NULL;
    if (packed > 0) {
        ap = ct_cpu_alloc((size_t)(packed * mblk * K2) * sizeof(uint32_t) + 64);
        if (!ap)
            return ct_error("bf16 GEMM: out of memory packing a %lld x %lld matrix",
                            (long long)M, (long long)K);
        packa_ctx pc = {ap, A, M, K, K2, dblocks * mblk, amx};
        double bytes = (double)(packed * mblk) * (double)K2 * 4;
        ct_parallel_for(packed, bytes < 2e5 ? packed : 1, packa_range, &pc);
    }
    *pa = (ct_bf16_pack){kind, M, K, K2, mblocks, ap, dblocks ? A.p : NULL, A.rs, dblocks};
    return 0;
}

void ct_gemm_bf16_pack_free(ct_bf16_pack *pa) {
    ct_cpu_free(pa->data);
    pa->data = NULL;
}

int ct_gemm_bf16_run(const ct_bf16_pack *pa, int64_t N, ct_bf16_mat B, float *C, uint16_t *Cb,
                     int64_t ldc, float alpha, float beta, const float *bias) {
    if (pa->M <= 0 || N <= 0) return 0;
    int64_t K2 = pa->K2, nblocks = (N + NR - 1) / NR;
    uint32_t *bp = ct_cpu_alloc((size_t)(nblocks * NR * K2) * sizeof(uint32_t) + 64);
    if (!bp)
        return ct_error("bf16 GEMM: out of memory packing a %lld x %lld matrix",
                        (long long)pa->K, (long long)N);
    packb_ctx pc = {bp, B, N, pa->K, K2};
    ct_parallel_for(nblocks, (double)N * (double)pa->K < 1e5 ? nblocks : 1, packb_range, &pc);
    int rc = ct_gemm_bf16_run_packed(pa, N, bp, C, Cb, ldc, alpha, beta, bias);
    ct_cpu_free(bp);
    return rc;
}

int ct_gemm_bf16_run_packed(const ct_bf16_pack *pa, int64_t N, const uint32_t *bp, float *C,
                            uint16_t *Cb, int64_t ldc, float alpha, float beta,
                            const float *bias) {
    return ct_gemm_bf16_run_grouped(pa, N, bp, C, Cb, ldc, 0, 0, alpha, beta, bias);
}

#ifdef HAVE_BF16_KERNEL
int ct_gemm_bf16_run_grouped(const ct_bf16_pack *pa, int64_t N, const uint32_t *bp, float *C,
                             uint16_t *Cb, int64_t ldc, int64_t group, int64_t gstride,
                             float alpha, float beta, const float *bias) {
    if (pa->M <= 0 || N <= 0) return 0;
    if (group > 0 && group % NR != 0)
        return ct_error("bf16 GEMM: column groups of %lld are not whole panels of %d",
                        (long long)group, NR);
    int64_t nblocks = (N + NR - 1) / NR;
    const int64_t Kp = pa->K2 * 2;
    gctx g = {pa->M, N, pa->K2, pa->data, bp, C, C ? NULL : Cb, ldc, alpha, beta, pa->mblocks,
              nblocks, bias, group, gstride, pa->direct, pa->lda, pa->dblocks, pa->M > N,
              0, Kp, NULL, 0, 1};
    double flops = 2.0 * (double)pa->M * (double)N * (double)pa->K;
    int64_t ntasks = pa->mblocks * nblocks;
    int64_t grain = flops < 4e5 ? ntasks : 1;
    if (pa->kind != CT_BF16_AMX) {
        ct_parallel_for(ntasks, grain, tile_range, &g);
        return 0;
    }
    /* A long K (a weight gradient: K = the batch's rows) in chunks, every block advanced
     * chunk by chunk: the chunk of A and B in use stays in the caches, and the sums wait in
     * a float32 buffer between chunks. */
    int64_t nch = Kp > 2 * BF16_KCHUNK ? (Kp + BF16_KCHUNK - 1) / BF16_KCHUNK : 1;
    if (nch == 1) {
        ct_parallel_for(ntasks, grain, amx_range, &g);
        return 0;
    }
    g.ldacc = nblocks * NR;
    g.acc = ct_cpu_alloc(sizeof(float) * (size_t)(pa->mblocks * 32 * g.ldacc));
    if (!g.acc)
        return ct_error("bf16 GEMM: out of memory for a %lld x %lld float32 accumulator",
                        (long long)pa->M, (long long)N);
    g.rows_outer = 1;
    int64_t kc = (Kp / 32 + nch - 1) / nch * 32;
    for (int64_t c = 0; c * kc < Kp; c++) {
        g.k0 = c * kc;
        g.k1 = g.k0 + kc < Kp ? g.k0 + kc : Kp;
        g.last = g.k1 == Kp;
        ct_parallel_for(ntasks, grain, amx_range, &g);
    }
    ct_cpu_free(g.acc);
    return 0;
}
#else
int ct_gemm_bf16_run_grouped(const ct_bf16_pack *pa, int64_t N, const uint32_t *bp, float *C,
                             uint16_t *Cb, int64_t ldc, int64_t group, int64_t gstride,
                             float alpha, float beta, const float *bias) {
    (void)pa, (void)N, (void)bp, (void)C, (void)Cb, (void)ldc, (void)group, (void)gstride;
    (void)alpha, (void)beta, (void)bias;
    return 1; /* no bf16 kernel in this build: the caller widens to float32 */
}
#endif

int ct_gemm_bf16(int64_t M, int64_t N, int64_t K, ct_bf16_mat A, ct_bf16_mat B, float *C,
                 int64_t ldc, float alpha, float beta) {
    if (M <= 0 || N <= 0) return ct_gemm_bf16_kind() ? 0 : 1;
    ct_bf16_pack pa;
    int rc = ct_gemm_bf16_pack_a(&pa, M, K, A);
    if (rc) return rc;
    rc = ct_gemm_bf16_run(&pa, N, B, C, NULL, ldc, alpha, beta, NULL);
    ct_gemm_bf16_pack_free(&pa);
    return rc;
}

/* ------------------------------------------------------- the bmm kernel's bf16 path */
#include "core/tensor_impl.h"
#include "cpu_kernels.h"

int cpu_bmm_lowp(ct_tensor *c, const ct_tensor *a, const ct_tensor *b, double alpha,
                 double beta) {
    if (a->dtype != CT_BFLOAT16 || b->dtype != CT_BFLOAT16 ||
        (c->dtype != CT_BFLOAT16 && c->dtype != CT_FLOAT32) || a->ndim != 3 || b->ndim != 3 ||
        c->ndim != 3 || !ct_gemm_bf16_available())
        return 1;
    int64_t B = c->shape[0], M = c->shape[1], N = c->shape[2], K = a->shape[2];
    if (B == 0 || M == 0 || N == 0 || K == 0) return 1; /* degenerate: the float32 path */
    const uint16_t *ap = (const uint16_t *)ct_ptr(a), *bp = (const uint16_t *)ct_ptr(b);
    int rc = 0;
    ct_bf16_pack pa = {0};
    for (int64_t i = 0; i < B && rc == 0; i++) {
        /* a broadcast over the batch (a weight) is packed once */
        if (i == 0 || a->shape[0] > 1) {
            ct_gemm_bf16_pack_free(&pa);
            ct_bf16_mat A = {ap + (a->shape[0] > 1 ? i * a->stride[0] : 0), a->stride[1],
                             a->stride[2]};
            if ((rc = ct_gemm_bf16_pack_a(&pa, M, K, A)) != 0) break;
        }
        ct_bf16_mat Bm = {bp + (b->shape[0] > 1 ? i * b->stride[0] : 0), b->stride[1], b->stride[2]};
        if (c->dtype == CT_FLOAT32)
            rc = ct_gemm_bf16_run(&pa, N, Bm, (float *)ct_ptr(c) + i * M * N, NULL, N,
                                  (float)alpha, (float)beta, NULL);
        else
            rc = ct_gemm_bf16_run(&pa, N, Bm, NULL, (uint16_t *)ct_ptr(c) + i * M * N, N,
                                  (float)alpha, (float)beta, NULL);
    }
    ct_gemm_bf16_pack_free(&pa);
    return rc;
}
