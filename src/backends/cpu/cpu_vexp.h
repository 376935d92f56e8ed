/* ct_vexpf: exp(x) in float that compilers vectorise, shared by the CPU kernels that
 * exponentiate arrays (softmax, cross-entropy, attention). Include after <math.h>,
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

#endif
