/* bfloat16 GEMM on AVX512_BF16 (vdpbf16ps: 16 float32 lanes, each += the dot product of a
 * pair of bf16 values), float32 accumulation.
 *
 *   C (M x N, float32) = alpha * A (M x K) @ B (K x N) + beta * C
 *
 * A and B are bf16 matrices with any strides. B is packed into panels of 32 columns whose
 * elements are (k, k+1) pairs, A into blocks of 6 rows of pairs; a 6 x 32 micro-kernel
 * keeps 12 zmm accumulators. An odd K is padded with a zero pair. Where the CPU lacks the
 * instruction (or CTORCH_CPU_ISA asks for less than AVX-512), ct_gemm_bf16_available()
 * is 0 and callers widen to float32 (OpenBLAS's FMA kernels) instead. */
#include "cpu_gemm_bf16.h"

#include "cpu_isa.h"
#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"

#include <stdlib.h>
#include <string.h>

#define MR 6
#define NR 32

#if defined(__x86_64__) && defined(__GNUC__) && (__GNUC__ >= 10 || defined(__clang__))
#include <immintrin.h>
#define HAVE_BF16_KERNEL 1
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

int ct_gemm_bf16_available(void) {
#ifdef HAVE_BF16_KERNEL
    return ct_cpu_isa_level() >= CT_ISA_AVX512 && ct_cpu_has_avx512bf16();
#else
    return 0;
#endif
}

#ifdef HAVE_BF16_KERNEL
typedef struct {
    int64_t M, N, K2;
    const uint32_t *ap; /* [ceil(M/MR)][K2][MR] pairs */
    const uint32_t *bp; /* [ceil(N/NR)][K2][NR] pairs */
    float *c;
    int64_t ldc;
    float alpha, beta;
    int64_t mblocks, nblocks;
} gctx;

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
        __m512 al = _mm512_set1_ps(g->alpha), be = _mm512_set1_ps(g->beta);
        for (int r = 0; r < rows; r++) {
            float *c = g->c + (m0 + r) * g->ldc + n0;
            __m512 v0 = _mm512_mul_ps(acc[r][0], al), v1 = _mm512_mul_ps(acc[r][1], al);
            if (g->beta != 0) {
                v0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k0, c), be, v0);
                v1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k1, c + 16), be, v1);
            }
            _mm512_mask_storeu_ps(c, k0, v0);
            _mm512_mask_storeu_ps(c + 16, k1, v1);
        }
    }
}
#endif

/* The pair (m[i][2k], m[i][2k+1]) of a strided bf16 matrix, 0 past the end. */
static inline uint32_t pair_at(const uint16_t *p, int64_t rs, int64_t cs, int64_t i, int64_t k,
                               int64_t K) {
    uint32_t lo = p[i * rs + k * cs];
    uint32_t hi = k + 1 < K ? p[i * rs + (k + 1) * cs] : 0;
    return lo | hi << 16;
}

#ifdef HAVE_BF16_KERNEL
int ct_gemm_bf16(int64_t M, int64_t N, int64_t K, ct_bf16_mat A, ct_bf16_mat B, float *C,
                 int64_t ldc, float alpha, float beta) {
    if (!ct_gemm_bf16_available()) return 1;
    if (M <= 0 || N <= 0) return 0;
    int64_t K2 = (K + 1) / 2, mblocks = (M + MR - 1) / MR, nblocks = (N + NR - 1) / NR;
    size_t asz = (size_t)(mblocks * MR * K2), bsz = (size_t)(nblocks * NR * K2);
    uint32_t *ap = malloc((asz + bsz) * sizeof(uint32_t) + 1);
    if (!ap) return ct_error("bf16 GEMM: out of memory packing %lld x %lld x %lld",
                             (long long)M, (long long)N, (long long)K);
    uint32_t *bp = ap + asz;
    for (int64_t mb = 0; mb < mblocks; mb++)
        for (int64_t k = 0; k < K2; k++)
            for (int r = 0; r < MR; r++) {
                int64_t i = mb * MR + r;
                ap[(mb * K2 + k) * MR + r] = i < M ? pair_at(A.p, A.rs, A.cs, i, 2 * k, K) : 0;
            }
    /* B's pairs run down a column: transpose the roles of the strides. */
    for (int64_t nb = 0; nb < nblocks; nb++)
        for (int64_t k = 0; k < K2; k++)
            for (int c = 0; c < NR; c++) {
                int64_t j = nb * NR + c;
                bp[(nb * K2 + k) * NR + c] = j < N ? pair_at(B.p, B.cs, B.rs, j, 2 * k, K) : 0;
            }
    gctx g = {M, N, K2, ap, bp, C, ldc, alpha, beta, mblocks, nblocks};
    double flops = 2.0 * (double)M * (double)N * (double)K;
    ct_parallel_for(mblocks * nblocks, flops < 4e5 ? mblocks * nblocks : 1, tile_range, &g);
    free(ap);
    return 0;
}
#else
int ct_gemm_bf16(int64_t M, int64_t N, int64_t K, ct_bf16_mat A, ct_bf16_mat B, float *C,
                 int64_t ldc, float alpha, float beta) {
    (void)M;
    (void)N;
    (void)K;
    (void)A;
    (void)B;
    (void)C;
    (void)ldc;
    (void)alpha;
    (void)beta;
    return 1; /* no bf16 kernel in this build: the caller widens to float32 */
}
#endif

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
    float *tmp = NULL;
    if (c->dtype == CT_BFLOAT16 && !(tmp = malloc(sizeof(float) * (size_t)(M * N))))
        return ct_error("bmm: out of memory for a %lld x %lld float32 tile", (long long)M,
                        (long long)N);
    const uint16_t *ap = (const uint16_t *)ct_ptr(a), *bp = (const uint16_t *)ct_ptr(b);
    int rc = 0;
    for (int64_t i = 0; i < B && rc == 0; i++) {
        ct_bf16_mat A = {ap + (a->shape[0] > 1 ? i * a->stride[0] : 0), a->stride[1], a->stride[2]};
        ct_bf16_mat Bm = {bp + (b->shape[0] > 1 ? i * b->stride[0] : 0), b->stride[1], b->stride[2]};
        if (c->dtype == CT_FLOAT32) {
            rc = ct_gemm_bf16(M, N, K, A, Bm, (float *)ct_ptr(c) + i * M * N, N, (float)alpha,
                              (float)beta);
            continue;
        }
        uint16_t *cp = (uint16_t *)ct_ptr(c) + i * M * N;
        if (beta != 0)
            for (int64_t j = 0; j < M * N; j++) tmp[j] = ct_bf16_to_f32(cp[j]);
        rc = ct_gemm_bf16(M, N, K, A, Bm, tmp, N, (float)alpha, (float)beta);
        if (rc == 0)
            for (int64_t j = 0; j < M * N; j++) cp[j] = ct_f32_to_bf16(tmp[j]);
    }
    free(tmp);
    return rc;
}
