/* ct_vexpf: exp(x) in float that compilers vectorise, shared by the CPU kernels that
 * exponentiate arrays (softmax, cross-entropy, attention, GELU), and on x86 with GCC or
 * clang its 8-wide AVX2+FMA form ct_exp8_avx2 (callers check ct_cpu_isa_level() >=
 * CT_ISA_AVX2 before calling it). Include after <math.h>, <stdint.h> and <string.h>. */
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

/* exp of 8 floats: ct_vexpf's steps with intrinsics, for x <= 88.37 only (no overflow
 * branch: the callers' arguments are <= 0 or, in GELU, below 1). exp(x < -103.97) = 0, exp(-inf) = 0, NaN stays.
 * With FMA the rounding differs from ct_vexpf by an ulp or so. */
CT_AVX2_FMA static inline __m256 ct_exp8_avx2(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-103.972076f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 xc = _mm256_max_ps(x, lo);
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i n = _mm256_cvtps_epi32(fx);
    __m256i n1 = _mm256_srai_epi32(n, 1), n2 = _mm256_sub_epi32(n, n1);
    __m256i b1 = _mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23);
    __m256i b2 = _mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(b1)), _mm256_castsi256_ps(b2));
    y = _mm256_andnot_ps(under, y);                                   /* exp(-inf) = 0 */
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q)); /* NaN stays */
}
#endif

#endif
