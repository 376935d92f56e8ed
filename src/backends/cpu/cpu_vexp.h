/* ct_vexpf: exp(x) in float that compilers vectorise, shared by the CPU kernels that
 * exponentiate arrays (softmax, cross-entropy, attention, GELU), and on x86 with GCC or
 * clang its 8-wide AVX2+FMA form ct_exp8_avx2 and GELU's 8-wide cdf and derivative (callers
 * check ct_cpu_isa_level() >= CT_ISA_AVX2 before calling these). Include after <math.h>,
 * <stdint.h> and <string.h>. */
#ifndef CT_CPU_VEXP_H
#define CT_CPU_VEXP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) in float, vectorisable (no calls, no branches): Cephes expf range reduction
 * x = n ln2 + r, degree-6 polynomial for e^r, then 2^n applied in two factors so that
 * subnormal results come out right. Max relative error ~1e-7 over the normal range;
 * exp(-inf) = 0, exp(+inf) = inf, NaN propagates. */
static inline float ct_vexpf(float x) {
    const float hi = 88.37f, lo = -103.972076f;
    float xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    float fx = xc * 1.44269504088896341f;
    fx = (fx + 12582912.0f) - 12582912.0f; /* round to nearest integer */
    float r = xc - fx * 0.693359375f;
    r = r - fx * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t n = (int32_t)fx, n1 = n >> 1, n2 = n - n1;
    int32_t b1 = (n1 + 127) << 23, b2 = (n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    float y = p * s1 * s2;
    y = x > hi ? INFINITY : y;
    y = x < lo ? 0.0f : y;
    return x != x ? x : y;
}

/* GELU's Gaussian cdf and pdf in float, vectorisable as ct_vexpf. Phi(x) = 0.5 erfc(-x/sqrt2)
 * with erfc(z), z >= 0, from Numerical Recipes' Chebyshev fit (erfcc: fractional error below
 * 1.2e-7 for every z): t = 1 / (1 + z/2), erfc(z) = t exp(-z^2 + P(t)). The tail
 * is taken on the side where it is small, so Phi keeps its relative accuracy for x << 0
 * (where 1 + erf(x/sqrt2) would cancel). z^2 is taken as x*x/2, rounded once: float32's
 * exp of that rounded argument is the error floor in the tail, 2^-24 x^2/2 relative. pdf (if not NULL) = exp(-x^2/2) / sqrt(2 pi),
 * sharing exp(-z^2). Replaces libm's erff/erf, which compilers do not vectorise. */
static inline float ct_verfc_poly(float t) {
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    return p * t - 1.26551223f;
}

static inline float ct_vgelu_cdf(float x) {
    float z = fabsf(x) * 0.70710678118654752f;
    float t = 1.0f / (1.0f + 0.5f * z);
    float h = 0.5f * t * ct_vexpf(ct_verfc_poly(t) - 0.5f * x * x); /* 0.5 erfc(|x|/sqrt2) */
    return x < 0.0f ? h : 1.0f - h;
}

/* GELU's derivative Phi(x) + x phi(x), with one exp(-z^2) shared by both terms. */
static inline float ct_vgelu_grad(float x) {
    float z = fabsf(x) * 0.70710678118654752f;
    float t = 1.0f / (1.0f + 0.5f * z);
    float e = ct_vexpf(-0.5f * x * x); /* exp(-z^2), z^2 rounded once */
    float h = 0.5f * t * e * ct_vexpf(ct_verfc_poly(t));
    float cdf = x < 0.0f ? h : 1.0f - h;
    return cdf + x * (0.39894228040143268f * e);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CT_VEXP_X86 1
#define CT_AVX2_FMA __attribute__((target("avx2,fma")))

/* A maskload/maskstore mask of the first n lanes (0 <= n <= 8). */
CT_AVX2_FMA static inline __m256i ct_lanes8_avx2(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ct_vexpf's range reduction and polynomial of 8 floats, x within ct_vexpf's clamps:
 * x = n ln2 + r, returns e^r (in [0.7, 1.42]) and n in *n. */
/* ct_vexpf's reduction x = fx ln2 + r (fx = round(x log2 e), given) and polynomial
 * e^r, written once over a vector width's intrinsics (V: _mm256 or _mm512). */
#define CT_EXP_POLY(V, VT, x, fx, out)                                                      \
    do {                                                                                   \
        VT r_ = V##_fnmadd_ps(fx, V##_set1_ps(0.693359375f), x);                           \
        r_ = V##_fnmadd_ps(fx, V##_set1_ps(-2.12194440e-4f), r_);                          \
        VT p_ = V##_set1_ps(1.9875691500e-4f);                                             \
        p_ = V##_fmadd_ps(p_, r_, V##_set1_ps(1.3981999507e-3f));                          \
        p_ = V##_fmadd_ps(p_, r_, V##_set1_ps(8.3334519073e-3f));                          \
        p_ = V##_fmadd_ps(p_, r_, V##_set1_ps(4.1665795894e-2f));                          \
        p_ = V##_fmadd_ps(p_, r_, V##_set1_ps(1.6666665459e-1f));                          \
        p_ = V##_fmadd_ps(p_, r_, V##_set1_ps(5.0000001201e-1f));                          \
        (out) = V##_fmadd_ps(V##_mul_ps(p_, r_), r_, V##_add_ps(r_, V##_set1_ps(1.0f)));   \
    } while (0)

CT_AVX2_FMA static inline __m256 ct_exp8_reduce_avx2(__m256 x, __m256i *n) {
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 e;
    CT_EXP_POLY(_mm256, __m256, x, fx, e);
    *n = _mm256_cvtps_epi32(fx);
    return e;
}

/* p 2^k for |k| <= 126 with p 2^k normal: added to p's exponent bits (exact, as the product
 * by 2^k would be). */
CT_AVX2_FMA static inline __m256 ct_exp8_ldexp_avx2(__m256 p, __m256i k) {
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(k, 23)));
}

/* exp of 8 floats, ct_vexpf's steps with intrinsics, for x <= 88.37 only (no overflow
 * branch: the callers' arguments are <= 0 or, in GELU, below 1), but for NaN: exp(NaN) is
 * some finite value here, for callers whose result is NaN anyway when x is.
 * exp(x < -103.97) = 0, exp(-inf) = 0. 2^n is applied in two steps as in ct_vexpf (the
 * second a product, so that subnormal results round right). With FMA the rounding
 * differs from ct_vexpf by an ulp or so. */
CT_AVX2_FMA static inline __m256 ct_exp8_nonan_avx2(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-103.972076f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256i n;
    const __m256 p = ct_exp8_reduce_avx2(_mm256_max_ps(x, lo), &n); /* max(NaN, lo) = lo */
    const __m256i n1 = _mm256_srai_epi32(n, 1), n2 = _mm256_sub_epi32(n, n1);
    const __m256i b2 = _mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23);
    const __m256 y = _mm256_mul_ps(ct_exp8_ldexp_avx2(p, n1), _mm256_castsi256_ps(b2));
    return _mm256_andnot_ps(under, y); /* exp(-inf) = 0 */
}

/* ct_exp8_nonan_avx2, NaN propagated. */
CT_AVX2_FMA static inline __m256 ct_exp8_avx2(__m256 x) {
    return _mm256_blendv_ps(ct_exp8_nonan_avx2(x), x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

/* exp of 8 finite floats in [-87, 88] (normal results): one 2^n step, no clamps. The same
 * values as ct_exp8_avx2 there. */
CT_AVX2_FMA static inline __m256 ct_exp8_normal_avx2(__m256 x) {
    __m256i n;
    const __m256 p = ct_exp8_reduce_avx2(x, &n);
    return ct_exp8_ldexp_avx2(p, n);
}

/* ct_verfc_poly's Horner steps with FMA over a vector width's intrinsics (V: _mm256 or
 * _mm512), t given, into out. */
#define CT_ERFC_POLY(V, VT, t, out)                                                         \
    do {                                                                                   \
        VT p_ = V##_set1_ps(0.17087277f);                                                  \
        p_ = V##_fmadd_ps(p_, t, V##_set1_ps(-0.82215223f));                               \
        p_ = V##_fmadd_ps(p_, t, V##_set1_ps(1.48851587f));                                \
        p_ = V##_fmadd_ps(p_, t, V##_set1_ps(-1.13520398f));                               \
        p_ = V##_fmadd_ps(p_, t, V##_set1_ps(0.27886807f));                                \
        p_ = V##_fmadd_ps(p_, t, V##_set1_ps(-0.18628806f));                               \
        p_ = V##_fmadd_ps(p_, t, V##_set1_ps(0.09678418f));                                \
        p_ = V##_fmadd_ps(p_, t, V##_set1_ps(0.37409196f));                                \
        p_ = V##_fmadd_ps(p_, t, V##_set1_ps(1.00002368f));                                \
        (out) = V##_fmadd_ps(p_, t, V##_set1_ps(-1.26551223f));                            \
    } while (0)

/* ct_verfc_poly of 8 floats (Horner with FMA). */
CT_AVX2_FMA static inline __m256 ct_verfc_poly8_avx2(__m256 t) {
    __m256 p;
    CT_ERFC_POLY(_mm256, __m256, t, p);
    return p;
}

/* t = 1 / (1 + |x|/(2 sqrt2)) and -x^2/2 (rounded once, as the scalar code's 0.5f*x*x:
 * the product by 0.5 is exact) of 8 floats: the common start of the two below. */
CT_AVX2_FMA static inline __m256 ct_gelu_t8_avx2(__m256 x, __m256 *mhx2) {
    const __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    const __m256 z = _mm256_mul_ps(ax, _mm256_set1_ps(0.70710678118654752f));
    *mhx2 = _mm256_mul_ps(_mm256_mul_ps(x, x), _mm256_set1_ps(-0.5f));
    return _mm256_div_ps(_mm256_set1_ps(1.0f),
                         _mm256_fmadd_ps(z, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
}

/* x * ct_vgelu_cdf(x) (GELU's forward) of 8 floats, the same formula with FMA. */
CT_AVX2_FMA static inline __m256 ct_gelu8_avx2(__m256 x) {
    __m256 mhx2;
    const __m256 t = ct_gelu_t8_avx2(x, &mhx2);
    /* NaN x gives a NaN product below without exp's NaN step */
    const __m256 e = ct_exp8_nonan_avx2(_mm256_add_ps(ct_verfc_poly8_avx2(t), mhx2));
    const __m256 h = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), t), e);
    const __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    const __m256 cdf = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), h), h, neg);
    return _mm256_mul_ps(x, cdf);
}

/* ct_vgelu_grad (GELU's derivative Phi(x) + x phi(x)) of 8 floats, the same formula with
 * FMA: one exp(-x^2/2) shared by both terms. exp(P(t)) has P(t) in [-1.27, 0] for t in
 * [0, 1] (NaN only where x is NaN, which makes the result NaN anyway): the clamp-free exp. */
CT_AVX2_FMA static inline __m256 ct_gelu_grad8_avx2(__m256 x) {
    __m256 mhx2;
    const __m256 t = ct_gelu_t8_avx2(x, &mhx2);
    const __m256 e = ct_exp8_nonan_avx2(mhx2);
    const __m256 h = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), t), e),
                                   ct_exp8_normal_avx2(ct_verfc_poly8_avx2(t)));
    const __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    const __m256 cdf = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), h), h, neg);
    return _mm256_fmadd_ps(x, _mm256_mul_ps(_mm256_set1_ps(0.39894228040143268f), e), cdf);
}
/* ------------------------------------------------------------------ AVX-512
 * The same functions 16 wide: lane by lane the same operations in the same order as the
 * 8-wide forms above (IEEE division, FMA, the same constants), so every value equals the
 * AVX2 kernels' bit for bit; masks replace the blends. */
#define CT_AVX512_FMA __attribute__((target("avx512f,avx512vl,avx2,fma")))

/* ct_exp8_nonan_avx2, 16 wide. */
CT_AVX512_FMA static inline __m512 ct_exp16_nonan_avx512(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-103.972076f);
    const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    const __m512 xc = _mm512_max_ps(x, lo); /* max(NaN, lo) = lo */
    const __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 p;
    CT_EXP_POLY(_mm512, __m512, xc, fx, p);
    const __m512i n = _mm512_cvtps_epi32(fx);
    const __m512i n1 = _mm512_srai_epi32(n, 1), n2 = _mm512_sub_epi32(n, n1);
    const __m512i b2 = _mm512_slli_epi32(_mm512_add_epi32(n2, _mm512_set1_epi32(127)), 23);
    const __m512 p1 = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(n1, 23)));
    return _mm512_maskz_mov_ps((__mmask16)~under, _mm512_mul_ps(p1, _mm512_castsi512_ps(b2)));
}

/* ct_exp8_normal_avx2, 16 wide (finite x in [-87, 88]). */
CT_AVX512_FMA static inline __m512 ct_exp16_normal_avx512(__m512 x) {
    const __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 p;
    CT_EXP_POLY(_mm512, __m512, x, fx, p);
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p),
                                                _mm512_slli_epi32(_mm512_cvtps_epi32(fx), 23)));
}

/* ct_gelu_t8_avx2, 16 wide. */
CT_AVX512_FMA static inline __m512 ct_gelu_t16_avx512(__m512 x, __m512 *mhx2) {
    const __m512 ax = _mm512_abs_ps(x);
    const __m512 z = _mm512_mul_ps(ax, _mm512_set1_ps(0.70710678118654752f));
    *mhx2 = _mm512_mul_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(-0.5f));
    return _mm512_div_ps(_mm512_set1_ps(1.0f),
                         _mm512_fmadd_ps(z, _mm512_set1_ps(0.5f), _mm512_set1_ps(1.0f)));
}

/* Phi(x) from h = 0.5 erfc(|x|/sqrt2): h where x < 0, 1 - h elsewhere (as the blends). */
CT_AVX512_FMA static inline __m512 ct_gelu_cdf16_avx512(__m512 x, __m512 h) {
    const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(neg, _mm512_sub_ps(_mm512_set1_ps(1.0f), h), h);
}

/* ct_gelu8_avx2 (GELU's forward), 16 wide. */
CT_AVX512_FMA static inline __m512 ct_gelu16_avx512(__m512 x) {
    __m512 mhx2, poly;
    const __m512 t = ct_gelu_t16_avx512(x, &mhx2);
    CT_ERFC_POLY(_mm512, __m512, t, poly);
    const __m512 e = ct_exp16_nonan_avx512(_mm512_add_ps(poly, mhx2));
    const __m512 h = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), t), e);
    return _mm512_mul_ps(x, ct_gelu_cdf16_avx512(x, h));
}

/* ct_gelu_grad8_avx2 (GELU's derivative), 16 wide. */
CT_AVX512_FMA static inline __m512 ct_gelu_grad16_avx512(__m512 x) {
    __m512 mhx2, poly;
    const __m512 t = ct_gelu_t16_avx512(x, &mhx2);
    const __m512 e = ct_exp16_nonan_avx512(mhx2);
    CT_ERFC_POLY(_mm512, __m512, t, poly);
    const __m512 h = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), t), e),
                                   ct_exp16_normal_avx512(poly));
    return _mm512_fmadd_ps(x, _mm512_mul_ps(_mm512_set1_ps(0.39894228040143268f), e),
                           ct_gelu_cdf16_avx512(x, h));
}
#endif

#endif
