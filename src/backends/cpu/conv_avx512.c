/* AVX-512 instances of the convolution micro-kernels (conv_kern_template.h). Compiled for
 * any x86-64; only called after a run-time check of the CPU (conv_fast.c). */
#include "conv_fast.h"
#include "pool_fast.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define CF_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define CF_FN(name) name##_avx512
#define VL 16
typedef __m512 V;
#define VLOADU(p) _mm512_loadu_ps(p)
#define VSTOREU(p, v) _mm512_storeu_ps((p), (v))
#define VSET1(x) _mm512_set1_ps(x)
#define VZERO() _mm512_setzero_ps()
#define VFMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define VADD(a, b) _mm512_add_ps((a), (b))
#define VMAX(a, b) _mm512_max_ps((a), (b))
#define VLOADN(p, n) _mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1u), (p))
#define VSTOREN(p, v, n) _mm512_mask_storeu_ps((p), (__mmask16)((1u << (n)) - 1u), (v))
#define VHSUM(v) _mm512_reduce_add_ps(v)
#define VLOAD_SHIFT(p, lo, hi)                                                               \
    _mm512_maskz_loadu_ps((__mmask16)(((1u << (hi)) - 1u) & ~((1u << (lo)) - 1u)), (p))

/* Stride-2 gather of a slab row: input columns 2*(o+i) + s, i < 16, from two masked
 * loads (lanes outside [0, W) read as 0) and an even-lane permute. */
static inline __attribute__((always_inline)) CF_TARGET __mmask16 range_mask(int64_t a, int64_t W) {
    /* lanes i with 0 <= a + i < W */
    int64_t lo = a < 0 ? -a : 0, hi = W - a;
    if (hi > 16) hi = 16;
    if (lo >= hi) return 0;
    return (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}
static inline __attribute__((always_inline)) CF_TARGET void copy_s2(float *d, const float *src,
                                                                    int64_t o, int64_t s, int64_t W) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    int64_t a = 2 * o + s;
    __m512 lo = _mm512_maskz_loadu_ps(range_mask(a, W), src + a);
    __m512 hi = _mm512_maskz_loadu_ps(range_mask(a + 16, W), src + a + 16);
    _mm512_storeu_ps(d, _mm512_permutex2var_ps(lo, ev, hi));
}
#define CF_COPY_S2(d, src, o, s, W) copy_s2((d), (src), (o), (s), (W))

#include "conv_kern_template.h"

CF_FWD_INST(1, 1) CF_FWD_INST(1, 2) CF_FWD_INST(1, 3) CF_FWD_INST(1, 4)
CF_FWD_INST(2, 1) CF_FWD_INST(2, 2) CF_FWD_INST(2, 3) CF_FWD_INST(2, 4)
CF_FWD_INST(3, 1) CF_FWD_INST(3, 2) CF_FWD_INST(3, 3) CF_FWD_INST(3, 4)
CF_FWD_INST(4, 1) CF_FWD_INST(4, 2) CF_FWD_INST(4, 3) CF_FWD_INST(4, 4)
CF_FWD_INST(5, 1) CF_FWD_INST(5, 2) CF_FWD_INST(5, 3) CF_FWD_INST(5, 4)
CF_FWD_INST(6, 1) CF_FWD_INST(6, 2) CF_FWD_INST(6, 3) CF_FWD_INST(6, 4)
CF_FWD_INST(7, 1) CF_FWD_INST(7, 2) CF_FWD_INST(7, 3)
CF_FWD_INST(8, 1) CF_FWD_INST(8, 2) CF_FWD_INST(8, 3)

typedef void (*fwd_fn)(const cf_fwd_args *);
static const fwd_fn fwd_tab[8][4] = {
    {fwd_1_1_avx512, fwd_1_2_avx512, fwd_1_3_avx512, fwd_1_4_avx512},
    {fwd_2_1_avx512, fwd_2_2_avx512, fwd_2_3_avx512, fwd_2_4_avx512},
    {fwd_3_1_avx512, fwd_3_2_avx512, fwd_3_3_avx512, fwd_3_4_avx512},
    {fwd_4_1_avx512, fwd_4_2_avx512, fwd_4_3_avx512, fwd_4_4_avx512},
    {fwd_5_1_avx512, fwd_5_2_avx512, fwd_5_3_avx512, fwd_5_4_avx512},
    {fwd_6_1_avx512, fwd_6_2_avx512, fwd_6_3_avx512, fwd_6_4_avx512},
    {fwd_7_1_avx512, fwd_7_2_avx512, fwd_7_3_avx512, fwd_7_3_avx512},
    {fwd_8_1_avx512, fwd_8_2_avx512, fwd_8_3_avx512, fwd_8_3_avx512},
};

CF_WGT_INST(1, 1) CF_WGT_INST(1, 2) CF_WGT_INST(1, 3) CF_WGT_INST(1, 4) CF_WGT_INST(1, 5) CF_WGT_INST(1, 6)
CF_WGT_INST(2, 1) CF_WGT_INST(2, 2) CF_WGT_INST(2, 3) CF_WGT_INST(2, 4) CF_WGT_INST(2, 5) CF_WGT_INST(2, 6)
CF_WGT_INST(3, 1) CF_WGT_INST(3, 2) CF_WGT_INST(3, 3) CF_WGT_INST(3, 4) CF_WGT_INST(3, 5) CF_WGT_INST(3, 6)
CF_WGT_INST(4, 1) CF_WGT_INST(4, 2) CF_WGT_INST(4, 3) CF_WGT_INST(4, 4) CF_WGT_INST(4, 5) CF_WGT_INST(4, 6)

typedef void (*wgt_fn)(const cf_wgt_args *);
static const wgt_fn wgt_tab[4][6] = {
    {wgt_1_1_avx512, wgt_1_2_avx512, wgt_1_3_avx512, wgt_1_4_avx512, wgt_1_5_avx512, wgt_1_6_avx512},
    {wgt_2_1_avx512, wgt_2_2_avx512, wgt_2_3_avx512, wgt_2_4_avx512, wgt_2_5_avx512, wgt_2_6_avx512},
    {wgt_3_1_avx512, wgt_3_2_avx512, wgt_3_3_avx512, wgt_3_4_avx512, wgt_3_5_avx512, wgt_3_6_avx512},
    {wgt_4_1_avx512, wgt_4_2_avx512, wgt_4_3_avx512, wgt_4_4_avx512, wgt_4_5_avx512, wgt_4_6_avx512},
};

/* Forward tile of MR channels over two output rows of 32 pixels (4 vectors), then bias,
 * 2x2 stride-2 max pooling with window codes and ReLU (as mp22_fwd_avx512 in cpu_pool.c:
 * first maximum in row-major order, NaN always taken, CPU_POOL_NOGRAD where the ReLU
 * clamps). */
static inline __attribute__((always_inline)) CF_TARGET void fwd_pool_body(const cf_fwd_args *a,
                                                                          const int MR) {
    V acc[6][4];
    const int64_t K = a->K;
    const float *A = a->A;
    const int64_t *koff = a->koff;
    const float *bp0 = a->bp[0], *bp1 = a->bp[1], *bp2 = a->bp[2], *bp3 = a->bp[3];
#pragma GCC unroll 6
    for (int m = 0; m < MR; m++) {
        V b0 = a->bias ? VSET1(a->bias[m]) : VZERO();
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) acc[m][v] = b0;
    }
    for (int64_t k = 0; k < K; k++) {
        const int64_t o = koff[k];
        V b[4] = {VLOADU(bp0 + o), VLOADU(bp1 + o), VLOADU(bp2 + o), VLOADU(bp3 + o)};
#pragma GCC unroll 6
        for (int m = 0; m < MR; m++) {
            V w = VSET1(A[m]);
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) acc[m][v] = VFMA(w, b[v], acc[m][v]);
        }
        A += MR;
    }
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
    const __m512 z = _mm512_setzero_ps();
#pragma GCC unroll 6
    for (int m = 0; m < MR; m++) {
        __m512 v0 = _mm512_permutex2var_ps(acc[m][0], ev, acc[m][1]);
        __m512 v1 = _mm512_permutex2var_ps(acc[m][0], od, acc[m][1]);
        __m512 v2 = _mm512_permutex2var_ps(acc[m][2], ev, acc[m][3]);
        __m512 v3 = _mm512_permutex2var_ps(acc[m][2], od, acc[m][3]);
        __m512 mx = v0;
        __m512i code = _mm512_setzero_si512();
        __mmask16 k = _mm512_cmp_ps_mask(v1, mx, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v1, v1, _CMP_UNORD_Q);
        mx = _mm512_mask_mov_ps(mx, k, v1);
        code = _mm512_mask_mov_epi32(code, k, _mm512_set1_epi32(1));
        k = _mm512_cmp_ps_mask(v2, mx, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v2, v2, _CMP_UNORD_Q);
        mx = _mm512_mask_mov_ps(mx, k, v2);
        code = _mm512_mask_mov_epi32(code, k, _mm512_set1_epi32(2));
        k = _mm512_cmp_ps_mask(v3, mx, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v3, v3, _CMP_UNORD_Q);
        mx = _mm512_mask_mov_ps(mx, k, v3);
        code = _mm512_mask_mov_epi32(code, k, _mm512_set1_epi32(3));
        __mmask16 live = _mm512_cmp_ps_mask(mx, z, _CMP_GT_OQ);
        _mm512_storeu_ps(a->pyp + m * a->ldp, _mm512_max_ps(z, mx));
        if (a->pcp)
            _mm_storeu_si128((__m128i *)(a->pcp + m * a->ldp),
                             _mm512_cvtepi32_epi8(_mm512_mask_mov_epi32(
                                 _mm512_set1_epi32(CPU_POOL_NOGRAD), live, code)));
    }
}
#define FWD_POOL_INST(MR)                                                                    \
    static CF_TARGET void fwd_pool_##MR(const cf_fwd_args *a) { fwd_pool_body(a, MR); }
FWD_POOL_INST(1) FWD_POOL_INST(2) FWD_POOL_INST(3) FWD_POOL_INST(4) FWD_POOL_INST(5)
FWD_POOL_INST(6)
static const fwd_fn fwd_pool_tab[6] = {fwd_pool_1, fwd_pool_2, fwd_pool_3,
                                       fwd_pool_4, fwd_pool_5, fwd_pool_6};
static void fwd_pool_dispatch(int mr, const cf_fwd_args *a) { fwd_pool_tab[mr - 1](a); }

static void fwd_dispatch(int mr, int nv, const cf_fwd_args *a) { fwd_tab[mr - 1][nv - 1](a); }
static void wgt_dispatch(int mr, int nj, const cf_wgt_args *a) { wgt_tab[mr - 1][nj - 1](a); }

const cf_isa cf_isa_avx512 = {
    .name = "avx512",
    .vl = VL,
    .mr_max = 8,
    .nv_max = 3,
    .wm_max = 4,
    .wj_max = 6,
    .fwd = fwd_dispatch,
    .wgt = wgt_dispatch,
    .fwd_pool = fwd_pool_dispatch,
    .copy_slab = copy_slab_avx512,
};

#else
const cf_isa cf_isa_avx512 = {.name = NULL};
#endif
