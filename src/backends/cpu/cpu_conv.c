/* 2-D convolution on the CPU: im2col + GEMM (OpenBLAS, single-threaded inside
 * ct_parallel_for), NCHW, float32 and float64, groups, stride, padding, dilation.
 *
 * Parallel plan. Work is cut into tasks (an image, or a range of output pixels of an
 * image, or a range of input channels for the input gradient) and the tasks are dealt
 * out over "slots": ct_parallel_for runs over the slot indices, and each invocation
 * uses the workspace of the first slot of its range, so a workspace is never shared
 * whatever the thread count. Workspaces come from a process-wide pool and are reused
 * across calls (grown when a larger one is needed, never freed per call); concurrent
 * callers each take their own set from the pool.
 *
 *  forward          y[n, g] = W[g] @ col(x[n, g])               tasks: (n, pixel range)
 *  backward input   gx[n, g] = col2im(W[g]^T @ gy[n, g])        tasks: (n, g, channel range)
 *  backward weight  gW[g] += gy[n, g] @ col(x[n, g])^T          tasks: (n, pixel range),
 *                   one accumulator per slot, then a parallel reduction; or, when the
 *                   per-slot copies of a large weight would cost too much memory,
 *                   tasks over (g, output-channel range) writing gW rows directly.
 * A 1x1 kernel with stride 1 and no padding skips im2col (the image is the column
 * matrix).
 *
 * This im2col path is the reference. float32 work goes to the fast kernels of
 * conv_fast.c when they apply (see the entry points at the end of this file);
 * CTORCH_CONV_REFERENCE=1 forces this path everywhere. */
#include "core/backend.h"
#include "core/error.h"
#include "core/parallel.h"
#include "conv_fast.h"
#include "cpu_kernels.h"
#include "pool_fast.h"

#include <cblas.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Workspaces come from the pool shared with the fast path (conv_fast.c). */
typedef cpu_ws_set ws_set;
#define ws_acquire cpu_ws_acquire
#define ws_release cpu_ws_release

/* ----------------------------------------------------------------- geometry */

typedef struct {
    int64_t N, C, H, W, O, Ho, Wo, kh, kw, G, Cg, Og, Kg, P, HW;
    int64_t sh, sw, ph, pw, dh, dw;
    int direct; /* 1x1, stride 1, no padding: the image is the column matrix */
} conv_geom;

static int geom_init(conv_geom *g, const ct_tensor *x, const ct_tensor *w, const ct_tensor *y,
                     const ct_conv_params *p, const char *op) {
    if (x->ndim != 4 || w->ndim != 4 || y->ndim != 4)
        return ct_error("%s: expected 4-D input, weight and output", op);
    if (x->dtype != CT_FLOAT32 && x->dtype != CT_FLOAT64)
        return ct_error("%s: dtype %s not supported on cpu (float32 and float64 only)", op,
                        ct_dtype_name(x->dtype));
    g->N = x->shape[0];
    g->C = x->shape[1];
    g->H = x->shape[2];
    g->W = x->shape[3];
    g->O = w->shape[0];
    g->kh = w->shape[2];
    g->kw = w->shape[3];
    g->Ho = y->shape[2];
    g->Wo = y->shape[3];
    g->G = p->groups > 0 ? p->groups : 1;
    g->Cg = g->C / g->G;
    g->Og = g->O / g->G;
    g->Kg = g->Cg * g->kh * g->kw;
    g->P = g->Ho * g->Wo;
    g->HW = g->H * g->W;
    g->sh = p->stride[0];
    g->sw = p->stride[1];
    g->ph = p->padding[0];
    g->pw = p->padding[1];
    g->dh = p->dilation[0];
    g->dw = p->dilation[1];
    g->direct = g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 &&
                g->pw == 0 && g->Ho == g->H && g->Wo == g->W;
    if (g->Kg > INT_MAX || g->P > INT_MAX || g->O > INT_MAX || g->HW > INT_MAX)
        return ct_error("%s: tensor dimensions too large for BLAS", op);
    return 0;
}

/* Valid output-column range [lo, hi) for a kernel column offset joff:
 * 0 <= ow*sw + joff < W. */
static inline void col_range(const conv_geom *g, int64_t joff, int64_t *lo, int64_t *hi) {
    int64_t l = joff >= 0 ? 0 : (-joff + g->sw - 1) / g->sw;
    int64_t h = g->W - joff <= 0 ? 0 : (g->W - joff + g->sw - 1) / g->sw;
    if (h > g->Wo) h = g->Wo;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

static inline int64_t clamp64(int64_t v, int64_t a, int64_t b) { return v < a ? a : v > b ? b : v; }

/* Typed kernels: im2col over channels [0, nc) of `x` (an image plane stack) and
 * output pixels [p0, p1) into col [nc*kh*kw, p1-p0]; col2im accumulates col
 * [nc*kh*kw, P] back into gx [nc, H, W]; and the task bodies. */
#define DEF_CONV(T, SFX, GEMM)                                                                 \
    static void im2col_##SFX(const conv_geom *g, const T *x, int64_t nc, int64_t p0,           \
                             int64_t p1, T *col) {                                              \
        int64_t np = p1 - p0;                                                                   \
        for (int64_t c = 0; c < nc; c++) {                                                      \
            const T *xc = x + c * g->HW;                                                        \
            for (int64_t ki = 0; ki < g->kh; ki++)                                              \
                for (int64_t kj = 0; kj < g->kw; kj++) {                                        \
                    T *dst = col + ((c * g->kh + ki) * g->kw + kj) * np;                        \
                    int64_t ioff = ki * g->dh - g->ph, joff = kj * g->dw - g->pw, lo, hi;       \
                    col_range(g, joff, &lo, &hi);                                               \
                    int64_t oh = p0 / g->Wo, ow = p0 % g->Wo, p = p0;                           \
                    while (p < p1) {                                                            \
                        int64_t oe = g->Wo - ow < p1 - p ? g->Wo : ow + (p1 - p);               \
                        T *d = dst + (p - p0); /* d[o - ow] for o in [ow, oe) */        \
                        int64_t ih = oh * g->sh + ioff;                                         \
                        if (ih < 0 || ih >= g->H) {                                             \
                            memset(d, 0, sizeof(T) * (size_t)(oe - ow));                        \
                        } else {                                                                \
                            const T *src = xc + ih * g->W;                                      \
                            int64_t a = clamp64(lo, ow, oe), b = clamp64(hi, a, oe);            \
                            if (a > ow) memset(d, 0, sizeof(T) * (size_t)(a - ow));             \
                            if (g->sw == 1) {                                                   \
                                if (b > a)                                                      \
                                    memcpy(d + (a - ow), src + (a + joff),                      \
                                           sizeof(T) * (size_t)(b - a));                        \
                            } else {                                                            \
                                for (int64_t o = a; o < b; o++)                                 \
                                    d[o - ow] = src[o * g->sw + joff];                          \
                            }                                                                   \
                            if (oe > b) memset(d + (b - ow), 0, sizeof(T) * (size_t)(oe - b));  \
                        }                                                                       \
                        p += oe - ow;                                                           \
                        ow = 0;                                                                 \
                        oh++;                                                                   \
                    }                                                                           \
                }                                                                               \
        }                                                                                       \
    }                                                                                           \
                                                                                                \
    static void col2im_##SFX(const conv_geom *g, const T *col, int64_t nc, T *gx) {             \
        for (int64_t c = 0; c < nc; c++) {                                                      \
            T *gc = gx + c * g->HW;                                                             \
            for (int64_t ki = 0; ki < g->kh; ki++)                                              \
                for (int64_t kj = 0; kj < g->kw; kj++) {                                        \
                    const T *src = col + ((c * g->kh + ki) * g->kw + kj) * g->P;                \
                    int64_t ioff = ki * g->dh - g->ph, joff = kj * g->dw - g->pw, lo, hi;       \
                    col_range(g, joff, &lo, &hi);                                               \
                    for (int64_t oh = 0; oh < g->Ho; oh++) {                                    \
                        int64_t ih = oh * g->sh + ioff;                                         \
                        if (ih < 0 || ih >= g->H) continue;                                     \
                        T *dr = gc + ih * g->W;                                                 \
                        const T *sr = src + oh * g->Wo;                                         \
                        if (g->sw == 1)                                                         \
                            for (int64_t o = lo; o < hi; o++) dr[o + joff] += sr[o];            \
                        else                                                                    \
                            for (int64_t o = lo; o < hi; o++) dr[o * g->sw + joff] += sr[o];    \
                    }                                                                           \
                }                                                                               \
        }                                                                                       \
    }                                                                                           \
                                                                                                \
    static void fwd_task_##SFX(const conv_geom *g, const T *x, const T *w, const T *bias, T *y, \
                               int64_t n, int64_t p0, int64_t p1, T *col) {                     \
        int64_t np = p1 - p0;                                                                   \
        for (int64_t gi = 0; gi < g->G; gi++) {                                                 \
            const T *xg = x + (n * g->C + gi * g->Cg) * g->HW;                                  \
            const T *wg = w + gi * g->Og * g->Kg;                                               \
            T *yg = y + (n * g->O + gi * g->Og) * g->P + p0;                                    \
            T beta = 0;                                                                         \
            if (bias) {                                                                         \
                for (int64_t o = 0; o < g->Og; o++) {                                           \
                    T bv = bias[gi * g->Og + o], *yr = yg + o * g->P;                           \
                    for (int64_t q = 0; q < np; q++) yr[q] = bv;                                \
                }                                                                               \
                beta = 1;                                                                       \
            } else if (g->Kg == 0) {                                                            \
                for (int64_t o = 0; o < g->Og; o++)                                             \
                    memset(yg + o * g->P, 0, sizeof(T) * (size_t)np);                           \
            }                                                                                   \
            if (g->Kg == 0 || g->Og == 0) continue;                                             \
            const T *B;                                                                         \
            int64_t ldb;                                                                        \
            if (g->direct) {                                                                    \
                B = xg + p0;                                                                    \
                ldb = g->P;                                                                     \
            } else {                                                                            \
                im2col_##SFX(g, xg, g->Cg, p0, p1, col);                                        \
                B = col;                                                                        \
                ldb = np;                                                                       \
            }                                                                                   \
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g->Og, (int)np, (int)g->Kg,    \
                 (T)1, wg, (int)g->Kg, B, (int)ldb, beta, yg, (int)g->P);                       \
        }                                                                                       \
    }                                                                                           \
                                                                                                \
    static void bwd_in_task_##SFX(const conv_geom *g, const T *gy, const T *w, T *gx,           \
                                  int64_t n, int64_t gi, int64_t c0, int64_t c1, T *col) {      \
        int64_t nc = c1 - c0, kk = g->kh * g->kw;                                               \
        const T *gyg = gy + (n * g->O + gi * g->Og) * g->P;                                     \
        const T *wg = w + gi * g->Og * g->Kg;                                                   \
        T *gxg = gx + (n * g->C + gi * g->Cg + c0) * g->HW;                                     \
        if (g->Og == 0) {                                                                       \
            memset(gxg, 0, sizeof(T) * (size_t)(nc * g->HW));                                   \
            return;                                                                             \
        }                                                                                       \
        if (g->direct) {                                                                        \
            GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nc, (int)g->P, (int)g->Og,       \
                 (T)1, wg + c0, (int)g->Kg, gyg, (int)g->P, (T)0, gxg, (int)g->P);              \
            return;                                                                             \
        }                                                                                       \
        GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(nc * kk), (int)g->P, (int)g->Og,    \
             (T)1, wg + c0 * kk, (int)g->Kg, gyg, (int)g->P, (T)0, col, (int)g->P);             \
        memset(gxg, 0, sizeof(T) * (size_t)(nc * g->HW));                                       \
        col2im_##SFX(g, col, nc, gxg);                                                          \
    }                                                                                           \
                                                                                                \
    static void bwd_w_task_##SFX(const conv_geom *g, const T *gy, const T *x, T *acc, int first, \
                                 int64_t n, int64_t p0, int64_t p1, T *col) {                   \
        int64_t np = p1 - p0;                                                                   \
        for (int64_t gi = 0; gi < g->G; gi++) {                                                 \
            const T *xg = x + (n * g->C + gi * g->Cg) * g->HW;                                  \
            const T *gyg = gy + (n * g->O + gi * g->Og) * g->P + p0;                            \
            T *ag = acc + gi * g->Og * g->Kg;                                                   \
            const T *B;                                                                         \
            int64_t ldb;                                                                        \
            if (g->direct) {                                                                    \
                B = xg + p0;                                                                    \
                ldb = g->P;                                                                     \
            } else {                                                                            \
                im2col_##SFX(g, xg, g->Cg, p0, p1, col);                                        \
                B = col;                                                                        \
                ldb = np;                                                                       \
            }                                                                                   \
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)g->Og, (int)g->Kg, (int)np,      \
                 (T)1, gyg, (int)g->P, B, (int)ldb, first ? (T)0 : (T)1, ag, (int)g->Kg);       \
        }                                                                                       \
    }                                                                                           \
                                                                                                \
    /* Rows [o0, o1) of group gi's weight gradient over the whole batch, written straight    \
     * into gw (no accumulator, no reduction). */                                            \
    static void bwd_w_rows_##SFX(const conv_geom *g, const T *gy, const T *x, T *gw,            \
                                 int64_t gi, int64_t o0, int64_t o1, int64_t chunk, T *col) {   \
        int first = 1;                                                                          \
        for (int64_t n = 0; n < g->N; n++)                                                      \
            for (int64_t p0 = 0; p0 < g->P; p0 += chunk) {                                      \
                int64_t p1 = p0 + chunk < g->P ? p0 + chunk : g->P, np = p1 - p0;               \
                const T *xg = x + (n * g->C + gi * g->Cg) * g->HW;                              \
                const T *B;                                                                     \
                int64_t ldb;                                                                    \
                if (g->direct) {                                                                \
                    B = xg + p0;                                                                \
                    ldb = g->P;                                                                 \
                } else {                                                                        \
                    im2col_##SFX(g, xg, g->Cg, p0, p1, col);                                    \
                    B = col;                                                                    \
                    ldb = np;                                                                   \
                }                                                                               \
                GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(o1 - o0), (int)g->Kg,       \
                     (int)np, (T)1, gy + (n * g->O + gi * g->Og + o0) * g->P + p0, (int)g->P,  \
                     B, (int)ldb, first ? (T)0 : (T)1, gw + (gi * g->Og + o0) * g->Kg,          \
                     (int)g->Kg);                                                               \
                first = 0;                                                                      \
            }                                                                                   \
    }

DEF_CONV(float, f32, cblas_sgemm)
DEF_CONV(double, f64, cblas_dgemm)

/* ------------------------------------------------------------------ planning */

#define WS_CAP ((int64_t)4 << 20) /* target bytes of column buffer per task */

/* Splits P output pixels into chunks: at most WS_CAP of columns per chunk, and enough
 * tasks (with N images) to keep the threads busy. Returns the chunk size. */
static int64_t plan_pixels(const conv_geom *g, size_t es, int nth, int64_t *nchunks) {
    int64_t P = g->P > 0 ? g->P : 1;
    int64_t per_px = g->direct ? 0 : g->Kg * (int64_t)es;
    int64_t maxc = per_px > 0 ? WS_CAP / per_px : P;
    if (maxc < 1) maxc = 1;
    int64_t nc = (P + maxc - 1) / maxc;
    int64_t want = nth > 1 ? 4 * (int64_t)nth : 1;
    if (g->N * nc < want) {
        int64_t need = (want + g->N - 1) / (g->N > 0 ? g->N : 1);
        int64_t most = (P + 31) / 32; /* keep chunks >= 32 pixels */
        if (need > most) need = most;
        if (need > nc) nc = need;
    }
    int64_t chunk = (P + nc - 1) / nc;
    *nchunks = (P + chunk - 1) / chunk;
    return chunk;
}

static int slots_for(int64_t ntasks, double flops, int nth) {
    if (flops < 1e6 || nth <= 1) return 1;
    return (int)(ntasks < nth ? ntasks : nth);
}

/* ------------------------------------------------------------------- forward */

typedef struct {
    conv_geom g;
    ct_dtype dt;
    const void *x, *w, *b;
    void *y;
    int64_t chunk, nchunks, ntasks;
    int nslots;
    ws_set *ws;
} fwd_ctx;

static void fwd_range(void *vctx, int64_t sb, int64_t se) {
    fwd_ctx *c = vctx;
    int64_t t0 = c->ntasks * sb / c->nslots, t1 = c->ntasks * se / c->nslots;
    void *col = c->ws ? c->ws->buf[sb] : NULL;
    for (int64_t t = t0; t < t1; t++) {
        int64_t n = t / c->nchunks, p0 = (t % c->nchunks) * c->chunk;
        int64_t p1 = p0 + c->chunk < c->g.P ? p0 + c->chunk : c->g.P;
        if (c->dt == CT_FLOAT32)
            fwd_task_f32(&c->g, c->x, c->w, c->b, c->y, n, p0, p1, col);
        else
            fwd_task_f64(&c->g, c->x, c->w, c->b, c->y, n, p0, p1, col);
    }
}

static int ref_conv2d_forward(ct_tensor *y, const ct_tensor *x, const ct_tensor *w,
                       const ct_tensor *bias, const ct_conv_params *p) {
    fwd_ctx c = {.dt = x->dtype};
    if (geom_init(&c.g, x, w, y, p, "conv2d") != 0) return -1;
    if (ct_numel(y) == 0) return 0;
    size_t es = ct_dtype_size(x->dtype);
    int nth = ct_plan_threads();
    c.chunk = plan_pixels(&c.g, es, nth, &c.nchunks);
    c.ntasks = c.g.N * c.nchunks;
    c.nslots = slots_for(c.ntasks, 2.0 * c.g.N * c.g.O * c.g.P * (double)c.g.Kg, nth);
    if (!c.g.direct && c.g.Kg > 0) {
        c.ws = ws_acquire(c.nslots, (size_t)(c.g.Kg * c.chunk) * es, "conv2d");
        if (!c.ws) return -1;
    }
    c.x = ct_ptr(x);
    c.w = ct_ptr(w);
    c.b = bias ? ct_ptr(bias) : NULL;
    c.y = ct_ptr(y);
    ct_parallel_for(c.nslots, 1, fwd_range, &c);
    ws_release(c.ws);
    return 0;
}

/* ------------------------------------------------------------ backward input */

typedef struct {
    conv_geom g;
    ct_dtype dt;
    const void *gy, *w;
    void *gx;
    int64_t cchunk, ncc, ntasks;
    int nslots;
    ws_set *ws;
} bin_ctx;

static void bin_range(void *vctx, int64_t sb, int64_t se) {
    bin_ctx *c = vctx;
    int64_t t0 = c->ntasks * sb / c->nslots, t1 = c->ntasks * se / c->nslots;
    void *col = c->ws ? c->ws->buf[sb] : NULL;
    for (int64_t t = t0; t < t1; t++) {
        int64_t cc = t % c->ncc, ng = t / c->ncc, gi = ng % c->g.G, n = ng / c->g.G;
        int64_t c0 = cc * c->cchunk, c1 = c0 + c->cchunk < c->g.Cg ? c0 + c->cchunk : c->g.Cg;
        if (c->dt == CT_FLOAT32)
            bwd_in_task_f32(&c->g, c->gy, c->w, c->gx, n, gi, c0, c1, col);
        else
            bwd_in_task_f64(&c->g, c->gy, c->w, c->gx, n, gi, c0, c1, col);
    }
}

static int ref_conv2d_backward_input(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *w,
                              const ct_conv_params *p) {
    bin_ctx c = {.dt = gx->dtype};
    if (geom_init(&c.g, gx, w, gy, p, "conv2d backward") != 0) return -1;
    if (ct_numel(gx) == 0) return 0;
    size_t es = ct_dtype_size(gx->dtype);
    int nth = ct_plan_threads();
    int64_t kk = c.g.kh * c.g.kw, Cg = c.g.Cg;
    int64_t per_c = c.g.direct ? 0 : kk * c.g.P * (int64_t)es;
    int64_t maxcc = per_c > 0 ? WS_CAP / per_c : Cg;
    if (maxcc < 1) maxcc = 1;
    int64_t ncc = (Cg + maxcc - 1) / maxcc;
    int64_t want = nth > 1 ? 4 * (int64_t)nth : 1, ng = c.g.N * c.g.G;
    if (ng * ncc < want) {
        int64_t need = (want + ng - 1) / ng;
        if (need > Cg) need = Cg;
        if (need > ncc) ncc = need;
    }
    c.cchunk = (Cg + ncc - 1) / ncc;
    c.ncc = (Cg + c.cchunk - 1) / c.cchunk;
    c.ntasks = ng * c.ncc;
    c.nslots = slots_for(c.ntasks, 2.0 * c.g.N * c.g.O * c.g.P * (double)c.g.Kg, nth);
    if (!c.g.direct && c.g.Og > 0) {
        c.ws = ws_acquire(c.nslots, (size_t)(c.cchunk * kk * c.g.P) * es, "conv2d backward");
        if (!c.ws) return -1;
    }
    c.gy = ct_ptr(gy);
    c.w = ct_ptr(w);
    c.gx = ct_ptr(gx);
    ct_parallel_for(c.nslots, 1, bin_range, &c);
    ws_release(c.ws);
    return 0;
}

/* ----------------------------------------------------------- backward weight */

/* Two plans. (A) batch split: tasks are (image, pixel range); each slot accumulates
 * a private copy of the weight gradient, then a parallel reduction sums the copies.
 * (B) row split, for weights too large to copy per thread: tasks are (group, range
 * of output channels), each walking the whole batch and writing its rows of gw
 * directly, at the price of recomputing the columns once per row range. */
typedef struct {
    conv_geom g;
    ct_dtype dt;
    const void *gy, *x;
    void *gw;
    int64_t chunk, nchunks, ntasks, wn;
    int64_t orows, nochunks; /* plan B */
    int nslots;
    size_t acc_bytes; /* offset of the column buffer inside a slot's workspace */
    ws_set *ws;
    unsigned char *touched;
} bw_ctx;

static void bw_range(void *vctx, int64_t sb, int64_t se) {
    bw_ctx *c = vctx;
    int64_t t0 = c->ntasks * sb / c->nslots, t1 = c->ntasks * se / c->nslots;
    char *base = c->ws ? c->ws->buf[sb] : NULL;
    /* A single slot accumulates straight into gw. */
    void *acc = c->nslots == 1 ? c->gw : base;
    void *col = c->nslots == 1 ? base : base + c->acc_bytes;
    for (int64_t t = t0; t < t1; t++) {
        int64_t n = t / c->nchunks, p0 = (t % c->nchunks) * c->chunk;
        int64_t p1 = p0 + c->chunk < c->g.P ? p0 + c->chunk : c->g.P;
        int first = !c->touched[sb];
        c->touched[sb] = 1;
        if (c->dt == CT_FLOAT32)
            bwd_w_task_f32(&c->g, c->gy, c->x, acc, first, n, p0, p1, col);
        else
            bwd_w_task_f64(&c->g, c->gy, c->x, acc, first, n, p0, p1, col);
    }
}

static void bw_rows_range(void *vctx, int64_t sb, int64_t se) {
    bw_ctx *c = vctx;
    int64_t t0 = c->ntasks * sb / c->nslots, t1 = c->ntasks * se / c->nslots;
    void *col = c->ws ? c->ws->buf[sb] : NULL;
    for (int64_t t = t0; t < t1; t++) {
        int64_t gi = t / c->nochunks, o0 = (t % c->nochunks) * c->orows;
        int64_t o1 = o0 + c->orows < c->g.Og ? o0 + c->orows : c->g.Og;
        if (c->dt == CT_FLOAT32)
            bwd_w_rows_f32(&c->g, c->gy, c->x, c->gw, gi, o0, o1, c->chunk, col);
        else
            bwd_w_rows_f64(&c->g, c->gy, c->x, c->gw, gi, o0, o1, c->chunk, col);
    }
}

static void bw_reduce(void *vctx, int64_t b, int64_t e) {
    bw_ctx *c = vctx;
    if (c->dt == CT_FLOAT32) {
        float *out = c->gw;
        memset(out + b, 0, sizeof(float) * (size_t)(e - b));
        for (int s = 0; s < c->nslots; s++) {
            if (!c->touched[s]) continue;
            const float *a = c->ws->buf[s];
            for (int64_t i = b; i < e; i++) out[i] += a[i];
        }
    } else {
        double *out = c->gw;
        memset(out + b, 0, sizeof(double) * (size_t)(e - b));
        for (int s = 0; s < c->nslots; s++) {
            if (!c->touched[s]) continue;
            const double *a = c->ws->buf[s];
            for (int64_t i = b; i < e; i++) out[i] += a[i];
        }
    }
}

/* Bytes of per-slot weight accumulators plan A may hold; CTORCH_CONV_WGRAD_BUDGET
 * overrides it (tests use it to exercise plan B on small shapes). */
static int64_t bw_budget(void) {
    const char *e = getenv("CTORCH_CONV_WGRAD_BUDGET");
    long long v = e ? atoll(e) : 0;
    return v > 0 ? (int64_t)v : ((int64_t)64 << 20);
}

static int ref_conv2d_backward_weight(ct_tensor *gw, const ct_tensor *gy, const ct_tensor *x,
                               const ct_conv_params *p) {
    bw_ctx c = {.dt = x->dtype};
    if (geom_init(&c.g, x, gw, gy, p, "conv2d backward") != 0) return -1;
    c.wn = ct_numel(gw);
    if (c.wn == 0) return 0;
    size_t es = ct_dtype_size(x->dtype);
    if (c.g.N == 0 || c.g.P == 0) {
        memset(ct_ptr(gw), 0, (size_t)c.wn * es);
        return 0;
    }
    c.gy = ct_ptr(gy);
    c.x = ct_ptr(x);
    c.gw = ct_ptr(gw);
    int nth = ct_plan_threads();
    double flops = 2.0 * c.g.N * c.g.O * c.g.P * (double)c.g.Kg;
    c.chunk = plan_pixels(&c.g, es, nth, &c.nchunks);
    c.ntasks = c.g.N * c.nchunks;
    int want = slots_for(c.ntasks, flops, nth);
    int64_t max_slots = bw_budget() / (c.wn * (int64_t)es);
    if (max_slots < 1) max_slots = 1;
    int64_t row_tasks = c.g.G * ((c.g.Og + 15) / 16);
    if (want > max_slots && row_tasks > max_slots) {
        /* Plan B: split the output channels. */
        int64_t need = (want + c.g.G - 1) / c.g.G;
        c.orows = (c.g.Og + need - 1) / need;
        if (c.orows < 16 && c.g.Og >= 16) c.orows = 16;
        c.nochunks = (c.g.Og + c.orows - 1) / c.orows;
        c.ntasks = c.g.G * c.nochunks;
        int64_t nchunks;
        c.chunk = plan_pixels(&c.g, es, 1, &nchunks); /* columns only bounded by WS_CAP */
        c.nslots = (int)(c.ntasks < want ? c.ntasks : want);
        if (!c.g.direct) {
            c.ws = ws_acquire(c.nslots, (size_t)(c.g.Kg * c.chunk) * es, "conv2d backward");
            if (!c.ws) return -1;
        }
        ct_parallel_for(c.nslots, 1, bw_rows_range, &c);
        ws_release(c.ws);
        return 0;
    }
    /* Plan A: split the batch, one accumulator per slot. */
    c.nslots = want;
    c.acc_bytes = c.nslots == 1 ? 0 : ((size_t)c.wn * es + 63) / 64 * 64;
    size_t col_bytes = c.g.direct ? 0 : (size_t)(c.g.Kg * c.chunk) * es;
    unsigned char touched_small[256];
    c.touched = c.nslots <= 256 ? touched_small : calloc((size_t)c.nslots, 1);
    if (!c.touched) return ct_error("conv2d backward: out of memory");
    memset(c.touched, 0, (size_t)c.nslots);
    if (c.acc_bytes + col_bytes > 0) {
        c.ws = ws_acquire(c.nslots, c.acc_bytes + col_bytes, "conv2d backward");
        if (!c.ws) {
            if (c.touched != touched_small) free(c.touched);
            return -1;
        }
    }
    ct_parallel_for(c.nslots, 1, bw_range, &c);
    if (c.nslots > 1) ct_parallel_for(c.wn, 16384, bw_reduce, &c);
    ws_release(c.ws);
    if (c.touched != touched_small) free(c.touched);
    return 0;
}

/* ------------------------------------------------------------- entry points */

static void geom_from(cf_geom *g, const ct_tensor *x, const ct_tensor *w, const ct_tensor *y,
                      const ct_conv_params *p) {
    g->N = x->shape[0];
    g->C = x->shape[1];
    g->H = x->shape[2];
    g->W = x->shape[3];
    g->O = w->shape[0];
    g->kh = w->shape[2];
    g->kw = w->shape[3];
    g->Ho = y->shape[2];
    g->Wo = y->shape[3];
    g->G = p->groups > 0 ? p->groups : 1;
    g->sh = p->stride[0];
    g->sw = p->stride[1];
    g->ph = p->padding[0];
    g->pw = p->padding[1];
    g->dh = p->dilation[0];
    g->dw = p->dilation[1];
}

/* The fast path takes float32 with no empty dimension. */
static int fast_ok(const ct_tensor *x, const ct_tensor *w, const ct_tensor *y) {
    return x->dtype == CT_FLOAT32 && x->ndim == 4 && w->ndim == 4 && y->ndim == 4 &&
           ct_numel(x) > 0 && ct_numel(w) > 0 && ct_numel(y) > 0 && cf_available();
}

static void relu_inplace(ct_tensor *y) {
    int64_t n = ct_numel(y);
    if (y->dtype == CT_FLOAT32) {
        float *p = (float *)ct_ptr(y);
        for (int64_t i = 0; i < n; i++) p[i] = p[i] > 0 || p[i] != p[i] ? p[i] : 0.0f;
    } else {
        double *p = (double *)ct_ptr(y);
        for (int64_t i = 0; i < n; i++) p[i] = p[i] > 0 || p[i] != p[i] ? p[i] : 0.0;
    }
}

int cpu_conv2d_forward_ex(ct_tensor *y, const ct_tensor *x, const ct_tensor *w,
                          const ct_tensor *bias, const ct_conv_params *p, int relu) {
    if (fast_ok(x, w, y)) {
        cf_geom g;
        geom_from(&g, x, w, y, p);
        return cf_forward(&g, (const float *)ct_ptr(x), (const float *)ct_ptr(w),
                          bias ? (const float *)ct_ptr(bias) : NULL, (float *)ct_ptr(y), relu);
    }
    if (ref_conv2d_forward(y, x, w, bias, p) != 0) return -1;
    if (relu) relu_inplace(y);
    return 0;
}

int cpu_conv2d_forward_full(ct_tensor *y, const ct_tensor *x, const ct_tensor *w,
                       const ct_tensor *bias, const ct_conv_params *p) {
    return cpu_conv2d_forward_ex(y, x, w, bias, p, 0);
}

int cpu_conv2d_backward_input_full(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *w,
                              const ct_conv_params *p) {
    if (fast_ok(gx, w, gy)) {
        cf_geom g;
        geom_from(&g, gx, w, gy, p);
        if (cf_backward_input_ok(&g))
            return cf_backward_input(&g, (const float *)ct_ptr(gy), (const float *)ct_ptr(w),
                                     (float *)ct_ptr(gx));
    }
    return ref_conv2d_backward_input(gx, gy, w, p);
}

int cpu_conv2d_backward_weight_full(ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                               const ct_tensor *x, const ct_conv_params *p) {
    if (fast_ok(x, gw, gy)) {
        cf_geom g;
        geom_from(&g, x, gw, gy, p);
        int rc = cf_backward_weight(&g, (const float *)ct_ptr(gy), (const float *)ct_ptr(x),
                                    (float *)ct_ptr(gw), gb ? (float *)ct_ptr(gb) : NULL);
        if (rc <= 0) return rc;
    }
    if (ref_conv2d_backward_weight(gw, gy, x, p) != 0) return -1;
    if (gb) {
        /* gb[o] = sum of gy over N, H, W (in double) */
        int64_t N = gy->shape[0], O = gy->shape[1], P = gy->shape[2] * gy->shape[3];
        for (int64_t o = 0; o < O; o++) {
            double s = 0;
            for (int64_t n = 0; n < N; n++) {
                int64_t base = (n * O + o) * P;
                if (gy->dtype == CT_FLOAT32) {
                    const float *q = (const float *)ct_ptr(gy) + base;
                    for (int64_t i = 0; i < P; i++) s += q[i];
                } else {
                    const double *q = (const double *)ct_ptr(gy) + base;
                    for (int64_t i = 0; i < P; i++) s += q[i];
                }
            }
            if (gb->dtype == CT_FLOAT32)
                ((float *)ct_ptr(gb))[o] = (float)s;
            else
                ((double *)ct_ptr(gb))[o] = s;
        }
    }
    return 0;
}

int cpu_conv2d_relu_max_pool2d_forward_full(ct_tensor *yp, ct_tensor *codes, const ct_tensor *x,
                            const ct_tensor *w, const ct_tensor *bias, const ct_conv_params *p,
                            const ct_pool_params *pp) {
    int64_t N = x->shape[0], O = w->shape[0];
    int64_t Ho = (x->shape[2] + 2 * p->padding[0] - p->dilation[0] * (w->shape[2] - 1) - 1) /
                     p->stride[0] + 1;
    int64_t Wo = (x->shape[3] + 2 * p->padding[1] - p->dilation[1] * (w->shape[3] - 1) - 1) /
                     p->stride[1] + 1;
    int64_t ysh[4] = {N, O, Ho, Wo};
    if (fast_ok(x, w, yp)) {
        cf_geom g;
        ct_tensor shape_only = {.shape = {N, O, Ho, Wo}, .ndim = 4};
        geom_from(&g, x, w, &shape_only, p);
        const float *xp = (const float *)ct_ptr(x), *wp = (const float *)ct_ptr(w);
        const float *bp = bias ? (const float *)ct_ptr(bias) : NULL;
        uint8_t *cp = codes ? (uint8_t *)ct_ptr(codes) : NULL;
        if (cf_relu_pool_fusable(&g, pp))
            return cf_winograd_forward_relu_pool(&g, xp, wp, bp, (float *)ct_ptr(yp), cp);
        if (cf_direct_pool_ok(&g, pp))
            return cf_forward_relu_pool(&g, xp, wp, bp, (float *)ct_ptr(yp), cp);
    }
    ct_tensor *t = ct_empty_on(ysh, 4, x->dtype, x->storage->device);
    if (!t) return -1;
    int rc = cpu_conv2d_forward_ex(t, x, w, bias, p, 0);
    if (rc == 0) rc = cpu_max_pool2d_codes_forward(yp, codes, t, pp, 1);
    ct_free(t);
    return rc;
}
