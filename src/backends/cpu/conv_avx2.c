/* AVX2+FMA instances of the convolution micro-kernels (conv_kern_template.h), for x86-64 CPUs
 * without AVX-512. Only called after a run-time check of the CPU (conv_fast.c). */
#include "conv_fast.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define CF_TARGET __attribute__((target("avx2,fma")))
#define CF_FN(name) name##_avx2
#define VL 8
typedef __m256 V;

CF_TARGET static inline __m256i lane_mask(int lo, int hi) {
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i ge = _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(lo - 1));
    __m256i lt = _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), idx);
    return _mm256_and_si256(ge, lt);
}
CF_TARGET static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define VLOADU(p) _mm256_loadu_ps(p)
#define VSTOREU(p, v) _mm256_storeu_ps((p), (v))
#define VSET1(x) _mm256_set1_ps(x)
#define VZERO() _mm256_setzero_ps()
#define VFMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define VADD(a, b) _mm256_add_ps((a), (b))
#define VMAX(a, b) _mm256_max_ps((a), (b))
#define VLOADN(p, n) _mm256_maskload_ps((p), lane_mask(0, (n)))
#define VSTOREN(p, v, n) _mm256_maskstore_ps((p), lane_mask(0, (n)), (v))
#define VHSUM(v) hsum256(v)
#define VLOAD_SHIFT(p, lo, hi) _mm256_maskload_ps((p), lane_mask((lo), (hi)))

#include "conv_kern_template.h"

CF_FWD_INST(1, 1) CF_FWD_INST(1, 2) CF_FWD_INST(1, 3)
CF_FWD_INST(2, 1) CF_FWD_INST(2, 2) CF_FWD_INST(2, 3)
CF_FWD_INST(3, 1) CF_FWD_INST(3, 2) CF_FWD_INST(3, 3)
CF_FWD_INST(4, 1) CF_FWD_INST(4, 2) CF_FWD_INST(4, 3)

typedef void (*fwd_fn)(const cf_fwd_args *);
static const fwd_fn fwd_tab[4][3] = {
    {fwd_1_1_avx2, fwd_1_2_avx2, fwd_1_3_avx2},
    {fwd_2_1_avx2, fwd_2_2_avx2, fwd_2_3_avx2},
    {fwd_3_1_avx2, fwd_3_2_avx2, fwd_3_3_avx2},
    {fwd_4_1_avx2, fwd_4_2_avx2, fwd_4_3_avx2},
};

CF_WGT_INST(1, 1) CF_WGT_INST(1, 2) CF_WGT_INST(1, 3)
CF_WGT_INST(2, 1) CF_WGT_INST(2, 2) CF_WGT_INST(2, 3)
CF_WGT_INST(3, 1) CF_WGT_INST(3, 2) CF_WGT_INST(3, 3)

typedef void (*wgt_fn)(const cf_wgt_args *);
static const wgt_fn wgt_tab[3][3] = {
    {wgt_1_1_avx2, wgt_1_2_avx2, wgt_1_3_avx2},
    {wgt_2_1_avx2, wgt_2_2_avx2, wgt_2_3_avx2},
    {wgt_3_1_avx2, wgt_3_2_avx2, wgt_3_3_avx2},
};

static void fwd_dispatch(int mr, int nv, const cf_fwd_args *a) { fwd_tab[mr - 1][nv - 1](a); }
static void wgt_dispatch(int mr, int nj, const cf_wgt_args *a) { wgt_tab[mr - 1][nj - 1](a); }

const cf_isa cf_isa_avx2 = {
    .name = "avx2",
    .vl = VL,
    .mr_max = 4,
    .nv_max = 3,
    .wm_max = 3,
    .wj_max = 3,
    .fwd = fwd_dispatch,
    .wgt = wgt_dispatch,
    .copy_slab = copy_slab_avx2,
};

#else
const cf_isa cf_isa_avx2 = {.name = NULL};
#endif
