/* AVX-512 helpers shared by the CPU kernels (static inline; x86-64 with GCC or Clang). A
 * function that uses them carries at least CT_V512's target attribute. */
#ifndef CT_SIMD512_H
#define CT_SIMD512_H

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define CT_HAVE_SIMD512 1
#define CT_V512 __attribute__((target("avx512f,avx512bw,avx512vl")))

/* Transpose of a 16 x 16 block of 32-bit elements held in r[0..15]. */
CT_V512 static inline void ct_transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++)
        for (int h = 0; h < 2; h++) {
            r[4 * i + 2 * h] = _mm512_unpacklo_epi64(t[4 * i + h], t[4 * i + 2 + h]);
            r[4 * i + 2 * h + 1] = _mm512_unpackhi_epi64(t[4 * i + h], t[4 * i + 2 + h]);
        }
    /* r[4i + q] now holds, in each 128-bit lane L, column 4L + q of rows 4i..4i+3 */
    for (int i = 0; i < 2; i++)
        for (int q = 0; q < 4; q++) {
            t[8 * i + q] = _mm512_shuffle_i32x4(r[8 * i + q], r[8 * i + 4 + q], 0x88);
            t[8 * i + 4 + q] = _mm512_shuffle_i32x4(r[8 * i + q], r[8 * i + 4 + q], 0xdd);
        }
    for (int q = 0; q < 8; q++) {
        r[q] = _mm512_shuffle_i32x4(t[q], t[8 + q], 0x88);
        r[8 + q] = _mm512_shuffle_i32x4(t[q], t[8 + q], 0xdd);
    }
}

/* 16 float32 to bfloat16, rounded to nearest even, every NaN to 0xffff (as src/core/half.h). */
CT_V512 static inline __m256i ct_f32x16_to_bf16(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    r = _mm512_srli_epi32(r, 16);
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0xffff));
    return _mm512_cvtepi32_epi16(r);
}
#endif
#endif
