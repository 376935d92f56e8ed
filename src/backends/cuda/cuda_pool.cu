/* 2-D pooling (NCHW planes, contiguous; float32, float64, and bfloat16 / float16 stored
 * as S and computed in cuk_acc<S>::type = float, rounded once) with the window rules of
 * src/backends/cpu/cpu_pool.c (ATen's):
 *  - max: rows ih0 = oh*s - p stepping by dilation, end min(ih0 + (k-1)*d + 1, H) taken
 *    before ih0 is moved into the input; a NaN always wins (the last one seen); indices
 *    are flat h*W + w offsets into the plane;
 *  - avg: window [oh*s - p, min(oh*s - p + k, H + p)) gives the count_include_pad
 *    divisor, then is clipped to the input; the forward sums in double;
 *  - adaptive avg: rows [floor(oh*H/Ho), ceil((oh+1)*H/Ho)).
 * Forward kernels run a thread per output element. Backward kernels run a thread per
 * input element and gather from the outputs whose window holds it (no atomics: the
 * result does not depend on scheduling). */
#include "cuda_common.cuh"

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* ------------------------------------------------------------------- max */
template <typename S>
__global__ void k_max_fwd(cuk_pool p, const S *x, S *y, int64_t *ind) {
    typedef typename cuk_acc<S>::type T;
    const int64_t n = p.NC * p.Ho * p.Wo;
    CUK_LOOP(int64_t, i, n) {
        int64_t ow = i % p.Wo, t = i / p.Wo, oh = t % p.Ho, pl = t / p.Ho;
        const S *xp = x + pl * p.H * p.W;
        int64_t ih0 = oh * p.sh - p.ph;
        int64_t ih1 = imin(ih0 + (p.kh - 1) * p.dh + 1, p.H);
        while (ih0 < 0) ih0 += p.dh;
        int64_t iw0 = ow * p.sw - p.pw;
        int64_t iw1 = imin(iw0 + (p.kw - 1) * p.dw + 1, p.W);
        while (iw0 < 0) iw0 += p.dw;
        int64_t mi = ih0 * p.W + iw0;
        T mv = -(T)INFINITY;
        for (int64_t ih = ih0; ih < ih1; ih += p.dh)
            for (int64_t iw = iw0; iw < iw1; iw += p.dw) {
                T v = cuk_ld(xp[ih * p.W + iw]);
                if (v > mv || v != v) {
                    mv = v;
                    mi = ih * p.W + iw;
                }
            }
        y[i] = cuk_st<S>(mv);
        ind[i] = mi;
    }
}

/* Output rows whose max window (start o*s - p, span (k-1)*d + 1) can hold input row h. */
__device__ __forceinline__ void max_range(int64_t h, int64_t k, int64_t s, int64_t pad,
                                          int64_t d, int64_t nout, int64_t *lo, int64_t *hi) {
    int64_t span = (k - 1) * d + 1;
    *lo = (h + pad < span) ? 0 : (h + pad - span) / s + 1;
    *hi = imin((h + pad) / s + 1, nout);
}

/* Input element i of the gathering backward kernels: its row, column, the first output of
 * its plane, and the output rows [oh0, oh1) and columns [ow0, ow1) that can hold it. */
struct max_gather {
    int64_t h, w, obase, oh0, oh1, ow0, ow1;
};

__device__ __forceinline__ max_gather max_gather_at(const cuk_pool &p, int64_t i) {
    max_gather g;
    int64_t t = i / p.W, pl = t / p.H;
    g.w = i % p.W, g.h = t % p.H, g.obase = pl * p.Ho * p.Wo;
    max_range(g.h, p.kh, p.sh, p.ph, p.dh, p.Ho, &g.oh0, &g.oh1);
    max_range(g.w, p.kw, p.sw, p.pw, p.dw, p.Wo, &g.ow0, &g.ow1);
    return g;
}

template <typename S>
__global__ void k_max_bwd(cuk_pool p, const S *gy, const int64_t *ind, S *gx) {
    typedef typename cuk_acc<S>::type T;
    const int64_t n = p.NC * p.H * p.W;
    CUK_LOOP(int64_t, i, n) {
        const max_gather g = max_gather_at(p, i);
        const int64_t oh0 = g.oh0, oh1 = g.oh1, ow0 = g.ow0, ow1 = g.ow1, obase = g.obase;
        const int64_t target = g.h * p.W + g.w;
        T acc = 0;
        for (int64_t oh = oh0; oh < oh1; oh++)
            for (int64_t ow = ow0; ow < ow1; ow++) {
                int64_t o = obase + oh * p.Wo + ow;
                if (ind[o] == target) acc += cuk_ld(gy[o]);
            }
        gx[i] = cuk_st<S>(acc);
    }
}

/* ------------------------------------------------------- max, window codes */
/* The CPU's codes pooling (cpu_pool.c, mpc_fwd): window clipped to the input, first
 * maximum in row-major window order, a NaN always taken; with relu the output is
 * relu(max) and the code NOGRAD where that is not > 0 (NaN stays NaN). */
template <typename S>
__global__ void k_mpc_fwd(cuk_pool p, const S *x, S *y, uint8_t *codes, int relu) {
    typedef typename cuk_acc<S>::type T;
    const int64_t n = p.NC * p.Ho * p.Wo;
    CUK_LOOP(int64_t, i, n) {
        int64_t ow = i % p.Wo, t = i / p.Wo, oh = t % p.Ho, pl = t / p.Ho;
        const S *xp = x + pl * p.H * p.W;
        const int64_t ih0 = oh * p.sh - p.ph, iw0 = ow * p.sw - p.pw;
        int64_t ky0 = 0, ky1 = p.kh, kx0 = 0, kx1 = p.kw;
        while (ih0 + ky0 * p.dh < 0) ky0++;
        while (ky1 > ky0 && ih0 + (ky1 - 1) * p.dh >= p.H) ky1--;
        while (iw0 + kx0 * p.dw < 0) kx0++;
        while (kx1 > kx0 && iw0 + (kx1 - 1) * p.dw >= p.W) kx1--;
        int64_t best = ky0 * p.kw + kx0;
        T mv = -(T)INFINITY;
        for (int64_t ky = ky0; ky < ky1; ky++) {
            const S *row = xp + (ih0 + ky * p.dh) * p.W + iw0;
            for (int64_t kx = kx0; kx < kx1; kx++) {
                T v = cuk_ld(row[kx * p.dw]);
                if (v > mv || v != v) {
                    mv = v;
                    best = ky * p.kw + kx;
                }
            }
        }
        const bool dead = relu && !(mv > 0);
        y[i] = cuk_st<S>(dead && mv == mv ? (T)0 : mv);
        if (codes) codes[i] = dead ? (uint8_t)CUK_POOL_NOGRAD : (uint8_t)best;
    }
}

/* Gathers, per input element, the gradients of the outputs whose code names it, in the
 * order of the CPU's scatter (outputs row-major), so the sums are the same. */
template <typename S>
__global__ void k_mpc_bwd(cuk_pool p, const S *gy, const uint8_t *codes, S *gx) {
    typedef typename cuk_acc<S>::type T;
    const int64_t n = p.NC * p.H * p.W;
    CUK_LOOP(int64_t, i, n) {
        const max_gather g = max_gather_at(p, i);
        T acc = 0;
        for (int64_t oh = g.oh0; oh < g.oh1; oh++) {
            const int64_t dy = g.h - (oh * p.sh - p.ph);
            if (dy < 0 || dy % p.dh) continue;
            const int64_t ky = dy / p.dh;
            if (ky >= p.kh) continue;
            for (int64_t ow = g.ow0; ow < g.ow1; ow++) {
                const int64_t dx = g.w - (ow * p.sw - p.pw);
                if (dx < 0 || dx % p.dw) continue;
                const int64_t kx = dx / p.dw;
                if (kx >= p.kw) continue;
                const int64_t o = g.obase + oh * p.Wo + ow;
                if (codes[o] == ky * p.kw + kx) acc += cuk_ld(gy[o]);
            }
        }
        gx[i] = cuk_st<S>(acc);
    }
}

template <typename T>
static int mpc_run(const cuk_ctx *c, bool fwd, const cuk_pool *p, const void *in,
                   const uint8_t *cin, void *out, uint8_t *cout, int relu) {
    const int64_t n = fwd ? p->NC * p->Ho * p->Wo : p->NC * p->H * p->W;
    if (n <= 0) return 0;
    const int blocks = cuk_blocks(c, n, CUK_THREADS);
    if (fwd)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_mpc_fwd<T>)(
            *p, (const T *)in, (T *)out, cout, relu);
    else
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_mpc_bwd<T>)(
            *p, (const T *)in, cin, (T *)out);
    return cuk_status();
}

extern "C" int cuk_max_pool_codes_fwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *x,
                                      void *y, uint8_t *codes, int relu) {
    switch (dt) {
    case CT_FLOAT32: return mpc_run<float>(c, true, p, x, NULL, y, codes, relu);
    case CT_FLOAT64: return mpc_run<double>(c, true, p, x, NULL, y, codes, relu);
    case CT_BFLOAT16: return mpc_run<cuk_bf16>(c, true, p, x, NULL, y, codes, relu);
    case CT_FLOAT16: return mpc_run<cuk_f16>(c, true, p, x, NULL, y, codes, relu);
    default: return (int)cudaErrorInvalidValue;
    }
}

extern "C" int cuk_max_pool_codes_bwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *gy,
                                      const uint8_t *codes, void *gx) {
    switch (dt) {
    case CT_FLOAT32: return mpc_run<float>(c, false, p, gy, codes, gx, NULL, 0);
    case CT_FLOAT64: return mpc_run<double>(c, false, p, gy, codes, gx, NULL, 0);
    case CT_BFLOAT16: return mpc_run<cuk_bf16>(c, false, p, gy, codes, gx, NULL, 0);
    case CT_FLOAT16: return mpc_run<cuk_f16>(c, false, p, gy, codes, gx, NULL, 0);
    default: return (int)cudaErrorInvalidValue;
    }
}

/* ------------------------------------------------------------------- avg */
/* Window of output (oh, ow): clipped bounds and divisor; false when empty. */
__device__ __forceinline__ bool avg_window(const cuk_pool &p, int64_t oh, int64_t ow,
                                           int64_t *h0, int64_t *h1, int64_t *w0, int64_t *w1,
                                           int64_t *div) {
    int64_t ih0 = oh * p.sh - p.ph, iw0 = ow * p.sw - p.pw;
    int64_t ih1 = imin(ih0 + p.kh, p.H + p.ph), iw1 = imin(iw0 + p.kw, p.W + p.pw);
    int64_t pool = (ih1 - ih0) * (iw1 - iw0);
    ih0 = imax(ih0, 0);
    iw0 = imax(iw0, 0);
    ih1 = imin(ih1, p.H);
    iw1 = imin(iw1, p.W);
    *h0 = ih0;
    *h1 = ih1;
    *w0 = iw0;
    *w1 = iw1;
    *div = p.count_include_pad ? pool : (ih1 - ih0) * (iw1 - iw0);
    return ih0 < ih1 && iw0 < iw1;
}

template <typename S>
__global__ void k_avg_fwd(cuk_pool p, const S *x, S *y) {
    typedef typename cuk_acc<S>::type T;
    const int64_t n = p.NC * p.Ho * p.Wo;
    CUK_LOOP(int64_t, i, n) {
        int64_t ow = i % p.Wo, t = i / p.Wo, oh = t % p.Ho, pl = t / p.Ho;
        int64_t h0, h1, w0, w1, div;
        if (!avg_window(p, oh, ow, &h0, &h1, &w0, &w1, &div)) {
            y[i] = cuk_st<S>((T)0);
            continue;
        }
        const S *xp = x + pl * p.H * p.W;
        double s = 0;
        for (int64_t ih = h0; ih < h1; ih++)
            for (int64_t iw = w0; iw < w1; iw++) s += (double)cuk_ld(xp[ih * p.W + iw]);
        y[i] = cuk_st<S>((T)(s / (double)div));
    }
}

template <typename S>
__global__ void k_avg_bwd(cuk_pool p, const S *gy, S *gx) {
    typedef typename cuk_acc<S>::type T;
    const int64_t n = p.NC * p.H * p.W;
    CUK_LOOP(int64_t, i, n) {
        int64_t w = i % p.W, t = i / p.W, h = t % p.H, pl = t / p.H;
        /* outputs whose (unclipped) window [o*s - p, o*s - p + k) holds h */
        int64_t oh0 = (h + p.ph < p.kh) ? 0 : (h + p.ph - p.kh) / p.sh + 1;
        int64_t oh1 = imin((h + p.ph) / p.sh + 1, p.Ho);
        int64_t ow0 = (w + p.pw < p.kw) ? 0 : (w + p.pw - p.kw) / p.sw + 1;
        int64_t ow1 = imin((w + p.pw) / p.sw + 1, p.Wo);
        const S *g = gy + pl * p.Ho * p.Wo;
        T acc = 0;
        for (int64_t oh = oh0; oh < oh1; oh++)
            for (int64_t ow = ow0; ow < ow1; ow++) {
                int64_t h0, h1, w0, w1, div;
                if (!avg_window(p, oh, ow, &h0, &h1, &w0, &w1, &div)) continue;
                if (h < h0 || h >= h1 || w < w0 || w >= w1) continue;
                acc += cuk_ld(g[oh * p.Wo + ow]) / (T)div;
            }
        gx[i] = cuk_st<S>(acc);
    }
}

/* -------------------------------------------------------------- adaptive */
__device__ __forceinline__ int64_t ad_start(int64_t a, int64_t b, int64_t c) {
    return (a / b) * c + ((a % b) * c) / b;
}
__device__ __forceinline__ int64_t ad_end(int64_t a, int64_t b, int64_t c) {
    return 1 + ((a + 1) * c - 1) / b;
}

template <typename S>
__global__ void k_ad_fwd(cuk_pool p, const S *x, S *y) {
    typedef typename cuk_acc<S>::type T;
    const int64_t n = p.NC * p.Ho * p.Wo;
    CUK_LOOP(int64_t, i, n) {
        int64_t ow = i % p.Wo, t = i / p.Wo, oh = t % p.Ho, pl = t / p.Ho;
        int64_t h0 = ad_start(oh, p.Ho, p.H), h1 = ad_end(oh, p.Ho, p.H);
        int64_t w0 = ad_start(ow, p.Wo, p.W), w1 = ad_end(ow, p.Wo, p.W);
        const S *xp = x + pl * p.H * p.W;
        double s = 0;
        for (int64_t ih = h0; ih < h1; ih++)
            for (int64_t iw = w0; iw < w1; iw++) s += (double)cuk_ld(xp[ih * p.W + iw]);
        y[i] = cuk_st<S>((T)(s / (double)(h1 - h0) / (double)(w1 - w0)));
    }
}

template <typename S>
__global__ void k_ad_bwd(cuk_pool p, const S *gy, S *gx) {
    typedef typename cuk_acc<S>::type T;
    const int64_t n = p.NC * p.H * p.W;
    CUK_LOOP(int64_t, i, n) {
        int64_t w = i % p.W, t = i / p.W, h = t % p.H, pl = t / p.H;
        /* candidate outputs, then an exact containment test */
        int64_t oh0 = imax((h * p.Ho) / p.H - 1, 0), oh1 = imin(((h + 1) * p.Ho) / p.H + 2, p.Ho);
        int64_t ow0 = imax((w * p.Wo) / p.W - 1, 0), ow1 = imin(((w + 1) * p.Wo) / p.W + 2, p.Wo);
        const S *g = gy + pl * p.Ho * p.Wo;
        T acc = 0;
        for (int64_t oh = oh0; oh < oh1; oh++) {
            int64_t h0 = ad_start(oh, p.Ho, p.H), h1 = ad_end(oh, p.Ho, p.H);
            if (h < h0 || h >= h1) continue;
            for (int64_t ow = ow0; ow < ow1; ow++) {
                int64_t w0 = ad_start(ow, p.Wo, p.W), w1 = ad_end(ow, p.Wo, p.W);
                if (w < w0 || w >= w1) continue;
                acc += cuk_ld(g[oh * p.Wo + ow]) / (T)(h1 - h0) / (T)(w1 - w0);
            }
        }
        gx[i] = cuk_st<S>(acc);
    }
}

/* --------------------------------------------------------------- launchers */
enum { MAX_FWD, MAX_BWD, AVG_FWD, AVG_BWD, AD_FWD, AD_BWD };

template <typename T>
static int pool_run(const cuk_ctx *c, int kind, const cuk_pool *p, const void *in,
                    const int64_t *ind_in, void *out, int64_t *ind_out) {
    const bool fwd = kind == MAX_FWD || kind == AVG_FWD || kind == AD_FWD;
    const int64_t n = fwd ? p->NC * p->Ho * p->Wo : p->NC * p->H * p->W;
    if (n <= 0) return 0;
    const int blocks = cuk_blocks(c, n, CUK_THREADS);
    const T *x = (const T *)in;
    T *y = (T *)out;
    switch (kind) {
    case MAX_FWD: CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_max_fwd<T>)(
        *p, x, y, ind_out); break;
    case MAX_BWD: CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_max_bwd<T>)(
        *p, x, ind_in, y); break;
    case AVG_FWD: CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_avg_fwd<T>)(*p, x, y); break;
    case AVG_BWD: CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_avg_bwd<T>)(*p, x, y); break;
    case AD_FWD: CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_ad_fwd<T>)(*p, x, y); break;
    default: CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_ad_bwd<T>)(*p, x, y); break;
    }
    return cuk_status();
}

static int pool_dispatch(const cuk_ctx *c, int dt, int kind, const cuk_pool *p, const void *in,
                         const int64_t *ind_in, void *out, int64_t *ind_out) {
    switch (dt) {
    case CT_FLOAT32: return pool_run<float>(c, kind, p, in, ind_in, out, ind_out);
    case CT_FLOAT64: return pool_run<double>(c, kind, p, in, ind_in, out, ind_out);
    case CT_BFLOAT16: return pool_run<cuk_bf16>(c, kind, p, in, ind_in, out, ind_out);
    case CT_FLOAT16: return pool_run<cuk_f16>(c, kind, p, in, ind_in, out, ind_out);
    default: return (int)cudaErrorInvalidValue;
    }
}

extern "C" int cuk_max_pool_fwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *x,
                                void *y, int64_t *ind) {
    return pool_dispatch(c, dt, MAX_FWD, p, x, NULL, y, ind);
}
extern "C" int cuk_max_pool_bwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *gy,
                                const int64_t *ind, void *gx) {
    return pool_dispatch(c, dt, MAX_BWD, p, gy, ind, gx, NULL);
}
extern "C" int cuk_avg_pool_fwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *x,
                                void *y) {
    return pool_dispatch(c, dt, AVG_FWD, p, x, NULL, y, NULL);
}
extern "C" int cuk_avg_pool_bwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *gy,
                                void *gx) {
    return pool_dispatch(c, dt, AVG_BWD, p, gy, NULL, gx, NULL);
}
extern "C" int cuk_adaptive_pool_fwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *x,
                                     void *y) {
    return pool_dispatch(c, dt, AD_FWD, p, x, NULL, y, NULL);
}
extern "C" int cuk_adaptive_pool_bwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *gy,
                                     void *gx) {
    return pool_dispatch(c, dt, AD_BWD, p, gy, NULL, gx, NULL);
}
