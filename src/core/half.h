/* bfloat16 / float16 <-> float conversion (round to nearest even), bit for bit as
 * PyTorch's tensor conversions (tests/test_amp.c checks every pattern): float32 -> bfloat16
 * turns every NaN into 0xffff; float32 -> float16 keeps a NaN's sign and the top of its
 * payload, quietened (as F16C's vcvtps2ph); bfloat16 -> float32 is a shift (signalling NaNs
 * stay signalling); float16 -> float32 quietens NaNs (as vcvtph2ps). */
#ifndef CT_HALF_H
#define CT_HALF_H
#include <stdint.h>
#include <string.h>

/* Shared with the CUDA plugin's kernels (src/backends/cuda/cuda_elementwise.cu). */
#ifdef __CUDACC__
#define CT_HALF_FN static inline __host__ __device__
#else
#define CT_HALF_FN static inline
#endif

CT_HALF_FN float ct_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
CT_HALF_FN uint16_t ct_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0xffffu; /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
CT_HALF_FN float ct_f16_to_f32(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0) {
        if (m == 0) u = s;
        else { /* subnormal */
            e = 127 - 15 + 1;
            while (!(m & 0x400u)) { m <<= 1; e--; }
            m &= 0x3ffu;
            u = s | (e << 23) | (m << 13);
        }
    } else if (e == 31) u = s | 0x7f800000u | (m ? 0x400000u : 0) | (m << 13);
    else u = s | ((e + 127 - 15) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
CT_HALF_FN uint16_t ct_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t s = (u >> 16) & 0x8000u;
    int32_t e = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t m = u & 0x7fffffu;
    if (((u >> 23) & 0xff) == 0xff) return (uint16_t)(s | 0x7c00u | (m ? 0x200u | (m >> 13) : 0));
    if (e >= 31) return (uint16_t)(s | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)s;
        m |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(s | r);
    }
    uint32_t r = (s | ((uint32_t)e << 10) | (m >> 13));
    uint32_t rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++;
    return (uint16_t)r;
}
#endif
