/* 2-D pooling kernels (NCHW, contiguous, float32/float64), parallel over the N*C
 * planes. Window rules follow ATen's CPU kernels exactly:
 *  - max: window rows ih0 = oh*s - p stepping by dilation, clipped to the input; NaN
 *    propagates (a NaN always wins); indices are flat h*W + w offsets into the plane.
 *  - avg: window [oh*s - p, min(oh*s - p + k, H + p)) gives the count_include_pad
 *    divisor, then is clipped to the input; sums are accumulated in double.
 *  - adaptive avg: rows [floor(oh*H/Ho), ceil((oh+1)*H/Ho)). */
#include "core/backend.h"
#include "core/error.h"
#include "core/parallel.h"
#include "cpu_isa.h"
#include "cpu_kernels.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t H, W, Ho, Wo;
    int64_t kh, kw, sh, sw, ph, pw, dh, dw;
    int count_include_pad;
    const void *in;
    void *out;
    void *ind; /* int64 indices (max pool) */
    const void *ind_in;
} pool_ctx;

static int64_t plane_grain(int64_t work_per_plane) {
    int64_t g = work_per_plane > 0 ? 32768 / work_per_plane : 32768;
    return g < 1 ? 1 : g;
}

static int check_float(const ct_tensor *t, const char *op) {
    if (t->dtype != CT_FLOAT32 && t->dtype != CT_FLOAT64)
        return ct_error("%s: dtype %s not supported on cpu (float32 and float64 only)", op,
                        ct_dtype_name(t->dtype));
    return 0;
}

static void ctx_from(pool_ctx *c, const ct_tensor *big, const ct_tensor *small,
                     const ct_pool_params *p) {
    c->H = big->shape[2];
    c->W = big->shape[3];
    c->Ho = small->shape[2];
    c->Wo = small->shape[3];
    if (p) {
        c->kh = p->kernel[0];
        c->kw = p->kernel[1];
        c->sh = p->stride[0];
        c->sw = p->stride[1];
        c->ph = p->padding[0];
        c->pw = p->padding[1];
        c->dh = p->dilation[0] > 0 ? p->dilation[0] : 1;
        c->dw = p->dilation[1] > 0 ? p->dilation[1] : 1;
        c->count_include_pad = p->count_include_pad;
    }
}

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* Adaptive window bounds (ATen's start_index / end_index). */
static inline int64_t ad_start(int64_t a, int64_t b, int64_t c) {
    return (a / b) * c + ((a % b) * c) / b;
}
static inline int64_t ad_end(int64_t a, int64_t b, int64_t c) { return 1 + ((a + 1) * c - 1) / b; }

#define DEF_POOL(T, SFX)                                                                       \
    static void maxf_##SFX(void *vc, int64_t b, int64_t e) {                                   \
        const pool_ctx *c = vc;                                                                \
        for (int64_t pl = b; pl < e; pl++) {                                                   \
            const T *x = (const T *)c->in + pl * c->H * c->W;                                  \
            T *y = (T *)c->out + pl * c->Ho * c->Wo;                                           \
            int64_t *ind = (int64_t *)c->ind + pl * c->Ho * c->Wo;                             \
            for (int64_t oh = 0; oh < c->Ho; oh++) {                                           \
                int64_t ih0 = oh * c->sh - c->ph;                                              \
                int64_t ih1 = imin(ih0 + (c->kh - 1) * c->dh + 1, c->H);                       \
                while (ih0 < 0) ih0 += c->dh;                                                  \
                for (int64_t ow = 0; ow < c->Wo; ow++) {                                       \
                    int64_t iw0 = ow * c->sw - c->pw;                                          \
                    int64_t iw1 = imin(iw0 + (c->kw - 1) * c->dw + 1, c->W);                   \
                    while (iw0 < 0) iw0 += c->dw;                                              \
                    int64_t mi = ih0 * c->W + iw0;                                             \
                    T mv = -INFINITY;                                                          \
                    for (int64_t ih = ih0; ih < ih1; ih += c->dh)                              \
                        for (int64_t iw = iw0; iw < iw1; iw += c->dw) {                        \
                            /* Branch-free: random data mispredicts a branch half the   \
                             * time. v != v is isnan(v). */                            \
                            T v = x[ih * c->W + iw];                                           \
                            int64_t take = (v > mv) | (v != v);                                \
                            mi += (ih * c->W + iw - mi) & -take;                               \
                            mv = v > mv ? v : mv;                                              \
                            mv = v != v ? v : mv;                                              \
                        }                                                                      \
                    y[oh * c->Wo + ow] = mv;                                                   \
                    ind[oh * c->Wo + ow] = mi;                                                 \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    static void maxb_##SFX(void *vc, int64_t b, int64_t e) {                                   \
        const pool_ctx *c = vc;                                                                \
        int64_t HW = c->H * c->W, P = c->Ho * c->Wo;                                           \
        for (int64_t pl = b; pl < e; pl++) {                                                   \
            T *gx = (T *)c->out + pl * HW;                                                     \
            const T *gy = (const T *)c->in + pl * P;                                           \
            const int64_t *ind = (const int64_t *)c->ind_in + pl * P;                          \
            memset(gx, 0, sizeof(T) * (size_t)HW);                                             \
            for (int64_t i = 0; i < P; i++)                                                    \
                if (ind[i] >= 0 && ind[i] < HW) gx[ind[i]] += gy[i];                           \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    static void avgf_##SFX(void *vc, int64_t b, int64_t e) {                                   \
        const pool_ctx *c = vc;                                                                \
        for (int64_t pl = b; pl < e; pl++) {                                                   \
            const T *x = (const T *)c->in + pl * c->H * c->W;                                  \
            T *y = (T *)c->out + pl * c->Ho * c->Wo;                                           \
            for (int64_t oh = 0; oh < c->Ho; oh++)                                             \
                for (int64_t ow = 0; ow < c->Wo; ow++) {                                       \
                    int64_t ih0 = oh * c->sh - c->ph, iw0 = ow * c->sw - c->pw;                \
                    int64_t ih1 = imin(ih0 + c->kh, c->H + c->ph);                             \
                    int64_t iw1 = imin(iw0 + c->kw, c->W + c->pw);                             \
                    int64_t pool = (ih1 - ih0) * (iw1 - iw0);                                  \
                    ih0 = imax(ih0, 0);                                                        \
                    iw0 = imax(iw0, 0);                                                        \
                    ih1 = imin(ih1, c->H);                                                     \
                    iw1 = imin(iw1, c->W);                                                     \
                    if (ih0 >= ih1 || iw0 >= iw1) {                                            \
                        y[oh * c->Wo + ow] = 0;                                                \
                        continue;                                                              \
                    }                                                                          \
                    int64_t div = c->count_include_pad ? pool : (ih1 - ih0) * (iw1 - iw0);     \
                    double s = 0;                                                              \
                    for (int64_t ih = ih0; ih < ih1; ih++)                                     \
                        for (int64_t iw = iw0; iw < iw1; iw++) s += x[ih * c->W + iw];         \
                    y[oh * c->Wo + ow] = (T)(s / (double)div);                                 \
                }                                                                              \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    static void avgb_##SFX(void *vc, int64_t b, int64_t e) {                                   \
        const pool_ctx *c = vc;                                                                \
        int64_t HW = c->H * c->W, P = c->Ho * c->Wo;                                           \
        for (int64_t pl = b; pl < e; pl++) {                                                   \
            T *gx = (T *)c->out + pl * HW;                                                     \
            const T *gy = (const T *)c->in + pl * P;                                           \
            memset(gx, 0, sizeof(T) * (size_t)HW);                                             \
            for (int64_t oh = 0; oh < c->Ho; oh++)                                             \
                for (int64_t ow = 0; ow < c->Wo; ow++) {                                       \
                    int64_t ih0 = oh * c->sh - c->ph, iw0 = ow * c->sw - c->pw;                \
                    int64_t ih1 = imin(ih0 + c->kh, c->H + c->ph);                             \
                    int64_t iw1 = imin(iw0 + c->kw, c->W + c->pw);                             \
                    int64_t pool = (ih1 - ih0) * (iw1 - iw0);                                  \
                    ih0 = imax(ih0, 0);                                                        \
                    iw0 = imax(iw0, 0);                                                        \
                    ih1 = imin(ih1, c->H);                                                     \
                    iw1 = imin(iw1, c->W);                                                     \
                    if (ih0 >= ih1 || iw0 >= iw1) continue;                                    \
                    int64_t div = c->count_include_pad ? pool : (ih1 - ih0) * (iw1 - iw0);     \
                    T d = gy[oh * c->Wo + ow] / (T)div;                                        \
                    for (int64_t ih = ih0; ih < ih1; ih++)                                     \
                        for (int64_t iw = iw0; iw < iw1; iw++) gx[ih * c->W + iw] += d;        \
                }                                                                              \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    static void adf_##SFX(void *vc, int64_t b, int64_t e) {                                    \
        const pool_ctx *c = vc;                                                                \
        for (int64_t pl = b; pl < e; pl++) {                                                   \
            const T *x = (const T *)c->in + pl * c->H * c->W;                                  \
            T *y = (T *)c->out + pl * c->Ho * c->Wo;                                           \
            for (int64_t oh = 0; oh < c->Ho; oh++) {                                           \
                int64_t ih0 = ad_start(oh, c->Ho, c->H), ih1 = ad_end(oh, c->Ho, c->H);        \
                for (int64_t ow = 0; ow < c->Wo; ow++) {                                       \
                    int64_t iw0 = ad_start(ow, c->Wo, c->W), iw1 = ad_end(ow, c->Wo, c->W);    \
                    double s = 0;                                                              \
                    for (int64_t ih = ih0; ih < ih1; ih++)                                     \
                        for (int64_t iw = iw0; iw < iw1; iw++) s += x[ih * c->W + iw];         \
                    y[oh * c->Wo + ow] = (T)(s / (double)(ih1 - ih0) / (double)(iw1 - iw0));   \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    static void adb_##SFX(void *vc, int64_t b, int64_t e) {                                    \
        const pool_ctx *c = vc;                                                                \
        int64_t HW = c->H * c->W, P = c->Ho * c->Wo;                                           \
        for (int64_t pl = b; pl < e; pl++) {                                                   \
            T *gx = (T *)c->out + pl * HW;                                                     \
            const T *gy = (const T *)c->in + pl * P;                                           \
            memset(gx, 0, sizeof(T) * (size_t)HW);                                             \
            for (int64_t oh = 0; oh < c->Ho; oh++) {                                           \
                int64_t ih0 = ad_start(oh, c->Ho, c->H), ih1 = ad_end(oh, c->Ho, c->H);        \
                for (int64_t ow = 0; ow < c->Wo; ow++) {                                       \
                    int64_t iw0 = ad_start(ow, c->Wo, c->W), iw1 = ad_end(ow, c->Wo, c->W);    \
                    T d = gy[oh * c->Wo + ow] / (T)(ih1 - ih0) / (T)(iw1 - iw0);               \
                    for (int64_t ih = ih0; ih < ih1; ih++)                                     \
                        for (int64_t iw = iw0; iw < iw1; iw++) gx[ih * c->W + iw] += d;        \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

DEF_POOL(float, f32)
DEF_POOL(double, f64)

static int64_t planes(const ct_tensor *t) { return t->shape[0] * t->shape[1]; }

int cpu_max_pool2d_forward_full(ct_tensor *y, ct_tensor *indices, const ct_tensor *x,
                           const ct_pool_params *p) {
    if (check_float(x, "max_pool2d") != 0) return -1;
    pool_ctx c = {0};
    ctx_from(&c, x, y, p);
    c.in = ct_ptr(x);
    c.out = ct_ptr(y);
    c.ind = ct_ptr(indices);
    int64_t g = plane_grain(c.Ho * c.Wo * c.kh * c.kw);
    ct_parallel_for(planes(x), g, x->dtype == CT_FLOAT32 ? maxf_f32 : maxf_f64, &c);
    return 0;
}

int cpu_max_pool2d_backward_full(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *indices,
                            const ct_pool_params *p) {
    if (check_float(gx, "max_pool2d backward") != 0) return -1;
    pool_ctx c = {0};
    ctx_from(&c, gx, gy, p);
    c.in = ct_ptr(gy);
    c.out = ct_ptr(gx);
    c.ind_in = ct_ptr(indices);
    int64_t g = plane_grain(c.H * c.W + c.Ho * c.Wo);
    ct_parallel_for(planes(gx), g, gx->dtype == CT_FLOAT32 ? maxb_f32 : maxb_f64, &c);
    return 0;
}

int cpu_avg_pool2d_forward_full(ct_tensor *y, const ct_tensor *x, const ct_pool_params *p) {
    if (check_float(x, "avg_pool2d") != 0) return -1;
    pool_ctx c = {0};
    ctx_from(&c, x, y, p);
    c.in = ct_ptr(x);
    c.out = ct_ptr(y);
    int64_t g = plane_grain(c.Ho * c.Wo * c.kh * c.kw);
    ct_parallel_for(planes(x), g, x->dtype == CT_FLOAT32 ? avgf_f32 : avgf_f64, &c);
    return 0;
}

int cpu_avg_pool2d_backward_full(ct_tensor *gx, const ct_tensor *gy, const ct_pool_params *p) {
    if (check_float(gx, "avg_pool2d backward") != 0) return -1;
    pool_ctx c = {0};
    ctx_from(&c, gx, gy, p);
    c.in = ct_ptr(gy);
    c.out = ct_ptr(gx);
    int64_t g = plane_grain(c.H * c.W + c.Ho * c.Wo * c.kh * c.kw);
    ct_parallel_for(planes(gx), g, gx->dtype == CT_FLOAT32 ? avgb_f32 : avgb_f64, &c);
    return 0;
}

int cpu_adaptive_avg_pool2d_forward_full(ct_tensor *y, const ct_tensor *x) {
    if (check_float(x, "adaptive_avg_pool2d") != 0) return -1;
    pool_ctx c = {0};
    ctx_from(&c, x, y, NULL);
    if (c.Ho == 0 || c.Wo == 0) return 0;
    c.in = ct_ptr(x);
    c.out = ct_ptr(y);
    int64_t g = plane_grain(c.H * c.W + c.Ho * c.Wo);
    ct_parallel_for(planes(x), g, x->dtype == CT_FLOAT32 ? adf_f32 : adf_f64, &c);
    return 0;
}

int cpu_adaptive_avg_pool2d_backward_full(ct_tensor *gx, const ct_tensor *gy) {
    if (check_float(gx, "adaptive_avg_pool2d backward") != 0) return -1;
    pool_ctx c = {0};
    ctx_from(&c, gx, gy, NULL);
    c.in = ct_ptr(gy);
    c.out = ct_ptr(gx);
    if (c.Ho == 0 || c.Wo == 0) {
        memset(c.out, 0, (size_t)ct_numel(gx) * ct_dtype_size(gx->dtype));
        return 0;
    }
    int64_t g = plane_grain(c.H * c.W * 2);
    ct_parallel_for(planes(gx), g, gx->dtype == CT_FLOAT32 ? adb_f32 : adb_f64, &c);
    return 0;
}

/* =================================================================================
 * Max pooling with compact window codes (the CPU path of ct_max_pool2d).
 *
 * codes (uint8, y's shape, may be NULL when no backward is needed) hold for each output
 * the position ky*kw + kx of the chosen element inside its window (window origin
 * oh*s - p, dilation steps), or CPU_POOL_NOGRAD when the gradient is zero (after a fused
 * ReLU that clamped the output). The choice follows ATen: the first maximum in row-major
 * window order, NaN always taken (so the last NaN). With relu != 0 the output is
 * relu(max(x)) = max(relu(x)), and the gradient flows only where the output is > 0,
 * exactly as ReLU followed by MaxPool2d. A 2x2 stride-2 window without padding has an
 * AVX-512 kernel; other windows a portable loop.
 * ================================================================================= */
#include "pool_fast.h"

typedef struct {
    int64_t H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw;
    const void *x;
    void *y;
    uint8_t *codes;
    const void *gy;
    const uint8_t *cin;
    void *gx;
    int relu;
} mp_ctx;

#define DEF_MPC(T, SFX)                                                                        \
    static void mpc_fwd_##SFX(void *vc, int64_t b, int64_t e) {                                \
        const mp_ctx *c = vc;                                                                  \
        for (int64_t pl = b; pl < e; pl++) {                                                   \
            const T *x = (const T *)c->x + pl * c->H * c->W;                                   \
            T *y = (T *)c->y + pl * c->Ho * c->Wo;                                             \
            uint8_t *cd = c->codes ? c->codes + pl * c->Ho * c->Wo : NULL;                     \
            for (int64_t oh = 0; oh < c->Ho; oh++) {                                           \
                int64_t ih0 = oh * c->sh - c->ph, ky0 = 0;                                     \
                while (ih0 + ky0 * c->dh < 0) ky0++;                                           \
                int64_t ky1 = c->kh;                                                           \
                while (ky1 > ky0 && ih0 + (ky1 - 1) * c->dh >= c->H) ky1--;                    \
                for (int64_t ow = 0; ow < c->Wo; ow++) {                                       \
                    int64_t iw0 = ow * c->sw - c->pw, kx0 = 0;                                 \
                    while (iw0 + kx0 * c->dw < 0) kx0++;                                       \
                    int64_t kx1 = c->kw;                                                       \
                    while (kx1 > kx0 && iw0 + (kx1 - 1) * c->dw >= c->W) kx1--;                \
                    int64_t best = ky0 * c->kw + kx0;                                          \
                    T mv = -INFINITY;                                                          \
                    for (int64_t ky = ky0; ky < ky1; ky++) {                                   \
                        const T *row = x + (ih0 + ky * c->dh) * c->W + iw0;                    \
                        for (int64_t kx = kx0; kx < kx1; kx++) {                               \
                            T v = row[kx * c->dw];                                             \
                            int take = (v > mv) | (v != v);                                    \
                            best = take ? ky * c->kw + kx : best;                              \
                            mv = take ? v : mv;                                                \
                        }                                                                      \
                    }                                                                          \
                    int dead = c->relu && !(mv > 0);                                           \
                    y[oh * c->Wo + ow] = dead && mv == mv ? (T)0 : mv;                         \
                    if (cd) cd[oh * c->Wo + ow] = dead ? CPU_POOL_NOGRAD : (uint8_t)best;      \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    static void mpc_bwd_##SFX(void *vc, int64_t b, int64_t e) {                                \
        const mp_ctx *c = vc;                                                                  \
        int64_t HW = c->H * c->W, P = c->Ho * c->Wo;                                           \
        for (int64_t pl = b; pl < e; pl++) {                                                   \
            T *gx = (T *)c->gx + pl * HW;                                                      \
            const T *gy = (const T *)c->gy + pl * P;                                           \
            const uint8_t *cd = c->cin + pl * P;                                               \
            memset(gx, 0, sizeof(T) * (size_t)HW);                                             \
            for (int64_t oh = 0; oh < c->Ho; oh++)                                             \
                for (int64_t ow = 0; ow < c->Wo; ow++) {                                       \
                    int code = cd[oh * c->Wo + ow];                                            \
                    if (code == CPU_POOL_NOGRAD) continue;                                     \
                    int64_t ih = oh * c->sh - c->ph + (code / c->kw) * c->dh;                  \
                    int64_t iw = ow * c->sw - c->pw + (code % c->kw) * c->dw;                  \
                    gx[ih * c->W + iw] += gy[oh * c->Wo + ow];                                 \
                }                                                                              \
        }                                                                                      \
    }

DEF_MPC(float, f32)
DEF_MPC(double, f64)

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MP512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

/* 2x2, stride 2, no padding, every window inside the plane; float32 planes, or (bf16)
 * bfloat16 planes widened to float32 lanes (exact), compared as float32, and narrowed back
 * by truncation (exact: every value is a bf16 value), so that the result and the codes are
 * those of the float32 kernel on the widened input, and of ReLU + MaxPool2d in bf16. */
static MP512 inline __m512 bf16_widen(__m256i v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}
static MP512 inline __m256i bf16_narrow(__m512 v) {
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16));
}
/* 16 elements at element offset i of plane p (float32 or bf16), zeros outside mask k */
static MP512 inline __m512 mp_load(const void *p, int64_t i, __mmask16 k, int bf16) {
    return bf16 ? bf16_widen(_mm256_maskz_loadu_epi16(k, (const uint16_t *)p + i))
                : _mm512_maskz_loadu_ps(k, (const float *)p + i);
}
static MP512 inline void mp_store(void *p, int64_t i, __mmask16 k, __m512 v, int bf16) {
    if (bf16) _mm256_mask_storeu_epi16((uint16_t *)p + i, k, bf16_narrow(v));
    else _mm512_mask_storeu_ps((float *)p + i, k, v);
}

static inline __attribute__((always_inline)) MP512 void mp22_fwd_body(const mp_ctx *c, int64_t b,
                                                                      int64_t e, int bf16) {
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_add_epi32(ie, _mm512_set1_epi32(1));
    const __m512 zero = _mm512_setzero_ps();
    const int64_t H = c->H, W = c->W, Ho = c->Ho, Wo = c->Wo;
    for (int64_t pl = b; pl < e; pl++) {
        const int64_t x0 = pl * H * W, y0 = pl * Ho * Wo;
        uint8_t *cd = c->codes ? c->codes + y0 : NULL;
        for (int64_t oh = 0; oh < Ho; oh++) {
            const int64_t r0 = x0 + 2 * oh * W, r1 = r0 + W;
            for (int64_t ow = 0; ow < Wo; ow += 16) {
                int64_t n = Wo - ow < 16 ? Wo - ow : 16, n2 = 2 * n;
                __mmask16 mlo = (__mmask16)(n2 >= 16 ? 0xFFFF : (1u << n2) - 1u);
                __mmask16 mhi = (__mmask16)(n2 >= 32 ? 0xFFFF : n2 > 16 ? (1u << (n2 - 16)) - 1u : 0);
                __mmask16 mo = (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1u);
                __m512 l0 = mp_load(c->x, r0 + 2 * ow, mlo, bf16);
                __m512 h0 = mp_load(c->x, r0 + 2 * ow + 16, mhi, bf16);
                __m512 l1 = mp_load(c->x, r1 + 2 * ow, mlo, bf16);
                __m512 h1 = mp_load(c->x, r1 + 2 * ow + 16, mhi, bf16);
                __m512 va = _mm512_permutex2var_ps(l0, ie, h0);
                __m512 vb = _mm512_permutex2var_ps(l0, io, h0);
                __m512 vc2 = _mm512_permutex2var_ps(l1, ie, h1);
                __m512 vd = _mm512_permutex2var_ps(l1, io, h1);
                __m512 m = va;
                __m512i code = _mm512_setzero_si512();
                __mmask16 k = _mm512_cmp_ps_mask(vb, m, _CMP_GT_OQ) |
                              _mm512_cmp_ps_mask(vb, vb, _CMP_UNORD_Q);
                m = _mm512_mask_mov_ps(m, k, vb);
                code = _mm512_mask_mov_epi32(code, k, _mm512_set1_epi32(1));
                k = _mm512_cmp_ps_mask(vc2, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(vc2, vc2, _CMP_UNORD_Q);
                m = _mm512_mask_mov_ps(m, k, vc2);
                code = _mm512_mask_mov_epi32(code, k, _mm512_set1_epi32(2));
                k = _mm512_cmp_ps_mask(vd, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(vd, vd, _CMP_UNORD_Q);
                m = _mm512_mask_mov_ps(m, k, vd);
                code = _mm512_mask_mov_epi32(code, k, _mm512_set1_epi32(3));
                if (c->relu) {
                    __mmask16 live = _mm512_cmp_ps_mask(m, zero, _CMP_GT_OQ);
                    m = _mm512_max_ps(zero, m); /* keeps NaN */
                    code = _mm512_mask_mov_epi32(_mm512_set1_epi32(CPU_POOL_NOGRAD), live, code);
                }
                mp_store(c->y, y0 + oh * Wo + ow, mo, m, bf16);
                if (cd) _mm512_mask_cvtepi32_storeu_epi8(cd + oh * Wo + ow, mo, code);
            }
        }
    }
}

static inline __attribute__((always_inline)) MP512 void mp22_bwd_body(const mp_ctx *c, int64_t b,
                                                                      int64_t e, int bf16) {
    const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i ih = _mm512_add_epi32(il, _mm512_set1_epi32(8));
    const int64_t H = c->H, W = c->W, Ho = c->Ho, Wo = c->Wo;
    const size_t es = bf16 ? sizeof(uint16_t) : sizeof(float);
    for (int64_t pl = b; pl < e; pl++) {
        const int64_t x0 = pl * H * W, y0 = pl * Ho * Wo;
        const uint8_t *cd = c->cin + y0;
        for (int64_t oh = 0; oh < Ho; oh++) {
            const int64_t r0 = x0 + 2 * oh * W, r1 = r0 + W;
            for (int64_t ow = 0; ow < Wo; ow += 16) {
                int64_t n = Wo - ow < 16 ? Wo - ow : 16, n2 = 2 * n;
                __mmask16 mlo = (__mmask16)(n2 >= 16 ? 0xFFFF : (1u << n2) - 1u);
                __mmask16 mhi = (__mmask16)(n2 >= 32 ? 0xFFFF : n2 > 16 ? (1u << (n2 - 16)) - 1u : 0);
                __mmask16 mo = (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1u);
                __m512 g = mp_load(c->gy, y0 + oh * Wo + ow, mo, bf16);
                __m512i code = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mo, cd + oh * Wo + ow));
                __m512 ga = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(code, _mm512_set1_epi32(0)), g);
                __m512 gb = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(code, _mm512_set1_epi32(1)), g);
                __m512 gc = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(code, _mm512_set1_epi32(2)), g);
                __m512 gd = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(code, _mm512_set1_epi32(3)), g);
                mp_store(c->gx, r0 + 2 * ow, mlo, _mm512_permutex2var_ps(ga, il, gb), bf16);
                mp_store(c->gx, r0 + 2 * ow + 16, mhi, _mm512_permutex2var_ps(ga, ih, gb), bf16);
                mp_store(c->gx, r1 + 2 * ow, mlo, _mm512_permutex2var_ps(gc, il, gd), bf16);
                mp_store(c->gx, r1 + 2 * ow + 16, mhi, _mm512_permutex2var_ps(gc, ih, gd), bf16);
            }
            if (W > 2 * Wo) { /* odd width: the last column gets no gradient */
                for (int64_t i = 2 * Wo; i < W; i++) {
                    memset((char *)c->gx + (r0 + i) * es, 0, es);
                    memset((char *)c->gx + (r1 + i) * es, 0, es);
                }
            }
        }
        if (H > 2 * Ho) memset((char *)c->gx + (x0 + 2 * Ho * W) * es, 0, es * (size_t)((H - 2 * Ho) * W));
    }
}

static MP512 void mp22_fwd_avx512(void *vc, int64_t b, int64_t e) { mp22_fwd_body(vc, b, e, 0); }
static MP512 void mp22_bwd_avx512(void *vc, int64_t b, int64_t e) { mp22_bwd_body(vc, b, e, 0); }
static MP512 void mp22_fwd_bf16(void *vc, int64_t b, int64_t e) { mp22_fwd_body(vc, b, e, 1); }
static MP512 void mp22_bwd_bf16(void *vc, int64_t b, int64_t e) { mp22_bwd_body(vc, b, e, 1); }

/* The 2x2 stride-2 kernels for AVX2 (+FMA) CPUs, 8 outputs per step, same choices. */
#define MP256 __attribute__((target("avx2,fma")))

/* Even and odd elements of the 16 floats at p (two vectors of 8). */
static MP256 inline void deint8(const float *p, __m256 *ev, __m256 *od) {
    __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
    *ev = _mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), _MM_SHUFFLE(3, 1, 2, 0)));
    *od = _mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), _MM_SHUFFLE(3, 1, 2, 0)));
}

/* One output of the 2x2 window at (r0, r1)[2*ow ...], as the portable kernel. */
static inline void mp22_one(const float *r0, const float *r1, int64_t ow, int relu, float *y,
                            uint8_t *cd) {
    float v[4] = {r0[2 * ow], r0[2 * ow + 1], r1[2 * ow], r1[2 * ow + 1]};
    float m = v[0];
    int best = 0;
    for (int i = 1; i < 4; i++) {
        int take = (v[i] > m) | (v[i] != v[i]);
        best = take ? i : best;
        m = take ? v[i] : m;
    }
    int dead = relu && !(m > 0);
    *y = dead && m == m ? 0.0f : m;
    if (cd) *cd = dead ? CPU_POOL_NOGRAD : (uint8_t)best;
}

static MP256 void mp22_fwd_avx2(void *vc, int64_t b, int64_t e) {
    const mp_ctx *c = vc;
    const __m256 zero = _mm256_setzero_ps();
    const int64_t H = c->H, W = c->W, Ho = c->Ho, Wo = c->Wo;
    for (int64_t pl = b; pl < e; pl++) {
        const float *x = (const float *)c->x + pl * H * W;
        float *y = (float *)c->y + pl * Ho * Wo;
        uint8_t *cd = c->codes ? c->codes + pl * Ho * Wo : NULL;
        for (int64_t oh = 0; oh < Ho; oh++) {
            const float *r0 = x + 2 * oh * W, *r1 = r0 + W;
            int64_t ow = 0;
            for (; ow + 8 <= Wo; ow += 8) {
                __m256 va, vb, vc2, vd;
                deint8(r0 + 2 * ow, &va, &vb);
                deint8(r1 + 2 * ow, &vc2, &vd);
                __m256 m = va, code = zero; /* codes as float 0..3 */
                __m256 k = _mm256_or_ps(_mm256_cmp_ps(vb, m, _CMP_GT_OQ), _mm256_cmp_ps(vb, vb, _CMP_UNORD_Q));
                m = _mm256_blendv_ps(m, vb, k);
                code = _mm256_blendv_ps(code, _mm256_set1_ps(1), k);
                k = _mm256_or_ps(_mm256_cmp_ps(vc2, m, _CMP_GT_OQ), _mm256_cmp_ps(vc2, vc2, _CMP_UNORD_Q));
                m = _mm256_blendv_ps(m, vc2, k);
                code = _mm256_blendv_ps(code, _mm256_set1_ps(2), k);
                k = _mm256_or_ps(_mm256_cmp_ps(vd, m, _CMP_GT_OQ), _mm256_cmp_ps(vd, vd, _CMP_UNORD_Q));
                m = _mm256_blendv_ps(m, vd, k);
                code = _mm256_blendv_ps(code, _mm256_set1_ps(3), k);
                if (c->relu) {
                    __m256 live = _mm256_cmp_ps(m, zero, _CMP_GT_OQ);
                    m = _mm256_max_ps(zero, m); /* keeps NaN (second operand) */
                    code = _mm256_blendv_ps(_mm256_set1_ps(CPU_POOL_NOGRAD), code, live);
                }
                _mm256_storeu_ps(y + oh * Wo + ow, m);
                if (cd) {
                    __m256i ci = _mm256_cvtps_epi32(code);
                    __m128i c16 = _mm_packus_epi32(_mm256_castsi256_si128(ci), _mm256_extracti128_si256(ci, 1));
                    _mm_storel_epi64((__m128i *)(cd + oh * Wo + ow), _mm_packus_epi16(c16, c16));
                }
            }
            for (; ow < Wo; ow++)
                mp22_one(r0, r1, ow, c->relu, y + oh * Wo + ow, cd ? cd + oh * Wo + ow : NULL);
        }
    }
}

static MP256 void mp22_bwd_avx2(void *vc, int64_t b, int64_t e) {
    const mp_ctx *c = vc;
    const int64_t H = c->H, W = c->W, Ho = c->Ho, Wo = c->Wo;
    for (int64_t pl = b; pl < e; pl++) {
        float *gx = (float *)c->gx + pl * H * W;
        const float *gy = (const float *)c->gy + pl * Ho * Wo;
        const uint8_t *cd = c->cin + pl * Ho * Wo;
        for (int64_t oh = 0; oh < Ho; oh++) {
            float *r0 = gx + 2 * oh * W, *r1 = r0 + W;
            const float *g = gy + oh * Wo;
            const uint8_t *k = cd + oh * Wo;
            int64_t ow = 0;
            for (; ow + 8 <= Wo; ow += 8) {
                __m256 gv = _mm256_loadu_ps(g + ow);
                __m256i code = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(k + ow)));
                __m256 q[4];
                for (int i = 0; i < 4; i++)
                    q[i] = _mm256_and_ps(gv, _mm256_castsi256_ps(_mm256_cmpeq_epi32(code, _mm256_set1_epi32(i))));
                __m256 lo = _mm256_unpacklo_ps(q[0], q[1]), hi = _mm256_unpackhi_ps(q[0], q[1]);
                _mm256_storeu_ps(r0 + 2 * ow, _mm256_permute2f128_ps(lo, hi, 0x20));
                _mm256_storeu_ps(r0 + 2 * ow + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
                lo = _mm256_unpacklo_ps(q[2], q[3]);
                hi = _mm256_unpackhi_ps(q[2], q[3]);
                _mm256_storeu_ps(r1 + 2 * ow, _mm256_permute2f128_ps(lo, hi, 0x20));
                _mm256_storeu_ps(r1 + 2 * ow + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
            }
            for (; ow < Wo; ow++) {
                int code = k[ow];
                r0[2 * ow] = code == 0 ? g[ow] : 0.0f;
                r0[2 * ow + 1] = code == 1 ? g[ow] : 0.0f;
                r1[2 * ow] = code == 2 ? g[ow] : 0.0f;
                r1[2 * ow + 1] = code == 3 ? g[ow] : 0.0f;
            }
            if (W > 2 * Wo) { /* odd width: the last column gets no gradient */
                for (int64_t i = 2 * Wo; i < W; i++) r0[i] = r1[i] = 0.0f;
            }
        }
        if (H > 2 * Ho) memset(gx + 2 * Ho * W, 0, sizeof(float) * (size_t)((H - 2 * Ho) * W));
    }
}

static int g_mp_avx512;
static pthread_once_t g_mp_once = PTHREAD_ONCE_INIT;
static void mp_probe(void) {
    __builtin_cpu_init();
    g_mp_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
static int have_avx512(void) {
    pthread_once(&g_mp_once, mp_probe);
    return g_mp_avx512 && ct_cpu_isa_level() >= CT_ISA_AVX512; /* CTORCH_CPU_ISA may lower it */
}
static int have_avx2(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           ct_cpu_isa_level() >= CT_ISA_AVX2;
}
#else
static int have_avx512(void) { return 0; }
static int have_avx2(void) { return 0; }
#define mp22_fwd_avx2 NULL
#define mp22_bwd_avx2 NULL
#define mp22_fwd_avx512 NULL
#define mp22_bwd_avx512 NULL
#define mp22_fwd_bf16 NULL
#define mp22_bwd_bf16 NULL
#endif

static void mp_ctx_init(mp_ctx *c, const ct_tensor *big, const ct_tensor *small,
                        const ct_pool_params *p) {
    c->H = big->shape[2];
    c->W = big->shape[3];
    c->Ho = small->shape[2];
    c->Wo = small->shape[3];
    c->kh = p->kernel[0];
    c->kw = p->kernel[1];
    c->sh = p->stride[0];
    c->sw = p->stride[1];
    c->ph = p->padding[0];
    c->pw = p->padding[1];
    c->dh = p->dilation[0] > 0 ? p->dilation[0] : 1;
    c->dw = p->dilation[1] > 0 ? p->dilation[1] : 1;
}

/* The 2x2 stride-2 kernels apply: float32 (or bfloat16 for the _bf16 ones), AVX-512,
 * every window inside the plane. */
static int mp22_ok(const mp_ctx *c, const ct_tensor *t) {
    return (t->dtype == CT_FLOAT32 || t->dtype == CT_BFLOAT16) && c->kh == 2 && c->kw == 2 && c->sh == 2 && c->sw == 2 &&
           c->ph == 0 && c->pw == 0 && c->dh == 1 && c->dw == 1 && c->Ho == c->H / 2 &&
           c->Wo == c->W / 2 && have_avx512() && !getenv("CTORCH_POOL_REFERENCE");
}
/* The same windows on float32 with AVX2 only. */
static int mp22_ok_avx2(const mp_ctx *c, const ct_tensor *t) {
    return t->dtype == CT_FLOAT32 && c->kh == 2 && c->kw == 2 && c->sh == 2 && c->sw == 2 &&
           c->ph == 0 && c->pw == 0 && c->dh == 1 && c->dw == 1 && c->Ho == c->H / 2 &&
           c->Wo == c->W / 2 && have_avx2() && !getenv("CTORCH_POOL_REFERENCE");
}

/* bfloat16 planes, natively: 0 when done, 1 when the 2x2 kernels do not apply (the caller
 * widens to float32). */
int cpu_max_pool2d_codes_bf16_forward(ct_tensor *y, ct_tensor *codes, const ct_tensor *x,
                                      const ct_pool_params *p, int relu) {
    mp_ctx c = {0};
    mp_ctx_init(&c, x, y, p);
    if (x->dtype != CT_BFLOAT16 || y->dtype != CT_BFLOAT16 || !ct_is_contiguous(x) ||
        !ct_is_contiguous(y) || !mp22_ok(&c, x) || ct_numel(y) == 0)
        return 1;
    c.x = ct_ptr(x);
    c.y = ct_ptr(y);
    c.codes = codes ? (uint8_t *)ct_ptr(codes) : NULL;
    c.relu = relu;
    ct_parallel_for(planes(x), plane_grain(c.Ho * c.Wo * 4), mp22_fwd_bf16, &c);
    return 0;
}

int cpu_max_pool2d_codes_bf16_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *codes,
                                       const ct_pool_params *p) {
    mp_ctx c = {0};
    mp_ctx_init(&c, gx, gy, p);
    if (gx->dtype != CT_BFLOAT16 || gy->dtype != CT_BFLOAT16 || !ct_is_contiguous(gx) ||
        !ct_is_contiguous(gy) || !mp22_ok(&c, gx) || ct_numel(gx) == 0)
        return 1;
    c.gy = ct_ptr(gy);
    c.gx = ct_ptr(gx);
    c.cin = (const uint8_t *)ct_ptr(codes);
    ct_parallel_for(planes(gx), plane_grain(c.H * c.W + c.Ho * c.Wo), mp22_bwd_bf16, &c);
    return 0;
}

int cpu_max_pool2d_codes_forward_full(ct_tensor *y, ct_tensor *codes, const ct_tensor *x,
                         const ct_pool_params *p, int relu) {
    if (check_float(x, "max_pool2d") != 0) return -1;
    if (p->kernel[0] * p->kernel[1] > CPU_POOL_NOGRAD)
        return ct_error("max_pool2d: window %dx%d too large for window codes", p->kernel[0],
                        p->kernel[1]);
    mp_ctx c = {0};
    mp_ctx_init(&c, x, y, p);
    c.x = ct_ptr(x);
    c.y = ct_ptr(y);
    c.codes = codes ? (uint8_t *)ct_ptr(codes) : NULL;
    c.relu = relu;
    if (ct_numel(y) == 0) return 0;
    int64_t g = plane_grain(c.Ho * c.Wo * c.kh * c.kw);
    ct_range_fn fn = mp22_ok(&c, x)        ? mp22_fwd_avx512
                     : mp22_ok_avx2(&c, x) ? mp22_fwd_avx2
                     : x->dtype == CT_FLOAT32 ? mpc_fwd_f32 : mpc_fwd_f64;
    ct_parallel_for(planes(x), g, fn, &c);
    return 0;
}

int cpu_max_pool2d_codes_backward_full(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *codes,
                                  const ct_pool_params *p) {
    if (check_float(gx, "max_pool2d backward") != 0) return -1;
    mp_ctx c = {0};
    mp_ctx_init(&c, gx, gy, p);
    c.gy = ct_ptr(gy);
    c.gx = ct_ptr(gx);
    c.cin = (const uint8_t *)ct_ptr(codes);
    if (ct_numel(gx) == 0) return 0;
    int64_t g = plane_grain(c.H * c.W + c.Ho * c.Wo);
    ct_range_fn fn = mp22_ok(&c, gx)        ? mp22_bwd_avx512
                     : mp22_ok_avx2(&c, gx) ? mp22_bwd_avx2
                     : gx->dtype == CT_FLOAT32 ? mpc_bwd_f32 : mpc_bwd_f64;
    ct_parallel_for(planes(gx), g, fn, &c);
    return 0;
}
