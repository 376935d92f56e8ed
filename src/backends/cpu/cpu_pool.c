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
#include "cpu_kernels.h"

#include <math.h>
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

int cpu_max_pool2d_forward(ct_tensor *y, ct_tensor *indices, const ct_tensor *x,
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

int cpu_max_pool2d_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *indices,
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

int cpu_avg_pool2d_forward(ct_tensor *y, const ct_tensor *x, const ct_pool_params *p) {
    if (check_float(x, "avg_pool2d") != 0) return -1;
    pool_ctx c = {0};
    ctx_from(&c, x, y, p);
    c.in = ct_ptr(x);
    c.out = ct_ptr(y);
    int64_t g = plane_grain(c.Ho * c.Wo * c.kh * c.kw);
    ct_parallel_for(planes(x), g, x->dtype == CT_FLOAT32 ? avgf_f32 : avgf_f64, &c);
    return 0;
}

int cpu_avg_pool2d_backward(ct_tensor *gx, const ct_tensor *gy, const ct_pool_params *p) {
    if (check_float(gx, "avg_pool2d backward") != 0) return -1;
    pool_ctx c = {0};
    ctx_from(&c, gx, gy, p);
    c.in = ct_ptr(gy);
    c.out = ct_ptr(gx);
    int64_t g = plane_grain(c.H * c.W + c.Ho * c.Wo * c.kh * c.kw);
    ct_parallel_for(planes(gx), g, gx->dtype == CT_FLOAT32 ? avgb_f32 : avgb_f64, &c);
    return 0;
}

int cpu_adaptive_avg_pool2d_forward(ct_tensor *y, const ct_tensor *x) {
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

int cpu_adaptive_avg_pool2d_backward(ct_tensor *gx, const ct_tensor *gy) {
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
